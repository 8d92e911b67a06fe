//! The `vhost_user_msg` target: vhost-user frontend messages served by hull's backends the
//! way `hull-vsock` and `hull-blk` serve them (`vhost-user-backend`'s daemon on a unix
//! socket, with the device behind it), optionally through hull-net's frontend relay in
//! front, as `hull-net` serves.
//!
//! A panic on any of the daemon's threads (the request handler or a queue worker) is a
//! backend that a frontend can kill: under libFuzzer, and in the smoke test, a panic anywhere
//! aborts the process and is reported.
//!
//! Messages carry eventfds where the input says so, never memory files: a SET_MEM_TABLE
//! region that reaches past the end of its file makes the backend fault (SIGBUS) on its
//! first ring access, as vhost-user-backend 0.24 maps what the frontend claims without
//! checking the file's size (found by this target). The frontend is hull's VMM or QEMU,
//! trusted like the host user (SECURITY.md), so that is not a guest's way in; the target
//! looks for the others.

use std::io::{IoSlice, Read};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use hull_devices::blk::{BlkBackend, BlkDevice, SyncEngine};
use hull_devices::net::frontend_relay;
use hull_devices::vsock::backend::{VsockBackend, BACKEND_EVENT};
use hull_devices::vsock::device::VsockDevice;
use hull_devices::vsock::muxer::Muxer;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::input::Input;

/// Bytes of hull-blk's disk.
const DISK_SIZE: u64 = 0x1_0000;

/// A directory of this process for the sockets, removed on drop.
struct SocketDir(PathBuf);

impl SocketDir {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "hull-fuzz-vhost-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("creating the socket directory");
        Self(path)
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One `sendmsg` of the frontend: bytes of the stream, and the descriptors riding on it.
struct Chunk<'a> {
    bytes: &'a [u8],
    eventfds: usize,
}

fn chunks<'a>(input: &mut Input<'a>) -> Vec<Chunk<'a>> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let sel = input.u8();
        let len = usize::from(input.u8());
        out.push(Chunk {
            bytes: input.bytes(len),
            eventfds: usize::from(sel & 3),
        });
    }
    out
}

