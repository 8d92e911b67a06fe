//! The in-VMM virtio-vsock device, with a hybrid-vsock unix socket on the host: host
//! processes connect to the socket and write `CONNECT <port>\n` (answered `OK <hostport>\n`),
//! and a guest connection to host port P goes to the unix socket `<path>_P` (Firecracker's
//! convention, the same as the standalone hull-vsock backend's).
//!
//! This module owns the virtio face of the device (type, features, configuration space,
//! queues set up at activation) and its wiring into the VMM's device loop. It does not own
//! the device logic: parsing and checking the guest's packets, the connections and their
//! flow control, and the host side are `hull_devices::vsock`'s, shared with hull-vsock.
//!
//! At activation the device hands an [`EventSource`] to the device loop through its
//! [`Registrar`]: it waits on the rx, tx and event queues' kick eventfds, on the muxer's
//! epoll descriptor (the host sockets) and on a stop eventfd. The source and the device
//! share the device model behind a mutex that the loop thread holds while it handles an
//! event; a vCPU takes it only briefly, at activation and reset (and the metrics reader to
//! copy the counters). A reset (on a vCPU thread, whose seccomp filter forbids socket
//! work) marks the connections for closing and signals the stop eventfd; the loop thread
//! closes them before anything else touches the host side, and the old source goes. The
//! hybrid socket keeps listening for the next driver.

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use hull_devices::vsock::device::{EVENT_QUEUE, NUM_QUEUES, RX_QUEUE, TX_QUEUE};
use hull_devices::vsock::metrics::Counters;
use hull_devices::vsock::{Muxer, VsockDevice as VsockModel};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::vhost_user::{VSOCK_CID_MAX, VSOCK_CID_MIN};
use super::{Activation, Interrupt, QueueConfig, VirtioDevice, TYPE_VSOCK};
use crate::event_loop::{EventSource, Next, Registrar};
use crate::{Error, Result};

/// Descriptors per queue the driver may use.
pub const QUEUE_SIZE: u16 = 256;

/// The device's name in logs and errors.
const NAME: &str = "virtio-vsock";

/// The device model and what the device and its event source agree on.
struct Shared {
    model: VsockModel,
    /// Bumped by every reset: a source of an earlier activation sees it and goes.
    generation: u64,
    /// The driver reset the device and the connections are not closed yet: the loop thread,
    /// which owns the host side, closes them before it touches the host side again.
    reset_pending: bool,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic on the loop thread leaves the model as consistent as any guest input can.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A virtio-vsock device whose host side is a hybrid-vsock unix socket.
pub struct Vsock {
    cid: u64,
    path: PathBuf,
    registrar: Registrar,
    shared: Arc<Mutex<Shared>>,
    queue_sizes: [u16; NUM_QUEUES],
    /// The running source's stop eventfd, written at reset.
    stop: Option<Arc<EventFd>>,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("cid", &self.cid)
            .field("path", &self.path)
            .field("active", &self.stop.is_some())
            .finish_non_exhaustive()
    }
}

impl Vsock {
    /// A device for the guest with context id `cid` ([`VSOCK_CID_MIN`] to
    /// [`VSOCK_CID_MAX`]), listening on the unix socket `path` (a stale socket there is
    /// replaced; any other file is an error), whose event source goes to `registrar`'s loop
    /// when the driver activates it. The socket is removed when the device and its source
    /// are gone.
    pub fn new(path: &Path, cid: u64, registrar: Registrar) -> Result<Self> {
        if !(VSOCK_CID_MIN..=VSOCK_CID_MAX).contains(&cid) {
            return Err(Error::VsockCid { cid });
        }
        let muxer = Muxer::new(path, cid).map_err(|source| Error::Vsock {
            path: path.to_owned(),
            source,
        })?;
        tracing::info!(path = %path.display(), cid, "vsock device listening");
        Ok(Self {
            cid,
            path: path.to_owned(),
            registrar,
            shared: Arc::new(Mutex::new(Shared {
                model: VsockModel::new(muxer),
                generation: 0,
                reset_pending: false,
            })),
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
            stop: None,
        })
    }

    /// The hybrid-vsock socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle that reads the device's counters from another thread (the metrics socket);
    /// it does not keep the device alive.
    pub fn counters(&self) -> VsockCounters {
        VsockCounters(Arc::downgrade(&self.shared))
    }
}

/// Reads a [`Vsock`] device's counters (packets, bytes, drops, connections) since it was
/// created, across driver resets.
#[derive(Clone)]
pub struct VsockCounters(Weak<Mutex<Shared>>);

impl std::fmt::Debug for VsockCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("VsockCounters").finish_non_exhaustive()
    }
}

impl VsockCounters {
    /// The counters now; `None` once the device and its event source are gone.
    pub fn snapshot(&self) -> Option<Counters> {
        let shared = self.0.upgrade()?;
        let counters = lock(&shared).model.counters();
        Some(counters)
    }
}

