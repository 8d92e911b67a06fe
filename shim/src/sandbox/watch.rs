//! Watching a sandbox's host processes (QEMU, each device backend, or the `none`
//! hypervisor's agent) for an unexpected death: one pidfd per process, polled on the shim's
//! event loop (a pidfd turns readable when its process exits), so a VM or backend that dies
//! is noticed at once, not at the next health check or never. A VM run by the shim's own
//! process (the built-in VMM in the shim, [`crate::vmm::in_process`]) has no pid: its watch
//! polls the VM's stop eventfd instead, and its "death" is the VM's stop, with its reason
//! ([`Ending::Stopped`]), seen as a VMM process's exit is.
//!
//! A watch never reaps: the process's owner ([`crate::qemu::QemuVm`],
//! [`crate::backend::BackendProcess`]) still does, and gets the same status. The exit status
//! is read with `waitid(P_PIDFD, .., WNOWAIT)`, which leaves the zombie for its owner. The
//! pidfd also names the process safely for [`ProcessWatch::kill`]: it can never hit a process
//! that reused the pid.

use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Errors of a watch.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pidfd could not be opened or registered with the event loop.
    #[error("watching {role} (pid {pid})")]
    Open {
        /// What the process is.
        role: &'static str,
        /// Its pid.
        pid: u32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A VM's stop eventfd could not be registered with the event loop.
    #[error("watching {role} in the shim")]
    Vm {
        /// What the VM is.
        role: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it (or it dumped core on it).
    Killed(i32),
    /// It ended, but its status could not be read.
    Unknown,
    /// A VM in the shim's process stopped, for this reason.
    Stopped(String),
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::Exited(code) => write!(f, "exited with status {code}"),
            Ending::Killed(signal) => match signal_name(*signal) {
                Some(name) => write!(f, "was killed by signal {signal} ({name})"),
                None => write!(f, "was killed by signal {signal}"),
            },
            Ending::Unknown => write!(f, "exited"),
            Ending::Stopped(reason) => write!(f, "stopped: {reason}"),
        }
    }
}

impl From<std::process::ExitStatus> for Ending {
    fn from(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Ending::Exited(code),
            (None, Some(signal)) => Ending::Killed(signal),
            (None, None) => Ending::Unknown,
        }
    }
}

/// The names of the signals that end processes in practice; others are shown by number.
fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}

/// A watched process that ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    /// What it was (`qemu`, `hull-vsock`, `hull-fs`, `hull-agent`).
    pub role: &'static str,
    /// Its pid; `None` for a VM in the shim's own process.
    pub pid: Option<u32>,
    /// How it ended.
    pub ending: Ending,
}

impl fmt::Display for Death {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "{} (pid {pid}) {}", self.role, self.ending),
            None => write!(f, "{} in the shim {}", self.role, self.ending),
        }
    }
}

/// What the watch of a VM in the shim's own process asks of it.
pub trait VmStatus: Send + Sync + fmt::Debug {
    /// Why the VM stopped, once it has.
    fn stop_reason(&self) -> Option<String>;
    /// Asks it to stop (its vCPUs are joined by its owner).
    fn stop(&self);
}

/// What a watch polls.
#[derive(Debug)]
enum Watched {
    /// A child process's pidfd.
    Process(AsyncFd<OwnedFd>),
    /// A VM's stop eventfd (readable once it stopped), and the VM.
    Vm(AsyncFd<OwnedFd>, Arc<dyn VmStatus>),
}

/// One watched child process of the shim, or a VM in its own process.
#[derive(Debug)]
pub struct ProcessWatch {
    role: &'static str,
    pid: Option<u32>,
    watched: Watched,
}

