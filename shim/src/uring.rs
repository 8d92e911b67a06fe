//! The shim's io_uring: the ring that moves container stdio between containerd's FIFOs and
//! the shim, driven by the shim's one event loop thread.
//!
//! The ring's completions wake the loop through its file descriptor, registered with tokio's
//! reactor (as tokio-uring does), so the same thread that serves containerd's ttrpc calls
//! and the agent link reaps them; no thread is added.
//!
//! Why not tokio-uring, which ARCHITECTURE.md names: its operations are `!Send` and must run
//! in its `LocalSet`, while containerd-shim's ttrpc server runs every call in a
//! `tokio::spawn`ed (`Send`) task, so no call could start one; and a tokio-uring operation
//! that is dropped is left in the kernel, not cancelled: an output copy given up on a FIFO
//! nobody reads any more would pin its buffer and descriptor until the shim exits. Here an
//! operation is a `Send` future that owns its buffer and descriptor until the kernel is done
//! with them, and dropping it cancels it (`IORING_OP_ASYNC_CANCEL`). Everything else about the
//! loop is tokio's current-thread runtime, as with tokio-uring.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, squeue, types, IoUring};
use tokio::io::unix::AsyncFd;

/// Submission queue entries: every operation is submitted as soon as it is queued, so this
/// bounds only a burst within one turn of the loop (a full queue is submitted and reused).
const SQ_ENTRIES: u32 = 32;

/// Completion queue entries: operations in flight at once (a running process has up to three:
/// its output writes while a FIFO is full, and its stdin read). More are not lost (the kernel
/// keeps overflowing completions until the queue has room), only slower.
const CQ_ENTRIES: u32 = 256;

/// The `user_data` of cancellation requests, whose own completions are ignored.
const CANCEL: u64 = u64::MAX;

/// The shim's ring, created on first use on the event loop.
static SHIM_RING: OnceLock<Ring> = OnceLock::new();

/// The shim's ring; created (with its driver task on the current tokio runtime) on the first
/// call, which must be made on the event loop. Its completions are reaped by that runtime
/// only, so a process uses it from one runtime (the shim has exactly one); tests that run a
/// runtime each make their own [`Ring`].
pub fn shim_ring() -> io::Result<&'static Ring> {
    if let Some(ring) = SHIM_RING.get() {
        return Ok(ring);
    }
    let ring = Ring::new()?;
    // The loop is one thread, so no other caller can have set it meanwhile; if one did, its
    // ring wins and this one is dropped with its driver (which ends with the last handle).
    Ok(SHIM_RING.get_or_init(|| ring))
}

