//! The process the caller starts and signals: it owns the vhost-user socket path and the pid
//! file, forks the worker that confines itself and serves, forwards stop signals to it, and
//! turns its end into an [`Outcome`]. It never touches guest requests, so it needs no
//! sandbox; it exists because upstream's sandbox ends the process that enters it with
//! `exit()` and leaves the socket file behind.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, setpgid, ForkResult, Pid};
use tracing::{error, info, warn};
use vhost::vhost_user::Listener;

use crate::serve::{serve, Shutdown};
use crate::{Config, Error, Result};

/// How long the server gets to stop after the supervisor forwarded a stop signal, before it
/// is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How often a stop signal is repeated while the server has not stopped.
const STOP_REPEAT: Duration = Duration::from_millis(200);

/// Exit status of a worker whose server stopped because of a signal.
const EXIT_SIGNALLED: i32 = 0;
/// Exit status of a worker whose server saw the frontend disconnect.
const EXIT_DISCONNECTED: i32 = 0;
/// Exit status of a worker whose server failed (the error is logged by the worker).
const EXIT_FAILED: i32 = 1;

/// How a hull-fs run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The frontend closed the connection and the server stopped.
    FrontendDisconnected,
    /// The supervisor was asked to stop by `signal` and the server stopped.
    Stopped {
        /// The signal the supervisor received.
        signal: Signal,
    },
    /// The server exited with a failure status; it logged why.
    ServerFailed {
        /// Its exit status.
        status: i32,
    },
    /// The server was killed by a signal it did not handle (SIGSYS: a syscall outside the
    /// seccomp filter; SIGABRT: a thread panicked).
    ServerKilled {
        /// The signal.
        signal: Signal,
    },
}

impl Outcome {
    /// The exit status hull-fs reports for this outcome: 0 for a requested stop or a
    /// disconnect, 1 otherwise.
    pub fn exit_code(self) -> i32 {
        match self {
            Self::FrontendDisconnected | Self::Stopped { .. } => 0,
            Self::ServerFailed { .. } | Self::ServerKilled { .. } => 1,
        }
    }
}

/// Serves `config` until the frontend disconnects or a stop signal (SIGTERM, SIGINT,
/// SIGHUP) arrives. Must be called before the process starts any thread.
pub fn run(config: &Config) -> Result<Outcome> {
    if !config.shared_dir.is_dir() {
        return Err(Error::SharedDir {
            path: config.shared_dir.clone(),
        });
    }
    let threads = fs::read_dir("/proc/self/task")
        .map(Iterator::count)
        .unwrap_or(1);
    if threads > 1 {
        return Err(Error::Threaded { threads });
    }

    // Blocked before anything is created, so that a stop signal from now on is waited for
    // (and cleans up) rather than killing this process.
    let stop_signals = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];
    let mut waited = SigSet::empty();
    for signal in stop_signals.into_iter().chain([Signal::SIGCHLD]) {
        waited.add(signal);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&waited), None).map_err(|source| Error::Sys {
        what: "blocking signals",
        source,
    })?;

    let pid_path = PathBuf::from(format!("{}.pid", config.socket_path.display()));
    let pid_file = virtiofsd::util::write_pid_file(&pid_path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::WouldBlock {
            Error::PidFileLocked {
                path: pid_path.clone(),
            }
        } else {
            Error::PidFile {
                path: pid_path.clone(),
                source,
            }
        }
    })?;
    let socket = match BoundSocket::bind(&config.socket_path) {
        Ok(socket) => socket,
        Err(err) => {
            let _ = fs::remove_file(&pid_path);
            return Err(err);
        }
    };

    // SAFETY: the process is single-threaded (checked above), so the child is a complete
    // copy with no lock held by a thread that does not exist in it.
    let fork = unsafe { fork() }.map_err(|source| Error::Sys {
        what: "fork",
        source,
    })?;
    let worker = match fork {
        ForkResult::Child => worker(config, socket.listener, &waited),
        ForkResult::Parent { child } => child,
    };
    info!(pid = worker.as_raw(), socket = %config.socket_path.display(), "server started");
    // The worker has its copy of the listening socket; closing ours (without unlinking the
    // path, which the worker serves) means a second frontend is refused, not left hanging.
    let socket_path = socket.close();

    let outcome = wait_for_worker(worker, &waited);
    socket_path.remove();
    let _ = fs::remove_file(&pid_path);
    drop(pid_file);
    outcome
}

/// The listening socket and the identity of the file it is bound to.
struct BoundSocket {
    listener: Listener,
    path: SocketPath,
}

/// A socket file this process created, removed only while it is still that file.
struct SocketPath {
    path: PathBuf,
    ino: Option<u64>,
}

