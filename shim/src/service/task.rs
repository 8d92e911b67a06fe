//! containerd's Task service for one hull shim: translates containerd's calls into the
//! sandbox's agent calls and the container manager's state, and publishes the task events.
//!
//! Every call is answered explicitly: the generated defaults answer NOT_FOUND for calls a
//! shim does not implement, which containerd misreads as "no such task", so each call here
//! either works, answers NOT_FOUND for a container or process that does not exist, or answers
//! UNIMPLEMENTED saying what is missing (Checkpoint, restoring from one, logging URIs).
//!
//! The first Create starts the sandbox (the configuration is loaded then, from the runtime
//! options' ConfigPath, `HULL_CONF_FILE` or the system files); Shutdown with no container
//! left stops it and ends the shim.
//!
//! A sandbox whose VM, device backend or host agent dies, or whose agent stops answering its
//! health checks, is lost: the shim logs why, ends what is left of it, and reports every
//! process of its containers exited with [`LOST_SANDBOX_STATUS`], so that `ctr task wait`,
//! `ctr run` and CRI see the task stopped at once. The containers are then deleted as usual.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::api::{self, Empty};
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{TtrpcContext, TtrpcResult};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{MessageDyn, MessageField};
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::{get_status, Code, Error as TtrpcError};
use containerd_shim_protos::types::task::ProcessInfo;
use tokio::sync::Mutex as AsyncMutex;

use super::options::RuntimeOptions;
use super::shim::{sandbox_grouping, RECORD_FILE};
use crate::agent_link;
use crate::config::{self, ConfigSearch, HypervisorKind};
use crate::container::stdio::{ProcessRef, StdioPaths};
use crate::container::{Container, Containers, Exit, ExitHook, Process, Status};
use crate::mounts;
use crate::phase::Phase;
use crate::rootfs::{self, RootfsMount};
use crate::sandbox::disk::{guest_disk_root, RootDisk};
use crate::sandbox::lifecycle::Sandbox;
use crate::sandbox::share::{guest_root, guest_volume};
use crate::sandbox::watch::{loss, VMM_GRACE};

/// The exit status of every process of a lost sandbox (its VM or a backend died, or its agent
/// stopped answering): the process died with its guest, so it has no exit code or signal of
/// its own. 255, as Kata Containers reports containers lost with their VM.
pub const LOST_SANDBOX_STATUS: u32 = 255;

/// How long Shutdown waits for the sandbox to stop before it answers (containerd waits 3 s).
const SHUTDOWN_INLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// How long Shutdown waits for the tasks that still hold the sandbox (a health check or
/// death report under way) to let go of it.
const SHUTDOWN_RELEASE: std::time::Duration = std::time::Duration::from_secs(1);

/// Largest bundle config.json read, in bytes (the agent takes at most 1 MiB of spec).
const MAX_SPEC: u64 = 1 << 20;

/// The Task service.
pub struct TaskService {
    inner: Arc<Inner>,
}

struct Inner {
    exit: Arc<ExitSignal>,
    publisher: RemotePublisher,
    namespace: String,
    containers: Containers,
    /// The sandbox, once the first Create started it. The lock is held while it starts, so
    /// a second Create waits for it rather than starting another.
    sandbox: AsyncMutex<Option<Arc<Sandbox>>>,
    /// The shim binary, beside which the helpers are looked for first.
    beside: Option<PathBuf>,
    /// The task waiting for OOM events; it holds a connection to the agent, which must be
    /// closed before the agent can stop serving.
    oom_watch: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The task waiting for the sandbox's host processes to die.
    death_watch: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The task serving the pod's metrics on its run directory's socket.
    metrics_server: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn status(code: Code, message: impl Into<String>) -> TtrpcError {
    TtrpcError::RpcStatus(get_status(code, message.into()))
}

/// An agent's refusal passes on with its own code; a failure to reach it is UNAVAILABLE.
fn agent_error(err: &agent_link::Error) -> TtrpcError {
    status(err.code().unwrap_or(Code::UNAVAILABLE), err.agent_message())
}

/// An error and its causes, on one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn timestamp(at: SystemTime) -> MessageField<Timestamp> {
    MessageField::some(Timestamp::from(at))
}

fn shim_pid() -> u32 {
    std::process::id()
}

impl TaskService {
    /// A service that signals `exit` when containerd shuts the shim down.
    pub fn new(exit: Arc<ExitSignal>, publisher: RemotePublisher, namespace: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                exit,
                publisher,
                namespace: namespace.to_owned(),
                containers: Containers::default(),
                sandbox: AsyncMutex::new(None),
                beside: std::env::current_exe().ok(),
                oom_watch: std::sync::Mutex::new(None),
                death_watch: std::sync::Mutex::new(None),
                metrics_server: std::sync::Mutex::new(None),
            }),
        }
    }
}

