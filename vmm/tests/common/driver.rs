//! A virtio driver written in the test, as a guest kernel would drive a virtio-mmio device:
//! 32-bit register accesses through the VMM's MMIO bus, the initialization sequence of
//! virtio 1.x section 3.1.1, and a split queue in guest memory it fills by hand.

use hull_vmm::bus::{Access, Bus};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

// Register offsets (virtio 1.x section 4.2.2).
pub const MAGIC: u64 = 0x000;
pub const VERSION: u64 = 0x004;
pub const DEVICE_ID: u64 = 0x008;
pub const DEVICE_FEATURES: u64 = 0x010;
pub const DEVICE_FEATURES_SEL: u64 = 0x014;
pub const DRIVER_FEATURES: u64 = 0x020;
pub const DRIVER_FEATURES_SEL: u64 = 0x024;
pub const QUEUE_SEL: u64 = 0x030;
pub const QUEUE_NUM_MAX: u64 = 0x034;
pub const QUEUE_NUM: u64 = 0x038;
pub const QUEUE_READY: u64 = 0x044;
pub const QUEUE_NOTIFY: u64 = 0x050;
pub const INTERRUPT_STATUS: u64 = 0x060;
pub const INTERRUPT_ACK: u64 = 0x064;
pub const STATUS: u64 = 0x070;
pub const QUEUE_DESC_LOW: u64 = 0x080;
pub const QUEUE_DESC_HIGH: u64 = 0x084;
pub const QUEUE_AVAIL_LOW: u64 = 0x090;
pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
pub const QUEUE_USED_LOW: u64 = 0x0a0;
pub const QUEUE_USED_HIGH: u64 = 0x0a4;
pub const CONFIG: u64 = 0x100;

pub const ACKNOWLEDGE: u32 = 1;
pub const DRIVER: u32 = 2;
pub const DRIVER_OK: u32 = 4;
pub const FEATURES_OK: u32 = 8;
pub const NEEDS_RESET: u32 = 0x40;
pub const VERSION_1: u64 = 1 << 32;
pub const INT_VRING: u32 = 1;

/// Descriptor flags.
pub const DESC_NEXT: u16 = 1;
pub const DESC_WRITE: u16 = 2;

/// The driver of the device whose registers are at `base` on `bus`.
pub struct Driver<'a> {
    pub bus: &'a Bus,
    pub base: u64,
}

impl Driver<'_> {
    pub fn read(&self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        assert_eq!(self.bus.read(self.base + offset, &mut data), Access::Device);
        u32::from_le_bytes(data)
    }

    pub fn write(&self, offset: u64, value: u32) {
        assert_eq!(
            self.bus.write(self.base + offset, &value.to_le_bytes()),
            Access::Device
        );
    }

    /// Bytes of the device configuration space.
    pub fn config(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        self.bus.read(self.base + CONFIG + offset, &mut data);
        data
    }

    /// Resets the device, checks it is a version 2 virtio-mmio device of `device_id`,
    /// and negotiates `wanted & offered` (plus VERSION_1); returns what the device offered.
    pub fn negotiate(&self, device_id: u32, wanted: u64) -> u64 {
        assert_eq!(self.read(MAGIC), 0x7472_6976, "virtio-mmio magic");
        assert_eq!(self.read(VERSION), 2, "modern register layout");
        assert_eq!(self.read(DEVICE_ID), device_id);
        self.write(STATUS, 0);
        self.write(STATUS, ACKNOWLEDGE);
        self.write(STATUS, ACKNOWLEDGE | DRIVER);
        let mut offered = 0u64;
        for page in 0..2u32 {
            self.write(DEVICE_FEATURES_SEL, page);
            offered |= u64::from(self.read(DEVICE_FEATURES)) << (32 * page);
        }
        assert_ne!(offered & VERSION_1, 0, "VERSION_1 offered");
        let acked = (wanted & offered) | VERSION_1;
        for page in 0..2u32 {
            self.write(DRIVER_FEATURES_SEL, page);
            self.write(DRIVER_FEATURES, split(acked >> (32 * page)).0);
        }
        self.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(
            self.read(STATUS),
            ACKNOWLEDGE | DRIVER | FEATURES_OK,
            "the device accepted the features"
        );
        offered
    }

    /// Sets up queue `index` with `queue`'s layout and marks it ready.
    pub fn setup_queue(&self, index: u32, queue: &SplitQueue) {
        self.write(QUEUE_SEL, index);
        assert_eq!(self.read(QUEUE_READY), 0);
        assert!(self.read(QUEUE_NUM_MAX) >= u32::from(queue.size));
        self.write(QUEUE_NUM, u32::from(queue.size));
        for (low, high, addr) in [
            (QUEUE_DESC_LOW, QUEUE_DESC_HIGH, queue.desc),
            (QUEUE_AVAIL_LOW, QUEUE_AVAIL_HIGH, queue.avail),
            (QUEUE_USED_LOW, QUEUE_USED_HIGH, queue.used),
        ] {
            let (lo, hi) = split(addr);
            self.write(low, lo);
            self.write(high, hi);
        }
        self.write(QUEUE_READY, 1);
    }

    pub fn driver_ok(&self) {
        self.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    }

    pub fn kick(&self, queue: u32) {
        self.write(QUEUE_NOTIFY, queue);
    }
}

/// The low and high halves of `value`.
pub fn split(value: u64) -> (u32, u32) {
    let bytes = value.to_le_bytes();
    (
        u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
    )
}

/// A split virtqueue the test driver fills.
pub struct SplitQueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    next_avail: u16,
}

impl SplitQueue {
    /// A queue of `size` descriptors with its three areas in the 12 KiB from `at`.
    pub fn new(size: u16, at: u64) -> Self {
        Self {
            size,
            desc: at,
            avail: at + 0x1000,
            used: at + 0x2000,
            next_desc: 0,
            next_avail: 0,
        }
    }

    /// Writes a descriptor chain of `buffers` (address, length, device-writable) and makes
    /// it available; returns its head.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, buffers: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, writable)) in buffers.iter().enumerate() {
            let index = self.next_desc;
            let last = i + 1 == buffers.len();
            let flags = if last { 0 } else { DESC_NEXT } | if writable { DESC_WRITE } else { 0 };
            let next = if last { 0 } else { (index + 1) % self.size };
            let entry = self.desc + 16 * u64::from(index);
            mem.write_obj(addr, GuestAddress(entry)).unwrap();
            mem.write_obj(len, GuestAddress(entry + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(entry + 12)).unwrap();
            mem.write_obj(next, GuestAddress(entry + 14)).unwrap();
            self.next_desc = (index + 1) % self.size;
        }
        let slot = self.avail + 4 + 2 * u64::from(self.next_avail % self.size);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.next_avail = self.next_avail.wrapping_add(1);
        // The ring entry is written before the index that publishes it.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        mem.write_obj(self.next_avail, GuestAddress(self.avail + 2))
            .unwrap();
        head
    }

    /// The used ring's index.
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Used element `n`: (descriptor head, bytes written).
    pub fn used_elem(&self, mem: &GuestMemoryMmap, n: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(n % self.size);
        (
            mem.read_obj(GuestAddress(at)).unwrap(),
            mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }
}
