//! The container service: containers and their processes, from CreateContainer to
//! RemoveContainer, as the agent keeps them.
//!
//! Containers run through youki's libcontainer, invoked in a short-lived helper process
//! ([`helper`]: create, exec, start and delete); everything that needs no fork and no change
//! of the agent's process-wide state (signals, the cgroup's freezer, stats and resources,
//! stdio) the agent does itself, on its one-threaded event loop or, for the few blocking
//! cgroup file operations, on tokio's blocking pool. The agent's [`Reaper`] owns every exit
//! status; see [`crate::reaper`] for how that stays race-free with the helper.
//!
//! The semantics of each call are documented in agent.proto.

pub mod cgroup;
pub mod disk;
pub mod helper;
pub mod namespaces;
pub mod stdio;
pub mod storage;

use std::collections::{HashMap, VecDeque};
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hull_agent_protocol::types::CgroupStats;
use hull_agent_protocol::MAX_JSON_BYTES;
use libcontainer::oci_spec::runtime::{LinuxResources, Process as OciProcess};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::container_request::{ContainerId, ContainerRequest};
use crate::reaper::{ExitStatus, ExitWatch, Reaper};
use cgroup::Cgroup;
use helper::{HelperArgs, HelperOp, HELPER_ARG};
use stdio::{ProcessEnds, Stdio, Stream, Terminal};

/// How long RemoveContainer waits for a container's processes after SIGKILL, by default.
const DEFAULT_REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a container helper may take (libcontainer's create runs the spec's hooks).
const HELPER_TIMEOUT: Duration = Duration::from_secs(120);

/// How often GetOOMEvent looks at the containers' OOM kill counts.
const OOM_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Why a container call failed; each maps to one ttrpc code (see [`crate::service`]).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such container or process.
    #[error("{0}")]
    NotFound(String),
    /// The id is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// The state does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A feature this agent lacks.
    #[error("{0}")]
    Unimplemented(String),
    /// Processes did not exit in time.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The guest failed.
    #[error("{0}")]
    Internal(String),
}

fn internal(context: impl std::fmt::Display) -> impl FnOnce(String) -> Failure {
    move |cause| Failure::Internal(format!("{context}: {cause}"))
}

/// A container's life-cycle state, as far as the agent tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Created; its init waits for StartContainer.
    Created,
    /// Started (its init may have exited since: see [`Process::exit`]).
    Running,
    /// Frozen by PauseContainer.
    Paused,
}

/// A process the agent started: a container's init or an exec.
#[derive(Debug)]
pub struct Process {
    /// Its PID in the agent's PID namespace.
    pub pid: i32,
    /// A pidfd, so a signal can never reach a recycled PID (None on kernels before 5.3).
    pidfd: Option<OwnedFd>,
    exit: ExitWatch,
    /// Its stdio.
    pub stdio: Stdio,
    /// Set once the process is forgotten (RemoveProcess): calls still in flight on its stdio
    /// end, so the last reference, and with it the pidfd and the pipes, goes at once.
    removed: tokio::sync::watch::Sender<bool>,
}

