//! Test helpers for the vsock device: a temporary directory that removes itself, and a mock
//! guest that drives the device through `virtio-queue`'s mock split queues, the way Firecracker
//! tests devices without a VM.

// Test values (descriptor flags, header sizes, small lengths) all fit their targets.
#![allow(clippy::cast_possible_truncation)]

use std::path::{Path, PathBuf};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress};

use super::device::VsockDevice;
use super::muxer::Muxer;
use super::packet::{Header, Mem, Op, HDR_SIZE, HOST_CID};

/// A fresh directory under the system temp dir, removed with its content on drop.
pub struct TestDir(PathBuf);

impl TestDir {
    /// Creates `hull-devices-<name>-<pid>-<n>`.
    pub fn new(name: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("hull-devices-{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).expect("creating a test directory");
        Self(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A guest for device tests: guest memory, rx and tx queues laid out by `virtio-queue`'s
/// `MockSplitQueue`, and a bump allocator for packet buffers. The guest has CID [`GUEST_CID`].
pub struct MockGuest<'a> {
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
    rx_used_seen: u16,
    tx_used_seen: u16,
    /// Head index → buffer address, for rx chains this guest offered.
    rx_bufs: std::collections::HashMap<u16, u64>,
}

/// An rx buffer the device returned: head index, length written, and the packet in it.
pub type RxUsed = (u32, u32, Option<(Header, Vec<u8>)>);

/// The guest's context id in device tests.
pub const GUEST_CID: u64 = 3;

/// Size of guest memory in device tests, in bytes.
pub const MEM_SIZE: u64 = 0x100_0000;

/// Where packet buffers start in the test guest's memory.
const BUF_START: u64 = 0x10_0000;

/// Guest memory for device tests.
pub fn test_memory() -> Mem {
    Mem::from_ranges(&[(GuestAddress(0), usize::try_from(MEM_SIZE).expect("fits"))])
        .expect("test memory")
}

/// Guest memory backed by a memfd, shareable with a vhost-user backend.
pub fn shared_test_memory() -> (Mem, std::fs::File) {
    let fd = nix::sys::memfd::memfd_create(
        c"hull-test-guest",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .expect("memfd");
    let file = std::fs::File::from(fd);
    file.set_len(MEM_SIZE).expect("sizing the memfd");
    let offset = vm_memory::FileOffset::new(file.try_clone().expect("dup"), 0);
    let size = usize::try_from(MEM_SIZE).expect("fits");
    let mem = Mem::from_ranges_with_files(&[(GuestAddress(0), size, Some(offset))])
        .expect("shared memory");
    (mem, file)
}

impl<'a> MockGuest<'a> {
    /// Queues of 256 entries: rx at 0, tx at 0x8000.
    pub fn new(mem: &'a Mem) -> Self {
        let rx = MockSplitQueue::create(mem, GuestAddress(0), 256);
        let tx = MockSplitQueue::create(mem, GuestAddress(0x8000), 256);
        let rxq = rx.create_queue::<Queue>().expect("rx queue");
        let txq = tx.create_queue::<Queue>().expect("tx queue");
        Self {
            mem,
            rx,
            tx,
            rxq,
            txq,
            next_rx_desc: 0,
            next_tx_desc: 0,
            next_buf: BUF_START,
            rx_used_seen: 0,
            tx_used_seen: 0,
            rx_bufs: std::collections::HashMap::new(),
        }
    }

    /// Guest addresses of a queue's descriptor table, avail ring and used ring.
    pub fn ring_addrs(&self, rx: bool) -> (u64, u64, u64) {
        let q = if rx { &self.rx } else { &self.tx };
        (q.desc_table_addr().0, q.avail_addr().0, q.used_addr().0)
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let addr = self.next_buf;
        self.next_buf += len.next_multiple_of(16);
        assert!(self.next_buf < MEM_SIZE, "test guest out of buffer memory");
        addr
    }

    /// Puts raw descriptors on the tx queue as the guest would (they may be malformed);
    /// `next` fields are relative to the first descriptor here.
    pub fn tx_raw(&mut self, descs: &[(u64, u32, u16, u16)]) {
        self.next_tx_desc = add_raw_chain(&self.tx, self.next_tx_desc, descs);
    }

    /// Sends a well-formed packet: header and payload in two descriptors.
    pub fn send(&mut self, header: &Header, payload: &[u8]) {
        let hdr_addr = self.alloc(HDR_SIZE as u64);
        self.mem
            .write_slice(&header.to_bytes(), GuestAddress(hdr_addr))
            .expect("header");
        if payload.is_empty() {
            self.tx_raw(&[(hdr_addr, HDR_SIZE as u32, 0, 0)]);
        } else {
            let data_addr = self.alloc(payload.len() as u64);
            self.mem
                .write_slice(payload, GuestAddress(data_addr))
                .expect("payload");
            let len = u32::try_from(payload.len()).expect("small payload");
            self.tx_raw(&[
                (hdr_addr, HDR_SIZE as u32, VRING_DESC_F_NEXT as u16, 1),
                (data_addr, len, 0, 0),
            ]);
        }
    }

    /// Writes `bytes` into guest memory and returns their address.
    pub fn place(&mut self, bytes: &[u8]) -> u64 {
        let addr = self.alloc(bytes.len() as u64);
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .expect("placing bytes");
        addr
    }

    /// Offers raw descriptors on the rx queue (they may be malformed).
    pub fn rx_raw(&mut self, descs: &[(u64, u32, u16, u16)]) {
        let base = self.next_rx_desc;
        self.next_rx_desc = add_raw_chain(&self.rx, base, descs);
        if let Some(&(addr, ..)) = descs.first() {
            self.rx_bufs.insert(base, addr);
        }
    }

    /// Offers `count` rx buffers of a header plus `payload` bytes each, one descriptor each.
    pub fn offer_rx(&mut self, count: usize, payload: u32) {
        for _ in 0..count {
            let len = HDR_SIZE as u32 + payload;
            let addr = self.alloc(u64::from(len));
            self.rx_raw(&[(addr, len, VRING_DESC_F_WRITE as u16, 0)]);
        }
    }

    /// Tx chains the device returned since the last call.
    pub fn tx_used(&mut self) -> usize {
        let (idx, entries) = used_entries(self.mem, &self.tx, self.tx_used_seen);
        self.tx_used_seen = idx;
        entries.len()
    }

    /// Rx buffers the device returned since the last call, as (head, length, packet); the
    /// packet is `None` when the buffer came back empty.
    pub fn rx_used(&mut self) -> Vec<RxUsed> {
        let (idx, entries) = used_entries(self.mem, &self.rx, self.rx_used_seen);
        self.rx_used_seen = idx;
        entries
            .into_iter()
            .map(|(id, len)| {
                let packet = (len as usize >= HDR_SIZE).then(|| {
                    let addr = self.rx_bufs[&u16::try_from(id).expect("head")];
                    let mut raw = [0u8; HDR_SIZE];
                    self.mem
                        .read_slice(&mut raw, GuestAddress(addr))
                        .expect("header");
                    let mut data = vec![0u8; len as usize - HDR_SIZE];
                    self.mem
                        .read_slice(&mut data, GuestAddress(addr + HDR_SIZE as u64))
                        .expect("data");
                    (Header::parse(&raw), data)
                });
                (id, len, packet)
            })
            .collect()
    }

    /// Lets the device take the tx queue.
    pub fn kick_tx(&mut self, device: &mut VsockDevice) {
        device
            .process_tx(&mut self.txq, self.mem)
            .expect("tx queue usable");
    }

    /// Offers buffers, lets the device fill them, returns the packets it produced.
    pub fn receive(&mut self, device: &mut VsockDevice) -> Vec<(Header, Vec<u8>)> {
        self.offer_rx(4, 4096);
        device
            .process_rx(&mut self.rxq, self.mem)
            .expect("rx queue usable");
        self.rx_used()
            .into_iter()
            .filter_map(|(_, _, p)| p)
            .collect()
    }
}

/// Puts raw descriptors (address, length, flags, next) into `queue`'s table from index `base`
/// and makes the first one available, as a guest would (they may be malformed); `next`
/// fields are relative to `base`. Returns the index after the last descriptor.
pub fn add_raw_chain(
    queue: &MockSplitQueue<'_, Mem>,
    base: u16,
    descs: &[(u64, u32, u16, u16)],
) -> u16 {
    let raw: Vec<RawDescriptor> = descs
        .iter()
        .map(|&(addr, len, flags, next)| {
            RawDescriptor::from(SplitDescriptor::new(
                addr,
                len,
                flags,
                next.wrapping_add(base),
            ))
        })
        .collect();
    queue
        .add_desc_chains(&raw, base)
        .expect("adding descriptors");
    base + u16::try_from(descs.len()).expect("few descriptors")
}

/// The used ring's index and the (head, length) entries from `seen` up to it, for a queue of
/// 256 entries.
pub fn used_entries(
    mem: &Mem,
    queue: &MockSplitQueue<'_, Mem>,
    seen: u16,
) -> (u16, Vec<(u32, u32)>) {
    let base = queue.used_addr();
    let idx: u16 = mem.read_obj(base.unchecked_add(2)).expect("used idx");
    let entries = (seen..idx)
        .map(|i| {
            let at = base.unchecked_add(4 + 8 * u64::from(i % 256));
            let id: u32 = mem.read_obj(at).expect("used id");
            let len: u32 = mem.read_obj(at.unchecked_add(4)).expect("used len");
            (id, len)
        })
        .collect();
    (idx, entries)
}

/// A stream packet from the guest (CID [`GUEST_CID`], port `guest_port`) to host port
/// `host_port`, with a 64 KiB receive buffer.
pub fn guest_packet(op: Op, guest_port: u32, host_port: u32) -> Header {
    let mut header = Header::control((GUEST_CID, guest_port), (HOST_CID, host_port), op);
    header.buf_alloc = 64 * 1024;
    header
}

/// A device whose hybrid socket is `<dir>/v.sock`.
pub fn test_device(dir: &TestDir) -> VsockDevice {
    VsockDevice::new(Muxer::new(&dir.path().join("v.sock"), GUEST_CID).expect("muxer"))
}
