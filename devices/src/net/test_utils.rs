//! Test helpers for the network device: a mock guest that puts frames and rx buffers on
//! `virtio-queue` mock split queues, and a unix datagram socket pair standing in for the tap
//! (it keeps frame boundaries and is non-blocking, as a tap queue is).

// Test values (descriptor flags, small lengths) all fit their targets.
#![allow(clippy::cast_possible_truncation)]

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixDatagram;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::device::{Counters, FrameFormat};
use super::queue_pair::{QueuePair, RxPass};
use crate::vsock::packet::Mem;
use crate::vsock::test_utils::{add_raw_chain, used_entries, MEM_SIZE};

/// Features of a modern guest with mergeable rx buffers.
pub const MODERN_MRG: u64 = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MRG_RXBUF);
/// Features of a modern guest without merging.
pub const MODERN: u64 = 1 << VIRTIO_F_VERSION_1;

/// A guest with an rx queue at 0 and a tx queue at 0x8000 (256 entries each), a bump
/// allocator for buffers, and the host end of a datagram pair standing in for the tap.
pub struct NetGuest<'a> {
    mem: &'a Mem,
    rx: MockSplitQueue<'a, Mem>,
    tx: MockSplitQueue<'a, Mem>,
    /// The device's view of the rx queue.
    pub rxq: Queue,
    /// The device's view of the tx queue.
    pub txq: Queue,
    next_rx_desc: u16,
    next_tx_desc: u16,
    next_buf: u64,
    rx_seen: u16,
    tx_seen: u16,
    /// The device's end of the stand-in tap.
    pub device_end: OwnedFd,
    /// The host's end of the stand-in tap.
    pub host: UnixDatagram,
    /// The format the queues use.
    pub format: FrameFormat,
    /// The counters the queues count on.
    pub counters: Counters,
}

impl<'a> NetGuest<'a> {
    /// A guest on `mem` that accepted `features`.
    pub fn new(mem: &'a Mem, features: u64) -> Self {
        let rx = MockSplitQueue::create(mem, GuestAddress(0), 256);
        let tx = MockSplitQueue::create(mem, GuestAddress(0x8000), 256);
        let rxq = rx.create_queue::<Queue>().expect("rx queue");
        let txq = tx.create_queue::<Queue>().expect("tx queue");
        let (device_end, host) = UnixDatagram::pair().expect("socket pair");
        device_end.set_nonblocking(true).expect("nonblocking");
        host.set_nonblocking(true).expect("nonblocking");
        Self {
            mem,
            rx,
            tx,
            rxq,
            txq,
            next_rx_desc: 0,
            next_tx_desc: 0,
            next_buf: 0x10_0000,
            rx_seen: 0,
            tx_seen: 0,
            device_end: OwnedFd::from(device_end),
            host,
            format: FrameFormat::new(features, 1500),
            counters: Counters::new(1),
        }
    }

    /// Room for `len` bytes in guest memory, filled with `fill`.
    pub fn buf(&mut self, len: usize, fill: u8) -> u64 {
        let addr = self.next_buf;
        self.next_buf += (len as u64).next_multiple_of(64).max(64);
        assert!(self.next_buf < MEM_SIZE, "test guest out of buffer memory");
        self.mem
            .write_slice(&vec![fill; len], GuestAddress(addr))
            .expect("filling a buffer");
        addr
    }

    /// `bytes` placed in guest memory; returns the address.
    pub fn place(&mut self, bytes: &[u8]) -> u64 {
        let addr = self.buf(bytes.len(), 0);
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .expect("placing bytes");
        addr
    }

    /// Raw descriptors on the tx queue (`next` relative to the first); returns the head.
    pub fn tx_raw(&mut self, descs: &[(u64, u32, u16, u16)]) -> u16 {
        let head = self.next_tx_desc;
        self.next_tx_desc = add_raw_chain(&self.tx, head, descs);
        head
    }

