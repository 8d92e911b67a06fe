//! Serving vhost-user frontends on a socket, for every backend of this crate: wait for a frontend (or a stop request), run the
//! device for it until it disconnects (or a stop request), and say which happened.
//!
//! Termination signals are blocked and read from a signalfd, so a SIGTERM is an ordinary event
//! here rather than an asynchronous handler: it ends the wait for a frontend, or shuts the
//! frontend's connection down so the daemon returns, and the device is dropped normally (its
//! unix socket removed, host streams closed).

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tracing::info;
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::blk::{BlkBackend, BlkDevice, DiskId, SyncEngine};
use crate::exit_events::ExitEvents;
use crate::metrics;
use crate::net::{frontend_relay, Mac, NetBackend, NetDevice, Tap};
use crate::vsock::backend::BACKEND_EVENT;
use crate::vsock::{Muxer, VsockBackend, VsockDevice};
use crate::{Error, Result};

/// What `hull-vsock` serves, from its command line.
#[derive(Debug, Clone)]
pub struct VsockConfig {
    /// The vhost-user socket the frontend connects to.
    pub socket: PathBuf,
    /// The hybrid-vsock unix socket for host connections.
    pub uds: PathBuf,
    /// The guest's context id.
    pub guest_cid: u64,
    /// Serve the next frontend after one disconnects, instead of exiting.
    pub keep_listening: bool,
    /// Where to serve the device's counters in Prometheus' text format (none if not given).
    pub metrics_socket: Option<PathBuf>,
}

/// What `hull-blk` serves, from its command line.
#[derive(Debug, Clone)]
pub struct BlkConfig {
    /// The vhost-user socket the frontend connects to.
    pub socket: PathBuf,
    /// The backing file or block device.
    pub path: PathBuf,
    /// Refuse writes and advertise a read-only disk.
    pub readonly: bool,
    /// Open the disk with `O_DIRECT` (no host page cache).
    pub direct: bool,
    /// Number of request queues, each served by its own worker thread.
    pub queues: u16,
    /// Serve the next frontend after one disconnects, instead of exiting.
    pub keep_listening: bool,
    /// Where to serve the device's counters in Prometheus' text format (none if not given).
    pub metrics_socket: Option<PathBuf>,
    /// Serve every request with blocking calls instead of io_uring.
    pub sync_io: bool,
    /// The id answered to GET_ID (`/sys/block/vd*/serial` in a Linux guest); the backing
    /// file's name when `None`.
    pub serial: Option<DiskId>,
    /// Requests a pass over a queue hands to the kernel per `io_uring_enter`
    /// ([`crate::blk::DEFAULT_SUBMIT_BATCH`] when `None`).
    pub submit_batch: Option<NonZeroUsize>,
}

/// Most request queues `hull-blk` serves (one worker thread each).
pub const MAX_BLK_QUEUES: u16 = 64;

/// Where `hull-net`'s tap comes from.
#[derive(Debug)]
pub enum TapSource {
    /// A tap by name in hull-net's network namespace, opened with one descriptor per queue
    /// pair (created, non-persistent, if it does not exist).
    Name(String),
    /// Descriptors of one tap's queues, opened by the caller and inherited.
    Fds(Vec<std::os::fd::OwnedFd>),
}

/// What `hull-net` serves, from its command line.
#[derive(Debug)]
pub struct NetConfig {
    /// The vhost-user socket the frontend connects to.
    pub socket: PathBuf,
    /// The tap.
    pub tap: TapSource,
    /// Number of queue pairs, each served by its own worker thread and tap queue.
    pub queues: u16,
    /// The guest's MAC address in the config space (random if not given).
    pub mac: Option<crate::net::Mac>,
    /// The link's MTU in the config space (the tap's if not given: a macvtap's cannot be
    /// asked through its descriptors from outside its namespace, so its caller says it).
    pub mtu: Option<u16>,
    /// Serve the next frontend after one disconnects, instead of exiting.
    pub keep_listening: bool,
    /// Where to serve the device's counters in Prometheus' text format (none if not given).
    pub metrics_socket: Option<PathBuf>,
}

