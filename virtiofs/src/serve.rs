//! The server process: confines itself, then serves one vhost-user connection with upstream
//! virtiofsd's passthrough file system until the frontend leaves or a signal asks it to stop.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tracing::{info, warn};
use vhost::vhost_user::Error::Disconnected;
use vhost::vhost_user::Listener;
use vhost_user_backend::Error::HandleRequest;
use vhost_user_backend::VhostUserDaemon;
use virtiofsd::filesystem::{FileSystem, SerializableFileSystem};
use virtiofsd::limits;
use virtiofsd::passthrough::read_only::PassthroughFsRo;
use virtiofsd::passthrough::PassthroughFs;
use virtiofsd::vhost_user::VhostUserFsBackendBuilder;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::metrics::SharedCounters;
use crate::name_guard::NameGuard;
use crate::{sandbox, Config, Error, Result};

/// Descriptors kept back from the guest's share of the open file limit: one per guest memory
/// region vhost-user may map (509 slots), plus the server's own, plus one per pool thread
/// (each may hold a descriptor not yet counted). Same reasoning as upstream's binary.
const INTERNAL_FD_RESERVE: u64 = 509 + 100;

/// Why a server stopped without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// The frontend (the VMM) closed the vhost-user connection.
    FrontendDisconnected,
    /// A signal asked the server to stop.
    Signal(i32),
}

/// Serves `config.shared_dir` on the connection `listener` accepts, counting requests into
/// `counters` (shared with the supervisor, which serves them).
///
/// Must be called while single-threaded: it enters the sandbox (see [`sandbox::enter`]: in
/// the namespace mode the caller's process waits there for the confined child and exits with
/// its status; only the child returns from here).
pub fn serve(
    config: &Config,
    listener: Listener,
    counters: Arc<SharedCounters>,
) -> Result<Shutdown> {
    let fd_limit = limits::setup_rlimit_nofile(None).map_err(Error::FileLimit)?;
    let reserve = INTERNAL_FD_RESERVE + config.thread_pool_size.max(1) as u64;
    let guest_fd_limit = fd_limit.checked_sub(reserve).ok_or_else(|| {
        Error::FileLimit(format!(
            "the limit of {fd_limit} leaves no descriptors for the guest"
        ))
    })?;

    let entered = sandbox::enter(&config.shared_dir, config.sandbox, listener)?;
    info!(dir = %config.shared_dir.display(), sandbox = ?config.sandbox, "confined");

    // Handlers and their pipe are set up before the seccomp filter (which does not allow
    // pipe2) and before any thread starts. In the namespace sandbox this process is pid 1
    // of its namespace, which the kernel only signals when a handler is installed.
    let signals = StopSignals::install()?;

    let fs_config = config.passthrough(entered.root, guest_fd_limit);
    exit_on_panic();
    let fs_err = |source| Error::FileSystem {
        dir: config.shared_dir.clone(),
        source,
    };

    if config.seccomp {
        sandbox::install_seccomp()?;
    } else {
        warn!("seccomp filter disabled (--seccomp none)");
    }
    sandbox::reduce_capabilities()?;

    let listener = entered.listener;
    if config.readonly {
        let fs = PassthroughFsRo::new(fs_config).map_err(fs_err)?;
        run_daemon(
            NameGuard::new(fs, counters),
            listener,
            config.thread_pool_size,
            signals,
        )
    } else {
        let fs = PassthroughFs::new(fs_config).map_err(fs_err)?;
        run_daemon(
            NameGuard::new(fs, counters),
            listener,
            config.thread_pool_size,
            signals,
        )
    }
}

/// What ends the daemon: its own end, or a signal.
enum Stop {
    Daemon(std::result::Result<(), vhost_user_backend::Error>),
    Signal(i32),
}

