//! The agent's one reaper: it owns every wait(2) of the agent's children, so each child is
//! reaped exactly once and the exit status of a process the container service started is
//! never lost.
//!
//! As PID 1 every orphan of the guest is re-parented to the agent; on a host the agent makes
//! itself a child subreaper, so a container's init and exec processes (whose parent, the
//! container helper, exits right after creating them) come to it the same way. Each SIGCHLD
//! wakes [`Reaper::run`], which sweeps:
//! 1. every *registered* PID (a process the container service owns) is waited for by its PID
//!    (`waitpid(pid, WNOHANG)`), and its status goes to its [`ExitWatch`];
//! 2. then, only if nobody holds the reaper off ([`Reaper::hold`]), every other exited child
//!    is reaped with `waitpid(-1, WNOHANG)` and its status dropped (an orphan).
//!
//! The hold is what makes step 2 safe. Code that forks a child and waits for it itself (the
//! container helper, which runs youki's libcontainer and must wait for its own intermediate
//! process; a hook run by libcontainer; std's `Command::spawn`, which reaps a child whose exec
//! failed) takes a [`Hold`] first and registers the PIDs it hands over before dropping it, so
//! a `waitpid(-1)` can never take a status someone else is about to collect. This is Kata's
//! "one lock around fork and reap" without blocking the event loop: while a hold is taken,
//! registered processes are still reaped at once; only orphans wait for the hold to end.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Notify};

/// How a process ended, as WaitProcess reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// The status containerd reports: the exit code, or 128 + the signal that killed it.
    pub status: u32,
    /// The exit code if it exited, 0 if a signal killed it.
    pub code: u32,
    /// The signal that killed it, 0 if it exited.
    pub signal: u32,
    /// Whether it dumped core.
    pub core_dumped: bool,
}

impl ExitStatus {
    /// The status of an exit with `code`.
    pub fn exited(code: i32) -> Self {
        let code = u32::try_from(code & 0xff).unwrap_or(0);
        ExitStatus {
            status: code,
            code,
            signal: 0,
            core_dumped: false,
        }
    }

    /// The status of a death by signal number `signal`.
    pub fn signaled(signal: i32, core_dumped: bool) -> Self {
        let signal = u32::try_from(signal).unwrap_or(0);
        ExitStatus {
            status: 128 + signal,
            code: 0,
            signal,
            core_dumped,
        }
    }

    /// The status of `wait`, if it is an end (not a stop or a continue).
    pub fn from_wait(wait: WaitStatus) -> Option<Self> {
        match wait {
            WaitStatus::Exited(_, code) => Some(Self::exited(code)),
            WaitStatus::Signaled(_, signal, core) => Some(Self::signaled(signal as i32, core)),
            _ => None,
        }
    }
}

/// Receives the exit status of one registered process: `None` until it has exited.
pub type ExitWatch = watch::Receiver<Option<ExitStatus>>;

/// The reaper's shared state; see the module documentation.
#[derive(Debug, Default)]
pub struct Reaper {
    inner: Mutex<Inner>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    waiters: HashMap<i32, watch::Sender<Option<ExitStatus>>>,
    holds: usize,
}

/// While alive, the reaper reaps only registered PIDs. Dropping the last hold wakes it.
#[derive(Debug)]
pub struct Hold {
    reaper: Arc<Reaper>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let last = {
            let mut inner = self.reaper.lock();
            inner.holds = inner.holds.saturating_sub(1);
            inner.holds == 0
        };
        if last {
            self.reaper.wake.notify_one();
        }
    }
}