impl BoundSocket {
    fn bind(path: &Path) -> Result<Self> {
        let listener = Listener::new(path, true).map_err(|source| Error::Listen {
            path: path.to_owned(),
            source,
        })?;
        let ino = fs::metadata(path).ok().map(|m| m.ino());
        Ok(Self {
            listener,
            path: SocketPath {
                path: path.to_owned(),
                ino,
            },
        })
    }

    fn close(self) -> SocketPath {
        let fd = self.listener.as_raw_fd();
        // `Listener`'s drop unlinks the path, which the worker still serves: close only the
        // descriptor.
        std::mem::forget(self.listener);
        // SAFETY: `fd` was the listener's, which was forgotten above, so nothing else owns it.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        self.path
    }
}

impl SocketPath {
    fn remove(self) {
        let ours = fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && Some(m.ino()) == self.ino);
        if ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The forked worker: its own process group (so the supervisor can signal it and the
/// confined server together), stop signals ignored until the server installs its handlers
/// (the worker itself only waits), dies with the supervisor.
fn worker(config: &Config, listener: Listener, waited: &SigSet) -> ! {
    let code = match prepare_worker(waited).and_then(|()| serve(config, listener)) {
        Ok(Shutdown::FrontendDisconnected) => {
            info!("frontend disconnected, server exiting");
            EXIT_DISCONNECTED
        }
        Ok(Shutdown::Signal(signal)) => {
            info!(signal, "stop signal received, server exiting");
            EXIT_SIGNALLED
        }
        Err(err) => {
            error!("{}", error_chain(&err));
            EXIT_FAILED
        }
    };
    // A forked child never returns into the supervisor's code.
    std::process::exit(code)
}

fn prepare_worker(waited: &SigSet) -> Result<()> {
    let sys = |what| move |source| Error::Sys { what, source };
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and changes nothing else.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(sys("prctl(PR_SET_PDEATHSIG)")(nix::Error::last()));
    }
    setpgid(Pid::from_raw(0), Pid::from_raw(0)).map_err(sys("setpgid"))?;
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: SIG_IGN installs no handler code.
        unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigIgn) }
            .map_err(sys("ignoring stop signals"))?;
    }
    sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(waited), None).map_err(sys("unblocking signals"))
}

/// The whole error chain, one cause after the other.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn wait_for_worker(worker: Pid, waited: &SigSet) -> Result<Outcome> {
    let mut stop: Option<(Signal, Instant)> = None;
    loop {
        match waitpid(worker, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, status)) => {
                return Ok(match (stop, status) {
                    (Some((signal, _)), EXIT_SIGNALLED) => Outcome::Stopped { signal },
                    (None, EXIT_DISCONNECTED) => Outcome::FrontendDisconnected,
                    (_, status) => Outcome::ServerFailed { status },
                });
            }
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                return Ok(match stop {
                    Some((requested, _)) if signal == Signal::SIGKILL => {
                        warn!("server did not stop within {STOP_GRACE:?}, killed it");
                        Outcome::Stopped { signal: requested }
                    }
                    _ => Outcome::ServerKilled { signal },
                });
            }
            Ok(_) => {}
            Err(source) => {
                return Err(Error::Sys {
                    what: "waitpid",
                    source,
                })
            }
        }
        let timeout = match stop {
            Some((_, deadline)) => deadline
                .saturating_duration_since(Instant::now())
                .min(STOP_REPEAT),
            None => Duration::from_secs(3600),
        };
        match wait_signal(waited, timeout) {
            Some(Signal::SIGCHLD) => {}
            Some(signal) if stop.is_none() => {
                info!(%signal, "stopping the server");
                // The worker ignores it; the server, in the same process group, handles it.
                let _ = killpg(worker, signal);
                stop = Some((signal, Instant::now() + STOP_GRACE));
            }
            Some(_) => {}
            None => match stop {
                Some((_, deadline)) if Instant::now() >= deadline => {
                    let _ = killpg(worker, Signal::SIGKILL);
                    let _ = kill(worker, Signal::SIGKILL);
                }
                // A server still starting up ignores stop signals until it has installed
                // its handlers: repeat the signal until it takes.
                Some((signal, _)) => {
                    let _ = killpg(worker, signal);
                }
                None => {}
            },
        }
    }
}

/// Waits up to `timeout` for one of the blocked signals in `set`.
fn wait_signal(set: &SigSet, timeout: Duration) -> Option<Signal> {
    let timeout = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos().min(999_999_999) as i32),
    };
    // SAFETY: `set` is a valid sigset, the info pointer may be null, and `timeout` lives
    // across the call.
    let signo = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &timeout) };
    Signal::try_from(signo).ok()
}