impl Inner {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let ctx = containerd_shim::Context::default();
        if let Err(err) = self
            .publisher
            .publish(ctx, topic, &self.namespace, event)
            .await
        {
            tracing::warn!(topic, %err, "publishing an event");
        }
    }

    fn not_found(&self, id: &str, exec_id: &str) -> TtrpcError {
        let what = if exec_id.is_empty() {
            format!("container {id}")
        } else {
            format!("process {exec_id} of container {id}")
        };
        status(
            Code::NOT_FOUND,
            format!(
                "{what} not found in namespace {} of this hull shim",
                self.namespace
            ),
        )
    }

    /// The running sandbox, for calls about containers in it.
    async fn sandbox(&self, id: &str) -> TtrpcResult<Arc<Sandbox>> {
        self.sandbox
            .lock()
            .await
            .clone()
            .ok_or_else(|| self.not_found(id, ""))
    }

    /// The running sandbox, for calls that need its agent: FAILED_PRECONDITION, with the
    /// reason, once the sandbox is lost.
    async fn live_sandbox(&self, id: &str) -> TtrpcResult<Arc<Sandbox>> {
        let sandbox = self.sandbox(id).await?;
        match sandbox.lost() {
            None => Ok(sandbox),
            Some(reason) => Err(lost_error(id, &reason)),
        }
    }

    /// Runs `f` on process `exec_id` of container `id`, or answers NOT_FOUND.
    fn with_process<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut Container, &str) -> TtrpcResult<T>,
    ) -> TtrpcResult<T> {
        let mut map = self.containers.lock();
        let container = map.get_mut(id).ok_or_else(|| self.not_found(id, exec_id))?;
        if container.process(exec_id).is_none() {
            return Err(self.not_found(id, exec_id));
        }
        f(container, exec_id)
    }

    /// The sandbox, started by the first Create with the configuration it finds; its VM gets
    /// `block_root`, the creating container `id`'s block-device rootfs, as a disk unless the
    /// configuration says `vm.block_rootfs = false`.
    async fn ensure_sandbox(
        self: &Arc<Self>,
        id: &str,
        bundle: &Path,
        spec: &serde_json::Value,
        options: &RuntimeOptions,
        block_root: Option<&rootfs::BlockRootfs>,
    ) -> TtrpcResult<Arc<Sandbox>> {
        let mut slot = self.sandbox.lock().await;
        if let Some(sandbox) = slot.as_ref() {
            return Ok(Arc::clone(sandbox));
        }
        let loaded = config::load(&ConfigSearch::from_env(options.config_path.clone()))
            .map_err(|e| status(Code::FAILED_PRECONDITION, chain(&e)))?;
        let annotations = spec_annotations(spec);
        let config = config::annotations::apply(&loaded.config, &annotations)
            .map_err(|e| status(Code::INVALID_ARGUMENT, chain(&e)))?;
        let sandbox_id = sandbox_grouping(bundle, id);
        if !crate::paths::is_safe_id(&sandbox_id) {
            return Err(status(
                Code::INVALID_ARGUMENT,
                format!("sandbox id {sandbox_id:?} is not a valid id (letters, digits, '_', '-', '.'; not starting with '.')"),
            ));
        }
        let run_dir = crate::paths::sandbox_run_dir(&self.namespace, &sandbox_id);
        tracing::info!(sandbox = %sandbox_id, config = %loaded.origin(), "starting the sandbox");
        let netns = crate::network::spec::pod_netns(spec);
        let disks: Vec<_> = block_root
            .filter(|_| config.vm.block_rootfs)
            .map(|rootfs| RootDisk::new(id, rootfs.clone()).disk)
            .into_iter()
            .collect();
        let sandbox = Sandbox::start(
            &config,
            &sandbox_id,
            &run_dir,
            &bundle.join(RECORD_FILE),
            self.beside.as_deref(),
            netns.as_deref(),
            disks,
        )
        .await
        .map_err(|e| status(Code::UNKNOWN, chain(&e)))?;
        let sandbox = Arc::new(sandbox);
        self.serve_metrics(&sandbox);
        self.watch_oom(sandbox.agent().clone());
        self.watch_death(&sandbox);
        if config.agent.health_check_interval_secs > 0 {
            self.watch_health(
                sandbox.agent().clone(),
                std::time::Duration::from_secs(u64::from(config.agent.health_check_interval_secs)),
            );
        }
        *slot = Some(Arc::clone(&sandbox));
        Ok(sandbox)
    }

    /// Serves the pod's Prometheus metrics on `shim-monitor.sock` in its run directory, for
    /// `hull monitor`. The socket goes with the run directory; a failure to bind is logged,
    /// not fatal: the pod runs without metrics.
    fn serve_metrics(&self, sandbox: &Arc<Sandbox>) {
        let socket = sandbox.run_dir().join(crate::monitor::SOCKET_NAME);
        let bound = tokio::net::UnixListener::bind(&socket).and_then(|listener| {
            use std::os::unix::fs::PermissionsExt;
            // Readers are root (`hull monitor`): 0600, as every socket of the pod.
            std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
                .map(|()| listener)
        });
        let listener = match bound {
            Ok(listener) => listener,
            Err(err) => {
                tracing::warn!(socket = %socket.display(), %err, "the pod's metrics will not be served");
                let _ = std::fs::remove_file(&socket);
                return;
            }
        };
        let task = tokio::spawn(crate::monitor::serve_shim(
            listener,
            Arc::downgrade(sandbox),
        ));
        let previous = self
            .metrics_server
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(task);
        if let Some(previous) = previous {
            previous.abort();
        }
    }

    /// Publishes TaskOOM for each container the agent reports OOM-killed, until the agent
    /// does not serve GetOOMEvent (an older agent) or goes away.
    fn watch_oom(self: &Arc<Self>, agent: agent_link::AgentLink) {
        let inner = Arc::clone(self);
        let task = tokio::spawn(async move {
            loop {
                match agent.get_oom_event().await {
                    Ok(container_id) => {
                        tracing::warn!(container = %container_id, "OOM kill in the container");
                        let event = TaskOOM {
                            container_id,
                            ..Default::default()
                        };
                        inner
                            .publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(event))
                            .await;
                    }
                    Err(err) => {
                        tracing::debug!("no more OOM events: {}", err.agent_message());
                        return;
                    }
                }
            }
        });
        let previous = self
            .oom_watch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(task);
        if let Some(previous) = previous {
            previous.abort();
        }
    }

    /// Waits for the first death among the sandbox's host processes (QEMU, a backend, the
    /// host agent), then reports the sandbox lost, naming the death that caused it (see
    /// [`crate::sandbox::watch::loss`]). Holds neither the sandbox nor the service
    /// while it waits.
    fn watch_death(self: &Arc<Self>, sandbox: &Arc<Sandbox>) {
        let watches = sandbox.watches();
        let sandbox = Arc::downgrade(sandbox);
        let inner = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let loss = loss(&watches, VMM_GRACE).await;
            // Gone already: the sandbox was shut down, and this is its orderly end.
            let (Some(inner), Some(sandbox)) = (inner.upgrade(), sandbox.upgrade()) else {
                return;
            };
            inner.sandbox_lost(&sandbox, &loss.to_string()).await;
        });
        let previous = self
            .death_watch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(task);
        if let Some(previous) = previous {
            previous.abort();
        }
    }

    /// Reports the sandbox lost for `reason` (once): ends what is left of it and reports
    /// every unfinished process of its containers exited with [`LOST_SANDBOX_STATUS`].
    async fn sandbox_lost(self: &Arc<Self>, sandbox: &Sandbox, reason: &str) {
        if !sandbox.lose(reason) {
            return;
        }
        let failed = self.containers.fail_unfinished(LOST_SANDBOX_STATUS);
        tracing::error!(
            sandbox = %sandbox.id(),
            "the sandbox is lost: {reason}; what is left of it is stopped, and its containers' {} unfinished processes are reported exited with status {LOST_SANDBOX_STATUS}",
            failed.len()
        );
        for (process, exit) in failed {
            (self.exit_hook())(process, exit).await;
        }
    }

    /// Checks the agent every `interval`; if it stops answering (a hung VM), the sandbox is
    /// lost (see [`Inner::sandbox_lost`]), so that containerd and its clients are not left
    /// waiting. A shim whose sandbox is lost is then deleted by containerd like any other.
    fn watch_health(self: &Arc<Self>, agent: agent_link::AgentLink, interval: std::time::Duration) {
        let inner = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                // Bounded by the link's call timeout (30 s): a slow TCG guest still answers.
                let answer = agent.check().await;
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                // Stopped with the sandbox: nothing to check any more.
                let Some(sandbox) = inner.sandbox.lock().await.clone() else {
                    return;
                };
                let reason = match answer {
                    Ok(()) => continue,
                    Err(err) => err.agent_message(),
                };
                inner
                    .sandbox_lost(
                        &sandbox,
                        &format!("its agent stopped answering health checks ({reason})"),
                    )
                    .await;
                return;
            }
        });
    }

    /// The exit hook: TaskExit for every process.
    fn exit_hook(self: &Arc<Self>) -> ExitHook {
        let inner = Arc::clone(self);
        Arc::new(move |process: ProcessRef, exit: Exit| {
            let inner = Arc::clone(&inner);
            Box::pin(async move {
                let id = if process.exec_id.is_empty() {
                    process.container_id.clone()
                } else {
                    process.exec_id.clone()
                };
                let event = TaskExit {
                    container_id: process.container_id,
                    id,
                    pid: shim_pid(),
                    exit_status: exit.status,
                    exited_at: timestamp(exit.at),
                    ..Default::default()
                };
                inner
                    .publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event))
                    .await;
            })
        })
    }

    async fn create(self: &Arc<Self>, req: api::CreateTaskRequest) -> TtrpcResult<u32> {
        let id = req.id.clone();
        if id.is_empty() {
            return Err(status(Code::INVALID_ARGUMENT, "the task id is empty"));
        }
        if self.containers.lock().contains_key(&id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("container {id} already exists in this hull shim"),
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(status(
                Code::UNIMPLEMENTED,
                format!("hull does not restore containers from checkpoints (asked for {id})"),
            ));
        }
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        if let Some(uri) = stdio.unsupported() {
            return Err(status(
                Code::UNIMPLEMENTED,
                format!("hull copies stdio to FIFOs only; {uri:?} (a containerd logging URI) is not supported"),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let mut spec = read_spec(&bundle)?;
        let options = RuntimeOptions::try_from(req.options.as_ref())
            .map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string()))?;
        // Checked before the sandbox starts: a missing bind source must not cost a VM boot.
        let spec_mounts = mounts::classify(&spec, &bundle).map_err(|e| {
            status(
                Code::INVALID_ARGUMENT,
                format!("container {id}: {}", chain(&e)),
            )
        })?;
        let mounts: Vec<RootfsMount> = req.rootfs.iter().map(RootfsMount::from).collect();
        let block_root = rootfs::block_device(&mounts);
        let sandbox = self
            .ensure_sandbox(&id, &bundle, &spec, &options, block_root.as_ref())
            .await?;
        if let Some(reason) = sandbox.lost() {
            return Err(lost_error(&id, &reason));
        }
        // A container would not see interfaces added to the pod's namespace since its VM
        // started: refused by name rather than started without them.
        sandbox.check_network().await.map_err(|e| {
            status(
                Code::FAILED_PRECONDITION,
                format!("container {id}: {}", chain(&e)),
            )
        })?;
        if sandbox.hypervisor() != HypervisorKind::None && !crate::paths::is_safe_id(&id) {
            return Err(status(
                Code::INVALID_ARGUMENT,
                format!("container id {id:?} cannot name a directory of the pod's share"),
            ));
        }
        // With a VM, host binds go through the pod's share; without one (`none`) the agent
        // sees the host and binds them itself.
        let host_binds = if sandbox.share().is_some() {
            mounts::for_vm(&spec_mounts).map_err(|e| {
                status(
                    Code::INVALID_ARGUMENT,
                    format!("container {id}: {}", chain(&e)),
                )
            })?
        } else {
            Vec::new()
        };

        // The rootfs: containerd's mounts on the bundle's root path.
        let root = spec
            .pointer("/root/path")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("rootfs");
        let target = if Path::new(root).is_absolute() {
            PathBuf::from(root)
        } else {
            bundle.join(root)
        };
        // A block-device rootfs the VM was booted with is mounted by the agent in the guest;
        // the host mounts nothing of it. Any other (a later container's device too) is
        // mounted here.
        let root_disk = block_root.clone().and_then(|rootfs| {
            let disk = sandbox.disk_serving(&rootfs.device)?.clone();
            Some(RootDisk {
                container: id.clone(),
                disk,
                rootfs,
            })
        });
        if let (Some(block), None) = (&block_root, &root_disk) {
            if sandbox.share().is_some() {
                tracing::info!(container = %id, device = %block.device.display(), "block-device rootfs mounted on the host and shared: the VM has no disk for it (only a pod's first container gets one)");
            }
        }
        let mounts = if root_disk.is_some() {
            Vec::new()
        } else {
            mounts
        };
        let layers = mounts.len();
        if layers > 0 {
            sandbox
                .add_mount(&target)
                .map_err(|e| status(Code::INTERNAL, chain(&e)))?;
        }
        // The volumes bound into the share so far (their host mount points).
        let mut volumes: Vec<PathBuf> = Vec::new();
        let undo_rootfs = |sandbox: &Sandbox, shared: bool, volumes: &[PathBuf]| {
            release_volumes(sandbox, &id, volumes);
            if shared {
                if let Some(share) = sandbox.share() {
                    share.unshare_rootfs(&id);
                    if let Err(err) = sandbox.remove_mount(&share.rootfs_target(&id)) {
                        tracing::warn!(container = %id, "{}", chain(&err));
                    }
                }
            }
            if layers > 0 {
                rootfs::unmount(&target, layers);
                if let Err(err) = sandbox.remove_mount(&target) {
                    tracing::warn!(container = %id, "{}", chain(&err));
                }
            }
        };
        if let Err(err) = rootfs::mount_all(&mounts, &target) {
            undo_rootfs(&sandbox, false, &volumes);
            return Err(status(Code::INTERNAL, chain(&err)));
        }
        // Where the agent finds the rootfs: with `none` it sees the host's file system, so
        // the host path; in a VM, the rootfs bound into the pod's share, which the agent
        // mounts for the container.
        let (guest_root, storages, shared) = match sandbox.share() {
            None if sandbox.hypervisor() == HypervisorKind::None => {
                (target.display().to_string(), Vec::new(), false)
            }
            None => {
                undo_rootfs(&sandbox, false, &volumes);
                return Err(status(
                    Code::UNIMPLEMENTED,
                    format!(
                        "hypervisor {:?} has no way to share container {id}'s rootfs yet",
                        sandbox.hypervisor()
                    ),
                ));
            }
            Some(share) => {
                let shared = root_disk.is_none();
                if shared {
                    let shared_target = share.rootfs_target(&id);
                    let bound = sandbox
                        .add_mount(&shared_target)
                        .map_err(|e| chain(&e))
                        .and_then(|()| share.share_rootfs(&id, &target).map_err(|e| chain(&e)));
                    if let Err(err) = bound {
                        undo_rootfs(&sandbox, true, &volumes);
                        return Err(status(Code::INTERNAL, err));
                    }
                }
                for (index, bind) in &host_binds {
                    let volume = share.volume_target(&id, *index);
                    let bound = sandbox
                        .add_mount(&volume)
                        .map_err(|e| chain(&e))
                        .and_then(|()| {
                            volumes.push(volume.clone());
                            mounts::make_mount_point(bind, &volume)
                                .and_then(|()| mounts::bind_into_share(bind, &volume))
                                .map_err(|e| format!("container {id}: {}", chain(&e)))
                        });
                    if let Err(err) = bound {
                        undo_rootfs(&sandbox, shared, &volumes);
                        return Err(status(Code::INTERNAL, err));
                    }
                    mounts::rewrite_source(&mut spec, *index, &guest_volume(&id, *index));
                    tracing::debug!(container = %id, source = %bind.source.display(), readonly = bind.readonly, "volume shared");
                }
                // The pod's interfaces are the guest's: the container shares the guest's
                // network namespace instead of a host path that does not exist there.
                crate::network::spec::share_guest_network(&mut spec);
                match &root_disk {
                    None => (guest_root(&id), Vec::new(), true),
                    Some(disk) => (guest_disk_root(&id), vec![disk.storage()], false),
                }
            }
        };
        if let Err(err) = set_root_path(&mut spec, guest_root) {
            undo_rootfs(&sandbox, shared, &volumes);
            return Err(status(
                Code::INVALID_ARGUMENT,
                format!("container {id}: {err}"),
            ));
        }
        let spec_json = match serde_json::to_vec(&spec) {
            Ok(json) => json,
            Err(err) => {
                undo_rootfs(&sandbox, shared, &volumes);
                return Err(status(Code::INTERNAL, format!("encoding the spec: {err}")));
            }
        };
        if let Err(err) = sandbox.add_host_cgroup(&spec, &id) {
            undo_rootfs(&sandbox, shared, &volumes);
            return Err(status(
                Code::INTERNAL,
                format!("container {id}: {}", chain(&err)),
            ));
        }
        if let Err(err) = sandbox
            .agent()
            .create_container(&id, spec_json, storages)
            .await
        {
            undo_rootfs(&sandbox, shared, &volumes);
            // A sandbox lost meanwhile is why the call failed: its reason names what died
            // (the fault matrix's "hull-fs killed while creating": the connection reset).
            return Err(match loss_behind(&sandbox, &err).await {
                Some(reason) => lost_error(&id, &reason),
                None => agent_error(&err),
            });
        }
        self.containers.lock().insert(
            id.clone(),
            Container {
                bundle: bundle.clone(),
                rootfs: (layers > 0).then(|| (target.clone(), layers)),
                shared_rootfs: shared,
                volumes,
                paused: false,
                init: Process::new(stdio.clone(), None),
                execs: Default::default(),
            },
        );
        let process = ProcessRef {
            container_id: id.clone(),
            exec_id: String::new(),
        };
        self.containers.start_stdio(sandbox.agent(), &process);
        crate::phase::container(&id, Phase::ContainerCreated);
        tracing::info!(container = %id, "container created");
        let event = TaskCreate {
            container_id: id,
            bundle: req.bundle,
            rootfs: req.rootfs,
            io: MessageField::some(TaskIO {
                stdin: stdio.stdin,
                stdout: stdio.stdout,
                stderr: stdio.stderr,
                terminal: stdio.terminal,
                ..Default::default()
            }),
            pid: shim_pid(),
            ..Default::default()
        };
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(event))
            .await;
        Ok(shim_pid())
    }

    async fn start(self: &Arc<Self>, id: &str, exec_id: &str) -> TtrpcResult<u32> {
        let sandbox = self.live_sandbox(id).await?;
        let process_json = self.with_process(id, exec_id, |c, e| {
            let p = c.process(e).ok_or_else(|| self.not_found(id, e))?;
            if p.status != Status::Created {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("process {e:?} of container {id} was started already"),
                ));
            }
            Ok(p.process_json.clone())
        })?;
        let agent = sandbox.agent();
        let process = ProcessRef {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
        };
        let started = match process_json {
            None => agent.start_container(id).await,
            Some(json) => agent.exec_process(id, exec_id, json).await,
        };
        if let Err(err) = started {
            return Err(match loss_behind(&sandbox, &err).await {
                Some(reason) => lost_error(id, &reason),
                None => agent_error(&err),
            });
        }
        if exec_id.is_empty() {
            crate::phase::container(id, Phase::ContainerStarted);
        } else {
            self.containers.start_stdio(agent, &process);
        }
        self.containers.watch_exit(agent, process, self.exit_hook());
        let event: Box<dyn MessageDyn> = if exec_id.is_empty() {
            Box::new(TaskStart {
                container_id: id.to_owned(),
                pid: shim_pid(),
                ..Default::default()
            })
        } else {
            Box::new(TaskExecStarted {
                container_id: id.to_owned(),
                exec_id: exec_id.to_owned(),
                pid: shim_pid(),
                ..Default::default()
            })
        };
        let topic = if exec_id.is_empty() {
            topics::TASK_START_EVENT_TOPIC
        } else {
            topics::TASK_EXEC_STARTED_EVENT_TOPIC
        };
        self.publish(topic, event).await;
        Ok(shim_pid())
    }

    async fn delete(&self, id: &str, exec_id: &str) -> TtrpcResult<api::DeleteResponse> {
        let sandbox = self.sandbox(id).await?;
        let (exit, removed, started) = {
            let mut map = self.containers.lock();
            let container = map.get_mut(id).ok_or_else(|| self.not_found(id, exec_id))?;
            let p = container
                .process(exec_id)
                .ok_or_else(|| self.not_found(id, exec_id))?;
            if p.status == Status::Running {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("process {exec_id:?} of container {id} is running: kill it first"),
                ));
            }
            let exit = p.exit();
            let started = p.status != Status::Created;
            if exec_id.is_empty() {
                (exit, map.remove(id), started)
            } else {
                // Its copy tasks have ended (the exit waits for them) and its stdin copy was
                // told to close: dropping it closes the last of the shim's side.
                container.execs.remove(exec_id);
                (exit, None, started)
            }
        };
        // The agent forgets a started exec now that its output is read (as containerd's runc
        // shim forgets it at Delete): its pidfd and pipes close and its id is free again. An
        // exec the agent never ran, or the agent of a lost sandbox, has nothing to forget.
        if !exec_id.is_empty() && started && sandbox.lost().is_none() {
            if let Err(err) = sandbox.agent().remove_process(id, exec_id).await {
                if err.code() != Some(Code::NOT_FOUND) {
                    tracing::warn!(container = %id, exec = %exec_id, "removing the exec in the agent: {}", err.agent_message());
                }
            }
        }
        let (status_code, at) = exit.map_or((0, SystemTime::now()), |e| (e.status, e.at));
        if let Some(container) = removed {
            // A lost sandbox's containers died with it: nothing to ask its agent.
            let removal = match sandbox.lost() {
                None => sandbox.agent().remove_container(id, 0).await,
                Some(_) => Ok(()),
            };
            if let Err(err) = removal {
                if err.code() != Some(Code::NOT_FOUND) {
                    tracing::warn!(container = %id, "removing the container: {}", err.agent_message());
                }
            }
            release_volumes(&sandbox, id, &container.volumes);
            if container.shared_rootfs {
                if let Some(share) = sandbox.share() {
                    share.unshare_rootfs(id);
                    if let Err(err) = sandbox.remove_mount(&share.rootfs_target(id)) {
                        tracing::warn!(container = %id, "{}", chain(&err));
                    }
                }
            }
            if let Some((target, layers)) = container.rootfs {
                rootfs::unmount(&target, layers);
                if let Err(err) = sandbox.remove_mount(&target) {
                    tracing::warn!(container = %id, "{}", chain(&err));
                }
            }
            tracing::info!(container = %id, "container deleted");
            let event = TaskDelete {
                container_id: id.to_owned(),
                id: id.to_owned(),
                pid: shim_pid(),
                exit_status: status_code,
                exited_at: timestamp(at),
                ..Default::default()
            };
            self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(event))
                .await;
        }
        Ok(api::DeleteResponse {
            pid: shim_pid(),
            exit_status: status_code,
            exited_at: timestamp(at),
            ..Default::default()
        })
    }
}