/// A handle to an io_uring whose completions a task on the current tokio runtime reaps.
#[derive(Clone)]
pub struct Ring {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

struct Shared {
    state: Mutex<State>,
}

struct State {
    ring: IoUring,
    slots: Vec<Slot>,
    free: Vec<usize>,
}

/// What an operation keeps alive until the kernel has finished with it.
struct Keep {
    buf: Vec<u8>,
    _fd: Arc<OwnedFd>,
}

enum Slot {
    Free,
    /// Submitted; the future waits.
    Pending {
        waker: Option<Waker>,
        keep: Keep,
    },
    /// Completed; the future has not yet taken the result.
    Done {
        result: i32,
        keep: Keep,
    },
    /// The future was dropped before completion: a cancellation was asked for, and the
    /// buffer and descriptor wait here for the completion.
    Abandoned {
        _keep: Keep,
    },
}

/// The result of an operation and the buffer it had.
pub type Outcome = (io::Result<usize>, Vec<u8>);

/// The operations the shim submits: stdio copies (READ, WRITE), readiness (POLL_ADD) and the
/// cancellation of dropped operations (ASYNC_CANCEL), with no submission flags.
const OPS: [u8; 4] = [
    opcode::Read::CODE,
    opcode::Write::CODE,
    opcode::PollAdd::CODE,
    opcode::AsyncCancel::CODE,
];

/// A ring that runs only [`OPS`]: anything else, an OPENAT or a CONNECT submitted through a
/// bug, completes with EACCES (see `hull_devices::restricted_ring`). The shim's vCPU threads
/// (the builtin VMM in-process) are under seccomp, which does not see what a ring does, and
/// the shim keeps no more through its ring than it uses.
fn build_ring() -> io::Result<IoUring> {
    hull_devices::restricted_ring::restricted_ring(SQ_ENTRIES, Some(CQ_ENTRIES), &OPS, 0)
}

impl Ring {
    /// Sets up a ring and spawns the task that reaps its completions on the current tokio
    /// runtime (so this must be called inside one, with its I/O driver enabled).
    pub fn new() -> io::Result<Self> {
        let ring = build_ring()?;
        let fd = ring.as_raw_fd();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                ring,
                slots: Vec::new(),
                free: Vec::new(),
            }),
        });
        // SAFETY: the descriptor is the ring's, owned by `shared`; the driver holds `shared`
        // for as long as the registration lives and drops the registration first (see
        // `Driver`), so the descriptor is neither closed nor reused while registered.
        let readiness =
            unsafe { AsyncFd::register_with_interest(RingFd(fd), tokio::io::Interest::READABLE) }?;
        tokio::spawn(
            Driver {
                readiness,
                shared: Arc::clone(&shared),
            }
            .run(),
        );
        Ok(Self { shared })
    }

    /// Operations submitted and not yet completed, including abandoned ones the kernel has
    /// not answered yet.
    pub fn in_flight(&self) -> usize {
        self.shared
            .lock()
            .slots
            .iter()
            .filter(|s| !matches!(s, Slot::Free))
            .count()
    }

    /// Reads up to `buf.len()` bytes from `fd` at its current position (a pipe's only one).
    /// With `nowait`, a read that would wait answers `WouldBlock` instead.
    pub fn read(&self, fd: &Arc<OwnedFd>, mut buf: Vec<u8>, nowait: bool) -> Op {
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let mut entry =
            opcode::Read::new(types::Fd(fd.as_raw_fd()), buf.as_mut_ptr(), len).offset(u64::MAX);
        if nowait {
            entry = entry.rw_flags(libc::RWF_NOWAIT);
        }
        self.start(entry.build(), buf, fd)
    }

    /// Writes `buf[from..]` to `fd` at its current position; the result is how much was
    /// written, which may be less.
    pub fn write(&self, fd: &Arc<OwnedFd>, buf: Vec<u8>, from: usize) -> Op {
        let from = from.min(buf.len());
        let rest = &buf[from..];
        let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
        let entry = opcode::Write::new(types::Fd(fd.as_raw_fd()), rest.as_ptr(), len)
            .offset(u64::MAX)
            .build();
        self.start(entry, buf, fd)
    }

    /// Writes all of `buf` to `fd`, in as many writes as it takes; gives the buffer back.
    pub async fn write_all(&self, fd: &Arc<OwnedFd>, mut buf: Vec<u8>) -> Outcome {
        let mut done = 0;
        while done < buf.len() {
            let (result, back) = self.write(fd, buf, done).await;
            buf = back;
            match result {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => done += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return (Err(err), buf),
            }
        }
        (Ok(done), buf)
    }

    /// Waits until `fd` reports one of `events` (`libc::POLLIN`, ...); the result is the
    /// events it reported.
    pub fn poll(&self, fd: &Arc<OwnedFd>, events: i16) -> Op {
        // The kernel reads the mask as its 32-bit form; poll's bits are all positive.
        let mask = u32::from(events.unsigned_abs());
        let entry = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), mask).build();
        self.start(entry, Vec::new(), fd)
    }

    fn start(&self, entry: squeue::Entry, buf: Vec<u8>, fd: &Arc<OwnedFd>) -> Op {
        let keep = Keep {
            buf,
            _fd: Arc::clone(fd),
        };
        let mut state = self.shared.lock();
        let slot = state.alloc(Slot::Pending { waker: None, keep });
        let entry = entry.user_data(slot as u64);
        match state.push(&entry) {
            Ok(()) => Op {
                shared: Arc::clone(&self.shared),
                slot: Some(slot),
                failed: None,
                cancelled: false,
            },
            Err(err) => {
                // Not queued: nothing of the kernel's refers to the buffer.
                let buf = match std::mem::replace(&mut state.slots[slot], Slot::Free) {
                    Slot::Pending { keep, .. } => keep.buf,
                    _ => Vec::new(),
                };
                state.free.push(slot);
                Op {
                    shared: Arc::clone(&self.shared),
                    slot: None,
                    failed: Some((Err(err), buf)),
                    cancelled: false,
                }
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change under the lock leaves the slots consistent; a panic elsewhere does
        // not make them less so.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the completions the kernel posted and wakes their futures.
    fn reap(&self) {
        let mut wake = Vec::new();
        {
            let mut state = self.lock();
            loop {
                let done: Vec<(u64, i32)> = state
                    .ring
                    .completion()
                    .map(|cqe| (cqe.user_data(), cqe.result()))
                    .collect();
                for (user_data, result) in &done {
                    if *user_data == CANCEL {
                        continue;
                    }
                    if let Some(waker) = state.complete(*user_data, *result) {
                        wake.push(waker);
                    }
                }
                // Completions that did not fit wait in the kernel; entering the ring moves
                // them over. Entries a busy ring refused earlier go in the same way.
                let overflow = state.ring.submission().cq_overflow();
                let unsent = !state.ring.submission().is_empty();
                if !overflow && !unsent {
                    break;
                }
                if let Err(err) = state.ring.submit() {
                    tracing::warn!(%err, "entering the shim's io_uring");
                    break;
                }
                if !overflow && done.is_empty() {
                    break;
                }
            }
        }
        for waker in wake {
            waker.wake();
        }
    }
}

impl State {
    fn alloc(&mut self, slot: Slot) -> usize {
        match self.free.pop() {
            Some(index) => {
                self.slots[index] = slot;
                index
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        }
    }

    /// Queues `entry` and submits it (and anything queued before).
    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        for _ in 0..2 {
            // SAFETY: every entry queued here points at a buffer and a descriptor that its
            // slot keeps alive until the kernel posts the entry's completion (see `Keep`;
            // an abandoned operation keeps them too), and cancellations point at nothing.
            let pushed = unsafe { self.ring.submission().push(entry) }.is_ok();
            if pushed {
                return match self.ring.submit() {
                    Ok(_) => Ok(()),
                    // The entry stays queued: the next submission (or the reaper) sends it.
                    Err(err)
                        if matches!(
                            err.raw_os_error(),
                            Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)
                        ) =>
                    {
                        Ok(())
                    }
                    Err(err) => Err(err),
                };
            }
            // A full queue: send what is in it, then try once more.
            self.ring.submit()?;
        }
        Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "the shim's io_uring submission queue stays full",
        ))
    }

    fn complete(&mut self, user_data: u64, result: i32) -> Option<Waker> {
        let index = usize::try_from(user_data).ok()?;
        let slot = self.slots.get_mut(index)?;
        match std::mem::replace(slot, Slot::Free) {
            Slot::Pending { waker, keep } => {
                *slot = Slot::Done { result, keep };
                waker
            }
            Slot::Abandoned { .. } => {
                self.free.push(index);
                None
            }
            // A completion for a slot not in flight: the kernel does not post one, so this
            // cannot happen; leave the slot as it was.
            other => {
                *slot = other;
                None
            }
        }
    }
}