impl Process {
    /// Its exit status, if it has exited.
    pub fn exit(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Waits for it to exit.
    pub async fn wait(&self) -> Result<ExitStatus, Failure> {
        wait_exit(self.exit.clone(), self.pid).await
    }

    /// A process the agent just started.
    fn new(spawned: Spawned, stdio: Stdio) -> Self {
        Process {
            pid: spawned.pid,
            pidfd: spawned.pidfd,
            exit: spawned.exit,
            stdio,
            removed: tokio::sync::watch::channel(false).0,
        }
    }

    /// Runs a stdio call on the process, unless or until the process is forgotten: then the
    /// call ends with NOT_FOUND (its future, and the stdio lock it may hold, are dropped).
    async fn unless_removed<T>(
        &self,
        id: &str,
        exec_id: &str,
        call: impl std::future::Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        let mut removed = self.removed.subscribe();
        tokio::select! {
            biased;
            _ = removed.wait_for(|removed| *removed) => {
                Err(Failure::NotFound(format!(
                    "process {exec_id:?} of container {id:?} was removed"
                )))
            }
            result = call => result,
        }
    }

    /// Sends `signal`; a process that has exited is not an error.
    fn signal(&self, signal: Signal) -> Result<(), Failure> {
        if self.exit().is_some() {
            return Ok(());
        }
        send_signal(self.pid, self.pidfd.as_ref(), signal)
    }
}

/// Sends `signal` to `pid`, through its pidfd when there is one; a process that is gone is
/// not an error.
fn send_signal(pid: i32, pidfd: Option<&OwnedFd>, signal: Signal) -> Result<(), Failure> {
    let result = match pidfd {
        Some(pidfd) => {
            // SAFETY: pidfd_send_signal reads only its arguments; the pidfd is owned and
            // open, the info pointer is null as allowed.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd.as_raw_fd(),
                    signal as libc::c_int,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            if rc < 0 {
                Err(nix::errno::Errno::last())
            } else {
                Ok(())
            }
        }
        None => nix::sys::signal::kill(Pid::from_raw(pid), signal),
    };
    match result {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(err) => Err(Failure::Internal(format!(
            "sending {signal} to PID {pid}: {err}"
        ))),
    }
}

/// Waits until the reaper reports the exit of `pid` on `exit`.
async fn wait_exit(mut exit: ExitWatch, pid: i32) -> Result<ExitStatus, Failure> {
    let status = exit
        .wait_for(Option::is_some)
        .await
        .map_err(|_| Failure::Internal(format!("the exit status of PID {pid} was lost")))?;
    (*status).ok_or_else(|| Failure::Internal(format!("no exit status for PID {pid}")))
}

impl Spawned {
    /// Kills a process that cannot be handed out (its setup failed after it was made); the
    /// reaper collects it.
    fn kill(&self) {
        if self.exit.borrow().is_none() {
            if let Err(err) = send_signal(self.pid, self.pidfd.as_ref(), Signal::SIGKILL) {
                tracing::error!(
                    pid = self.pid,
                    "killing a process whose setup failed: {err}"
                );
            }
        }
    }
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the kernel just returned this descriptor, owned by nothing else.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One container.
#[derive(Debug)]
pub struct Container {
    id: String,
    bundle: PathBuf,
    mounts: Vec<PathBuf>,
    /// Its root, when the guest kernel automounted it as a virtio-fs submount of a sandbox
    /// storage (see [`storage::automounted_root`]): unmounted with the container.
    root_submount: Option<PathBuf>,
    cgroup: Arc<Cgroup>,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Option<Arc<Process>>>>,
    state: Mutex<State>,
    oom_reported: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a lookup or an insert: a poisoned lock holds consistent data.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Container {
    /// Its state.
    pub fn state(&self) -> State {
        *lock(&self.state)
    }

    fn set_state(&self, state: State) {
        *lock(&self.state) = state;
    }

    /// Whether an OOM kill happened since the last report; marks it reported.
    fn take_oom_kill(&self) -> bool {
        let count = self.cgroup.oom_kills();
        let reported = self.oom_reported.load(Ordering::Relaxed);
        count > reported
            && self
                .oom_reported
                .compare_exchange(reported, count, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Whether its init process is still alive.
    fn init_alive(&self) -> bool {
        self.init.exit().is_none()
    }

    /// The process `exec_id` ("" for init).
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>, Failure> {
        if exec_id.is_empty() {
            return Ok(Arc::clone(&self.init));
        }
        lock(&self.execs)
            .get(exec_id)
            .and_then(Clone::clone)
            .ok_or_else(|| {
                Failure::NotFound(format!("container {} has no process {exec_id:?}", self.id))
            })
    }

    fn processes(&self) -> Vec<(String, Arc<Process>)> {
        let mut all = vec![(String::new(), Arc::clone(&self.init))];
        all.extend(
            lock(&self.execs)
                .iter()
                .filter_map(|(id, p)| p.clone().map(|p| (id.clone(), p))),
        );
        all
    }
}

/// Where the agent keeps its container files.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Files under `root` (the agent makes and owns it).
    pub fn new(root: PathBuf) -> Self {
        Layout { root }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn libcontainer(&self) -> PathBuf {
        self.root.join("lc")
    }

    fn bundle(&self, id: &str) -> PathBuf {
        self.root.join("b").join(id)
    }

    fn tty_socket(&self, n: u64) -> PathBuf {
        self.root.join("t").join(format!("{n}.sock"))
    }
}

/// The agent's containers.
#[derive(Debug)]
pub struct Containers {
    reaper: Arc<Reaper>,
    layout: Layout,
    /// `None` while a container is being created (its id is taken).
    table: Mutex<HashMap<String, Option<Arc<Container>>>>,
    sequence: AtomicU64,
    no_pivot: bool,
    /// OOM kills of containers removed before GetOOMEvent saw them, oldest first.
    oom_removed: Mutex<VecDeque<String>>,
}

/// What a helper run gave back.
struct Spawned {
    pid: i32,
    pidfd: Option<OwnedFd>,
    exit: ExitWatch,
    terminal: Option<OwnedFd>,
}

/// Frees a reserved id unless the reservation was filled.
struct Reservation<F: Fn()> {
    release: Option<F>,
}

impl<F: Fn()> Reservation<F> {
    fn new(release: F) -> Self {
        Reservation {
            release: Some(release),
        }
    }

    fn keep(mut self) {
        self.release = None;
    }
}

impl<F: Fn()> Drop for Reservation<F> {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

impl Containers {
    /// No containers yet; files go under `layout`, exit statuses come from `reaper`.
    /// Containers enter their rootfs without pivot_root(2) if `no_pivot` is set or the
    /// agent's root is an initramfs (see [`root_is_initramfs`]).
    pub fn new(reaper: Arc<Reaper>, layout: Layout, no_pivot: bool) -> Self {
        let no_pivot = no_pivot || root_is_initramfs();
        if no_pivot {
            tracing::info!("containers enter their rootfs by MS_MOVE and chroot, not pivot_root");
        }
        Containers {
            reaper,
            layout,
            table: Mutex::new(HashMap::new()),
            sequence: AtomicU64::new(0),
            no_pivot,
            oom_removed: Mutex::new(VecDeque::new()),
        }
    }

    /// The container `id`.
    pub fn get(&self, id: &str) -> Result<Arc<Container>, Failure> {
        lock(&self.table)
            .get(id)
            .and_then(Clone::clone)
            .ok_or_else(|| Failure::NotFound(format!("no container {id:?}")))
    }

    /// CreateContainer.
    pub async fn create(&self, request: ContainerRequest) -> Result<(), Failure> {
        let id = request.id.as_str().to_owned();
        {
            let mut table = lock(&self.table);
            if table.contains_key(&id) {
                return Err(Failure::AlreadyExists(format!(
                    "container {id:?} exists already"
                )));
            }
            table.insert(id.clone(), None);
        }
        let reservation = Reservation::new(|| {
            lock(&self.table).remove(&id);
        });

        let mut spec: serde_json::Value = serde_json::from_slice(&request.spec_json)
            .map_err(|err| Failure::InvalidArgument(format!("oci_spec_json: {err}")))?;
        if request.spec.process.is_none() {
            return Err(Failure::InvalidArgument(
                "oci_spec_json: process is missing (a container needs a process to run)".into(),
            ));
        }
        let terminal = spec
            .pointer("/process/terminal")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        if let Some(sandbox_id) = namespaces::cri_sandbox_of(&spec).map(str::to_owned) {
            self.join_sandbox_namespaces(&id, &sandbox_id, &mut spec)?;
        }
        let cgroup_path = cgroups_path(&mut spec, &id)?;
        if spec.pointer("/linux/seccomp").is_some_and(|v| !v.is_null()) {
            // libcontainer is built without libseccomp (a C library the static agent would
            // have to link). As Kata's agent with its default disable_guest_seccomp, the
            // profile is not applied in the guest: the VM is the isolation boundary.
            tracing::warn!(container = %id, "linux.seccomp is not applied by this agent");
        }

        let mounts = storage::mount_all(&request.storages)
            .await
            .map_err(Failure::from)?;
        // Checked once the storages are mounted: the rootfs is usually inside one of them.
        let root = &request.spec.root.path;
        if !root.is_dir() {
            storage::unmount_all(&mounts);
            return Err(Failure::InvalidArgument(format!(
                "oci_spec_json: root.path {} is not a directory in the guest",
                root.display()
            )));
        }
        let bundle = self.layout.bundle(&id);
        let result = self
            .create_in_bundle(&id, &bundle, &spec, terminal, &cgroup_path)
            .await;
        match result {
            Ok((spawned, stdio, cgroup)) => {
                let root_submount = storage::automounted_root(root, &mounts);
                let container = Container {
                    id: id.clone(),
                    bundle,
                    mounts,
                    root_submount,
                    cgroup: Arc::new(cgroup),
                    init: Arc::new(Process::new(spawned, stdio)),
                    execs: Mutex::new(HashMap::new()),
                    state: Mutex::new(State::Created),
                    oom_reported: AtomicU64::new(0),
                };
                container
                    .oom_reported
                    .store(container.cgroup.oom_kills(), Ordering::Relaxed);
                tracing::info!(container = %id, pid = container.init.pid, "created");
                lock(&self.table).insert(id.clone(), Some(Arc::new(container)));
                reservation.keep();
                Ok(())
            }
            Err(err) => {
                storage::unmount_all(&mounts);
                let _ = std::fs::remove_dir_all(&bundle);
                Err(err)
            }
        }
    }

    /// Points the shared namespaces of CRI container `id` at those of its pod's sandbox
    /// container `sandbox_id` (see [`namespaces`]), which must be here and alive.
    fn join_sandbox_namespaces(
        &self,
        id: &str,
        sandbox_id: &str,
        spec: &mut serde_json::Value,
    ) -> Result<(), Failure> {
        let sandbox = self.get(sandbox_id).map_err(|_| {
            Failure::FailedPrecondition(format!(
                "container {id:?} belongs to pod sandbox {sandbox_id:?} \
                 ({}), which this agent does not have",
                namespaces::SANDBOX_ID_ANNOTATION
            ))
        })?;
        if !sandbox.init_alive() {
            return Err(Failure::FailedPrecondition(format!(
                "container {id:?}: the init of its pod sandbox {sandbox_id:?} has exited, so \
                 there are no pod namespaces to join"
            )));
        }
        let joined = namespaces::join_sandbox(spec, sandbox.init.pid)
            .map_err(|err| Failure::InvalidArgument(err.to_string()))?;
        tracing::debug!(container = %id, sandbox = %sandbox_id, ?joined, "joins the pod's namespaces");
        Ok(())
    }

    async fn create_in_bundle(
        &self,
        id: &str,
        bundle: &Path,
        spec: &serde_json::Value,
        terminal: bool,
        cgroup_path: &Path,
    ) -> Result<(Spawned, Stdio, Cgroup), Failure> {
        std::fs::create_dir_all(bundle)
            .map_err(|err| internal(format!("creating {}", bundle.display()))(err.to_string()))?;
        let config = serde_json::to_vec(spec)
            .map_err(|err| internal("encoding the spec")(err.to_string()))?;
        std::fs::write(bundle.join("config.json"), config)
            .map_err(|err| internal("writing config.json")(err.to_string()))?;
        let (stdio, ends) = if terminal {
            (None, ProcessEnds::Terminal)
        } else {
            let (stdio, ends) = stdio::pipes().map_err(|err| internal("stdio")(err.to_string()))?;
            (Some(stdio), ends)
        };
        let mut spawned = self
            .spawn_process(HelperOp::Create, id, bundle, "init", ends)
            .await?;
        let finished = Self::finish_create(stdio, spawned.terminal.take(), cgroup_path);
        match finished {
            Ok((stdio, cgroup)) => Ok((spawned, stdio, cgroup)),
            Err(err) => {
                // Leave nothing: the init waits in the created state; kill it and delete.
                spawned.kill();
                let _ = wait_exit(spawned.exit.clone(), spawned.pid).await;
                if let Err(delete) = self.helper_op(HelperOp::Delete, id).await {
                    tracing::error!(container = %id, "cleaning up a failed create: {delete}");
                }
                Err(err)
            }
        }
    }

    /// The parts of a create after the helper: the init's stdio and its cgroup.
    fn finish_create(
        stdio: Option<Stdio>,
        terminal: Option<OwnedFd>,
        cgroup_path: &Path,
    ) -> Result<(Stdio, Cgroup), Failure> {
        let stdio = match (stdio, terminal) {
            (Some(stdio), _) => stdio,
            (None, Some(master)) => Stdio::Terminal(
                Terminal::new(master).map_err(|err| internal("the pty")(err.to_string()))?,
            ),
            (None, None) => return Err(Failure::Internal("the container sent no terminal".into())),
        };
        let cgroup = Cgroup::open(cgroup_path).map_err(|err| Failure::Internal(err.to_string()))?;
        Ok((stdio, cgroup))
    }

    /// Runs the container helper with `args` (the container process's stdio `ends`) to its
    /// end; an error carries the helper's message. The caller holds the reaper off.
    async fn run_helper(&self, args: &HelperArgs, ends: ProcessEnds) -> Result<(), Failure> {
        std::fs::create_dir_all(&args.state_root)
            .map_err(|err| internal("creating libcontainer's state directory")(err.to_string()))?;
        let _ = std::fs::remove_file(&args.error_file);
        let mut command = Command::new("/proc/self/exe");
        command.arg(HELPER_ARG).args(args.to_args());
        match ends {
            ProcessEnds::Pipes(stdin, stdout, stderr) => {
                command.stdin(stdin).stdout(stdout).stderr(stderr);
            }
            ProcessEnds::Terminal => {
                command
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null());
            }
        }
        let child = command
            .spawn()
            .map_err(|err| internal("starting the container helper")(err.to_string()))?;
        // The process's ends of its pipes now live on in the helper (and the process) only,
        // so the agent sees end of stream when the process's side closes.
        drop(command);
        let pid = i32::try_from(child.id())
            .map_err(|err| internal("the helper's PID")(err.to_string()))?;
        // Not `child.wait()`: the reaper owns every wait (registering under the caller's
        // hold, so no waitpid(-1) can take the status first).
        drop(child);
        let exit = self.reaper.register(Pid::from_raw(pid));
        let status = match tokio::time::timeout(HELPER_TIMEOUT, wait_exit(exit.clone(), pid)).await
        {
            Ok(status) => status?,
            Err(_) => {
                // A helper stuck (in a hook, say) would hold the reaper off for good. It is
                // our unreaped child, so its PID cannot have been reused.
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                wait_exit(exit, pid).await?;
                return Err(Failure::DeadlineExceeded(format!(
                    "the container helper did not finish within {} s and was killed",
                    HELPER_TIMEOUT.as_secs()
                )));
            }
        };
        let result = if status == ExitStatus::exited(0) {
            Ok(())
        } else {
            let message = std::fs::read_to_string(&args.error_file).unwrap_or_else(|_| {
                format!("the container helper ended with status {}", status.status)
            });
            let what = match args.op {
                HelperOp::Create => "creating the container",
                HelperOp::Exec => "starting the process",
                HelperOp::Start => "starting the container",
                HelperOp::Delete => "deleting the container",
            };
            Err(Failure::Internal(format!("{what}: {message}")))
        };
        let _ = std::fs::remove_file(&args.error_file);
        result
    }

    /// Runs the helper for start or delete, which create no process.
    async fn helper_op(&self, op: HelperOp, id: &str) -> Result<(), Failure> {
        let bundle = self.layout.bundle(id);
        let name = match op {
            HelperOp::Start => "start",
            _ => "delete",
        };
        let args = HelperArgs {
            op,
            state_root: self.layout.libcontainer(),
            id: id.to_owned(),
            spec: PathBuf::from("-"),
            console_socket: None,
            pid_file: PathBuf::from("-"),
            error_file: bundle.join(format!("{name}.err")),
            no_pivot: self.no_pivot,
        };
        // Start and delete re-parent nothing to the agent (hooks are the helper's children,
        // waited for inside it); the hold only covers the helper's own PID between spawn and
        // registration, should a sweep ever run on another thread.
        let _hold = self.reaper.hold();
        self.run_helper(&args, no_stdio()?).await
    }

    /// Runs the helper for create or exec and registers the process it made with the reaper
    /// before anything else can reap it; with a terminal, receives its pty.
    async fn spawn_process(
        &self,
        op: HelperOp,
        id: &str,
        spec: &Path,
        name: &str,
        ends: ProcessEnds,
    ) -> Result<Spawned, Failure> {
        let bundle = self.layout.bundle(id);
        let pid_file = bundle.join(format!("{name}.pid"));
        let _ = std::fs::remove_file(&pid_file);
        let (console, listener) = if matches!(ends, ProcessEnds::Terminal) {
            let path = self
                .layout
                .tty_socket(self.sequence.fetch_add(1, Ordering::Relaxed));
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|err| {
                    internal("creating the console socket's directory")(err.to_string())
                })?;
            }
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path)
                .map_err(|err| internal("binding the console socket")(err.to_string()))?;
            (Some(path), Some(listener))
        } else {
            (None, None)
        };
        let args = HelperArgs {
            op,
            state_root: self.layout.libcontainer(),
            id: id.to_owned(),
            spec: spec.to_owned(),
            console_socket: console.clone(),
            pid_file: pid_file.clone(),
            error_file: bundle.join(format!("{name}.err")),
            no_pivot: self.no_pivot,
        };
        let cleanup = || {
            let _ = std::fs::remove_file(&pid_file);
            if let Some(path) = &console {
                let _ = std::fs::remove_file(path);
            }
        };

        // From here until the new process is registered, the reaper leaves unregistered
        // children alone (see crate::reaper): the process is re-parented to the agent when
        // the helper exits, and could exit itself before its PID is known here.
        let hold = self.reaper.hold();
        if let Err(err) = self.run_helper(&args, ends).await {
            cleanup();
            return Err(err);
        }
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok())
            .filter(|pid| *pid > 0);
        let Some(pid) = pid else {
            cleanup();
            return Err(Failure::Internal(
                "the container helper wrote no PID".into(),
            ));
        };
        let exit = self.reaper.register(Pid::from_raw(pid));
        // Opened while the PID is certainly this process (it cannot be reaped before the hold
        // ends), so a later signal can never reach a recycled PID.
        let pidfd = pidfd_open(pid);
        drop(hold);
        let terminal = listener
            .map(|listener| receive_pty(&listener))
            .transpose()
            .map_err(internal("receiving the terminal"));
        cleanup();
        let spawned = Spawned {
            pid,
            pidfd,
            exit,
            terminal: None,
        };
        match terminal {
            Ok(terminal) => Ok(Spawned {
                terminal,
                ..spawned
            }),
            Err(err) => {
                spawned.kill();
                Err(err)
            }
        }
    }

