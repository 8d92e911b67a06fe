//! A block-device rootfs through a real containerd: the first container of a pod whose
//! rootfs is one ext4 mount of a block device (as the devmapper snapshotter hands them out)
//! runs on that device as a virtio-blk disk served by hull-blk and mounted in the guest; the
//! host never mounts it. The pod's second container, whose device the VM has no disk for
//! (microvm has no hot-plug), gets its rootfs mounted on the host and shared through hull-fs.
//! Meanwhile every socket of the pod is its owner's alone, in its 0700 run directory.
//!
//! This host has no device-mapper, so no snapshotter here gives block devices: loop devices
//! over ext4 images stand in for the snapshots, and the tasks are created through
//! containerd's Tasks API with those mounts as their rootfs, exactly what containerd sends
//! when a snapshotter returns them (`ctr` always asks its snapshotter). Everything past that
//! request is containerd's and hull's own path.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    CreateTaskRequest, DeleteTaskRequest, StartRequest, WaitRequest,
};
use containerd_client::tonic::Request;
use containerd_client::types::Mount;
use hull_tests::containerd::{Containerd, NAMESPACE};
use hull_tests::leftovers::processes_with;
use hull_tests::prereq::{self, Missing};
use hull_tests::{artifacts, require};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-hull-v2");
const RUNTIME: &str = "io.containerd.hull.v2";
/// How long anything in a TCG guest may take on a loaded host.
const BOUND: Duration = Duration::from_secs(180);
/// What each container runs, from its image (a command without dashes: `ctr containers
/// create` takes `-c` as its own flag): it prints the line of its own root in
/// /proc/self/mounts (source, mount point, type), then the greeting its image holds.
const SCRIPT: &str = "grep -E '^[^ ]+ / ' /proc/self/mounts | cut -d' ' -f1-3\ncat /hello.txt\n";

/// A loop device over an image file, detached when dropped.
struct LoopDevice(PathBuf);

impl LoopDevice {
    fn attach(image: &Path) -> Self {
        let output = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(image)
            .output()
            .expect("losetup runs");
        assert!(
            output.status.success(),
            "losetup {}: {}",
            image.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        Self(PathBuf::from(
            String::from_utf8_lossy(&output.stdout).trim(),
        ))
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 device path")
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let status = Command::new("losetup").arg("-d").arg(&self.0).status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("detaching {} failed: {status:?}", self.0.display());
        }
    }
}

/// A 32 MiB ext4 image `name`.img in `dir` holding a busybox root (sh, grep, cut, cat),
/// [`SCRIPT`] as `/check.sh` and `hello.txt` with `greeting`.
fn rootfs_image(dir: &Path, name: &str, busybox: &Path, greeting: &str) -> PathBuf {
    let root = dir.join(format!("{name}-content"));
    for sub in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for applet in ["sh", "grep", "cut", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("hello.txt"), greeting).unwrap();
    std::fs::write(root.join("check.sh"), SCRIPT).unwrap();
    let image = dir.join(format!("{name}.img"));
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(32 << 20))
        .unwrap();
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-d"])
        .arg(&root)
        .arg(&image)
        .status()
        .expect("mkfs.ext4 runs");
    assert!(status.success(), "mkfs.ext4 failed: {status}");
    image
}

/// Everything the test needs, or what is missing.
struct Setup {
    containerd: Containerd,
    busybox: PathBuf,
    config: PathBuf,
    dir: tempfile::TempDir,
}

fn setup() -> Result<Setup, Missing> {
    prereq::root()?;
    prereq::find_program("mkfs.ext4", "e2fsprogs")?;
    prereq::find_program("losetup", "mount")?;
    let busybox = hull_tests::oci_image::busybox()?;
    for helper in ["hull-vsock", "hull-fs", "hull-blk"] {
        artifacts::workspace_binary(helper)?;
    }
    let shim_dir = Path::new(SHIM)
        .parent()
        .expect("the shim is in a directory");
    let containerd = Containerd::start(&[shim_dir.to_owned()])?.expect("containerd starts");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("configuration.toml");
    artifacts::qemu_configuration(&config, "[agent]\nstart_timeout_secs = 240\n")?;
    Ok(Setup {
        containerd,
        busybox,
        config,
        dir,
    })
}

impl Setup {
    /// The errors and hull's lines of containerd's log, for failure messages.
    fn log_excerpt(&self) -> String {
        self.containerd.log_excerpt()
    }

