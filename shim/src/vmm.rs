//! The `builtin` hypervisor backend: this workspace's KVM VMM (`vmm/`) booting the
//! [`VmSpec`]'s kernel and initrd with its vhost-user devices (fs, net, blk) and its own
//! vsock device behind virtio-mmio. Two ways to run it (`vm.builtin_process`):
//! - `shim` (the default): in the shim's own process ([`in_process`], as Kata's Dragonball):
//!   the pod's threads are the shim's event-loop thread, which also drives the VMM's device
//!   loop, and one per vCPU;
//! - `hull-vmm`: a child `hull-vmm` per pod ([`VmmVm`]), confined apart (its main thread
//!   under its own seccomp filter, no capabilities), at the cost of a process and a thread.
//!
//! Both assemble the VM with [`hull_vmm::launch`] from the same device list ([`devices`]).
//! [`VmmVm`] owns the hull-vmm process from spawn to reaping and its per-VM run directory
//! (console log, hull-vmm's stderr). Like [`crate::qemu`], neither starts the device backends
//! or talks to the agent. The pod's vsock is the VMM's own device
//! ([`VmDevice::HybridVsock`]: no hull-vsock process), its hybrid socket where the agent link
//! connects. hull-vmm is stopped with SIGTERM (it stops its vCPUs and exits), then killed
//! after the grace period; pause and resume are not offered.
//!
//! What it cannot do yet, refused with an error naming it: taps served by the VMM itself
//! (it has no virtio-net of its own: use `network.backend = "hull-net"`), and more than one
//! vsock device.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use hull_vmm::virtio::vhost_user::VhostUserKind;
use tokio::process::{Child, Command};

use crate::run_dir::RunDir;
use crate::vm_spec::{VmDevice, VmSpec};

pub mod in_process;

/// The VMM binary's name, found next to the shim, then on PATH.
pub const VMM_BINARY: &str = "hull-vmm";