/// Most queue pairs `hull-net` serves (one worker thread and tap queue each; the kernel
/// allows 256 queues per tap).
pub const MAX_NET_QUEUES: u16 = 64;

/// Why serving ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The frontend disconnected (and `keep_listening` was off).
    FrontendDisconnected,
    /// A termination signal arrived.
    Signal(Signal),
}

/// How serving one frontend ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The frontend closed its connection.
    FrontendDisconnected,
    /// The stop descriptor became readable.
    Stopped,
}

/// Blocks SIGTERM, SIGINT and SIGHUP for the process and reads them from a signalfd instead.
/// Call before any thread starts, so that every thread inherits the mask.
pub struct TermSignals {
    fd: SignalFd,
}

impl TermSignals {
    /// Blocks the signals and opens the signalfd.
    pub fn block() -> Result<Self> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGINT);
        set.add(Signal::SIGHUP);
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).map_err(
            |e| Error::Os {
                what: "blocking termination signals",
                source: e.into(),
            },
        )?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| Error::Os {
                what: "opening a signalfd",
                source: e.into(),
            })?;
        Ok(Self { fd })
    }

    /// The descriptor that is readable once a signal is pending.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The pending signal (SIGTERM if it cannot be told).
    pub fn read(&self) -> Signal {
        match self.fd.read_signal() {
            Ok(Some(info)) => i32::try_from(info.ssi_signo)
                .ok()
                .and_then(|n| Signal::try_from(n).ok())
                .unwrap_or(Signal::SIGTERM),
            _ => Signal::SIGTERM,
        }
    }
}

