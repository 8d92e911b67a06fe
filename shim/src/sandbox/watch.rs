//! Watching a sandbox's host processes (QEMU, each device backend, or the `none`
//! hypervisor's agent) for an unexpected death: one pidfd per process, polled on the shim's
//! event loop (a pidfd turns readable when its process exits), so a VM or backend that dies
//! is noticed at once, not at the next health check or never.
//!
//! A watch never reaps: the process's owner ([`crate::qemu::QemuVm`],
//! [`crate::backend::BackendProcess`]) still does, and gets the same status. The exit status
//! is read with `waitid(P_PIDFD, .., WNOWAIT)`, which leaves the zombie for its owner. The
//! pidfd also names the process safely for [`ProcessWatch::kill`]: it can never hit a process
//! that reused the pid.

use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

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
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it (or it dumped core on it).
    Killed(i32),
    /// It ended, but its status could not be read.
    Unknown,
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
    /// Its pid.
    pub pid: u32,
    /// How it ended.
    pub ending: Ending,
}

impl fmt::Display for Death {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (pid {}) {}", self.role, self.pid, self.ending)
    }
}

/// One watched child process of the shim.
#[derive(Debug)]
pub struct ProcessWatch {
    role: &'static str,
    pid: u32,
    fd: AsyncFd<OwnedFd>,
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
        Ok(Self { role, pid, fd })
    }

    /// What the process is.
    pub fn role(&self) -> &'static str {
        self.role
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits until the process exits, and says how. Cancel-safe. Never returns if the event
    /// loop cannot poll the pidfd (logged): a watch must not invent a death.
    pub async fn exited(&self) -> Death {
        if let Err(err) = self.fd.readable().await {
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
        // SAFETY: siginfo_t is plain data for which all zeroes is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let Ok(id) = libc::id_t::try_from(self.fd.get_ref().as_raw_fd()) else {
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

    /// Sends `signal` to the process, unless it has been reaped (then nothing happens).
    pub fn kill(&self, signal: i32) {
        // SAFETY: pidfd_send_signal(2) with our pidfd, a signal number, no siginfo and no
        // flags; the pidfd keeps naming this process, never one that reused its pid.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.get_ref().as_raw_fd(),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn spawn(args: &[&str]) -> tokio::process::Child {
        tokio::process::Command::new(args[0])
            .args(&args[1..])
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
                pid: short_pid,
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

    #[test]
    fn an_impossible_pid_is_an_error_naming_the_process() {
        let err = ProcessWatch::open("hull-fs", u32::MAX).unwrap_err();
        assert!(err.to_string().contains("hull-fs"), "{err}");
    }
}
