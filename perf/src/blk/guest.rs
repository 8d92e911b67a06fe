//! The fake guest: hull-bench as the vhost-user-blk frontend and virtio driver of a backend,
//! with no VM in the way. It shares memfd guest memory with the backend (the `vhost` crate's
//! frontend sends the memory table and the vring addresses), writes virtio-blk requests
//! (header, data buffer, status byte) into one split virtqueue, kicks the backend through an
//! eventfd and waits on the call eventfd for the used ring.
//!
//! virtio-queue implements the device side of a queue only; the driver side, a few lines of
//! ring arithmetic, is written here with its descriptor and used-element layouts.
//!
//! The driver negotiates VERSION_1 and the vhost-user protocol features, and nothing else:
//! no EVENT_IDX (every used buffer is signalled, every batch kicked unless the backend set
//! VRING_USED_F_NO_NOTIFY, which it honours as Linux does) and no indirect descriptors, the
//! same for every backend it measures. Whatever the backend writes into the
//! used ring is checked before use: a used element must name a request in flight, and every
//! request must end with VIRTIO_BLK_S_OK.

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, Le32};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Op, Pattern, Workload};
use crate::measure::Trial;
use crate::{Error, Result};

/// Entries of the one request queue.
const QUEUE_SIZE: u16 = 256;
/// Descriptors per request: header, data, status.
const DESCS_PER_REQUEST: u16 = 3;
/// Most requests in flight: every request owns three descriptors.
pub const MAX_DEPTH: u16 = QUEUE_SIZE / DESCS_PER_REQUEST;
/// Largest data buffer of one request, in bytes.
pub const MAX_BLOCK: u64 = 128 << 10;

/// Guest-physical layout: rings, then request headers and status bytes, then data buffers.
const DESC_TABLE: u64 = 0x0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;
const HEADERS: u64 = 0x3000;
/// Bytes of a request's header slot: 16 bytes of virtio-blk header, then the status byte.
const HEADER_SLOT: u64 = 32;
const DATA: u64 = 0x10000;
const MEMORY_SIZE: u64 = DATA + MAX_DEPTH as u64 * MAX_BLOCK;

/// A failed backend answers within this, or the run stops saying so.
const STALL: Duration = Duration::from_secs(30);

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// A connected backend with one request queue in shared memory.
pub struct FakeGuest {
    backend: String,
    capacity: u64,
    // Dropped first: closing the socket ends the backend's session.
    _frontend: Frontend,
    mem: GuestMemoryMmap<()>,
    _memfd: File,
    kick: EventFd,
    call: EventFd,
    next_avail: u16,
    last_used: u16,
    rng: u64,
    next_sequential: u64,
}

impl FakeGuest {
    /// Connects to the vhost-user-blk backend at `socket` (named `backend` in errors), whose
    /// disk holds `capacity` bytes, and sets up the shared memory and the request queue.
    pub fn connect(backend: &str, socket: &Path, capacity: u64) -> Result<Self> {
        let vhost = |what: &'static str| {
            let backend = backend.to_owned();
            move |source| Error::VhostUser {
                backend,
                what,
                source,
            }
        };
        let io_error = |what: &str| {
            let what = format!("{what} for the fake guest of {backend}");
            move |source| Error::Io { what, source }
        };

        let memfd = nix::sys::memfd::memfd_create(
            c"hull-bench-guest",
            nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
        )
        .map_err(|errno| io_error("creating the memfd")(errno.into()))?;
        let memfd = File::from(memfd);
        memfd
            .set_len(MEMORY_SIZE)
            .map_err(io_error("sizing the memfd"))?;
        let offset = FileOffset::new(
            memfd
                .try_clone()
                .map_err(io_error("duplicating the memfd"))?,
            0,
        );
        let size = usize::try_from(MEMORY_SIZE).unwrap_or(usize::MAX);
        let mem =
            GuestMemoryMmap::<()>::from_ranges_with_files(&[(GuestAddress(0), size, Some(offset))])
                .map_err(|err| {
                    Error::Unexpected(format!("mapping the fake guest's memory: {err}"))
                })?;