/// Serves vhost-user frontends on `socket` until one disconnects (or, with `keep_listening`,
/// forever) or a termination signal arrives. `serve_one` serves one frontend from the
/// listener with a fresh device, returning early when the stop descriptor becomes readable.
pub fn serve_until_done(
    socket: &Path,
    keep_listening: bool,
    signals: &TermSignals,
    mut serve_one: impl FnMut(&mut Listener, BorrowedFd<'_>) -> Result<Outcome>,
) -> Result<ExitReason> {
    let mut listener = Listener::new(socket, true).map_err(|source| Error::Listen {
        path: socket.to_path_buf(),
        source,
    })?;
    loop {
        match serve_one(&mut listener, signals.fd())? {
            Outcome::Stopped => return Ok(ExitReason::Signal(signals.read())),
            Outcome::FrontendDisconnected if keep_listening => {
                info!("frontend disconnected; waiting for the next one (--keep-listening)");
            }
            Outcome::FrontendDisconnected => return Ok(ExitReason::FrontendDisconnected),
        }
    }
}

/// Serves vhost-user frontends on `config.socket` until one disconnects (or, with
/// `keep_listening`, forever) or a termination signal arrives.
pub fn run_vsock(config: &VsockConfig, signals: &TermSignals) -> Result<ExitReason> {
    check_guest_cid(config.guest_cid)?;
    // Nothing to open first: sockets in root's run directory need no capability.
    crate::privileges::keep_only(&[])?;
    info!(socket = %config.socket.display(), uds = %config.uds.display(), guest_cid = config.guest_cid,
        "hull-vsock listening for a vhost-user frontend");
    // Each frontend gets a fresh device: the metrics read the current one's counters.
    let current: Arc<Mutex<Option<Arc<RwLock<VsockBackend>>>>> = Arc::default();
    let _metrics = match &config.metrics_socket {
        Some(path) => {
            let current = Arc::clone(&current);
            Some(metrics::serve(path, move || {
                let backend = current.lock().ok().and_then(|slot| slot.clone());
                let Some(backend) = backend else {
                    return metrics::render(&metrics::vsock_samples(&Default::default()));
                };
                let Ok(backend) = backend.read() else {
                    return String::new();
                };
                let mut samples = metrics::vsock_samples(&backend.counters());
                samples.extend(backend.queue_events().samples(
                    "hull_vsock_queue_kicks_total",
                    "hull_vsock_queue_interrupts_total",
                    &["rx", "tx", "event"],
                ));
                metrics::render(&samples)
            })?)
        }
        None => None,
    };
    serve_until_done(
        &config.socket,
        config.keep_listening,
        signals,
        |listener, stop| {
            serve_vsock_frontend_with(listener, config, stop, |backend| {
                if let Ok(mut slot) = current.lock() {
                    *slot = Some(Arc::clone(backend));
                }
            })
        },
    )
}

/// Serves one frontend from `listener` with a fresh vsock device (its host socket bound at
/// `config.uds` for as long as the frontend stays). Returns early when `stop` becomes readable.
pub fn serve_vsock_frontend(
    listener: &mut Listener,
    config: &VsockConfig,
    stop: BorrowedFd<'_>,
) -> Result<Outcome> {
    serve_vsock_frontend_with(listener, config, stop, |_| {})
}

/// [`serve_vsock_frontend`], handing `started` the device's backend before serving.
fn serve_vsock_frontend_with(
    listener: &mut Listener,
    config: &VsockConfig,
    stop: BorrowedFd<'_>,
    started: impl FnOnce(&Arc<RwLock<VsockBackend>>),
) -> Result<Outcome> {
    check_guest_cid(config.guest_cid)?;
    let muxer = Muxer::new(&config.uds, config.guest_cid)?;
    let mut backend = VsockBackend::new(VsockDevice::new(muxer), config.guest_cid);
    let host_fd = backend.host_event_fd();
    let exit_events = backend.exit_events();
    let backend = Arc::new(RwLock::new(backend));
    started(&backend);
    let outcome = serve_frontend(
        listener,
        "hull-vsock",
        Arc::clone(&backend),
        &exit_events,
        stop,
        |daemon| {
            for handler in daemon.get_epoll_handlers() {
                handler
                    .register_listener(host_fd, EventSet::IN, u64::from(BACKEND_EVENT))
                    .map_err(|source| Error::Os {
                        what: "polling the host side",
                        source,
                    })?;
            }
            Ok(())
        },
    );
    if let Ok(backend) = backend.read() {
        info!(counters = ?backend.counters(), "device counters");
    }
    outcome
}

/// Opens the disk, then serves vhost-user-blk frontends on `config.socket` until one
/// disconnects (or, with `keep_listening`, forever) or a termination signal arrives.
pub fn run_blk(config: &BlkConfig, signals: &TermSignals) -> Result<ExitReason> {
    if !(1..=MAX_BLK_QUEUES).contains(&config.queues) {
        return Err(Error::InvalidQueues {
            queues: config.queues,
            max: MAX_BLK_QUEUES,
        });
    }
    let engine = SyncEngine::open(&config.path, config.readonly, config.direct)?;
    let mut device = BlkDevice::new(engine, config.readonly, config.queues);
    if let Some(serial) = config.serial {
        device = device.with_id(serial);
    }
    if let Some(batch) = config.submit_batch {
        device = device.with_submit_batch(batch);
    }
    if config.sync_io {
        device = device.without_uring();
    }
    // The disk is open: nothing from here on needs a capability.
    crate::privileges::keep_only(&[])?;
    let device = Arc::new(device);
    let _metrics = match &config.metrics_socket {
        Some(path) => {
            let device = Arc::clone(&device);
            Some(metrics::serve(path, move || {
                let mut samples = metrics::blk_samples(&device.counters());
                samples.extend(device.queue_events().samples(
                    "hull_blk_queue_kicks_total",
                    "hull_blk_queue_interrupts_total",
                    &[],
                ));
                metrics::render(&samples)
            })?)
        }
        None => None,
    };
    info!(socket = %config.socket.display(), disk = %config.path.display(),
        sectors = device.capacity(),
        readonly = config.readonly, direct = config.direct, queues = config.queues,
        engine = %device.engine_name(),
        "hull-blk listening for a vhost-user frontend");
    let reason = serve_until_done(
        &config.socket,
        config.keep_listening,
        signals,
        |listener, stop| serve_blk_frontend(listener, &device, stop),
    );
    info!(counters = ?device.counters(), "device counters");
    reason
}

/// Serves one frontend from `listener` with a fresh backend on `device`, each queue's
/// io_uring in the event loop of the worker thread that owns the queue (its completions go
/// back to the guest as they come). Returns early when `stop` becomes readable.
pub fn serve_blk_frontend(
    listener: &mut Listener,
    device: &Arc<BlkDevice>,
    stop: BorrowedFd<'_>,
) -> Result<Outcome> {
    let backend = Arc::new(BlkBackend::new(Arc::clone(device)));
    let exit_events = backend.exit_events();
    let completions = Arc::clone(&backend);
    serve_frontend(
        listener,
        "hull-blk",
        backend,
        &exit_events,
        stop,
        move |daemon| {
            completions
                .register_completions(&daemon.get_epoll_handlers())
                .map_err(|source| Error::Os {
                    what: "polling the io_uring completions",
                    source,
                })
        },
    )
}

/// Opens the tap, then serves vhost-user-net frontends on `config.socket` until one
/// disconnects (or, with `keep_listening`, forever) or a termination signal arrives.
pub fn run_net(config: NetConfig, signals: &TermSignals) -> Result<ExitReason> {
    let tap = match config.tap {
        TapSource::Name(name) => {
            if !(1..=MAX_NET_QUEUES).contains(&config.queues) {
                return Err(Error::InvalidQueues {
                    queues: config.queues,
                    max: MAX_NET_QUEUES,
                });
            }
            Tap::open(&name, config.queues)?
        }
        TapSource::Fds(fds) => {
            let given = u16::try_from(fds.len()).unwrap_or(u16::MAX);
            if given != config.queues || given > MAX_NET_QUEUES {
                return Err(Error::TapFdCount {
                    given,
                    queues: config.queues,
                });
            }
            Tap::from_fds(fds)?
        }
    };
    let mac = config.mac.unwrap_or_else(Mac::random);
    let device = Arc::new(match config.mtu {
        Some(mtu) => NetDevice::with_mtu(tap, mac, mtu),
        None => NetDevice::new(tap, mac)?,
    });
    // The tap is open and its MTU read: only enabling and disabling its queues still needs
    // a capability.
    crate::privileges::keep_only(&[caps::Capability::CAP_NET_ADMIN])?;
    let _metrics = match &config.metrics_socket {
        Some(path) => {
            let device = Arc::clone(&device);
            Some(metrics::serve(path, move || {
                let mut samples = metrics::net_samples(&device.counters());
                let names: Vec<String> = (0..device.tap().queues().len())
                    .flat_map(|pair| [format!("rx{pair}"), format!("tx{pair}")])
                    .collect();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                samples.extend(device.queue_events().samples(
                    "hull_net_queue_kicks_total",
                    "hull_net_queue_interrupts_total",
                    &names,
                ));
                metrics::render(&samples)
            })?)
        }
        None => None,
    };
    info!(socket = %config.socket.display(), tap = device.tap().name(), %mac,
        mtu = device.mtu(), queue_pairs = device.queue_pairs(),
        offloads = ?device.tap().supported_offloads(),
        "hull-net listening for a vhost-user frontend");
    let reason = serve_until_done(
        &config.socket,
        config.keep_listening,
        signals,
        |listener, stop| serve_net_frontend(listener, &device, stop),
    );
    info!(counters = ?device.counters(), "device counters");
    reason
}

/// Serves one frontend from `listener` with a fresh backend on `device`, its tap queues in
/// the worker threads' event loops. Returns early when `stop` becomes readable.
pub fn serve_net_frontend(
    listener: &mut Listener,
    device: &Arc<NetDevice>,
    stop: BorrowedFd<'_>,
) -> Result<Outcome> {
    let frontend = loop {
        if !wait_readable(listener.as_raw_fd(), stop)? {
            return Ok(Outcome::Stopped);
        }
        match listener.accept() {
            Ok(Some(stream)) => break stream,
            // The connection went away before we took it: wait for the next.
            Ok(None) => {}
            Err(err) => return Err(Error::Daemon(err.to_string())),
        }
    };
    // The daemon serves the relay (see `frontend_relay`) on a socket in a directory only we
    // may enter, so no other user can reach the daemon first; both go when this returns.
    static RELAYS: AtomicU64 = AtomicU64::new(0);
    let private = PrivateDir::create(&format!(
        "hull-net-{}-{}",
        std::process::id(),
        RELAYS.fetch_add(1, Ordering::Relaxed)
    ))?;
    let path = private.0.join("daemon.sock");
    let mut inner = Listener::new(&path, true).map_err(|source| Error::Listen {
        path: path.clone(),
        source,
    })?;
    let relay_end =
        std::os::unix::net::UnixStream::connect(&path).map_err(|source| Error::Bind {
            path: path.clone(),
            source,
        })?;
    // The relay's connection waits in the listener's backlog, so the name has served its
    // purpose: it goes now, not when serving ends, so a hull-net killed while serving (SIGKILL
    // from a shim tearing a pod down) leaves no directory behind.
    drop(private);
    let backend = Arc::new(NetBackend::new(Arc::clone(device)));
    std::thread::scope(|scope| {
        let shutdown = (frontend.try_clone(), relay_end.try_clone());
        frontend_relay::relay(scope, frontend, relay_end).map_err(|source| Error::Os {
            what: "starting the vhost-user relay",
            source,
        })?;
        let outcome = serve_frontend(
            &mut inner,
            "hull-net",
            Arc::clone(&backend),
            &backend.exit_events(),
            stop,
            |daemon| backend.register_taps(daemon),
        );
        // Whatever ended serving, end the relay too (its threads join with the scope).
        if let (Ok(a), Ok(b)) = shutdown {
            let _ = a.shutdown(std::net::Shutdown::Both);
            let _ = b.shutdown(std::net::Shutdown::Both);
        }
        outcome
    })
}

/// A directory of mode 0700 under the temporary directory, removed with its content on drop.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn create(name: &str) -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let path = std::env::temp_dir().join(name);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| Error::Bind {
                path: path.clone(),
                source,
            })?;
        Ok(Self(path))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Serves one frontend from `listener` with `backend`: `setup` runs on the daemon before the
