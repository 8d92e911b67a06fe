//! The vhost-user face of the network device: one worker thread per queue pair (thread `k`
//! owns rx queue `2k`, tx queue `2k+1` and tap queue `k`; they share only the device and its
//! counters), the tap queue's readiness as an extra event of that thread's epoll loop, memory
//! updates and feature acknowledgement, on `vhost-user-backend`.
//!
//! The tap descriptors are registered edge-triggered ([`TAP_EVENT`]): the thread reads until
//! the tap says `EAGAIN` or the guest's rx buffers run out, and in the second case remembers
//! that frames wait, so the guest's next rx kick (not a level-triggered loop on an unread tap)
//! resumes reading.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use tracing::{debug, error, info, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use super::device::{FrameFormat, NetDevice};
use super::queue_pair::QueuePair;
use crate::exit_events::ExitEvents;
use crate::vsock::packet::Mem;
use crate::{Error, Result};

/// Largest queue the device accepts, in descriptors.
const MAX_QUEUE_SIZE: usize = 1024;
/// Index of the rx and tx queue among a worker thread's vrings.
const RX: usize = 0;
const TX: usize = 1;

/// The network device as a vhost-user backend.
pub struct NetBackend {
    device: Arc<NetDevice>,
    mem: RwLock<Option<GuestMemoryAtomic<Mem>>>,
    format: RwLock<FrameFormat>,
    /// Per queue pair: the tap queue may hold frames not read yet.
    tap_pending: Vec<AtomicBool>,
    /// Per queue pair: its tap queue is attached (see `attach`).
    attached: Vec<AtomicBool>,
    exit_events: Arc<ExitEvents>,
}

impl NetBackend {
    /// A backend serving `device` (shared with the backends of later frontends). The tap
    /// goes back to what a guest that accepted nothing gets, until this frontend's guest
    /// accepts its features.
    pub fn new(device: Arc<NetDevice>) -> Self {
        let pairs = usize::from(device.queue_pairs());
        let format = device.accept_features(0).unwrap_or_else(|err| {
            error!(%err, "cannot reset the tap for a new frontend");
            FrameFormat::new(0, device.mtu())
        });
        // Only the first tap queue takes frames until the guest starts more pairs: the
        // kernel spreads flows over attached queues, and frames on a queue no one reads
        // would be lost.
        if pairs > 1 {
            for pair in 1..pairs {
                if let Err(err) = device.tap().set_queue_attached(pair, false) {
                    debug!(pair, %err, "tap queue already detached");
                }
            }
        }
        Self {
            device,
            mem: RwLock::new(None),
            format: RwLock::new(format),
            tap_pending: (0..pairs).map(|_| AtomicBool::new(true)).collect(),
            attached: (0..pairs).map(|pair| AtomicBool::new(pair == 0)).collect(),
            exit_events: Arc::default(),
        }
    }

    /// The exit events of this backend's worker threads (see [`ExitEvents`]).
    pub fn exit_events(&self) -> Arc<ExitEvents> {
        Arc::clone(&self.exit_events)
    }

    /// Attaches queue pair `pair`'s tap queue the first time its rx queue runs.
    fn attach(&self, pair: usize) {
        let Some(attached) = self.attached.get(pair) else {
            return;
        };
        if attached.swap(true, Ordering::AcqRel) {
            return;
        }
        match self.device.tap().set_queue_attached(pair, true) {
            Ok(()) => info!(
                pair,
                "tap queue attached: the guest started this queue pair"
            ),
            Err(err) => warn!(pair, %err, "cannot attach the tap queue; its pair stays idle"),
        }
    }

    /// The device.
    pub fn device(&self) -> &NetDevice {
        &self.device
    }

    /// The event id of a tap queue's readiness in its worker thread's loop (ids up to the
    /// number of queues are the library's).
    pub fn tap_event(&self) -> u16 {
        (2 * self.device.queue_pairs()).saturating_add(1)
    }

    /// Registers tap queue `k` with worker thread `k` of `daemon`, edge-triggered.
    pub fn register_taps(&self, daemon: &VhostUserDaemon<Arc<Self>>) -> Result<()> {
        let handlers = daemon.get_epoll_handlers();
        for (handler, fd) in handlers.iter().zip(self.device.tap().queues()) {
            handler
                .register_listener(
                    fd.as_fd().as_raw_fd(),
                    EventSet::IN | EventSet::EDGE_TRIGGERED,
                    u64::from(self.tap_event()),
                )
                .map_err(|source| Error::Os {
                    what: "adding the tap to a worker's event loop",
                    source,
                })?;
        }
        Ok(())
    }

