//! A Linux guest under QEMU mounts a directory hull-fs serves, works on it, and the host sees
//! the tree the guest left. The guest's /init is tests/guest/fs_check.rs, built here with
//! `rustc` (std only, static) and packed with agent/image/build-initrd.sh.
//!
//! Needs: qemu-system-x86_64, the guest kernel (`make image`), rustc, and the initrd tools
//! build-initrd.sh uses; skips loudly without them.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hull_tests::prereq::{find_program, Missing};
use hull_tests::{artifacts, require};
use support::HullFs;

/// A bound for a TCG boot and the guest's work on a loaded 2-core machine, not a timing
/// expectation.
const GUEST_BOUND: Duration = Duration::from_secs(300);

/// Same content as `big_content` in tests/guest/fs_check.rs.
fn big_content() -> Vec<u8> {
    (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

fn rustc() -> Result<PathBuf, Missing> {
    find_program("rustc", "rustc")
        .map_err(|_| Missing::new("program rustc", "install the Rust toolchain (rustup.rs)"))
}

/// Builds the guest program into `dir` and packs it as the /init of an initrd there.
fn build_guest_initrd(rustc: &Path, dir: &Path) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let binary = dir.join("fs_check");
    let out = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
        ])
        .args(["--target", "x86_64-unknown-linux-gnu", "-o"])
        .arg(&binary)
        .arg(manifest.join("tests/guest/fs_check.rs"))
        .output()
        .expect("rustc runs");
    assert!(
        out.status.success(),
        "building the guest program:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let initrd = dir.join("initrd.img");
    let out = Command::new(manifest.join("../agent/image/build-initrd.sh"))
        .arg(&binary)
        .arg(&initrd)
        .output()
        .expect("build-initrd.sh runs");
    assert!(
        out.status.success(),
        "packing the initrd:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    initrd
}

/// QEMU with the console in a file; killed and reaped on drop.
struct Qemu {
    child: Child,
    console: PathBuf,
}

impl Qemu {
    fn start(qemu: &Path, kernel: &Path, initrd: &Path, socket: &Path, console: &Path) -> Self {
        let accel = hull_tests::qemu::accelerator();
        let cpu = if accel == "kvm" { "host" } else { "max" };
        let out = std::fs::File::create(console).expect("console file");
        let err = out.try_clone().expect("console file");
        let child = Command::new(qemu)
            .args([
                "-M",
                "microvm,acpi=off,memory-backend=mem",
                "-accel",
                accel,
                "-cpu",
                cpu,
            ])
            .args([
                "-m",
                "256",
                "-object",
                "memory-backend-memfd,id=mem,size=256M,share=on",
            ])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .args(["-serial", "stdio", "-kernel"])
            .arg(kernel)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", "console=ttyS0 reboot=t panic=-1 quiet"])
            .arg("-chardev")
            .arg(format!("socket,id=fs0,path={}", socket.display()))
            .args(["-device", "vhost-user-fs-device,chardev=fs0,tag=hullfs"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("QEMU starts");
        Self {
            child,
            console: console.to_owned(),
        }
    }

    fn wait(&mut self, bound: Duration) -> String {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.child.try_wait().expect("waitpid on QEMU") {
                let console = std::fs::read_to_string(&self.console).unwrap_or_default();
                assert!(status.success(), "QEMU exited with {status}:\n{console}");
                return console;
            }
            if Instant::now() >= deadline {
                let console = std::fs::read_to_string(&self.console).unwrap_or_default();
                panic!("guest still running after {bound:?}:\n{console}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[test]
fn guest_works_on_the_share_and_the_host_sees_its_tree() {
    guest_session(
        "guest_works_on_the_share_and_the_host_sees_its_tree",
        &["--xattr"],
    );
}

#[test]
fn same_with_a_thread_pool_and_no_caching() {
    guest_session(
        "same_with_a_thread_pool_and_no_caching",
        &["--xattr", "--thread-pool-size", "4", "--cache", "never"],
    );
}

#[test]
fn unprivileged_server_serves_the_guest() {
    // hull-fs as `nobody`: its sandbox is then a user namespace (plus mount, pid, net), and
    // every file the guest creates belongs to nobody on the host.
    let test = "unprivileged_server_serves_the_guest";
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        hull_tests::prereq::skip(
            test,
            &Missing::hardware(
                "root, to start hull-fs as another user",
                "run the tests as root",
            ),
        );
        return;
    }
    let setpriv = require!(test, find_program("setpriv", "util-linux"));
    let setpriv = setpriv.to_str().expect("utf-8 path");
    let wrapper = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"];
    let Some(dir) = guest_session_under(test, &wrapper, &["--xattr"], Some(NOBODY)) else {
        return;
    };
    for name in ["big.bin", "dir", "dir/greeting.txt", "link"] {
        let meta = std::fs::symlink_metadata(dir.path().join("share").join(name)).expect(name);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            (meta.uid(), meta.gid()),
            (NOBODY, NOBODY),
            "owner of {name}"
        );
    }
}

/// The uid and gid of `nobody`.
const NOBODY: u32 = 65534;

/// Boots the guest against hull-fs started with `args` and checks what both sides see.
fn guest_session(test: &str, args: &[&str]) {
    guest_session_under(test, &[], args, None);
}

/// As [`guest_session`], with hull-fs run through `wrapper` and the test's files owned by
/// `owner`. Returns the temp dir (with `share/` in it), or `None` when skipped.
fn guest_session_under(
    test: &str,
    wrapper: &[&str],
    args: &[&str],
    owner: Option<u32>,
) -> Option<tempfile::TempDir> {
    let prereqs = find_program("qemu-system-x86_64", "qemu-system-x86")
        .and_then(|qemu| Ok((qemu, artifacts::vmlinux()?, rustc()?)));
    let (qemu, kernel, rustc) = match prereqs {
        Ok(found) => found,
        Err(missing) => {
            hull_tests::prereq::skip(test, &missing);
            return None;
        }
    };

    let dir = tempfile::tempdir().expect("temp dir");
    let initrd = build_guest_initrd(&rustc, dir.path());
    let share = dir.path().join("share");
    std::fs::create_dir(&share).expect("share dir");
    std::fs::write(share.join("from-host.txt"), "written by the host\n").expect("host file");
    std::os::unix::fs::symlink("/etc/passwd", share.join("escape")).expect("host symlink");
    if let Some(owner) = owner {
        // hull-fs creates its socket and pid file in the temp dir and serves the share.
        for path in [
            dir.path().to_owned(),
            share.clone(),
            share.join("from-host.txt"),
        ] {
            std::os::unix::fs::chown(&path, Some(owner), Some(owner)).expect("chown");
        }
    }

    let socket = dir.path().join("fs.sock");
    let log = dir.path().join("hull-fs.log");
    let mut fs = HullFs::start_under(wrapper, &socket, &share, args, &log);
    fs.wait_for_socket();
    let mut guest = Qemu::start(
        &qemu,
        &kernel,
        &initrd,
        &socket,
        &dir.path().join("console"),
    );
    let console = guest.wait(GUEST_BOUND);

    let failed: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("HULLFS-CHECK FAIL"))
        .collect();
    assert!(
        failed.is_empty(),
        "guest checks failed: {failed:#?}\n{console}"
    );
    assert!(
        console.contains("HULLFS-DONE ok"),
        "the guest did not finish:\n{console}"
    );

    // QEMU is gone: hull-fs stops by itself and says why.
    let status = fs.wait(support::PROCESS_BOUND);
    let log = fs.log_text();
    assert!(status.success(), "hull-fs exited with {status}:\n{log}");
    assert!(log.contains("exiting: the frontend disconnected"), "{log}");
    assert!(!socket.exists(), "socket left behind");

    // The tree the guest left, seen from the host.
    let mut names: Vec<String> = std::fs::read_dir(&share)
        .expect("share readable")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "big.bin",
            "dir",
            "escape",
            "from-host.txt",
            "hardlink.txt",
            "link"
        ]
    );
    let greeting = share.join("dir/greeting.txt");
    assert_eq!(
        std::fs::read_to_string(&greeting).expect("renamed file"),
        "hello from the guest\n"
    );
    assert!(
        std::fs::read(share.join("big.bin")).expect("big file") == big_content(),
        "big.bin differs"
    );
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&greeting).expect("metadata");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!(meta.nlink(), 2);
    assert_eq!(
        xattr(&greeting, "user.hull").as_deref(),
        Some(&b"pod-1"[..])
    );
    assert_eq!(
        std::fs::metadata(share.join("hardlink.txt"))
            .expect("hard link")
            .ino(),
        meta.ino()
    );
    assert_eq!(
        std::fs::read_link(share.join("link")).expect("symlink"),
        Path::new("dir/greeting.txt")
    );
    Some(dir)
}

/// The value of extended attribute `name` of `path`, if it has one.
fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let name = std::ffi::CString::new(name).ok()?;
    let mut value = vec![0u8; 256];
    // SAFETY: NUL-terminated path and name; `value` is writable for its length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    value.truncate(usize::try_from(n).ok()?);
    Some(value)
}
