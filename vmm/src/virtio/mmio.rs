//! The virtio-mmio transport, version 2 of the register layout (virtio 1.x, section 4.2.2):
//! the registers the driver reads and writes, the device status state machine with its
//! reset and FEATURES_OK rules, feature negotiation, queue set-up, notifications, the
//! interrupt status, and the device configuration space at offset 0x100.
//!
//! The driver is the guest and so hostile: any sequence of accesses (any offset, width,
//! value or order) must leave the transport consistent, panic nothing, and never hand a
//! device a queue that is not entirely inside guest RAM. Register accesses that are not
//! aligned 32-bit accesses are dropped (reads see 0), as the spec requires drivers to use
//! them; the configuration space takes any width.
//!
//! Notifications normally never reach this code: KVM signals the queue's eventfd on a
//! QueueNotify write that matches an ioeventfd (see [`crate::vm::Vm::add_virtio_mmio`]).
//! A write that does reach it (no ioeventfd registered, or a caller driving the bus
//! directly) signals the same eventfd, so both paths end in the same place.

use std::sync::Arc;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_IN_ORDER, VIRTIO_F_ORDER_PLATFORM, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::{Activation, Interrupt, QueueConfig, VirtioDevice};
use crate::bus::BusDevice;
use crate::{Error, Result};

/// "virt", little-endian.
const MAGIC: u32 = 0x7472_6976;
/// The register layout without the legacy page-based queue registers.
const VERSION: u32 = 2;
/// "HULL", little-endian.
const VENDOR: u32 = 0x4c4c_5548;
/// Offset of the QueueNotify register, where KVM ioeventfds are placed.
pub const NOTIFY_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;
/// Offset of the device configuration space.
const CONFIG_OFFSET: u64 = VIRTIO_MMIO_CONFIG as u64;

/// Feature bits the transport lets a device offer: the device-specific ranges (0–23 and
/// 50–63) and the ring features it can carry. Withheld: packed rings (the queue checks
/// here are for split rings), notification data (the ioeventfd matches on the bare queue
/// index), queue reset and shared memory (registers not implemented), platform IOMMU, and
/// the legacy-only bits.
const OFFERABLE_FEATURES: u64 = ((1 << 24) - 1)
    | (!0u64 << 50)
    | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    | (1 << VIRTIO_RING_F_EVENT_IDX)
    | (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_F_IN_ORDER)
    | (1 << VIRTIO_F_ORDER_PLATFORM);

/// Status bits a driver may set.
const DRIVER_STATUS_BITS: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
    | VIRTIO_CONFIG_S_DRIVER
    | VIRTIO_CONFIG_S_FEATURES_OK
    | VIRTIO_CONFIG_S_DRIVER_OK
    | VIRTIO_CONFIG_S_FAILED;

/// One queue's registers.
#[derive(Debug, Clone, Copy, Default)]
struct QueueRegs {
    max_size: u16,
    size: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

/// Why a ready queue cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueFault {
    /// The size is zero, not a power of two, or above the device's maximum.
    Size,
    /// The descriptor table is misaligned or not inside one region of guest RAM.
    DescriptorTable,
    /// The driver area (available ring) is misaligned or not inside guest RAM.
    DriverArea,
    /// The device area (used ring) is misaligned or not inside guest RAM.
    DeviceArea,
}

impl std::fmt::Display for QueueFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            QueueFault::Size => "size is zero, not a power of two or above the maximum",
            QueueFault::DescriptorTable => "descriptor table misaligned or outside guest RAM",
            QueueFault::DriverArea => "driver area misaligned or outside guest RAM",
            QueueFault::DeviceArea => "device area misaligned or outside guest RAM",
        })
    }
}