    /// StartContainer.
    pub async fn start(&self, id: &str) -> Result<(), Failure> {
        let container = self.get(id)?;
        if container.state() != State::Created || !container.init_alive() {
            return Err(Failure::FailedPrecondition(format!(
                "container {id:?} is not in the created state"
            )));
        }
        self.helper_op(HelperOp::Start, id).await?;
        container.set_state(State::Running);
        Ok(())
    }

    /// ExecProcess.
    pub async fn exec(&self, id: &str, exec_id: &str, process_json: &[u8]) -> Result<(), Failure> {
        ContainerId::parse(exec_id).map_err(|_| {
            Failure::InvalidArgument(format!(
                "exec_id {exec_id:?} is not 1 to 64 characters of [A-Za-z0-9_.-]"
            ))
        })?;
        if process_json.len() > MAX_JSON_BYTES {
            return Err(Failure::InvalidArgument(format!(
                "process_json is {} bytes, more than the {MAX_JSON_BYTES} accepted",
                process_json.len()
            )));
        }
        let process: OciProcess = serde_json::from_slice(process_json)
            .map_err(|err| Failure::InvalidArgument(format!("process_json: {err}")))?;
        if process.args().as_ref().is_none_or(Vec::is_empty) {
            return Err(Failure::InvalidArgument(
                "process_json: args is empty".into(),
            ));
        }
        let terminal = process.terminal().unwrap_or(false);
        let container = self.get(id)?;
        if container.state() != State::Running || !container.init_alive() {
            return Err(Failure::FailedPrecondition(format!(
                "container {id:?} is not running"
            )));
        }
        {
            let mut execs = lock(&container.execs);
            if execs.contains_key(exec_id) {
                return Err(Failure::AlreadyExists(format!(
                    "container {id:?} has a process {exec_id:?} already"
                )));
            }
            execs.insert(exec_id.to_owned(), None);
        }
        let reservation = Reservation::new(|| {
            lock(&container.execs).remove(exec_id);
        });
        let name = format!("exec-{exec_id}");
        let json_path = container.bundle.join(format!("{name}.json"));
        std::fs::write(&json_path, process_json)
            .map_err(|err| internal("writing the process's JSON")(err.to_string()))?;
        let (stdio, ends) = if terminal {
            (None, ProcessEnds::Terminal)
        } else {
            let (stdio, ends) = stdio::pipes().map_err(|err| internal("stdio")(err.to_string()))?;
            (Some(stdio), ends)
        };
        let spawned = self
            .spawn_process(HelperOp::Exec, id, &json_path, &name, ends)
            .await;
        let _ = std::fs::remove_file(&json_path);
        let mut spawned = spawned?;
        let stdio = match (stdio, spawned.terminal.take()) {
            (Some(stdio), _) => Ok(stdio),
            (None, Some(master)) => Terminal::new(master)
                .map(Stdio::Terminal)
                .map_err(|err| internal("the pty")(err.to_string())),
            (None, None) => Err(Failure::Internal("the process sent no terminal".into())),
        };
        let stdio = match stdio {
            Ok(stdio) => stdio,
            Err(err) => {
                spawned.kill();
                return Err(err);
            }
        };
        let process = Process::new(spawned, stdio);
        tracing::info!(container = %id, exec = %exec_id, pid = process.pid, "exec started");
        lock(&container.execs).insert(exec_id.to_owned(), Some(Arc::new(process)));
        reservation.keep();
        Ok(())
    }

