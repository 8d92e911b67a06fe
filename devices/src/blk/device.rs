//! The virtio-blk device: its features, its config space, and serving a queue (pop each
//! chain, parse it into a [`Request`], run it on an engine, write the status, return the
//! chain): reads, writes and flushes go to the queue's io_uring, handed to the kernel in small
//! groups as a pass over the queue parses them; the rest run synchronously. Which thread
//! serves which queue is the backend's business ([`super::backend`]).

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tracing::{debug, warn};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

use super::disk_id::DiskId;
use super::io::{QueueRing, SyncEngine, UringQueues, DEFAULT_SUBMIT_BATCH};
use super::request::{Rejected, Request, RequestType, Status, MAX_SEGMENTS, SECTOR_SIZE};
use crate::notify::Pass;
use crate::vsock::packet::Mem;

/// Bytes of `struct virtio_blk_config` up to and including `write_zeroes_may_unmap` and its
/// padding (virtio 1.2, 5.2.4).
pub const CONFIG_SIZE: usize = 60;
/// Queue size the device advertises segments for: `seg_max` is this minus the header and the
/// status descriptors, as QEMU does.
pub const QUEUE_SIZE_FOR_SEG_MAX: u32 = 128;
/// Largest discard / write-zeroes request, in sectors (the config's limits; the engine itself
/// has none).
pub const MAX_DISCARD_SECTORS: u32 = u32::MAX / SECTOR_SIZE;

/// What the device serves, from the command line.
#[derive(Debug)]
pub struct BlkDevice {
    engine: SyncEngine,
    uring: Option<UringQueues>,
    readonly: bool,
    num_queues: u16,
    id: DiskId,
    /// Requests of a pass per `io_uring_enter` (see [`DEFAULT_SUBMIT_BATCH`]).
    submit_batch: usize,
    counters: Counters,
    queue_events: crate::metrics::QueueEvents,
}

/// Requests served, by outcome. Read with [`BlkDevice::counters`].
#[derive(Debug, Default)]
pub struct Counters {
    ok: AtomicU64,
    io_errors: AtomicU64,
    unsupported: AtomicU64,
    malformed: AtomicU64,
    per_queue: Vec<AtomicU64>,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CounterValues {
    /// Requests answered `VIRTIO_BLK_S_OK`.
    pub ok: u64,
    /// Requests whose I/O failed (or that a read-only disk refused).
    pub io_errors: u64,
    /// Requests of a type the device does not know.
    pub unsupported: u64,
    /// Requests refused before any I/O: bad chains, lengths, ranges, directions.
    pub malformed: u64,
    /// Requests served on each queue, by queue index.
    pub per_queue: Vec<u64>,
}

impl BlkDevice {
    /// A device over `engine` with `num_queues` queues (at least 1); read-only if `readonly`.
    /// Its id is the backing file's name until [`BlkDevice::with_id`] sets another.
    pub fn new(engine: SyncEngine, readonly: bool, num_queues: u16) -> Self {
        let id = DiskId::from_file_name(engine.path());
        let uring = match UringQueues::new(usize::from(num_queues.max(1)), engine.file()) {
            Ok(rings) => Some(rings),
            Err(err) => {
                warn!(%err, "io_uring unavailable; serving with blocking calls");
                None
            }
        };
        Self {
            engine,
            uring,
            readonly,
            num_queues: num_queues.max(1),
            id,
            submit_batch: DEFAULT_SUBMIT_BATCH,
            counters: Counters {
                per_queue: (0..num_queues.max(1)).map(|_| AtomicU64::new(0)).collect(),
                ..Counters::default()
            },
            queue_events: crate::metrics::QueueEvents::new(usize::from(num_queues.max(1))),
        }
    }

    /// The same device answering `id` to GET_ID (hull-blk's `--serial`).
    pub fn with_id(mut self, id: DiskId) -> Self {
        self.id = id;
        self
    }

    /// The same device handing a pass's requests to the kernel `batch` at a time (hull-blk's
    /// `--submit-batch`; [`DEFAULT_SUBMIT_BATCH`] otherwise).
    pub fn with_submit_batch(mut self, batch: NonZeroUsize) -> Self {
        self.submit_batch = batch.get();
        self
    }

    /// The same device with io_uring rings of `depth` requests in flight per queue (instead
    /// of [`super::io::uring::RING_DEPTH`]), for tests of a full ring.
    #[cfg(test)]
    pub fn with_ring_depth(mut self, depth: u32) -> Self {
        self.uring = Some(
            UringQueues::with_depth(usize::from(self.num_queues), self.engine.file(), depth)
                .expect("io_uring"),
        );
        self
    }

    /// The same device serving every request with blocking calls (no io_uring).
    pub fn without_uring(mut self) -> Self {
        self.uring = None;
        self
    }

    /// The engine serving reads, writes and flushes: `io_uring` or `sync`.
    pub fn engine_name(&self) -> &'static str {
        if self.uring.is_some() {
            "io_uring"
        } else {
            "sync"
        }
    }

