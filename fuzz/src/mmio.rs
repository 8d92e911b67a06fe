//! The `virtio_mmio` target: a driver's reads and writes, at any offset, width and value,
//! through the VMM's MMIO bus into the virtio-mmio transport, as a vCPU's MMIO exits
//! reach it. The device behind the transport is a stand-in that checks what the transport
//! hands it: the transport, not the device, is what the guest talks to here (the real
//! devices behind it are vhost-user frontends, whose other side the other targets cover).

use std::sync::{Arc, Mutex};

use hull_vmm::bus::Bus;
use hull_vmm::virtio::mmio::MmioTransport;
use hull_vmm::virtio::{Activation, VirtioDevice, MMIO_BASE, MMIO_SIZE, TYPE_BLOCK};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use crate::input::Input;

/// Bytes of guest RAM: small, so that queue addresses the driver picks reach its end.
const RAM: u64 = 0x1_0000;
/// The stand-in's queues and their maximum sizes.
const MAX_SIZES: [u16; 2] = [256, 16];
/// Bytes of the stand-in's configuration space.
const CONFIG_BYTES: usize = 60;
/// Most accesses per input.
const MAX_ACCESSES: usize = 512;

/// A device that checks every activation against guest RAM.
struct Checker {
    ram: GuestMemoryMmap,
    config: [u8; CONFIG_BYTES],
    activations: Arc<Mutex<u64>>,
}

impl VirtioDevice for Checker {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn features(&self) -> u64 {
        // VERSION_1, and a device feature bit in each half.
        (1 << 32) | (1 << 1) | (1 << 33)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &MAX_SIZES
    }

    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = self.config.get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(dst) = self.config.get_mut(start..) {
            let n = dst.len().min(data.len());
            dst[..n].copy_from_slice(&data[..n]);
        }
    }

    fn activate(&mut self, activation: Activation<'_>) -> hull_vmm::Result<()> {
        assert_eq!(activation.kicks.len(), MAX_SIZES.len());
        assert_eq!(
            activation.features & !self.features() & !(1u64 << 32),
            0,
            "the device got features it did not offer: {:#x}",
            activation.features
        );
        for q in &activation.queues {
            let max = MAX_SIZES[usize::from(q.index)];
            assert!(
                q.size.is_power_of_two() && q.size <= max,
                "queue {} of size {}",
                q.index,
                q.size
            );
            let n = u64::from(q.size);
            for (addr, len) in [(q.desc, 16 * n), (q.avail, 6 + 2 * n), (q.used, 6 + 8 * n)] {
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                assert!(
                    self.ram
                        .check_range(GuestAddress(addr), len, Permissions::Read),
                    "queue {} has an area at {addr:#x} ({len} bytes) outside guest RAM",
                    q.index
                );
            }
        }
        *self.activations.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        Ok(())
    }

    fn reset(&mut self) {}
}

const ACK_DRIVER: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
const FEATURES_OK: u32 = ACK_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;

/// Registers a driver writes, for aligned accesses.
const REGISTERS: [u32; 16] = [
    VIRTIO_MMIO_DEVICE_FEATURES_SEL,
    VIRTIO_MMIO_DRIVER_FEATURES,
    VIRTIO_MMIO_DRIVER_FEATURES_SEL,
    VIRTIO_MMIO_QUEUE_SEL,
    VIRTIO_MMIO_QUEUE_NUM,
    VIRTIO_MMIO_QUEUE_READY,
    VIRTIO_MMIO_QUEUE_NOTIFY,
    VIRTIO_MMIO_INTERRUPT_ACK,
    VIRTIO_MMIO_STATUS,
    VIRTIO_MMIO_QUEUE_DESC_LOW,
    VIRTIO_MMIO_QUEUE_DESC_HIGH,
    VIRTIO_MMIO_QUEUE_AVAIL_LOW,
    VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
    VIRTIO_MMIO_QUEUE_USED_LOW,
    VIRTIO_MMIO_QUEUE_USED_HIGH,
    VIRTIO_MMIO_CONFIG_GENERATION,
];

/// `virtio_mmio`: the input is a list of accesses, 7 bytes each: a selector (read or write;
/// 1, 2, 4 or 8 bytes; a known register, or any offset, past the device's page too), an
/// offset and a value. After each access the status register holds only bits set in the
/// order the spec allows, and the device runs only after DRIVER_OK; every queue the
/// device is given lies in guest RAM with a valid size (checked by the device).
pub fn virtio_mmio(data: &[u8]) {
    let mut input = Input::new(data);
    let size = usize::try_from(RAM).unwrap_or(0);
    let ram = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).expect("guest RAM");
    let activations = Arc::new(Mutex::new(0));
    let device = Checker {
        ram: ram.clone(),
        config: [0x5a; CONFIG_BYTES],
        activations: Arc::clone(&activations),
    };
    let transport = Arc::new(Mutex::new(
        MmioTransport::new(Box::new(device), ram).expect("transport"),
    ));
    let mut bus = Bus::new("mmio");
    bus.insert(MMIO_BASE, MMIO_SIZE, Arc::clone(&transport) as _)
        .expect("one device on the bus");

    let mut accesses = 0;
    while !input.is_empty() && accesses < MAX_ACCESSES {
        accesses += 1;
        let sel = input.u8();
        let offset = input.u16();
        let value = input.u32();
        let width = 1usize << ((sel >> 1) & 3);
        let addr = if sel & 0x8 != 0 {
            MMIO_BASE + u64::from(REGISTERS[usize::from(offset) % REGISTERS.len()])
        } else {
            MMIO_BASE + u64::from(offset)
        };
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&value.to_le_bytes());
        bytes[4..].copy_from_slice(&value.to_le_bytes());
        if sel & 1 == 0 {
            bus.read(addr, &mut bytes[..width]);
        } else {
            bus.write(addr, &bytes[..width]);
        }
        let t = transport.lock().unwrap_or_else(|e| e.into_inner());
        let status = t.status();
        let has = |bits: u32| status & bits == bits;
        if has(VIRTIO_CONFIG_S_DRIVER_OK) {
            assert!(has(FEATURES_OK), "status {status:#x}");
        }
        if has(VIRTIO_CONFIG_S_FEATURES_OK) {
            assert!(has(ACK_DRIVER), "status {status:#x}");
        }
        if has(VIRTIO_CONFIG_S_DRIVER) {
            assert!(has(VIRTIO_CONFIG_S_ACKNOWLEDGE), "status {status:#x}");
        }
        if t.is_active() {
            assert!(has(VIRTIO_CONFIG_S_DRIVER_OK), "status {status:#x}");
            assert!(!has(VIRTIO_CONFIG_S_NEEDS_RESET), "status {status:#x}");
        }
    }
    let done = *activations.lock().unwrap_or_else(|e| e.into_inner());
    assert!(done <= accesses as u64);
}