    /// SignalProcess.
    pub async fn signal(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), Failure> {
        let signal = i32::try_from(signal)
            .ok()
            .and_then(|n| Signal::try_from(n).ok())
            .ok_or_else(|| Failure::InvalidArgument(format!("signal {signal} is not a signal")))?;
        let container = self.get(id)?;
        let process = container.process(exec_id)?;
        if !all {
            return process.signal(signal);
        }
        let cgroup = Arc::clone(&container.cgroup);
        let paused = container.state() == State::Paused;
        blocking(move || -> Result<(), Failure> {
            for pid in cgroup
                .pids()
                .map_err(|err| Failure::Internal(err.to_string()))?
            {
                match nix::sys::signal::kill(Pid::from_raw(pid), signal) {
                    Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                    Err(err) => {
                        return Err(Failure::Internal(format!(
                            "sending {signal} to PID {pid}: {err}"
                        )))
                    }
                }
            }
            // A frozen process dies of SIGKILL only once thawed.
            if paused && signal == Signal::SIGKILL {
                cgroup
                    .freeze(false)
                    .map_err(|err| Failure::Internal(err.to_string()))?;
            }
            Ok(())
        })
        .await??;
        if paused && signal == Signal::SIGKILL {
            container.set_state(State::Running);
        }
        Ok(())
    }