/// Unmounts container `id`'s volumes from the pod's share and forgets them in the sandbox's
/// record.
fn release_volumes(sandbox: &Sandbox, id: &str, volumes: &[PathBuf]) {
    for volume in volumes.iter().rev() {
        mounts::unbind(volume);
        if let Err(err) = sandbox.remove_mount(volume) {
            tracing::warn!(container = %id, "{}", chain(&err));
        }
    }
}

/// The sandbox, once no other task holds it (a health check or a death report may, for a
/// moment), or after [`SHUTDOWN_RELEASE`] the shared handle back.
async fn release(mut sandbox: Arc<Sandbox>) -> Result<Sandbox, Arc<Sandbox>> {
    let deadline = tokio::time::Instant::now() + SHUTDOWN_RELEASE;
    loop {
        match Arc::try_unwrap(sandbox) {
            Ok(sandbox) => return Ok(sandbox),
            Err(shared) if tokio::time::Instant::now() >= deadline => return Err(shared),
            Err(shared) => sandbox = shared,
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// How long a call whose connection broke waits for the death watch to say why.
const LOSS_SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Why the sandbox was lost, if that is why `err` happened. A call that got no answer (its
/// connection broke) waits a moment for the death watch: the agent or its VM may have died
/// just now, the connection noticing before the watch (the fault matrix's "agent killed
/// while creating": 'socket err: Broken pipe' instead of the agent's death).
async fn loss_behind(sandbox: &Sandbox, err: &agent_link::Error) -> Option<String> {
    if err.code().is_some() {
        return sandbox.lost();
    }
    let deadline = tokio::time::Instant::now() + LOSS_SETTLE;
    loop {
        if let Some(reason) = sandbox.lost() {
            return Some(reason);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The answer to a call that needs the agent of a lost sandbox.
fn lost_error(id: &str, reason: &str) -> TtrpcError {
    status(
        Code::FAILED_PRECONDITION,
        format!("container {id}'s sandbox is lost ({reason}): delete it and run it again"),
    )
}

/// containerd's `ProcessDetails` naming an exec, for `ctr task ps`; none for other processes.
fn exec_details(
    exec_id: &str,
) -> MessageField<containerd_shim_protos::protobuf::well_known_types::any::Any> {
    if exec_id.is_empty() {
        return MessageField::none();
    }
    let details = containerd_shim_protos::shim::oci::ProcessDetails {
        exec_id: exec_id.to_owned(),
        ..Default::default()
    };
    containerd_shim::util::convert_to_any(Box::new(details))
        .map_or_else(|_| MessageField::none(), MessageField::some)
}

/// The bundle's OCI spec, as JSON.
fn read_spec(bundle: &Path) -> TtrpcResult<serde_json::Value> {
    let path = bundle.join("config.json");
    let invalid = |reason: String| {
        status(
            Code::INVALID_ARGUMENT,
            format!("bundle spec {}: {reason}", path.display()),
        )
    };
    let len = std::fs::metadata(&path)
        .map_err(|e| invalid(e.to_string()))?
        .len();
    if len > MAX_SPEC {
        return Err(invalid(format!(
            "{len} bytes, more than the {MAX_SPEC} allowed"
        )));
    }
    let bytes = std::fs::read(&path).map_err(|e| invalid(e.to_string()))?;
    parse_bundle_spec(&bytes).map_err(invalid)
}

/// A bundle's config.json, parsed and checked as Create reads it: a JSON object with a
/// `process` object. The error says what is wrong (the caller names the file).
pub fn parse_bundle_spec(bytes: &[u8]) -> Result<serde_json::Value, String> {
    let spec: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if !spec.is_object() {
        return Err("not a JSON object".to_owned());
    }
    // Checked here rather than by the agent: the first container's Create would otherwise
    // boot a VM to be told.
    if spec.get("process").is_none_or(|p| !p.is_object()) {
        return Err("process is missing: a task needs a process to run".to_owned());
    }
    // Create points root.path at the guest's rootfs: a root of another shape is refused
    // here, before a VM boots, rather than failing (or panicking) there.
    if spec
        .get("root")
        .is_some_and(|r| !r.is_object() && !r.is_null())
    {
        return Err("root is not an object".to_owned());
    }
    Ok(spec)
}

/// The spec's annotations whose values are strings (the pod's, for a sandbox container),
/// which may override configuration keys (see [`config::annotations`]).
pub fn spec_annotations(spec: &serde_json::Value) -> BTreeMap<String, String> {
    spec.get("annotations")
        .and_then(serde_json::Value::as_object)
        .map(|a| {
            a.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Points the spec's `root.path` at `guest_root`, where the agent finds the container's
/// root file system (a missing or null `root` becomes one). Refuses a spec that is not an
/// object or whose `root` is not one, naming it.
pub fn set_root_path(spec: &mut serde_json::Value, guest_root: String) -> Result<(), String> {
    let spec = spec
        .as_object_mut()
        .ok_or_else(|| "the spec is not a JSON object".to_owned())?;
    let root = spec.entry("root").or_insert_with(|| serde_json::json!({}));
    if root.is_null() {
        *root = serde_json::json!({});
    }
    let root = root
        .as_object_mut()
        .ok_or_else(|| "root is not an object".to_owned())?;
    root.insert("path".to_owned(), serde_json::Value::String(guest_root));
    Ok(())
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let id = req.id.clone();
        match self.inner.create(req).await {
            Ok(pid) => Ok(api::CreateTaskResponse {
                pid,
                ..Default::default()
            }),
            Err(err) => {
                tracing::error!(container = %id, %err, "create failed");
                Err(err)
            }
        }
    }

    async fn state(
        &self,
        _: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        self.inner.with_process(&req.id, &req.exec_id, |c, e| {
            let paused = c.paused;
            let bundle = c.bundle.display().to_string();
            let p = c
                .process(e)
                .ok_or_else(|| self.inner.not_found(&req.id, e))?;
            let state = match p.status {
                Status::Created => api::Status::CREATED,
                Status::Running if paused => api::Status::PAUSED,
                Status::Running => api::Status::RUNNING,
                Status::Stopped => api::Status::STOPPED,
            };
            let exit = p.exit();
            Ok(api::StateResponse {
                // As runc's shim: the process's own id (the exec id for an exec).
                id: if e.is_empty() {
                    req.id.clone()
                } else {
                    e.to_owned()
                },
                bundle,
                pid: shim_pid(),
                status: state.into(),
                stdin: p.stdio.stdin.clone(),
                stdout: p.stdio.stdout.clone(),
                stderr: p.stdio.stderr.clone(),
                terminal: p.stdio.terminal,
                exit_status: exit.map_or(0, |x| x.status),
                exited_at: exit.map_or_else(MessageField::none, |x| timestamp(x.at)),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            })
        })
    }

    async fn start(
        &self,
        _: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let pid = self.inner.start(&req.id, &req.exec_id).await?;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        self.inner.delete(&req.id, &req.exec_id).await
    }

    async fn pids(
        &self,
        _: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let sandbox = self.inner.live_sandbox(&req.id).await?;
        self.inner.with_process(&req.id, "", |_, _| Ok(()))?;
        let processes = sandbox
            .agent()
            .list_processes(&req.id)
            .await
            .map_err(|e| agent_error(&e))?;
        Ok(api::PidsResponse {
            processes: processes
                .into_iter()
                .map(|p| ProcessInfo {
                    pid: p.pid,
                    // As runc's shim: an exec's id, in runc's ProcessDetails.
                    info: exec_details(&p.exec_id),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<Empty> {
        let sandbox = self.inner.live_sandbox(&req.id).await?;
        self.inner.with_process(&req.id, "", |_, _| Ok(()))?;
        sandbox
            .agent()
            .pause_container(&req.id)
            .await
            .map_err(|e| agent_error(&e))?;
        if let Some(c) = self.inner.containers.lock().get_mut(&req.id) {
            c.paused = true;
        }
        let event = TaskPaused {
            container_id: req.id,
            ..Default::default()
        };
        self.inner
            .publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(event))
            .await;
        Ok(Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<Empty> {
        let sandbox = self.inner.live_sandbox(&req.id).await?;
        self.inner.with_process(&req.id, "", |_, _| Ok(()))?;
        sandbox
            .agent()
            .resume_container(&req.id)
            .await
            .map_err(|e| agent_error(&e))?;
        if let Some(c) = self.inner.containers.lock().get_mut(&req.id) {
            c.paused = false;
        }
        let event = TaskResumed {
            container_id: req.id,
            ..Default::default()
        };
        self.inner
            .publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(event))
            .await;
        Ok(Empty::new())
    }

    async fn checkpoint(
        &self,
        _: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        Err(status(
            Code::UNIMPLEMENTED,
            format!("hull does not checkpoint containers (asked for {})", req.id),
        ))
    }

    async fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<Empty> {
        let sandbox = self.inner.sandbox(&req.id).await?;
        if let Some(reason) = sandbox.lost() {
            // As runc's shim for a finished process: every process died with the sandbox.
            self.inner
                .with_process(&req.id, &req.exec_id, |_, _| Ok(()))?;
            return Err(status(
                Code::NOT_FOUND,
                format!(
                    "process {:?} of container {} already finished: its sandbox is lost ({reason})",
                    req.exec_id, req.id
                ),
            ));
        }
        self.inner.with_process(&req.id, &req.exec_id, |c, e| {
            match c.process(e).map(|p| p.status) {
                // As runc's shim: a finished process is not found.
                Some(Status::Stopped) if !req.all => Err(status(
                    Code::NOT_FOUND,
                    format!("process {e:?} of container {} already finished", req.id),
                )),
                _ => Ok(()),
            }
        })?;
        sandbox
            .agent()
            .signal_process(&req.id, &req.exec_id, req.signal, req.all)
            .await
            .map_err(|e| agent_error(&e))?;
        Ok(Empty::new())
    }

    async fn exec(&self, _: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        if req.exec_id.is_empty() {
            return Err(status(Code::INVALID_ARGUMENT, "the exec id is empty"));
        }
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        if let Some(uri) = stdio.unsupported() {
            return Err(status(
                Code::UNIMPLEMENTED,
                format!("hull copies stdio to FIFOs only; {uri:?} is not supported"),
            ));
        }
        // The spec is an OCI Process, which containerd marshals as JSON in the Any.
        let process_json = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        if serde_json::from_slice::<serde_json::Value>(&process_json).is_err() {
            return Err(status(
                Code::INVALID_ARGUMENT,
                format!(
                    "exec {} of container {}: the process spec is not JSON",
                    req.exec_id, req.id
                ),
            ));
        }
        {
            let mut map = self.inner.containers.lock();
            let container = map
                .get_mut(&req.id)
                .ok_or_else(|| self.inner.not_found(&req.id, ""))?;
            if container.execs.contains_key(&req.exec_id) {
                return Err(status(
                    Code::ALREADY_EXISTS,
                    format!(
                        "exec {} of container {} already exists",
                        req.exec_id, req.id
                    ),
                ));
            }
            container
                .execs
                .insert(req.exec_id.clone(), Process::new(stdio, Some(process_json)));
        }
        let event = TaskExecAdded {
            container_id: req.id,
            exec_id: req.exec_id,
            ..Default::default()
        };
        self.inner
            .publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(event))
            .await;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<Empty> {
        let sandbox = self.inner.live_sandbox(&req.id).await?;
        self.inner
            .with_process(&req.id, &req.exec_id, |_, _| Ok(()))?;
        sandbox
            .agent()
            .tty_win_resize(&req.id, &req.exec_id, req.height, req.width)
            .await
            .map_err(|e| agent_error(&e))?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<Empty> {
        let sandbox = self.inner.sandbox(&req.id).await?;
        let copier = self.inner.with_process(&req.id, &req.exec_id, |c, e| {
            Ok(c.process(e).and_then(Process::close_stdin))
        })?;
        if !req.stdin {
            return Ok(Empty::new());
        }
        match copier {
            // The copy sends what is buffered, then closes stdin.
            Some(notify) => notify.notify_one(),
            // NOT_FOUND: the agent forgot the process (it exited and was removed); its stdin
            // is closed with it.
            None => match sandbox.agent().close_stdin(&req.id, &req.exec_id).await {
                Err(e) if e.code() != Some(Code::NOT_FOUND) => return Err(agent_error(&e)),
                _ => {}
            },
        }
        Ok(Empty::new())
    }

    async fn update(&self, _: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<Empty> {
        let sandbox = self.inner.live_sandbox(&req.id).await?;
        self.inner.with_process(&req.id, "", |_, _| Ok(()))?;
        // containerd marshals the OCI LinuxResources as JSON in the Any.
        let resources = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        if serde_json::from_slice::<serde_json::Value>(&resources).is_err() {
            return Err(status(
                Code::INVALID_ARGUMENT,
                format!("update of container {}: the resources are not JSON", req.id),
            ));
        }
        sandbox
            .agent()
            .update_container(&req.id, resources)
            .await
            .map_err(|e| agent_error(&e))?;
        Ok(Empty::new())
    }

    async fn wait(
        &self,
        _: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let mut watch = self
            .inner
            .with_process(&req.id, &req.exec_id, |c, e| {
                Ok(c.process(e).map(Process::exit_watch))
            })?
            .ok_or_else(|| self.inner.not_found(&req.id, &req.exec_id))?;
        let exit = watch
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|e| *e)
            .ok_or_else(|| {
                status(
                    Code::NOT_FOUND,
                    format!("container {} was deleted while waited for", req.id),
                )
            })?;
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: timestamp(exit.at),
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let sandbox = self.inner.live_sandbox(&req.id).await?;
        self.inner.with_process(&req.id, "", |_, _| Ok(()))?;
        let stats = sandbox
            .agent()
            .stats_container(&req.id)
            .await
            .map_err(|e| agent_error(&e))?;
        let metrics = super::metrics::to_containerd(&stats.cgroup_stats);
        let any = containerd_shim::util::convert_to_any(Box::new(metrics))
            .map_err(|e| status(Code::INTERNAL, format!("encoding metrics: {e}")))?;
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _: &TtrpcContext,
        _: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        Ok(api::ConnectResponse {
            shim_pid: shim_pid(),
            task_pid: shim_pid(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _: &TtrpcContext, _: api::ShutdownRequest) -> TtrpcResult<Empty> {
        // containerd asks after each Delete; the shim stays while its pod has containers.
        if !self.inner.containers.lock().is_empty() {
            return Ok(Empty::new());
        }
        let sandbox = self.inner.sandbox.lock().await.take();
        // The metrics server, the OOM watch (its connection to the agent, which the agent's
        // server waits for before it exits) and the death watch (the orderly stop ends the
        // sandbox's processes: that is no death to report) end before the sandbox stops.
        for watcher in [
            &self.inner.metrics_server,
            &self.inner.oom_watch,
            &self.inner.death_watch,
        ] {
            let task = watcher
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(task) = task {
                task.abort();
                let _ = task.await;
            }
        }
        // containerd gives Shutdown 3 s, then closes the connection and runs `shim delete`,
        // which kills what the sandbox record lists. So the sandbox is stopped gracefully
        // for up to SHUTDOWN_INLINE before the answer, and the rest (a slow VM) continues
        // after it; the shim exits when it is done.
        let exit = Arc::clone(&self.inner.exit);
        let teardown = tokio::spawn(async move {
            if let Some(sandbox) = sandbox {
                match release(sandbox).await {
                    Ok(sandbox) => sandbox.shutdown().await,
                    Err(sandbox) => {
                        tracing::error!(sandbox = %sandbox.id(), "sandbox still in use at shutdown; its record is left for 'shim delete'");
                    }
                }
            }
            tracing::info!("shutdown requested: exiting");
            exit.signal();
        });
        if tokio::time::timeout(SHUTDOWN_INLINE, teardown)
            .await
            .is_err()
        {
            tracing::info!("the sandbox is still stopping; answering Shutdown meanwhile");
        }
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use containerd_shim_protos::protobuf::Message;
    use containerd_shim_protos::shim::oci::ProcessDetails;

    use super::*;

    #[test]
    fn ps_names_exec_processes_as_runc_does() {
        assert!(exec_details("").is_none(), "init and unknown processes");
        let any = exec_details("e1")
            .into_option()
            .expect("details for an exec");
        assert_eq!(any.type_url, "containerd.runc.v1.ProcessDetails");
        let details = ProcessDetails::parse_from_bytes(&any.value).unwrap();
        assert_eq!(details.exec_id, "e1");
    }

    #[test]
    fn a_malformed_bundle_spec_is_an_invalid_argument_naming_the_file() {
        let bundle = tempfile::tempdir().unwrap();
        let code = |err: TtrpcError| match err {
            TtrpcError::RpcStatus(s) => (s.code.enum_value().ok(), s.message),
            other => panic!("{other:?}"),
        };
        let (c, message) = code(read_spec(bundle.path()).unwrap_err());
        assert_eq!(c, Some(Code::INVALID_ARGUMENT));
        assert!(message.contains("config.json"), "{message}");
        std::fs::write(bundle.path().join("config.json"), "[1, 2]").unwrap();
        let (_, message) = code(read_spec(bundle.path()).unwrap_err());
        assert!(message.contains("not a JSON object"), "{message}");
        std::fs::write(
            bundle.path().join("config.json"),
            r#"{"root": {"path": "rootfs"}}"#,
        )
        .unwrap();
        let (c, message) = code(read_spec(bundle.path()).unwrap_err());
        assert_eq!(c, Some(Code::INVALID_ARGUMENT));
        assert!(message.contains("process is missing"), "{message}");
        std::fs::write(
            bundle.path().join("config.json"),
            r#"{"root": {"path": "rootfs"}, "process": {"args": ["true"], "cwd": "/"}}"#,
        )
        .unwrap();
        assert_eq!(read_spec(bundle.path()).unwrap()["root"]["path"], "rootfs");
    }

    /// A config.json whose `root` is not an object (`"root": 5`) panicked Create where it
    /// points root.path at the guest's rootfs (serde_json's index assignment panics on a
    /// number): it is refused as an invalid spec, and the rewrite itself refuses it too.
    #[test]
    fn a_spec_whose_root_is_not_an_object_is_refused_not_a_panic() {
        for spec in [
            r#"{"process": {}, "root": 5}"#,
            r#"{"process": {}, "root": "rootfs"}"#,
            r#"{"process": {}, "root": [1]}"#,
        ] {
            assert_eq!(
                parse_bundle_spec(spec.as_bytes()).unwrap_err(),
                "root is not an object",
                "{spec}"
            );
            let mut value: serde_json::Value = serde_json::from_str(spec).unwrap();
            assert_eq!(
                set_root_path(&mut value, "/guest".into()).unwrap_err(),
                "root is not an object"
            );
        }
        for spec in [r#"{"process": {}}"#, r#"{"process": {}, "root": null}"#] {
            let mut value = parse_bundle_spec(spec.as_bytes()).unwrap();
            set_root_path(&mut value, "/guest".into()).unwrap();
            assert_eq!(value["root"]["path"], "/guest", "{spec}");
        }
        assert!(set_root_path(&mut serde_json::json!([1]), "/guest".into()).is_err());
    }
}