    /// The disk's size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.engine.capacity()
    }

    /// Number of request queues.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// The virtio feature bits offered (without vhost-user's protocol-features bit).
    pub fn features(&self) -> u64 {
        let mut features = (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_MQ);
        if self.readonly {
            features |= 1 << VIRTIO_BLK_F_RO;
        } else {
            features |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        features
    }

    /// The config space, `struct virtio_blk_config` in little endian.
    pub fn config_space(&self) -> [u8; CONFIG_SIZE] {
        let mut config = [0u8; CONFIG_SIZE];
        let mut put = |offset: usize, bytes: &[u8]| {
            config[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        put(0, &self.engine.capacity().to_le_bytes()); // capacity
        put(12, &(QUEUE_SIZE_FOR_SEG_MAX - 2).to_le_bytes()); // seg_max
        put(20, &SECTOR_SIZE.to_le_bytes()); // blk_size
        put(34, &self.num_queues.to_le_bytes()); // num_queues
        put(36, &MAX_DISCARD_SECTORS.to_le_bytes()); // max_discard_sectors
        put(40, &MAX_SEGMENTS.to_le_bytes()); // max_discard_seg
        put(44, &1u32.to_le_bytes()); // discard_sector_alignment
        put(48, &MAX_DISCARD_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
        put(52, &MAX_SEGMENTS.to_le_bytes()); // max_write_zeroes_seg
        put(56, &[1]); // write_zeroes_may_unmap
        config
    }

    /// Kicks and interrupts of its queues so far.
    pub fn queue_events(&self) -> &crate::metrics::QueueEvents {
        &self.queue_events
    }

    /// Requests served so far.
    pub fn counters(&self) -> CounterValues {
        let c = &self.counters;
        CounterValues {
            ok: c.ok.load(Ordering::Relaxed),
            io_errors: c.io_errors.load(Ordering::Relaxed),
            unsupported: c.unsupported.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
            per_queue: c
                .per_queue
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .collect(),
        }
    }

    /// Serves every request available on `queue` (the device's queue `index`), with
    /// notifications from the guest off while it does and a last look after turning them
    /// back on (so a request made meanwhile is not missed). Reads, writes and flushes go to
    /// the queue's io_uring, handed to the kernel `submit_batch` at a time as they are parsed
    /// (the rest at the end of the pass), and return to the guest as they complete: here if
    /// they already have, else from [`Self::complete_queue`] when the ring's descriptor turns
    /// readable (without io_uring, every request runs synchronously here). The rest is served
    /// synchronously as it comes. Returns how many chains went back to the guest.
    pub fn process_queue(
        &self,
        index: usize,
        queue: &mut Queue,
        mem: &Arc<Mem>,
    ) -> Result<usize, virtio_queue::Error> {
        let mut served = 0;
        let mut ring = self.ring(index);
        crate::notify::serve_with_kicks_off(
            queue,
            mem,
            |err| err,
            |queue, pass| {
                let chain = match pass {
                    Pass::Chain(chain) => chain,
                    Pass::End => {
                        if let Some(ring) = ring.as_mut() {
                            ring.submit();
                            served += self.answer_completions(ring, false, queue, mem)?;
                        }
                        return Ok(());
                    }
                };
                let head = chain.head_index();
                let request = match Request::parse(chain, mem, self.engine.capacity()) {
                    Ok(request) => request,
                    Err(rejected) => {
                        queue.add_used(&**mem, head, self.reject(rejected, mem))?;
                        served += 1;
                        return Ok(());
                    }
                };
                let refused = self.readonly && request.kind == RequestType::Out;
                let request = match ring.as_mut() {
                    Some(ring) if !refused && QueueRing::takes(request.kind) => {
                        if ring.is_full() {
                            // Room for it: the first completions of what is in flight.
                            ring.submit();
                            served += self.answer_completions(ring, true, queue, mem)?;
                        }
                        match ring.push(head, request, mem) {
                            Ok(()) => {
                                ring.submit_every(self.submit_batch);
                                return Ok(());
                            }
                            Err(request) => request,
                        }
                    }
                    _ => request,
                };
                let result = self.run_sync(&request, mem);
                let (status, written) = self.conclude(&request, result);
                queue.add_used(&**mem, head, answer(mem, request.status, status, written))?;
                served += 1;
                Ok(())
            },
        )?;
        self.count_served(index, served);
        Ok(served)
    }

    /// Returns to the guest every request of queue `index` whose I/O has completed (the
    /// ring's descriptor turned readable), and submits what a full ring had left queued.
    /// With `wait`, first waits for at least one if any is in flight. Returns how many
    /// chains went back to the guest.
    pub fn complete_queue(
        &self,
        index: usize,
        queue: &mut Queue,
        mem: &Arc<Mem>,
        wait: bool,
    ) -> Result<usize, virtio_queue::Error> {
        let Some(mut ring) = self.ring(index) else {
            return Ok(0);
        };
        ring.submit();
        let served = self.answer_completions(&mut ring, wait, queue, mem)?;
        self.count_served(index, served);
        Ok(served)
    }

    /// Requests of queue `index` queued on its ring but not yet handed to the kernel.
    #[cfg(test)]
    pub fn unsubmitted(&self, index: usize) -> usize {
        self.ring(index).map_or(0, |mut ring| ring.queued())
    }

    /// Requests of queue `index` still in flight on its ring.
    pub fn in_flight(&self, index: usize) -> usize {
        self.ring(index).map_or(0, |ring| ring.in_flight())
    }

    /// The descriptor of queue `index`'s io_uring, readable while completions wait (none
    /// without io_uring).
    pub fn completion_fd(&self, index: usize) -> Option<std::os::fd::RawFd> {
        self.uring.as_ref()?.ring_fd(index)
    }

    /// Reaps the completions of queue `index` without answering them (its queue stopped).
    pub fn drop_completions(&self, index: usize) -> usize {
        self.ring(index).map_or(0, |mut ring| {
            ring.submit();
            ring.reap(false, |_, _| {})
        })
    }

    /// Waits for every request in flight and drops them unanswered: the frontend whose
    /// queues they came from is gone. Returns how many there were.
    pub fn quiesce(&self) -> usize {
        self.uring.as_ref().map_or(0, UringQueues::quiesce)
    }

    /// Queue `index`'s io_uring, locked (none without io_uring).
    fn ring(&self, index: usize) -> Option<std::sync::MutexGuard<'_, QueueRing>> {
        self.uring.as_ref()?.queue(index)
    }

    fn count_served(&self, index: usize, served: usize) {
        if let Some(count) = self.counters.per_queue.get(index) {
            count.fetch_add(served as u64, Ordering::Relaxed);
        }
    }

    /// Reaps `ring`'s completions (see [`QueueRing::reap`]) and puts each chain in the used
    /// ring with its status. A short transfer (the file shrank, or the kernel split it) is
    /// finished synchronously.
    fn answer_completions(
        &self,
        ring: &mut QueueRing,
        wait: bool,
        queue: &mut Queue,
        mem: &Mem,
    ) -> Result<usize, virtio_queue::Error> {
        // Each chain goes into the used ring as it is reaped (no list per completion event);
        // after a used ring that refuses one, the rest are concluded but not added, and the
        // error is the answer.
        let mut answered = 0;
        let mut refused = None;
        ring.reap(wait, |in_flight, result| {
            let request = &in_flight.request;
            let result = result.and_then(|done| match request.kind {
                RequestType::In | RequestType::Out if done < request.data_len => {
                    self.engine.finish_short(request, done, mem)
                }
                _ => Ok(()),
            });
            let (status, written) = self.conclude(request, result);
            let len = answer(mem, request.status, status, written);
            if refused.is_none() {
                match queue.add_used(mem, in_flight.head, len) {
                    Ok(()) => answered += 1,
                    Err(err) => refused = Some(err),
                }
            }
        });
        refused.map_or(Ok(answered), Err)
    }

    /// Answers a refused request: IOERR in its status byte when it has one.
    fn reject(&self, rejected: Rejected, mem: &Mem) -> u32 {
        debug!(error = %rejected.error, "refusing a virtio-blk request");
        self.counters.malformed.fetch_add(1, Ordering::Relaxed);
        match rejected.status {
            Some(addr) => answer(mem, addr, Status::IoErr, 0),
            None => 0,
        }
    }

    /// Runs a parsed request on the synchronous engine.
    fn run_sync(&self, request: &Request, mem: &Mem) -> std::io::Result<()> {
        let writes = matches!(
            request.kind,
            RequestType::Out | RequestType::Discard | RequestType::WriteZeroes
        );
        match request.kind {
            _ if writes && self.readonly => Err(std::io::ErrorKind::PermissionDenied.into()),
            RequestType::In => self.engine.read(request.sector, &request.data, mem),
            RequestType::Out => self.engine.write(request.sector, &request.data, mem),
            RequestType::Flush => self.engine.flush(),
            RequestType::GetId => self.write_id(request, mem),
            RequestType::Discard => request
                .ranges
                .iter()
                .try_for_each(|r| self.engine.discard(r.sector, r.sectors)),
            RequestType::WriteZeroes => request
                .ranges
                .iter()
                .try_for_each(|r| self.engine.write_zeroes(r.sector, r.sectors, r.unmap)),
            RequestType::Unsupported(_) => Err(std::io::ErrorKind::Unsupported.into()),
        }
    }

    /// The status of a request that ran with `result`, and the data bytes it wrote to the
    /// guest; counts it.
    fn conclude(&self, request: &Request, result: std::io::Result<()>) -> (Status, usize) {
        match (request.kind, result) {
            (RequestType::Unsupported(kind), _) => {
                debug!(kind, "unsupported virtio-blk request type");
                self.counters.unsupported.fetch_add(1, Ordering::Relaxed);
                (Status::Unsupp, 0)
            }
            (kind, Ok(())) => {
                self.counters.ok.fetch_add(1, Ordering::Relaxed);
                let written = match kind {
                    RequestType::In | RequestType::GetId => request.data_len,
                    _ => 0,
                };
                (Status::Ok, written)
            }
            (kind, Err(err)) => {
                if err.kind() == std::io::ErrorKind::PermissionDenied && self.readonly {
                    debug!(?kind, "write request to a read-only disk");
                } else {
                    warn!(?kind, sector = request.sector, %err, disk = %self.engine.path().display(), "disk I/O failed");
                }
                self.counters.io_errors.fetch_add(1, Ordering::Relaxed);
                (Status::IoErr, 0)
            }
        }
    }

    fn write_id(&self, request: &Request, mem: &Mem) -> std::io::Result<()> {
        let mut id = &self.id.as_bytes()[..];
        for buf in &request.data {
            let (now, rest) = id.split_at(buf.len.min(id.len()));
            mem.write_slice(now, buf.addr)
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
            id = rest;
        }
        Ok(())
    }
}

/// Writes `status` at `addr`; returns the chain's used length (`written` data bytes and the
/// status byte), or 0 if the status cannot be written.
fn answer(mem: &Mem, addr: vm_memory::GuestAddress, status: Status, written: usize) -> u32 {
    if mem.write_obj(status as u8, addr).is_err() {
        // The address was checked by validation; only a memory update in between could
        // move it, and then the guest learns nothing more from a status.
        return 0;
    }
    u32::try_from(written + 1).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    // Test values (sector counts, small lengths) all fit their targets.
    #![allow(clippy::cast_possible_truncation)]

    use proptest::prelude::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;

    use super::*;
    use crate::blk::test_utils::{BlkGuest, TempDisk, R_NEXT, W_LAST, W_NEXT};
    use crate::blk::RING_DEPTH;
    use crate::vsock::test_utils::{test_memory, MEM_SIZE};

    const T_IN: u32 = 0;
    const T_OUT: u32 = 1;
    const T_FLUSH: u32 = 4;
    const T_GET_ID: u32 = 8;
    const T_DISCARD: u32 = 11;
    const T_WRITE_ZEROES: u32 = 13;
    const S_OK: u8 = 0;
    const S_IOERR: u8 = 1;
    const S_UNSUPP: u8 = 2;
    /// Sectors of the test disk (1 MiB).
    const SECTORS: u64 = 2048;

    fn disk_range(disk: &TempDisk, sector: u64, len: usize) -> Vec<u8> {
        let start = (sector * 512) as usize;
        disk.bytes()[start..start + len].to_vec()
    }

    /// Writes `len` bytes of `fill` at `sector` through the device and checks the status.
    fn write(guest: &mut BlkGuest<'_>, device: &BlkDevice, sector: u64, len: u32, fill: u8) {
        let (_, status) = guest.request(T_OUT, sector, len, false, fill);
        assert_eq!(guest.run(device).len(), 1);
        assert_eq!(guest.byte(status), S_OK, "write at sector {sector}");
    }

    fn segment(guest: &mut BlkGuest<'_>, sector: u64, sectors: u32, flags: u32) -> u64 {
        let addr = guest.buf(16, 0);
        let mut raw = sector.to_le_bytes().to_vec();
        raw.extend_from_slice(&sectors.to_le_bytes());
        raw.extend_from_slice(&flags.to_le_bytes());
        for (i, b) in raw.iter().enumerate() {
            guest.mem_write(addr + i as u64, *b);
        }
        addr
    }

    /// A discard or write-zeroes request of one segment; returns the status address.
    fn ranged(guest: &mut BlkGuest<'_>, kind: u32, sector: u64, sectors: u32, flags: u32) -> u64 {
        let header = guest.header(kind, 0);
        let seg = segment(guest, sector, sectors, flags);
        let status = guest.buf(1, 0xee);
        guest.raw(&[
            (header, 16, R_NEXT, 1),
            (seg, 16, R_NEXT, 2),
            (status, 1, W_LAST, 0),
        ]);
        status
    }

    #[test]
    fn write_then_read_returns_the_written_sectors_and_lands_in_the_file() {
        let disk = TempDisk::new("blk-rw", SECTORS);
        let device = disk.device(false);
        let mem = Arc::new(test_memory());
        let mut guest = BlkGuest::new(&mem);
        write(&mut guest, &device, 8, 4096, 0xab);
        assert!(disk_range(&disk, 8, 4096).iter().all(|&b| b == 0xab));
        assert!(
            disk_range(&disk, 7, 512).iter().all(|&b| b == 0),
            "sector 7 untouched"
        );

        let (data, status) = guest.request(T_IN, 8, 4096, true, 0);
        let used = guest.run(&device);
        assert_eq!(used[0].1, 4097, "data plus the status byte");
        assert_eq!(guest.byte(status), S_OK);
        assert!(guest.bytes(data, 4096).iter().all(|&b| b == 0xab));
    }

    #[test]
    fn last_sector_of_the_disk_can_be_written_and_read() {
        let disk = TempDisk::new("blk-last", SECTORS);
        let device = disk.device(false);
        let mem = Arc::new(test_memory());
        let mut guest = BlkGuest::new(&mem);
        write(&mut guest, &device, SECTORS - 1, 512, 0x5a);
        assert!(disk_range(&disk, SECTORS - 1, 512)
            .iter()
            .all(|&b| b == 0x5a));
        assert_eq!(
            disk.bytes().len() as u64,
            SECTORS * 512,
            "the file did not grow"
        );
    }

    #[test]
    fn data_split_over_several_descriptors_is_read_in_order() {
        let disk = TempDisk::new("blk-split", SECTORS);
        let device = disk.device(false);
        let mem = Arc::new(test_memory());
        let mut guest = BlkGuest::new(&mem);
        write(&mut guest, &device, 0, 512, 1);
        write(&mut guest, &device, 1, 512, 2);
        // Header split 10 + 6 and data split 700 + 324 across descriptors: any layout works.
        let header = guest.header(T_IN, 0);
        let a = guest.buf(700, 0);
        let b = guest.buf(324, 0);
        let status = guest.buf(1, 0xee);
        guest.raw(&[
            (header, 10, R_NEXT, 1),
            (header + 10, 6, R_NEXT, 2),
            (a, 700, W_NEXT, 3),
            (b, 324, W_NEXT, 4),
            (status, 1, W_LAST, 0),
        ]);
        let head = guest.raw_head_of_last();
        assert_eq!(guest.run(&device), vec![(head, 1025)]);
        assert_eq!(guest.byte(status), S_OK);
        let mut got = guest.bytes(a, 700);
        got.extend(guest.bytes(b, 324));
        assert!(got[..512].iter().all(|&x| x == 1));
        assert!(got[512..].iter().all(|&x| x == 2));
    }

    #[test]
    fn reads_and_writes_outside_the_disk_fail_with_ioerr_and_touch_nothing() {
        let disk = TempDisk::new("blk-range", SECTORS);
        let device = disk.device(false);
        let mem = Arc::new(test_memory());
        let mut guest = BlkGuest::new(&mem);
        for (kind, sector, len) in [
            (T_IN, SECTORS, 512),
            (T_IN, SECTORS - 1, 1024),
            (T_IN, u64::MAX, 512),
            (T_OUT, SECTORS, 512),
            (T_OUT, u64::MAX - 1, 1024),
        ] {
            let (data, status) = guest.request(kind, sector, len, kind == T_IN, 0x77);
            let used = guest.run(&device);
            assert_eq!(used.len(), 1);
            assert_eq!(used[0].1, 1, "only the status byte for {kind} at {sector}");
            assert_eq!(guest.byte(status), S_IOERR, "{kind} at {sector}");
            assert!(guest.bytes(data, len as usize).iter().all(|&b| b == 0x77));
        }
        assert!(
            disk.bytes().iter().all(|&b| b == 0),
            "the disk is unchanged"
        );
        assert_eq!(device.counters().malformed, 5);
    }

    #[test]
    fn lengths_that_are_not_whole_sectors_fail_with_ioerr() {
        let disk = TempDisk::new("blk-unaligned", SECTORS);
        let device = disk.device(false);
        let mem = Arc::new(test_memory());
        let mut guest = BlkGuest::new(&mem);
        for (kind, len) in [(T_IN, 100), (T_OUT, 513), (T_IN, 0)] {
            let (_, status) = guest.request(kind, 0, len, kind == T_IN, 0x77);
            guest.run(&device);
            let expected = if len == 0 { S_OK } else { S_IOERR };
            assert_eq!(guest.byte(status), expected, "{kind} of {len} bytes");
        }
        assert!(disk.bytes().iter().all(|&b| b == 0));
    }

    #[test]
    fn data_in_buffers_of_the_wrong_direction_fails_with_ioerr() {
        let disk = TempDisk::new("blk-direction", SECTORS);
        let device = disk.device(false);
        let mem = Arc::new(test_memory());
        let mut guest = BlkGuest::new(&mem);
        // A read whose data buffer the device may not write, a write whose data it may not
        // read, a get-id with driver data, a discard with device data.
        for (kind, device_writes) in [(T_IN, false), (T_OUT, true), (T_GET_ID, false)] {
            let (data, status) = guest.request(kind, 0, 512, device_writes, 0x77);
            guest.run(&device);
            assert_eq!(guest.byte(status), S_IOERR, "type {kind}");
            assert!(guest.bytes(data, 512).iter().all(|&b| b == 0x77));
        }
        let header = guest.header(T_DISCARD, 0);
        let seg = segment(&mut guest, 0, 8, 0);
        let status = guest.buf(16, 0xee);
        guest.raw(&[
            (header, 16, R_NEXT, 1),
            (seg, 16, R_NEXT, 2),
            (status, 16, W_LAST, 0),
        ]);
        guest.run(&device);
        assert_eq!(guest.byte(status + 15), S_IOERR, "discard with device data");
        assert!(disk.bytes().iter().all(|&b| b == 0));
    }

    #[test]
    fn a_readable_buffer_after_a_writable_one_is_refused() {
        let disk = TempDisk::new("blk-order", SECTORS);
        let device = disk.device(false);
        let mem = Arc::new(test_memory());
        let mut guest = BlkGuest::new(&mem);
        let header = guest.header(T_OUT, 0);
        let data = guest.buf(512, 0x11);
        let status = guest.buf(1, 0xee);
        guest.raw(&[
            (header, 16, W_NEXT, 1),
            (data, 512, R_NEXT, 2),
            (status, 1, W_LAST, 0),
        ]);
        guest.run(&device);
        assert_eq!(guest.byte(status), S_IOERR);
        assert!(disk.bytes().iter().all(|&b| b == 0));
    }

    #[test]
    fn looping_chain_is_returned_unused_and_the_queue_keeps_working() {
        let disk = TempDisk::new("blk-loop", SECTORS);
        let device = disk.device(false);
        let mem = Arc::new(test_memory());
        let mut guest = BlkGuest::new(&mem);
        let header = guest.header(T_IN, 0);
        let data = guest.buf(512, 0x77);
        guest.raw(&[(header, 16, R_NEXT, 1), (data, 512, W_NEXT, 0)]);
        assert_eq!(
            guest.run(&device),
            vec![(0, 0)],
            "nothing written for a loop"
        );
        assert!(guest.bytes(data, 512).iter().all(|&b| b == 0x77));

        let (_, status) = guest.request(T_FLUSH, 0, 0, false, 0);
        assert_eq!(guest.run(&device).len(), 1);
        assert_eq!(guest.byte(status), S_OK, "the next request is served");
    }

    /// Found by the `blk_request` fuzz target: an avail index more than the ring's size
    /// ahead made the worker loop forever (the queue refuses to pop from such a ring, and
    /// re-enabling notifications kept reporting more work).
    #[test]
    fn a_ring_index_beyond_the_ring_size_does_not_spin_the_worker() {
        let disk = TempDisk::new("blk-lying-index", SECTORS);
        let device = disk.device(false);
        let mem = Arc::new(test_memory());
        let mut guest = BlkGuest::new(&mem);
        let (_, status) = guest.request(T_FLUSH, 0, 0, false, 0);
        assert_eq!(guest.run(&device).len(), 1);
        assert_eq!(guest.byte(status), S_OK);
        // 300 requests more than served, in a ring of 256 entries.
        guest.set_available(guest.available().wrapping_add(300));
        assert_eq!(
            guest.run(&device),
            vec![],
            "nothing is served from a lying ring"
        );
    }

    #[test]
    fn buffer_outside_guest_memory_fails_with_ioerr_in_the_status_byte() {
        let disk = TempDisk::new("blk-oom", SECTORS);
        let device = disk.device(false);
        let mem = Arc::new(test_memory());
        let mut guest = BlkGuest::new(&mem);
        for outside in [MEM_SIZE, MEM_SIZE - 256, u64::MAX - 100] {
            let header = guest.header(T_IN, 0);
            let status = guest.buf(1, 0xee);
            guest.raw(&[
                (header, 16, R_NEXT, 1),
                (outside, 512, W_NEXT, 2),
                (status, 1, W_LAST, 0),
            ]);
            let used = guest.run(&device);
            assert_eq!(used.len(), 1);
            assert_eq!(used[0].1, 1);
            assert_eq!(guest.byte(status), S_IOERR, "buffer at {outside:#x}");
        }
        // A header outside memory, and a status outside memory: nothing can be reported.
        let status = guest.buf(1, 0xee);
        guest.raw(&[(MEM_SIZE, 16, R_NEXT, 1), (status, 1, W_LAST, 0)]);
        guest.run(&device);
        assert_eq!(guest.byte(status), S_IOERR);
        let header = guest.header(T_FLUSH, 0);
        guest.raw(&[(header, 16, R_NEXT, 1), (MEM_SIZE + 4096, 1, W_LAST, 0)]);
        assert_eq!(guest.run(&device)[0].1, 0);
    }

    #[test]
    fn chain_without_a_status_byte_or_with_a_short_header_is_refused() {
        let disk = TempDisk::new("blk-short", SECTORS);
        let device = disk.device(false);
        let mem = Arc::new(test_memory());
        let mut guest = BlkGuest::new(&mem);
        let header = guest.header(T_OUT, 0);
        let data = guest.buf(512, 0x11);
        guest.raw(&[(header, 16, R_NEXT, 1), (data, 512, 0, 0)]);
        assert_eq!(guest.run(&device)[0].1, 0, "no status byte to write");

        let header = guest.header(T_FLUSH, 0);
        let status = guest.buf(1, 0xee);
        guest.raw(&[(header, 8, R_NEXT, 1), (status, 1, W_LAST, 0)]);
        guest.run(&device);
        assert_eq!(guest.byte(status), S_IOERR, "an 8-byte header");
        assert!(disk.bytes().iter().all(|&b| b == 0));
    }

    #[test]
    fn request_in_an_indirect_table_is_served() {
        let disk = TempDisk::new("blk-indirect", SECTORS);
        let device = disk.device(false);
        let mem = Arc::new(test_memory());
        let mut guest = BlkGuest::new(&mem);
        write(&mut guest, &device, 3, 512, 0x6d);
        let header = guest.header(T_IN, 3);
        let data = guest.buf(512, 0);
        let status = guest.buf(1, 0xee);
        let table = guest.indirect_table(&[
            (header, 16, R_NEXT, 1),
            (data, 512, W_NEXT, 2),
            (status, 1, W_LAST, 0),
        ]);
        guest.raw(&[(table, 48, VRING_DESC_F_INDIRECT as u16, 0)]);
        assert_eq!(guest.run(&device)[0].1, 513);
        assert_eq!(guest.byte(status), S_OK);
        assert!(guest.bytes(data, 512).iter().all(|&b| b == 0x6d));
    }

    /// More requests in one pass than the queue's io_uring holds in flight: the pass makes
    /// room by answering the first completions, and every request lands and is answered
    /// once.
    #[test]
    fn more_requests_than_the_ring_holds_are_all_served_once() {
        let disk = TempDisk::new("blk-many", SECTORS);
        // A ring of 16: virtio-queue 0.18's mock queue puts its used ring over the avail
        // ring's upper entries (`SplitQueueRing::end` adds the element count, not the bytes),
        // so a mock queue holds about 126 chains; 101 requests still overfill this ring.
        let depth = 16;
        let device = disk.device(false).with_ring_depth(depth);
        let mem = Arc::new(test_memory());
        let mut guest = BlkGuest::new(&mem);
        let count = u64::from(depth) * 6 + 5;
        let mut statuses = Vec::new();
        for sector in 0..count {
            let header = guest.header(T_OUT, sector);
            let data = guest.buf(512, (sector % 251) as u8 + 1);
            let status = guest.buf(1, 0xee);
            let table = guest.indirect_table(&[
                (header, 16, R_NEXT, 1),
                (data, 512, R_NEXT, 2),
                (status, 1, W_LAST, 0),
            ]);
            guest.raw(&[(table, 48, VRING_DESC_F_INDIRECT as u16, 0)]);
            statuses.push(status);
        }
        let used = guest.run(&device);
        assert_eq!(used.len() as u64, count, "each chain comes back once");
        let mut heads: Vec<u32> = used.iter().map(|&(head, _)| head).collect();
        heads.sort_unstable();
        heads.dedup();
        assert_eq!(heads.len() as u64, count, "no chain comes back twice");
        assert!(statuses.iter().all(|&s| guest.byte(s) == S_OK));
        for sector in 0..count {
            let expected = (sector % 251) as u8 + 1;
            assert!(
                disk_range(&disk, sector, 512)
                    .iter()
                    .all(|&b| b == expected),
                "sector {sector}"
            );
        }
        assert_eq!(device.in_flight(0), 0);
        assert_eq!(device.counters().ok, count);
    }

    #[test]
    fn indirect_table_that_loops_or_nests_is_returned_without_a_write() {
        let disk = TempDisk::new("blk-indirect-bad", SECTORS);
        let device = disk.device(false);
        let mem = Arc::new(test_memory());
        let mut guest = BlkGuest::new(&mem);
        let header = guest.header(T_IN, 0);
        let data = guest.buf(512, 0x77);
        let looping = guest.indirect_table(&[(header, 16, R_NEXT, 1), (data, 512, W_NEXT, 0)]);
        guest.raw(&[(looping, 32, VRING_DESC_F_INDIRECT as u16, 0)]);
        let inner = guest.indirect_table(&[(header, 16, R_NEXT, 1), (data, 512, W_LAST, 0)]);
        let nested = guest.indirect_table(&[(inner, 32, VRING_DESC_F_INDIRECT as u16, 0)]);
        guest.raw(&[(nested, 16, VRING_DESC_F_INDIRECT as u16, 0)]);
        let used = guest.run(&device);
        assert_eq!(used.len(), 2, "both chains come back");
        assert!(used.iter().all(|&(_, len)| len == 0), "{used:?}");
        assert!(guest.bytes(data, 512).iter().all(|&b| b == 0x77));
    }

    #[test]
    fn flush_succeeds() {
        let disk = TempDisk::new("blk-flush", SECTORS);
        let device = disk.device(false);
        let mem = Arc::new(test_memory());
        let mut guest = BlkGuest::new(&mem);
        let (_, status) = guest.request(T_FLUSH, 0, 0, false, 0);
        assert_eq!(guest.run(&device)[0].1, 1);
        assert_eq!(guest.byte(status), S_OK);
    }

    #[test]
    fn get_id_answers_the_disk_file_name_in_20_bytes() {
        let disk = TempDisk::new("blk-id", SECTORS);
        let device = disk.device(false);
        let mem = Arc::new(test_memory());
        let mut guest = BlkGuest::new(&mem);
        let (data, status) = guest.request(T_GET_ID, 0, 20, true, 0xff);
        assert_eq!(guest.run(&device)[0].1, 21);
        assert_eq!(guest.byte(status), S_OK);
        let mut expected = b"disk.img".to_vec();
        expected.resize(20, 0);
        assert_eq!(guest.bytes(data, 20), expected);
    }

    #[test]
    fn get_id_answers_the_serial_given_instead_of_the_file_name() {
        let disk = TempDisk::new("blk-serial", SECTORS);
        let device = disk
            .device(false)
            .with_id("hull-test-disk".parse().unwrap());
        let mem = Arc::new(test_memory());
        let mut guest = BlkGuest::new(&mem);
        let (data, status) = guest.request(T_GET_ID, 0, 20, true, 0xff);
        assert_eq!(guest.run(&device)[0].1, 21);
        assert_eq!(guest.byte(status), S_OK);
        let mut expected = b"hull-test-disk".to_vec();
        expected.resize(20, 0);
        assert_eq!(guest.bytes(data, 20), expected);
    }

    #[test]
    fn discard_and_write_zeroes_make_sectors_read_as_zeroes() {
        let disk = TempDisk::new("blk-discard", SECTORS);
        let device = disk.device(false);
        let mem = Arc::new(test_memory());
        let mut guest = BlkGuest::new(&mem);
        write(&mut guest, &device, 0, 512 * 48, 0x33);
        for (kind, sector, flags) in [
            (T_DISCARD, 0, 0),
            (T_WRITE_ZEROES, 16, 0),
            (T_WRITE_ZEROES, 32, 1),
        ] {
            let status = ranged(&mut guest, kind, sector, 8, flags);
            guest.run(&device);
            assert_eq!(guest.byte(status), S_OK, "type {kind} flags {flags}");
            assert!(disk_range(&disk, sector, 8 * 512).iter().all(|&b| b == 0));
            assert!(
                disk_range(&disk, sector + 8, 8 * 512)
                    .iter()
                    .all(|&b| b == 0x33),
                "only the range is cleared"
            );
        }
        assert_eq!(
            disk.bytes().len() as u64,
            SECTORS * 512,
            "the file keeps its size"
        );
    }

    #[test]
    fn malformed_discard_segments_fail_with_ioerr() {
        let disk = TempDisk::new("blk-badseg", SECTORS);
        let device = disk.device(false);
        let mem = Arc::new(test_memory());
        let mut guest = BlkGuest::new(&mem);
        write(&mut guest, &device, 0, 512 * 8, 0x33);
        // Past the end, overflowing, and unmap on a discard.
        for (sector, sectors, flags) in [(SECTORS - 4, 8, 0), (u64::MAX - 2, 8, 0), (0, 8, 1)] {
            let status = ranged(&mut guest, T_DISCARD, sector, sectors, flags);
            guest.run(&device);
            assert_eq!(
                guest.byte(status),
                S_IOERR,
                "segment {sector}+{sectors} flags {flags}"
            );
        }
        // No segment at all, and a segment of 10 bytes.
        let header = guest.header(T_WRITE_ZEROES, 0);
        let status = guest.buf(1, 0xee);
        guest.raw(&[(header, 16, R_NEXT, 1), (status, 1, W_LAST, 0)]);
        guest.run(&device);
        assert_eq!(guest.byte(status), S_IOERR, "no segment");
        let header = guest.header(T_WRITE_ZEROES, 0);
        let seg = segment(&mut guest, 0, 8, 0);
        let status = guest.buf(1, 0xee);
        guest.raw(&[
            (header, 16, R_NEXT, 1),
            (seg, 10, R_NEXT, 2),
            (status, 1, W_LAST, 0),
        ]);
        guest.run(&device);
        assert_eq!(guest.byte(status), S_IOERR, "a partial segment");
        assert!(disk_range(&disk, 0, 8 * 512).iter().all(|&b| b == 0x33));
    }

    #[test]
    fn unknown_request_type_is_answered_unsupp() {
        let disk = TempDisk::new("blk-unsupp", SECTORS);
        let device = disk.device(false);
        let mem = Arc::new(test_memory());
        let mut guest = BlkGuest::new(&mem);
        for kind in [2, 7, 99, u32::MAX] {
            let (_, status) = guest.request(kind, 0, 512, false, 0);
            guest.run(&device);
            assert_eq!(guest.byte(status), S_UNSUPP, "type {kind}");
        }
        assert_eq!(device.counters().unsupported, 4);
    }

    #[test]
    fn readonly_disk_refuses_writes_with_ioerr_and_serves_reads() {
        let disk = TempDisk::new("blk-ro", SECTORS);
        std::fs::write(&disk.path, vec![0x42; (SECTORS * 512) as usize]).expect("filling");
        let device = disk.device(true);
        assert_ne!(
            device.features() & (1 << VIRTIO_BLK_F_RO),
            0,
            "RO advertised"
        );
        assert_eq!(device.features() & (1 << VIRTIO_BLK_F_DISCARD), 0);
        let mem = Arc::new(test_memory());
        let mut guest = BlkGuest::new(&mem);
        let (_, status) = guest.request(T_OUT, 0, 512, false, 0x11);
        guest.run(&device);
        assert_eq!(guest.byte(status), S_IOERR, "write refused");
        for kind in [T_DISCARD, T_WRITE_ZEROES] {
            let status = ranged(&mut guest, kind, 0, 8, 0);
            guest.run(&device);
            assert_eq!(guest.byte(status), S_IOERR, "type {kind} refused");
        }
        let (data, status) = guest.request(T_IN, 0, 512, true, 0);
        guest.run(&device);
        assert_eq!(guest.byte(status), S_OK);
        assert!(guest.bytes(data, 512).iter().all(|&b| b == 0x42));
        assert!(
            disk.bytes().iter().all(|&b| b == 0x42),
            "the disk is unchanged"
        );
    }

    #[test]
    fn config_space_holds_capacity_seg_max_blk_size_and_queues() {
        let disk = TempDisk::new("blk-config", SECTORS);
        let engine = SyncEngine::open(&disk.path, false, false).expect("open");
        let device = BlkDevice::new(engine, false, 4);
        let config = device.config_space();
        let u32_at = |o: usize| u32::from_le_bytes(config[o..o + 4].try_into().unwrap());
        assert_eq!(u64::from_le_bytes(config[..8].try_into().unwrap()), SECTORS);
        assert_eq!(u32_at(12), 126, "seg_max");
        assert_eq!(u32_at(20), 512, "blk_size");
        assert_eq!(
            u16::from_le_bytes([config[34], config[35]]),
            4,
            "num_queues"
        );
        assert_eq!(u32_at(40), MAX_SEGMENTS, "max_discard_seg");
        let features = device.features();
        for bit in [
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_MQ,
            VIRTIO_BLK_F_DISCARD,
            VIRTIO_BLK_F_WRITE_ZEROES,
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_BLK_SIZE,
        ] {
            assert_ne!(features & (1 << bit), 0, "feature bit {bit}");
        }
        assert_eq!(features & (1 << VIRTIO_BLK_F_RO), 0);
    }

    /// Both engines: io_uring when the host has it (a loud skip otherwise), and blocking calls.
    fn both_engines(disk: &TempDisk, test: &str) -> Vec<BlkDevice> {
        let uring = disk.device(false);
        let sync = disk.device(false).without_uring();
        assert_eq!(sync.engine_name(), "sync");
        if uring.engine_name() == "io_uring" {
            vec![uring, sync]
        } else {
            hull_tests::prereq::skip(
                test,
                &hull_tests::prereq::Missing::new(
                    "io_uring (io_uring_setup failed)",
                    "a kernel with io_uring enabled",
                ),
            );
            vec![sync]
        }
    }

    #[test]
    fn a_kick_of_many_writes_reads_and_a_flush_is_served_in_one_batch_by_either_engine() {
        let test =
            "a_kick_of_many_writes_reads_and_a_flush_is_served_in_one_batch_by_either_engine";
        let disk = TempDisk::new("blk-batch", SECTORS);
        for (round, device) in both_engines(&disk, test).iter().enumerate() {
            let mem = Arc::new(test_memory());
            let mut guest = BlkGuest::new(&mem);
            let fill = |i: u64| (i as u8).wrapping_mul(31).wrapping_add(round as u8 + 1);
            let mut statuses: Vec<u64> = (0..16)
                .map(|i| guest.request(T_OUT, i * 16, 4096, false, fill(i)).1)
                .collect();
            statuses.push(guest.request(T_FLUSH, 0, 0, false, 0).1);
            assert_eq!(
                guest.run(device).len(),
                17,
                "every chain of the kick returns"
            );
            assert!(statuses.iter().all(|&s| guest.byte(s) == S_OK));
            for i in 0..16 {
                assert!(disk_range(&disk, i * 16, 4096)
                    .iter()
                    .all(|&b| b == fill(i)));
            }
            let reads: Vec<(u64, u64)> = (0..16)
                .map(|i| guest.request(T_IN, i * 16, 4096, true, 0))
                .collect();
            let used = guest.run(device);
            assert_eq!(used.len(), 16);
            assert!(used.iter().all(|&(_, len)| len == 4097));
            for (i, (data, status)) in (0u64..).zip(reads) {
                assert_eq!(guest.byte(status), S_OK);
                assert!(
                    guest.bytes(data, 4096).iter().all(|&b| b == fill(i)),
                    "{}",
                    device.engine_name()
                );
            }
        }
    }

    /// Whatever the submission group, a pass hands every request it parsed to the kernel
    /// before it returns (one left queued would wait for an event that may never come), and
    /// every request is served once, in order with a flush between writes and reads.
    #[test]
    fn every_submission_group_size_hands_the_whole_pass_to_the_kernel() {
        let disk = TempDisk::new("blk-submit-batch", SECTORS);
        for batch in [1, 2, 3, 7, RING_DEPTH as usize] {
            let device = disk
                .device(false)
                .with_submit_batch(NonZeroUsize::new(batch).unwrap());
            let mem = Arc::new(test_memory());
            let mut guest = BlkGuest::new(&mem);
            let fill = |i: u64| (i as u8).wrapping_mul(17).wrapping_add(batch as u8);
            // Eight entries (seven writes, a flush), then seven reads: every size but 1 leaves
            // a remainder for the end of a pass in one of the two.
            let mut statuses: Vec<u64> = (0..7)
                .map(|i| guest.request(T_OUT, i * 8, 4096, false, fill(i)).1)
                .collect();
            statuses.push(guest.request(T_FLUSH, 0, 0, false, 0).1);
            device
                .process_queue(0, &mut guest.queue, &mem)
                .expect("queue usable");
            assert_eq!(device.unsubmitted(0), 0, "batch {batch}: left queued");
            assert_eq!(guest.run(&device).len(), 8, "batch {batch}");
            assert!(statuses.iter().all(|&s| guest.byte(s) == S_OK));
            let reads: Vec<(u64, u64)> = (0..7)
                .map(|i| guest.request(T_IN, i * 8, 4096, true, 0))
                .collect();
            assert_eq!(guest.run(&device).len(), 7, "batch {batch}");
            assert_eq!(device.unsubmitted(0), 0);
            for (i, (data, status)) in (0u64..).zip(reads) {
                assert_eq!(guest.byte(status), S_OK);
                assert!(
                    guest.bytes(data, 4096).iter().all(|&b| b == fill(i)),
                    "batch {batch}, request {i}"
                );
            }
        }
    }

    #[test]
    fn disk_that_shrank_under_the_device_fails_reads_past_its_new_end_with_ioerr() {
        let test = "disk_that_shrank_under_the_device_fails_reads_past_its_new_end_with_ioerr";
        let disk = TempDisk::new("blk-shrink", SECTORS);
        for device in both_engines(&disk, test) {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&disk.path)
                .and_then(|f| f.set_len(1024 * 512))
                .expect("shrinking the disk file");
            let mem = Arc::new(test_memory());
            let mut guest = BlkGuest::new(&mem);
            // Half before the new end, half after: a short transfer, then nothing.
            let (_, short) = guest.request(T_IN, 1020, 4096, true, 0);
            let (_, inside) = guest.request(T_IN, 0, 4096, true, 0);
            guest.run(&device);
            assert_eq!(guest.byte(short), S_IOERR, "{}", device.engine_name());
            assert_eq!(guest.byte(inside), S_OK, "{}", device.engine_name());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Any request header on a well-formed chain gets the status the spec asks for, and
        /// the disk changes only for a successful write.
        #[test]
        fn any_header_gets_the_right_status(
            kind in prop_oneof![Just(T_IN), Just(T_OUT), Just(T_FLUSH), Just(T_GET_ID), any::<u32>()],
            sector in prop_oneof![0..SECTORS + 8, any::<u64>()],
            sectors in 0u32..8,
            odd in 0u32..2,
        ) {
            let disk = TempDisk::new("blk-prop-header", SECTORS);
            let device = disk.device(false);
            let mem = Arc::new(test_memory());
            let mut guest = BlkGuest::new(&mem);
            let len = sectors * 512 + odd * 100;
            let (_, status) = guest.request(kind, sector, len, kind != T_OUT, 0x99);
            let used = guest.run(&device);
            prop_assert_eq!(used.len(), 1);
            let in_range = sector.checked_add(u64::from(sectors)).is_some_and(|e| e <= SECTORS);
            let expected = match RequestType::from(kind) {
                RequestType::In | RequestType::Out if odd == 0 && in_range => S_OK,
                RequestType::In | RequestType::Out => S_IOERR,
                RequestType::Flush | RequestType::GetId => S_OK,
                RequestType::Unsupported(_) => S_UNSUPP,
                RequestType::Discard | RequestType::WriteZeroes => S_IOERR,
            };
            prop_assert_eq!(guest.byte(status), expected);
            let changed = disk.bytes().iter().any(|&b| b != 0);
            prop_assert_eq!(changed, kind == T_OUT && expected == S_OK && sectors > 0);
        }

        /// Arbitrary descriptor tables (addresses in and out of memory, any lengths, flags and
        /// next indices) never panic the device, every chain made available comes back, and
        /// no used length claims more than guest memory holds.
        #[test]
        fn arbitrary_descriptor_tables_never_panic(
            descs in proptest::collection::vec(
                (
                    prop_oneof![0x10_0000u64..0x10_2000, Just(MEM_SIZE - 8), any::<u64>()],
                    prop_oneof![0u32..1100, any::<u32>()],
                    0u16..16,
                    0u16..6,
                ),
                1..6,
            ),
            kind in prop_oneof![Just(T_IN), Just(T_OUT), Just(T_DISCARD), Just(T_WRITE_ZEROES), Just(T_GET_ID)],
            sector in 0u64..SECTORS,
        ) {
            let disk = TempDisk::new("blk-prop-table", SECTORS);
            let device = disk.device(false);
            let mem = Arc::new(test_memory());
            let mut guest = BlkGuest::new(&mem);
            // Headers at the start of the buffer area, so some descriptors point at them.
            let _ = guest.header(kind, sector);
            let _ = guest.raw(&descs);
            let used = guest.run(&device);
            prop_assert_eq!(used.len(), usize::from(guest.available()));
            prop_assert!(used.iter().all(|&(_, len)| u64::from(len) <= MEM_SIZE));
        }
    }
}
