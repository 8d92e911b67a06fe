//! The io_uring engine: one ring per queue (a queue's worker thread is the only user of its
//! ring, so its lock is never contended), with the queue's requests **in flight across
//! kicks**: a pass over the queue submits what it finds in small groups as it parses them
//! ([`DEFAULT_SUBMIT_BATCH`]) and returns without waiting, and each request goes back to the
//! guest when its own I/O completes (the ring's descriptor is one of the worker's events, see
//! [`UringQueues::ring_fd`]). The disk
//! keeps up to [`RING_DEPTH`] requests of a queue busy, not one batch at a time: a batch that
//! waited for its slowest request left the disk idle meanwhile, and a request that arrived
//! meanwhile waited for the whole batch.
//!
//! Data moves with `readv`/`writev` straight between the file and guest memory: the iovecs
//! point into the guest's mapping, and every request in flight holds that mapping (an `Arc`
//! of the memory it was parsed against), so a memory update from the frontend cannot unmap
//! it under the kernel. A flush is submitted with `IOSQE_IO_DRAIN`, so it starts after every
//! write submitted before it on the queue completed.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use io_uring::{opcode, squeue, types, IoUring};
use tracing::warn;
use vm_memory::GuestMemoryBackend;

use crate::blk::request::{Request, RequestType, SECTOR_SIZE};
use crate::vsock::packet::Mem;

/// Requests of one queue in flight at most (its ring's submission entries); a pass that finds
/// more waits for the first completions to make room.
pub const RING_DEPTH: u32 = 128;

/// Requests a pass over a queue hands to the kernel per `io_uring_enter` while it parses the
/// guest's requests (hull-blk's `--submit-batch`); what is left at the end of the pass goes
/// in one more call.
///
/// Two, not the whole pass: the kernel puts a submission of more than two entries under one
/// block plug (`io_submit_state_start`: `need_plug = max_ios > 2`), which holds every request
/// of it back until the last is queued, and then rings the disk once. A pass of 32 requests
/// submitted together kept the disk idle while all 32 were prepared, and the requests then
/// came back together, so the next pass did the same: the queue ran in lock-step. Measured
/// with host fio alone on the same disk (perf/RESULTS.md, "`blk`: both goals met by
/// submitting in pairs"): 32 per submission, each batch waited for whole, made 54–62 k IOPS at
/// QD32 against 71–72 k with one per submission; hull-blk went from 0.76× host fio to 0.93×
/// by submitting in pairs, for about one more system call per two requests (CPU per request
/// still 0.25× qemu-storage-daemon's).
pub const DEFAULT_SUBMIT_BATCH: usize = 2;

/// Most iovecs one `readv`/`writev` takes (Linux's `IOV_MAX`); a request with more buffers is
/// left to the synchronous engine.
const IOV_MAX: usize = 1024;

/// One io_uring per queue, for one backing file.
pub struct UringQueues {
    rings: Vec<Mutex<QueueRing>>,
}

impl std::fmt::Debug for UringQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringQueues")
            .field("rings", &self.rings.len())
            .finish()
    }
}

impl UringQueues {
    /// Rings for `queues` queues doing I/O on `file`, which must outlive them (the device owns
    /// both).
    pub fn new(queues: usize, file: &impl AsRawFd) -> io::Result<Self> {
        Self::with_depth(queues, file, RING_DEPTH)
    }

    /// [`Self::new`] with `depth` requests in flight per queue at most.
    pub fn with_depth(queues: usize, file: &impl AsRawFd, depth: u32) -> io::Result<Self> {
        let rings = (0..queues)
            .map(|_| {
                // The ring can do reads, writes and flushes and nothing else (see
                // crate::restricted_ring): hull-blk's seccomp filter lets it call
                // io_uring_enter.
                let ring = crate::restricted_ring::restricted_ring(
                    depth,
                    None,
                    &[
                        opcode::Readv::CODE,
                        opcode::Writev::CODE,
                        opcode::Fsync::CODE,
                    ],
                    squeue::Flags::IO_DRAIN.bits(),
                )?;
                Ok(Mutex::new(QueueRing::new(ring, file.as_raw_fd(), depth)))
            })
            .collect::<io::Result<_>>()?;
        Ok(Self { rings })
    }

