//! The `hull-vmm` command line: every flag documented, and bad input refused with a message
//! that names the problem. None of these needs KVM except where a VM must be created.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::{kvm, tiny_kernel};
use hull_tests::require;

fn hull_vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
        .args(args)
        .output()
        .expect("run hull-vmm")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A file removed on drop, even when the test fails.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, bytes: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!("hull-vmm-cli-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn help_documents_every_flag() {
    let output = hull_vmm(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--kernel <FILE>",
        "--initrd <FILE>",
        "--cmdline <STR>",
        "--memory <MIB>",
        "--vcpus <N>",
        "--hide-cpu-features",
        "--vhost-user-blk <SOCK>",
        "--vhost-user-fs <SOCK,tag=TAG>",
        "--vhost-user-net <SOCK>",
        "--vhost-user-vsock <SOCK,cid=N>",
        "--metrics-socket <PATH>",
        "--api-socket <PATH>",
        "--vsock-uds <PATH>",
        "--guest-cid <N>",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn unknown_flag_is_refused() {
    let output = hull_vmm(&["--kernel", "k", "--frobnicate"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("--frobnicate"));
}

#[test]
fn kernel_is_required() {
    let output = hull_vmm(&[]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("--kernel"));
}

#[test]
fn zero_vcpus_is_refused() {
    let output = hull_vmm(&["--kernel", "k", "--vcpus", "0"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("--vcpus"));
}

#[test]
fn too_little_memory_names_the_minimum() {
    let output = hull_vmm(&["--kernel", "k", "--memory", "4"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("4 MiB is too small: at least 16 MiB"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn vhost_user_fs_without_a_tag_is_refused() {
    let output = hull_vmm(&["--kernel", "k", "--vhost-user-fs", "/tmp/fs.sock"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("SOCK,tag=TAG"),
        "{}",
        stderr(&output)
    );
    let long_tag = format!("/tmp/fs.sock,tag={}", "t".repeat(37));
    let output = hull_vmm(&["--kernel", "k", "--vhost-user-fs", &long_tag]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("1 to 36 bytes"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn in_vmm_vsock_needs_both_flags_a_guest_cid_and_no_vhost_user_vsock() {
    for (args, named) in [
        (&["--vsock-uds", "v.sock"][..], "--guest-cid"),
        (&["--guest-cid", "3"][..], "--vsock-uds"),
        (
            &["--vsock-uds", "v.sock", "--guest-cid", "2"][..],
            "2 is not in 3..=4294967294",
        ),
        (
            &[
                "--vsock-uds",
                "v.sock",
                "--guest-cid",
                "3",
                "--vhost-user-vsock",
                "s,cid=3",
            ][..],
            "cannot be used with",
        ),
    ] {
        let mut argv = vec!["--kernel", "k"];
        argv.extend_from_slice(args);
        let output = hull_vmm(&argv);
        assert!(!output.status.success(), "{args:?}");
        let err = stderr(&output);
        assert!(err.contains(named), "{args:?}: {err}");
    }
}

#[test]
fn vsock_uds_that_is_not_a_socket_is_refused_naming_it() {
    require!("vsock_uds_that_is_not_a_socket_is_refused_naming_it", kvm());
    let file = TempFile::new("not-a-socket", b"data");
    let output = hull_vmm(&[
        "--kernel",
        "/nonexistent/vmlinux",
        "--vsock-uds",
        file.0.to_str().unwrap(),
        "--guest-cid",
        "3",
    ]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("exists and is not a socket") && err.contains(file.0.to_str().unwrap()),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&file.0).unwrap(),
        b"data",
        "the file is left alone"
    );
}

#[test]
fn vsock_uds_is_there_while_hull_vmm_runs_and_gone_after() {
    require!(
        "vsock_uds_is_there_while_hull_vmm_runs_and_gone_after",
        kvm()
    );
    // Print "up", then spin.
    let code = [
        0x66, 0xba, 0xf8, 0x03, 0xb0, b'u', 0xee, 0xb0, b'p', 0xee, 0xeb, 0xfe,
    ];
    let kernel = TempFile::new("vsock-spin-kernel", &tiny_kernel(&code));
    let uds = std::env::temp_dir().join(format!("hull-vmm-cli-{}-v.sock", std::process::id()));
    let metrics = std::env::temp_dir().join(format!(
        "hull-vmm-cli-{}-vsock-metrics.sock",
        std::process::id()
    ));
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
            .args(["--kernel", kernel.0.to_str().unwrap(), "--memory", "32"])
            .arg("--metrics-socket")
            .arg(&metrics)
            .arg("--vsock-uds")
            .arg(&uds)
            .args(["--guest-cid", "3"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut up = [0u8; 2];
    child
        .0
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut up)
        .unwrap();
    assert_eq!(&up, b"up");
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::symlink_metadata(&uds).expect("the hybrid socket exists");
    assert!(meta.file_type().is_socket());
    // A host process can connect (the guest has no driver: nothing answers yet).
    std::os::unix::net::UnixStream::connect(&uds).expect("hull-vmm listens on it");
    // The device's counters are on the metrics socket.
    let mut text = String::new();
    std::os::unix::net::UnixStream::connect(&metrics)
        .expect("hull-vmm serves its metrics socket")
        .read_to_string(&mut text)
        .unwrap();
    assert!(
        text.contains("hull_vsock_connections_total 0\n"),
        "no vsock series in:\n{text}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status} after SIGTERM");
    assert!(!uds.exists(), "hull-vmm removed its hybrid socket");
}

#[test]
fn absent_vhost_user_backend_names_its_socket() {
    require!("absent_vhost_user_backend_names_its_socket", kvm());
    let socket =
        std::env::temp_dir().join(format!("hull-vmm-cli-{}-absent.sock", std::process::id()));
    let output = hull_vmm(&[
        "--kernel",
        "/nonexistent/vmlinux",
        "--vhost-user-blk",
        socket.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("cannot connect to vhost-user backend")
            && err.contains(socket.to_str().unwrap()),
        "{err}"
    );
}

#[test]
fn missing_kernel_names_the_path() {
    require!("missing_kernel_names_the_path", kvm());
    let output = hull_vmm(&["--kernel", "/nonexistent/vmlinux", "--memory", "16"]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("cannot read kernel /nonexistent/vmlinux"),
        "{err}"
    );
}

#[test]
fn malformed_kernel_names_the_path_and_the_problem() {
    require!("malformed_kernel_names_the_path_and_the_problem", kvm());
    let kernel = TempFile::new("not-a-kernel", &[0x42; 4096]);
    let output = hull_vmm(&["--kernel", kernel.0.to_str().unwrap(), "--memory", "16"]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains(&format!(
            "kernel {} is not a loadable ELF vmlinux or bzImage",
            kernel.0.display()
        )),
        "{err}"
    );
}

#[test]
fn boots_a_kernel_whose_serial_output_reaches_stdout_and_exits_on_its_reset() {
    require!(
        "boots_a_kernel_whose_serial_output_reaches_stdout_and_exits_on_its_reset",
        kvm()
    );
    let mut code = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for byte in b"hello\n" {
        code.extend_from_slice(&[0xb0, *byte, 0xee]); // mov al, byte; out dx, al
    }
    code.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe]); // i8042 reset; jmp $
    let kernel = TempFile::new("hello-kernel", &tiny_kernel(&code));
    let output = hull_vmm(&[
        "--kernel",
        kernel.0.to_str().unwrap(),
        "--memory",
        "32",
        "--vcpus",
        "2",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "hello\n");
}

#[test]
fn sigterm_stops_a_running_guest_cleanly() {
    require!("sigterm_stops_a_running_guest_cleanly", kvm());
    // Print "up", then spin.
    let code = [
        0x66, 0xba, 0xf8, 0x03, 0xb0, b'u', 0xee, 0xb0, b'p', 0xee, 0xeb, 0xfe,
    ];
    let kernel = TempFile::new("spin-kernel", &tiny_kernel(&code));
    let metrics = std::env::temp_dir().join(format!("hull-vmm-cli-{}.sock", std::process::id()));
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
            .args(["--kernel", kernel.0.to_str().unwrap(), "--memory", "32"])
            .arg("--metrics-socket")
            .arg(&metrics)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut up = [0u8; 2];
    child
        .0
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut up)
        .unwrap();
    assert_eq!(&up, b"up");
    // The two port writes that printed "up" are counted, as the metrics socket says.
    let mut text = String::new();
    std::os::unix::net::UnixStream::connect(&metrics)
        .expect("hull-vmm serves its metrics socket")
        .read_to_string(&mut text)
        .unwrap();
    let pio_out = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("hull_vmm_vcpu_exits_total{vcpu=\"0\",kind=\"pio_out\"} ")?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no vCPU 0 pio_out exits in:\n{text}"));
    assert!(pio_out >= 2, "{text}");
    assert!(
        text.contains("# TYPE hull_vmm_vcpu_exits_total counter"),
        "{text}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.0.wait().unwrap();
    assert!(
        status.success(),
        "hull-vmm exited with {status} after SIGTERM"
    );
    assert!(!metrics.exists(), "hull-vmm removed its metrics socket");
}

#[test]
fn a_running_vm_has_one_thread_per_vcpu_and_one_more() {
    require!("a_running_vm_has_one_thread_per_vcpu_and_one_more", kvm());
    // (and every one of them runs under its seccomp filter, without capabilities)
    // Print "up", then spin.
    let code = [
        0x66, 0xba, 0xf8, 0x03, 0xb0, b'u', 0xee, 0xb0, b'p', 0xee, 0xeb, 0xfe,
    ];
    let kernel = TempFile::new("threads-kernel", &tiny_kernel(&code));
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
            .args(["--kernel", kernel.0.to_str().unwrap(), "--memory", "32"])
            .args(["--vcpus", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut up = [0u8; 2];
    let stdout = child.0.stdout.as_mut().unwrap();
    stdout.read_exact(&mut up).unwrap();
    assert_eq!(&up, b"up");
    // KVM lists its own workers (kvm-nx-lpage-recovery) among a VM process's threads.
    let pid = child.0.id();
    let threads = || -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.starts_with("kvm-"))
            .collect()
    };
    // vCPU 0 may print before the second vCPU's thread is up on a loaded machine: wait for
    // the VM to settle (a VM with more threads never settles at 3).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while threads().len() != 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(threads().len(), 3, "2 vCPUs + 1: {:?}", threads());
    // Each of them confines itself with its seccomp filter once its set-up is done (the main
    // thread after the vCPUs start), having dropped every capability: /proc says mode 2
    // (filter) and empty capability sets for all three.
    let unconfined = || -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .filter(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|name| !name.starts_with("kvm-"))
            })
            .filter_map(|task| {
                let status = std::fs::read_to_string(task.path().join("status")).ok()?;
                // Seccomp mode 2 (filter), and no capability left in any set.
                let wrong: Vec<&str> = status
                    .lines()
                    .filter(|l| {
                        let mut words = l.split_whitespace();
                        match (words.next(), words.next()) {
                            (Some("Seccomp:"), Some(mode)) => mode != "2",
                            (Some("CapEff:" | "CapPrm:" | "CapBnd:" | "CapInh:"), Some(mask)) => {
                                !mask.trim_start_matches('0').is_empty()
                            }
                            _ => false,
                        }
                    })
                    .collect();
                (!wrong.is_empty()).then(|| format!("{}: {wrong:?}", task.path().display()))
            })
            .collect()
    };
    while !unconfined().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        unconfined(),
        Vec::<String>::new(),
        "threads without a seccomp filter or with capabilities"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status} after SIGTERM");
}

/// Kills and reaps the child if the test fails before it exits.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
