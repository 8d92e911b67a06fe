//! The virtio-blk device: its features, its config space, and serving a queue (pop each
//! chain, parse it into a [`Request`], run it on the engine, write the status, return the
//! chain). Which thread serves which queue is the backend's business ([`super::backend`]).

use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{debug, warn};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

use super::io::SyncEngine;
use super::request::{Rejected, Request, RequestType, Status, ID_BYTES, MAX_SEGMENTS, SECTOR_SIZE};
use crate::vsock::packet::Mem;

/// Bytes of `struct virtio_blk_config` up to and including `write_zeroes_may_unmap` and its
/// padding (virtio 1.2, 5.2.4).
pub const CONFIG_SIZE: usize = 60;
/// Queue size the device advertises segments for: `seg_max` is this minus the header and the
/// status descriptors, as QEMU does.
pub const QUEUE_SIZE_FOR_SEG_MAX: u32 = 128;
/// Largest discard / write-zeroes request, in sectors (the config's limits; the engine itself
/// has none).
pub const MAX_DISCARD_SECTORS: u32 = u32::MAX / SECTOR_SIZE as u32;

/// What the device serves, from the command line.
#[derive(Debug)]
pub struct BlkDevice {
    engine: SyncEngine,
    readonly: bool,
    num_queues: u16,
    id: [u8; ID_BYTES],
    counters: Counters,
}

/// Requests served, by outcome. Read with [`BlkDevice::counters`].
#[derive(Debug, Default)]
pub struct Counters {
    ok: AtomicU64,
    io_errors: AtomicU64,
    unsupported: AtomicU64,
    malformed: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CounterValues {
    /// Requests answered `VIRTIO_BLK_S_OK`.
    pub ok: u64,
    /// Requests whose I/O failed (or that a read-only disk refused).
    pub io_errors: u64,
    /// Requests of a type the device does not know.
    pub unsupported: u64,
    /// Requests refused before any I/O: bad chains, lengths, ranges, directions.
    pub malformed: u64,
}

impl BlkDevice {
    /// A device over `engine` with `num_queues` queues (at least 1); read-only if `readonly`.
    pub fn new(engine: SyncEngine, readonly: bool, num_queues: u16) -> Self {
        let mut id = [0u8; ID_BYTES];
        // The id is the backing file's name, cut to 20 bytes (no NUL needed when full).
        let name = engine
            .path()
            .file_name()
            .map(|n| n.as_encoded_bytes().to_vec())
            .unwrap_or_default();
        for (dst, src) in id.iter_mut().zip(name) {
            *dst = src;
        }
        Self {
            engine,
            readonly,
            num_queues: num_queues.max(1),
            id,
            counters: Counters::default(),
        }
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
        put(20, &(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
        put(34, &self.num_queues.to_le_bytes()); // num_queues
        put(36, &MAX_DISCARD_SECTORS.to_le_bytes()); // max_discard_sectors
        put(40, &MAX_SEGMENTS.to_le_bytes()); // max_discard_seg
        put(44, &1u32.to_le_bytes()); // discard_sector_alignment
        put(48, &MAX_DISCARD_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
        put(52, &MAX_SEGMENTS.to_le_bytes()); // max_write_zeroes_seg
        put(56, &[1]); // write_zeroes_may_unmap
        config
    }

    /// Requests served so far.
    pub fn counters(&self) -> CounterValues {
        let c = &self.counters;
        CounterValues {
            ok: c.ok.load(Ordering::Relaxed),
            io_errors: c.io_errors.load(Ordering::Relaxed),
            unsupported: c.unsupported.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
        }
    }

    /// Serves every request available on `queue`, with notifications from the guest off
    /// while it does and a last look after turning them back on (so a request made meanwhile
    /// is not missed). Returns whether any chain was returned to the guest.
    pub fn process_queue(&self, queue: &mut Queue, mem: &Mem) -> Result<bool, virtio_queue::Error> {
        let mut used_any = false;
        loop {
            queue.disable_notification(mem)?;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let len = self.serve(chain, mem);
                queue.add_used(mem, head, len)?;
                used_any = true;
            }
            if !queue.enable_notification(mem)? {
                return Ok(used_any);
            }
        }
    }

    /// Serves one chain; returns the bytes written into it (the used length).
    fn serve(&self, chain: virtio_queue::DescriptorChain<&Mem>, mem: &Mem) -> u32 {
        let (status, status_addr, written) =
            match Request::parse(chain, mem, self.engine.capacity()) {
                Ok(request) => {
                    let (status, written) = self.execute(&request, mem);
                    (status, request.status, written)
                }
                Err(Rejected { error, status }) => {
                    debug!(%error, "refusing a virtio-blk request");
                    self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    let Some(addr) = status else {
                        return 0;
                    };
                    (Status::IoErr, addr, 0)
                }
            };
        if mem.write_obj(status as u8, status_addr).is_err() {
            // The address was checked by validation; only a memory update in between could
            // move it, and then the guest learns nothing more from a status.
            return 0;
        }
        u32::try_from(written + 1).unwrap_or(u32::MAX)
    }

    /// Runs a parsed request; returns its status and the data bytes written to the guest.
    fn execute(&self, request: &Request, mem: &Mem) -> (Status, usize) {
        let writes = matches!(
            request.kind,
            RequestType::Out | RequestType::Discard | RequestType::WriteZeroes
        );
        let result = match request.kind {
            _ if writes && self.readonly => {
                debug!(kind = ?request.kind, "write request to a read-only disk");
                Err(std::io::ErrorKind::PermissionDenied.into())
            }
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
            RequestType::Unsupported(kind) => {
                debug!(kind, "unsupported virtio-blk request type");
                self.counters.unsupported.fetch_add(1, Ordering::Relaxed);
                return (Status::Unsupp, 0);
            }
        };
        match result {
            Ok(()) => {
                self.counters.ok.fetch_add(1, Ordering::Relaxed);
                let written = match request.kind {
                    RequestType::In | RequestType::GetId => request.data_len,
                    _ => 0,
                };
                (Status::Ok, written)
            }
            Err(err) => {
                if !(writes && self.readonly) {
                    warn!(kind = ?request.kind, sector = request.sector, %err, disk = %self.engine.path().display(), "disk I/O failed");
                }
                self.counters.io_errors.fetch_add(1, Ordering::Relaxed);
                (Status::IoErr, 0)
            }
        }
    }

    fn write_id(&self, request: &Request, mem: &Mem) -> std::io::Result<()> {
        let mut id = &self.id[..];
        for buf in &request.data {
            let (now, rest) = id.split_at(buf.len.min(id.len()));
            mem.write_slice(now, buf.addr)
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
            id = rest;
        }
        Ok(())
    }
}
