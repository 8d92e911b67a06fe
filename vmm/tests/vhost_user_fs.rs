//! The vhost-user frontend as a virtio-fs device against hull-fs, with the VMM's own
//! (memfd) guest memory mapped by the backend. The test is the driver: it reads the tag
//! from the configuration space the frontend builds, sets up the high-priority and the
//! request queue, and sends FUSE_INIT on the request queue; hull-fs answers it in guest
//! memory and raises the interrupt.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hull_tests::{artifacts, require};
use hull_vmm::bus::{Bus, SharedDevice};
use hull_vmm::memory::GuestMemory;
use hull_vmm::virtio::mmio::MmioTransport;
use hull_vmm::virtio::vhost_user::{VhostUserDevice, VhostUserKind};
use hull_vmm::virtio::{MMIO_BASE, MMIO_SIZE, TYPE_FS};
use vm_memory::{Bytes, GuestAddress};

use common::backend::*;
use common::driver::*;

const FUSE_INIT: u32 = 26;
const UNIQUE: u64 = 0x1234;

/// FUSE_INIT as a guest kernel sends it: fuse_in_header, then fuse_init_in (protocol 7.31).
fn fuse_init_request() -> Vec<u8> {
    let mut req = Vec::new();
    let len: u32 = 40 + 16;
    req.extend_from_slice(&len.to_le_bytes());
    req.extend_from_slice(&FUSE_INIT.to_le_bytes());
    req.extend_from_slice(&UNIQUE.to_le_bytes());
    req.extend_from_slice(&1u64.to_le_bytes()); // nodeid
    req.extend_from_slice(&[0u8; 16]); // uid, gid, pid, padding
    req.extend_from_slice(&7u32.to_le_bytes()); // major
    req.extend_from_slice(&31u32.to_le_bytes()); // minor
    req.extend_from_slice(&0x2_0000u32.to_le_bytes()); // max_readahead
    req.extend_from_slice(&0u32.to_le_bytes()); // flags
    req
}

#[test]
fn hull_fs_answers_fuse_init_in_the_vmms_memory() {
    let test = "hull_fs_answers_fuse_init_in_the_vmms_memory";
    let binary = require!(test, artifacts::workspace_binary("hull-fs"));
    let dir = TempDir::new("vu-hull-fs");
    let share = dir.0.join("share");
    std::fs::create_dir(&share).unwrap();
    let socket = dir.0.join("fs.sock");
    let log = dir.0.join("hull-fs.log");
    let mut backend = Backend::start(
        &binary,
        &[
            "--socket-path",
            socket.to_str().unwrap(),
            "--shared-dir",
            share.to_str().unwrap(),
        ],
        &socket,
        &log,
    );

    let memory = GuestMemory::new(16).unwrap();
    let mem = memory.mmap();
    let kind = VhostUserKind::Fs {
        tag: "hullshare".into(),
    };
    let device = VhostUserDevice::connect(&socket, kind).expect("connects");
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
    driver.negotiate(TYPE_FS, 0);
    let config = driver.config(0, 40);
    assert_eq!(&config[..9], b"hullshare", "the tag");
    assert_eq!(config[36..40], 1u32.to_le_bytes(), "one request queue");

    let hiprio = SplitQueue::new(16, 0x10_0000);
    let mut requests = SplitQueue::new(16, 0x10_4000);
    driver.setup_queue(0, &hiprio);
    driver.setup_queue(1, &requests);
    driver.driver_ok();
    assert!(
        transport.lock().unwrap().is_active(),
        "log: {}",
        read_log(&log)
    );

    let (request, reply) = (0x20_0000, 0x20_1000);
    let init = fuse_init_request();
    mem.write_slice(&init, GuestAddress(request)).unwrap();
    let head = requests.add_chain(
        mem,
        &[
            (request, u32::try_from(init.len()).unwrap(), false),
            (reply, 4096, true),
        ],
    );
    driver.kick(1);

    let interrupt = transport.lock().unwrap().interrupt().clone();
    let deadline = Instant::now() + BOUND;
    while requests.used_idx(mem) != 1 {
        assert!(
            Instant::now() < deadline,
            "hull-fs never answered; log: {}",
            read_log(&log)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    while interrupt.eventfd().read().is_err() {
        assert!(Instant::now() < deadline, "hull-fs never signalled");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (id, written) = requests.used_elem(mem, 0);
    assert_eq!(id, u32::from(head));
    // fuse_out_header { len, error, unique }, then fuse_init_out { major, minor, ... }.
    let len: u32 = mem.read_obj(GuestAddress(reply)).unwrap();
    let error: i32 = mem.read_obj(GuestAddress(reply + 4)).unwrap();
    let unique: u64 = mem.read_obj(GuestAddress(reply + 8)).unwrap();
    let major: u32 = mem.read_obj(GuestAddress(reply + 16)).unwrap();
    assert_eq!((error, unique, major), (0, UNIQUE, 7), "FUSE_INIT reply");
    assert_eq!(len, written, "the used length is the reply's");

    // The driver resets the device, the frontend goes; hull-fs is stopped with SIGTERM.
    driver.write(STATUS, 0);
    drop(bus);
    drop(transport);
    let pid = i32::try_from(backend.0.id()).unwrap();
    // SAFETY: signalling a child this test started and has not reaped yet.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = backend.wait_exit().expect("hull-fs exits");
    assert!(status.success(), "{status}; log: {}", read_log(&log));
    assert!(!socket.exists(), "hull-fs removed its socket");
}

fn read_log(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