impl ProcessWatch {
    /// Watches the shim's child `pid`, which must not have been reaped yet (a process that
    /// already exited is reported at once).
    pub fn open(role: &'static str, pid: u32) -> Result<Self, Error> {
        let error = |source| Error::Open { role, pid, source };
        let raw_pid = libc::pid_t::try_from(pid)
            .map_err(|_| error(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1; no
        // memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw_pid, 0) };
        if fd < 0 {
            return Err(error(std::io::Error::last_os_error()));
        }
        let fd = RawFd::try_from(fd)
            .map_err(|_| error(std::io::Error::from(std::io::ErrorKind::InvalidData)))?;
        // SAFETY: pidfd_open just returned this descriptor; nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: `owned` is the open pidfd just made, owned by the AsyncFd from here on, and
        // its as_raw_fd always answers that descriptor.
        let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
            .map_err(|e| error(e.into()))?;
        Ok(Self {
            role,
            pid: Some(pid),
            watched: Watched::Process(fd),
        })
    }

    /// Watches a VM run by the shim's own process: `stopped` turns readable when it stops
    /// (and stays so), `vm` says why and stops it.
    pub fn vm(role: &'static str, stopped: OwnedFd, vm: Arc<dyn VmStatus>) -> Result<Self, Error> {
        // SAFETY: `stopped` is an open descriptor owned by the AsyncFd from here on, and its
        // as_raw_fd always answers that descriptor.
        let fd = unsafe { AsyncFd::register_with_interest(stopped, Interest::READABLE) }.map_err(
            |err| Error::Vm {
                role,
                source: err.into(),
            },
        )?;
        Ok(Self {
            role,
            pid: None,
            watched: Watched::Vm(fd, vm),
        })
    }

    /// What the process is.
    pub fn role(&self) -> &'static str {
        self.role
    }

    /// Its pid; `None` for a VM in the shim's own process.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    fn fd(&self) -> &AsyncFd<OwnedFd> {
        match &self.watched {
            Watched::Process(fd) | Watched::Vm(fd, _) => fd,
        }
    }

    /// Waits until the process exits, and says how. Cancel-safe. Never returns if the event
    /// loop cannot poll the pidfd (logged): a watch must not invent a death.
    pub async fn exited(&self) -> Death {
        if let Err(err) = self.fd().readable().await {
            tracing::warn!(role = self.role, pid = self.pid, %err, "polling a pidfd; this process is no longer watched");
            std::future::pending::<()>().await;
        }
        Death {
            role: self.role,
            pid: self.pid,
            ending: self.ending().unwrap_or(Ending::Unknown),
        }
    }

    /// The process's death, if it has exited by now.
    fn death_now(&self) -> Option<Death> {
        Some(Death {
            role: self.role,
            pid: self.pid,
            ending: self.ending()?,
        })
    }

    /// How the process ended, read without reaping it; `None` while it runs. A status that
    /// cannot be read is [`Ending::Unknown`].
    fn ending(&self) -> Option<Ending> {
        let fd = match &self.watched {
            Watched::Process(fd) => fd,
            Watched::Vm(_, vm) => return vm.stop_reason().map(Ending::Stopped),
        };
        // SAFETY: siginfo_t is plain data for which all zeroes is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let Ok(id) = libc::id_t::try_from(fd.get_ref().as_raw_fd()) else {
            return Some(Ending::Unknown);
        };
        // SAFETY: waitid(2) writes one siginfo_t to the valid, exclusively borrowed `info`;
        // WNOWAIT leaves the child for its owner to reap.
        let rc = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                id,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
            )
        };
        // SAFETY: the kernel filled a SIGCHLD siginfo (or left zeroes, where si_pid is 0).
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if rc != 0 {
            return Some(Ending::Unknown);
        }
        if pid == 0 {
            return None;
        }
        Some(match info.si_code {
            libc::CLD_EXITED => Ending::Exited(status),
            libc::CLD_KILLED | libc::CLD_DUMPED => Ending::Killed(status),
            _ => Ending::Unknown,
        })
    }

    /// Sends `signal` to the process, unless it has been reaped (then nothing happens). A
    /// VM in the shim's process is asked to stop, whatever the signal.
    pub fn kill(&self, signal: i32) {
        let fd = match &self.watched {
            Watched::Process(fd) => fd,
            Watched::Vm(_, vm) => return vm.stop(),
        };
        // SAFETY: pidfd_send_signal(2) with our pidfd, a signal number, no siginfo and no
        // flags; the pidfd keeps naming this process, never one that reused its pid.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.get_ref().as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                tracing::warn!(role = self.role, pid = self.pid, %err, "signalling a sandbox process");
            }
        }
    }
}

/// The role of the VMM process among a sandbox's watched processes; the others (device
/// backends) depend on it.
pub const VMM_ROLE: &str = "qemu";
/// [`VMM_ROLE`] when the VMM is hull-vmm (`hypervisor = "builtin"`).
pub const BUILTIN_VMM_ROLE: &str = "hull-vmm";

