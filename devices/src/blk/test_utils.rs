//! Test helpers for the block device: a sparse disk file in a temporary directory, and a mock
//! guest that puts requests on a `virtio-queue` mock split queue and reads back statuses.

// Test values (descriptor flags, small lengths) all fit their targets.
#![allow(clippy::cast_possible_truncation)]

use std::path::PathBuf;
use std::sync::Arc;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::device::BlkDevice;
use super::io::SyncEngine;
use super::request::HEADER_SIZE;
use crate::vsock::packet::Mem;
use crate::vsock::test_utils::{add_raw_chain, used_entries, TestDir, MEM_SIZE};

/// Descriptor flags of a device-readable buffer followed by another.
pub const R_NEXT: u16 = VRING_DESC_F_NEXT as u16;
/// Descriptor flags of a device-writable buffer followed by another.
pub const W_NEXT: u16 = (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16;
/// Descriptor flags of a last, device-writable buffer.
pub const W_LAST: u16 = VRING_DESC_F_WRITE as u16;

/// A sparse disk file of `sectors` sectors in its own temporary directory, removed on drop.
pub struct TempDisk {
    _dir: TestDir,
    /// The file.
    pub path: PathBuf,
}

impl TempDisk {
    /// A zero-filled (sparse) disk.
    pub fn new(name: &str, sectors: u64) -> Self {
        let dir = TestDir::new(name);
        let path = dir.path().join("disk.img");
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(sectors * 512))
            .expect("creating the disk file");
        Self { _dir: dir, path }
    }

    /// A device over this disk.
    pub fn device(&self, readonly: bool) -> BlkDevice {
        BlkDevice::new(
            SyncEngine::open(&self.path, readonly, false).expect("opening the disk"),
            readonly,
            1,
        )
    }

    /// The disk's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).expect("reading the disk")
    }
}

/// A guest with one request queue of 256 entries at address 0 and a bump allocator for
/// request buffers.
pub struct BlkGuest<'a> {
    mem: &'a Arc<Mem>,
    mock: MockSplitQueue<'a, Mem>,
    /// The device's view of the queue.
    pub queue: Queue,
    next_desc: u16,
    last_head: u16,
    next_buf: u64,
    used_seen: u16,
}

impl<'a> BlkGuest<'a> {
    /// A guest on `mem`.
    pub fn new(mem: &'a Arc<Mem>) -> Self {
        let mock = MockSplitQueue::create(&**mem, GuestAddress(0), 256);
        let queue = mock.create_queue::<Queue>().expect("queue");
        Self {
            mem,
            mock,
            queue,
            next_desc: 0,
            last_head: 0,
            next_buf: 0x10_0000,
            used_seen: 0,
        }
    }

    /// Guest addresses of the queue's descriptor table, avail ring and used ring.
    pub fn ring_addrs(&self) -> (u64, u64, u64) {
        let q = &self.mock;
        (q.desc_table_addr().0, q.avail_addr().0, q.used_addr().0)
    }

    /// Room for `len` bytes in guest memory, filled with `fill`.
    pub fn buf(&mut self, len: usize, fill: u8) -> u64 {
        let addr = self.next_buf;
        self.next_buf += (len as u64).next_multiple_of(512).max(512);
        assert!(self.next_buf < MEM_SIZE, "test guest out of buffer memory");
        self.mem
            .write_slice(&vec![fill; len], GuestAddress(addr))
            .expect("filling a buffer");
        addr
    }

    /// A request header in guest memory.
    pub fn header(&mut self, kind: u32, sector: u64) -> u64 {
        let addr = self.buf(HEADER_SIZE, 0);
        self.mem.write_obj(kind, GuestAddress(addr)).expect("type");
        self.mem
            .write_obj(sector, GuestAddress(addr + 8))
            .expect("sector");
        addr
    }

    /// Puts a raw chain on the queue (see [`add_raw_chain`]); returns its head index.
    pub fn raw(&mut self, descs: &[(u64, u32, u16, u16)]) -> u16 {
        let head = self.next_desc;
        self.next_desc = add_raw_chain(&self.mock, head, descs);
        self.last_head = head;
        head
    }

    /// A well-formed request: header, one data buffer of `data_len` bytes (device-writable
    /// if `device_writes`, filled with `fill`), status. Returns (data address, status address).
    pub fn request(
        &mut self,
        kind: u32,
        sector: u64,
        data_len: u32,
        device_writes: bool,
        fill: u8,
    ) -> (u64, u64) {
        let header = self.header(kind, sector);
        let status = self.buf(1, 0xee);
        if data_len == 0 {
            self.raw(&[(header, 16, R_NEXT, 1), (status, 1, W_LAST, 0)]);
            return (0, status);
        }
        let data = self.buf(data_len as usize, fill);
        let flags = if device_writes { W_NEXT } else { R_NEXT };
        self.raw(&[
            (header, 16, R_NEXT, 1),
            (data, data_len, flags, 2),
            (status, 1, W_LAST, 0),
        ]);
        (data, status)
    }

    /// Head index of the chain [`Self::raw`] put last.
    pub fn raw_head_of_last(&self) -> u32 {
        u32::from(self.last_head)
    }

    /// Chains made available so far (the avail ring's index).
    pub fn available(&self) -> u16 {
        self.mock.avail().idx().load()
    }

    /// Sets the avail ring's index to `idx`, as a lying guest may.
    pub fn set_available(&self, idx: u16) {
        self.mock.avail().idx().store(idx);
    }

    /// An indirect descriptor table in guest memory holding `descs` (address, length,
    /// flags, next index within the table); returns its address.
    pub fn indirect_table(&mut self, descs: &[(u64, u32, u16, u16)]) -> u64 {
        let addr = self.buf(descs.len() * 16, 0);
        for (i, &(buf, len, flags, next)) in descs.iter().enumerate() {
            let at = GuestAddress(addr + 16 * i as u64);
            let mut raw = buf.to_le_bytes().to_vec();
            raw.extend_from_slice(&len.to_le_bytes());
            raw.extend_from_slice(&flags.to_le_bytes());
            raw.extend_from_slice(&next.to_le_bytes());
            self.mem.write_slice(&raw, at).expect("indirect descriptor");
        }
        addr
    }

    /// Lets the device serve the queue, as its worker does: a pass over the queue, then the
    /// completions of its ring as they come until none is in flight. Returns the (head, used
    /// length) entries it produced.
    pub fn run(&mut self, device: &BlkDevice) -> Vec<(u32, u32)> {
        device
            .process_queue(0, &mut self.queue, self.mem)
            .expect("queue usable");
        while device.in_flight(0) > 0 {
            device
                .complete_queue(0, &mut self.queue, self.mem, true)
                .expect("queue usable");
        }
        let (idx, entries) = used_entries(self.mem, &self.mock, self.used_seen);
        self.used_seen = idx;
        entries
    }

    /// Writes the byte `value` at `addr`.
    pub fn mem_write(&self, addr: u64, value: u8) {
        self.mem
            .write_obj(value, GuestAddress(addr))
            .expect("writing a byte");
    }

    /// The byte at `addr`.
    pub fn byte(&self, addr: u64) -> u8 {
        self.mem
            .read_obj(GuestAddress(addr))
            .expect("reading a byte")
    }

    /// `len` bytes at `addr`.
    pub fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        self.mem
            .read_slice(&mut out, GuestAddress(addr))
            .expect("reading bytes");
        out
    }
}