    /// Queue `index`'s ring, locked (by its worker thread, the only one that uses it).
    pub fn queue(&self, index: usize) -> Option<MutexGuard<'_, QueueRing>> {
        self.rings.get(index)?.lock().ok()
    }

    /// The descriptor of queue `index`'s ring: readable while completions wait to be reaped
    /// (io_uring supports poll), so the queue's worker waits for them in its event loop.
    pub fn ring_fd(&self, index: usize) -> Option<RawFd> {
        Some(self.queue(index)?.ring.as_raw_fd())
    }

    /// Waits for every request in flight on every ring and drops them unanswered: for the
    /// end of a frontend (its queues are gone; a later frontend must not get its answers).
    pub fn quiesce(&self) -> usize {
        self.rings
            .iter()
            .filter_map(|ring| ring.lock().ok())
            .map(|mut ring| {
                let mut dropped = 0;
                ring.drain(|_, _| dropped += 1);
                dropped
            })
            .sum()
    }
}

/// A request in flight: its chain, the iovecs the kernel reads or writes, and the guest
/// memory they point into.
pub struct InFlight {
    /// Head index of its descriptor chain.
    pub head: u16,
    /// The request.
    pub request: Request,
    /// Read by the kernel, not by us: kept here until the request completes.
    _iovecs: Iovecs,
    /// The mapping the iovecs point into, kept mapped until the request completes.
    _mem: Arc<Mem>,
}

