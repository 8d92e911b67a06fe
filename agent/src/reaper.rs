//! Reaping as PID 1: every process whose parent died is re-parented to the agent, and its
//! exit must be collected or it stays a zombie. Reaping is driven by SIGCHLD on the agent's
//! event loop; nothing blocks in wait(2).
//!
//! Not owned here yet: handing the exit status of a container's process to its waiter. When
//! the container service lands, it registers the PIDs it started and this module routes their
//! statuses to it instead of dropping them. Anything else that waits for a child itself (a
//! blocking `waitpid(pid)` in a container runtime, `tokio::process`) races with the
//! `waitpid(-1)` here and can lose its child's status: such code must hold the reaper off
//! (Kata's agent serialises both behind one lock) or the reaper must peek first
//! (`waitid(WNOWAIT)`) and leave PIDs it does not own.

use std::io;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};

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

/// Reaps children each time SIGCHLD arrives, for as long as the runtime runs. The handler is
/// installed before the first sweep, so a child that exited before it is reaped too.
pub async fn reap_on_sigchld() -> io::Result<()> {
    let mut sigchld = signal(SignalKind::child())?;
    loop {
        for status in reap_exited() {
            tracing::debug!(?status, "reaped");
        }
        if sigchld.recv().await.is_none() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_the_exit_status_of_every_exited_child() {
        // Fork children that exit with known codes; nothing else in this test binary forks.
        let mut pids = Vec::new();
        for code in [0, 3, 7] {
            // SAFETY: the child only calls _exit, which is async-signal-safe, so forking a
            // process that may have other threads is sound.
            match unsafe { nix::unistd::fork() }.expect("fork") {
                nix::unistd::ForkResult::Child => {
                    // SAFETY: _exit ends the child at once, running no destructors.
                    unsafe { libc::_exit(code) }
                }
                nix::unistd::ForkResult::Parent { child } => pids.push((child, code)),
            }
        }
        let mut statuses = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while statuses.len() < pids.len() && std::time::Instant::now() < deadline {
            statuses.extend(reap_exited());
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        for (pid, code) in pids {
            assert!(
                statuses.contains(&WaitStatus::Exited(pid, code)),
                "child {pid} exiting with {code} was not reaped: {statuses:?}"
            );
        }
        assert!(reap_exited().is_empty(), "nothing is left to reap");
    }
}