    fn frames<'a>(&'a self, pair: usize) -> Option<QueuePair<'a>> {
        let fd = self.device.tap().queues().get(pair)?;
        let format = *self.format.read().ok()?;
        Some(QueuePair::new(
            pair,
            fd.as_fd(),
            format,
            self.device.counter_set(),
        ))
    }

    /// Notifies the guest of used buffers on `queue` when `notify` says so, and counts it.
    fn signal(&self, vring: &VringRwLock, notify: bool, queue: usize) {
        if notify {
            match vring.signal_used_queue() {
                Ok(()) => self.device.queue_events().interrupt(queue),
                Err(err) => warn!(%err, "cannot signal the guest"),
            }
        }
    }

    fn run_tx(&self, pair: usize, vring: &VringRwLock, mem: &Mem) {
        let Some(frames) = self.frames(pair) else {
            return;
        };
        let notify = {
            let mut state = vring.get_mut();
            let queue = state.get_queue_mut();
            match frames.process_tx(queue, mem) {
                Ok(0) => false,
                Ok(_) => queue.needs_notification(mem).unwrap_or(true),
                Err(err) => {
                    error!(pair, %err, "tx virtqueue unusable");
                    false
                }
            }
        };
        self.signal(vring, notify, 2 * pair + 1);
    }

    fn run_rx(&self, pair: usize, vring: &VringRwLock, mem: &Mem) {
        let (Some(frames), Some(pending)) = (self.frames(pair), self.tap_pending.get(pair)) else {
            return;
        };
        let attached = self
            .attached
            .get(pair)
            .is_some_and(|a| a.load(Ordering::Acquire));
        if attached && !pending.load(Ordering::Acquire) {
            return;
        }
        let notify = {
            let mut state = vring.get_mut();
            if !state.get_queue().ready() || !state.is_enabled() {
                // Frames wait until the frontend starts the queue (it is kicked then).
                return;
            }
            self.attach(pair);
            let queue = state.get_queue_mut();
            match frames.process_rx(queue, mem) {
                Ok(pass) => {
                    if pass.drained {
                        pending.store(false, Ordering::Release);
                    }
                    pass.used > 0 && queue.needs_notification(mem).unwrap_or(true)
                }
                Err(err) => {
                    error!(pair, %err, "rx virtqueue unusable");
                    false
                }
            }
        };
        self.signal(vring, notify, 2 * pair);
    }
}

impl VhostUserBackend for NetBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2 * usize::from(self.device.queue_pairs())
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        // QEMU's vhost-user-net needs protocol features; its message order needs the relay in
        // front of the daemon (see `super::frontend_relay`).
        self.device.features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&self, features: u64) {
        match self.device.accept_features(features) {
            Ok(format) => {
                if let Ok(mut slot) = self.format.write() {
                    *slot = format;
                }
            }
            // The tap keeps its earlier settings; frames still flow, with the kernel
            // finishing what the guest cannot take.
            Err(err) => error!(%err, "cannot set the tap up for the guest's features"),
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ
    }

    fn set_event_idx(&self, _enabled: bool) {
        // vhost-user-backend sets it on each vring's queue, whose notification calls
        // (`enable_notification`, `needs_notification`) then follow it.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        crate::config_space::read_window(&self.device.config_space(), offset, size)
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<Mem>) -> io::Result<()> {
        let mut slot = self
            .mem
            .write()
            .map_err(|_| io::Error::other("memory lock poisoned"))?;
        *slot = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.device.queue_pairs())
            .map(|pair| 0b11u64 << (2 * u32::from(pair)))
            .collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.exit_events.create()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        let Some(atomic) = self.mem.read().ok().and_then(|m| m.clone()) else {
            return Ok(());
        };
        // Thread `k` owns queue pair `k` (see `queues_per_thread`): its vrings are rx, tx.
        let (Some(rx), Some(tx)) = (vrings.get(RX), vrings.get(TX)) else {
            return Ok(());
        };
        let pair = thread_id;
        let mem = atomic.memory();
        match usize::from(device_event) {
            RX => {
                self.device.queue_events().kick(2 * pair);
                self.run_rx(pair, rx, &mem);
            }
            TX => {
                self.device.queue_events().kick(2 * pair + 1);
                self.run_tx(pair, tx, &mem);
            }
            _ if device_event == self.tap_event() => {
                if let Some(pending) = self.tap_pending.get(pair) {
                    pending.store(true, Ordering::Release);
                }
                self.run_rx(pair, rx, &mem);
            }
            other => warn!(event = other, "unexpected event"),
        }
        Ok(())
    }
}
