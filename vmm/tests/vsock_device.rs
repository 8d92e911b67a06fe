//! The in-VMM virtio-vsock device, without a guest: the test is the guest's driver. Through
//! the virtio-mmio registers it negotiates, reads the guest CID, sets up the receive,
//! transmit and event queues and sets DRIVER_OK; the device hands its event source to the
//! device loop's registrar, and the test turns that loop (hull-vmm's main thread runs the
//! same loop) by hand. Guest connections reach the host listener `<uds>_P`,
//! host connections (`CONNECT P` on the hybrid socket) reach the guest as requests, bytes
//! flow both ways with an interrupt for each batch of used buffers, and a driver reset
//! closes the host's streams while the socket keeps listening for the next driver.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hull_vmm::bus::{Bus, SharedDevice};
use hull_vmm::event_loop::{DeviceLoop, Registrar};
use hull_vmm::memory::GuestMemory;
use hull_vmm::virtio::mmio::MmioTransport;
use hull_vmm::virtio::vsock::{Vsock, VsockCounters};
use hull_vmm::virtio::{MMIO_BASE, MMIO_SIZE, TYPE_VSOCK};
use vm_memory::{Bytes, GuestAddress};

use common::backend::*;
use common::driver::*;
use common::vsock::*;

/// A guest driving the vsock device, and the device loop, turned by hand.
struct Rig {
    dir: TempDir,
    device_loop: DeviceLoop,
    transport: Arc<Mutex<MmioTransport>>,
    bus: Bus,
    memory: GuestMemory,
    rx: SplitQueue,
    tx: SplitQueue,
    /// Receive buffers by descriptor head.
    rx_bufs: Vec<u64>,
    rx_seen: u16,
    /// Where the next transmitted packet is written.
    next_tx: u64,
    counters: VsockCounters,
}

impl Rig {
    fn new(name: &str) -> Self {
        let dir = TempDir::new(name);
        let registrar = Registrar::new().unwrap();
        let memory = GuestMemory::new(16).unwrap();
        let device = Vsock::new(&dir.0.join("v.sock"), GUEST_CID, registrar.clone())
            .expect("the device listens on its hybrid socket");
        assert!(dir.0.join("v.sock").exists(), "the hybrid socket is there");
        let counters = device.counters();
        let transport = Arc::new(Mutex::new(
            MmioTransport::new(Box::new(device), memory.mmap().clone()).unwrap(),
        ));
        let mut bus = Bus::new("mmio");
        let shared: SharedDevice = transport.clone();
        bus.insert(MMIO_BASE, MMIO_SIZE, shared).unwrap();
        let mut rig = Self {
            dir,
            device_loop: DeviceLoop::new(registrar).unwrap(),
            transport,
            bus,
            memory,
            rx: SplitQueue::new(16, 0),
            tx: SplitQueue::new(16, 0),
            rx_bufs: Vec::new(),
            rx_seen: 0,
            next_tx: 0,
            counters,
        };
        rig.start(0x10_0000);
        rig
    }