/// Whether `role` is the VMM's (QEMU or hull-vmm).
pub fn is_vmm_role(role: &str) -> bool {
    role == VMM_ROLE || role == BUILTIN_VMM_ROLE
}

/// How long a backend's clean exit waits for the VMM's own exit before it is named the cause
/// of a loss (see [`loss`]).
pub const VMM_GRACE: Duration = Duration::from_secs(2);

/// Waits for the first of `watches` to die, and answers it with every other one that is dead
/// by then (QEMU and its backends often go together, and the order in which the loop sees
/// them says nothing about which went first). Never returns if there are none.
pub async fn deaths(watches: &[ProcessWatch]) -> Vec<Death> {
    if watches.is_empty() {
        return std::future::pending().await;
    }
    let (first, index, _) =
        futures_util::future::select_all(watches.iter().map(|w| Box::pin(w.exited()))).await;
    let mut all = vec![first];
    all.extend(
        watches
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != index)
            .filter_map(|(_, w)| w.death_now()),
    );
    all
}

/// Why a sandbox was lost: the death that caused it, and the others seen with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    /// The process whose death lost the sandbox.
    pub cause: Death,
    /// The other processes seen dead with it, in the order they were seen.
    pub also: Vec<Death>,
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cause)?;
        if !self.also.is_empty() {
            let also: Vec<String> = self.also.iter().map(ToString::to_string).collect();
            write!(f, " (and with it: {})", also.join(", "))?;
        }
        Ok(())
    }
}

/// Waits for the first of `watches` to die and answers which death lost the sandbox. Never
/// returns if there are none.
///
/// When QEMU is killed, the kernel closes its sockets before its exit can be waited for, so
/// its vhost-user backends may see their frontend go and exit cleanly first. So a backend's
/// clean exit, seen while the VMM still runs, waits up to `grace` (on the event loop) for the
/// VMM's own exit before the decision ([`blame`]) is made. A backend killed by a signal or
/// failing (nonzero status) is the cause at once.
pub async fn loss(watches: &[ProcessWatch], grace: Duration) -> Loss {
    let first = deaths(watches).await;
    let mut later = Vec::new();
    let vmm = watches.iter().find(|w| is_vmm_role(w.role));
    if let Some(vmm) = vmm {
        if waits_for_vmm(&first) {
            if tokio::time::timeout(grace, vmm.exited()).await.is_err() {
                tracing::debug!(
                    "a device backend exited and the VMM still runs after {grace:?}: the backend is the cause"
                );
            }
            later.extend(
                watches
                    .iter()
                    .filter(|w| !first.iter().any(|d| d.pid == w.pid && d.role == w.role))
                    .filter_map(ProcessWatch::death_now),
            );
        }
    }
    match blame(first, later) {
        Some(loss) => loss,
        // `deaths` answers at least one death.
        None => std::future::pending().await,
    }
}

/// Whether the first deaths seen leave the cause open until the VMM's exit is known: the VMM
/// is not among them, and each of them may be a backend's clean exit after its frontend went.
fn waits_for_vmm(first: &[Death]) -> bool {
    !first.iter().any(|d| is_vmm_role(d.role)) && !first.iter().any(Death::failed)
}

impl Death {
    /// Whether the process was killed by a signal or exited with a nonzero status, which a
    /// device backend does not do when its frontend (the VMM) merely goes away.
    fn failed(&self) -> bool {
        match self.ending {
            Ending::Killed(_) => true,
            Ending::Exited(code) => code != 0,
            Ending::Unknown | Ending::Stopped(_) => false,
        }
    }
}