/// Errors of the builtin backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// hull-vmm is neither next to the shim nor on PATH.
    #[error("{VMM_BINARY} not found next to this binary or on PATH: run 'make build' and put target/release on PATH")]
    NotFound,
    /// The spec has something hull-vmm cannot serve yet.
    #[error("hypervisor \"builtin\" cannot {0} yet")]
    Unsupported(&'static str),
    /// The run directory or a log file in it could not be made.
    #[error("creating {path}")]
    RunDir {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// hull-vmm could not be started at all.
    #[error("starting {binary}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The VMM in the shim could not launch the VM.
    #[error("the VMM in the shim")]
    Launch(#[from] hull_vmm::launch::Error),
    /// The vCPUs' seccomp filter could not be built.
    #[error("the vCPUs' seccomp filter")]
    Seccomp(#[from] hull_vmm::seccomp::Error),
    /// The VM's stop eventfd, or the device loop's ring, could not be set up on the shim's
    /// event loop.
    #[error("serving the VM's device loop on the shim's event loop")]
    EventLoop(#[source] std::io::Error),
    /// Waiting for or signalling hull-vmm failed.
    #[error("waiting for hull-vmm (pid {pid:?})")]
    Wait {
        /// Its pid.
        pid: Option<u32>,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A `Result` with this module's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Finds hull-vmm next to `beside` (the shim binary), then on `path`.
pub fn find_vmm(beside: Option<&Path>, path: Option<&std::ffi::OsStr>) -> Result<PathBuf> {
    crate::paths::find_helper(VMM_BINARY, beside, path).ok_or(Error::NotFound)
}

/// The VMM's devices for `spec`, in its order, the vsock device getting guest context id
/// `cid`: the same for hull-vmm's flags ([`arguments`]) and the VMM in the shim
/// ([`in_process`]). What the VMM cannot serve is refused by name.
pub(crate) fn devices(spec: &VmSpec, cid: u32) -> Result<Vec<Device>> {
    let mut devices = Vec::with_capacity(spec.devices.len());
    let mut vsock = false;
    for device in &spec.devices {
        devices.push(match device {
            VmDevice::VhostUserVsock { socket } | VmDevice::HybridVsock { uds: socket } => {
                if std::mem::replace(&mut vsock, true) {
                    return Err(Error::Unsupported("serve two vsock devices"));
                }
                let cid = u64::from(cid);
                match device {
                    VmDevice::HybridVsock { .. } => Device::InVmmVsock {
                        uds: socket.clone(),
                        cid,
                    },
                    _ => Device::VhostUser(socket.clone(), VhostUserKind::Vsock { cid }),
                }
            }
            VmDevice::VhostUserFs { socket, tag } => {
                Device::VhostUser(socket.clone(), VhostUserKind::Fs { tag: tag.clone() })
            }
            // The MAC is served by hull-net in the device's configuration space.
            VmDevice::VhostUserNet { socket, .. } => {
                Device::VhostUser(socket.clone(), VhostUserKind::Net)
            }
            VmDevice::VhostUserBlk { socket } => {
                Device::VhostUser(socket.clone(), VhostUserKind::Block)
            }
            VmDevice::Tap { .. } => {
                return Err(Error::Unsupported(
                    "serve a tap itself: set network.backend = \"hull-net\"",
                ))
            }
        });
    }
    Ok(devices)
}

/// A device of the built-in VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Device {
    /// A vhost-user frontend on the backend's socket.
    VhostUser(PathBuf, VhostUserKind),
    /// The VMM's own vsock device on a hybrid unix socket.
    InVmmVsock {
        /// The hybrid socket.
        uds: PathBuf,
        /// The guest's context id.
        cid: u64,
    },
}

/// Builds hull-vmm's arguments for `spec`, the vsock device getting guest context id `cid`.
pub fn arguments(spec: &VmSpec, cid: u32) -> Result<Vec<OsString>> {
    let mut args: Vec<OsString> = vec![
        "--kernel".into(),
        spec.kernel.clone().into(),
        "--initrd".into(),
        spec.initrd.clone().into(),
        "--cmdline".into(),
        spec.kernel_params.join(" ").into(),
        "--memory".into(),
        spec.memory_mib.to_string().into(),
        "--vcpus".into(),
        spec.vcpus.to_string().into(),
    ];
    for device in devices(spec, cid)? {
        // hull-vmm's flags take `SOCK,key=value`: built as OsStrings so any socket path
        // passes through unchanged.
        let (flag, mut value, suffix): (&str, OsString, Option<String>) = match device {
            Device::InVmmVsock { uds, cid } => {
                args.extend([
                    "--vsock-uds".into(),
                    uds.into(),
                    "--guest-cid".into(),
                    cid.to_string().into(),
                ]);
                continue;
            }
            Device::VhostUser(socket, VhostUserKind::Vsock { cid }) => (
                "--vhost-user-vsock",
                socket.into(),
                Some(format!(",cid={cid}")),
            ),
            Device::VhostUser(socket, VhostUserKind::Fs { tag }) => (
                "--vhost-user-fs",
                socket.into(),
                Some(format!(",tag={tag}")),
            ),
            Device::VhostUser(socket, VhostUserKind::Net) => {
                ("--vhost-user-net", socket.into(), None)
            }
            Device::VhostUser(socket, VhostUserKind::Block) => {
                ("--vhost-user-blk", socket.into(), None)
            }
        };
        if let Some(suffix) = suffix {
            value.push(suffix);
        }
        args.extend([flag.into(), value]);
    }
    Ok(args)
}

/// A running hull-vmm. Dropping it kills hull-vmm and removes its run directory;
/// [`VmmVm::stop`] is the orderly way.
#[derive(Debug)]
pub struct VmmVm {
    child: Child,
    pid: Option<u32>,
    run_dir: RunDir,
}

/// Creates the VM's run directory `path` (0700, must not exist).
pub(crate) fn create_run_dir(path: &Path) -> Result<RunDir> {
    RunDir::create(path).map_err(|source| Error::RunDir {
        path: path.to_owned(),
        source,
    })
}

/// Creates the file `name` in the VM's run directory.
pub(crate) fn run_file(run_dir: &RunDir, name: &str) -> Result<fs::File> {
    run_dir
        .file(name)
        .map_err(|(path, source)| Error::RunDir { path, source })
}

impl VmmVm {
    /// Starts `binary` (hull-vmm) for `spec` with its files in `run_dir` (created 0700, must
    /// not exist): the guest console in `console.log`, hull-vmm's own messages in
    /// `vmm.stderr`. Returns once it is spawned; hull-vmm then connects to the backends and
    /// boots, and exits (seen by [`VmmVm::wait`]) if it cannot.
    pub async fn start(spec: &VmSpec, cid: u32, binary: &Path, run_dir: &Path) -> Result<Self> {
        let mut args = arguments(spec, cid)?;
        // The VM's counters (vCPU exits) beside the backends', where the pod's metrics
        // gather them (the sandbox's run directory, this one's parent).
        if let Some(sandbox_dir) = run_dir.parent() {
            args.extend([
                "--metrics-socket".into(),
                crate::monitor::backend_metrics_socket(sandbox_dir, "hull-vmm").into(),
            ]);
        }
        let run_dir = create_run_dir(run_dir)?;
        let console = run_file(&run_dir, "console.log")?;
        let stderr = run_file(&run_dir, "vmm.stderr")?;
        tracing::info!(vm = %spec.id, binary = %binary.display(), "starting hull-vmm");
        tracing::debug!(?args, "hull-vmm arguments");
        let mut command = Command::new(binary);
        // hull-vmm does not outlive the shim (see crate::parent_death).
        crate::parent_death::die_with_parent(command.as_std_mut(), libc::SIGKILL);
        let child = command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| Error::Spawn {
                binary: binary.to_owned(),
                source,
            })?;
        let pid = child.id();
        Ok(Self {
            child,
            pid,
            run_dir,
        })
    }

    /// hull-vmm's process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The file the guest's serial console is written to.
    pub fn console_log(&self) -> PathBuf {
        self.run_dir.path().join("console.log")
    }

    /// What hull-vmm itself wrote (why it could not start, a vCPU's failure).
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.run_dir.path().join("vmm.stderr")).unwrap_or_default()
    }

    /// Kills hull-vmm (SIGKILL) and reaps it, for a boot that failed: it has ended when this
    /// returns (dropping it only sends the signal).
    pub async fn kill(&mut self) -> Result<()> {
        let pid = self.pid;
        self.child
            .kill()
            .await
            .map_err(|source| Error::Wait { pid, source })
    }

    /// Waits until hull-vmm exits by itself (the guest stopped, or it failed). Cancel-safe.
    pub async fn wait(&mut self) -> Result<ExitStatus> {
        let pid = self.pid;
        self.child
            .wait()
            .await
            .map_err(|source| Error::Wait { pid, source })
    }

    /// Sends hull-vmm SIGTERM (it stops the vCPUs and exits), and kills it if it has not
    /// exited within `grace`. Returns once it is reaped and its run directory removed.
    pub async fn stop(mut self, grace: Duration) -> Result<ExitStatus> {
        let pid = self.pid;
        if let Some(raw) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) {
            // Not reaped yet (only `wait` here reaps it), so the pid is still this child's,
            // if only as a zombie.
            // SAFETY: kill(2) takes plain integers and has no memory-safety preconditions.
            if unsafe { libc::kill(raw, libc::SIGTERM) } != 0 {
                tracing::debug!(err = %std::io::Error::last_os_error(), "SIGTERM to hull-vmm");
            }
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.map_err(|source| Error::Wait { pid, source }),
            Err(_) => {
                tracing::warn!(?pid, ?grace, "hull-vmm did not stop in time; killing it");
                self.kill().await?;
                self.wait().await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(devices: Vec<VmDevice>) -> VmSpec {
        VmSpec {
            id: "pod1".into(),
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initrd.img".into(),
            kernel_params: vec!["console=ttyS0".into(), "agent.hostname=pod1".into()],
            vcpus: 2,
            memory_mib: 512,
            devices,
        }
    }

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_pod_with_vsock_fs_and_net_becomes_hull_vmm_flags() {
        let args = arguments(
            &spec(vec![
                VmDevice::VhostUserVsock {
                    socket: "/run/p/vsock.sock".into(),
                },
                VmDevice::VhostUserFs {
                    socket: "/run/p/fs.sock".into(),
                    tag: "hullshared".into(),
                },
                VmDevice::VhostUserNet {
                    socket: "/run/p/net0.sock".into(),
                    mac: [2, 0, 0, 0, 0, 1],
                },
            ]),
            3,
        )
        .unwrap();
        assert_eq!(
            strings(&args),
            [
                "--kernel",
                "/k/vmlinux",
                "--initrd",
                "/k/initrd.img",
                "--cmdline",
                "console=ttyS0 agent.hostname=pod1",
                "--memory",
                "512",
                "--vcpus",
                "2",
                "--vhost-user-vsock",
                "/run/p/vsock.sock,cid=3",
                "--vhost-user-fs",
                "/run/p/fs.sock,tag=hullshared",
                "--vhost-user-net",
                "/run/p/net0.sock",
            ]
        );
    }

    #[test]
    fn blk_devices_are_passed_on() {
        let args = arguments(
            &spec(vec![VmDevice::VhostUserBlk {
                socket: "/run/p/blk.sock".into(),
            }]),
            3,
        )
        .unwrap();
        assert_eq!(
            strings(&args[10..]),
            ["--vhost-user-blk", "/run/p/blk.sock"]
        );
    }

    #[test]
    fn a_tap_or_a_second_vsock_is_refused_by_name() {
        let err = arguments(
            &spec(vec![VmDevice::Tap {
                fds: vec![7],
                mac: [2, 0, 0, 0, 0, 1],
            }]),
            3,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("network.backend = \"hull-net\""),
            "{err}"
        );
        let vsock = VmDevice::VhostUserVsock {
            socket: "/v.sock".into(),
        };
        let err = arguments(&spec(vec![vsock.clone(), vsock]), 3).unwrap_err();
        assert!(err.to_string().contains("two vsock devices"), "{err}");
    }

    #[test]
    fn a_hybrid_vsock_is_hull_vmms_own_device_on_the_agent_socket() {
        let hybrid = VmDevice::HybridVsock {
            uds: "/run/p/agent.vsock".into(),
        };
        let args = strings(&arguments(&spec(vec![hybrid.clone()]), 3).unwrap());
        let at = args.iter().position(|a| a == "--vsock-uds").unwrap();
        assert_eq!(
            args[at..at + 4],
            ["--vsock-uds", "/run/p/agent.vsock", "--guest-cid", "3"]
        );
        assert!(!args.iter().any(|a| a == "--vhost-user-vsock"), "{args:?}");
        let vhost = VmDevice::VhostUserVsock {
            socket: "/v.sock".into(),
        };
        let err = arguments(&spec(vec![hybrid, vhost]), 3).unwrap_err();
        assert!(err.to_string().contains("two vsock devices"), "{err}");
    }

    #[test]
    fn a_missing_hull_vmm_is_named() {
        let empty = tempfile::tempdir().unwrap();
        let beside = empty.path().join("containerd-shim-hull-v2");
        let err = find_vmm(Some(&beside), Some(empty.path().as_os_str())).unwrap_err();
        assert!(err.to_string().starts_with("hull-vmm not found"), "{err}");
    }

    #[test]
    fn hull_vmm_is_found_next_to_the_shim_first() {
        use std::os::unix::fs::PermissionsExt;
        let (shim_dir, path_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for dir in [shim_dir.path(), path_dir.path()] {
            let vmm = dir.join(VMM_BINARY);
            fs::write(&vmm, "#!/bin/sh\n").unwrap();
            fs::set_permissions(&vmm, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let beside = shim_dir.path().join("containerd-shim-hull-v2");
        let found = find_vmm(Some(&beside), Some(path_dir.path().as_os_str())).unwrap();
        assert_eq!(found, shim_dir.path().join(VMM_BINARY));
        let found = find_vmm(None, Some(path_dir.path().as_os_str())).unwrap();
        assert_eq!(found, path_dir.path().join(VMM_BINARY));
    }

    #[tokio::test]
    async fn stop_ends_a_running_vmm_and_removes_its_run_directory() {
        // A stand-in for hull-vmm that runs until signalled: stop's SIGTERM must end it.
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join(VMM_BINARY);
        fs::write(&fake, "#!/bin/sh\necho booting\nexec sleep 600\n").unwrap();
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        let run_dir = dir.path().join("vmm");
        let vm = VmmVm::start(&spec(vec![]), 3, &fake, &run_dir)
            .await
            .unwrap();
        let pid = vm.pid().unwrap();
        let status = vm.stop(Duration::from_secs(20)).await.unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM), "{status}");
        assert!(!run_dir.exists(), "the run directory is removed");
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "the process is reaped"
        );
    }
}