    /// PauseContainer (`true`) or ResumeContainer.
    pub async fn pause(&self, id: &str, pause: bool) -> Result<(), Failure> {
        let container = self.get(id)?;
        let (from, to) = if pause {
            (State::Running, State::Paused)
        } else {
            (State::Paused, State::Running)
        };
        if container.state() != from || !container.init_alive() {
            return Err(Failure::FailedPrecondition(format!(
                "container {id:?} is not {}",
                if pause { "running" } else { "paused" }
            )));
        }
        let cgroup = Arc::clone(&container.cgroup);
        blocking(move || cgroup.freeze(pause))
            .await?
            .map_err(|err| Failure::Internal(err.to_string()))?;
        container.set_state(to);
        Ok(())
    }

    /// StatsContainer.
    pub async fn stats(&self, id: &str) -> Result<CgroupStats, Failure> {
        let cgroup = Arc::clone(&self.get(id)?.cgroup);
        blocking(move || cgroup.stats())
            .await?
            .map_err(|err| Failure::Internal(err.to_string()))
    }

    /// UpdateContainer.
    pub async fn update(&self, id: &str, resources_json: &[u8]) -> Result<(), Failure> {
        if resources_json.len() > MAX_JSON_BYTES {
            return Err(Failure::InvalidArgument(format!(
                "resources_json is {} bytes, more than the {MAX_JSON_BYTES} accepted",
                resources_json.len()
            )));
        }
        let resources: LinuxResources = serde_json::from_slice(resources_json)
            .map_err(|err| Failure::InvalidArgument(format!("resources_json: {err}")))?;
        let cgroup = Arc::clone(&self.get(id)?.cgroup);
        blocking(move || cgroup.update(&resources))
            .await?
            .map_err(|err| Failure::Internal(err.to_string()))
    }