/// A memory file for hull-blk's disk.
fn memfd() -> Option<std::fs::File> {
    let fd = nix::sys::memfd::memfd_create(
        c"hull-fuzz-guest",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .ok()?;
    let file = std::fs::File::from(fd);
    file.set_len(DISK_SIZE).ok()?;
    Some(file)
}

/// Writes `chunks` as the frontend, then reads the replies until the backend hangs up.
fn play(stream: &UnixStream, chunks: &[Chunk<'_>]) {
    for chunk in chunks {
        let events: Vec<EventFd> = (0..chunk.eventfds)
            .filter_map(|_| EventFd::new(libc::EFD_NONBLOCK).ok())
            .collect();
        let fds: Vec<RawFd> = events.iter().map(AsRawFd::as_raw_fd).collect();
        let rights = [ControlMessage::ScmRights(&fds)];
        let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
        let iov = [IoSlice::new(chunk.bytes)];
        if chunk.bytes.is_empty() && fds.is_empty() {
            continue;
        }
        if sendmsg::<()>(
            stream.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .is_err()
        {
            // The backend hung up (a message it refused): what is left is not read.
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
    let mut replies = Vec::new();
    let _ = (&mut &*stream).read_to_end(&mut replies);
}

fn blk_device() -> Arc<BlkDevice> {
    static DEVICE: OnceLock<(Arc<BlkDevice>, std::fs::File)> = OnceLock::new();
    let (device, _) = DEVICE.get_or_init(|| {
        let file = memfd().expect("memfd for the fuzz disk");
        let path = format!("/proc/self/fd/{}", file.as_raw_fd());
        let engine = SyncEngine::open(std::path::Path::new(&path), false, false)
            .expect("opening the fuzz disk");
        (Arc::new(BlkDevice::new(engine, false, 2)), file)
    });
    Arc::clone(device)
}

/// Serves one frontend, playing `chunks`, with `backend` behind the daemon (and the relay
/// in front of it if `relayed`). `setup` runs on the daemon before it accepts.
fn serve<S>(
    dir: &SocketDir,
    backend: S,
    relayed: bool,
    chunks: &[Chunk<'_>],
    setup: impl FnOnce(&VhostUserDaemon<S>),
) where
    S: VhostUserBackend<Bitmap = (), Vring = VringRwLock> + Clone + 'static,
{
    let path = dir.0.join("backend.sock");
    let mut listener = Listener::new(&path, true).expect("listening for the frontend");
    let memory = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let mut daemon = VhostUserDaemon::new("hull-fuzz".into(), backend, memory).expect("daemon");
    setup(&daemon);
    let to_daemon = UnixStream::connect(&path).expect("connecting to the backend");
    daemon.start(&mut listener).expect("accepting the frontend");
    if relayed {
        let (frontend, relay_end) = UnixStream::pair().expect("socket pair");
        std::thread::scope(|scope| {
            frontend_relay::relay(scope, relay_end, to_daemon).expect("starting the relay");
            play(&frontend, chunks);
            let _ = frontend.shutdown(Shutdown::Both);
        });
    } else {
        play(&to_daemon, chunks);
    }
    // An error is the frontend's fault and ends its connection; a panic of the handler
    // thread is a crash of the backend.
    if let Err(vhost_user_backend::Error::WaitDaemon(panic)) = daemon.wait() {
        std::panic::resume_unwind(panic);
    }
    for handler in daemon.get_epoll_handlers() {
        handler.send_exit_event();
    }
}

/// The eventfds this process has open.
fn eventfds() -> Vec<RawFd> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            (target.as_os_str() == "anon_inode:[eventfd]")
                .then(|| entry.file_name().to_str()?.parse().ok())
                .flatten()
        })
        .collect()
}

/// Closes the eventfds a finished daemon left open. vhost-user-backend 0.24 registers each
/// worker's exit event with `into_raw_fd()` and never closes it (event_loop.rs), so every
/// frontend connection leaks one descriptor per worker thread: in hull-blk and hull-vsock
/// with `--keep-listening`, one or two per reconnection; here, one or two per input, which
/// would end a fuzzing run with EMFILE after some 10,000 inputs.
fn close_leaked(before: &[RawFd]) {
    for fd in eventfds() {
        if !before.contains(&fd) {
            // SAFETY: `fd` is an eventfd opened since `before` was taken, while this input's
            // daemon ran; the daemon and every thread it started are gone, and the process
            // opens eventfds only through them and `play` (whose own are dropped), so
            // nothing holds this descriptor any more.
            unsafe { libc::close(fd) };
        }
    }
}

/// `vhost_user_msg`: the input is a selector (which backend; relayed or not), then chunks of
/// the frontend's byte stream, each with a selector saying how many eventfds (0 to 3) ride on
/// it, as kick/call/err messages carry them.
pub fn vhost_user_msg(data: &[u8]) {
    let mut input = Input::new(data);
    let sel = input.u8();
    let chunks = chunks(&mut input);
    // The disk (and its io_uring) lives as long as the process: made before the snapshot.
    let disk = blk_device();
    let before = eventfds();
    let dir = SocketDir::new();
    let relayed = sel & 2 != 0;
    if sel & 1 == 0 {
        let muxer = Muxer::new(&dir.0.join("v.sock"), 3).expect("muxer");
        let mut backend = VsockBackend::new(VsockDevice::new(muxer), 3);
        let host_fd = backend.host_event_fd();
        let backend = Arc::new(RwLock::new(backend));
        serve(&dir, backend, relayed, &chunks, |daemon| {
            for handler in daemon.get_epoll_handlers() {
                let _ = handler.register_listener(host_fd, EventSet::IN, u64::from(BACKEND_EVENT));
            }
        });
    } else {
        let backend = Arc::new(BlkBackend::new(disk));
        serve(&dir, backend, relayed, &chunks, |_| {});
    }
    close_leaked(&before);
}