/// Whether `[addr, addr + len)` lies inside one region of `memory` and `addr` is aligned
/// to `align`.
fn area_fits(memory: &GuestMemoryMmap, addr: u64, len: u64, align: u64) -> bool {
    if !addr.is_multiple_of(align) {
        return false;
    }
    let Some(region) = memory.find_region(GuestAddress(addr)) else {
        return false;
    };
    let offset = addr - region.start_addr().0;
    offset
        .checked_add(len)
        .is_some_and(|end| end <= region.len())
}

impl QueueRegs {
    /// The queue as a device may use it, or what is wrong with it (split ring layout,
    /// virtio 1.x section 2.7).
    fn check(
        &self,
        index: u16,
        memory: &GuestMemoryMmap,
    ) -> std::result::Result<QueueConfig, QueueFault> {
        let size = self.size;
        if size == 0 || !size.is_power_of_two() || size > self.max_size {
            return Err(QueueFault::Size);
        }
        let n = u64::from(size);
        if !area_fits(memory, self.desc, 16 * n, 16) {
            return Err(QueueFault::DescriptorTable);
        }
        // flags, idx, ring[n], used_event.
        if !area_fits(memory, self.avail, 6 + 2 * n, 2) {
            return Err(QueueFault::DriverArea);
        }
        // flags, idx, ring[n] of (id, len), avail_event.
        if !area_fits(memory, self.used, 6 + 8 * n, 4) {
            return Err(QueueFault::DeviceArea);
        }
        Ok(QueueConfig {
            index,
            size,
            desc: self.desc,
            avail: self.avail,
            used: self.used,
        })
    }
}

/// Counts of what the driver did, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportCounts {
    /// Queue notifications that reached the transport (not caught by an ioeventfd).
    pub notifications: u64,
    /// Times the device was activated (DRIVER_OK accepted).
    pub activations: u64,
    /// Times activation failed and the device asked for a reset.
    pub failed_activations: u64,
    /// Register accesses dropped: wrong width or alignment, or not allowed in this state.
    pub dropped_accesses: u64,
}