/// A virtio-queue queue for the driver's `config`, which the transport checked against
/// guest memory.
fn queue(config: &QueueConfig, max_size: u16, event_idx: bool) -> Result<Queue> {
    let fail = |source| Error::QueueSetup {
        index: config.index,
        source,
    };
    let mut queue = Queue::new(max_size).map_err(fail)?;
    queue.try_set_size(config.size).map_err(fail)?;
    queue
        .try_set_desc_table_address(GuestAddress(config.desc))
        .map_err(fail)?;
    queue
        .try_set_avail_ring_address(GuestAddress(config.avail))
        .map_err(fail)?;
    queue
        .try_set_used_ring_address(GuestAddress(config.used))
        .map_err(fail)?;
    queue.set_event_idx(event_idx);
    queue.set_ready(true);
    Ok(queue)
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        // guest_cid (le64), virtio 1.2 section 5.10.4; the window is the guest's choice.
        let offset = u32::try_from(offset).unwrap_or(u32::MAX);
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let window = hull_devices::config_space::read_window(&self.cid.to_le_bytes(), offset, len);
        data.fill(0);
        if let Some(head) = data.get_mut(..window.len()) {
            head.copy_from_slice(&window);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The guest CID is read-only.
        tracing::debug!(offset, len = data.len(), "vsock config write ignored");
    }

    fn activate(&mut self, activation: Activation<'_>) -> Result<()> {
        let event_idx = activation.features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let find = |index: usize, name: &'static str| {
            let config = activation
                .queues
                .iter()
                .find(|q| usize::from(q.index) == index);
            let kick = activation.kicks.get(index);
            match (config, kick) {
                (Some(config), Some(kick)) => Ok((config, Arc::clone(kick))),
                _ => Err(Error::QueueMissing {
                    device: NAME,
                    index: u16::try_from(index).unwrap_or(u16::MAX),
                    name,
                }),
            }
        };
        let (rx_config, rx_kick) = find(RX_QUEUE, "receiveq")?;
        let (tx_config, tx_kick) = find(TX_QUEUE, "transmitq")?;
        let rx = queue(rx_config, self.queue_sizes[RX_QUEUE], event_idx)?;
        let tx = queue(tx_config, self.queue_sizes[TX_QUEUE], event_idx)?;
        // The event queue (transport resets, for migration) is never used; its kicks are
        // drained if the driver made it ready.
        let event_kick = find(EVENT_QUEUE, "eventq").ok().map(|(_, kick)| kick);
        let stop =
            Arc::new(EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(Error::EventFd)?);
        let (generation, muxer_fd) = {
            let mut shared = lock(&self.shared);
            (shared.generation, shared.model.muxer().epoll_fd())
        };
        let source = VsockSource {
            shared: Arc::clone(&self.shared),
            generation,
            memory: activation.memory.clone(),
            rx,
            tx,
            rx_kick,
            tx_kick,
            event_kick,
            muxer_fd,
            stop: Arc::clone(&stop),
            interrupt: activation.interrupt,
        };
        self.registrar.add(Box::new(source))?;
        self.stop = Some(stop);
        Ok(())
    }

    fn reset(&mut self) {
        {
            let mut shared = lock(&self.shared);
            shared.generation = shared.generation.wrapping_add(1);
            shared.reset_pending = true;
        }
        if let Some(stop) = self.stop.take() {
            if let Err(err) = stop.write(1) {
                tracing::warn!(%err, "cannot stop the vsock device's event source");
            }
        }
    }
}

/// The activated device as the device loop drives it.
struct VsockSource {
    shared: Arc<Mutex<Shared>>,
    /// The activation this source serves; a reset makes it stale.
    generation: u64,
    memory: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    rx_kick: Arc<EventFd>,
    tx_kick: Arc<EventFd>,
    event_kick: Option<Arc<EventFd>>,
    /// The muxer's epoll descriptor, which lives as long as the shared model.
    muxer_fd: RawFd,
    stop: Arc<EventFd>,
    interrupt: Interrupt,
}

/// What woke a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Tx,
    Rx,
    Host,
    Other,
}

impl VsockSource {
    /// Runs `process` on `queue` and interrupts the driver if buffers were used and it
    /// asked to hear of them.
    fn run(
        model: &mut VsockModel,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
        interrupt: &Interrupt,
        process: fn(&mut VsockModel, &mut Queue, &GuestMemoryMmap) -> hull_devices::Result<bool>,
    ) {
        match process(model, queue, memory) {
            Ok(true) => {
                if queue.needs_notification(memory).unwrap_or(true) {
                    interrupt.signal_used_queue();
                }
            }
            Ok(false) => {}
            // Rings the driver placed badly: it broke its own device; the other queue and
            // the host side go on.
            Err(err) => tracing::warn!(%err, "vsock virtqueue unusable"),
        }
    }
}

impl EventSource for VsockSource {
    fn name(&self) -> &str {
        NAME
    }