/// The ring's descriptor, for the reactor (the ring itself owns and closes it).
struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// The task that reaps completions whenever the ring's descriptor says some are there.
struct Driver {
    // Dropped first: the registration goes before the ring it refers to can.
    readiness: AsyncFd<RingFd>,
    shared: Arc<Shared>,
}

impl Driver {
    async fn run(self) {
        loop {
            let mut guard = match self.readiness.readable().await {
                Ok(guard) => guard,
                Err(err) => {
                    tracing::error!(%err, "waiting for the shim's io_uring; its operations stop");
                    return;
                }
            };
            self.shared.reap();
            // A completion posted after the reap above raises the descriptor again, so clearing
            // the readiness here loses nothing.
            guard.clear_ready();
        }
    }
}

/// One operation in flight: a future of its result and its buffer. Dropping it cancels it.
#[must_use = "an operation is cancelled when dropped"]
pub struct Op {
    shared: Arc<Shared>,
    slot: Option<usize>,
    /// The result of an operation that failed before it was queued.
    failed: Option<Outcome>,
    cancelled: bool,
}

impl Op {
    /// Asks the kernel to cancel the operation; the future still gives its result: what it
    /// did if it completed first (a read's data is not lost), or `ECANCELED`.
    pub fn cancel(&mut self) {
        if self.cancelled {
            return;
        }
        let Some(slot) = self.slot else {
            return;
        };
        self.cancelled = true;
        let mut state = self.shared.lock();
        if matches!(state.slots.get(slot), Some(Slot::Pending { .. })) {
            let entry = opcode::AsyncCancel::new(slot as u64)
                .build()
                .user_data(CANCEL);
            if let Err(err) = state.push(&entry) {
                tracing::warn!(%err, "cancelling an io_uring operation");
            }
        }
    }
}

