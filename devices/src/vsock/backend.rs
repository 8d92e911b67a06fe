//! The vhost-user face of the vsock device: features, config space, memory updates, and the
//! events of the worker thread, on `vhost-user-backend`.
//!
//! One worker thread owns all three queues and the host side. It runs
//! `vhost-user-backend`'s epoll loop (`VringEpollHandler`): for this first slice correctness
//! comes before io_uring, the loop only ever waits for readiness (kicks, the muxer's epoll
//! descriptor), and every read and write it triggers is a non-blocking copy of at most one
//! packet, so io_uring would save syscalls but change no behaviour. The muxer's own epoll set is
//! nested into that loop as one descriptor ([`BACKEND_EVENT`]).

use std::io;

use tracing::{error, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_bindings::virtio_config::{VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use super::device::{VsockDevice, EVENT_QUEUE, NUM_QUEUES, RX_QUEUE, TX_QUEUE};
use super::metrics::Counters;
use super::packet::Mem;
use crate::Result;

/// Event id of the muxer's epoll descriptor in the worker's loop (ids up to the number of
/// queues are the library's).
pub const BACKEND_EVENT: u16 = 4;
const _: () = assert!(BACKEND_EVENT as usize == NUM_QUEUES + 1);

/// Largest queue the device accepts, in descriptors.
const MAX_QUEUE_SIZE: usize = 1024;

/// The vsock device as a vhost-user backend.
pub struct VsockBackend {
    device: VsockDevice,
    guest_cid: u64,
    mem: Option<GuestMemoryAtomic<Mem>>,
    event_idx: bool,
    queue_events: crate::metrics::QueueEvents,
    exit_events: std::sync::Arc<crate::exit_events::ExitEvents>,
}

impl VsockBackend {
    /// A backend for the guest with context id `guest_cid`, its host side being `device`'s
    /// muxer.
    pub fn new(device: VsockDevice, guest_cid: u64) -> Self {
        Self {
            device,
            guest_cid,
            mem: None,
            event_idx: false,
            queue_events: crate::metrics::QueueEvents::new(NUM_QUEUES),
            exit_events: std::sync::Arc::default(),
        }
    }

    /// The exit events of this backend's worker threads (see
    /// [`crate::exit_events::ExitEvents`]).
    pub fn exit_events(&self) -> std::sync::Arc<crate::exit_events::ExitEvents> {
        std::sync::Arc::clone(&self.exit_events)
    }

    /// Kicks and interrupts of the rx, tx and event queues so far.
    pub fn queue_events(&self) -> &crate::metrics::QueueEvents {
        &self.queue_events
    }

    /// The muxer's epoll descriptor, to register as [`BACKEND_EVENT`].
    pub fn host_event_fd(&mut self) -> std::os::fd::RawFd {
        self.device.muxer().epoll_fd()
    }

    /// The device's counters so far.
    pub fn counters(&self) -> Counters {
        self.device.counters()
    }

    fn run_queue(
        &mut self,
        queue_index: usize,
        vring: &VringRwLock,
        mem: &Mem,
        process: fn(&mut VsockDevice, &mut virtio_queue::Queue, &Mem) -> Result<bool>,
    ) {
        let notify = {
            let mut state = vring.get_mut();
            let queue = state.get_queue_mut();
            match process(&mut self.device, queue, mem) {
                Ok(true) => queue.needs_notification(mem).unwrap_or(true),
                Ok(false) => false,
                Err(err) => {
                    // A ring the frontend placed outside guest memory: the guest broke its own
                    // device. Log it and keep serving the other queues.
                    error!(%err, "virtqueue unusable");
                    false
                }
            }
        };
        if notify {
            match vring.signal_used_queue() {
                Ok(()) => self.queue_events.interrupt(queue_index),
                Err(err) => warn!(%err, "cannot signal the guest"),
            }
        }
    }
}

impl VhostUserBackendMut for VsockBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_F_NOTIFY_ON_EMPTY)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // The config space is the 64-bit guest CID (virtio 1.2, 5.10.4).
        crate::config_space::read_window(&self.guest_cid.to_le_bytes(), offset, size)
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<Mem>) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // One worker thread owns rx, tx and event queues and the host side.
        vec![(1 << NUM_QUEUES) - 1]
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.exit_events.create()
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        let Some(atomic) = self.mem.clone() else {
            return Ok(());
        };
        let mem = atomic.memory();
        let (Some(rx), Some(tx)) = (vrings.get(RX_QUEUE), vrings.get(TX_QUEUE)) else {
            return Ok(());
        };
        if usize::from(device_event) < NUM_QUEUES {
            self.queue_events.kick(usize::from(device_event));
        }
        match usize::from(device_event) {
            RX_QUEUE => self.run_queue(RX_QUEUE, rx, &mem, VsockDevice::process_rx),
            TX_QUEUE => {
                self.run_queue(TX_QUEUE, tx, &mem, VsockDevice::process_tx);
                // Answers (responses, credit updates) may wait for rx buffers.
                self.run_queue(RX_QUEUE, rx, &mem, VsockDevice::process_rx);
            }
            EVENT_QUEUE => {}
            _ if device_event == BACKEND_EVENT => {
                self.device.muxer().process_host_events();
                self.run_queue(RX_QUEUE, rx, &mem, VsockDevice::process_rx);
            }
            other => warn!(event = other, "unexpected event"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vsock::muxer::Muxer;

    #[test]
    fn config_space_is_the_guest_cid_and_reads_past_it_are_empty() {
        let dir = crate::vsock::test_utils::TestDir::new("config");
        let muxer = Muxer::new(&dir.path().join("vsock.sock"), 0x1234_5678_9abc).expect("muxer");
        let backend = VsockBackend::new(VsockDevice::new(muxer), 0x1234_5678_9abc);
        assert_eq!(
            backend.get_config(0, 8),
            0x1234_5678_9abc_u64.to_le_bytes().to_vec()
        );
        assert_eq!(backend.get_config(4, 4), vec![0x34, 0x12, 0, 0]);
        assert_eq!(backend.get_config(6, 100), vec![0, 0]);
        assert!(backend.get_config(8, 4).is_empty());
        assert!(backend.get_config(u32::MAX, u32::MAX).is_empty());
    }
}