    /// Raw descriptors on the rx queue (`next` relative to the first); returns the head.
    pub fn rx_raw(&mut self, descs: &[(u64, u32, u16, u16)]) -> u16 {
        let head = self.next_rx_desc;
        self.next_rx_desc = add_raw_chain(&self.rx, head, descs);
        head
    }

    /// Sends `packet` (header and frame) in pieces of the lengths in `split` (the rest in a
    /// last piece).
    pub fn send(&mut self, packet: &[u8], split: &[usize]) -> u16 {
        let mut descs = Vec::new();
        let mut rest = packet;
        for &len in split {
            let (now, later) = rest.split_at(len.min(rest.len()));
            descs.push(now.to_vec());
            rest = later;
        }
        if !rest.is_empty() {
            descs.push(rest.to_vec());
        }
        let count = descs.len();
        let raw: Vec<(u64, u32, u16, u16)> = descs
            .iter()
            .enumerate()
            .map(|(i, piece)| {
                let addr = self.place(piece);
                let last = i + 1 == count;
                let flags = if last { 0 } else { R_NEXT };
                (addr, piece.len() as u32, flags, (i + 1) as u16)
            })
            .collect();
        self.tx_raw(&raw)
    }

    /// Offers `count` rx chains of one writable buffer of `len` bytes each (filled with
    /// 0xee); returns their addresses.
    pub fn offer_rx(&mut self, count: usize, len: u32) -> Vec<u64> {
        (0..count)
            .map(|_| {
                let addr = self.buf(len as usize, 0xee);
                self.rx_raw(&[(addr, len, W_LAST, 0)]);
                addr
            })
            .collect()
    }

    /// Lets the device serve the tx queue; returns the used entries it produced.
    pub fn run_tx(&mut self) -> Vec<(u32, u32)> {
        let pair = QueuePair::new(0, self.device_end.as_fd(), self.format, &self.counters);
        pair.process_tx(&mut self.txq, self.mem)
            .expect("tx queue usable");
        let (idx, entries) = used_entries(self.mem, &self.tx, self.tx_seen);
        self.tx_seen = idx;
        entries
    }

    /// Lets the device serve the rx queue; returns the pass and the used entries.
    pub fn run_rx(&mut self) -> (RxPass, Vec<(u32, u32)>) {
        let pair = QueuePair::new(0, self.device_end.as_fd(), self.format, &self.counters);
        let pass = pair
            .process_rx(&mut self.rxq, self.mem)
            .expect("rx queue usable");
        let (idx, entries) = used_entries(self.mem, &self.rx, self.rx_seen);
        self.rx_seen = idx;
        (pass, entries)
    }

    /// Chains made available on the rx and tx queues so far.
    pub fn available(&self) -> (u16, u16) {
        (self.rx.avail().idx().load(), self.tx.avail().idx().load())
    }

    /// Sets the avail ring's index of the rx (or tx) queue to `idx`, as a lying guest may.
    pub fn set_available(&self, rx: bool, idx: u16) {
        let queue = if rx { &self.rx } else { &self.tx };
        queue.avail().idx().store(idx);
    }

    /// The next frame the device wrote to the stand-in tap, if any.
    pub fn host_recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70_000];
        let n = self.host.recv(&mut buf).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    /// A frame from the host side (header included) for the device to read.
    pub fn host_send(&self, packet: &[u8]) {
        self.host.send(packet).expect("sending to the device");
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

/// Descriptor flags of a device-readable buffer followed by another.
pub const R_NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
/// Descriptor flags of a last, device-writable buffer.
pub const W_LAST: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
/// Descriptor flags of a device-writable buffer followed by another.
pub const W_NEXT: u16 = (virtio_bindings::virtio_ring::VRING_DESC_F_NEXT
    | virtio_bindings::virtio_ring::VRING_DESC_F_WRITE) as u16;

/// A packet of a 12-byte header (flags `hdr_flags`, the rest zero) and an Ethernet frame of
/// `len` bytes whose payload is a pattern seeded by `seed`.
pub fn packet(hdr_len: usize, len: usize, seed: u8) -> Vec<u8> {
    let mut p = vec![0u8; hdr_len];
    p.extend((0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed)));
    p
}
