//! A guest for the device targets: a small guest memory in which the fuzzer's input becomes
//! the driver's descriptor tables, available rings and buffers, and the device's view of each
//! queue, as a vhost-user backend builds it from the frontend's addresses.
//!
//! The layout is fixed (queue areas at the start, buffers after), but everything the guest
//! controls comes from the input: which descriptors exist and what they hold (addresses in
//! the buffers, anywhere in memory, across its end, or anywhere at all; any length, flags and
//! next index), how many chains are made available and which heads they name (out of range
//! too), whether `EVENT_IDX` is on, and the bytes of the buffer area (headers, payloads,
//! indirect tables). The encoding is dense on purpose: most inputs are chains a device
//! must look at closely, rather than addresses far outside memory.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::input::Input;

/// Guest memory of the device targets: 64 KiB at guest address 0.
pub type Mem = GuestMemoryMmap<()>;

/// Bytes of guest memory.
pub const MEM_SIZE: u64 = 0x1_0000;
/// Descriptors per queue (small, so an input describes whole tables).
pub const QUEUE_SIZE: u16 = 16;
/// Where the buffer area starts; everything below holds the queues.
pub const BUFFERS: u64 = 0x2000;

/// Guest addresses of one queue's three areas.
#[derive(Debug, Clone, Copy)]
struct Layout {
    desc: u64,
    avail: u64,
    used: u64,
}

/// Room per queue below [`BUFFERS`]: a table of 16 descriptors (256 bytes), an avail ring
/// (38 bytes) and a used ring (134 bytes) fit in 1 KiB.
const QUEUE_AREA: u64 = 0x400;

fn layout(index: u64) -> Layout {
    let base = index * QUEUE_AREA;
    Layout {
        desc: base,
        avail: base + 0x100,
        used: base + 0x200,
    }
}

/// A fresh guest memory, all zeroes.
pub fn memory() -> Mem {
    let size = usize::try_from(MEM_SIZE).unwrap_or(usize::MAX);
    Mem::from_ranges(&[(GuestAddress(0), size)]).expect("64 KiB of anonymous memory")
}

/// Descriptor flag bits (virtio 1.2, 2.7.5).
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// Decodes one descriptor from 8 input bytes: a selector (flags, and how to read the address
/// and length), the next index, an offset and a length.
fn descriptor(input: &mut Input<'_>) -> (u64, u32, u16, u16) {
    let sel = input.u8();
    let next = u16::from(input.u8());
    let offset = input.u16();
    let raw_len = input.u16();
    let extra = input.u16();
    // Flags: mostly the three the spec defines, sometimes any bits.
    let flags = if sel & 0x80 != 0 {
        u16::from(sel & 0x07) | (extra & 0xfff8)
    } else {
        u16::from(sel & 0x07) & (F_NEXT | F_WRITE | F_INDIRECT)
    };
    let addr = match (sel >> 3) & 3 {
        // In the buffer area, where the input's bytes are.
        0 => BUFFERS + u64::from(offset) % (MEM_SIZE - BUFFERS),
        // Anywhere in memory, the queues included.
        1 => u64::from(offset),
        // Just below the end, so a length crosses it.
        2 => MEM_SIZE - u64::from(offset % 0x100),
        // Anywhere at all.
        _ => (u64::from(extra) << 48) | (u64::from(offset) << 16) | u64::from(raw_len),
    };
    let len = match (sel >> 5) & 3 {
        0 => u32::from(raw_len % 0x200),
        1 => u32::from(raw_len),
        // A whole number of 16-byte descriptors, for indirect tables.
        2 => 16 * u32::from(raw_len % 0x20),
        _ => (u32::from(extra) << 16) | u32::from(raw_len),
    };
    (addr, len, flags, next)
}

/// Writes queue `index`'s descriptor table and avail ring from the input (see the module
/// docs) and returns the device's view of the queue.
fn driver_queue(mem: &Mem, index: u64, input: &mut Input<'_>) -> Queue {
    let at = layout(index);
    let sel = input.u8();
    let count = usize::from(sel & 0x1f).min(usize::from(QUEUE_SIZE));
    for i in 0..count {
        let (addr, len, flags, next) = descriptor(input);
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        let _ = mem.write_slice(&raw, GuestAddress(at.desc + 16 * i as u64));
    }
    // The avail ring: the index the driver claims (more than the ring holds, sometimes), and
    // the heads it names (out of the table, sometimes).
    let avail_idx = u16::from(input.u8() % 24);
    let flags = u16::from(input.u8() & 1);
    let _ = mem.write_obj(flags, GuestAddress(at.avail));
    let _ = mem.write_obj(avail_idx, GuestAddress(at.avail + 2));
    for slot in 0..u64::from(QUEUE_SIZE.min(avail_idx)) {
        let head = u16::from(input.u8() % 20);
        let _ = mem.write_obj(head, GuestAddress(at.avail + 4 + 2 * slot));
    }
    let event_idx = sel & 0x20 != 0;
    let mut queue = Queue::new(QUEUE_SIZE).expect("a queue of 16 is valid");
    queue.set_desc_table_address(Some(low(at.desc)), Some(0));
    queue.set_avail_ring_address(Some(low(at.avail)), Some(0));
    queue.set_used_ring_address(Some(low(at.used)), Some(0));
    queue.set_event_idx(event_idx);
    queue.set_ready(true);
    queue
}

fn low(addr: u64) -> u32 {
    u32::try_from(addr).expect("queue areas are below 4 GiB")
}

/// A guest with `queues` queues (index 0 first) whose tables come from `input`, then the
/// buffer area filled with the rest of it.
pub fn guest(input: &mut Input<'_>, queues: usize) -> (Mem, Vec<Queue>) {
    let mem = memory();
    let queues = (0..queues as u64)
        .map(|index| driver_queue(&mem, index, input))
        .collect();
    let room = usize::try_from(MEM_SIZE - BUFFERS).unwrap_or(0);
    let buffers = input.bytes(room);
    let _ = mem.write_slice(buffers, GuestAddress(BUFFERS));
    (mem, queues)
}