    /// ListProcesses: every PID of the container's cgroup, with the exec id of those the
    /// agent started.
    pub async fn list(&self, id: &str) -> Result<Vec<(u32, String)>, Failure> {
        let container = self.get(id)?;
        let cgroup = Arc::clone(&container.cgroup);
        let pids = blocking(move || cgroup.pids())
            .await?
            .map_err(|err| Failure::Internal(err.to_string()))?;
        let known: HashMap<i32, String> = container
            .processes()
            .into_iter()
            .map(|(exec_id, p)| (p.pid, exec_id))
            .collect();
        Ok(pids
            .into_iter()
            .filter_map(|pid| {
                let exec_id = known.get(&pid).cloned().unwrap_or_default();
                u32::try_from(pid).ok().map(|pid| (pid, exec_id))
            })
            .collect())
    }

    /// Reads a process's output.
    pub async fn read(
        &self,
        id: &str,
        exec_id: &str,
        stream: Stream,
        len: u32,
    ) -> Result<Vec<u8>, Failure> {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len == 0 {
            return Err(Failure::InvalidArgument("len is 0".into()));
        }
        let len = len.min(hull_agent_protocol::MAX_CHUNK_BYTES);
        let process = self.get(id)?.process(exec_id)?;
        let read = async {
            process
                .stdio
                .read(stream, len)
                .await
                .map_err(|err| Failure::Internal(format!("{err:#}")))
        };
        process.unless_removed(id, exec_id, read).await
    }

    /// WriteStdin.
    pub async fn write(&self, id: &str, exec_id: &str, data: &[u8]) -> Result<(), Failure> {
        if data.len() > hull_agent_protocol::MAX_CHUNK_BYTES {
            return Err(Failure::InvalidArgument(format!(
                "data is {} bytes, more than the {} accepted",
                data.len(),
                hull_agent_protocol::MAX_CHUNK_BYTES
            )));
        }
        let process = self.get(id)?.process(exec_id)?;
        let write = async { process.stdio.write_stdin(data).await.map_err(stdio_failure) };
        process.unless_removed(id, exec_id, write).await
    }

    /// CloseStdin.
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), Failure> {
        let process = self.get(id)?.process(exec_id)?;
        let close = async { process.stdio.close_stdin().await.map_err(stdio_failure) };
        process.unless_removed(id, exec_id, close).await
    }

