//! A running sandbox: its agent and what runs it — a VM (the `qemu` hypervisor, through
//! [`super::boot`]) or, with the `none` hypervisor, the agent itself on the host
//! ([`super::host_agent`]). Owns the sandbox's run directory and its persisted record: every
//! process and mount it acquires is written to the record before it is used, so `shim delete`
//! can release it after a crash, and [`Sandbox::shutdown`] releases all of it.
//!
//! A sandbox can be lost: one of its host processes died (QEMU, a device backend, the host
//! agent; see [`super::watch`]) or its agent stopped answering. [`Sandbox::lose`] then kills
//! what is left of it at once; the rest (mounts, files, the record) is released by the
//! containers' Delete and the shim's Shutdown as usual, without asking the agent.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::boot::{self, BootedVm};
use super::disk::BlockDisk;
use super::host_agent::{self, HostAgent};
use super::persist::{self, OwnedProcess, SandboxRecord};
use super::share::SharedDir;
use super::watch::ProcessWatch;
use crate::agent_link::AgentLink;
use crate::config::{Config, HypervisorKind};
use crate::host::Virtualization;
use crate::network::PodNetwork;
use crate::phase::Phase;

/// How long one agent call may take, for calls that do not wait for the container.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the VM or host agent may take to exit after DestroySandbox.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Errors of a sandbox's life cycle.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration names a hypervisor that cannot run sandboxes yet.
    #[error("hypervisor {0:?} cannot run sandboxes yet: set hypervisor = \"qemu\" (or \"none\" for development)")]
    Hypervisor(HypervisorKind),
    /// The run directory could not be made.
    #[error("creating the sandbox's run directory {path}")]
    RunDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Booting the VM failed.
    #[error("booting the sandbox's VM")]
    Boot(#[source] Box<boot::Error>),
    /// Starting the agent on the host failed.
    #[error("starting the sandbox (hypervisor \"none\")")]
    HostAgent(#[source] Box<host_agent::Error>),
    /// The pod's network could not be carried into the VM.
    #[error("connecting the pod's network namespace to the VM")]
    Network(#[source] crate::network::Error),
    /// The pod's network namespace changed in a way its VM cannot follow.
    #[error("the pod's network namespace changed after its VM started")]
    NetworkChanged(#[source] crate::network::Error),
    /// The thread connecting the pod's network failed.
    #[error("the task connecting the pod's network panicked")]
    NetworkTask,
    /// The persisted record could not be written.
    #[error("recording the sandbox's state")]
    Record(#[from] persist::Error),
}

impl From<boot::Error> for Error {
    fn from(err: boot::Error) -> Self {
        Error::Boot(Box::new(err))
    }
}

impl From<host_agent::Error> for Error {
    fn from(err: host_agent::Error) -> Self {
        Error::HostAgent(Box::new(err))
    }
}

/// A `Result` with this module's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// What runs the sandbox's agent.
#[allow(clippy::large_enum_variant)] // One per sandbox, never moved around.
enum Runner {
    /// A VM.
    Vm(BootedVm),
    /// The agent on the host, no VM (`none`).
    Host(HostAgent),
}

/// A started sandbox whose agent serves.
pub struct Sandbox {
    id: String,
    agent: AgentLink,
    runner: Runner,
    hypervisor: HypervisorKind,
    run_dir: PathBuf,
    record: Mutex<SandboxRecord>,
    record_path: PathBuf,
    /// The pod's network carried into the VM, detached after the VM stops.
    network: Option<PodNetwork>,
    /// Its host processes, watched for death.
    watches: Arc<[ProcessWatch]>,
    /// Why the sandbox was lost, once it was.
    lost: Mutex<Option<String>>,
    /// The disks the VM was booted with.
    disks: Vec<BlockDisk>,
}

/// Creates `dir` (and its parents), the last component 0700.
/// The role the serving shim records itself under in its sandbox's record.
pub const SHIM_ROLE: &str = "containerd-shim-hull-v2";

fn make_run_dir(dir: &Path) -> Result<()> {
    persist::create_run_dir(dir).map_err(|source| Error::RunDir {
        path: dir.to_owned(),
        source,
    })
}

impl Sandbox {
    /// Starts sandbox `id` as `config` says, with its files in `run_dir` (which must not
    /// exist) and its record at `record_path`, finding helpers next to `beside`. In a VM, the
    /// interfaces of the pod's network namespace `netns` (when the spec names one) become the
    /// guest's, and `disks` (the first container's block-device rootfs) disks of it; without
    /// a VM (`none`) they are not used, and the container's rootfs is mounted on the host as
    /// any. A failure part-way releases what was started.
    pub async fn start(
        config: &Config,
        id: &str,
        run_dir: &Path,
        record_path: &Path,
        beside: Option<&Path>,
        netns: Option<&Path>,
        disks: Vec<BlockDisk>,
    ) -> Result<Self> {
        let kind = match config.hypervisor {
            HypervisorKind::Auto => Virtualization::probe().auto_hypervisor(),
            other => other,
        };
        crate::phase::record_to(&config.runtime.phase_file);
        crate::phase::sandbox(id, Phase::SandboxStart);
        let mut record = SandboxRecord::new(id);
        record.paths.push(run_dir.to_owned());
        // Recorded before anything exists, so a crash during the start is cleaned up too.
        record.save(record_path)?;
        let mut network = None;
        let started = match kind {
            HypervisorKind::None => {
                make_run_dir(run_dir)?;
                HostAgent::start(run_dir, beside, &config.runtime.log_level, CALL_TIMEOUT)
                    .await
                    .map(|(agent, link)| (Runner::Host(agent), link))
                    .map_err(Error::from)
            }
            HypervisorKind::Qemu | HypervisorKind::Builtin => {
                // Recorded before it is mounted: a crash part-way still unmounts it.
                record.mounts.push(run_dir.join("shared"));
                record.save(record_path)?;
                if let Some(parent) = run_dir.parent() {
                    std::fs::create_dir_all(parent).map_err(|source| Error::RunDir {
                        path: parent.to_owned(),
                        source,
                    })?;
                }
                match attach_network(netns).await {
                    Ok(attached) => {
                        network = attached;
                        // Recorded before the VM uses it: a crash from here on still
                        // removes the filters.
                        record.network = network.as_ref().map(PodNetwork::recorded);
                        record.save(record_path)?;
                        boot::boot_pod_with_disks(
                            config,
                            id,
                            run_dir,
                            beside,
                            true,
                            network.as_ref(),
                            &disks,
                        )
                        .await
                        .map(|vm| {
                            let link = vm.agent.clone();
                            (Runner::Vm(vm), link)
                        })
                        .map_err(Error::from)
                    }
                    Err(err) => Err(err),
                }
            }
            other => Err(Error::Hypervisor(other)),
        };
        let (runner, agent) = match started {
            Ok(started) => started,
            Err(err) => {
                if let Some(network) = network.take() {
                    detach_network(network).await;
                }
                let report = record.cleanup();
                for error in &report.errors {
                    tracing::error!(sandbox = %id, "cleanup after a failed start: {error}");
                }
                remove_record(record_path);
                return Err(err);
            }
        };
        let pids: Vec<(&'static str, u32)> = match &runner {
            Runner::Vm(vm) => vm.processes(),
            Runner::Host(agent) => agent.pid().map(|p| ("hull-agent", p)).into_iter().collect(),
        };
        let watches: Arc<[ProcessWatch]> = pids
            .iter()
            .filter_map(|&(role, pid)| {
                ProcessWatch::open(role, pid)
                    .map_err(|err| {
                        let cause = std::error::Error::source(&err)
                            .map(ToString::to_string)
                            .unwrap_or_default();
                        tracing::warn!(sandbox = %id, "{err}: {cause}; its death is noticed only by health checks");
                    })
                    .ok()
            })
            .chain(match &runner {
                // The built-in VMM in the shim: no process, its stop is watched instead.
                Runner::Vm(vm) => vm.in_process_watch().and_then(|watch| {
                    watch
                        .map_err(|err| {
                            tracing::warn!(sandbox = %id, "{err}; the VM's stop is noticed only by health checks");
                        })
                        .ok()
                }),
                Runner::Host(_) => None,
            })
            .collect();
        // The serving shim itself, first (so killed last): a `shim delete` after containerd
        // lost track of it (a shim that hangs, a containerd that cannot find it again) must
        // not leave it running with nothing to serve. Its own cleanup passes over itself.
        let shim = i32::try_from(std::process::id())
            .ok()
            .and_then(|pid| OwnedProcess::of(SHIM_ROLE, pid));
        record.processes = shim
            .into_iter()
            .chain(
                pids.into_iter()
                    .filter_map(|(role, pid)| OwnedProcess::of(role, i32::try_from(pid).ok()?)),
            )
            .map(|mut process| {
                process.graceful = process.role == "hull-agent";
                process
            })
            .collect();
        // The host agent keeps its containers' files in a directory of its own, which it
        // removes itself unless it is killed.
        if let Runner::Host(agent) = &runner {
            record.paths.extend(agent.pid().map(host_agent::state_dir));
        }
        record.save(record_path)?;
        crate::phase::sandbox(id, Phase::AgentReady);
        tracing::info!(sandbox = %id, hypervisor = ?kind, "sandbox started");
        Ok(Self {
            id: id.to_owned(),
            agent,
            runner,
            hypervisor: kind,
            run_dir: run_dir.to_owned(),
            record: Mutex::new(record),
            record_path: record_path.to_owned(),
            network,
            watches,
            lost: Mutex::new(None),
            disks: if kind == HypervisorKind::None {
                Vec::new()
            } else {
                disks
            },
        })
    }

    /// The VM's disk serving the host block device `device`, if it was booted with one.
    pub fn disk_serving(&self, device: &Path) -> Option<&BlockDisk> {
        self.disks.iter().find(|disk| disk.path == device)
    }

    /// The sandbox's host processes, to wait for their first death with
    /// [`super::watch::deaths`].
    pub fn watches(&self) -> Arc<[ProcessWatch]> {
        Arc::clone(&self.watches)
    }

    /// Marks the sandbox lost for `reason` and ends what is left of it: every process of a
    /// VM is killed (the guest and its containers die with QEMU); the host agent of `none`
    /// gets SIGTERM, on which it removes its containers (SIGKILL would leave them running on
    /// the host), and SIGKILL at Shutdown if it lingers. Answers whether this call lost it
    /// (false if it was lost already).
    pub fn lose(&self, reason: &str) -> bool {
        {
            let mut lost = self
                .lost
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if lost.is_some() {
                return false;
            }
            *lost = Some(reason.to_owned());
        }
        let signal = match self.runner {
            Runner::Vm(_) => libc::SIGKILL,
            Runner::Host(_) => libc::SIGTERM,
        };
        for watch in self.watches.iter() {
            watch.kill(signal);
        }
        true
    }

    /// Why the sandbox was lost, if it was.
    pub fn lost(&self) -> Option<String> {
        self.lost
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Fails, naming them, if interfaces were added to the pod's network namespace since the
    /// VM started: hull's QEMU VMs take no NIC after the start (microvm has no hotplug), so
    /// the pod would not see them. Nothing to check without a pod network.
    pub async fn check_network(&self) -> Result<()> {
        let Some(known) = self.network.as_ref().map(PodNetwork::known) else {
            return Ok(());
        };
        match tokio::task::spawn_blocking(move || known.refuse_added("QEMU as hull runs it"))
            .await
            .map_err(|_| Error::NetworkTask)?
        {
            Err(err @ crate::network::Error::HotplugUnsupported { .. }) => {
                Err(Error::NetworkChanged(err))
            }
            // The check is a courtesy: a namespace that cannot be scanned now does not stop
            // the container (the VM's interfaces are unchanged).
            Err(err) => {
                tracing::warn!(sandbox = %self.id, "rescanning the pod's network namespace: {err}");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// The sandbox id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The hypervisor that runs it (never `auto`).
    pub fn hypervisor(&self) -> HypervisorKind {
        self.hypervisor
    }

    /// The pod's directory shared into the VM; `None` without a VM (`none`).
    pub fn share(&self) -> Option<&SharedDir> {
        match &self.runner {
            Runner::Vm(vm) => vm.share(),
            Runner::Host(_) => None,
        }
    }

    /// The link to the sandbox's agent.
    pub fn agent(&self) -> &AgentLink {
        &self.agent
    }

    /// The sandbox's run directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The host processes the sandbox owns, by role (`qemu`, `hull-vsock`, `hull-fs`,
    /// `hull-agent`), as its record lists them.
    pub fn processes(&self) -> Vec<(String, i32)> {
        self.lock_record()
            .processes
            .iter()
            .map(|p| (p.role.clone(), p.pid))
            .collect()
    }

    /// Records a host mount the sandbox now owns (before it is made).
    pub fn add_mount(&self, target: &Path) -> Result<()> {
        let mut record = self.lock_record();
        record.mounts.push(target.to_owned());
        record.save(&self.record_path).map_err(Error::from)
    }

    /// Records the host cgroup of a container the `none` hypervisor's agent is about to
    /// create, so that it is emptied and removed even if the agent dies (nothing for a VM).
    pub fn add_host_cgroup(&self, spec: &serde_json::Value, container: &str) -> Result<()> {
        if !matches!(self.runner, Runner::Host(_)) {
            return Ok(());
        }
        let Some(cgroup) = super::host_cgroups::container_cgroup(spec, container) else {
            return Ok(());
        };
        let mut record = self.lock_record();
        if record.host_cgroups.contains(&cgroup) {
            return Ok(());
        }
        record.host_cgroups.push(cgroup);
        record.save(&self.record_path).map_err(Error::from)
    }

    /// Forgets a host mount that was released.
    pub fn remove_mount(&self, target: &Path) -> Result<()> {
        let mut record = self.lock_record();
        record.mounts.retain(|m| m != target);
        record.save(&self.record_path).map_err(Error::from)
    }

    fn lock_record(&self) -> std::sync::MutexGuard<'_, SandboxRecord> {
        // A panic while holding the lock leaves a record that is still consistent (each
        // change is one push or retain), so a poisoned lock is taken over.
        self.record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops the sandbox: asks the agent to destroy it (stopping every container), stops the
    /// VM or host agent, then releases whatever the record still lists (mounts, the run
    /// directory) and removes the record.
    pub async fn shutdown(self) {
        let Self {
            id,
            agent,
            runner,
            record,
            record_path,
            run_dir,
            network,
            lost,
            ..
        } = self;
        let started = std::time::Instant::now();
        let lost = lost
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let destroyed = match lost {
            // Nothing to ask: its processes are dead or dying.
            Some(reason) => {
                tracing::info!(sandbox = %id, %reason, "stopping a lost sandbox");
                false
            }
            None => match agent.destroy_sandbox().await {
                Ok(()) => true,
                Err(err) => {
                    tracing::warn!(sandbox = %id, "DestroySandbox: {}", err.agent_message());
                    false
                }
            },
        };
        tracing::debug!(sandbox = %id, elapsed = ?started.elapsed(), "DestroySandbox answered");
        drop(agent);
        let stopped = match runner {
            Runner::Vm(vm) => vm.shutdown(STOP_GRACE).await.map_err(|e| e.to_string()),
            Runner::Host(agent) => agent
                .stop(destroyed, STOP_GRACE)
                .await
                .map_err(|e| e.to_string()),
        };
        if let Err(err) = stopped {
            tracing::warn!(sandbox = %id, %err, "stopping the sandbox");
        }
        tracing::debug!(sandbox = %id, elapsed = ?started.elapsed(), "the sandbox's processes stopped");
        if let Some(network) = network {
            detach_network(network).await;
        }
        let record = record
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let report = record.cleanup();
        for error in &report.errors {
            tracing::error!(sandbox = %id, "cleanup: {error}");
        }
        remove_record(&record_path);
        // The namespace's directory goes with its last sandbox (left while others run).
        if let Some(parent) = run_dir.parent() {
            if let Err(err) = persist::remove_if_empty(parent) {
                tracing::warn!(dir = %parent.display(), %err, "removing the namespace's run directory");
            }
        }
        tracing::info!(sandbox = %id, ?report, "sandbox stopped");
    }
}

/// Connects the pod's network namespace's interfaces to taps (netlink work on a thread of its
/// own, off the event loop).
async fn attach_network(netns: Option<&Path>) -> Result<Option<PodNetwork>> {
    let Some(netns) = netns else {
        return Ok(None);
    };
    let path = netns.to_owned();
    tokio::task::spawn_blocking(move || PodNetwork::attach(&path, 1))
        .await
        .map_err(|_| Error::NetworkTask)?
        .map(Some)
        .map_err(Error::Network)
}

async fn detach_network(network: PodNetwork) {
    let netns = network.netns().to_owned();
    match tokio::task::spawn_blocking(move || network.detach()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::warn!(netns = %netns.display(), "detaching the pod network: {err}")
        }
        Err(_) => {
            tracing::warn!(netns = %netns.display(), "detaching the pod network: the task failed")
        }
    }
}

fn remove_record(path: &Path) {
    if let Err(err) = std::fs::remove_file(path) {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), %err, "removing the sandbox record");
        }
    }
}
