//! containerd-shim-hull-v2 under a real, private containerd, driven with `ctr` as a user would.

use std::path::Path;

use hull_tests::containerd::Containerd;
use hull_tests::netns::{ip, PodNetns};
use hull_tests::oci_image::{build_busybox_archive, busybox};
use hull_tests::require;

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-hull-v2");

fn shim_processes(id: &str) -> Vec<String> {
    hull_tests::leftovers::processes_with(&["containerd-shim-hull-v2", id])
}

const SOCKET_DIR: &str = "/run/containerd/s";

fn socket_dir_entries() -> Vec<String> {
    std::fs::read_dir(SOCKET_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Shim sockets that were not in `before` and that nothing listens on any more: what a shim
/// that exited without removing its socket leaves. Other tests' shims come and go in the same
/// directory while a test runs, so the directory is not compared whole: a live socket is some
/// other pod's running shim, and one that went is no leak. A socket refusing twice, a second
/// apart, is not one being bound at the time of the first look.
fn stale_sockets_since(before: &[String]) -> Vec<String> {
    let refusing = |names: Vec<String>| -> Vec<String> {
        names
            .into_iter()
            .filter(|name| {
                let path = Path::new(SOCKET_DIR).join(name);
                path.exists() && std::os::unix::net::UnixStream::connect(&path).is_err()
            })
            .collect()
    };
    let new: Vec<String> = socket_dir_entries()
        .into_iter()
        .filter(|name| !before.contains(name))
        .collect();
    let first = refusing(new);
    if first.is_empty() {
        return first;
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    refusing(first)
}

/// What of a pod's VM is still running or mounted: processes naming its run directory, and
/// mounts naming the container.
fn pod_leftovers(id: &str) -> Vec<String> {
    let run_dir = hull_shim::paths::sandbox_run_dir(hull_tests::containerd::NAMESPACE, id);
    let mut left = shim_processes(id);
    left.extend(hull_tests::leftovers::processes_with(&[&run_dir
        .display()
        .to_string()]));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    left.extend(
        mounts
            .lines()
            .filter(|l| l.contains(id))
            .map(|l| format!("mount: {l}")),
    );
    if run_dir.exists() {
        left.push(format!("run directory {}", run_dir.display()));
    }
    left
}

/// A private containerd that finds this build's shim, with the busybox image (built from
/// `busybox`) imported; the temp dir holds the image archive and the tests' files.
fn busybox_containerd(
    busybox: &Path,
) -> Result<(Containerd, tempfile::TempDir, &'static str), hull_tests::prereq::Missing> {
    let shim_dir = Path::new(SHIM)
        .parent()
        .expect("the shim binary is in a directory")
        .to_owned();
    let containerd = Containerd::start(&[shim_dir])?.expect("containerd starts");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("busybox.tar");
    let image = build_busybox_archive(busybox, &archive).unwrap();
    containerd.import(&archive).unwrap();
    Ok((containerd, dir, image))
}

/// A configuration for the `qemu` hypervisor with the image the harness found (HULL_VMLINUX /
/// HULL_INITRD, else the cache), written in `dir`, for the shim to get through containerd's
/// runtime options.
fn qemu_config(dir: &Path, kernel: &Path, initrd: &Path) -> std::path::PathBuf {
    let config = dir.join("configuration.toml");
    std::fs::write(
        &config,
        format!(
            "hypervisor = \"qemu\"\n[vm]\nkernel = {:?}\ninitrd = {:?}\n",
            kernel.display().to_string(),
            initrd.display().to_string()
        ),
    )
    .unwrap();
    config
}

/// The `qemu` hypervisor (TCG here, KVM where it works): the pod boots a VM with
/// hull-vsock and hull-fs, the rootfs goes to the guest through the pod's share, and the
/// container's output comes back. Slow (a TCG boot): the one VM test of this file.
#[test]
fn ctr_run_in_a_vm_prints_the_containers_output_and_leaves_nothing() {
    let test = "ctr_run_in_a_vm_prints_the_containers_output_and_leaves_nothing";
    let busybox = require!(test, busybox());
    let kernel = require!(test, hull_tests::artifacts::vmlinux());
    let initrd = require!(test, hull_tests::artifacts::initrd());
    for helper in ["hull-vsock", "hull-fs"] {
        require!(test, hull_tests::artifacts::workspace_binary(helper));
    }
    let (containerd, dir, image) = require!(test, busybox_containerd(&busybox));
    let sockets_before = socket_dir_entries();
    let id = "hull-e2e-vm";
    let config = qemu_config(dir.path(), &kernel, &initrd);

    let output = containerd
        .ctr_command(&[
            "run",
            "--rm",
            "--runtime",
            "io.containerd.hull.v2",
            "--runtime-config-path",
            config.to_str().expect("UTF-8 temp path"),
            image,
            id,
            "echo",
            "hello from the VM",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    // ctr run --rm does not remove a container whose task never started.
    let _ = containerd.ctr(&["containers", "delete", id]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !pod_leftovers(id).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        pod_leftovers(id).is_empty(),
        "left behind: {:?}\ncontainerd log:\n{}",
        pod_leftovers(id),
        containerd.log()
    );
    assert_eq!(
        stale_sockets_since(&sockets_before),
        Vec::<String>::new(),
        "shim socket left in {SOCKET_DIR}"
    );
    let (containers, tasks) = containerd.leftovers();
    assert!(
        tasks.is_empty() && containers.is_empty(),
        "{containers:?} {tasks:?}"
    );
    if stderr.contains("CreateContainer is not implemented") {
        // Everything up to the guest's agent worked and was cleaned up; the guest image's
        // agent predates the container calls.
        hull_tests::prereq::skip(
            test,
            &hull_tests::prereq::Missing::new(
                "a guest initrd whose hull-agent serves CreateContainer",
                "rebuild the image with 'make image' from a tree with the agent's container calls",
            ),
        );
        return;
    }
    assert!(
        output.status.success(),
        "ctr run failed: {stderr}\ncontainerd log:\n{}",
        containerd.log()
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "hello from the VM\n"
    );
    // The guest agent's log came over vsock port 1025 into the shim's, and so containerd's.
    let log = containerd.log();
    assert!(
        log.lines().any(|l| l.contains("serving hull.agent.v1")
            && l.contains("agent")
            && l.contains(&format!("sandbox={id}"))),
        "the guest agent's log is not in containerd's:\n{log}"
    );
}

/// A kernel that is not there is named through containerd, and the pod's half-made state
/// (run directory, vsock backend, share) is gone afterwards.
#[test]
fn a_missing_kernel_is_named_through_ctr_and_leaves_nothing() {
    let test = "a_missing_kernel_is_named_through_ctr_and_leaves_nothing";
    let busybox = require!(test, busybox());
    let (containerd, dir, image) = require!(test, busybox_containerd(&busybox));
    let config = dir.path().join("configuration.toml");
    std::fs::write(
        &config,
        "hypervisor = \"qemu\"\n[vm]\nkernel = \"/nonexistent/hull-vmlinux\"\n",
    )
    .unwrap();
    let id = "hull-e2e-nokernel";
    let output = containerd
        .ctr_command(&[
            "run",
            "--rm",
            "--runtime",
            "io.containerd.hull.v2",
            "--runtime-config-path",
            config.to_str().expect("UTF-8 temp path"),
            image,
            id,
            "true",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "ctr run succeeded: {stderr}");
    assert!(
        stderr.contains("/nonexistent/hull-vmlinux") && stderr.contains("make image"),
        "the error does not name the kernel and the fix: {stderr}"
    );
    let _ = containerd.ctr(&["containers", "delete", id]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !pod_leftovers(id).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        pod_leftovers(id).is_empty(),
        "left: {:?}",
        pod_leftovers(id)
    );
}

/// Pod networking through containerd, as CNI leaves it: a pod network namespace whose `eth0`
/// (MTU 1400, 169.254.77.2/24, default route via .1) is a veth whose peer is in a second
/// namespace standing for the host. The container, in its VM, sees eth0 with that address,
/// MTU and route; it pings the peer and the peer pings it; TCP echoes cross both ways;
/// afterwards the pod's namespace holds no tap and no filter of hull's. QEMU serves the NIC
/// (`network.backend = "qemu"`).
#[test]
fn a_pods_network_namespace_reaches_the_container_in_its_vm() {
    pod_network_reaches_the_container(
        "a_pods_network_namespace_reaches_the_container_in_its_vm",
        "qemu",
    );
}

/// The same pod network, the NIC served by hull-net (`network.backend = "hull-net"`): a
/// hull-net process runs for the pod while it lives, and none is left afterwards.
#[test]
fn a_pods_network_namespace_reaches_the_container_through_hull_net() {
    pod_network_reaches_the_container(
        "a_pods_network_namespace_reaches_the_container_through_hull_net",
        "hull-net",
    );
}

/// A pod whose `eth0` is a macvtap (the macvtap CNI plugin's kind): the VM's NIC is served
/// on the macvtap's own queues, by QEMU.
#[test]
fn a_pods_macvtap_reaches_the_container_in_its_vm() {
    pod_network_reaches_the_container("a_pods_macvtap_reaches_the_container_in_its_vm", "qemu");
}

/// The macvtap's queues served by hull-net, which is told the MTU (a macvtap's descriptors
/// do not say which namespace to ask it in).
#[test]
fn a_pods_macvtap_reaches_the_container_through_hull_net() {
    pod_network_reaches_the_container(
        "a_pods_macvtap_reaches_the_container_through_hull_net",
        "hull-net",
    );
}

/// Processes whose command line names hull-net and the pod's run directory.
fn hull_net_processes(id: &str) -> Vec<String> {
    let run_dir = hull_shim::paths::sandbox_run_dir(hull_tests::containerd::NAMESPACE, id);
    hull_tests::leftovers::processes_with(&["hull-net", &run_dir.display().to_string()])
}

fn pod_network_reaches_the_container(test: &str, backend: &str) {
    let busybox = require!(test, busybox());
    let kernel = require!(test, hull_tests::artifacts::vmlinux());
    let initrd = require!(test, hull_tests::artifacts::initrd());
    require!(test, hull_tests::prereq::root());
    require!(test, hull_tests::prereq::tun());
    require!(test, hull_tests::prereq::find_program("ip", "iproute2"));
    let mut helpers = vec!["hull-vsock", "hull-fs"];
    if backend == "hull-net" {
        helpers.push("hull-net");
    }
    for helper in helpers {
        require!(test, hull_tests::artifacts::workspace_binary(helper));
    }
    let macvtap = test.contains("macvtap");
    let short = match (backend, macvtap) {
        ("hull-net", false) => "e2h",
        ("hull-net", true) => "e2mh",
        (_, false) => "e2e",
        (_, true) => "e2m",
    };
    let PodNetns { pod, peer } = if macvtap {
        PodNetns::with_macvtap(short)
    } else {
        PodNetns::new(short)
    };
    let pod_mac = pod.mac("eth0");

    let (containerd, dir, image) = require!(test, busybox_containerd(&busybox));
    let config = qemu_config(dir.path(), &kernel, &initrd);
    std::fs::write(
        &config,
        format!(
            "{}[network]\nbackend = {backend:?}\n",
            std::fs::read_to_string(&config).unwrap()
        ),
    )
    .unwrap();
    let id = format!("hull-{short}-net");
    let id = id.as_str();
    let mut nets_while_running = None;
    let netns = format!("network:{}", pod.path().display());
    // TCP both ways: the peer serves an echo on 7777 for the container, the container one on
    // 7778 for the peer.
    let mut peer_echo = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            peer.name(),
            "busybox",
            "nc",
            "-l",
            "-p",
            "7777",
            "-e",
            "/bin/cat",
        ])
        .spawn()
        .expect("starting the peer's echo server");
    let script = "cat /sys/class/net/eth0/mtu; cat /sys/class/net/eth0/address; \
                  ip -o -4 addr show eth0; ip route; \
                  ping -c 2 -W 5 169.254.77.1 >/dev/null && echo PING-OK; \
                  echo \"TCP-OUT:$(echo hull-tcp-out | nc -w 5 169.254.77.1 7777)\"; \
                  nc -l -p 7778 -e /bin/cat & \
                  echo READY; sleep 8; echo DONE";
    let mut child = containerd
        .ctr_command(&[
            "run",
            "--rm",
            "--runtime",
            "io.containerd.hull.v2",
            "--runtime-config-path",
            config.to_str().expect("UTF-8 temp path"),
            "--with-ns",
            &netns,
            image,
            id,
            "sh",
            "-c",
            script,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the container is up, the peer pings it.
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut seen = String::new();
    let mut peer_ping = None;
    let mut tcp_in = String::new();
    loop {
        let mut line = String::new();
        use std::io::BufRead;
        if stdout.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        seen.push_str(&line);
        if line.trim() == "READY" && peer_ping.is_none() {
            nets_while_running = Some(hull_net_processes(id).len());
            // The container's listener may take a moment to start: a few tries.
            for _ in 0..10 {
                let echo = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(format!(
                        "echo hull-tcp-in | ip netns exec {} busybox nc -w 5 169.254.77.2 7778",
                        peer.name()
                    ))
                    .output()
                    .expect("running nc in the peer namespace");
                tcp_in = String::from_utf8_lossy(&echo.stdout).into_owned();
                if tcp_in.contains("hull-tcp-in") {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            peer_ping = Some(
                std::process::Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        peer.name(),
                        "busybox",
                        "ping",
                        "-c",
                        "2",
                        "-W",
                        "5",
                        "169.254.77.2",
                    ])
                    .output()
                    .expect("running ping in the peer namespace"),
            );
        }
    }
    let status = child.wait().unwrap();
    let _ = peer_echo.kill();
    let _ = peer_echo.wait();
    let mut stderr = String::new();
    use std::io::Read;
    let _ = child
        .stderr
        .take()
        .map(|mut e| e.read_to_string(&mut stderr));
    let _ = containerd.ctr(&["containers", "delete", id]);
    assert!(
        status.success(),
        "ctr run failed: {stderr}\noutput: {seen}\ncontainerd log:\n{}",
        containerd.log()
    );
    let mut lines = seen.lines();
    assert_eq!(lines.next(), Some("1400"), "{seen}");
    assert_eq!(
        lines.next(),
        Some(pod_mac.as_str()),
        "the guest's NIC has the pod interface's MAC: {seen}"
    );
    assert!(seen.contains("inet 169.254.77.2/24"), "{seen}");
    assert!(seen.contains("default via 169.254.77.1 dev eth0"), "{seen}");
    assert!(
        seen.contains("PING-OK"),
        "the container could not ping the peer: {seen}"
    );
    let peer_ping = peer_ping.expect("the container said READY");
    assert!(
        peer_ping.status.success(),
        "the peer could not ping the container: {}{}",
        String::from_utf8_lossy(&peer_ping.stdout),
        String::from_utf8_lossy(&peer_ping.stderr)
    );
    assert!(
        seen.contains("TCP-OUT:hull-tcp-out"),
        "the peer's echo did not answer the container: {seen}"
    );
    assert!(
        tcp_in.contains("hull-tcp-in"),
        "the container's echo did not answer the peer: {tcp_in:?}"
    );
    assert!(seen.contains("DONE"), "{seen}");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !pod_leftovers(id).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        pod_leftovers(id).is_empty(),
        "left behind: {:?}",
        pod_leftovers(id)
    );
    let expected_nets = usize::from(backend == "hull-net");
    assert_eq!(
        nets_while_running,
        Some(expected_nets),
        "hull-net processes while the pod ran, with backend {backend}"
    );
    assert!(
        hull_net_processes(id).is_empty(),
        "hull-net left: {:?}",
        hull_net_processes(id)
    );
    let links = ip(&["-n", pod.name(), "-o", "link", "show"]);
    assert!(!links.contains("hull_tap"), "a tap was left: {links}");
    assert!(
        links.contains("eth0"),
        "the pod's interface is the pod's: it stays: {links}"
    );
    assert!(
        !pod.has_ingress_qdisc("eth0"),
        "hull's ingress qdisc was left on eth0"
    );
}

/// Host bind mounts and volumes reach the container in its VM through the pod's share: a
/// directory bound read-only is readable and a write to it fails with EROFS; a writable
/// directory receives what the container writes, seen on the host; a single file bound is
/// read. After `ctr run --rm` none of the binds is left mounted.
#[test]
fn bind_mounts_and_volumes_reach_the_container_in_its_vm() {
    let test = "bind_mounts_and_volumes_reach_the_container_in_its_vm";
    let busybox = require!(test, busybox());
    let kernel = require!(test, hull_tests::artifacts::vmlinux());
    let initrd = require!(test, hull_tests::artifacts::initrd());
    require!(test, hull_tests::prereq::root());
    for helper in ["hull-vsock", "hull-fs"] {
        require!(test, hull_tests::artifacts::workspace_binary(helper));
    }
    let (containerd, dir, image) = require!(test, busybox_containerd(&busybox));
    let config = qemu_config(dir.path(), &kernel, &initrd);
    let id = "hull-e2e-volumes";
    let ro = dir.path().join("ro-volume");
    let rw = dir.path().join("rw-volume");
    let file = dir.path().join("single-file");
    std::fs::create_dir(&ro).unwrap();
    std::fs::create_dir(&rw).unwrap();
    std::fs::write(ro.join("greeting"), "read-only hello\n").unwrap();
    std::fs::write(&file, "one file\n").unwrap();
    let mount = |src: &Path, dst: &str, options: &str| {
        format!(
            "type=bind,src={},dst={dst},options={options}",
            src.display()
        )
    };
    let (ro_mount, rw_mount, file_mount) = (
        mount(&ro, "/ro", "rbind:ro"),
        mount(&rw, "/rw", "rbind:rw"),
        mount(&file, "/hull-file", "bind:ro"),
    );
    let script = "exec 2>&1; cat /ro/greeting; \
                  if echo x > /ro/new; then echo RO-WRITTEN; fi; \
                  echo from-the-vm > /rw/out && echo RW-WRITTEN; \
                  cat /hull-file";
    let output = containerd
        .ctr_command(&[
            "run",
            "--rm",
            "--runtime",
            "io.containerd.hull.v2",
            "--runtime-config-path",
            config.to_str().expect("UTF-8 temp path"),
            "--mount",
            &ro_mount,
            "--mount",
            &rw_mount,
            "--mount",
            &file_mount,
            image,
            id,
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let _ = containerd.ctr(&["containers", "delete", id]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !pod_leftovers(id).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        output.status.success(),
        "ctr run failed: {stderr}\noutput: {stdout}\ncontainerd log:\n{}",
        containerd.log()
    );
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("read-only hello"), "{stdout}");
    let refused = lines.next().unwrap_or_default();
    assert!(
        refused.contains("Read-only file system"),
        "a write to the ro volume was not refused with EROFS: {stdout}"
    );
    assert!(!stdout.contains("RO-WRITTEN"), "{stdout}");
    assert!(!ro.join("new").exists(), "written through a ro volume");
    assert_eq!(lines.next(), Some("RW-WRITTEN"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(rw.join("out")).unwrap(),
        "from-the-vm\n",
        "the container's write is seen on the host"
    );
    assert_eq!(lines.next(), Some("one file"), "{stdout}");
    assert!(
        pod_leftovers(id).is_empty(),
        "left behind: {:?}",
        pod_leftovers(id)
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let volumes: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains(dir.path().to_str().expect("UTF-8 temp path")))
        .collect();
    assert!(volumes.is_empty(), "volume mounts left: {volumes:?}");
}

/// hull-net is one of the pod's watched processes: when it is killed, the pod is lost at once
/// (its container ends with the lost-sandbox status and the shim's log names hull-net and the
/// signal), and after `ctr` removes the task and container nothing of the pod is left: no
/// process, no tap, no filter.
#[test]
fn a_pod_whose_hull_net_is_killed_stops_naming_it_and_leaves_nothing() {
    let test = "a_pod_whose_hull_net_is_killed_stops_naming_it_and_leaves_nothing";
    let busybox = require!(test, busybox());
    let kernel = require!(test, hull_tests::artifacts::vmlinux());
    let initrd = require!(test, hull_tests::artifacts::initrd());
    require!(test, hull_tests::prereq::root());
    require!(test, hull_tests::prereq::tun());
    require!(test, hull_tests::prereq::find_program("ip", "iproute2"));
    for helper in ["hull-vsock", "hull-fs", "hull-net"] {
        require!(test, hull_tests::artifacts::workspace_binary(helper));
    }
    let PodNetns { pod, peer: _peer } = PodNetns::new("e2k");
    let (containerd, dir, image) = require!(test, busybox_containerd(&busybox));
    let config = qemu_config(dir.path(), &kernel, &initrd);
    std::fs::write(
        &config,
        format!(
            "{}[network]\nbackend = \"hull-net\"\n",
            std::fs::read_to_string(&config).unwrap()
        ),
    )
    .unwrap();
    let id = "hull-e2e-killnet";
    let netns = format!("network:{}", pod.path().display());
    let mut run = containerd
        .ctr_command(&[
            "run",
            "--runtime",
            "io.containerd.hull.v2",
            "--runtime-config-path",
            config.to_str().expect("UTF-8 temp path"),
            "--with-ns",
            &netns,
            image,
            id,
            "sleep",
            "100000",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Running once containerd lists the task as such (a TCG boot: minutes at worst).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let running = || {
        containerd
            .ctr(&["tasks", "ls"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with(id) && l.contains("RUNNING"))
    };
    while !running() && std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = run.try_wait() {
            panic!(
                "ctr run ended ({status}) before the task ran:\n{}",
                containerd.log()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(running(), "the task never ran:\n{}", containerd.log());
    let run_dir = hull_shim::paths::sandbox_run_dir(hull_tests::containerd::NAMESPACE, id);
    let pids = hull_tests::leftovers::pids_with(&["hull-net", &run_dir.display().to_string()]);
    assert_eq!(pids.len(), 1, "one hull-net serves the pod: {pids:?}");
    // SAFETY: kill(2) with a pid read from /proc just now, of the pod's hull-net.
    assert_eq!(unsafe { libc::kill(pids[0], libc::SIGKILL) }, 0);

    let status = run.wait().unwrap();
    assert_eq!(
        status.code(),
        i32::try_from(hull_shim::service::task::LOST_SANDBOX_STATUS).ok(),
        "ctr run: {status}\n{}",
        containerd.log()
    );
    let reason = format!("hull-net (pid {}) was killed by signal 9", pids[0]);
    // The shim's log reaches containerd's through a FIFO, after the exit.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !containerd.log().contains(&reason) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        containerd.log().contains(&reason),
        "the shim's log does not say {reason:?}:\n{}",
        containerd.log()
    );
    let _ = containerd.ctr(&["tasks", "delete", id]);
    let _ = containerd.ctr(&["containers", "delete", id]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !pod_leftovers(id).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        pod_leftovers(id).is_empty(),
        "left behind: {:?}",
        pod_leftovers(id)
    );
    let links = ip(&["-n", pod.name(), "-o", "link", "show"]);
    assert!(!links.contains("hull_tap"), "a tap was left: {links}");
    assert!(
        links.contains("eth0"),
        "the pod's interface is the pod's: it stays: {links}"
    );
    assert!(
        !pod.has_ingress_qdisc("eth0"),
        "hull's ingress qdisc was left on eth0"
    );
}