/// A virtio device behind the virtio-mmio register interface.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    memory: GuestMemoryMmap,
    kicks: Vec<Arc<EventFd>>,
    interrupt: Interrupt,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<QueueRegs>,
    config_generation: u32,
    active: bool,
    counts: TransportCounts,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// Puts `device` behind a virtio-mmio interface over guest RAM `memory`, with one
    /// notification eventfd per queue and one interrupt eventfd.
    pub fn new(device: Box<dyn VirtioDevice>, memory: GuestMemoryMmap) -> Result<Self> {
        let new_fd = || {
            EventFd::new(libc::EFD_NONBLOCK)
                .map(Arc::new)
                .map_err(Error::EventFd)
        };
        let queues: Vec<QueueRegs> = device
            .queue_max_sizes()
            .iter()
            .map(|&max_size| QueueRegs {
                max_size,
                ..Default::default()
            })
            .collect();
        let kicks = queues
            .iter()
            .map(|_| new_fd())
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            device,
            memory,
            kicks,
            interrupt: Interrupt::new()?,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            config_generation: 0,
            active: false,
            counts: TransportCounts::default(),
        })
    }

    /// The notification eventfd of each queue (index = queue index), to register as KVM
    /// ioeventfds on [`NOTIFY_OFFSET`] with the index as datamatch.
    pub fn kicks(&self) -> &[Arc<EventFd>] {
        &self.kicks
    }

    /// The interrupt line, whose eventfd is registered as a KVM irqfd.
    pub fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }

    /// The device status register as the driver last left it (plus DEVICE_NEEDS_RESET).
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device runs (DRIVER_OK accepted and not reset since).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// What the driver did so far.
    pub fn counts(&self) -> TransportCounts {
        self.counts
    }

    /// The device's [`super::Disconnector`], if its backend is another process.
    pub fn disconnector(&self) -> Option<super::Disconnector> {
        self.device.disconnector()
    }

    /// The features offered to the driver.
    pub fn offered_features(&self) -> u64 {
        (self.device.features() | (1 << VIRTIO_F_VERSION_1)) & OFFERABLE_FEATURES
    }

    fn selected_queue(&mut self) -> Option<&mut QueueRegs> {
        let index = usize::try_from(self.queue_sel).ok()?;
        self.queues.get_mut(index)
    }

    fn drop_access(&mut self, what: &str, offset: u64, len: usize) {
        self.counts.dropped_accesses += 1;
        tracing::debug!(
            what,
            offset,
            len,
            status = self.status,
            "virtio-mmio access dropped"
        );
    }

    fn read_register(&mut self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR,
            VIRTIO_MMIO_DEVICE_FEATURES => {
                let features = self.offered_features();
                match self.device_features_sel {
                    0 => low_half(features),
                    1 => low_half(features >> 32),
                    _ => 0,
                }
            }
            VIRTIO_MMIO_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size)),
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready)),
            VIRTIO_MMIO_INTERRUPT_STATUS => {
                let outside = self.active && self.device.signals_from_outside();
                self.interrupt.status() | if outside { VIRTIO_MMIO_INT_VRING } else { 0 }
            }
            VIRTIO_MMIO_STATUS => self.status,
            // No shared memory regions: a length of all ones says the region does not exist.
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        let features_open = self.status & VIRTIO_CONFIG_S_DRIVER != 0
            && self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0;
        let queues_open = self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0;
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES if features_open => {
                let value = u64::from(value);
                match self.driver_features_sel {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
                    1 => {
                        self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32)
                    }
                    _ => self.drop_access("driver features page", u64::from(offset), 4),
                }
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NUM
            | VIRTIO_MMIO_QUEUE_READY
            | VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH
                if queues_open =>
            {
                self.write_queue_register(offset, value);
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(value),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.acknowledge(value),
            VIRTIO_MMIO_STATUS => self.set_status(value),
            _ => self.drop_access("register", u64::from(offset), 4),
        }
    }

    fn write_queue_register(&mut self, offset: u32, value: u32) {
        let Some(queue) = self.selected_queue() else {
            return self.drop_access("queue register of no queue", u64::from(offset), 4);
        };
        let set_low = |field: &mut u64| *field = (*field & !0xffff_ffff) | u64::from(value);
        let set_high = |field: &mut u64| *field = (*field & 0xffff_ffff) | (u64::from(value) << 32);
        match offset {
            VIRTIO_MMIO_QUEUE_READY => queue.ready = value == 1,
            // A queue's layout is frozen while the queue is ready.
            _ if queue.ready => {
                self.drop_access("layout of a ready queue", u64::from(offset), 4);
            }
            // Sizes above u16 are invalid anyway; keep them invalid (0) rather than truncated.
            VIRTIO_MMIO_QUEUE_NUM => queue.size = u16::try_from(value).unwrap_or(0),
            VIRTIO_MMIO_QUEUE_DESC_LOW => set_low(&mut queue.desc),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => set_high(&mut queue.desc),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => set_low(&mut queue.avail),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => set_high(&mut queue.avail),
            VIRTIO_MMIO_QUEUE_USED_LOW => set_low(&mut queue.used),
            VIRTIO_MMIO_QUEUE_USED_HIGH => set_high(&mut queue.used),
            _ => {}
        }
    }

    fn notify(&mut self, value: u32) {
        self.counts.notifications += 1;
        let kick = usize::try_from(value)
            .ok()
            .filter(|_| self.active)
            .and_then(|index| self.kicks.get(index));
        match kick {
            Some(kick) => {
                if let Err(err) = kick.write(1) {
                    tracing::warn!(%err, queue = value, "cannot signal a queue notification");
                }
            }
            None => self.drop_access("notification", NOTIFY_OFFSET, 4),
        }
    }

    /// The device status state machine (virtio 1.x section 3.1.1): bits are only added, in
    /// order; FEATURES_OK only sticks if the device accepts the driver's features; DRIVER_OK
    /// activates the device; 0 resets it.
    fn set_status(&mut self, value: u32) {
        if value == 0 {
            return self.reset();
        }
        let old = self.status;
        let new = (value & DRIVER_STATUS_BITS) | (old & VIRTIO_CONFIG_S_NEEDS_RESET);
        let added = new & !old;
        let has = |bits: u32| new & bits == bits;
        let ordered = new & old == old & DRIVER_STATUS_BITS
            && (added & VIRTIO_CONFIG_S_DRIVER == 0 || has(VIRTIO_CONFIG_S_ACKNOWLEDGE))
            && (added & VIRTIO_CONFIG_S_FEATURES_OK == 0 || has(VIRTIO_CONFIG_S_DRIVER))
            && (added & VIRTIO_CONFIG_S_DRIVER_OK == 0 || old & VIRTIO_CONFIG_S_FEATURES_OK != 0);
        if !ordered {
            return self.drop_access("status transition", u64::from(VIRTIO_MMIO_STATUS), 4);
        }
        self.status = new;
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 && !self.features_acceptable() {
            // The driver reads the status back and sees FEATURES_OK not set.
            self.status &= !VIRTIO_CONFIG_S_FEATURES_OK;
            tracing::debug!(
                features = self.driver_features,
                offered = self.offered_features(),
                "driver features refused"
            );
        }
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            self.activate();
        }
    }

    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.offered_features() == 0
            && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0
    }

    fn activate(&mut self) {
        if self.status & VIRTIO_CONFIG_S_NEEDS_RESET != 0 {
            return;
        }
        let mut queues = Vec::new();
        for (index, queue) in (0u16..).zip(&self.queues) {
            if !queue.ready {
                continue;
            }
            match queue.check(index, &self.memory) {
                Ok(config) => queues.push(config),
                Err(fault) => {
                    let err = Error::VirtioQueue { index, fault };
                    return self.needs_reset(&err);
                }
            }
        }
        let activation = Activation {
            memory: &self.memory,
            features: self.driver_features,
            queues,
            kicks: &self.kicks,
            interrupt: self.interrupt.clone(),
        };
        match self.device.activate(activation) {
            Ok(()) => {
                self.active = true;
                self.counts.activations += 1;
                tracing::info!(
                    device_type = self.device.device_type(),
                    features = self.driver_features,
                    "virtio device activated"
                );
            }
            Err(err) => self.needs_reset(&err),
        }
    }

    /// The device cannot go on: DEVICE_NEEDS_RESET and a configuration change interrupt
    /// tell the driver so.
    fn needs_reset(&mut self, err: &Error) {
        self.counts.failed_activations += 1;
        tracing::warn!(
            device_type = self.device.device_type(),
            error = %crate::error::Chain(err),
            "virtio device needs a reset"
        );
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        self.interrupt.signal_config_change();
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
        }
        self.active = false;
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        for queue in &mut self.queues {
            *queue = QueueRegs {
                max_size: queue.max_size,
                ..Default::default()
            };
        }
        // Notifications from before the reset are not for the next driver.
        for kick in &self.kicks {
            let _ = kick.read();
        }
        self.interrupt.clear();
    }
}

