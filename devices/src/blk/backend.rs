//! The vhost-user face of the block device: one worker thread per queue (a queue is owned by
//! the thread that serves it; they share only the read-only device, the backing file's
//! descriptor and the counters), memory updates, and the kick events, on `vhost-user-backend`.

use std::io;
use std::sync::{Arc, RwLock};

use tracing::{error, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use super::device::BlkDevice;
use crate::exit_events::ExitEvents;
use crate::vsock::packet::Mem;

/// Largest queue the device accepts, in descriptors.
const MAX_QUEUE_SIZE: usize = 1024;

/// The block device as a vhost-user backend.
pub struct BlkBackend {
    device: Arc<BlkDevice>,
    mem: RwLock<Option<GuestMemoryAtomic<Mem>>>,
    exit_events: Arc<ExitEvents>,
}

impl BlkBackend {
    /// A backend serving `device` (shared with the backends of later frontends).
    pub fn new(device: Arc<BlkDevice>) -> Self {
        Self {
            device,
            mem: RwLock::new(None),
            exit_events: Arc::default(),
        }
    }

    /// The exit events of this backend's worker threads (see [`ExitEvents`]).
    pub fn exit_events(&self) -> Arc<ExitEvents> {
        Arc::clone(&self.exit_events)
    }

    /// The device.
    pub fn device(&self) -> &BlkDevice {
        &self.device
    }
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        usize::from(self.device.num_queues())
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        self.device.features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
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
        (0..self.device.num_queues()).map(|q| 1u64 << q).collect()
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
        // Thread `t` owns queue `t` alone (see `queues_per_thread`): its kick is the
        // thread's event 0, the completions of its ring event `completion_event()`.
        let completion = usize::from(device_event) == self.completion_event();
        let Some(vring) = vrings.get(if completion {
            0
        } else {
            usize::from(device_event)
        }) else {
            warn!(event = device_event, "unexpected event");
            return Ok(());
        };
        let index = thread_id;
        let mem = atomic.memory().into_inner();
        let notify = {
            let mut state = vring.get_mut();
            let ready = state.get_queue().ready();
            let queue = state.get_queue_mut();
            let served = if completion {
                if ready {
                    self.device.complete_queue(index, queue, &mem, false)
                } else {
                    // A stopped queue's answers have nowhere to go: drop them.
                    let dropped = self.device.drop_completions(index);
                    if dropped > 0 {
                        warn!(
                            queue = index,
                            dropped, "requests completed after their queue stopped"
                        );
                    }
                    Ok(0)
                }
            } else {
                self.device.queue_events().kick(index);
                self.device.process_queue(index, queue, &mem)
            };
            match served {
                Ok(0) => false,
                Ok(_) => queue.needs_notification(&*mem).unwrap_or(true),
                Err(err) => {
                    // Rings the frontend placed outside guest memory: the guest broke its own
                    // device. Log it and keep serving the other queues.
                    error!(queue = index, %err, "virtqueue unusable");
                    false
                }
            }
        };
        if notify {
            match vring.signal_used_queue() {
                Ok(()) => self.device.queue_events().interrupt(index),
                Err(err) => warn!(%err, "cannot signal the guest"),
            }
        }
        Ok(())
    }
}

impl BlkBackend {
    /// The worker event of the completions of a thread's queue: the first past the numbers
    /// vhost-user-backend keeps for the queues and its exit event.
    pub fn completion_event(&self) -> usize {
        usize::from(self.device.num_queues()) + 1
    }

    /// Adds each queue's io_uring to the event loop of the worker thread that owns it, so
    /// its completions go back to the guest as they come.
    pub fn register_completions(
        &self,
        handlers: &[Arc<vhost_user_backend::VringEpollHandler<Arc<BlkBackend>>>],
    ) -> io::Result<()> {
        for (index, handler) in handlers.iter().enumerate() {
            if let Some(fd) = self.device.completion_fd(index) {
                handler.register_listener(fd, EventSet::IN, self.completion_event() as u64)?;
            }
        }
        Ok(())
    }
}

impl Drop for BlkBackend {
    fn drop(&mut self) {
        // The frontend is gone with its queues: what is still in flight completes into
        // nothing, and must not reach the next frontend's queues.
        let dropped = self.device.quiesce();
        if dropped > 0 {
            warn!(dropped, "requests in flight when the frontend went");
        }
    }
}
