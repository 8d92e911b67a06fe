//! Processes that do not outlive the shim that started them: QEMU, hull-vmm, the device
//! backends and the host agent of `none` get a parent-death signal (`PR_SET_PDEATHSIG`).
//!
//! A shim SIGKILLed while it creates a sandbox cannot rely on `shim delete` to end what it
//! started: containerd removes the bundle (which holds the sandbox's record) when the
//! Create fails, racing the `shim delete` it runs for the dead shim, so the record may be
//! gone (the fault matrix's "shim killed while creating" found QEMU, hull-vsock and hull-fs
//! left running). The kernel's parent-death signal needs no record.
//!
//! The signal is sent when the *thread* that forked the child exits. The shim forks from its
//! one event-loop thread (a current-thread runtime on the main thread, see the binary),
//! which lives as long as the shim; never spawn these from `spawn_blocking`, whose threads
//! come and go.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes `command`'s process receive `signal` when the shim (the forking thread) dies. If
/// the shim died between the fork and the setting, the child fails to start instead of
/// running unowned. Takes std's command: tokio's gives it with `as_std_mut`.
pub fn die_with_parent(command: &mut Command, signal: libc::c_int) {
    // SAFETY: getpid(2) has no preconditions.
    let parent = unsafe { libc::getpid() };
    let signal = libc::c_ulong::try_from(signal).unwrap_or(libc::SIGKILL as libc::c_ulong);
    // SAFETY: the closure runs in the child between fork and exec and only makes the
    // async-signal-safe syscalls prctl(2) and getppid(2), touching no memory of the parent.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(std::io::Error::other(
                    "the shim exited while starting its child",
                ));
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    /// The signal follows the death of the forking thread: a thread that spawns a child and
    /// ends stands for a shim that dies.
    #[test]
    fn a_child_gets_its_signal_when_its_parent_thread_dies() {
        let pid = std::thread::spawn(|| {
            let mut command = Command::new("sleep");
            command.arg("1000");
            die_with_parent(&mut command, libc::SIGTERM);
            command.spawn().expect("sleep starts").id()
        })
        .join()
        .expect("the spawning thread");
        let pid = libc::pid_t::try_from(pid).expect("a pid");
        let mut status = 0;
        // SAFETY: waitpid(2) on our own child, writing one int we own.
        let reaped = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(reaped, pid);
        let status = std::process::ExitStatus::from_raw(status);
        assert_eq!(status.signal(), Some(libc::SIGTERM), "{status}");
    }
}