/// Decides which death lost a sandbox, from the deaths seen at the first wake-up (`first`, in
/// the order seen) and those seen after waiting for the VMM (`later`); `None` if there are
/// none. In this order:
/// 1. a backend killed by a signal (a VMM's death never kills its backends);
/// 2. a backend that failed (nonzero status) seen while the VMM still ran (the VMM is not in
///    the same batch);
/// 3. the VMM, if it died;
/// 4. otherwise the first death seen (a backend's clean exit while the VMM runs on).
pub fn blame(first: Vec<Death>, later: Vec<Death>) -> Option<Loss> {
    let is_vmm = |d: &Death| is_vmm_role(d.role);
    let vmm_alive_first = !first.iter().any(is_vmm);
    let vmm_alive_later = !later.iter().any(is_vmm);
    let first_len = first.len();
    let mut seen = first;
    seen.extend(later);
    let killed = seen
        .iter()
        .position(|d| !is_vmm(d) && matches!(d.ending, Ending::Killed(_)));
    let failed = (0..seen.len()).find(|&i| {
        let d = &seen[i];
        let vmm_alive = if i < first_len {
            vmm_alive_first
        } else {
            vmm_alive_later
        };
        vmm_alive && !is_vmm(d) && d.failed()
    });
    let vmm = seen.iter().position(is_vmm);
    let index = killed.or(failed).or(vmm).unwrap_or(0);
    if index >= seen.len() {
        return None;
    }
    let cause = seen.remove(index);
    Some(Loss { cause, also: seen })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn spawn(args: &[&str]) -> tokio::process::Child {
        tokio::process::Command::new(args[0])
            .args(&args[1..])
            .stdin(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    #[tokio::test]
    async fn a_killed_process_is_reported_with_its_signal_and_left_for_its_owner() {
        let mut child = spawn(&["sleep", "100"]);
        let pid = child.id().unwrap();
        let watch = ProcessWatch::open("qemu", pid).unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), watch.exited())
                .await
                .is_err(),
            "a running process is not dead"
        );
        watch.kill(libc::SIGKILL);
        let death = watch.exited().await;
        assert_eq!(death.ending, Ending::Killed(libc::SIGKILL));
        assert_eq!(
            death.to_string(),
            format!("qemu (pid {pid}) was killed by signal 9 (SIGKILL)")
        );
        // The owner still reaps it, with the same status.
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().await.unwrap().signal(), Some(libc::SIGKILL));
    }

    #[tokio::test]
    async fn a_death_names_that_process_and_its_exit_status_and_no_living_one() {
        let long = spawn(&["sleep", "100"]);
        let mut short = spawn(&["sh", "-c", "exit 3"]);
        let long_pid = long.id().unwrap();
        let short_pid = short.id().unwrap();
        let watches = [
            ProcessWatch::open("hull-vsock", long_pid).unwrap(),
            ProcessWatch::open("hull-fs", short_pid).unwrap(),
        ];
        let found = deaths(&watches).await;
        assert_eq!(
            found,
            [Death {
                role: "hull-fs",
                pid: Some(short_pid),
                ending: Ending::Exited(3)
            }]
        );
        // Once the other dies too, both are named, however the loop orders them.
        watches[0].kill(libc::SIGKILL);
        watches[0].exited().await;
        let mut found = deaths(&watches).await;
        found.sort_by_key(|d| d.role);
        assert_eq!(
            found.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                format!("hull-fs (pid {short_pid}) exited with status 3"),
                format!("hull-vsock (pid {long_pid}) was killed by signal 9 (SIGKILL)"),
            ]
        );
        assert_eq!(short.wait().await.unwrap().code(), Some(3));
    }

    #[tokio::test]
    async fn nothing_to_watch_is_never_a_death() {
        assert!(tokio::time::timeout(Duration::from_millis(20), deaths(&[]))
            .await
            .is_err());
    }

    fn death(role: &'static str, pid: u32, ending: Ending) -> Death {
        Death {
            role,
            pid: Some(pid),
            ending,
        }
    }

    const QEMU_KILLED: Ending = Ending::Killed(libc::SIGKILL);

    #[test]
    fn a_killed_vmm_seen_after_its_backends_clean_exits_is_the_cause() {
        let vsock = death("hull-vsock", 10, Ending::Exited(0));
        let fs = death("hull-fs", 11, Ending::Exited(0));
        let qemu = death("qemu", 12, QEMU_KILLED);
        // Seen after the wait, or in the first batch after the backends: QEMU either way.
        for (first, later) in [
            (vec![vsock.clone(), fs.clone()], vec![qemu.clone()]),
            (vec![vsock.clone(), qemu.clone(), fs.clone()], vec![]),
            (vec![fs.clone()], vec![vsock.clone(), qemu.clone()]),
        ] {
            let loss = blame(first, later).unwrap();
            assert_eq!(loss.cause, qemu);
            assert_eq!(loss.also.len(), 2);
        }
        let loss = blame(vec![vsock.clone(), fs.clone()], vec![qemu]).unwrap();
        assert_eq!(
            loss.to_string(),
            "qemu (pid 12) was killed by signal 9 (SIGKILL) (and with it: hull-vsock (pid 10) \
             exited with status 0, hull-fs (pid 11) exited with status 0)"
        );
    }

    #[test]
    fn a_killed_hull_vmm_is_the_vmm_and_named_as_itself() {
        let vsock = death("hull-vsock", 10, Ending::Exited(0));
        let vmm = death(BUILTIN_VMM_ROLE, 12, QEMU_KILLED);
        // A backend's clean exit seen first is not the cause: hull-vmm is, as QEMU would be.
        assert!(!waits_for_vmm(std::slice::from_ref(&vmm)));
        assert!(waits_for_vmm(std::slice::from_ref(&vsock)));
        let loss = blame(vec![vsock], vec![vmm]).unwrap();
        assert_eq!(
            loss.to_string(),
            "hull-vmm (pid 12) was killed by signal 9 (SIGKILL) (and with it: hull-vsock \
             (pid 10) exited with status 0)"
        );
    }

    #[test]
    fn a_backend_killed_by_a_signal_stays_the_cause_even_if_the_vmm_follows() {
        let fs = death("hull-fs", 11, QEMU_KILLED);
        let vsock = death("hull-vsock", 10, Ending::Exited(0));
        let qemu = death("qemu", 12, Ending::Exited(1));
        for (first, later) in [
            (vec![fs.clone()], vec![]),
            (vec![fs.clone()], vec![vsock.clone(), qemu.clone()]),
            (vec![qemu.clone(), vsock.clone(), fs.clone()], vec![]),
        ] {
            assert_eq!(blame(first, later).unwrap().cause, fs);
        }
    }

    #[test]
    fn a_failed_backend_is_the_cause_only_if_the_vmm_still_ran() {
        let fs = death("hull-fs", 11, Ending::Exited(1));
        let qemu = death("qemu", 12, QEMU_KILLED);
        // Seen while QEMU ran: the backend, whatever QEMU did after.
        assert_eq!(blame(vec![fs.clone()], vec![]).unwrap().cause, fs);
        assert_eq!(
            blame(vec![fs.clone()], vec![qemu.clone()]).unwrap().cause,
            fs
        );
        // Seen together with QEMU's death: QEMU.
        assert_eq!(
            blame(vec![fs.clone(), qemu.clone()], vec![]).unwrap().cause,
            qemu
        );
    }

    #[test]
    fn a_clean_backend_exit_while_the_vmm_runs_on_is_the_cause() {
        let vsock = death("hull-vsock", 10, Ending::Exited(0));
        let fs = death("hull-fs", 11, Ending::Unknown);
        let loss = blame(vec![vsock.clone()], vec![fs.clone()]).unwrap();
        assert_eq!(
            loss,
            Loss {
                cause: vsock,
                also: vec![fs]
            }
        );
        // The host agent of `none` is its sandbox's only process.
        let agent = death("hull-agent", 13, Ending::Exited(0));
        assert_eq!(blame(vec![agent.clone()], vec![]).unwrap().cause, agent);
        assert_eq!(blame(vec![], vec![]), None);
    }

    #[test]
    fn waiting_for_the_vmm_only_when_every_death_seen_may_follow_from_its_exit() {
        let clean = death("hull-vsock", 10, Ending::Exited(0));
        let unknown = death("hull-fs", 11, Ending::Unknown);
        let failed = death("hull-fs", 11, Ending::Exited(2));
        let killed = death("hull-fs", 11, QEMU_KILLED);
        let qemu = death("qemu", 12, Ending::Exited(0));
        assert!(waits_for_vmm(&[clean.clone(), unknown]));
        assert!(!waits_for_vmm(&[clean.clone(), failed]));
        assert!(!waits_for_vmm(&[killed]));
        assert!(!waits_for_vmm(&[clean, qemu]));
    }

    #[tokio::test]
    async fn a_vmm_killed_after_its_backend_exited_cleanly_is_named_the_cause() {
        let mut qemu = spawn(&["sleep", "100"]);
        let mut backend = spawn(&["cat"]);
        let watches = [
            ProcessWatch::open("hull-vsock", backend.id().unwrap()).unwrap(),
            ProcessWatch::open(VMM_ROLE, qemu.id().unwrap()).unwrap(),
        ];
        let qemu_pid = watches[1].pid();
        // The backend exits cleanly (its stdin closes), and QEMU is killed only once that
        // exit was seen: the order in which the race goes wrong.
        drop(backend.stdin.take());
        let kill_after_backend = async {
            watches[0].exited().await;
            watches[1].kill(libc::SIGKILL);
        };
        let (loss, ()) = tokio::join!(loss(&watches, VMM_GRACE), kill_after_backend);
        assert_eq!(
            loss.cause,
            Death {
                role: VMM_ROLE,
                pid: qemu_pid,
                ending: QEMU_KILLED
            }
        );
        assert_eq!(loss.also.len(), 1);
        assert_eq!(loss.also[0].ending, Ending::Exited(0));
        backend.wait().await.unwrap();
        qemu.wait().await.unwrap();
    }

    #[tokio::test]
    async fn a_backends_clean_exit_is_the_cause_if_the_vmm_runs_on_past_the_grace() {
        let qemu = spawn(&["sleep", "100"]);
        let mut backend = spawn(&["true"]);
        let watches = [
            ProcessWatch::open(VMM_ROLE, qemu.id().unwrap()).unwrap(),
            ProcessWatch::open("hull-fs", backend.id().unwrap()).unwrap(),
        ];
        let loss = loss(&watches, Duration::from_millis(50)).await;
        assert_eq!(loss.cause.role, "hull-fs");
        assert_eq!(loss.cause.ending, Ending::Exited(0));
        assert!(loss.also.is_empty(), "{loss}");
        backend.wait().await.unwrap();
    }

    /// A VM in the shim's process, as the watch sees it.
    #[derive(Debug, Default)]
    struct FakeVm {
        reason: std::sync::Mutex<Option<String>>,
        stops: std::sync::atomic::AtomicUsize,
    }

    impl VmStatus for FakeVm {
        fn stop_reason(&self) -> Option<String> {
            self.reason.lock().unwrap().clone()
        }
        fn stop(&self) {
            self.stops.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_vm_in_the_shim_that_stops_is_a_vmm_death_with_its_reason_and_no_pid() {
        let vm = Arc::new(FakeVm::default());
        let (stopped, stop) = std::os::unix::net::UnixStream::pair().unwrap();
        let watch = ProcessWatch::vm(BUILTIN_VMM_ROLE, stopped.into(), vm.clone()).unwrap();
        assert_eq!(watch.pid(), None);
        let backend = spawn(&["sleep", "100"]);
        let watches = [
            ProcessWatch::open("hull-fs", backend.id().unwrap()).unwrap(),
            watch,
        ];
        assert!(
            tokio::time::timeout(Duration::from_millis(50), deaths(&watches))
                .await
                .is_err(),
            "a running VM is not dead"
        );
        // Losing the sandbox stops the VM, whatever the signal.
        watches[1].kill(libc::SIGKILL);
        assert_eq!(vm.stops.load(std::sync::atomic::Ordering::SeqCst), 1);
        // The VM stops (the reason first, then its descriptor turns readable).
        *vm.reason.lock().unwrap() = Some("vCPU 0 failed: KVM_RUN failed".to_owned());
        use std::io::Write;
        (&stop).write_all(b"x").unwrap();
        let loss = loss(&watches, VMM_GRACE).await;
        assert_eq!(
            loss.cause,
            Death {
                role: BUILTIN_VMM_ROLE,
                pid: None,
                ending: Ending::Stopped("vCPU 0 failed: KVM_RUN failed".to_owned()),
            }
        );
        assert_eq!(
            loss.to_string(),
            "hull-vmm in the shim stopped: vCPU 0 failed: KVM_RUN failed"
        );
        assert!(!waits_for_vmm(std::slice::from_ref(&loss.cause)));
    }

    #[test]
    fn an_impossible_pid_is_an_error_naming_the_process() {
        let err = ProcessWatch::open("hull-fs", u32::MAX).unwrap_err();
        assert!(err.to_string().contains("hull-fs"), "{err}");
    }
}
