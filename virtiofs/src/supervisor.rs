//! The process the caller starts and signals: it owns the vhost-user socket path and the pid
//! file, forks the worker that confines itself and serves, forwards stop signals to it, and
//! turns its end into an [`Outcome`]. It never touches guest requests, so it needs no
//! sandbox; it exists because upstream's sandbox ends the process that enters it with
//! `exit()` and leaves the socket file behind. With `--metrics-socket` it also answers
//! readers of the request counters, which the server fills in a page shared across the fork
//! (see [`crate::metrics`]); it waits for signals and readers together, on one thread.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, killpg, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, setpgid, ForkResult, Pid};
use tracing::{error, info, warn};
use vhost::vhost_user::Listener;

use crate::metrics::{render, MetricsListener, SharedCounters};
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
/// SIGHUP) arrives, answering readers of `config.metrics_socket` meanwhile. Must be called
/// before the process starts any thread.
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
    // Mapped before the fork, so that the server, whatever sandbox it enters, counts into
    // the page this process reads. The metrics socket is bound before the fork too, so that
    // a bad path fails the start instead of leaving a server running without it, and before
    // the vhost-user socket, so that a caller waiting for that one finds it ready.
    // The signals are blocked, so from now on they queue for the signalfd the supervisor
    // waits on (with the metrics socket).
    let shared = SharedCounters::new().and_then(|counters| {
        let metrics = config
            .metrics_socket
            .as_deref()
            .map(crate::metrics::bind)
            .transpose()?;
        let signals = SignalFd::with_flags(&waited, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|source| Error::Sys {
                what: "signalfd",
                source,
            })?;
        Ok((Arc::new(counters), metrics, signals))
    });
    let (counters, metrics, signals) = match shared {
        Ok(shared) => shared,
        Err(err) => {
            let _ = fs::remove_file(&pid_path);
            return Err(err);
        }
    };
    let socket = match BoundSocket::bind(&config.socket_path) {
        Ok(socket) => socket,
        Err(err) => {
            drop(metrics);
            let _ = fs::remove_file(&pid_path);
            return Err(err);
        }
    };

    let supervisor = nix::unistd::getpid();
    // SAFETY: the process is single-threaded (checked above), so the child is a complete
    // copy with no lock held by a thread that does not exist in it.
    let fork = unsafe { fork() }.map_err(|source| Error::Sys {
        what: "fork",
        source,
    })?;
    let worker = match fork {
        ForkResult::Child => {
            // The metrics socket and the signalfd are the supervisor's: the server must not
            // hold them.
            if let Some(metrics) = metrics {
                metrics.close_descriptor();
            }
            drop(signals);
            worker(config, socket.listener, &waited, counters, supervisor)
        }
        ForkResult::Parent { child } => child,
    };
    info!(pid = worker.as_raw(), socket = %config.socket_path.display(), "server started");
    // The worker has its copy of the listening socket; closing ours (without unlinking the
    // path, which the worker serves) means a second frontend is refused, not left hanging.
    let socket_path = socket.close();

    let outcome = wait_for_worker(worker, &signals, metrics.as_ref(), &counters);
    drop(metrics);
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
fn worker(
    config: &Config,
    listener: Listener,
    waited: &SigSet,
    counters: Arc<SharedCounters>,
    supervisor: Pid,
) -> ! {
    let code =
        match prepare_worker(waited, supervisor).and_then(|()| serve(config, listener, counters)) {
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

fn prepare_worker(waited: &SigSet, supervisor: Pid) -> Result<()> {
    let sys = |what| move |source| Error::Sys { what, source };
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and changes nothing else.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(sys("prctl(PR_SET_PDEATHSIG)")(nix::Error::last()));
    }
    // A supervisor that died between the fork and the prctl sent nothing: the worker would
    // serve on with no one to stop it (the fault matrix's "shim killed while creating" found
    // one, its supervisor killed with the shim that started it).
    if nix::unistd::getppid() != supervisor {
        return Err(sys("the supervisor exited before the worker started")(
            nix::Error::ESRCH,
        ));
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

/// Waits for the worker to end, forwarding stop signals to it and answering metrics readers
/// meanwhile.
fn wait_for_worker(
    worker: Pid,
    signals: &SignalFd,
    metrics: Option<&MetricsListener>,
    counters: &SharedCounters,
) -> Result<Outcome> {
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
        let timeout = stop.map(|(_, deadline)| {
            deadline
                .saturating_duration_since(Instant::now())
                .min(STOP_REPEAT)
        });
        let wake = wait(signals, metrics, timeout).map_err(|source| Error::Sys {
            what: "poll",
            source,
        })?;
        let signal = match wake {
            Wake::Ready { signal, reader } => {
                if reader {
                    if let Some(metrics) = metrics {
                        metrics.answer(|| render(&counters.values()));
                    }
                }
                if !signal {
                    continue;
                }
                match signals.read_signal() {
                    Ok(Some(info)) => i32::try_from(info.ssi_signo)
                        .ok()
                        .and_then(|n| Signal::try_from(n).ok()),
                    // Taken already (a SIGCHLD merged into one that was read): look again.
                    Ok(None) => continue,
                    Err(source) => {
                        return Err(Error::Sys {
                            what: "reading the signalfd",
                            source,
                        })
                    }
                }
            }
            Wake::Timeout => None,
        };
        match signal {
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

/// What ended a [`wait`].
enum Wake {
    /// A blocked signal is pending, a metrics reader is waiting, or both.
    Ready {
        /// A signal can be read from the signalfd.
        signal: bool,
        /// A reader can be accepted on the metrics socket.
        reader: bool,
    },
    /// The timeout passed first.
    Timeout,
}

/// Waits up to `timeout` (for ever if `None`) for a blocked signal or a metrics reader.
fn wait(
    signals: &SignalFd,
    metrics: Option<&MetricsListener>,
    timeout: Option<Duration>,
) -> nix::Result<Wake> {
    let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
    if let Some(metrics) = metrics {
        fds.push(PollFd::new(metrics.as_fd(), PollFlags::POLLIN));
    }
    let timeout = match timeout {
        Some(timeout) => PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX),
        None => PollTimeout::NONE,
    };
    let ready = match poll(&mut fds, timeout) {
        Ok(ready) => ready,
        // Nothing to redo: the caller looks at the worker again before waiting again.
        Err(nix::errno::Errno::EINTR) => 0,
        Err(err) => return Err(err),
    };
    if ready == 0 {
        return Ok(Wake::Timeout);
    }
    let is_ready = |fd: Option<&PollFd<'_>>| {
        fd.and_then(|fd| fd.revents())
            .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLERR))
    };
    Ok(Wake::Ready {
        signal: is_ready(fds.first()),
        reader: is_ready(fds.get(1)),
    })
}
