//! The virtio-mmio transport driven through the VMM's MMIO bus by a driver written in the
//! test, without a guest: it negotiates, sets up a queue in (memfd-backed) guest memory,
//! writes a descriptor and kicks; a device model behind the transport (written here, as
//! the transport is what is tested) finds the kick on its queue's eventfd, uses the buffer
//! and raises the interrupt, which the driver sees in InterruptStatus and acknowledges.

mod common;

use std::sync::{Arc, Mutex};

use hull_vmm::bus::{Bus, SharedDevice};
use hull_vmm::memory::GuestMemory;
use hull_vmm::virtio::mmio::MmioTransport;
use hull_vmm::virtio::{Activation, Interrupt, QueueConfig, VirtioDevice, MMIO_BASE, MMIO_SIZE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use common::driver::*;

/// A device type no real device has, so nothing mistakes the model for one.
const TEST_DEVICE_ID: u32 = 0x1f;
/// A device-specific feature bit the model offers.
const FEATURE_STAMP: u64 = 1 << 3;

/// What the model got at activation.
struct Started {
    features: u64,
    queue: QueueConfig,
    kick: EventFd,
    interrupt: Interrupt,
    memory: GuestMemoryMmap,
}

/// A device that stamps each writable buffer with "used by the device" and returns it.
struct StampDevice(Slot);

impl VirtioDevice for StampDevice {
    fn device_type(&self) -> u32 {
        TEST_DEVICE_ID
    }
    fn features(&self) -> u64 {
        FEATURE_STAMP | (1 << 5)
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[8]
    }
    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        let config = b"stamp-config";
        for (i, byte) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).unwrap() + i;
            *byte = config.get(at).copied().unwrap_or(0);
        }
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, activation: Activation<'_>) -> hull_vmm::Result<()> {
        *self.0.lock().unwrap() = Some(Started {
            features: activation.features,
            queue: activation.queues[0],
            kick: activation.kicks[0].try_clone().unwrap(),
            interrupt: activation.interrupt.clone(),
            memory: activation.memory.clone(),
        });
        Ok(())
    }
    fn reset(&mut self) {
        *self.0.lock().unwrap() = None;
    }
}

const STAMP: &[u8] = b"used by the device";

impl Started {
    /// Serves the queue once, as a device thread woken by the kick eventfd would: every
    /// available chain's first descriptor gets the stamp. Returns the chains served.
    fn serve(&self, last_avail: &mut u16) -> usize {
        let mem = &self.memory;
        let q = self.queue;
        let avail_idx: u16 = mem.read_obj(GuestAddress(q.avail + 2)).unwrap();
        let mut served = 0;
        while *last_avail != avail_idx {
            let slot = q.avail + 4 + 2 * u64::from(*last_avail % q.size);
            let head: u16 = mem.read_obj(GuestAddress(slot)).unwrap();
            let entry = q.desc + 16 * u64::from(head);
            let addr: u64 = mem.read_obj(GuestAddress(entry)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(entry + 8)).unwrap();
            let flags: u16 = mem.read_obj(GuestAddress(entry + 12)).unwrap();
            assert_ne!(
                flags & DESC_WRITE,
                0,
                "the driver offered a writable buffer"
            );
            let n = STAMP.len().min(usize::try_from(len).unwrap());
            mem.write_slice(&STAMP[..n], GuestAddress(addr)).unwrap();
            let used_idx: u16 = mem.read_obj(GuestAddress(q.used + 2)).unwrap();
            let elem = q.used + 4 + 8 * u64::from(used_idx % q.size);
            mem.write_obj(u32::from(head), GuestAddress(elem)).unwrap();
            mem.write_obj(u32::try_from(n).unwrap(), GuestAddress(elem + 4))
                .unwrap();
            mem.write_obj(used_idx.wrapping_add(1), GuestAddress(q.used + 2))
                .unwrap();
            *last_avail = last_avail.wrapping_add(1);
            served += 1;
        }
        if served > 0 {
            self.interrupt.signal_used_queue();
        }
        served
    }
}

/// The model's activation state, shared with the test.
type Slot = Arc<Mutex<Option<Started>>>;