impl Future for Op {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let Some(index) = self.slot else {
            return Poll::Ready(self.failed.take().unwrap_or_else(|| {
                (
                    Err(io::Error::other(
                        "io_uring operation polled after it completed",
                    )),
                    Vec::new(),
                )
            }));
        };
        let mut state = self.shared.lock();
        let Some(slot) = state.slots.get_mut(index) else {
            return Poll::Ready((Err(io::Error::other("lost io_uring slot")), Vec::new()));
        };
        match std::mem::replace(slot, Slot::Free) {
            Slot::Done { result, keep } => {
                state.free.push(index);
                drop(state);
                self.slot = None;
                let result = if result < 0 {
                    Err(io::Error::from_raw_os_error(-result))
                } else {
                    Ok(usize::try_from(result).unwrap_or(0))
                };
                Poll::Ready((result, keep.buf))
            }
            Slot::Pending { keep, .. } => {
                *slot = Slot::Pending {
                    waker: Some(cx.waker().clone()),
                    keep,
                };
                Poll::Pending
            }
            other => {
                *slot = other;
                Poll::Ready((
                    Err(io::Error::other("io_uring slot not in flight")),
                    Vec::new(),
                ))
            }
        }
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        let Some(index) = self.slot.take() else {
            return;
        };
        let mut state = self.shared.lock();
        let Some(slot) = state.slots.get_mut(index) else {
            return;
        };
        match std::mem::replace(slot, Slot::Free) {
            Slot::Pending { keep, .. } => {
                *slot = Slot::Abandoned { _keep: keep };
                if !self.cancelled {
                    let entry = opcode::AsyncCancel::new(index as u64)
                        .build()
                        .user_data(CANCEL);
                    if let Err(err) = state.push(&entry) {
                        tracing::warn!(%err, "cancelling a dropped io_uring operation");
                    }
                }
            }
            // Completed but never taken: nothing of the kernel's refers to it any more.
            Slot::Done { .. } => state.free.push(index),
            other => *slot = other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    use futures_util::FutureExt;

    use super::*;

    /// A pipe: the read end and the write end.
    fn pipe() -> (Arc<OwnedFd>, Arc<OwnedFd>) {
        let (read, write) = std::io::pipe().expect("pipe");
        (
            Arc::new(OwnedFd::from(read)),
            Arc::new(OwnedFd::from(write)),
        )
    }

    /// The ring runs what the shim submits and refuses anything else: an open through it
    /// completes with EACCES, the file never created.
    #[test]
    fn the_ring_refuses_operations_the_shim_does_not_make() {
        let mut ring = build_ring().expect("ring");
        let dir = tempfile::tempdir().expect("dir");
        let path = std::ffi::CString::new(dir.path().join("opened").as_os_str().as_encoded_bytes())
            .expect("path");
        let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
            .flags(libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC)
            .mode(0o600)
            .build();
        let (read_end, write_end) = pipe();
        let byte = [7u8];
        let write = opcode::Write::new(types::Fd(write_end.as_raw_fd()), byte.as_ptr(), 1).build();
        for (entry, expected) in [(open, -libc::EACCES), (write, 1)] {
            // SAFETY: the path and the byte outlive the wait below, which reaps the entry.
            unsafe { ring.submission().push(&entry).expect("room") };
            ring.submit_and_wait(1).expect("io_uring_enter");
            let result = ring.completion().next().expect("a completion").result();
            assert_eq!(result, expected);
        }
        assert!(
            !dir.path().join("opened").exists(),
            "the refused open created nothing"
        );
        let mut got = [0u8; 1];
        std::fs::File::from(Arc::try_unwrap(read_end).expect("sole owner"))
            .read_exact(&mut got)
            .expect("the allowed write arrived");
        assert_eq!(got, byte);
    }

    /// Waits (turning the loop) until no operation is in flight; fails after a long while.
    async fn settle(ring: &Ring) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while ring.in_flight() > 0 {
            assert!(
                Instant::now() < deadline,
                "{} operations still in flight",
                ring.in_flight()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_write_and_a_read_cross_a_pipe_and_leave_nothing_in_flight() {
        let ring = Ring::new().unwrap();
        let (r, w) = pipe();
        let (written, _) = ring.write_all(&w, b"hello, ring".to_vec()).await;
        assert_eq!(written.unwrap(), 11);
        let (read, buf) = ring.read(&r, vec![0; 64], false).await;
        let n = read.unwrap();
        assert_eq!(&buf[..n], b"hello, ring");
        assert_eq!(ring.in_flight(), 0);
        assert_eq!(
            Arc::strong_count(&r),
            1,
            "the ring let go of the descriptor"
        );
    }

    #[tokio::test]
    async fn a_read_waits_in_the_kernel_until_data_comes() {
        let ring = Ring::new().unwrap();
        let (r, w) = pipe();
        let mut read = ring.read(&r, vec![0; 64], false);
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert!(
            (&mut read).now_or_never().is_none(),
            "nothing was written yet"
        );
        let writer = std::thread::spawn(move || {
            let mut file = std::fs::File::from(Arc::try_unwrap(w).unwrap());
            file.write_all(b"late").unwrap();
        });
        let (result, buf) = read.await;
        writer.join().unwrap();
        assert_eq!(&buf[..result.unwrap()], b"late");
    }

    #[tokio::test]
    async fn a_write_larger_than_the_pipe_is_written_whole() {
        let ring = Ring::new().unwrap();
        let (r, w) = pipe();
        let data: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let reader = std::thread::spawn(move || {
            let mut file = std::fs::File::from(Arc::try_unwrap(r).unwrap());
            let mut all = Vec::new();
            file.read_to_end(&mut all).unwrap();
            all
        });
        let (written, _) = ring.write_all(&w, data).await;
        assert_eq!(written.unwrap(), expected.len());
        drop(w);
        assert!(
            reader.join().unwrap() == expected,
            "the reader got other bytes"
        );
    }

    #[tokio::test]
    async fn a_dropped_read_is_cancelled_and_lets_go_of_its_buffer_and_descriptor() {
        let ring = Ring::new().unwrap();
        let (r, _w) = pipe();
        let read = ring.read(&r, vec![0; 4096], false);
        assert_eq!(ring.in_flight(), 1);
        drop(read);
        settle(&ring).await;
        assert_eq!(Arc::strong_count(&r), 1);
    }

    #[tokio::test]
    async fn a_dropped_write_on_a_full_pipe_is_cancelled() {
        let ring = Ring::new().unwrap();
        let (_r, w) = pipe();
        // A pipe of one page, filled: nobody reads, so the next write waits in the kernel.
        // SAFETY: F_SETPIPE_SZ on a descriptor this test owns.
        let size = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
        assert!(size >= 4096);
        let full = usize::try_from(size).unwrap();
        let (filled, _) = ring.write_all(&w, vec![1; full]).await;
        assert_eq!(filled.unwrap(), full);
        let mut write = ring.write(&w, vec![7; 1024], 0);
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert!(
            (&mut write).now_or_never().is_none(),
            "a full pipe takes nothing"
        );
        drop(write);
        settle(&ring).await;
        assert_eq!(Arc::strong_count(&w), 1);
    }

    #[tokio::test]
    async fn a_cancelled_read_answers_that_it_was_cancelled() {
        let ring = Ring::new().unwrap();
        let (r, _w) = pipe();
        let mut read = ring.read(&r, vec![0; 16], false);
        read.cancel();
        let (result, buf) = read.await;
        assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::ECANCELED));
        assert_eq!(buf.len(), 16, "the buffer comes back");
        assert_eq!(ring.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_nowait_read_of_an_empty_pipe_would_block() {
        let ring = Ring::new().unwrap();
        let (r, _w) = pipe();
        let (result, _) = ring.read(&r, vec![0; 16], true).await;
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }

    #[tokio::test]
    async fn a_fifo_without_a_writer_is_polled_until_one_writes() {
        let ring = Ring::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdin");
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path that lives across the call.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        let r = Arc::new(OwnedFd::from(reader));
        let mut ready = ring.poll(&r, libc::POLLIN);
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert!(
            (&mut ready).now_or_never().is_none(),
            "a FIFO that never had a writer is not readable"
        );
        let mut writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        writer.write_all(b"in").unwrap();
        let (events, _) = ready.await;
        assert_ne!(events.unwrap() & libc::POLLIN as usize, 0);
        let (read, buf) = ring.read(&r, vec![0; 8], false).await;
        assert_eq!(&buf[..read.unwrap()], b"in");
    }

    use std::os::unix::fs::OpenOptionsExt;
}