    fn fds(&self) -> Vec<RawFd> {
        let mut fds = vec![
            self.tx_kick.as_raw_fd(),
            self.rx_kick.as_raw_fd(),
            self.muxer_fd,
            self.stop.as_raw_fd(),
        ];
        fds.extend(self.event_kick.as_ref().map(|kick| kick.as_raw_fd()));
        fds
    }

    fn ready(&mut self, fd: RawFd) -> Next {
        let shared = Arc::clone(&self.shared);
        let mut shared = lock(&shared);
        if std::mem::take(&mut shared.reset_pending) {
            shared.model.muxer().reset();
        }
        if shared.generation != self.generation || fd == self.stop.as_raw_fd() {
            return Next::Remove;
        }
        let wake = if fd == self.tx_kick.as_raw_fd() {
            Wake::Tx
        } else if fd == self.rx_kick.as_raw_fd() {
            Wake::Rx
        } else if fd == self.muxer_fd {
            Wake::Host
        } else {
            Wake::Other
        };
        // Kicks are counts: read them so the descriptor stops being readable (non-blocking:
        // a kick already read is EAGAIN).
        match wake {
            Wake::Tx => drop(self.tx_kick.read()),
            Wake::Rx => drop(self.rx_kick.read()),
            Wake::Other => {
                if let Some(kick) = &self.event_kick {
                    drop(kick.read());
                }
            }
            Wake::Host => {}
        }
        let model = &mut shared.model;
        if wake == Wake::Tx {
            Self::run(
                model,
                &mut self.tx,
                &self.memory,
                &self.interrupt,
                VsockModel::process_tx,
            );
        }
        if matches!(wake, Wake::Rx | Wake::Host) {
            model.muxer().process_host_events();
        }
        if wake != Wake::Other {
            // Answers to the guest's packets and data from the host wait for rx buffers.
            Self::run(
                model,
                &mut self.rx,
                &self.memory,
                &self.interrupt,
                VsockModel::process_rx,
            );
        }
        Next::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(name: &str, cid: u64) -> (Vsock, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("hull-vmm-vsock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let device = Vsock::new(&path, cid, Registrar::new().unwrap()).unwrap();
        (device, dir)
    }

    #[test]
    fn config_space_is_the_guest_cid_in_any_window() {
        let (mut device, dir) = device("config", 0x1234_5678);
        let mut data = [0xffu8; 8];
        device.read_config(0, &mut data);
        assert_eq!(data, 0x1234_5678u64.to_le_bytes());
        let mut data = [0xffu8; 4];
        device.read_config(2, &mut data);
        assert_eq!(data, [0x34, 0x12, 0, 0]);
        device.read_config(6, &mut data);
        assert_eq!(data, [0; 4], "bytes past the space read as zero");
        device.read_config(u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
        device.write_config(0, &[9; 8]);
        let mut data = [0u8; 8];
        device.read_config(0, &mut data);
        assert_eq!(
            u64::from_le_bytes(data),
            0x1234_5678,
            "the CID is read-only"
        );
        drop(device);
        assert!(
            !dir.join("v.sock").exists(),
            "the socket goes with the device"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn offers_version_1_and_three_queues() {
        let (device, dir) = device("features", 3);
        assert_eq!(device.device_type(), TYPE_VSOCK);
        assert_ne!(device.features() & (1 << VIRTIO_F_VERSION_1), 0);
        assert_eq!(device.queue_max_sizes().len(), 3);
        drop(device);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn cid_outside_the_guest_range_is_refused() {
        let registrar = Registrar::new().unwrap();
        let path = Path::new("/nonexistent/v.sock");
        for cid in [0, 2, u64::from(u32::MAX), u64::MAX] {
            let err = Vsock::new(path, cid, registrar.clone()).unwrap_err();
            assert!(err.to_string().contains(&cid.to_string()), "{err}");
        }
    }

    #[test]
    fn a_path_that_is_not_a_socket_is_refused_naming_it() {
        let dir = std::env::temp_dir().join(format!("hull-vmm-vsock-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("taken");
        std::fs::write(&path, b"data").unwrap();
        let err = Vsock::new(&path, 3, Registrar::new().unwrap()).unwrap_err();
        assert!(err.to_string().contains("taken"), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"data",
            "the file is left alone"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    proptest::proptest! {
        /// Whatever window the driver reads, the bytes inside the 8-byte space are the
        /// CID's and the rest read as zero; nothing panics.
        #[test]
        fn any_config_window_reads_the_cid_or_zero(offset in proptest::prelude::any::<u64>(), len in 0usize..40) {
            let cid: u64 = 0x0506_0708;
            let (mut device, dir) = device("config-prop", cid);
            let mut data = vec![0xaa; len];
            device.read_config(offset, &mut data);
            let space = cid.to_le_bytes();
            for (i, byte) in data.iter().enumerate() {
                let at = offset.checked_add(i as u64).and_then(|at| usize::try_from(at).ok());
                let expected = at.and_then(|at| space.get(at)).copied().unwrap_or(0);
                proptest::prop_assert_eq!(*byte, expected, "byte {} of a read at {}", i, offset);
            }
            drop(device);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
