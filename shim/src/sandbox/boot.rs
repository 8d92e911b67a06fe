//! Bringing up a pod's VM to the point where its agent answers: the vsock backend, then the
//! VM, then the agent link. Used by the sandbox's start and by `hull check --boot`.
//!
//! Everything started here is owned by [`BootedVm`]; an error part-way kills and reaps the
//! backends already started before it returns, so a failed boot leaves nothing running.
//! The VM is QEMU (`qemu`) or hull-vmm (`builtin`, see [`crate::vmm`]), behind [`Vm`].

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::agent_link::{self, AgentLink};
use crate::backend::{self, BackendProcess};
use crate::config::BuiltinProcess;
use crate::config::{Config, HypervisorKind, NetworkBackend};
use crate::host::{find_program, Virtualization};
use crate::network::PodNetwork;
use crate::phase::Phase;
use crate::qemu::{self, Accel, QemuOptions, QemuVm};
use crate::run_dir::RunDir;
use crate::vm_spec::{VmDevice, VmSpec};
use crate::vmm::in_process::InProcessVm;
use crate::vmm::{self, VmmVm};

use super::disk::BlockDisk;
use super::share::{SharedDir, SHARE_TAG};
use super::watch::{Death, Ending, ProcessWatch, VMM_GRACE};