impl Reaper {
    /// A reaper with nothing registered.
    pub fn new() -> Arc<Self> {
        Arc::new(Reaper::default())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the map half-updated in a way that
        // matters (each operation is one insert or remove), so a poisoned lock is used as is.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps `waitpid(-1)` off until the returned hold is dropped; take it before forking a
    /// child that someone other than the reaper waits for.
    pub fn hold(self: &Arc<Self>) -> Hold {
        self.lock().holds += 1;
        Hold {
            reaper: Arc::clone(self),
        }
    }

    /// Registers `pid`, a child of the agent (or one re-parented to it), whose exit status is
    /// wanted. Call it while a [`Hold`] is taken, or before the child can have exited.
    pub fn register(&self, pid: Pid) -> ExitWatch {
        let (sender, receiver) = watch::channel(None);
        self.lock().waiters.insert(pid.as_raw(), sender);
        // Its status may already be waiting: let the next sweep look.
        self.wake.notify_one();
        receiver
    }

    /// Reaps what has exited: registered PIDs always, others when no hold is taken.
    pub fn sweep(&self) {
        let mut inner = self.lock();
        let mut ended = Vec::new();
        for &pid in inner.waiters.keys() {
            match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(status) => {
                    if let Some(exit) = ExitStatus::from_wait(status) {
                        ended.push((pid, exit));
                    }
                }
                Err(Errno::EINTR) => {}
                Err(err) => {
                    // Only this reaper waits for registered PIDs, so ECHILD means the PID was
                    // never our child: a bug. Report it as a failure rather than hang.
                    tracing::error!(pid, "waitpid of a registered process failed: {err}");
                    ended.push((pid, ExitStatus::exited(255)));
                }
            }
        }
        for (pid, exit) in ended {
            if let Some(sender) = inner.waiters.remove(&pid) {
                tracing::debug!(pid, ?exit, "process exited");
                sender.send_replace(Some(exit));
            }
        }
        if inner.holds > 0 {
            return;
        }
        for status in reap_exited() {
            let Some(pid) = status.pid() else { continue };
            match (
                inner.waiters.remove(&pid.as_raw()),
                ExitStatus::from_wait(status),
            ) {
                (Some(sender), Some(exit)) => {
                    sender.send_replace(Some(exit));
                }
                _ => tracing::debug!(?status, "reaped an orphan"),
            }
        }
    }

    /// Sweeps on every SIGCHLD and whenever a hold ends, for as long as the runtime runs.
    /// The handler is installed before the first sweep, so nothing that exited before it is
    /// missed.
    pub async fn run(self: Arc<Self>) -> io::Result<()> {
        let mut sigchld = signal(SignalKind::child())?;
        loop {
            self.sweep();
            tokio::select! {
                received = sigchld.recv() => if received.is_none() { return Ok(()) },
                () = self.wake.notified() => {}
            }
        }
    }
}

/// Collects every child that has exited, without blocking, and returns their statuses.
pub fn reap_exited() -> Vec<WaitStatus> {
    let mut reaped = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return reaped,
            Ok(status) => reaped.push(status),
            Err(Errno::EINTR) => {}
            Err(err) => {
                tracing::warn!("waitpid failed while reaping: {err}");
                return reaped;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fork_exiting(code: i32) -> Pid {
        // SAFETY: the child only calls _exit, which is async-signal-safe, so forking a
        // process that may have other threads is sound.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                // SAFETY: _exit ends the child at once, running no destructors.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => child,
        }
    }

    // One test only: the two properties share the process's children, so they must not run
    // in parallel threads of this test binary.
    #[test]
    fn routes_registered_statuses_and_leaves_held_children_alone() {
        // Unregistered children are reaped by waitpid(-1).
        let orphans: Vec<_> = [0, 3, 7].map(|code| (fork_exiting(code), code)).into();
        let mut statuses = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while statuses.len() < orphans.len() && std::time::Instant::now() < deadline {
            statuses.extend(reap_exited());
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        for (pid, code) in orphans {
            assert!(
                statuses.contains(&WaitStatus::Exited(pid, code)),
                "child {pid} exiting with {code} was not reaped: {statuses:?}"
            );
        }

        // With a hold, an unregistered child is left for whoever forked it, and a registered
        // one still gets its status.
        let reaper = Reaper::new();
        let hold = reaper.hold();
        let mine = fork_exiting(9);
        let registered = fork_exiting(4);
        let watch = reaper.register(registered);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while watch.borrow().is_none() && std::time::Instant::now() < deadline {
            reaper.sweep();
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(*watch.borrow(), Some(ExitStatus::exited(4)));
        assert_eq!(
            waitpid(mine, None).expect("the held child is still ours to wait"),
            WaitStatus::Exited(mine, 9)
        );
        drop(hold);
        reaper.sweep();
        assert!(reap_exited().is_empty(), "nothing is left to reap");
    }

    #[test]
    fn exit_statuses_follow_containerd() {
        assert_eq!(ExitStatus::exited(7).status, 7);
        let killed = ExitStatus::signaled(libc::SIGKILL, false);
        assert_eq!((killed.status, killed.code, killed.signal), (137, 0, 9));
        assert_eq!(ExitStatus::signaled(libc::SIGTERM, false).status, 143);
    }
}
