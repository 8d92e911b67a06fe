//! The io_uring engine: one ring per queue (a queue's worker thread is the only user of its
//! ring, so its lock is never contended), and [`Batch`], the reads, writes and flushes of one
//! kick submitted with one `io_uring_enter` and reaped together.
//!
//! Data moves with `readv`/`writev` straight between the file and guest memory: the iovecs
//! point into the guest's mapping, which outlives the batch (the batch borrows the memory
//! guard). A flush is submitted with `IOSQE_IO_DRAIN`, so it starts after the batch's earlier
//! writes completed.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Mutex, MutexGuard};

use io_uring::{opcode, squeue, types, IoUring};
use vm_memory::GuestMemoryBackend;

use crate::blk::request::{Request, RequestType, SECTOR_SIZE};
use crate::vsock::packet::Mem;

/// Submission queue entries per ring; a batch that fills it is submitted and reaped before
/// the next request is queued.
pub const RING_DEPTH: u32 = 128;

/// Most iovecs one `readv`/`writev` takes (Linux's `IOV_MAX`); a request with more buffers is
/// left to the synchronous engine.
const IOV_MAX: usize = 1024;

/// One io_uring per queue, for one backing file.
pub struct UringQueues {
    rings: Vec<Mutex<IoUring>>,
    fd: RawFd,
}

impl std::fmt::Debug for UringQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringQueues")
            .field("rings", &self.rings.len())
            .field("fd", &self.fd)
            .finish()
    }
}

impl UringQueues {
    /// Rings for `queues` queues doing I/O on `file`, which must outlive them (the device owns
    /// both).
    pub fn new(queues: usize, file: &impl AsRawFd) -> io::Result<Self> {
        let rings = (0..queues)
            .map(|_| {
                // The ring can do what a batch does and nothing else (see
                // crate::restricted_ring): hull-blk's seccomp filter lets it call io_uring_enter.
                crate::restricted_ring::restricted_ring(
                    RING_DEPTH,
                    None,
                    &[
                        opcode::Readv::CODE,
                        opcode::Writev::CODE,
                        opcode::Fsync::CODE,
                    ],
                    squeue::Flags::IO_DRAIN.bits(),
                )
                .map(Mutex::new)
            })
            .collect::<io::Result<_>>()?;
        Ok(Self {
            rings,
            fd: file.as_raw_fd(),
        })
    }

    /// An empty batch on queue `index`'s ring, over guest memory `mem`.
    pub fn batch<'a>(&'a self, index: usize, mem: &'a Mem) -> Option<Batch<'a>> {
        let ring = self.rings.get(index)?.lock().ok()?;
        Some(Batch {
            ring,
            fd: self.fd,
            mem,
            pending: Vec::new(),
        })
    }
}

/// A request in flight: its chain, and the iovecs the kernel reads or writes.
pub struct Pending {
    /// Head index of its descriptor chain.
    pub head: u16,
    /// The request.
    pub request: Request,
    /// Read by the kernel, not by us: kept here until the request completes.
    _iovecs: Vec<libc::iovec>,
}

/// The requests of one kick, queued on a ring and submitted together.
pub struct Batch<'a> {
    ring: MutexGuard<'a, IoUring>,
    fd: RawFd,
    mem: &'a Mem,
    pending: Vec<Pending>,
}

impl Batch<'_> {
    /// Whether the ring has room for no further request.
    pub fn is_full(&self) -> bool {
        self.pending.len() >= RING_DEPTH as usize
    }

    /// Whether no request is queued.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Queues `request` (IN, OUT or FLUSH; [`Self::takes`] says which) of chain `head`.
    /// Returns the request back if it cannot be queued (another type, a full ring, or a
    /// buffer guest memory cannot map), for the synchronous engine to serve.
    pub fn push(&mut self, head: u16, request: Request) -> Result<(), Request> {
        if !Self::takes(request.kind) || self.is_full() {
            return Err(request);
        }
        let Some(iovecs) = self.iovecs(&request).filter(|v| v.len() <= IOV_MAX) else {
            return Err(request);
        };
        let Ok(count) = u32::try_from(iovecs.len()) else {
            return Err(request);
        };
        let user_data = self.pending.len() as u64;
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
        // SAFETY: the entry's iovecs live in `self.pending` (a heap buffer that does not move
        // when `pending` grows) until the entry completes in `complete`, and point into guest
        // memory that `self.mem` keeps mapped for the batch's lifetime; the file descriptor
        // belongs to the device, which outlives its rings.
        let pushed = unsafe { self.ring.submission().push(&entry.user_data(user_data)) };
        if pushed.is_err() {
            return Err(request);
        }
        self.pending.push(Pending {
            head,
            request,
            _iovecs: iovecs,
        });
        Ok(())
    }

    /// Whether requests of `kind` go through the ring.
    pub fn takes(kind: RequestType) -> bool {
        matches!(
            kind,
            RequestType::In | RequestType::Out | RequestType::Flush
        )
    }

    /// Submits every queued request, waits for all of them, and hands each with its result
    /// (bytes transferred, or the error) to `done`, in completion order.
    pub fn complete(&mut self, mut done: impl FnMut(&Pending, io::Result<usize>)) {
        let total = self.pending.len();
        let mut results: Vec<Option<io::Result<usize>>> = (0..total).map(|_| None).collect();
        let mut reaped = 0;
        while reaped < total {
            match self.ring.submit_and_wait(total - reaped) {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    // The ring itself failed: nothing more completes; fail what is left.
                    let kind = err.kind();
                    for slot in results.iter_mut().filter(|r| r.is_none()) {
                        *slot = Some(Err(io::Error::new(kind, "io_uring submission failed")));
                    }
                    break;
                }
            }
            for entry in self.ring.completion() {
                let result = entry.result();
                let slot = usize::try_from(entry.user_data())
                    .ok()
                    .and_then(|i| results.get_mut(i));
                if let Some(slot @ None) = slot {
                    *slot = Some(match usize::try_from(result) {
                        Ok(n) => Ok(n),
                        Err(_) => Err(io::Error::from_raw_os_error(-result)),
                    });
                    reaped += 1;
                }
            }
        }
        for (pending, result) in self.pending.iter().zip(results) {
            done(
                pending,
                result.unwrap_or_else(|| Err(io::ErrorKind::Other.into())),
            );
        }
        self.pending.clear();
    }

    /// The host iovecs of a request's data buffers.
    fn iovecs(&self, request: &Request) -> Option<Vec<libc::iovec>> {
        let mut iovecs = Vec::with_capacity(request.data.len());
        for buf in &request.data {
            for slice in self.mem.get_slices(buf.addr, buf.len) {
                let slice = slice.ok()?;
                iovecs.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                });
            }
        }
        Some(iovecs)
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        // Never leave the kernel writing into guest memory the batch no longer pins.
        if !self.pending.is_empty() {
            self.complete(|_, _| {});
        }
    }
}