/// The guest's vsock context id (the first one past the reserved 0 to 2).
pub const GUEST_CID: u32 = 3;
/// How long a backend may take to create its socket.
const BACKEND_DEADLINE: Duration = Duration::from_secs(10);
/// How long one agent call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of booting a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration asks for a hypervisor this step cannot use yet.
    #[error(
        "hypervisor {0:?} cannot boot a guest: set hypervisor = \"qemu\", \"builtin\" or \"auto\""
    )]
    Hypervisor(HypervisorKind),
    /// A helper binary was not found.
    #[error("{0} not found next to this binary or on PATH: run 'make build' and put target/release on PATH")]
    Helper(&'static str),
    /// A file the VM needs is missing.
    #[error("{what} {path} does not exist: run 'make image', or set vm.kernel / vm.initrd")]
    Missing {
        /// Kernel or initrd.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// The vsock backend failed.
    #[error("the vsock backend")]
    Backend(#[from] backend::Error),
    /// A network backend (hull-net) failed to start.
    #[error("hull-net for the pod's interface number {nic} (network.backend = \"hull-net\")")]
    NetBackend {
        /// The NIC's index among the pod's interfaces.
        nic: usize,
        /// Why.
        #[source]
        source: backend::Error,
    },
    /// A disk's backend (hull-blk) failed to start.
    #[error("hull-blk for the VM's disk {} (serial {serial:?})", path.display())]
    BlkBackend {
        /// The disk's host path.
        path: PathBuf,
        /// Its serial.
        serial: String,
        /// Why.
        #[source]
        source: backend::Error,
    },
    /// The VM failed.
    #[error("the VM")]
    Vm(#[from] qemu::Error),
    /// The built-in VMM failed.
    #[error("the VM (hull-vmm)")]
    Vmm(#[from] vmm::Error),
    /// The VM stopped before its agent answered.
    #[error("the VM exited ({status}) before its agent answered; console log ends:\n{console}")]
    VmExited {
        /// QEMU's exit status.
        status: String,
        /// The last lines of the guest console.
        console: String,
    },
    /// The pod's shared directory could not be made.
    #[error("the pod's shared directory")]
    Share(#[from] super::share::Error),
    /// The agent could not configure the pod's network in the guest.
    #[error("configuring the pod's network in the guest")]
    Network(#[source] agent_link::Error),
    /// The agent could not set up the sandbox (CreateSandbox: the share's mount).
    #[error("setting up the sandbox in the guest")]
    Sandbox(#[source] agent_link::Error),
    /// A device backend died while the VM booted.
    #[error("{death} while the VM booted")]
    BackendDied {
        /// Which, and how.
        death: Death,
        /// What the boot made of it, if it failed of it before the death was seen.
        #[source]
        source: Option<Box<Error>>,
    },
    /// The agent did not answer.
    #[error("the guest agent (console log: {console})")]
    Agent {
        /// The guest console so far.
        console: String,
        /// Why.
        #[source]
        source: agent_link::Error,
    },
}

/// A `Result` with this module's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// What ended the wait for the agent.
enum BootOutcome {
    Agent(agent_link::Result<AgentLink>),
    VmExited(Result<String>),
    BackendDied(Death),
}

/// The VM: QEMU, hull-vmm, or the built-in VMM in the shim's process, with what the boot
/// and the shutdown need of each.
enum Vm {
    Qemu(QemuVm),
    Builtin(VmmVm),
    InProcess(InProcessVm),
}

impl Vm {
    fn pid(&self) -> Option<u32> {
        match self {
            Vm::Qemu(vm) => vm.pid(),
            Vm::Builtin(vm) => vm.pid(),
            Vm::InProcess(_) => None,
        }
    }

    /// Its role among the sandbox's watched processes.
    fn role(&self) -> &'static str {
        match self {
            Vm::Qemu(_) => super::watch::VMM_ROLE,
            Vm::Builtin(_) | Vm::InProcess(_) => super::watch::BUILTIN_VMM_ROLE,
        }
    }

    fn console_log(&self) -> PathBuf {
        match self {
            Vm::Qemu(vm) => vm.console_log(),
            Vm::Builtin(vm) => vm.console_log(),
            Vm::InProcess(vm) => vm.console_log(),
        }
    }

    /// The console's last lines, and for hull-vmm its own last words (QEMU's are in the
    /// error of its start), for the VMM in the shim why the VM stopped.
    fn last_words(&self) -> String {
        let console = last_lines(
            &std::fs::read_to_string(self.console_log()).unwrap_or_default(),
            20,
        );
        match self {
            Vm::Qemu(_) => console,
            // Its lines start with "hull-vmm: ".
            Vm::Builtin(vm) => format!("{console}\n{}", last_lines(&vm.stderr(), 5)),
            Vm::InProcess(vm) => match vm.stop_reason() {
                Some(reason) => format!("{console}\nthe VM stopped: {reason}"),
                None => console,
            },
        }
    }

    /// Waits until the VM ends by itself, and says how (an exit status, a stop's reason).
    async fn wait(&mut self) -> Result<String> {
        Ok(match self {
            Vm::Qemu(vm) => vm.wait().await?.to_string(),
            Vm::Builtin(vm) => vm.wait().await?.to_string(),
            Vm::InProcess(vm) => format!("stopped: {}", vm.wait().await?),
        })
    }

    /// Kills and reaps it (a failed boot's end).
    async fn kill(&mut self) {
        let killed = match self {
            Vm::Qemu(vm) => vm.kill().await.map_err(Error::from),
            Vm::Builtin(vm) => vm.kill().await.map_err(Error::from),
            Vm::InProcess(vm) => {
                vm.kill().await;
                Ok(())
            }
        };
        if let Err(err) = killed {
            tracing::warn!(%err, "killing the VM of a failed boot");
        }
    }

    async fn stop(self, grace: Duration) -> Result<()> {
        match self {
            Vm::Qemu(vm) => drop(vm.stop(grace).await?),
            Vm::Builtin(vm) => drop(vm.stop(grace).await?),
            Vm::InProcess(vm) => {
                let reason = vm.stop(grace).await;
                tracing::debug!(%reason, "the VM in the shim stopped");
            }
        }
        Ok(())
    }
}

/// A booted VM whose agent answers.
pub struct BootedVm {
    /// The agent.
    pub agent: AgentLink,
    vm: Vm,
    /// hull-vsock, for QEMU (hull-vmm serves the vsock device itself).
    vsock: Option<BackendProcess>,
    fs: Option<BackendProcess>,
    /// One hull-net per pod interface, with `network.backend = "hull-net"`.
    nets: Vec<BackendProcess>,
    /// One hull-blk per disk given to [`boot_pod_with_disks`].
    blks: Vec<BackendProcess>,
    // Dropped after the processes that serve it, before the run directory.
    share: Option<SharedDir>,
    /// Time from the start of [`boot`] to the agent's first SERVING answer.
    pub boot_time: Duration,
    /// The agent's log, forwarded into the shim's while the VM runs.
    _agent_log: crate::agent_log::Forwarding,
    // Declared last, so it is dropped after the processes using it.
    _run_dir: RunDir,
}

impl BootedVm {
    /// The guest's serial console so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.vm.console_log()).unwrap_or_default()
    }

    /// The host processes of the VM, by role, for the sandbox's persisted record.
    pub fn processes(&self) -> Vec<(&'static str, u32)> {
        [
            (
                "hull-vsock",
                self.vsock.as_ref().and_then(BackendProcess::pid),
            ),
            ("hull-fs", self.fs.as_ref().and_then(BackendProcess::pid)),
            (self.vm.role(), self.vm.pid()),
        ]
        .into_iter()
        .chain(self.nets.iter().map(|net| ("hull-net", net.pid())))
        .chain(self.blks.iter().map(|blk| ("hull-blk", blk.pid())))
        .filter_map(|(role, pid)| Some((role, pid?)))
        .collect()
    }

    /// The watch of a VM run by the shim's own process (it has no pid to watch, see
    /// [`super::watch`]); `None` for a VM in a process of its own.
    pub fn in_process_watch(&self) -> Option<std::result::Result<ProcessWatch, String>> {
        let Vm::InProcess(vm) = &self.vm else {
            return None;
        };
        Some(
            vm.watch()
                .map_err(|err| format!("{:#}", anyhow::Error::from(err)))
                .and_then(|(fd, status)| {
                    ProcessWatch::vm(self.vm.role(), fd, status)
                        .map_err(|err| format!("{:#}", anyhow::Error::from(err)))
                }),
        )
    }

    /// The pod's shared directory, when the VM was booted with one.
    pub fn share(&self) -> Option<&SharedDir> {
        self.share.as_ref()
    }

    /// Stops the VM, then the backends (which exit when their frontend goes), then removes
    /// the share and the run directory.
    pub async fn shutdown(self, grace: Duration) -> Result<()> {
        let Self {
            agent,
            vm,
            vsock,
            fs,
            nets,
            blks,
            share,
            _run_dir: run_dir,
            ..
        } = self;
        drop(agent);
        vm.stop(grace).await?;
        if let Some(vsock) = vsock {
            vsock.stop(grace).await?;
        }
        if let Some(fs) = fs {
            fs.stop(grace).await?;
        }
        for net in nets {
            net.stop(grace).await?;
        }
        for blk in blks {
            blk.stop(grace).await?;
        }
        drop(share);
        drop(run_dir);
        Ok(())
    }
}

/// Boots the VM `config` describes with its files in `run_dir` (created 0700, must not exist,
/// removed when the VM is shut down or the boot fails),
/// finding helper binaries next to `beside` or on PATH.
pub async fn boot(
    config: &Config,
    id: &str,
    run_dir: &Path,
    beside: Option<&Path>,
) -> Result<BootedVm> {
    boot_with_share(config, id, run_dir, beside, false).await
}

/// [`boot`], and with `share` the pod's shared directory at `run_dir/shared` served by
/// hull-fs as virtio-fs device [`SHARE_TAG`]. The caller records `run_dir/shared` as a mount
/// of the sandbox first.
pub async fn boot_with_share(
    config: &Config,
    id: &str,
    run_dir: &Path,
    beside: Option<&Path>,
    share: bool,
) -> Result<BootedVm> {
    boot_pod(config, id, run_dir, beside, share, None).await
}

/// [`boot_with_share`], and with `network` a NIC per pod interface (on the endpoint's tap:
/// QEMU's virtio-net, or a hull-net per NIC as `network.backend` says) whose guest side the
/// agent configures (UpdateInterface for each, then UpdateRoutes) before the boot counts as
/// done.
pub async fn boot_pod(
    config: &Config,
    id: &str,
    run_dir: &Path,
    beside: Option<&Path>,
    share: bool,
    network: Option<&PodNetwork>,
) -> Result<BootedVm> {
    boot_pod_with_disks(config, id, run_dir, beside, share, network, &[]).await
}

/// [`boot_pod`], and a virtio-blk disk per entry of `disks`, each served by its own hull-blk
/// under the disk's serial (see [`BlockDisk`]), stopped with the VM. The guest sees them in
/// that order, after the share and before the NICs; the agent mounts one when a storage
/// names its serial.
pub async fn boot_pod_with_disks(
    config: &Config,
    id: &str,
    run_dir: &Path,
    beside: Option<&Path>,
    share: bool,
    network: Option<&PodNetwork>,
    disks: &[BlockDisk],
) -> Result<BootedVm> {
    let started = Instant::now();
    // Only what the boot needs: no version probes of QEMU or containerd on a pod's start.
    let virt = Virtualization::probe();
    let kind = match config.hypervisor {
        HypervisorKind::Auto => virt.auto_hypervisor(),
        other => other,
    };
    if !matches!(kind, HypervisorKind::Qemu | HypervisorKind::Builtin) {
        return Err(Error::Hypervisor(kind));
    }
    let (kernel, initrd) = (config.kernel(), config.initrd());
    for (what, path) in [("kernel", &kernel), ("initrd", &initrd)] {
        if !path.is_file() {
            return Err(Error::Missing {
                what,
                path: path.clone(),
            });
        }
    }
    let path_env = std::env::var_os("PATH");
    // hull-vmm serves the vsock device itself; QEMU's is hull-vsock's (vhost-user).
    let vsock_bin = if kind == HypervisorKind::Builtin {
        None
    } else {
        Some(
            crate::paths::find_helper("hull-vsock", beside, path_env.as_deref())
                .ok_or(Error::Helper("hull-vsock"))?,
        )
    };
    // The VMM in the shim needs no binary; hull-vmm and QEMU do.
    let vm_bin = match (kind, config.vm.builtin_process) {
        (HypervisorKind::Builtin, BuiltinProcess::Shim) => None,
        (HypervisorKind::Builtin, BuiltinProcess::HullVmm) => {
            Some(vmm::find_vmm(beside, path_env.as_deref())?)
        }
        _ => Some(
            find_program(&config.qemu.path, path_env.as_deref())
                .ok_or(Error::Helper("qemu-system-x86_64"))?,
        ),
    };
    let fs_bin = if share {
        Some(
            crate::paths::find_helper("hull-fs", beside, path_env.as_deref())
                .ok_or(Error::Helper("hull-fs"))?,
        )
    } else {
        None
    };
    let blk_bin = if disks.is_empty() {
        None
    } else {
        Some(
            crate::paths::find_helper("hull-blk", beside, path_env.as_deref())
                .ok_or(Error::Helper("hull-blk"))?,
        )
    };
    let net_bin = match network {
        Some(network)
            if config.network.backend == NetworkBackend::HullNet && !network.nics().is_empty() =>
        {
            Some(
                crate::paths::find_helper("hull-net", beside, path_env.as_deref())
                    .ok_or(Error::Helper("hull-net"))?,
            )
        }
        _ => None,
    };

    // run_dir holds the backends' sockets and logs, and QEMU's own directory.
    // (Its parent, the namespace's directory, may be removed by another pod's stop meanwhile:
    // created again then.)
    super::persist::create_run_dir(run_dir).map_err(|source| qemu::Error::RunDir {
        path: run_dir.to_owned(),
        source,
    })?;
    let guard = RunDir::adopt(run_dir);
    let vhost_socket = run_dir.join("vsock.sock");
    let uds = run_dir.join("agent.vsock");
    let cid = GUEST_CID.to_string();
    let vsock_metrics = crate::monitor::backend_metrics_socket(run_dir, "hull-vsock");
    let args: [&OsStr; 8] = [
        "--socket".as_ref(),
        vhost_socket.as_os_str(),
        "--uds".as_ref(),
        uds.as_os_str(),
        "--guest-cid".as_ref(),
        cid.as_ref(),
        "--metrics-socket".as_ref(),
        vsock_metrics.as_os_str(),
    ];
    let (vsock, vsock_device) = match &vsock_bin {
        Some(vsock_bin) => {
            let vsock = BackendProcess::start(
                vsock_bin,
                &args,
                &vhost_socket,
                &run_dir.join("hull-vsock.log"),
                BACKEND_DEADLINE,
            )
            .await?;
            let device = VmDevice::VhostUserVsock {
                socket: vhost_socket.clone(),
            };
            (Some(vsock), device)
        }
        None => (None, VmDevice::HybridVsock { uds: uds.clone() }),
    };
    let mut devices = vec![vsock_device];
    let mut backends = Backends {
        vsock,
        fs: None,
        nets: Vec::new(),
        blks: Vec::new(),
    };
    // Every backend started joins `backends` at once, so that a failure of any later step
    // kills and reaps all of them before the error is returned (their Drop only signals).
    let mut share = None;
    let booting = async {
        if let Some(fs_bin) = fs_bin {
            let shared = SharedDir::create(&run_dir.join("shared"))?;
            let fs_socket = run_dir.join("fs.sock");
            let fs_metrics = crate::monitor::backend_metrics_socket(run_dir, "hull-fs");
            let args: [&OsStr; 6] = [
                "--socket-path".as_ref(),
                fs_socket.as_os_str(),
                "--shared-dir".as_ref(),
                shared.host().as_os_str(),
                "--metrics-socket".as_ref(),
                fs_metrics.as_os_str(),
            ];
            let fs = BackendProcess::start(
                &fs_bin,
                &args,
                &fs_socket,
                &run_dir.join("hull-fs.log"),
                BACKEND_DEADLINE,
            )
            .await?;
            devices.push(VmDevice::VhostUserFs {
                socket: fs_socket,
                tag: SHARE_TAG.to_owned(),
            });
            backends.fs = Some(fs);
            share = Some(shared);
        }

        if let Some(blk_bin) = &blk_bin {
            for (index, disk) in disks.iter().enumerate() {
                let socket = run_dir.join(format!("blk{index}.sock"));
                let args = disk.hull_blk_args(&socket);
                let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
                let blk = BackendProcess::start(
                    blk_bin,
                    &args,
                    &socket,
                    &run_dir.join(format!("hull-blk{index}.log")),
                    BACKEND_DEADLINE,
                )
                .await
                .map_err(|source| Error::BlkBackend {
                    path: disk.path.clone(),
                    serial: disk.serial.clone(),
                    source,
                })?;
                backends.blks.push(blk);
                devices.push(VmDevice::VhostUserBlk { socket });
            }
        }

        // no_timer_check (as Kata's default kernel_params): the kernel's IO-APIC timer check
        // counts ticks against a busy-wait, and a guest under TCG on a loaded host fails it and
        // panics ("IO-APIC + timer doesn't work!"); the timer works, the check is too strict.
        let mut kernel_params: Vec<String> =
            ["console=ttyS0", "reboot=t", "panic=-1", "no_timer_check"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        kernel_params.push(format!("agent.hostname={}", hostname_of(id)));
        kernel_params.extend(
            config
                .vm
                .kernel_params
                .split_whitespace()
                .map(str::to_owned),
        );
        if let Some(network) = network {
            match &net_bin {
                None => devices.extend(network.vm_devices()),
                Some(net_bin) => {
                    for (nic, crate::network::Nic { fds, mac, mtu }) in
                        network.nics().into_iter().enumerate()
                    {
                        let socket = run_dir.join(format!("net{nic}.sock"));
                        let mut args: Vec<OsString> = vec![
                            "--socket".into(),
                            socket.clone().into(),
                            "--mac".into(),
                            crate::network::mac_text(&mac).into(),
                            "--mtu".into(),
                            mtu.to_string().into(),
                            "--metrics-socket".into(),
                            crate::monitor::backend_metrics_socket(
                                run_dir,
                                &format!("hull-net{nic}"),
                            )
                            .into(),
                        ];
                        for fd in &fds {
                            args.extend(["--tap-fd".into(), fd.to_string().into()]);
                        }
                        let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
                        let net = BackendProcess::start_inheriting(
                            net_bin,
                            &args,
                            &fds,
                            &socket,
                            &run_dir.join(format!("hull-net{nic}.log")),
                            BACKEND_DEADLINE,
                        )
                        .await
                        .map_err(|source| Error::NetBackend { nic, source })?;
                        backends.nets.push(net);
                        devices.push(VmDevice::VhostUserNet { socket, mac });
                    }
                }
            }
        }
        let spec = VmSpec {
            id: id.to_owned(),
            kernel,
            initrd,
            kernel_params,
            vcpus: config.vm.vcpus,
            memory_mib: config.vm.memory_mib,
            devices,
        };
        crate::phase::sandbox(id, Phase::BackendsReady);
        boot_vm(
            config,
            id,
            run_dir,
            &spec,
            kind,
            &virt,
            vm_bin,
            &uds,
            network,
            share.is_some(),
            &mut backends,
        )
        .await
    };
    let (agent, vm, agent_log) = match booting.await {
        Ok(booted) => booted,
        // A backend that died is why the boot failed, whatever the VM made of it (QEMU
        // refused its socket, the agent became unreachable): named first.
        Err(err) => {
            let err = match backends.dead() {
                Some(death) => Error::BackendDied {
                    death,
                    source: Some(Box::new(err)),
                },
                None => err,
            };
            backends.kill().await;
            return Err(err);
        }
    };
    let Backends {
        vsock,
        fs,
        nets,
        blks,
    } = backends;
    Ok(BootedVm {
        agent,
        vm,
        vsock,
        fs,
        nets,
        blks,
        share,
        boot_time: started.elapsed(),
        _agent_log: agent_log,
        _run_dir: guard,
    })
}

/// A VM's device backends, while it boots.
struct Backends {
    vsock: Option<BackendProcess>,
    fs: Option<BackendProcess>,
    nets: Vec<BackendProcess>,
    blks: Vec<BackendProcess>,
}

impl Backends {
    fn all(&mut self) -> Vec<(&'static str, &mut BackendProcess)> {
        self.vsock
            .as_mut()
            .map(|vsock| ("hull-vsock", vsock))
            .into_iter()
            .chain(self.fs.as_mut().map(|fs| ("hull-fs", fs)))
            .chain(self.nets.iter_mut().map(|net| ("hull-net", net)))
            .chain(self.blks.iter_mut().map(|blk| ("hull-blk", blk)))
            .collect()
    }

    /// A backend that failed by now, the one killed by a signal first, then one that exited
    /// with an error. A clean exit is no failure: a backend exits cleanly when QEMU goes,
    /// which another's death, or the guest powering off, may cause (the fault matrix's
    /// "hull-fs killed while creating" was blamed on hull-vsock's clean exit).
    fn dead(&mut self) -> Option<Death> {
        let rank = |death: &Death| match death.ending {
            Ending::Killed(_) => 0,
            Ending::Exited(_) => 1,
            Ending::Unknown | Ending::Stopped(_) => 2,
        };
        self.all()
            .into_iter()
            .filter_map(|(role, backend)| {
                let pid = backend.pid()?;
                let status = backend.try_exited()?;
                Some(Death {
                    role,
                    pid: Some(pid),
                    ending: status.into(),
                })
            })
            .filter(|death| !matches!(death.ending, Ending::Exited(0)))
            .min_by_key(rank)
    }

    /// Kills every backend and reaps it, so that none is left running (nor a zombie) once
    /// this returns: a failed boot's error reaches the caller only after this.
    async fn kill(mut self) {
        for (role, backend) in self.all() {
            if let Err(err) = backend.kill().await {
                tracing::warn!(role, %err, "killing a backend of a failed boot");
            }
        }
    }

    /// The first backend to exit (never returns while all run).
    async fn first_death(&mut self) -> Death {
        let waits: Vec<_> = self
            .all()
            .into_iter()
            .map(|(role, backend)| {
                Box::pin(async move {
                    let pid = backend.pid();
                    let ending = backend.exited().await.map_or(Ending::Unknown, Into::into);
                    Death { role, pid, ending }
                })
            })
            .collect();
        if waits.is_empty() {
            // hull-vmm with no backend process: nothing here can die.
            return std::future::pending().await;
        }
        futures_util::future::select_all(waits).await.0
    }
}

/// Starts the VM on `spec` and waits for its agent (ending the wait if the VM or one of
/// `backends` dies), then sets up the pod's network and the sandbox in the guest.
#[allow(clippy::too_many_arguments)] // The boot's own state, split off for its error path.
async fn boot_vm(
    config: &Config,
    id: &str,
    run_dir: &Path,
    spec: &VmSpec,
    kind: HypervisorKind,
    virt: &Virtualization,
    vm_bin: Option<PathBuf>,
    uds: &Path,
    network: Option<&PodNetwork>,
    share: bool,
    backends: &mut Backends,
) -> Result<(AgentLink, Vm, crate::agent_log::Forwarding)> {
    let mut vm = if kind == HypervisorKind::Builtin {
        if !virt.full_guests_on_kvm() {
            tracing::warn!(vm = %id, "no hardware virtualization: a Linux guest may not boot under hull-vmm here");
        }
        let vmm_dir = run_dir.join("vmm");
        match &vm_bin {
            // hull-vmm, as vm.builtin_process = "hull-vmm" asked.
            Some(vm_bin) => Vm::Builtin(VmmVm::start(spec, GUEST_CID, vm_bin, &vmm_dir).await?),
            None => Vm::InProcess(InProcessVm::start(spec, GUEST_CID, &vmm_dir)?),
        }
    } else {
        let accel = if virt.full_guests_on_kvm() {
            Accel::Kvm
        } else {
            Accel::Tcg
        };
        if accel == Accel::Tcg {
            tracing::warn!(vm = %id, "no hardware virtualization: the guest runs under QEMU TCG, slowly");
        }
        let options = QemuOptions {
            binary: vm_bin.ok_or(Error::Helper("qemu-system-x86_64"))?,
            machine: config.qemu.machine,
            accel,
        };
        Vm::Qemu(QemuVm::start(spec, &options, &run_dir.join("qemu")).await?)
    };
    crate::phase::sandbox(id, Phase::VmStarted);
    match agent_up(config, id, uds, network, share, backends, &mut vm).await {
        Ok((agent, agent_log)) => Ok((agent, vm, agent_log)),
        Err(err) => {
            vm.kill().await;
            Err(err)
        }
    }
}

/// Waits for the agent of the started `vm` (ending the wait if the VM or one of `backends`
/// dies), then sets up the pod's network and the sandbox in the guest.
async fn agent_up(
    config: &Config,
    id: &str,
    uds: &Path,
    network: Option<&PodNetwork>,
    share: bool,
    backends: &mut Backends,
    vm: &mut Vm,
) -> Result<(AgentLink, crate::agent_log::Forwarding)> {
    let deadline = Duration::from_secs(u64::from(config.agent.start_timeout_secs));
    // A VM that dies while booting ends the wait at once, with the console's last words; so
    // does a backend (the fault matrix's "hull-vsock killed while creating": the agent is
    // unreachable then, and the wait would last the whole start timeout).
    let outcome = tokio::select! {
        agent = AgentLink::connect(uds, deadline, CALL_TIMEOUT) => BootOutcome::Agent(agent),
        status = vm.wait() => BootOutcome::VmExited(status),
        death = backends.first_death() => {
            // A backend exits cleanly when its frontend goes: if QEMU follows, QEMU's end is
            // the cause (a guest that powered off), as the running sandbox's watch decides.
            if matches!(death.ending, Ending::Exited(0)) {
                match tokio::time::timeout(VMM_GRACE, vm.wait()).await {
                    Ok(status) => BootOutcome::VmExited(status),
                    Err(_) => BootOutcome::BackendDied(death),
                }
            } else {
                BootOutcome::BackendDied(death)
            }
        }
    };
    let console = || vm.last_words();
    let agent = match outcome {
        BootOutcome::Agent(Ok(agent)) => agent,
        BootOutcome::Agent(Err(source)) => {
            return Err(Error::Agent {
                console: console(),
                source,
            })
        }
        BootOutcome::VmExited(status) => {
            let status = status.unwrap_or_else(|e| e.to_string());
            return Err(Error::VmExited {
                status,
                console: console(),
            });
        }
        BootOutcome::BackendDied(death) => {
            return Err(Error::BackendDied {
                death,
                source: None,
            })
        }
    };
    let agent_log = crate::agent_log::Forwarding::start(
        crate::agent_log::LogSource::HybridVsock(uds.to_owned()),
        id.to_owned(),
    );
    if let Some(network) = network {
        for interface in network.guest_interfaces() {
            agent
                .update_interface(interface)
                .await
                .map_err(Error::Network)?;
        }
        agent
            .update_routes(network.guest_routes())
            .await
            .map_err(Error::Network)?;
    }
    // The sandbox's share is mounted once in the guest, before any container is created.
    let storages = if share {
        vec![super::share::guest_share_storage()]
    } else {
        Vec::new()
    };
    agent
        .create_sandbox(id, storages)
        .await
        .map_err(Error::Sandbox)?;
    Ok((agent, agent_log))
}

/// A host name for the guest from a sandbox id: letters, digits and '-', at most 63.
fn hostname_of(id: &str) -> String {
    let name: String = id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    if name.is_empty() {
        "hull".to_owned()
    } else {
        name
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_made_safe_for_the_kernel_command_line() {
        assert_eq!(hostname_of("pod-1"), "pod-1");
        assert_eq!(hostname_of("a b/c\"d"), "a-b-c-d");
        assert_eq!(hostname_of(""), "hull");
        assert_eq!(hostname_of(&"x".repeat(100)).len(), 63);
    }

    #[tokio::test]
    async fn none_is_refused_with_what_to_set_instead() {
        let config = Config {
            hypervisor: HypervisorKind::None,
            ..Config::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let err = boot(&config, "t", &dir.path().join("vm"), None)
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("hypervisor = \"qemu\""), "{err}");
    }

    #[tokio::test]
    async fn a_missing_kernel_is_named() {
        let mut config = Config {
            hypervisor: HypervisorKind::Qemu,
            ..Config::default()
        };
        config.vm.kernel = PathBuf::from("/nonexistent/vmlinux");
        let dir = tempfile::tempdir().unwrap();
        let err = boot(&config, "t", &dir.path().join("vm"), None)
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("/nonexistent/vmlinux"), "{err}");
    }
}