/// The iovecs of a request in flight: addresses in the guest's mapping for the kernel.
struct Iovecs(#[allow(dead_code)] Vec<libc::iovec>);

// SAFETY: the pointers are never dereferenced by us, only handed to the kernel; they point
// into the guest memory that the same `InFlight` keeps mapped (its `Arc<Mem>`), which does
// not depend on the thread holding them. A ring and its requests are used by one thread at a
// time (behind the queue's mutex).
unsafe impl Send for Iovecs {}

/// One queue's ring and the requests in flight on it.
pub struct QueueRing {
    ring: IoUring,
    fd: RawFd,
    /// Requests in flight, by the slot their entry's `user_data` names.
    slots: Vec<Option<InFlight>>,
    /// Free slots.
    free: Vec<usize>,
}

impl QueueRing {
    fn new(ring: IoUring, fd: RawFd, depth: u32) -> Self {
        let depth = depth as usize;
        Self {
            ring,
            fd,
            slots: (0..depth).map(|_| None).collect(),
            free: (0..depth).rev().collect(),
        }
    }

    /// Whether the ring has room for no further request.
    pub fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    /// Requests queued, not yet handed to the kernel.
    pub fn queued(&mut self) -> usize {
        self.ring.submission().len()
    }

    /// Hands the queued requests to the kernel once there are `batch` of them (see
    /// [`DEFAULT_SUBMIT_BATCH`]); fewer stay queued for the next call or [`Self::submit`].
    pub fn submit_every(&mut self, batch: usize) {
        if self.queued() >= batch {
            self.submit();
        }
    }

    /// Requests in flight (queued or submitted, not yet reaped).
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether requests of `kind` go through the ring.
    pub fn takes(kind: RequestType) -> bool {
        matches!(
            kind,
            RequestType::In | RequestType::Out | RequestType::Flush
        )
    }

    /// Queues `request` (IN, OUT or FLUSH; [`Self::takes`] says which) of chain `head`,
    /// whose buffers are in `mem`; [`Self::submit`] hands it to the kernel. Returns the
    /// request back if it cannot be queued (another type, a full ring, or a buffer guest
    /// memory cannot map), for the synchronous engine to serve.
    pub fn push(&mut self, head: u16, request: Request, mem: &Arc<Mem>) -> Result<(), Request> {
        if !Self::takes(request.kind) {
            return Err(request);
        }
        let Some(slot) = self.free.last().copied() else {
            return Err(request);
        };
        let Some(iovecs) = iovecs(mem, &request).filter(|v| v.len() <= IOV_MAX) else {
            return Err(request);
        };
        let Ok(count) = u32::try_from(iovecs.len()) else {
            return Err(request);
        };
        let fd = types::Fd(self.fd);
        let offset = request.sector.saturating_mul(u64::from(SECTOR_SIZE));
        let entry = match request.kind {
            RequestType::In => opcode::Readv::new(fd, iovecs.as_ptr(), count)
                .offset(offset)
                .build(),
            RequestType::Out => opcode::Writev::new(fd, iovecs.as_ptr(), count)
                .offset(offset)
                .build(),
            _ => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .flags(squeue::Flags::IO_DRAIN),
        };
        // SAFETY: the entry's iovecs live in the slot's `InFlight` (a heap buffer that does
        // not move with it) until the entry's completion is reaped, and point into guest
        // memory that the slot's `Arc<Mem>` keeps mapped until then; the slot is not reused
        // before that completion (it is only freed in `reap`); the file descriptor belongs to
        // the device, which outlives its rings.
        let pushed = unsafe { self.ring.submission().push(&entry.user_data(slot as u64)) };
        if pushed.is_err() {
            return Err(request);
        }
        self.free.pop();
        self.slots[slot] = Some(InFlight {
            head,
            request,
            _iovecs: Iovecs(iovecs),
            _mem: Arc::clone(mem),
        });
        Ok(())
    }

    /// Hands every queued request to the kernel, without waiting for any. An entry the
    /// kernel did not take stays queued for the next call (the ring is never left with
    /// requests nobody submits: every pass and every completion event calls this).
    pub fn submit(&mut self) {
        if self.ring.submission().is_empty() {
            // Nothing to hand over: no system call (each completion event calls this, and
            // most have nothing queued).
            return;
        }
        loop {
            match self.ring.submit() {
                Ok(_) => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    // EAGAIN/EBUSY: the kernel has no room now; completions make room and
                    // their event submits again.
                    warn!(%err, queued = self.ring.submission().len(), "io_uring submission deferred");
                    return;
                }
            }
        }
    }

    /// Reaps the completions that are there (after waiting for at least one when `wait` and
    /// a request is in flight), handing each request with its result (bytes transferred,
    /// or the error) to `done`, in completion order. Returns how many it reaped.
    pub fn reap(&mut self, wait: bool, mut done: impl FnMut(InFlight, io::Result<usize>)) -> usize {
        if wait && self.in_flight() > 0 {
            loop {
                match self.ring.submit_and_wait(1) {
                    Ok(_) => break,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => {
                        warn!(%err, "waiting for io_uring completions");
                        break;
                    }
                }
            }
        }
        let mut reaped = 0;
        // The completion queue borrows the ring alone: the slots and `done` are apart from it,
        // so each entry is handed on as it is read, with nothing collected first.
        for entry in self.ring.completion() {
            let result = entry.result();
            let Some((slot, in_flight)) = usize::try_from(entry.user_data())
                .ok()
                .and_then(|slot| Some((slot, self.slots.get_mut(slot)?.take()?)))
            else {
                continue;
            };
            self.free.push(slot);
            let result = usize::try_from(result).map_err(|_| io::Error::from_raw_os_error(-result));
            reaped += 1;
            done(in_flight, result);
        }
        reaped
    }

    /// Submits what is queued and waits until nothing is in flight, handing each request to
    /// `done` as [`Self::reap`] does.
    pub fn drain(&mut self, mut done: impl FnMut(InFlight, io::Result<usize>)) {
        self.submit();
        while self.in_flight() > 0 {
            if self.reap(true, &mut done) == 0 && self.ring.submission().is_empty() {
                // Nothing came back although the kernel has every entry: the ring broke.
                // The requests stay unanswered, and their memory mapped (leaked) rather than
                // unmapped under a kernel that may still write into it.
                warn!(
                    in_flight = self.in_flight(),
                    "io_uring lost requests; keeping their memory"
                );
                for slot in &mut self.slots {
                    if let Some(in_flight) = slot.take() {
                        std::mem::forget(in_flight);
                    }
                }
                self.free = (0..self.slots.len()).collect();
                return;
            }
            self.submit();
        }
    }
}

impl Drop for QueueRing {
    fn drop(&mut self) {
        // Never leave the kernel writing into guest memory nothing pins any more.
        self.drain(|_, _| {});
    }
}

/// The host iovecs of a request's data buffers in `mem`.
fn iovecs(mem: &Mem, request: &Request) -> Option<Vec<libc::iovec>> {
    let mut iovecs = Vec::with_capacity(request.data.len());
    for buf in &request.data {
        for slice in mem.get_slices(buf.addr, buf.len) {
            let slice = slice.ok()?;
            iovecs.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
    }
    Some(iovecs)
}
