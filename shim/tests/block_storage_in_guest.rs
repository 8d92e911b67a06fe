//! A block volume end to end: hull-blk serves an ext4 image made here as a virtio-blk disk
//! with `--serial`, QEMU boots the hull guest image with it, and the agent mounts the disk it
//! finds by that serial (a BLOCK storage, `serial:<ID>`) for a container that reads a file
//! from it. After RemoveContainer the guest no longer has it mounted; after the shutdown no
//! process or socket of the boot is left on the host.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hull_shim::agent_link::{AgentLink, OutputStream};
use hull_shim::config::{Config, HypervisorKind};
use hull_shim::sandbox::boot::boot_pod_with_disks;
use hull_shim::sandbox::disk::BlockDisk;
use hull_shim::sandbox::share::guest_root;
use hull_tests::prereq::{self, Missing};
use hull_tests::{artifacts, require};
use serde_json::json;

const SERIAL: &str = "hull-test-disk";
const GREETING: &str = "written on the host, read through hull-blk\n";

/// hull-vsock from this build (hull-blk and hull-fs are found beside it), busybox, mkfs.ext4
/// and a configuration for the qemu backend with the built image.
fn setup() -> Result<(PathBuf, PathBuf, Config), Missing> {
    prereq::root()?;
    let vsock = artifacts::workspace_binary("hull-vsock")?;
    artifacts::workspace_binary("hull-blk")?;
    artifacts::workspace_binary("hull-fs")?;
    prereq::find_program("mkfs.ext4", "e2fsprogs")?;
    let busybox = hull_tests::oci_image::busybox()?;
    let mut config = Config {
        hypervisor: HypervisorKind::Qemu,
        ..Config::default()
    };
    config.vm.kernel = artifacts::vmlinux()?;
    config.vm.initrd = artifacts::initrd()?;
    config.vm.vcpus = 2;
    config.agent.start_timeout_secs = 240;
    Ok((vsock, busybox, config))
}

/// A 16 MiB ext4 image `name`.img in `dir` whose `hello.txt` holds `greeting`.
fn ext4_image(dir: &Path, name: &str, greeting: &str) -> PathBuf {
    let content = dir.join(format!("{name}-content"));
    std::fs::create_dir(&content).unwrap();
    std::fs::write(content.join("hello.txt"), greeting).unwrap();
    let image = dir.join(format!("{name}.img"));
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(16 << 20))
        .unwrap();
    let status = Command::new("mkfs.ext4")
        .arg("-q")
        .arg("-d")
        .arg(&content)
        .arg(&image)
        .status()
        .expect("mkfs.ext4 runs");
    assert!(status.success(), "mkfs.ext4 failed: {status}");
    image
}

/// A rootfs with busybox as sh and cat.
fn rootfs(dir: &Path, busybox: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("proc")).unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    root
}

/// A container running `script` in the guest's PID namespace (so /proc/1 is the agent, and
/// /proc/1/mounts the guest's own mounts), with `binds` (guest path, container path).
fn spec(id: &str, script: &str, binds: &[(&str, &str)]) -> Vec<u8> {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "mode=755", "size=1m"]}),
    ];
    for (source, destination) in binds {
        mounts.push(
            json!({"destination": destination, "type": "bind", "source": source,
            "options": ["rbind", "ro"]}),
        );
    }
    serde_json::to_vec(&json!({
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/sh", "-c", script],
            "env": ["PATH=/bin"],
            "cwd": "/"
        },
        "root": {"path": guest_root(id), "readonly": true},
        "mounts": mounts,
        "linux": {"namespaces": [{"type": "mount"}, {"type": "uts"}, {"type": "ipc"}]}
    }))
    .unwrap()
}