/// frontend is accepted (to add device events to the worker threads). Returns when the
/// frontend disconnects, or early when `stop` becomes readable; the daemon and its worker
/// threads are gone when it returns, and so are the exit-event descriptors the daemon leaks
/// (`exit_events`, the backend's: see [`crate::exit_events`]).
pub fn serve_frontend<S>(
    listener: &mut Listener,
    name: &str,
    backend: S,
    exit_events: &ExitEvents,
    stop: BorrowedFd<'_>,
    setup: impl FnOnce(&VhostUserDaemon<S>) -> Result<()>,
) -> Result<Outcome>
where
    S: VhostUserBackend<Bitmap = (), Vring = VringRwLock> + Clone + 'static,
{
    let memory = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let mut daemon = VhostUserDaemon::new(name.into(), backend, memory)
        .map_err(|e| Error::Daemon(e.to_string()))?;
    setup(&daemon)?;

    if !wait_readable(listener.as_raw_fd(), stop)? {
        return Ok(Outcome::Stopped);
    }
    daemon
        .start(listener)
        .map_err(|e| Error::Daemon(e.to_string()))?;
    info!("vhost-user frontend connected");

    let done = EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Os {
        what: "creating an eventfd",
        source,
    })?;
    let stopped = AtomicBool::new(false);
    let shutdown = daemon.shutdown_handle();
    let result = std::thread::scope(|scope| {
        scope.spawn(|| {
            // Either the stop descriptor or `done` (the daemon returned) ends this wait.
            if let Ok(false) = wait_readable(done.as_raw_fd(), stop) {
                stopped.store(true, Ordering::Release);
                if let Some(handle) = &shutdown {
                    handle.shutdown();
                }
            }
        });
        let result = daemon.wait();
        let _ = done.write(1);
        result
    });
    // Stop the worker threads and drop the device with them.
    for handler in daemon.get_epoll_handlers() {
        handler.send_exit_event();
    }
    drop(daemon);
    let closed = exit_events.close_leaked();
    tracing::debug!(closed, "exit-event descriptors the daemon left open");
    match result {
        _ if stopped.load(Ordering::Acquire) => Ok(Outcome::Stopped),
        Ok(()) => Ok(Outcome::FrontendDisconnected),
        Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
        )) => Ok(Outcome::FrontendDisconnected),
        Err(err) => Err(Error::Daemon(err.to_string())),
    }
}

