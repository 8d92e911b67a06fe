//! The vhost-user frontend as a virtio-net device. No vhost-user-net backend is installable
//! on this machine (hull-net is not written yet), so the backend is a loopback written here
//! on rust-vmm's vhost-user-backend, served on a real unix socket: every frame the driver
//! transmits comes back on its receive queue. It offers multiqueue and a control queue,
//! which the frontend must withhold from the driver (it sets up one receive and one
//! transmit queue), and a MAC address in its configuration space.

mod common;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hull_vmm::bus::{Bus, SharedDevice};
use hull_vmm::memory::GuestMemory;
use hull_vmm::virtio::mmio::MmioTransport;
use hull_vmm::virtio::vhost_user::{VhostUserDevice, VhostUserKind};
use hull_vmm::virtio::{MMIO_BASE, MMIO_SIZE, TYPE_NET};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use common::backend::{wait_for_interrupt, TempDir, BOUND};
use common::driver::*;

const MAC: [u8; 6] = [0x02, 0x68, 0x75, 0x6c, 0x6c, 0x01];
const F_MAC: u64 = 1 << 5;
const F_CTRL_VQ: u64 = 1 << 17;
const F_MQ: u64 = 1 << 22;
const PROTOCOL_FEATURES: u64 = 1 << 30;

/// Loops transmitted frames back to the receive queue.
struct LoopNet {
    mem: Mutex<Option<GuestMemoryAtomic<GuestMemoryMmap>>>,
}

impl LoopNet {
    /// Moves every frame on the transmit queue into a buffer of the receive queue.
    fn forward(&self, rx: &VringRwLock, tx: &VringRwLock) -> io::Result<()> {
        let Some(atomic) = self.mem.lock().unwrap().clone() else {
            return Ok(());
        };
        let mem = atomic.memory();
        let mut tx_state = tx.get_mut();
        let mut rx_state = rx.get_mut();
        let tx_queue = tx_state.get_queue_mut();
        let rx_queue = rx_state.get_queue_mut();
        while let Some(chain) = tx_queue.pop_descriptor_chain(&*mem) {
            let head = chain.head_index();
            let mut frame = Vec::new();
            for desc in chain.readable() {
                let mut part = vec![0u8; desc.len() as usize];
                mem.read_slice(&mut part, desc.addr())
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
                frame.extend_from_slice(&part);
            }
            tx_queue
                .add_used(&*mem, head, 0)
                .map_err(io::Error::other)?;
            // No receive buffer: the frame is dropped, as a full NIC would.
            let Some(rx_chain) = rx_queue.pop_descriptor_chain(&*mem) else {
                continue;
            };
            let rx_head = rx_chain.head_index();
            let mut rest = &frame[..];
            let mut written = 0u32;
            for desc in rx_chain.writable() {
                let (now, later) = rest.split_at(rest.len().min(desc.len() as usize));
                mem.write_slice(now, desc.addr())
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
                written += u32::try_from(now.len()).unwrap();
                rest = later;
            }
            rx_queue
                .add_used(&*mem, rx_head, written)
                .map_err(io::Error::other)?;
        }
        drop((tx_state, rx_state));
        tx.signal_used_queue()?;
        rx.signal_used_queue()
    }
}

impl VhostUserBackend for LoopNet {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        3
    }
    fn max_queue_size(&self) -> usize {
        256
    }
    fn features(&self) -> u64 {
        VERSION_1 | F_MAC | F_CTRL_VQ | F_MQ | PROTOCOL_FEATURES
    }
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ
    }
    fn set_event_idx(&self, _enabled: bool) {}
    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // mac, status (link up), max_virtqueue_pairs 2, mtu 1500.
        let mut config = MAC.to_vec();
        config.extend_from_slice(&1u16.to_le_bytes());
        config.extend_from_slice(&2u16.to_le_bytes());
        config.extend_from_slice(&1500u16.to_le_bytes());
        let start = (offset as usize).min(config.len());
        let end = start.saturating_add(size as usize).min(config.len());
        config[start..end].to_vec()
    }
    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        *self.mem.lock().unwrap() = Some(mem);
        Ok(())
    }
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }
    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        // Queue 1 is transmit: a kick there moves frames to queue 0.
        if device_event == 1 {
            self.forward(&vrings[0], &vrings[1])?;
        }
        Ok(())
    }
}