    /// `ctr container create` of container `id` in pod `pod` running `/check.sh`, on an empty
    /// root directory (a container without a snapshot: its task brings the rootfs).
    fn create_container(&self, pod: &str, id: &str) {
        let root = self.dir.path().join(format!("{id}-root"));
        std::fs::create_dir(&root).unwrap();
        let annotation = format!("io.kubernetes.cri.sandbox-id={pod}");
        let output = self
            .containerd
            .ctr(&[
                "containers",
                "create",
                "--runtime",
                RUNTIME,
                "--runtime-config-path",
                self.config.to_str().expect("a UTF-8 path"),
                "--annotation",
                &annotation,
                // No image: nothing else sets PATH.
                "--env",
                "PATH=/bin",
                "--rootfs",
                root.to_str().expect("a UTF-8 path"),
                id,
                "sh",
                "/check.sh",
            ])
            .unwrap_or_else(|e| panic!("ctr containers create {id}: {e}"));
        assert!(output.status.success());
    }
}

fn in_namespace<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("containerd-namespace", NAMESPACE.parse().expect("ASCII"));
    request
}

/// Creates and starts task `id` with the ext4 file system on `device` as its rootfs, waits
/// for it to exit and answers its exit status and standard output.
async fn run_task(
    tasks: &mut TasksClient<containerd_client::tonic::transport::Channel>,
    setup: &Setup,
    id: &str,
    device: &str,
) -> (u32, String) {
    let stdout = setup.dir.path().join(format!("{id}.stdout"));
    let path = std::ffi::CString::new(stdout.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0, "mkfifo");
    // Opening blocks until the shim opens the other end; the reader ends at the shim's close.
    let reader = {
        let stdout = stdout.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            std::fs::File::open(&stdout)
                .and_then(|mut f| f.read_to_string(&mut text))
                .map(|_| text)
        })
    };
    let create = CreateTaskRequest {
        container_id: id.to_owned(),
        rootfs: vec![Mount {
            r#type: "ext4".to_owned(),
            source: device.to_owned(),
            options: vec!["rw".to_owned()],
            ..Default::default()
        }],
        stdout: stdout.display().to_string(),
        ..Default::default()
    };
    tasks
        .create(in_namespace(create))
        .await
        .unwrap_or_else(|e| panic!("Tasks.Create {id}: {e}\n{}", setup.log_excerpt()));
    let start = StartRequest {
        container_id: id.to_owned(),
        ..Default::default()
    };
    tasks
        .start(in_namespace(start))
        .await
        .unwrap_or_else(|e| panic!("Tasks.Start {id}: {e}\n{}", setup.log_excerpt()));
    let wait = WaitRequest {
        container_id: id.to_owned(),
        ..Default::default()
    };
    let Ok(waited) = tokio::time::timeout(BOUND, tasks.wait(in_namespace(wait))).await else {
        panic!(
            "{id} did not exit within {BOUND:?}\n{}",
            setup.log_excerpt()
        );
    };
    let status = waited
        .unwrap_or_else(|e| panic!("Tasks.Wait {id}: {e}\n{}", setup.log_excerpt()))
        .into_inner()
        .exit_status;
    let output = reader
        .join()
        .expect("the reader thread")
        .unwrap_or_else(|e| panic!("reading {id}'s output: {e}"));
    (status, output)
}

async fn delete_task(
    tasks: &mut TasksClient<containerd_client::tonic::transport::Channel>,
    setup: &Setup,
    id: &str,
) {
    let delete = DeleteTaskRequest {
        container_id: id.to_owned(),
    };
    tasks
        .delete(in_namespace(delete))
        .await
        .unwrap_or_else(|e| panic!("Tasks.Delete {id}: {e}\n{}", setup.log_excerpt()));
}

/// The host's mounts whose source is `device`.
fn host_mounts_of(device: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        // mountinfo: ... " - " fstype source options.
        .filter(|l| {
            l.split_once(" - ")
                .and_then(|(_, tail)| tail.split_whitespace().nth(1))
                == Some(device)
        })
        .map(str::to_owned)
        .collect()
}

/// The sockets below `run_dir` that anyone but their owner may connect to (any group or
/// other bit; the owner's x bit means nothing on a socket), and `run_dir` itself unless 0700.
fn sockets_not_private(run_dir: &Path) -> Vec<String> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let mode = |path: &Path| {
        std::fs::symlink_metadata(path)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0)
    };
    let mut wrong = Vec::new();
    if mode(run_dir) != 0o700 {
        wrong.push(format!("{} is {:o}", run_dir.display(), mode(run_dir)));
    }
    let mut stack = vec![run_dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            // Not into the share: what is there is the containers' own.
            if kind.is_dir() && !path.ends_with("shared") {
                stack.push(path);
            } else if kind.is_socket() && mode(&path) & 0o077 != 0 {
                wrong.push(format!("{} is {:o}", path.display(), mode(&path)));
            }
        }
    }
    wrong
}