/// Runs container `id` to its end and returns its standard output.
async fn run(agent: &AgentLink, id: &str) -> String {
    agent.start_container(id).await.expect("StartContainer");
    let mut out = Vec::new();
    loop {
        let chunk = agent
            .read_stream(OutputStream::Stdout, id, "", 4096)
            .await
            .expect("ReadStdout");
        if chunk.is_empty() {
            break;
        }
        out.extend(chunk);
    }
    let status = agent.wait_process(id, "").await.expect("WaitProcess");
    assert_eq!(
        status.exit_status, 0,
        "container {id} failed; stdout: {out:?}"
    );
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "current_thread")]
async fn a_block_storage_found_by_serial_is_mounted_for_the_container_and_unmounted_at_remove() {
    let test =
        "a_block_storage_found_by_serial_is_mounted_for_the_container_and_unmounted_at_remove";
    let (vsock, busybox, config) = require!(test, setup());
    let dir = tempfile::tempdir().unwrap();
    // A decoy first, so the guest's first disk is not the one asked for: the agent must
    // pick by serial.
    let decoy = BlockDisk {
        path: ext4_image(dir.path(), "decoy", "the wrong disk\n"),
        serial: "hull-decoy".to_owned(),
        readonly: true,
    };
    let disk = BlockDisk {
        path: ext4_image(dir.path(), "disk", GREETING),
        serial: SERIAL.to_owned(),
        readonly: false,
    };
    let rootfs = rootfs(dir.path(), &busybox);
    let run_dir = dir.path().join("pod-blk");

    let vm = boot_pod_with_disks(
        &config,
        "pod-blk",
        &run_dir,
        Some(&vsock),
        true,
        None,
        &[decoy, disk.clone()],
    )
    .await
    .expect("the VM boots with the disks to a serving agent");
    let share = vm.share().expect("booted with a share");
    let processes = vm.processes();
    assert_eq!(
        processes
            .iter()
            .filter(|(role, _)| *role == "hull-blk")
            .count(),
        2,
        "{processes:?}"
    );

    // The container reads the file through a bind of the disk's mount, and shows the guest's
    // mounts while the disk is mounted for it.
    let mount_point = "/run/hull/storage/reader/disk";
    share
        .share_rootfs("reader", &rootfs)
        .expect("sharing the rootfs");
    // The rootfs is in the share, which CreateSandbox mounted already.
    let storages = vec![disk.storage("ext4", mount_point, &["noatime"])];
    vm.agent
        .create_container(
            "reader",
            spec(
                "reader",
                "cat /data/hello.txt; cat /proc/1/mounts",
                &[(mount_point, "/data")],
            ),
            storages,
        )
        .await
        .expect("CreateContainer with the block storage");
    let out = run(&vm.agent, "reader").await;
    assert!(out.starts_with(GREETING), "{out}");
    println!("the guest's mounts while the container ran:\n{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("/dev/vd") && l.contains(&format!(" {mount_point} ext4 "))),
        "the disk is not among the guest's mounts:\n{out}"
    );
    vm.agent
        .remove_container("reader", 30)
        .await
        .expect("RemoveContainer");
    share.unshare_rootfs("reader");

    // After the removal the guest's mounts no longer hold the disk.
    share
        .share_rootfs("probe", &rootfs)
        .expect("sharing the rootfs");
    vm.agent
        .create_container(
            "probe",
            spec("probe", "cat /proc/1/mounts", &[]),
            Vec::new(),
        )
        .await
        .expect("CreateContainer of the probe");
    let mounts = run(&vm.agent, "probe").await;
    assert!(mounts.contains(" /proc "), "{mounts}");
    assert!(
        !mounts.contains(mount_point) && !mounts.lines().any(|l| l.starts_with("/dev/vd")),
        "the disk is still mounted after RemoveContainer:\n{mounts}"
    );
    vm.agent
        .remove_container("probe", 30)
        .await
        .expect("RemoveContainer of the probe");
    share.unshare_rootfs("probe");

    vm.shutdown(Duration::from_secs(10))
        .await
        .expect("the VM, hull-blk and the other backends stop");
    assert!(
        !run_dir.exists(),
        "the run directory (and its sockets) was left behind"
    );
    let left = hull_tests::leftovers::processes_with(&[&run_dir.to_string_lossy()]);
    assert!(left.is_empty(), "left running: {left:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_disk_hull_blk_refuses_fails_the_boot_naming_it_and_leaves_nothing() {
    let test = "a_disk_hull_blk_refuses_fails_the_boot_naming_it_and_leaves_nothing";
    let (vsock, _busybox, config) = require!(test, setup());
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(1 << 20))
        .unwrap();
    // 21 bytes: more than a virtio-blk id holds, so hull-blk refuses to start.
    let disk = BlockDisk {
        path: image,
        serial: "abcdefghijklmnopqrstu".into(),
        readonly: false,
    };
    let run_dir = dir.path().join("pod-bad-disk");
    let err = boot_pod_with_disks(
        &config,
        "pod-bad-disk",
        &run_dir,
        Some(&vsock),
        false,
        None,
        &[disk],
    )
    .await
    .err()
    .expect("the boot fails");
    let chain = format!("{:#}", anyhow::Error::from(err));
    assert!(
        chain.contains("hull-blk for the VM's disk")
            && chain.contains("abcdefghijklmnopqrstu")
            && chain.contains("at most 20 bytes"),
        "{chain}"
    );
    assert!(!run_dir.exists(), "the run directory was left behind");
    let left = hull_tests::leftovers::processes_with(&[&run_dir.to_string_lossy()]);
    assert!(left.is_empty(), "left running: {left:?}");
}