    fn driver(&self) -> Driver<'_> {
        Driver {
            bus: &self.bus,
            base: MMIO_BASE,
        }
    }

    fn uds(&self) -> PathBuf {
        self.dir.0.join("v.sock")
    }

    /// Initializes the device as the guest's driver does, with its queues from `at`.
    fn start(&mut self, at: u64) {
        let driver = self.driver();
        driver.negotiate(TYPE_VSOCK, 0);
        assert_eq!(
            driver.config(0, 8),
            GUEST_CID.to_le_bytes(),
            "the guest CID in the configuration space"
        );
        let rx = SplitQueue::new(16, at);
        let tx = SplitQueue::new(16, at + 0x4000);
        let event = SplitQueue::new(16, at + 0x8000);
        driver.setup_queue(0, &rx);
        driver.setup_queue(1, &tx);
        driver.setup_queue(2, &event);
        driver.driver_ok();
        assert!(self.transport.lock().unwrap().is_active());
        self.rx = rx;
        self.tx = tx;
        self.rx_seen = 0;
        self.rx_bufs.clear();
        self.next_tx = at + 0x10_0000;
        let mem = self.memory.mmap();
        for i in 0..8u64 {
            let buf = at + 0x20_0000 + i * u64::from(RX_BUF);
            let head = self.rx.add_chain(mem, &[(buf, RX_BUF, true)]);
            assert_eq!(usize::from(head), self.rx_bufs.len());
            self.rx_bufs.push(buf);
        }
        self.driver().kick(0);
    }

    /// One round of the device loop, waiting at most `timeout`.
    fn poll(&mut self, timeout: Duration) {
        self.device_loop.turn_for(timeout).unwrap();
    }

    /// Sends a packet on the transmit queue (header and payload in two descriptors, as
    /// Linux sends them) and kicks.
    fn send(&mut self, header: &[u8], payload: &[u8]) {
        let mem = self.memory.mmap();
        let at = self.next_tx;
        self.next_tx += 0x1000;
        mem.write_slice(header, GuestAddress(at)).unwrap();
        let mut chain = vec![(at, HDR_LEN as u32, false)];
        if !payload.is_empty() {
            mem.write_slice(payload, GuestAddress(at + HDR_LEN as u64))
                .unwrap();
            chain.push((at + HDR_LEN as u64, payload.len() as u32, false));
        }
        self.tx.add_chain(mem, &chain);
        self.driver().kick(1);
    }

    /// Runs the loop until the device used a receive buffer; returns its packet, after
    /// checking the driver was interrupted for it.
    fn receive(&mut self) -> RxPacket {
        let deadline = Instant::now() + BOUND;
        let mem = self.memory.mmap().clone();
        while self.rx.used_idx(&mem) == self.rx_seen {
            assert!(
                Instant::now() < deadline,
                "nothing came on the receive queue"
            );
            self.poll(Duration::from_millis(20));
        }
        let status = self.driver().read(INTERRUPT_STATUS);
        assert_ne!(status & INT_VRING, 0, "the driver is told of used buffers");
        self.driver().write(INTERRUPT_ACK, status);
        let (head, written) = self.rx.used_elem(&mem, self.rx_seen);
        self.rx_seen += 1;
        // The buffer goes back to the driver's pool, as Linux refills its rx queue.
        let buf = self.rx_bufs[head as usize];
        let new_head = self.rx.add_chain(&mem, &[(buf, RX_BUF, true)]);
        let packet = rx_packet(&mem, buf, written);
        if usize::from(new_head) < self.rx_bufs.len() {
            self.rx_bufs[usize::from(new_head)] = buf;
        } else {
            self.rx_bufs.resize(usize::from(new_head) + 1, buf);
        }
        self.driver().kick(0);
        packet
    }

    /// A host process connects with `CONNECT <port>`; the guest's listener accepts. Returns
    /// the host stream and the host-side port.
    fn host_connect(&mut self, port: u32) -> (UnixStream, u32) {
        let mut host = UnixStream::connect(self.uds()).expect("connect to the hybrid socket");
        host.set_read_timeout(Some(BOUND)).unwrap();
        host.write_all(format!("CONNECT {port}\n").as_bytes())
            .unwrap();
        let request = self.receive();
        assert_eq!(request.op, OP_REQUEST, "{request:?}");
        assert_eq!(
            (request.src_cid, request.dst_cid, request.dst_port),
            (HOST_CID, GUEST_CID, port)
        );
        let local = request.src_port;
        self.send(&guest_header(OP_RESPONSE, port, local, 0), &[]);
        self.poll(Duration::ZERO);
        let mut line = [0u8; 32];
        let n = host.read(&mut line).expect("the host reads OK");
        assert_eq!(&line[..n], format!("OK {local}\n").as_bytes());
        (host, local)
    }
}

#[test]
fn activation_hands_one_event_source_to_the_device_loop() {
    let mut rig = Rig::new("vsock-source");
    rig.poll(Duration::ZERO);
    assert_eq!(rig.device_loop.sources(), 1, "the device's one source");
}