        let mut frontend = Frontend::connect(socket, 1).map_err(vhost("connect"))?;
        frontend.set_owner().map_err(vhost("SET_OWNER"))?;
        let offered = frontend.get_features().map_err(vhost("GET_FEATURES"))?;
        if offered & VIRTIO_F_VERSION_1 == 0 {
            return Err(Error::Backend {
                backend: backend.to_owned(),
                what: format!("offers no VIRTIO_F_VERSION_1 (features {offered:#x})"),
            });
        }
        let wanted = offered & (VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES);
        frontend
            .set_features(wanted)
            .map_err(vhost("SET_FEATURES"))?;
        if wanted & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            let protocol = frontend
                .get_protocol_features()
                .map_err(vhost("GET_PROTOCOL_FEATURES"))?;
            frontend
                .set_protocol_features(
                    protocol & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG),
                )
                .map_err(vhost("SET_PROTOCOL_FEATURES"))?;
        }

        let region = mem
            .find_region(GuestAddress(0))
            .ok_or_else(|| Error::Unexpected("the fake guest's memory has no region".into()))?;
        let host_base = region.as_ptr() as u64;
        let info =
            VhostUserMemoryRegionInfo::from_guest_region(region).map_err(vhost("memory region"))?;
        frontend
            .set_mem_table(&[info])
            .map_err(vhost("SET_MEM_TABLE"))?;

        let kick = EventFd::new(EFD_NONBLOCK).map_err(io_error("creating the kick eventfd"))?;
        let call = EventFd::new(EFD_NONBLOCK).map_err(io_error("creating the call eventfd"))?;
        frontend
            .set_vring_num(0, QUEUE_SIZE)
            .map_err(vhost("SET_VRING_NUM"))?;
        let ring = VringConfigData {
            queue_max_size: QUEUE_SIZE,
            queue_size: QUEUE_SIZE,
            flags: 0,
            desc_table_addr: host_base + DESC_TABLE,
            used_ring_addr: host_base + USED_RING,
            avail_ring_addr: host_base + AVAIL_RING,
            log_addr: None,
        };
        frontend
            .set_vring_addr(0, &ring)
            .map_err(vhost("SET_VRING_ADDR"))?;
        frontend
            .set_vring_base(0, 0)
            .map_err(vhost("SET_VRING_BASE"))?;
        frontend
            .set_vring_call(0, &call)
            .map_err(vhost("SET_VRING_CALL"))?;
        frontend
            .set_vring_kick(0, &kick)
            .map_err(vhost("SET_VRING_KICK"))?;
        if wanted & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            frontend
                .set_vring_enable(0, true)
                .map_err(vhost("SET_VRING_ENABLE"))?;
        }

        Ok(Self {
            backend: backend.to_owned(),
            capacity,
            _frontend: frontend,
            mem,
            _memfd: memfd,
            kick,
            call,
            next_avail: 0,
            last_used: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
            next_sequential: 0,
        })
    }

    fn memory_error(&self, what: &str, err: vm_memory::GuestMemoryError) -> Error {
        Error::Unexpected(format!(
            "{}: {what} in the fake guest's memory: {err}",
            self.backend
        ))
    }

    /// The disk offset of the next request of `workload`.
    fn next_offset(&mut self, workload: &Workload) -> u64 {
        let block = u64::from(workload.block);
        let blocks = (self.capacity / block).max(1);
        match workload.pattern {
            Pattern::Random => {
                // xorshift64: cheap, and the same sequence for every backend.
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                (self.rng % blocks) * block
            }
            Pattern::Sequential => {
                let offset = self.next_sequential % (blocks * block);
                self.next_sequential = offset + block;
                offset
            }
        }
    }

    /// Writes request `slot`'s descriptors and header for the next I/O of `workload`, and
    /// puts it on the available ring (not yet published).
    fn post(&mut self, slot: u16, workload: &Workload) -> Result<()> {
        let offset = self.next_offset(workload);
        let header_addr = HEADERS + u64::from(slot) * HEADER_SLOT;
        let status_addr = header_addr + 16;
        let data_addr = DATA + u64::from(slot) * MAX_BLOCK;
        let kind = match workload.op {
            Op::Read => VIRTIO_BLK_T_IN,
            Op::Write => VIRTIO_BLK_T_OUT,
        };
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&kind.to_le_bytes());
        header[8..].copy_from_slice(&(offset / 512).to_le_bytes());
        let head = slot * DESCS_PER_REQUEST;
        let next = u16::try_from(VRING_DESC_F_NEXT).unwrap_or(1);
        let write = u16::try_from(VRING_DESC_F_WRITE).unwrap_or(2);
        let data_flags = match workload.op {
            Op::Read => next | write,
            Op::Write => next,
        };
        let descriptors = [
            Descriptor::new(header_addr, 16, next, head + 1),
            Descriptor::new(data_addr, workload.block, data_flags, head + 2),
            Descriptor::new(status_addr, 1, write, 0),
        ];
        let write_err = |err| self.memory_error("writing a request", err);
        self.mem
            .write_slice(&header, GuestAddress(header_addr))
            .map_err(write_err)?;
        self.mem
            .write_obj(0xffu8, GuestAddress(status_addr))
            .map_err(|err| self.memory_error("writing a status byte", err))?;
        for (i, descriptor) in (0u64..).zip(descriptors) {
            let at = DESC_TABLE + (u64::from(head) + i) * 16;
            self.mem
                .write_obj(descriptor, GuestAddress(at))
                .map_err(|err| self.memory_error("writing a descriptor", err))?;
        }
        let ring_at = AVAIL_RING + 4 + u64::from(self.next_avail % QUEUE_SIZE) * 2;
        self.mem
            .write_obj(head, GuestAddress(ring_at))
            .map_err(|err| self.memory_error("writing the avail ring", err))?;
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(())
    }

    /// Publishes the posted requests (avail idx, release order) and kicks the backend,
    /// unless the backend asked for no kicks (VRING_USED_F_NO_NOTIFY in the used ring's
    /// flags: it is looking at the ring anyway), as Linux's virtio drivers do
    /// (`virtqueue_kick_prepare`).
    fn publish(&self) -> Result<()> {
        self.mem
            .store(
                self.next_avail,
                GuestAddress(AVAIL_RING + 2),
                Ordering::Release,
            )
            .map_err(|err| self.memory_error("publishing the avail idx", err))?;
        // The index store before the flags load (Linux's virtio_mb): with the backend's own
        // barrier between turning kicks back on and its last look at the index, either it
        // sees these requests or this sees the flag cleared and kicks.
        std::sync::atomic::fence(Ordering::SeqCst);
        let flags: u16 = self
            .mem
            .load(GuestAddress(USED_RING), Ordering::Acquire)
            .map_err(|err| self.memory_error("reading the used flags", err))?;
        if u32::from(flags) & VRING_USED_F_NO_NOTIFY != 0 {
            return Ok(());
        }
        self.kick.write(1).map_err(|source| Error::Io {
            what: format!("kicking {}", self.backend),
            source,
        })
    }

    /// Waits until the backend signals the call eventfd.
    fn wait_call(&self) -> Result<()> {
        // SAFETY: the eventfd is owned by `self` and stays open for the whole borrow.
        let call = unsafe { BorrowedFd::borrow_raw(self.call.as_raw_fd()) };
        let mut fds = [PollFd::new(call, PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(STALL).unwrap_or(PollTimeout::MAX);
        loop {
            match poll(&mut fds, timeout) {
                Ok(0) => {
                    return Err(Error::Backend {
                        backend: self.backend.clone(),
                        what: format!("answered no request for {STALL:?}"),
                    })
                }
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(errno) => {
                    return Err(Error::Io {
                        what: format!("waiting for {}'s call eventfd", self.backend),
                        source: errno.into(),
                    })
                }
            }
        }
        // Resets the counter; EAGAIN (nothing to read) is fine.
        let _ = self.call.read();
        Ok(())
    }

    /// The used elements the backend added since the last look: the slots they complete.
    fn reap(&mut self, in_flight: &[Option<Instant>], done: &mut Vec<u16>) -> Result<()> {
        let used_idx: u16 = self
            .mem
            .load(GuestAddress(USED_RING + 2), Ordering::Acquire)
            .map_err(|err| self.memory_error("reading the used idx", err))?;
        while self.last_used != used_idx {
            let at = USED_RING + 4 + u64::from(self.last_used % QUEUE_SIZE) * 8;
            // A used element is (le32 id, le32 len); the length is not needed.
            let id: Le32 = self
                .mem
                .read_obj(GuestAddress(at))
                .map_err(|err| self.memory_error("reading the used ring", err))?;
            let id = u32::from(id);
            let slot = used_slot(id, in_flight).ok_or_else(|| Error::Backend {
                backend: self.backend.clone(),
                what: format!("used element {id} names no request in flight"),
            })?;
            let status_addr = HEADERS + u64::from(slot) * HEADER_SLOT + 16;
            let status: u8 = self
                .mem
                .read_obj(GuestAddress(status_addr))
                .map_err(|err| self.memory_error("reading a status byte", err))?;
            if u32::from(status) != VIRTIO_BLK_S_OK {
                return Err(Error::Backend {
                    backend: self.backend.clone(),
                    what: format!("request failed with virtio-blk status {status}"),
                });
            }
            done.push(slot);
            self.last_used = self.last_used.wrapping_add(1);
        }
        Ok(())
    }

    /// Runs `workload` for about `budget`: keeps `workload.depth` requests in flight, timing
    /// each from its publication to the sight of its used element.
    pub fn trial(&mut self, workload: &Workload, budget: Duration) -> Result<Trial> {
        let depth = workload.depth.clamp(1, MAX_DEPTH);
        if u64::from(workload.block) > MAX_BLOCK || !workload.block.is_multiple_of(512) {
            return Err(Error::Unexpected(format!(
                "block size {} is not a multiple of 512 up to {MAX_BLOCK}",
                workload.block
            )));
        }
        let mut in_flight: Vec<Option<Instant>> = vec![None; usize::from(depth)];
        let mut latencies = Vec::new();
        let mut done = Vec::with_capacity(usize::from(depth));
        let start = Instant::now();
        for slot in 0..depth {
            self.post(slot, workload)?;
        }
        let now = Instant::now();
        in_flight.iter_mut().for_each(|t| *t = Some(now));
        self.publish()?;
        let mut outstanding = usize::from(depth);
        let mut last_completion = start;
        while outstanding > 0 {
            self.wait_call()?;
            done.clear();
            self.reap(&in_flight, &mut done)?;
            let seen = Instant::now();
            last_completion = seen;
            let more = seen.duration_since(start) < budget;
            for &slot in &done {
                // `reap` checked the slot is in range and was in flight when it looked; a
                // backend that returns one request twice in a batch is caught here.
                let posted = in_flight
                    .get_mut(usize::from(slot))
                    .and_then(Option::take)
                    .ok_or_else(|| Error::Backend {
                        backend: self.backend.clone(),
                        what: format!("returned request {slot} twice"),
                    })?;
                let ns = seen.duration_since(posted).as_nanos();
                latencies.push(u64::try_from(ns).unwrap_or(u64::MAX));
                outstanding -= 1;
                if more {
                    self.post(slot, workload)?;
                    if let Some(posted) = in_flight.get_mut(usize::from(slot)) {
                        *posted = Some(Instant::now());
                    }
                    outstanding += 1;
                }
            }
            if more && !done.is_empty() {
                self.publish()?;
            }
        }
        let ops = latencies.len() as u64;
        Ok(Trial::from_latencies(
            ops,
            ops * u64::from(workload.block),
            last_completion.duration_since(start),
            &mut latencies,
        ))
    }
}

/// The request slot a used element's descriptor id completes, when it names the head of a
/// request in flight; `None` for anything else a backend might write.
fn used_slot(id: u32, in_flight: &[Option<Instant>]) -> Option<u16> {
    let id = u16::try_from(id).ok()?;
    if !id.is_multiple_of(DESCS_PER_REQUEST) {
        return None;
    }
    let slot = id / DESCS_PER_REQUEST;
    in_flight
        .get(usize::from(slot))
        .and_then(|posted| posted.as_ref())
        .map(|_| slot)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn used_slot_takes_only_heads_of_requests_in_flight() {
        let now = Instant::now();
        let in_flight = [Some(now), None, Some(now)];
        assert_eq!(used_slot(0, &in_flight), Some(0));
        assert_eq!(used_slot(6, &in_flight), Some(2));
        assert_eq!(used_slot(3, &in_flight), None, "slot 1 is not in flight");
        assert_eq!(used_slot(1, &in_flight), None, "not a head");
        assert_eq!(used_slot(9, &in_flight), None, "beyond the depth");
        assert_eq!(used_slot(u32::MAX, &in_flight), None);
    }

    proptest! {
        #[test]
        fn used_slot_never_names_a_slot_not_in_flight(id in any::<u32>(), mask in any::<u64>()) {
            let now = Instant::now();
            let in_flight: Vec<Option<Instant>> =
                (0..MAX_DEPTH).map(|i| (mask >> (i % 64) & 1 == 1).then_some(now)).collect();
            if let Some(slot) = used_slot(id, &in_flight) {
                prop_assert!(in_flight[usize::from(slot)].is_some());
                prop_assert_eq!(u32::from(slot) * 3, id);
            }
        }
    }

    #[test]
    fn memory_layout_fits_the_rings_and_headers() {
        assert!(DESC_TABLE + u64::from(QUEUE_SIZE) * 16 <= AVAIL_RING);
        assert!(AVAIL_RING + 6 + u64::from(QUEUE_SIZE) * 2 <= USED_RING);
        assert!(USED_RING + 6 + u64::from(QUEUE_SIZE) * 8 <= HEADERS);
        assert!(HEADERS + u64::from(MAX_DEPTH) * HEADER_SLOT <= DATA);
    }
}