#[test]
fn a_pods_first_block_device_rootfs_is_a_guest_disk_the_host_never_mounts() {
    let test = "a_pods_first_block_device_rootfs_is_a_guest_disk_the_host_never_mounts";
    let setup = require!(test, setup());
    let pod = "hull-blk-pod";
    let second = "hull-blk-pod-2";
    let first_disk = LoopDevice::attach(&rootfs_image(
        setup.dir.path(),
        "first",
        &setup.busybox,
        "read from the first snapshot\n",
    ));
    let second_disk = LoopDevice::attach(&rootfs_image(
        setup.dir.path(),
        "second",
        &setup.busybox,
        "read from the second snapshot\n",
    ));
    setup.create_container(pod, pod);
    setup.create_container(pod, second);

    let run_dir = hull_shim::paths::sandbox_run_dir(NAMESPACE, pod);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let address = setup.containerd.address();
    runtime.block_on(async {
        let channel = containerd_client::connect(&address)
            .await
            .expect("containerd's gRPC socket");
        let mut tasks = TasksClient::new(channel);

        // The first container's device is the VM's disk: its root is /dev/vdX, ext4, inside
        // the guest, and hull-blk serves that device under the rootfs serial.
        let (status, output) = run_task(&mut tasks, &setup, pod, first_disk.path()).await;
        assert_eq!(status, 0, "{output}\n{}", setup.log_excerpt());
        let mut lines = output.lines();
        let root = lines.next().unwrap_or_default();
        assert!(
            root.starts_with("/dev/vd") && root.ends_with(" / ext4"),
            "the first container's root is not the guest disk: {output:?}"
        );
        assert_eq!(lines.next(), Some("read from the first snapshot"));
        let serving = processes_with(&["hull-blk", first_disk.path(), "hull-rootfs"]);
        assert_eq!(
            serving.len(),
            1,
            "one hull-blk serves the device: {serving:?}"
        );
        assert_eq!(
            host_mounts_of(first_disk.path()),
            Vec::<String>::new(),
            "the host mounted the first container's block device"
        );

        // The pod's sockets (the backends' vhost-user and metrics sockets, the agent's vsock
        // socket, QEMU's QMP socket, the shim's monitor socket) are their owner's alone, in
        // the 0700 run directory.
        assert_eq!(sockets_not_private(&run_dir), Vec::<String>::new());

        // The second container's device has no disk in the VM: mounted on the host, shared.
        let (status, output) = run_task(&mut tasks, &setup, second, second_disk.path()).await;
        assert_eq!(status, 0, "{output}\n{}", setup.log_excerpt());
        let mut lines = output.lines();
        let root = lines.next().unwrap_or_default();
        assert!(
            root.ends_with(" / virtiofs"),
            "the second container's root is not the pod's share: {output:?}"
        );
        assert_eq!(lines.next(), Some("read from the second snapshot"));
        // Mounted on the container's root and bound from there into the share.
        assert!(
            !host_mounts_of(second_disk.path()).is_empty(),
            "the second container's device is not mounted on the host"
        );

        delete_task(&mut tasks, &setup, second).await;
        delete_task(&mut tasks, &setup, pod).await;
    });
    for id in [second, pod] {
        let output = setup
            .containerd
            .ctr(&["containers", "rm", id])
            .unwrap_or_else(|e| panic!("ctr containers rm {id}: {e}"));
        assert!(output.status.success());
    }

    // Nothing of the pod is left, and neither device is held: the shim exits after
    // containerd's Shutdown, asynchronously to the Delete.
    let leftovers = || {
        let mut left = processes_with(&[&run_dir.display().to_string()]);
        left.extend(processes_with(&["containerd-shim-hull-v2", pod]));
        for device in [first_disk.path(), second_disk.path()] {
            left.extend(processes_with(&[device]));
            left.extend(host_mounts_of(device));
        }
        if run_dir.exists() {
            left.push(format!("run directory {}", run_dir.display()));
        }
        let (containers, tasks) = setup.containerd.leftovers();
        left.extend(containers.into_iter().map(|c| format!("container {c}")));
        left.extend(tasks.into_iter().map(|t| format!("task {t}")));
        left
    };
    let deadline = Instant::now() + BOUND;
    while !leftovers().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        leftovers(),
        Vec::<String>::new(),
        "left behind\n{}",
        setup.log_excerpt()
    );
}