#[test]
fn guest_connection_reaches_the_host_listener_and_bytes_flow_both_ways() {
    let mut rig = Rig::new("vsock-guest-conn");
    let listener = UnixListener::bind(rig.dir.0.join("v.sock_1024")).unwrap();
    rig.send(&guest_header(OP_REQUEST, 5000, 1024, 0), &[]);
    let response = rig.receive();
    assert_eq!(
        response.op, OP_RESPONSE,
        "the stream is accepted: {response:?}"
    );
    assert_eq!(
        (response.src_port, response.dst_cid, response.dst_port),
        (1024, GUEST_CID, 5000)
    );
    let mut host = accept(&listener);

    let payload = b"hello from the guest";
    rig.send(
        &guest_header(OP_RW, 5000, 1024, payload.len() as u32),
        payload,
    );
    rig.poll(Duration::ZERO);
    let mut got = vec![0u8; payload.len()];
    host.read_exact(&mut got)
        .expect("the guest's bytes reach the host");
    assert_eq!(&got, payload);

    host.write_all(b"hello from the host").unwrap();
    let data = loop {
        let packet = rig.receive();
        if packet.op == OP_RW {
            break packet;
        }
    };
    assert_eq!((data.src_port, data.dst_port), (1024, 5000));
    assert_eq!(data.payload, b"hello from the host");
    let counters = rig.counters.snapshot().expect("the device is there");
    assert_eq!(
        (counters.conns_opened, counters.tx_bytes, counters.rx_bytes),
        (1, payload.len() as u64, 19),
        "{counters:?}"
    );
}

#[test]
fn guest_connection_without_a_host_listener_is_reset() {
    let mut rig = Rig::new("vsock-refused");
    rig.send(&guest_header(OP_REQUEST, 5000, 4321, 0), &[]);
    let reset = rig.receive();
    assert_eq!(reset.op, 3, "RST: {reset:?}");
    assert_eq!((reset.src_port, reset.dst_port), (4321, 5000));
}

#[test]
fn host_connect_reaches_the_guest_as_a_request_and_bytes_flow_both_ways() {
    let mut rig = Rig::new("vsock-host-conn");
    let (mut host, local) = rig.host_connect(52);
    host.write_all(b"ping").unwrap();
    let data = rig.receive();
    assert_eq!((data.op, data.src_port, data.dst_port), (OP_RW, local, 52));
    assert_eq!(data.payload, b"ping");
    rig.send(&guest_header(OP_RW, 52, local, 4), b"pong");
    rig.poll(Duration::ZERO);
    let mut got = [0u8; 4];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
}

#[test]
fn driver_reset_closes_host_streams_and_the_next_driver_is_served() {
    let mut rig = Rig::new("vsock-reset");
    let (mut host, _) = rig.host_connect(52);
    rig.driver().write(STATUS, 0);
    rig.poll(Duration::from_millis(100));
    assert_eq!(
        rig.device_loop.sources(),
        0,
        "the reset device's source is gone"
    );
    let mut buf = [0u8; 8];
    assert_eq!(
        host.read(&mut buf).expect("EOF, not an error"),
        0,
        "the host sees its stream closed"
    );
    assert!(rig.uds().exists(), "the hybrid socket still listens");

    // A new driver, with its queues elsewhere: the device serves it from scratch.
    rig.start(0x40_0000);
    let (mut host, local) = rig.host_connect(53);
    rig.send(&guest_header(OP_RW, 53, local, 2), b"ok");
    rig.poll(Duration::ZERO);
    let mut got = [0u8; 2];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ok");
}

#[test]
fn the_hybrid_socket_goes_with_the_device_and_its_source() {
    let mut rig = Rig::new("vsock-cleanup");
    rig.poll(Duration::ZERO);
    let uds = rig.uds();
    let Rig {
        bus,
        transport,
        device_loop,
        dir,
        ..
    } = rig;
    drop(bus);
    drop(transport);
    assert!(uds.exists(), "the running source still holds the device");
    drop(device_loop);
    assert!(!uds.exists(), "the socket file is removed");
    drop(dir);
}