fn low_half(value: u64) -> u32 {
    // Keeping the low 32 bits is the point.
    #[allow(clippy::cast_possible_truncation)]
    let low = value as u32;
    low
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            return self.device.read_config(offset - CONFIG_OFFSET, data);
        }
        match (u32::try_from(offset), <&mut [u8; 4]>::try_from(&mut *data)) {
            (Ok(register), Ok(bytes)) if register % 4 == 0 => {
                *bytes = self.read_register(register).to_le_bytes();
            }
            _ => {
                data.fill(0);
                self.drop_access("register read", offset, data.len());
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            // Writes with the device live may change what the driver reads back.
            self.device.write_config(offset - CONFIG_OFFSET, data);
            return;
        }
        match (u32::try_from(offset), <[u8; 4]>::try_from(data)) {
            (Ok(register), Ok(bytes)) if register % 4 == 0 => {
                self.write_register(register, u32::from_le_bytes(bytes));
            }
            _ => self.drop_access("register write", offset, data.len()),
        }
    }
}

#[cfg(test)]
// Test values are small constants; truncating casts keep the tables short.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use std::sync::{Arc, Mutex};

    use proptest::prelude::*;
    use vm_memory::GuestMemoryMmap;

    use super::*;
    use crate::virtio::TYPE_BLOCK;

    const RAM: u64 = 0x10_0000;

    /// What the fake device saw.
    #[derive(Debug, Default)]
    struct Seen {
        activations: Vec<(u64, Vec<QueueConfig>)>,
        resets: usize,
        config_writes: Vec<(u64, Vec<u8>)>,
    }

    struct FakeDevice {
        features: u64,
        max_sizes: Vec<u16>,
        fail_activation: bool,
        seen: Arc<Mutex<Seen>>,
    }

    impl VirtioDevice for FakeDevice {
        fn device_type(&self) -> u32 {
            TYPE_BLOCK
        }
        fn features(&self) -> u64 {
            self.features
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.max_sizes
        }
        fn read_config(&mut self, offset: u64, data: &mut [u8]) {
            for (i, byte) in data.iter_mut().enumerate() {
                *byte = (offset as u8).wrapping_add(i as u8);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.seen
                .lock()
                .unwrap()
                .config_writes
                .push((offset, data.to_vec()));
        }
        fn activate(&mut self, activation: Activation<'_>) -> Result<()> {
            assert_eq!(activation.kicks.len(), self.max_sizes.len());
            self.seen
                .lock()
                .unwrap()
                .activations
                .push((activation.features, activation.queues));
            if self.fail_activation {
                return Err(Error::VirtioQueue {
                    index: 0,
                    fault: QueueFault::Size,
                });
            }
            Ok(())
        }
        fn reset(&mut self) {
            self.seen.lock().unwrap().resets += 1;
        }
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
    }

    fn transport(features: u64, fail_activation: bool) -> (MmioTransport, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let device = FakeDevice {
            features,
            max_sizes: vec![256, 16],
            fail_activation,
            seen: Arc::clone(&seen),
        };
        (
            MmioTransport::new(Box::new(device), memory()).unwrap(),
            seen,
        )
    }

    fn read(t: &mut MmioTransport, offset: u32) -> u32 {
        let mut data = [0u8; 4];
        t.read(u64::from(offset), &mut data);
        u32::from_le_bytes(data)
    }

    fn write(t: &mut MmioTransport, offset: u32, value: u32) {
        t.write(u64::from(offset), &value.to_le_bytes());
    }

    const ACK_DRIVER: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
    const FEATURES_OK: u32 = ACK_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
    const DRIVER_OK: u32 = FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK;

    /// A driver going through initialization (virtio 1.x section 3.1.1) acknowledging
    /// `features` and setting up queue 0 with `size` entries at 0x1000/0x2000/0x3000.
    fn negotiate(t: &mut MmioTransport, features: u64, size: u32) {
        write(t, VIRTIO_MMIO_STATUS, 0);
        write(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        write(t, VIRTIO_MMIO_STATUS, ACK_DRIVER);
        write(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        write(t, VIRTIO_MMIO_DRIVER_FEATURES, low_half(features));
        write(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        write(t, VIRTIO_MMIO_DRIVER_FEATURES, low_half(features >> 32));
        write(t, VIRTIO_MMIO_STATUS, FEATURES_OK);
        write(t, VIRTIO_MMIO_QUEUE_SEL, 0);
        write(t, VIRTIO_MMIO_QUEUE_NUM, size);
        write(t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
        write(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x2000);
        write(t, VIRTIO_MMIO_QUEUE_USED_LOW, 0x3000);
        write(t, VIRTIO_MMIO_QUEUE_READY, 1);
    }

    const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;

    #[test]
    fn identifies_itself_as_a_version_2_virtio_mmio_device() {
        let (mut t, _) = transport(0, false);
        assert_eq!(read(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(read(&mut t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(read(&mut t, VIRTIO_MMIO_DEVICE_ID), TYPE_BLOCK);
        write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
        write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 2);
        assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0, "no queue 2");
    }

    #[test]
    fn offers_version_1_and_withholds_features_the_transport_cannot_carry() {
        let packed = 1u64 << 34;
        let (mut t, _) = transport(0b101 | packed | (1 << 30), false);
        write(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        assert_eq!(read(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 0b101);
        write(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(
            read(&mut t, VIRTIO_MMIO_DEVICE_FEATURES),
            1,
            "VERSION_1 only"
        );
        write(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 7);
        assert_eq!(read(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 0);
    }

    #[test]
    fn driver_ok_activates_the_device_with_the_acked_features_and_ready_queues() {
        let (mut t, seen) = transport(0b11, false);
        negotiate(&mut t, VERSION_1 | 0b10, 128);
        assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), FEATURES_OK);
        write(&mut t, VIRTIO_MMIO_STATUS, DRIVER_OK);
        assert!(t.is_active());
        assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), DRIVER_OK);
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.activations,
            vec![(
                VERSION_1 | 0b10,
                vec![QueueConfig {
                    index: 0,
                    size: 128,
                    desc: 0x1000,
                    avail: 0x2000,
                    used: 0x3000
                }]
            )]
        );
    }

    #[test]
    fn features_ok_does_not_stick_for_unoffered_features_or_without_version_1() {
        for features in [VERSION_1 | (1 << 7), 0b1] {
            let (mut t, seen) = transport(0b1, false);
            negotiate(&mut t, features, 128);
            assert_eq!(
                read(&mut t, VIRTIO_MMIO_STATUS),
                ACK_DRIVER,
                "{features:#x}"
            );
            write(
                &mut t,
                VIRTIO_MMIO_STATUS,
                ACK_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK,
            );
            assert!(!t.is_active());
            assert!(seen.lock().unwrap().activations.is_empty());
        }
    }

    #[test]
    fn status_bits_are_only_added_in_order() {
        let (mut t, _) = transport(0, false);
        // DRIVER without ACKNOWLEDGE, DRIVER_OK without FEATURES_OK: refused.
        write(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER);
        assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), 0);
        write(&mut t, VIRTIO_MMIO_STATUS, ACK_DRIVER);
        write(
            &mut t,
            VIRTIO_MMIO_STATUS,
            ACK_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), ACK_DRIVER);
        // Clearing a bit is not a transition.
        write(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), ACK_DRIVER);
        // FAILED is always accepted.
        write(
            &mut t,
            VIRTIO_MMIO_STATUS,
            ACK_DRIVER | VIRTIO_CONFIG_S_FAILED,
        );
        assert_eq!(
            read(&mut t, VIRTIO_MMIO_STATUS),
            ACK_DRIVER | VIRTIO_CONFIG_S_FAILED
        );
    }

    #[test]
    fn reset_stops_the_device_and_clears_every_register() {
        let (mut t, seen) = transport(0, false);
        negotiate(&mut t, VERSION_1, 64);
        write(&mut t, VIRTIO_MMIO_STATUS, DRIVER_OK);
        write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        write(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert!(!t.is_active());
        assert_eq!(seen.lock().unwrap().resets, 1);
        assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
        assert!(
            t.kicks()[0].read().is_err(),
            "the pending notification is gone"
        );
        // The next driver starts from scratch and activates again.
        negotiate(&mut t, VERSION_1, 64);
        write(&mut t, VIRTIO_MMIO_STATUS, DRIVER_OK);
        assert_eq!(seen.lock().unwrap().activations.len(), 2);
    }

    #[test]
    fn queue_outside_guest_ram_is_never_handed_to_the_device() {
        let cases: [(u32, u32, u32, QueueFault); 5] = [
            (0x1000, 0x2000, 0x3000, QueueFault::Size), // size 100 below
            (
                RAM as u32 - 0x100,
                0x2000,
                0x3000,
                QueueFault::DescriptorTable,
            ),
            (0x1008, 0x2000, 0x3000, QueueFault::DescriptorTable),
            (0x1000, RAM as u32 - 2, 0x3000, QueueFault::DriverArea),
            (0x1000, 0x2000, 0x3002, QueueFault::DeviceArea),
        ];
        for (i, (desc, avail, used, fault)) in cases.into_iter().enumerate() {
            let (mut t, seen) = transport(0, false);
            negotiate(&mut t, VERSION_1, if i == 0 { 100 } else { 64 });
            write(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
            write(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, desc);
            write(&mut t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail);
            write(&mut t, VIRTIO_MMIO_QUEUE_USED_LOW, used);
            write(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
            write(&mut t, VIRTIO_MMIO_STATUS, DRIVER_OK);
            assert!(!t.is_active(), "{fault:?}");
            assert!(seen.lock().unwrap().activations.is_empty(), "{fault:?}");
            assert_ne!(
                read(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
                0,
                "{fault:?}"
            );
            assert_eq!(
                read(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
                VIRTIO_MMIO_INT_CONFIG
            );
            assert_eq!(
                t.interrupt().eventfd().read().unwrap(),
                1,
                "the driver is interrupted"
            );
            write(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_CONFIG);
            assert_eq!(read(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        }
    }

    #[test]
    fn failed_activation_asks_for_a_reset() {
        let (mut t, _) = transport(0, true);
        negotiate(&mut t, VERSION_1, 64);
        write(&mut t, VIRTIO_MMIO_STATUS, DRIVER_OK);
        assert!(!t.is_active());
        assert_eq!(
            read(&mut t, VIRTIO_MMIO_STATUS),
            DRIVER_OK | VIRTIO_CONFIG_S_NEEDS_RESET
        );
        assert_eq!(t.counts().failed_activations, 1);
    }

    #[test]
    fn notify_signals_the_queue_eventfd_only_once_active() {
        let (mut t, _) = transport(0, false);
        negotiate(&mut t, VERSION_1, 64);
        write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert!(t.kicks()[0].read().is_err(), "not active yet");
        write(&mut t, VIRTIO_MMIO_STATUS, DRIVER_OK);
        write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 9);
        assert_eq!(t.kicks()[0].read().unwrap(), 1);
        assert_eq!(t.kicks()[1].read().unwrap(), 1);
        assert_eq!(t.counts().notifications, 4);
    }

    #[test]
    fn queue_layout_is_frozen_once_ready_and_after_driver_ok() {
        let (mut t, seen) = transport(0, false);
        negotiate(&mut t, VERSION_1, 64);
        write(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x8000);
        write(&mut t, VIRTIO_MMIO_STATUS, DRIVER_OK);
        write(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
        assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
        assert_eq!(seen.lock().unwrap().activations[0].1[0].desc, 0x1000);
    }

    #[test]
    fn config_space_takes_any_width_and_registers_only_aligned_words() {
        let (mut t, seen) = transport(0, false);
        let mut byte = [0u8; 1];
        t.read(0x105, &mut byte);
        assert_eq!(byte, [5]);
        let mut word = [0u8; 8];
        t.read(0x100, &mut word);
        assert_eq!(word, [0, 1, 2, 3, 4, 5, 6, 7]);
        t.write(0x110, &[9, 9]);
        assert_eq!(seen.lock().unwrap().config_writes, vec![(0x10, vec![9, 9])]);
        let mut half = [0xaa; 2];
        t.read(0, &mut half);
        assert_eq!(half, [0, 0], "a 16-bit read of the magic is dropped");
        let mut misaligned = [0xaa; 4];
        t.read(2, &mut misaligned);
        assert_eq!(misaligned, [0; 4]);
        t.write(u64::from(VIRTIO_MMIO_STATUS), &[1]);
        assert_eq!(
            read(&mut t, VIRTIO_MMIO_STATUS),
            0,
            "a byte write of the status is dropped"
        );
        assert_eq!(t.counts().dropped_accesses, 3);
    }

    /// Registers a driver writes, and values that matter to them.
    fn register_write() -> impl Strategy<Value = (u64, Vec<u8>)> {
        let register = prop::sample::select(vec![
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
        ]);
        let value = prop_oneof![
            Just(0u32),
            Just(1),
            Just(ACK_DRIVER),
            Just(FEATURES_OK),
            Just(DRIVER_OK),
            0u32..300,
            (0u32..0x11_0000),
            (RAM as u32 - 0x1000)..(RAM as u32 + 0x10),
            any::<u32>(),
        ];
        let aligned = (register, value).prop_map(|(r, v)| (u64::from(r), v.to_le_bytes().to_vec()));
        let anything = (0u64..0x1000, prop::collection::vec(any::<u8>(), 0..9));
        prop_oneof![4 => aligned, 1 => anything]
    }

    proptest! {
        /// Any sequence of register writes and reads: nothing panics, and every queue a
        /// device is given lies inside guest RAM with a valid size.
        #[test]
        fn hostile_driver_never_hands_the_device_a_queue_outside_guest_ram(
            accesses in prop::collection::vec((register_write(), any::<bool>()), 0..200),
            start in 0u8..3,
        ) {
            let (mut t, seen) = transport(0b1, false);
            let memory = memory();
            // From reset, from a negotiated device, or from a running one.
            if start > 0 {
                negotiate(&mut t, VERSION_1, 64);
            }
            if start > 1 {
                write(&mut t, VIRTIO_MMIO_STATUS, DRIVER_OK);
                prop_assert!(t.is_active());
            }
            for ((offset, mut data), is_read) in accesses {
                if is_read {
                    t.read(offset, &mut data);
                } else {
                    t.write(offset, &data);
                }
                // The status only ever holds bits set in order, and the device runs
                // exactly when DRIVER_OK was accepted and no reset was asked for since.
                let status = t.status();
                let has = |bits: u32| status & bits == bits;
                if has(VIRTIO_CONFIG_S_DRIVER_OK) {
                    prop_assert!(has(VIRTIO_CONFIG_S_FEATURES_OK), "{status:#x}");
                }
                if has(VIRTIO_CONFIG_S_FEATURES_OK) {
                    prop_assert!(has(VIRTIO_CONFIG_S_DRIVER), "{status:#x}");
                }
                if has(VIRTIO_CONFIG_S_DRIVER) {
                    prop_assert!(has(VIRTIO_CONFIG_S_ACKNOWLEDGE), "{status:#x}");
                }
                if t.is_active() {
                    prop_assert!(has(VIRTIO_CONFIG_S_DRIVER_OK), "{status:#x}");
                    prop_assert!(!has(VIRTIO_CONFIG_S_NEEDS_RESET), "{status:#x}");
                }
            }
            for (features, queues) in &seen.lock().unwrap().activations {
                prop_assert_eq!(features & !(VERSION_1 | 1), 0);
                for q in queues {
                    let max = [256u16, 16][usize::from(q.index)];
                    prop_assert!(q.size.is_power_of_two() && q.size <= max);
                    let n = u64::from(q.size);
                    for (addr, len) in [(q.desc, 16 * n), (q.avail, 6 + 2 * n), (q.used, 6 + 8 * n)] {
                        prop_assert!(addr.checked_add(len).is_some_and(|end| end <= RAM));
                        prop_assert!(memory.check_range(GuestAddress(addr), len as usize));
                    }
                }
            }
        }
    }
}