/// CIDs 0 to 2 are reserved (hypervisor, local, host); the socket API holds 32 bits and
/// reserves `u32::MAX` for "any".
fn check_guest_cid(cid: u64) -> Result<()> {
    if (3..=0xffff_fffe).contains(&cid) {
        Ok(())
    } else {
        Err(Error::InvalidGuestCid { cid })
    }
}

/// Waits until `fd` or `stop` is readable; `true` for `fd`, `false` for `stop`.
fn wait_readable(fd: std::os::fd::RawFd, stop: BorrowedFd<'_>) -> Result<bool> {
    // SAFETY: `fd` is open for the duration of this call: callers pass descriptors they own
    // and do not close while waiting.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    loop {
        let mut fds = [
            PollFd::new(fd, PollFlags::POLLIN),
            PollFd::new(stop, PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {
                let ready = |p: &PollFd<'_>| p.revents().is_some_and(|r| !r.is_empty());
                if ready(&fds[1]) {
                    return Ok(false);
                }
                if ready(&fds[0]) {
                    return Ok(true);
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                return Err(Error::Os {
                    what: "waiting for a frontend",
                    source: e.into(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::time::Duration;

    use vhost::vhost_user::message::VhostUserConfigFlags;
    use vhost::vhost_user::{Frontend, VhostUserFrontend};
    use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
    use vm_memory::{GuestAddress, GuestMemoryBackend};

    use super::*;
    use crate::vsock::packet::Op;
    use crate::vsock::test_utils::{
        guest_packet, shared_test_memory, MockGuest, TestDir, GUEST_CID,
    };

    fn wait_for(fd: &EventFd) -> bool {
        // SAFETY: `fd` is borrowed from an EventFd that outlives this call.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) };
        let mut fds = [PollFd::new(borrowed, PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::from(10_000u16)), Ok(n) if n > 0) && fd.read().is_ok()
    }

    /// A backend thread serving one frontend on `<dir>/vu.sock`; returns its outcome.
    fn spawn_backend(
        dir: &TestDir,
        stop: &Arc<UnixStream>,
    ) -> (std::thread::JoinHandle<Result<Outcome>>, VsockConfig) {
        let config = VsockConfig {
            socket: dir.path().join("vu.sock"),
            uds: dir.path().join("v.sock"),
            guest_cid: GUEST_CID,
            keep_listening: false,
            metrics_socket: None,
        };
        let mut listener = Listener::new(&config.socket, true).expect("listener");
        let thread_config = config.clone();
        let stop = Arc::clone(stop);
        let thread = std::thread::spawn(move || {
            serve_vsock_frontend(&mut listener, &thread_config, stop.as_fd())
        });
        (thread, config)
    }

    /// The vhost-user protocol end to end, in process: a `vhost` crate frontend negotiates,
    /// reads the config space, shares memory and rings, and a guest request travels through
    /// the backend's worker thread to a host listener and back as a RESPONSE.
    #[test]
    fn vhost_user_frontend_negotiates_and_drives_the_queues_until_it_disconnects() {
        let dir = TestDir::new("frontend");
        let (_stop_tx, stop) = UnixStream::pair().expect("socketpair");
        let stop = Arc::new(stop);
        let (backend, config) = spawn_backend(&dir, &stop);

        let (mut frontend, features) = connect_frontend(&config.socket);
        assert_ne!(
            features & (1 << VIRTIO_F_VERSION_1_BIT),
            0,
            "a modern device"
        );
        let (_, cid) = frontend
            .get_config(0, 8, VhostUserConfigFlags::empty(), &[0; 8])
            .expect("config");
        assert_eq!(
            cid,
            GUEST_CID.to_le_bytes(),
            "the config space holds the guest CID"
        );

        let (mem, file) = shared_test_memory();
        let mut guest = MockGuest::new(&mem);
        let rings = [guest.ring_addrs(true), guest.ring_addrs(false)];
        let (kicks, calls) = share_rings(&mut frontend, &mem, &rings);
        let _keep_open = file;

        let listener = UnixListener::bind(dir.path().join("v.sock_6000")).expect("host listener");
        guest.offer_rx(4, 4096);
        guest.send(&guest_packet(Op::Request, 3000, 6000), &[]);
        kicks[1].write(1).expect("kick tx");
        assert!(wait_for(&calls[0]), "the backend signals the rx queue");
        let packets: Vec<_> = guest
            .rx_used()
            .into_iter()
            .filter_map(|(_, _, p)| p)
            .collect();
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].0.op, Op::Response);
        listener.set_nonblocking(true).expect("nonblocking");
        assert!(
            listener.accept().is_ok(),
            "the host listener has the guest's connection"
        );

        drop(frontend);
        let outcome = backend.join().expect("backend thread").expect("serving");
        assert_eq!(outcome, Outcome::FrontendDisconnected);
        assert!(
            !config.uds.exists(),
            "the hybrid socket is removed with the device"
        );
    }

    #[test]
    fn stop_request_ends_serving_while_a_frontend_is_connected() {
        let dir = TestDir::new("stop");
        let (stop_tx, stop) = UnixStream::pair().expect("socketpair");
        let stop = Arc::new(stop);
        let (backend, config) = spawn_backend(&dir, &stop);
        let frontend = Frontend::connect(&config.socket, 3).expect("frontend connects");
        frontend.set_owner().expect("owner");
        (&stop_tx).write_all(b"x").expect("stop");
        let outcome = backend.join().expect("backend thread").expect("serving");
        assert_eq!(outcome, Outcome::Stopped);
        std::thread::sleep(Duration::from_millis(10));
        assert!(
            frontend.get_features().is_err(),
            "the backend closed the connection"
        );
    }

    #[test]
    fn stop_request_ends_the_wait_for_a_frontend() {
        let dir = TestDir::new("stopwait");
        let (stop_tx, stop) = UnixStream::pair().expect("socketpair");
        let stop = Arc::new(stop);
        let (backend, _config) = spawn_backend(&dir, &stop);
        (&stop_tx).write_all(b"x").expect("stop");
        let outcome = backend.join().expect("backend thread").expect("serving");
        assert_eq!(outcome, Outcome::Stopped);
    }

    /// Connects a `vhost` crate frontend to `socket` and negotiates every feature the
    /// backend offers except EVENT_IDX (so that every used buffer is signalled, which keeps
    /// tests simple) and every protocol feature. Returns the frontend and the offered features.
    fn connect_frontend(socket: &std::path::Path) -> (Frontend, u64) {
        let mut frontend = Frontend::connect(socket, 3).expect("frontend connects");
        frontend.set_owner().expect("owner");
        let features = frontend.get_features().expect("features");
        frontend
            .set_features(features & !(1 << 29))
            .expect("set features");
        let protocol = frontend.get_protocol_features().expect("protocol features");
        frontend
            .set_protocol_features(protocol)
            .expect("set protocol features");
        (frontend, features)
    }

    /// Shares `mem` with the backend and sets up one 256-entry vring per (descriptor table,
    /// avail ring, used ring) guest address triple; returns the kick and call eventfds.
    fn share_rings(
        frontend: &mut Frontend,
        mem: &crate::vsock::packet::Mem,
        rings: &[(u64, u64, u64)],
    ) -> (Vec<EventFd>, Vec<EventFd>) {
        let host_base = mem.get_host_address(GuestAddress(0)).expect("mapped") as u64;
        let region = mem.find_region(GuestAddress(0)).expect("region");
        let region = VhostUserMemoryRegionInfo::from_guest_region(region).expect("region info");
        frontend.set_mem_table(&[region]).expect("mem table");
        let new_fd = || EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let kicks: Vec<EventFd> = rings.iter().map(|_| new_fd()).collect();
        let calls: Vec<EventFd> = rings.iter().map(|_| new_fd()).collect();
        for (index, &(desc, avail, used)) in rings.iter().enumerate() {
            frontend.set_vring_num(index, 256).expect("vring num");
            let ring = VringConfigData {
                queue_max_size: 256,
                queue_size: 256,
                flags: 0,
                desc_table_addr: host_base + desc,
                used_ring_addr: host_base + used,
                avail_ring_addr: host_base + avail,
                log_addr: None,
            };
            frontend.set_vring_addr(index, &ring).expect("vring addr");
            frontend.set_vring_base(index, 0).expect("vring base");
            frontend.set_vring_call(index, &calls[index]).expect("call");
            frontend.set_vring_kick(index, &kicks[index]).expect("kick");
            frontend.set_vring_enable(index, true).expect("enable");
        }
        (kicks, calls)
    }

    /// hull-blk's vhost-user face end to end, in process: features, queue count and config
    /// space over the protocol, then a guest write travels through a worker thread into the
    /// disk file, and the frontend leaving ends serving.
    #[test]
    fn blk_frontend_negotiates_reads_the_config_and_writes_through_a_worker() {
        use crate::blk::test_utils::{BlkGuest, TempDisk};
        let disk = TempDisk::new("blk-frontend", 2048);
        let dir = TestDir::new("blk-frontend");
        let socket = dir.path().join("vu.sock");
        let mut listener = Listener::new(&socket, true).expect("listener");
        let (_stop_tx, stop) = UnixStream::pair().expect("socketpair");
        let device = Arc::new(BlkDevice::new(
            SyncEngine::open(&disk.path, false, false).expect("disk"),
            false,
            2,
        ));
        let backend_device = Arc::clone(&device);
        let backend = std::thread::spawn(move || {
            serve_blk_frontend(&mut listener, &backend_device, stop.as_fd())
        });

        let (mut frontend, features) = connect_frontend(&socket);
        assert_ne!(features & (1 << 12), 0, "VIRTIO_BLK_F_MQ offered");
        assert_eq!(features & (1 << 5), 0, "not read-only");
        assert_eq!(frontend.get_queue_num().expect("queue num"), 2);
        let (_, config) = frontend
            .get_config(0, 60, VhostUserConfigFlags::empty(), &[0; 60])
            .expect("config");
        assert_eq!(config[..8], 2048u64.to_le_bytes(), "capacity in sectors");
        assert_eq!(config[34..36], 2u16.to_le_bytes(), "num_queues");

        let (mem, file) = shared_test_memory();
        let mem = Arc::new(mem);
        let mut guest = BlkGuest::new(&mem);
        let rings = [guest.ring_addrs(), (0x10_000, 0x11_000, 0x12_000)];
        let (kicks, calls) = share_rings(&mut frontend, &mem, &rings);
        let _keep_open = file;
        let (_, status) = guest.request(1, 4, 1024, false, 0x5c);
        kicks[0].write(1).expect("kick");
        assert!(wait_for(&calls[0]), "the backend signals the request queue");
        assert_eq!(guest.byte(status), 0, "VIRTIO_BLK_S_OK");
        let bytes = disk.bytes();
        assert!(bytes[4 * 512..6 * 512].iter().all(|&b| b == 0x5c));
        assert!(bytes[..4 * 512].iter().all(|&b| b == 0));

        drop(frontend);
        let outcome = backend.join().expect("backend thread").expect("serving");
        assert_eq!(outcome, Outcome::FrontendDisconnected);
        assert_eq!(device.counters().ok, 1);
    }

    const VIRTIO_F_VERSION_1_BIT: u64 = 32;
}