    /// TtyWinResize.
    pub fn resize(&self, id: &str, exec_id: &str, rows: u32, columns: u32) -> Result<(), Failure> {
        let (Ok(rows), Ok(columns)) = (u16::try_from(rows), u16::try_from(columns)) else {
            return Err(Failure::InvalidArgument(format!(
                "{rows}x{columns} does not fit a terminal (at most 65535 each)"
            )));
        };
        let process = self.get(id)?.process(exec_id)?;
        let tty = process.stdio.terminal().map_err(stdio_failure)?;
        tty.resize(rows, columns).map_err(stdio_failure)
    }

    /// WaitProcess.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<ExitStatus, Failure> {
        let process = self.get(id)?.process(exec_id)?;
        process.wait().await
    }

    /// RemoveProcess: forgets an exec process that has exited. Its pidfd and the agent's
    /// ends of its stdio close once the calls in flight on it have ended (they end now, with
    /// NOT_FOUND), and its exec id is free again.
    pub fn remove_process(&self, id: &str, exec_id: &str) -> Result<(), Failure> {
        if exec_id.is_empty() {
            return Err(Failure::InvalidArgument(
                "exec_id is empty: the init process goes with RemoveContainer".into(),
            ));
        }
        let container = self.get(id)?;
        let process = {
            let mut execs = lock(&container.execs);
            let process = execs.get(exec_id).and_then(Clone::clone).ok_or_else(|| {
                Failure::NotFound(format!("container {id:?} has no process {exec_id:?}"))
            })?;
            if process.exit().is_none() {
                return Err(Failure::FailedPrecondition(format!(
                    "process {exec_id:?} of container {id:?} is running: signal it and wait first"
                )));
            }
            execs.remove(exec_id);
            process
        };
        process.removed.send_replace(true);
        tracing::info!(container = %id, exec = %exec_id, "exec removed");
        Ok(())
    }

    /// RemoveContainer: kills what still runs, waits up to `timeout` for it, deletes the
    /// container (cgroup, libcontainer state), unmounts its storages and forgets it.
    pub async fn remove(&self, id: &str, timeout: Option<Duration>) -> Result<(), Failure> {
        let container = self.get(id)?;
        let timeout = timeout.unwrap_or(DEFAULT_REMOVE_TIMEOUT);
        let processes = container.processes();
        if processes.iter().any(|(_, p)| p.exit().is_none())
            || !container.cgroup.pids().unwrap_or_default().is_empty()
        {
            self.signal(id, "", Signal::SIGKILL as u32, true).await?;
            container.init.signal(Signal::SIGKILL)?;
        }
        let all_exited = async {
            for (_, process) in &processes {
                process.wait().await?;
            }
            // Processes the container forked itself die with its PID namespace; wait until
            // the cgroup is empty so it can be removed.
            let cgroup = Arc::clone(&container.cgroup);
            while !cgroup.pids().unwrap_or_default().is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<(), Failure>(())
        };
        match tokio::time::timeout(timeout, all_exited).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(Failure::DeadlineExceeded(format!(
                    "the processes of container {id:?} did not exit within {} s of SIGKILL",
                    timeout.as_secs()
                )))
            }
        }
        // An OOM kill not reported yet outlives the cgroup that counted it.
        if container.take_oom_kill() {
            lock(&self.oom_removed).push_back(id.to_owned());
        }
        self.helper_op(HelperOp::Delete, id).await?;
        storage::unmount_all(&container.mounts);
        if let Some(root) = &container.root_submount {
            storage::unmount_all(std::slice::from_ref(root));
        }
        if let Err(err) = std::fs::remove_dir_all(&container.bundle) {
            tracing::warn!(container = %id, "removing its bundle: {err}");
        }
        lock(&self.table).remove(id);
        tracing::info!(container = %id, "removed");
        Ok(())
    }

    /// Removes every container (DestroySandbox); the first failure is returned after all
    /// were tried.
    pub async fn remove_all(&self) -> Result<(), Failure> {
        // A create in flight (its entry reserved) is let finish first, so that its container
        // is removed too rather than left with its cgroup and processes (the fault matrix's
        // "shim killed while creating" with `none`: the dying shim's SIGTERM came mid-create).
        let deadline = std::time::Instant::now() + CREATE_SETTLE;
        while lock(&self.table).values().any(Option::is_none)
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ids: Vec<String> = lock(&self.table)
            .iter()
            .filter(|(_, c)| c.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        let mut first = None;
        for id in ids {
            if let Err(err) = self.remove(&id, None).await {
                tracing::error!(container = %id, "removing: {err}");
                first.get_or_insert(err);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// GetOOMEvent: waits until the OOM kill count of a container's cgroup grows.
    pub async fn next_oom(&self) -> String {
        loop {
            let containers: Vec<Arc<Container>> =
                lock(&self.table).values().flatten().cloned().collect();
            if let Some(id) = lock(&self.oom_removed).pop_front() {
                return id;
            }
            for container in containers {
                if container.take_oom_kill() {
                    return container.id.clone();
                }
            }
            tokio::time::sleep(OOM_POLL_INTERVAL).await;
        }
    }
}

/// How long [`Containers::remove_all`] lets creates in flight finish.
const CREATE_SETTLE: Duration = Duration::from_secs(2);

/// Whether `/` is the kernel's initramfs (ramfs, or tmpfs with `rootfstype`), where
/// pivot_root(2) answers EINVAL: a hull guest runs the agent from its initrd.
pub fn root_is_initramfs() -> bool {
    use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
    // <linux/magic.h>; nix names TMPFS_MAGIC but not this one.
    const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
    statfs("/").is_ok_and(|fs| {
        let kind = fs.filesystem_type();
        kind == RAMFS_MAGIC || kind == TMPFS_MAGIC
    })
}

fn stdio_failure(err: stdio::Error) -> Failure {
    match err {
        stdio::Error::StdinClosed | stdio::Error::NoTerminal => {
            Failure::FailedPrecondition(err.to_string())
        }
        stdio::Error::Io { .. } => Failure::Internal(format!("{:#}", anyhow::Error::new(err))),
    }
}

fn no_stdio() -> Result<ProcessEnds, Failure> {
    let null = |_| -> Result<OwnedFd, Failure> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|err| internal("opening /dev/null")(err.to_string()))
    };
    Ok(ProcessEnds::Pipes(null(0)?, null(1)?, null(2)?))
}

/// Runs blocking cgroup file work off the event loop.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| Failure::Internal(format!("a blocking task failed: {err}")))
}