fn run_daemon<F>(
    fs: F,
    mut listener: Listener,
    thread_pool_size: usize,
    signals: StopSignals,
) -> Result<Shutdown>
where
    F: FileSystem + SerializableFileSystem + Send + Sync + 'static,
{
    let backend = VhostUserFsBackendBuilder::default()
        .set_thread_pool_size(thread_pool_size)
        .build(fs)
        .map_err(Error::Backend)?;
    let mut daemon = VhostUserDaemon::new(
        "hull-fs".to_owned(),
        Arc::new(backend),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|err| Error::Daemon(err.to_string()))?;

    // The daemon's request loop blocks in the socket and has no stop call, so it runs on its
    // own thread and this one waits for whichever ends first; a signal makes the process
    // exit (from main) with the loop still blocked, which is safe: replies in flight are
    // lost, and the guest is being torn down anyway.
    let (stop_tx, stop_rx) = mpsc::channel();
    let signal_tx = stop_tx.clone();
    spawn("hull-fs-signals", move || {
        if let Some(signal) = signals.wait() {
            let _ = signal_tx.send(Stop::Signal(signal));
        }
    })?;
    spawn("hull-fs-vhost", move || {
        info!("waiting for the vhost-user frontend");
        let result = daemon.start(&mut listener).and_then(|()| {
            info!("frontend connected, serving");
            daemon.wait()
        });
        let _ = stop_tx.send(Stop::Daemon(result));
    })?;

    match stop_rx.recv() {
        Ok(Stop::Signal(signal)) => Ok(Shutdown::Signal(signal)),
        Ok(Stop::Daemon(Ok(()))) | Ok(Stop::Daemon(Err(HandleRequest(Disconnected)))) => {
            Ok(Shutdown::FrontendDisconnected)
        }
        Ok(Stop::Daemon(Err(err))) => Err(Error::Daemon(err.to_string())),
        // Both senders gone without a word: the daemon thread panicked.
        Err(mpsc::RecvError) => Err(Error::DaemonPanicked),
    }
}

/// Makes a panic on any server thread end the server process. Upstream's queue workers
/// panic on some malformed guest input (see tests/fuse_decode.rs); the thread would die and
/// leave the guest's queue hung with the process looking healthy. Ending the process instead
/// shows the failure to the frontend (disconnect) and to the supervisor (SIGABRT), and the
/// damage stays with this guest's share.
fn exit_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        tracing::error!("server thread panicked, aborting: {info}");
        std::process::abort();
    }));
}

fn spawn(name: &'static str, f: impl FnOnce() + Send + 'static) -> Result<()> {
    thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(drop)
        .map_err(|source| Error::Thread { name, source })
}

/// Stop signals turned into a byte on a pipe, read by a thread.
///
/// signal-hook's iterator would do, but it reads its self-pipe with `recvfrom`, which
/// upstream's seccomp filter does not allow; a pipe is read with `read`, which it does.
struct StopSignals {
    read_end: std::fs::File,
}

/// The last stop signal received; written by the handler, read after the pipe wakes.
static LAST_SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

impl StopSignals {
    fn install() -> Result<Self> {
        let (read_end, write_end) =
            nix::unistd::pipe().map_err(|e| Error::Signals(std::io::Error::from(e)))?;
        let write_fd = std::os::fd::IntoRawFd::into_raw_fd(write_end);
        for signal in [SIGTERM, SIGINT, SIGHUP] {
            let handler = move || {
                LAST_SIGNAL.store(signal, std::sync::atomic::Ordering::SeqCst);
                let byte = 1u8;
                // SAFETY: write(2) is async-signal-safe; `write_fd` stays open for the life of
                // the process (it is never closed) and `byte` outlives the call. A full pipe
                // means a wake-up is already pending, so the result does not matter.
                let _ = unsafe { libc::write(write_fd, std::ptr::addr_of!(byte).cast(), 1) };
            };
            // SAFETY: the handler only stores to an atomic and calls write(2), both
            // async-signal-safe, and allocates nothing.
            unsafe { signal_hook::low_level::register(signal, handler) }.map_err(Error::Signals)?;
        }
        Ok(Self {
            read_end: std::fs::File::from(read_end),
        })
    }

    /// Blocks until a stop signal arrives and returns it; `None` if the pipe fails.
    fn wait(mut self) -> Option<i32> {
        let mut byte = [0u8; 1];
        match std::io::Read::read(&mut self.read_end, &mut byte) {
            Ok(1) => Some(LAST_SIGNAL.load(std::sync::atomic::Ordering::SeqCst)),
            _ => None,
        }
    }
}