/// A bus with the model behind a transport at [`MMIO_BASE`], over 16 MiB of guest RAM.
fn setup() -> (Bus, GuestMemory, Arc<Mutex<MmioTransport>>, Slot) {
    let memory = GuestMemory::new(16).unwrap();
    let started: Slot = Arc::new(Mutex::new(None));
    let device = StampDevice(Arc::clone(&started));
    let transport = Arc::new(Mutex::new(
        MmioTransport::new(Box::new(device), memory.mmap().clone()).unwrap(),
    ));
    let mut bus = Bus::new("mmio");
    let shared: SharedDevice = transport.clone();
    bus.insert(MMIO_BASE, MMIO_SIZE, shared).unwrap();
    (bus, memory, transport, started)
}

#[test]
fn driver_kick_reaches_the_device_and_the_used_buffer_raises_the_interrupt() {
    let (bus, memory, transport, started) = setup();
    let mem = memory.mmap();
    let driver = Driver {
        bus: &bus,
        base: MMIO_BASE,
    };
    let offered = driver.negotiate(TEST_DEVICE_ID, FEATURE_STAMP);
    assert_eq!(offered, VERSION_1 | FEATURE_STAMP | (1 << 5));
    assert_eq!(driver.config(0, 5), b"stamp");
    let mut queue = SplitQueue::new(8, 0x10_0000);
    driver.setup_queue(0, &queue);
    driver.driver_ok();
    assert_eq!(driver.read(STATUS) & NEEDS_RESET, 0);
    {
        let guard = started.lock().unwrap();
        let dev = guard.as_ref().expect("DRIVER_OK activated the device");
        assert_eq!(dev.features, VERSION_1 | FEATURE_STAMP);
        assert_eq!(
            (
                dev.queue.size,
                dev.queue.desc,
                dev.queue.avail,
                dev.queue.used
            ),
            (8, queue.desc, queue.avail, queue.used)
        );
    }

    let buffer = 0x20_0000;
    let head = queue.add_chain(mem, &[(buffer, 64, true)]);
    driver.kick(0);
    let guard = started.lock().unwrap();
    let dev = guard.as_ref().unwrap();
    assert_eq!(
        dev.kick.read().unwrap(),
        1,
        "the kick reached the queue's eventfd"
    );
    let mut last_avail = 0;
    assert_eq!(dev.serve(&mut last_avail), 1);
    drop(guard);

    let transport_interrupt = transport.lock().unwrap().interrupt().clone();
    assert_eq!(
        transport_interrupt.eventfd().read().unwrap(),
        1,
        "the interrupt line was raised"
    );
    assert_eq!(driver.read(INTERRUPT_STATUS), INT_VRING);
    assert_eq!(queue.used_idx(mem), 1);
    assert_eq!(
        queue.used_elem(mem, 0),
        (u32::from(head), u32::try_from(STAMP.len()).unwrap())
    );
    let mut seen = vec![0u8; STAMP.len()];
    mem.read_slice(&mut seen, GuestAddress(buffer)).unwrap();
    assert_eq!(seen, STAMP);
    driver.write(INTERRUPT_ACK, INT_VRING);
    assert_eq!(driver.read(INTERRUPT_STATUS), 0, "acknowledged");

    // A reset stops the device; the kick of a stopped device reaches nobody.
    driver.write(STATUS, 0);
    assert!(started.lock().unwrap().is_none(), "the device was reset");
    driver.kick(0);
    assert!(transport.lock().unwrap().kicks()[0].read().is_err());
}

#[test]
fn queue_beyond_guest_ram_is_refused_and_the_driver_told_to_reset() {
    let (bus, _memory, _transport, started) = setup();
    let driver = Driver {
        bus: &bus,
        base: MMIO_BASE,
    };
    driver.negotiate(TEST_DEVICE_ID, 0);
    // The used ring straddles the end of the 16 MiB of RAM.
    let queue = SplitQueue::new(8, (16 << 20) - 0x2010);
    driver.setup_queue(0, &queue);
    driver.driver_ok();
    assert!(started.lock().unwrap().is_none(), "never activated");
    assert_ne!(driver.read(STATUS) & NEEDS_RESET, 0);
    assert_eq!(
        driver.read(INTERRUPT_STATUS),
        2,
        "configuration change interrupt"
    );
}