/// Sets the spec's `linux.cgroupsPath` to `/hull/<id>` when it has none or has a
/// systemd-style one ("slice:prefix:name", which only a systemd could place; the guest has
/// none), and returns it. Other relative paths, and paths with "..", are refused.
fn cgroups_path(spec: &mut serde_json::Value, id: &str) -> Result<PathBuf, Failure> {
    let Some(object) = spec.as_object_mut() else {
        return Err(Failure::InvalidArgument(
            "oci_spec_json is not an object".into(),
        ));
    };
    let linux = object
        .entry("linux")
        .or_insert_with(|| serde_json::json!({}));
    let Some(linux) = linux.as_object_mut() else {
        return Err(Failure::InvalidArgument(
            "oci_spec_json: linux is not an object".into(),
        ));
    };
    let path = match linux.get("cgroupsPath") {
        None | Some(serde_json::Value::Null) => format!("/hull/{id}"),
        Some(serde_json::Value::String(path))
            if !path.starts_with('/') && path.matches(':').count() == 2 =>
        {
            tracing::info!(container = %id, systemd_path = %path, "using the cgroup /hull/<id>");
            format!("/hull/{id}")
        }
        Some(serde_json::Value::String(path)) => path.clone(),
        Some(_) => {
            return Err(Failure::InvalidArgument(
                "oci_spec_json: linux.cgroupsPath is not a string".into(),
            ))
        }
    };
    let clean = Path::new(&path).is_absolute()
        && Path::new(&path)
            .components()
            .all(|c| !matches!(c, std::path::Component::ParentDir));
    if !clean {
        return Err(Failure::InvalidArgument(format!(
            "oci_spec_json: linux.cgroupsPath {path:?} is not an absolute path without '..'"
        )));
    }
    linux.insert(
        "cgroupsPath".into(),
        serde_json::Value::String(path.clone()),
    );
    Ok(PathBuf::from(path))
}

/// Accepts the runtime's connection on the console socket and receives the pty master it
/// sends (SCM_RIGHTS). The helper has exited successfully, so both are already queued.
fn receive_pty(listener: &UnixListener) -> Result<OwnedFd, String> {
    listener
        .set_nonblocking(true)
        .map_err(|err| err.to_string())?;
    let (stream, _) = listener
        .accept()
        .map_err(|err| format!("the runtime did not connect to the console socket: {err}"))?;
    stream
        .set_nonblocking(true)
        .map_err(|err| err.to_string())?;
    let mut name = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let message = nix::sys::socket::recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|err| format!("receiving the pty: {err}"))?;
    let mut fds = Vec::new();
    for cmsg in message.cmsgs().map_err(|err| err.to_string())? {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(received) = cmsg {
            fds.extend(received);
        }
    }
    let mut owned: Vec<OwnedFd> = fds
        .into_iter()
        // SAFETY: each descriptor was just received with SCM_RIGHTS and is owned by nobody.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if owned.is_empty() {
        return Err("the console socket carried no descriptor".into());
    }
    Ok(owned.swap_remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroups_path_defaults_and_refuses_escapes() {
        let mut spec = serde_json::json!({"ociVersion": "1.1.0"});
        assert_eq!(
            cgroups_path(&mut spec, "c1").ok(),
            Some(PathBuf::from("/hull/c1"))
        );
        assert_eq!(spec["linux"]["cgroupsPath"], "/hull/c1");
        let mut systemd = serde_json::json!({"linux": {"cgroupsPath": "pod.slice:cri:c1"}});
        assert_eq!(
            cgroups_path(&mut systemd, "c1").ok(),
            Some(PathBuf::from("/hull/c1"))
        );
        let mut given = serde_json::json!({"linux": {"cgroupsPath": "/default/c1"}});
        assert_eq!(
            cgroups_path(&mut given, "c1").ok(),
            Some(PathBuf::from("/default/c1"))
        );
        for bad in ["/a/../../b", "relative", "a:b"] {
            let mut spec = serde_json::json!({"linux": {"cgroupsPath": bad}});
            assert!(
                matches!(
                    cgroups_path(&mut spec, "c1"),
                    Err(Failure::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
    }
}