#[test]
fn net_frontend_sets_up_rx_and_tx_only_and_a_transmitted_frame_comes_back() {
    let dir = TempDir::new("vu-net");
    let socket = dir.0.join("net.sock");
    let backend = Arc::new(LoopNet {
        mem: Mutex::new(None),
    });
    let mut daemon = VhostUserDaemon::new(
        "loopnet".into(),
        backend,
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .unwrap();
    let listen_on = socket.clone();
    let server = std::thread::spawn(move || daemon.serve(listen_on));
    let deadline = Instant::now() + BOUND;
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the backend never listened");
        std::thread::sleep(Duration::from_millis(5));
    }

    let memory = GuestMemory::new(16).unwrap();
    let mem = memory.mmap();
    let device = VhostUserDevice::connect(&socket, VhostUserKind::Net).expect("connects");
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
    let offered = driver.negotiate(TYPE_NET, F_MAC);
    assert_eq!(
        offered & (F_MQ | F_CTRL_VQ | PROTOCOL_FEATURES),
        0,
        "multiqueue, the control queue and the vhost-user bit are withheld"
    );
    assert_ne!(offered & F_MAC, 0);
    assert_eq!(driver.config(0, 6), MAC, "the MAC from the backend");
    driver.write(QUEUE_SEL, 2);
    assert_eq!(driver.read(QUEUE_NUM_MAX), 0, "no third (control) queue");

    let mut rx = SplitQueue::new(16, 0x10_0000);
    let mut tx = SplitQueue::new(16, 0x10_4000);
    driver.setup_queue(0, &rx);
    driver.setup_queue(1, &tx);
    driver.driver_ok();
    assert!(transport.lock().unwrap().is_active());

    // A virtio_net_hdr (12 bytes, all zero) and an Ethernet frame to ourselves.
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&MAC);
    frame.extend_from_slice(&MAC);
    frame.extend_from_slice(&[0x88, 0xb5]);
    frame.extend_from_slice(b"hull loopback frame");
    let (rx_buf, tx_buf) = (0x20_0000, 0x20_1000);
    mem.write_slice(&frame, GuestAddress(tx_buf)).unwrap();
    let rx_head = rx.add_chain(mem, &[(rx_buf, 1526, true)]);
    driver.kick(0);
    let tx_head = tx.add_chain(mem, &[(tx_buf, u32::try_from(frame.len()).unwrap(), false)]);
    driver.kick(1);

    let interrupt = transport.lock().unwrap().interrupt().clone();
    let deadline = Instant::now() + BOUND;
    while rx.used_idx(mem) != 1 || tx.used_idx(mem) != 1 {
        assert!(Instant::now() < deadline, "the frame never came back");
        std::thread::sleep(Duration::from_millis(5));
    }
    wait_for_interrupt(&interrupt);
    assert_eq!(tx.used_elem(mem, 0).0, u32::from(tx_head));
    let frame_len = u32::try_from(frame.len()).unwrap();
    assert_eq!(rx.used_elem(mem, 0), (u32::from(rx_head), frame_len));
    let mut back = vec![0u8; frame.len()];
    mem.read_slice(&mut back, GuestAddress(rx_buf)).unwrap();
    assert_eq!(back, frame, "the frame came back on the receive queue");

    // The frontend goes; the backend's serve() returns and its worker threads exit.
    drop(bus);
    drop(transport);
    server.join().unwrap().expect("the backend ends cleanly");
}
