//! The vhost-user frontend against real backends, with the VMM's own (memfd) guest memory
//! mapped by the backend: hull-blk and qemu-storage-daemon's vhost-user-blk export. The
//! test is the driver: through the virtio-mmio registers on the MMIO bus it negotiates,
//! reads the disk's capacity from the configuration space (GET_CONFIG), sets up a queue,
//! submits a virtio-blk read of sector 0 of a file with known contents and kicks. The
//! backend reads the request from guest memory, writes the sector into it, and signals the
//! interrupt eventfd; the test checks the bytes landed where the descriptor said. Then the
//! driver resets the device and a second driver sets it up again and reads sector 7.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hull_tests::{artifacts, require};
use hull_vmm::bus::{Bus, SharedDevice};
use hull_vmm::memory::GuestMemory;
use hull_vmm::virtio::mmio::MmioTransport;
use hull_vmm::virtio::vhost_user::{VhostUserDevice, VhostUserKind};
use hull_vmm::virtio::{MMIO_BASE, MMIO_SIZE, TYPE_BLOCK};
use vm_memory::{Bytes, GuestAddress};

use common::backend::*;
use common::driver::*;

/// Waits (bounded) until the used ring of `queue` reaches `idx`, then for the interrupt
/// eventfd of `transport`. (The interrupt alone proves nothing: libvhost-user signals the
/// call fd as soon as it gets it, in case a reconnected guest missed an interrupt.)
fn wait_used_then_interrupt(
    transport: &Mutex<MmioTransport>,
    queue: &SplitQueue,
    mem: &vm_memory::GuestMemoryMmap,
    idx: u16,
) {
    let interrupt = transport.lock().unwrap().interrupt().clone();
    let deadline = Instant::now() + BOUND;
    while queue.used_idx(mem) != idx {
        assert!(
            Instant::now() < deadline,
            "the backend never used the request"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    while interrupt.eventfd().read().is_err() {
        assert!(Instant::now() < deadline, "the backend never signalled");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Drives a vhost-user-blk backend on `socket` through the frontend and the transport:
/// checks the capacity, reads a sector into guest memory and compares it with the file;
/// twice, with a device reset in between.
fn read_sectors_through(socket: &Path) {
    let memory = GuestMemory::new(16).unwrap();
    let mem = memory.mmap();
    let device = VhostUserDevice::connect(socket, VhostUserKind::Block).expect("connects");
    let transport = Arc::new(Mutex::new(
        MmioTransport::new(Box::new(device), mem.clone()).unwrap(),
    ));
    let mut bus = Bus::new("mmio");
    let shared: SharedDevice = transport.clone();
    bus.insert(MMIO_BASE, MMIO_SIZE, shared).unwrap();
    let driver = Driver {
        bus: &bus,
        base: MMIO_BASE,
    };
    // Two drivers in turn, as after a guest driver's reset or rebind: the second sets the
    // device up again from scratch, with its queue elsewhere, and reads another sector.
    for (round, sector_no) in [(0u64, 0u64), (1, 7)] {
        driver.negotiate(TYPE_BLOCK, 0);
        let capacity = u64::from_le_bytes(driver.config(0, 8).try_into().unwrap());
        assert_eq!(
            capacity, DISK_SECTORS,
            "capacity from the backend's config space"
        );

        let mut queue = SplitQueue::new(16, 0x10_0000 + round * 0x10_000);
        driver.setup_queue(0, &queue);
        driver.driver_ok();
        assert!(
            transport.lock().unwrap().is_active(),
            "the frontend set the backend's rings up"
        );

        // struct virtio_blk_outhdr { type: IN (0), reserved, sector }.
        let (header, data, status) = (0x20_0000, 0x20_1000, 0x20_2000);
        mem.write_obj([0u64, sector_no], GuestAddress(header))
            .unwrap();
        mem.write_slice(&[0xee; 512], GuestAddress(data)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
        let head = queue.add_chain(
            mem,
            &[(header, 16, false), (data, 512, true), (status, 1, true)],
        );
        driver.kick(0);

        wait_used_then_interrupt(&transport, &queue, mem, 1);
        assert_eq!(driver.read(INTERRUPT_STATUS) & INT_VRING, INT_VRING);
        let (id, _len) = queue.used_elem(mem, 0);
        assert_eq!(id, u32::from(head));
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(status)).unwrap(),
            0,
            "VIRTIO_BLK_S_OK"
        );
        let mut sector = vec![0u8; 512];
        mem.read_slice(&mut sector, GuestAddress(data)).unwrap();
        let expected: Vec<u8> = (sector_no * 512..(sector_no + 1) * 512)
            .map(disk_byte)
            .collect();
        assert_eq!(
            sector, expected,
            "sector {sector_no} of the file landed in guest memory"
        );

        // The driver resets the device: the frontend stops the rings.
        driver.write(STATUS, 0);
        assert!(!transport.lock().unwrap().is_active());
    }
}

#[test]
fn hull_blk_reads_sectors_into_the_vmms_memory_before_and_after_a_reset() {
    let test = "hull_blk_reads_sectors_into_the_vmms_memory_before_and_after_a_reset";
    let binary = require!(test, artifacts::workspace_binary("hull-blk"));
    let dir = TempDir::new("vu-hull-blk");
    let disk = disk(&dir.0);
    let (mut backend, socket, log) = hull_blk(&binary, &dir.0, &disk);
    read_sectors_through(&socket);
    // The frontend is gone with the transport: hull-blk exits 0 and removes its socket.
    let status = backend
        .wait_exit()
        .expect("hull-blk exits after the frontend");
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{status}; log: {log_text}");
    assert!(!socket.exists(), "hull-blk removed its socket");
}

#[test]
fn qemu_storage_daemon_reads_sectors_into_the_vmms_memory_before_and_after_a_reset() {
    let test = "qemu_storage_daemon_reads_sectors_into_the_vmms_memory_before_and_after_a_reset";
    let qsd = require!(test, qemu_storage_daemon());
    let dir = TempDir::new("vu-qsd");
    let disk = disk(&dir.0);
    let (backend, socket) = qsd_blk(&qsd, &dir.0, &disk);
    read_sectors_through(&socket);
    drop(backend);
}

#[test]
fn backend_gone_before_driver_ok_makes_the_device_ask_for_a_reset() {
    let test = "backend_gone_before_driver_ok_makes_the_device_ask_for_a_reset";
    let binary = require!(test, artifacts::workspace_binary("hull-blk"));
    let dir = TempDir::new("vu-gone");
    let disk = disk(&dir.0);
    let (mut backend, socket, _log) = hull_blk(&binary, &dir.0, &disk);
    let memory = GuestMemory::new(16).unwrap();
    let device = VhostUserDevice::connect(&socket, VhostUserKind::Block).expect("connects");
    let transport = Arc::new(Mutex::new(
        MmioTransport::new(Box::new(device), memory.mmap().clone()).unwrap(),
    ));
    let mut bus = Bus::new("mmio");
    let shared: SharedDevice = transport.clone();
    bus.insert(MMIO_BASE, MMIO_SIZE, shared).unwrap();
    let driver = Driver {
        bus: &bus,
        base: MMIO_BASE,
    };
    driver.negotiate(TYPE_BLOCK, 0);
    driver.setup_queue(0, &SplitQueue::new(16, 0x10_0000));
    // The backend dies between feature negotiation and DRIVER_OK.
    let _ = backend.0.kill();
    let _ = backend.0.wait();
    assert_eq!(driver.config(0, 8), vec![0; 8], "config reads see zeroes");
    driver.driver_ok();
    assert!(!transport.lock().unwrap().is_active());
    assert_ne!(driver.read(STATUS) & NEEDS_RESET, 0, "DEVICE_NEEDS_RESET");
    assert_eq!(
        driver.read(INTERRUPT_STATUS) & 2,
        2,
        "configuration change interrupt"
    );
    assert_eq!(transport.lock().unwrap().counts().failed_activations, 1);
}
