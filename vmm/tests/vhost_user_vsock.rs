//! The vhost-user-vsock frontend against hull-vsock, the backend a pod's agent is reached
//! through. The test is the guest's driver: through the virtio-mmio registers it negotiates,
//! reads the guest CID from the configuration space, sets up the receive, transmit and
//! event queues (the memory table and rings go to hull-vsock at DRIVER_OK), and opens a
//! stream to host port 1024 the way the guest kernel does (a vsock REQUEST packet on the
//! transmit queue). hull-vsock connects it to the unix socket `<uds>_1024` the test listens
//! on and answers RESPONSE on the receive queue; then bytes go each way. A CID that differs
//! from hull-vsock's is refused at connection, naming both.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hull_tests::artifacts;
use hull_vmm::bus::{Bus, SharedDevice};
use hull_vmm::memory::GuestMemory;
use hull_vmm::virtio::mmio::MmioTransport;
use hull_vmm::virtio::vhost_user::{VhostUserDevice, VhostUserKind};
use hull_vmm::virtio::{MMIO_BASE, MMIO_SIZE, TYPE_VSOCK};
use vm_memory::{Bytes, GuestAddress};

use common::backend::*;
use common::driver::*;
use common::vsock::*;

const GUEST_PORT: u32 = 5000;
const HOST_PORT: u32 = 1024;

/// A virtio-vsock packet header from the guest to the host port.
fn header(op: u16, len: u32) -> Vec<u8> {
    guest_header(op, GUEST_PORT, HOST_PORT, len)
}

/// Starts hull-vsock for guest CID 3 in `dir`; returns it, its vhost-user socket and the
/// listener for guest connections to host port 1024.
fn hull_vsock(
    test: &str,
    dir: &std::path::Path,
) -> Option<(Backend, std::path::PathBuf, UnixListener)> {
    let binary = match artifacts::workspace_binary("hull-vsock") {
        Ok(binary) => binary,
        Err(missing) => {
            hull_tests::prereq::skip(test, &missing);
            return None;
        }
    };
    let socket = dir.join("vsock.sock");
    let uds = dir.join("vsock");
    let listener = UnixListener::bind(dir.join(format!("vsock_{HOST_PORT}"))).unwrap();
    let backend = Backend::start(
        &binary,
        &[
            "--socket",
            socket.to_str().unwrap(),
            "--uds",
            uds.to_str().unwrap(),
            "--guest-cid",
            &GUEST_CID.to_string(),
        ],
        &socket,
        &dir.join("hull-vsock.log"),
    );
    Some((backend, socket, listener))
}

#[test]
fn guest_stream_through_hull_vsock_reaches_a_host_unix_socket() {
    let test = "guest_stream_through_hull_vsock_reaches_a_host_unix_socket";
    let dir = TempDir::new("vu-vsock");
    let Some((mut backend, socket, listener)) = hull_vsock(test, &dir.0) else {
        return;
    };
    let memory = GuestMemory::new(16).unwrap();
    let mem = memory.mmap();
    let device = VhostUserDevice::connect(&socket, VhostUserKind::Vsock { cid: GUEST_CID })
        .expect("connects to hull-vsock");
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
    driver.negotiate(TYPE_VSOCK, 0);
    assert_eq!(
        driver.config(0, 8),
        GUEST_CID.to_le_bytes(),
        "the guest CID in the configuration space"
    );
    driver.write(QUEUE_SEL, 3);
    assert_eq!(driver.read(QUEUE_NUM_MAX), 0, "no fourth queue");

    let mut rx = SplitQueue::new(16, 0x10_0000);
    let mut tx = SplitQueue::new(16, 0x10_4000);
    let event = SplitQueue::new(16, 0x10_8000);
    driver.setup_queue(0, &rx);
    driver.setup_queue(1, &tx);
    driver.setup_queue(2, &event);
    driver.driver_ok();
    assert!(transport.lock().unwrap().is_active());

    let rx_bufs: Vec<u64> = (0..8u64).map(|i| 0x20_0000 + i * 0x1000).collect();
    for &buf in &rx_bufs {
        rx.add_chain(mem, &[(buf, RX_BUF, true)]);
    }
    driver.kick(0);

    // connect(): a REQUEST to host port 1024.
    let request = header(OP_REQUEST, 0);
    mem.write_slice(&request, GuestAddress(0x30_0000)).unwrap();
    tx.add_chain(mem, &[(0x30_0000, HDR_LEN as u32, false)]);
    driver.kick(1);
    let mut host = accept(&listener);

    let deadline = Instant::now() + BOUND;
    while rx.used_idx(mem) < 1 {
        assert!(Instant::now() < deadline, "no RESPONSE from hull-vsock");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (head, written) = rx.used_elem(mem, 0);
    let response = rx_packet(mem, rx_bufs[head as usize], written);
    assert_eq!(response.op, OP_RESPONSE, "the stream is accepted");
    assert_eq!(
        (response.src_port, response.dst_cid, response.dst_port),
        (HOST_PORT, GUEST_CID, GUEST_PORT)
    );

    // Guest to host: header and payload in two descriptors, as Linux sends them.
    let payload = b"hello from the guest";
    let rw = header(OP_RW, payload.len() as u32);
    mem.write_slice(&rw, GuestAddress(0x30_1000)).unwrap();
    mem.write_slice(payload, GuestAddress(0x30_2000)).unwrap();
    tx.add_chain(
        mem,
        &[
            (0x30_1000, HDR_LEN as u32, false),
            (0x30_2000, payload.len() as u32, false),
        ],
    );
    driver.kick(1);
    let mut got = vec![0u8; payload.len()];
    host.read_exact(&mut got)
        .expect("the guest's bytes reach the host");
    assert_eq!(&got, payload);

    // Host to guest.
    host.write_all(b"hello from the host").unwrap();
    let deadline = Instant::now() + BOUND;
    let mut seen = 1u16;
    let data = loop {
        if rx.used_idx(mem) > seen {
            let (head, written) = rx.used_elem(mem, seen);
            seen += 1;
            let packet = rx_packet(mem, rx_bufs[head as usize], written);
            if packet.op == OP_RW {
                break packet.payload;
            }
            continue;
        }
        assert!(Instant::now() < deadline, "the host's bytes never came");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(data, b"hello from the host");

    // The frontend goes: hull-vsock exits by itself and removes its socket.
    drop(bus);
    drop(transport);
    let status = backend
        .wait_exit()
        .expect("hull-vsock exits after the frontend");
    assert!(status.success(), "hull-vsock: {status}");
    assert!(!socket.exists(), "hull-vsock removed its socket");
}

#[test]
fn a_cid_other_than_the_backends_is_refused_naming_both() {
    let test = "a_cid_other_than_the_backends_is_refused_naming_both";
    let dir = TempDir::new("vu-vsock-cid");
    let Some((_backend, socket, _listener)) = hull_vsock(test, &dir.0) else {
        return;
    };
    let err = VhostUserDevice::connect(&socket, VhostUserKind::Vsock { cid: 7 }).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("guest cid 3, not 7") && message.contains("vsock.sock"),
        "{message}"
    );
}
