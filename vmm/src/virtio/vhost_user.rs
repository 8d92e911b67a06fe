//! The vhost-user frontend: a virtio device whose data plane is another process (hull-blk,
//! hull-net, hull-fs, qemu-storage-daemon, virtiofsd, ...), reached over a unix socket with
//! the vhost crate's [`Frontend`].
//!
//! One generic device serves every kind; a [`VhostUserKind`] only says the device type,
//! how many queues it has, which backend features the VMM withholds, and where the
//! configuration space comes from. At connection the frontend takes ownership of the
//! backend and negotiates the vhost-user protocol features; when the driver sets
//! DRIVER_OK it acknowledges the driver's features to the backend, shares guest RAM
//! (`SET_MEM_TABLE`: the memfd of [`crate::memory::GuestMemory`] and each region's offset
//! in it), and starts each ready queue (`SET_VRING_NUM/ADDR/BASE/CALL/KICK`, then
//! `SET_VRING_ENABLE`). The kick fds are the transport's ioeventfds and the call fd is its
//! irqfd, so a running queue involves KVM and the backend only.
//!
//! Configuration space reads are forwarded with `GET_CONFIG` when the backend offers it.
//! They always ask for the whole space from offset 0 and cut the driver's window out
//! locally, as QEMU does: libvhost-user backends (qemu-storage-daemon) ignore the offset.
//! virtio-fs backends do not serve a configuration space, so the frontend builds it from
//! the tag, as QEMU's vhost-user-fs device does.
//! A virtio-vsock device serves its configuration space (the guest CID) from its argument
//! too, after checking at connection that a backend serving one (hull-vsock) has the same
//! CID; its three queues (receive, transmit, event) all go to the backend.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_blk::VIRTIO_BLK_F_MQ;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MQ};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::{Activation, Disconnector, VirtioDevice, TYPE_BLOCK, TYPE_FS, TYPE_NET, TYPE_VSOCK};
use crate::{Error, Result};

/// The vhost-user feature bit saying the backend speaks protocol features; never offered
/// to the driver.
const PROTOCOL_FEATURES: u64 = 1 << 30;
/// Descriptors per queue the driver may use.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes of the virtio-blk configuration space up to `write_zeroes_may_unmap` and its
/// padding (virtio 1.2 section 5.2.4): what hull-blk and libvhost-user both serve.
const BLK_CONFIG_SIZE: usize = 60;
/// Bytes of the virtio-net configuration space up to `mtu` (virtio 1.2 section 5.1.4).
const NET_CONFIG_SIZE: usize = 12;
/// Longest virtio-fs tag, in bytes (the `tag` field of `virtio_fs_config`).
pub const FS_TAG_MAX: usize = 36;
/// Bytes of the virtio-vsock configuration space: the guest CID.
const VSOCK_CONFIG_SIZE: usize = 8;
/// [`VSOCK_CONFIG_SIZE`] as vhost-user's `GET_CONFIG` wants it.
const VSOCK_CONFIG_SIZE32: u32 = 8;
/// Smallest guest context id: 0 to 2 are the hypervisor, local and host addresses.
pub const VSOCK_CID_MIN: u64 = 3;
/// Largest guest context id: ids are 32-bit on the wire and `u32::MAX` is VMADDR_CID_ANY.
pub const VSOCK_CID_MAX: u64 = u32::MAX as u64 - 1;

/// Connects to `socket`, retrying a few times while it refuses: a backend creates its
/// socket file just before it listens on it (as `Frontend::connect` does).
/// How long a backend may take to answer the set-up's messages (SET_OWNER to the
/// protocol features): a local backend answers in microseconds.
pub const SETUP_DEADLINE: Duration = Duration::from_secs(10);

/// Cuts a connection (shutdown both ways) if its set-up outlasts the deadline.
struct SetupWatchdog {
    done: Arc<(Mutex<bool>, Condvar)>,
    thread: std::thread::JoinHandle<bool>,
}

impl SetupWatchdog {
    fn start(connection: &UnixStream, deadline: Duration) -> std::io::Result<Self> {
        let connection = connection.try_clone()?;
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        let watched = Arc::clone(&done);
        let thread = std::thread::Builder::new()
            .name("vhost-user-setup".into())
            .spawn(move || {
                let (lock, finished) = &*watched;
                let guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
                let (guard, _) = finished
                    .wait_timeout_while(guard, deadline, |done| !*done)
                    .unwrap_or_else(PoisonError::into_inner);
                let expired = !*guard;
                if expired {
                    let _ = connection.shutdown(std::net::Shutdown::Both);
                }
                expired
            })?;
        Ok(Self { done, thread })
    }

    /// Ends the watch; whether the deadline passed (and the connection was cut) first.
    fn finish(self) -> bool {
        let (lock, finished) = &*self.done;
        *lock.lock().unwrap_or_else(PoisonError::into_inner) = true;
        finished.notify_one();
        self.thread.join().unwrap_or(true)
    }
}

fn connect_retrying(socket: &Path) -> std::io::Result<UnixStream> {
    let mut retries = 5;
    loop {
        match UnixStream::connect(socket) {
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused && retries > 0 => {
                retries -= 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            result => return result,
        }
    }
}

/// Checks that a vsock backend serving a configuration space (hull-vsock does) has the
/// guest CID the frontend announces: with two different CIDs the guest's packets would
/// carry one the backend drops. A backend without `CONFIG` is not asked.
fn check_backend_cid(
    frontend: &mut Frontend,
    protocol_features: VhostUserProtocolFeatures,
    socket: &Path,
    cid: u64,
) -> Result<()> {
    if !protocol_features.contains(VhostUserProtocolFeatures::CONFIG) {
        return Ok(());
    }
    let buf = [0u8; VSOCK_CONFIG_SIZE];
    let (_, config) = frontend
        .get_config(0, VSOCK_CONFIG_SIZE32, VhostUserConfigFlags::WRITABLE, &buf)
        .map_err(|source| Error::VhostUser {
            socket: socket.to_owned(),
            op: "GET_CONFIG",
            source,
        })?;
    compare_cid(&config, cid).map_err(|reason| Error::VhostUserBackend {
        socket: socket.to_owned(),
        reason,
    })
}

/// Compares the vsock configuration space a backend served (`config`, peer-controlled: any
/// length) with the guest CID `cid`; the error says what differs.
fn compare_cid(config: &[u8], cid: u64) -> std::result::Result<(), String> {
    let backend_cid = <[u8; VSOCK_CONFIG_SIZE]>::try_from(config)
        .ok()
        .map(u64::from_le_bytes);
    match backend_cid {
        Some(backend_cid) if backend_cid == cid => Ok(()),
        Some(backend_cid) => Err(format!(
            "the backend serves guest cid {backend_cid}, not {cid}"
        )),
        None => Err(format!(
            "the backend's vsock configuration space is {} bytes, not {VSOCK_CONFIG_SIZE}",
            config.len()
        )),
    }
}

/// What kind of device a vhost-user backend serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VhostUserKind {
    /// A virtio-blk disk, one request queue.
    Block,
    /// A virtio-net interface: one receive and one transmit queue.
    Net,
    /// A virtio-fs file system mounted in the guest by `tag`: the high-priority queue and
    /// one request queue.
    Fs {
        /// The mount tag, at most [`FS_TAG_MAX`] bytes.
        tag: String,
    },
    /// A virtio-vsock socket device with the guest context id `cid`: the receive,
    /// transmit and event queues, all served by the backend (hull-vsock), as QEMU's
    /// vhost-user-vsock-device sets them up.
    Vsock {
        /// The guest's context id, [`VSOCK_CID_MIN`] to [`VSOCK_CID_MAX`].
        cid: u64,
    },
}

impl VhostUserKind {
    /// The virtio device type.
    pub fn device_type(&self) -> u32 {
        match self {
            VhostUserKind::Block => TYPE_BLOCK,
            VhostUserKind::Net => TYPE_NET,
            VhostUserKind::Fs { .. } => TYPE_FS,
            VhostUserKind::Vsock { .. } => TYPE_VSOCK,
        }
    }

    fn queues(&self) -> usize {
        match self {
            VhostUserKind::Block => 1,
            VhostUserKind::Net | VhostUserKind::Fs { .. } => 2,
            VhostUserKind::Vsock { .. } => 3,
        }
    }

    /// Backend features the driver is not offered: more queues than the VMM sets up
    /// (blk and net multiqueue), and the net control queue, which a vhost-user frontend
    /// would have to serve itself.
    fn withheld_features(&self) -> u64 {
        match self {
            VhostUserKind::Block => 1 << VIRTIO_BLK_F_MQ,
            VhostUserKind::Net => (1 << VIRTIO_NET_F_MQ) | (1 << VIRTIO_NET_F_CTRL_VQ),
            VhostUserKind::Fs { .. } | VhostUserKind::Vsock { .. } => 0,
        }
    }

    /// The configuration space the frontend serves itself, if the kind has one.
    fn local_config(&self) -> Option<Vec<u8>> {
        match self {
            VhostUserKind::Fs { tag } => {
                // tag[36], then num_request_queues (le32) = 1.
                let mut config = vec![0u8; FS_TAG_MAX + 4];
                let len = tag.len().min(FS_TAG_MAX);
                config[..len].copy_from_slice(&tag.as_bytes()[..len]);
                config[FS_TAG_MAX..].copy_from_slice(&1u32.to_le_bytes());
                Some(config)
            }
            // guest_cid (le64), virtio 1.2 section 5.10.4.
            VhostUserKind::Vsock { cid } => Some(cid.to_le_bytes().to_vec()),
            VhostUserKind::Block | VhostUserKind::Net => None,
        }
    }

    fn backend_config_size(&self) -> usize {
        match self {
            VhostUserKind::Block => BLK_CONFIG_SIZE,
            VhostUserKind::Net => NET_CONFIG_SIZE,
            VhostUserKind::Fs { .. } => 0,
            VhostUserKind::Vsock { .. } => VSOCK_CONFIG_SIZE,
        }
    }
}

/// A virtio device served by a vhost-user backend.
pub struct VhostUserDevice {
    socket: PathBuf,
    kind: VhostUserKind,
    frontend: Frontend,
    /// A second handle on the frontend's connection, for [`Disconnector`]s.
    connection: UnixStream,
    backend_features: u64,
    protocol_features: VhostUserProtocolFeatures,
    queue_sizes: Vec<u16>,
    local_config: Option<Vec<u8>>,
    started: Vec<usize>,
    /// Whether a failed GET_CONFIG was logged: the guest chooses how often it reads, so
    /// a dead backend is reported once, not once per read.
    config_error_logged: bool,
}

impl std::fmt::Debug for VhostUserDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserDevice")
            .field("socket", &self.socket)
            .field("kind", &self.kind)
            .field("backend_features", &self.backend_features)
            .field("protocol_features", &self.protocol_features)
            .finish_non_exhaustive()
    }
}

impl VhostUserDevice {
    /// Connects to the backend listening on `socket`, takes ownership of it and negotiates
    /// the protocol features. Fails, naming the socket, if the backend is not there, lacks
    /// VIRTIO_F_VERSION_1, or serves fewer queues than `kind` needs, or does not finish the
    /// set-up within [`SETUP_DEADLINE`].
    pub fn connect(socket: &Path, kind: VhostUserKind) -> Result<Self> {
        Self::connect_within(socket, kind, SETUP_DEADLINE)
    }

    /// [`Self::connect`] with the set-up's deadline: a backend that accepts the connection
    /// and then stops answering would otherwise block the caller for ever (the shim's one
    /// thread, when the VMM runs in the shim), as the vhost crate retries a read that timed
    /// out. A watchdog thread, alive only during the set-up, cuts the connection when the
    /// deadline passes, and the set-up fails naming the backend.
    pub fn connect_within(socket: &Path, kind: VhostUserKind, deadline: Duration) -> Result<Self> {
        if let VhostUserKind::Fs { tag } = &kind {
            if tag.is_empty() || tag.len() > FS_TAG_MAX {
                return Err(Error::VhostUserBackend {
                    socket: socket.to_owned(),
                    reason: format!("virtio-fs tag {tag:?} must be 1 to {FS_TAG_MAX} bytes"),
                });
            }
        }
        if let VhostUserKind::Vsock { cid } = &kind {
            if !(VSOCK_CID_MIN..=VSOCK_CID_MAX).contains(cid) {
                return Err(Error::VhostUserBackend {
                    socket: socket.to_owned(),
                    reason: format!(
                        "vsock guest cid {cid} must be {VSOCK_CID_MIN} to {VSOCK_CID_MAX}"
                    ),
                });
            }
        }
        let fail = |op: &'static str| {
            let socket = socket.to_owned();
            move |source| Error::VhostUser { socket, op, source }
        };
        // Connected here rather than by Frontend::connect, to keep a handle on the
        // connection that can cut it (see `Disconnector`).
        let connect_err = |err| {
            fail("connect")(vhost::Error::VhostUserProtocol(
                vhost::vhost_user::Error::SocketConnect(err),
            ))
        };
        let stream = connect_retrying(socket).map_err(connect_err)?;
        let connection = stream.try_clone().map_err(connect_err)?;
        let watchdog = SetupWatchdog::start(&connection, deadline).map_err(connect_err)?;
        let set_up = Self::set_up(socket, kind, stream, connection);
        if watchdog.finish() {
            return Err(Error::VhostUserBackend {
                socket: socket.to_owned(),
                reason: format!(
                    "the backend accepted the connection but did not finish the set-up within \
                     {deadline:?}"
                ),
            });
        }
        set_up
    }

    /// The set-up's messages on a connected `stream` (`connection` its duplicate).
    fn set_up(
        socket: &Path,
        kind: VhostUserKind,
        stream: UnixStream,
        connection: UnixStream,
    ) -> Result<Self> {
        let fail = |op: &'static str| {
            let socket = socket.to_owned();
            move |source| Error::VhostUser { socket, op, source }
        };
        let queues = kind.queues();
        let mut frontend = Frontend::from_stream(stream, queues as u64);
        frontend.set_owner().map_err(fail("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(fail("GET_FEATURES"))?;
        if backend_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(Error::VhostUserBackend {
                socket: socket.to_owned(),
                reason: format!(
                    "backend features {backend_features:#x} lack VIRTIO_F_VERSION_1 \
                     (legacy-only backends are not supported)"
                ),
            });
        }
        let mut protocol_features = VhostUserProtocolFeatures::empty();
        if backend_features & PROTOCOL_FEATURES != 0 {
            let offered = frontend
                .get_protocol_features()
                .map_err(fail("GET_PROTOCOL_FEATURES"))?;
            // What this frontend uses: the configuration space, the queue count, and
            // acknowledged requests (so a backend's refusal is seen where it happens).
            protocol_features = offered
                & (VhostUserProtocolFeatures::CONFIG
                    | VhostUserProtocolFeatures::MQ
                    | VhostUserProtocolFeatures::REPLY_ACK);
            frontend
                .set_protocol_features(protocol_features)
                .map_err(fail("SET_PROTOCOL_FEATURES"))?;
            if protocol_features.contains(VhostUserProtocolFeatures::MQ) {
                let backend_queues = frontend.get_queue_num().map_err(fail("GET_QUEUE_NUM"))?;
                if backend_queues < queues as u64 {
                    return Err(Error::VhostUserBackend {
                        socket: socket.to_owned(),
                        reason: format!(
                            "backend serves {backend_queues} queues, the device needs {queues}"
                        ),
                    });
                }
            }
        }
        if let VhostUserKind::Vsock { cid } = &kind {
            check_backend_cid(&mut frontend, protocol_features, socket, *cid)?;
        }
        tracing::info!(
            socket = %socket.display(),
            ?kind,
            features = backend_features,
            protocol = protocol_features.bits(),
            "vhost-user backend connected"
        );
        Ok(Self {
            socket: socket.to_owned(),
            local_config: kind.local_config(),
            kind,
            frontend,
            connection,
            backend_features,
            protocol_features,
            queue_sizes: vec![QUEUE_SIZE; queues],
            started: Vec::new(),
            config_error_logged: false,
        })
    }

    /// The kind of device.
    pub fn kind(&self) -> &VhostUserKind {
        &self.kind
    }

    /// The protocol features both sides use.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol_features
    }

    fn fail(&self, op: &'static str) -> impl FnOnce(vhost::Error) -> Error {
        let socket = self.socket.clone();
        move |source| Error::VhostUser { socket, op, source }
    }

    /// The whole configuration space, from the frontend itself or the backend.
    fn config_space(&mut self) -> Result<Vec<u8>> {
        if let Some(config) = &self.local_config {
            return Ok(config.clone());
        }
        let size = self.kind.backend_config_size();
        if size == 0
            || !self
                .protocol_features
                .contains(VhostUserProtocolFeatures::CONFIG)
        {
            return Ok(Vec::new());
        }
        let buf = vec![0u8; size];
        let size32 = u32::try_from(size).unwrap_or(u32::MAX);
        let (_, config) = self
            .frontend
            .get_config(0, size32, VhostUserConfigFlags::WRITABLE, &buf)
            .map_err(self.fail("GET_CONFIG"))?;
        Ok(config)
    }

    fn start_queues(&mut self, activation: &Activation<'_>) -> Result<()> {
        let acked = activation.features | (self.backend_features & PROTOCOL_FEATURES);
        self.frontend
            .set_features(acked)
            .map_err(self.fail("SET_FEATURES"))?;
        let regions = activation
            .memory
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(self.fail("SET_MEM_TABLE (guest RAM not file-backed)"))?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(self.fail("SET_MEM_TABLE"))?;
        let host = |addr: u64| -> Result<u64> {
            activation
                .memory
                .get_host_address(GuestAddress(addr))
                .map(|ptr| ptr as u64)
                .map_err(|_| Error::GuestMemoryAccess { addr, len: 0 })
        };
        for queue in &activation.queues {
            let index = usize::from(queue.index);
            let Some(kick) = activation.kicks.get(index) else {
                continue;
            };
            let addresses = VringConfigData {
                queue_max_size: self.queue_sizes.get(index).copied().unwrap_or(QUEUE_SIZE),
                queue_size: queue.size,
                flags: 0,
                desc_table_addr: host(queue.desc)?,
                used_ring_addr: host(queue.used)?,
                avail_ring_addr: host(queue.avail)?,
                log_addr: None,
            };
            self.frontend
                .set_vring_num(index, queue.size)
                .map_err(self.fail("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_addr(index, &addresses)
                .map_err(self.fail("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(index, 0)
                .map_err(self.fail("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_call(index, activation.interrupt.eventfd())
                .map_err(self.fail("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(index, kick)
                .map_err(self.fail("SET_VRING_KICK"))?;
            if acked & PROTOCOL_FEATURES != 0 {
                // With protocol features, rings start disabled (vhost-user spec, "Ring states").
                self.frontend
                    .set_vring_enable(index, true)
                    .map_err(self.fail("SET_VRING_ENABLE"))?;
            }
            self.started.push(index);
        }
        Ok(())
    }
}

impl VirtioDevice for VhostUserDevice {
    fn device_type(&self) -> u32 {
        self.kind.device_type()
    }

    fn features(&self) -> u64 {
        self.backend_features & !PROTOCOL_FEATURES & !self.kind.withheld_features()
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let config = match self.config_space() {
            Ok(config) => config,
            Err(err) => {
                if !std::mem::replace(&mut self.config_error_logged, true) {
                    tracing::warn!(
                        error = %crate::error::Chain(&err),
                        "virtio config read failed; the driver reads zeroes"
                    );
                }
                return;
            }
        };
        let Some(start) = usize::try_from(offset).ok().filter(|s| *s < config.len()) else {
            return;
        };
        let end = start.saturating_add(data.len()).min(config.len());
        data[..end - start].copy_from_slice(&config[start..end]);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let writable = self.local_config.is_none()
            && self
                .protocol_features
                .contains(VhostUserProtocolFeatures::CONFIG);
        let Some(offset) = u32::try_from(offset)
            .ok()
            .filter(|o| writable && (*o as usize) < self.kind.backend_config_size())
        else {
            tracing::debug!(offset, len = data.len(), "virtio config write dropped");
            return;
        };
        if let Err(err) = self
            .frontend
            .set_config(offset, VhostUserConfigFlags::WRITABLE, data)
        {
            tracing::warn!(%err, offset, "vhost-user SET_CONFIG failed");
        }
    }

    fn activate(&mut self, activation: Activation<'_>) -> Result<()> {
        self.started.clear();
        let result = self.start_queues(&activation);
        if result.is_err() {
            self.reset();
        }
        result
    }

    fn reset(&mut self) {
        // GET_VRING_BASE stops a ring (vhost-user spec, "Ring states"); the next
        // activation sets every ring up again from index 0.
        for index in std::mem::take(&mut self.started) {
            if let Err(err) = self.frontend.get_vring_base(index) {
                tracing::warn!(%err, socket = %self.socket.display(), index, "vhost-user GET_VRING_BASE failed");
            }
        }
    }

    fn disconnector(&self) -> Option<Disconnector> {
        match self.connection.try_clone() {
            Ok(stream) => Some(Disconnector::new(stream)),
            Err(err) => {
                tracing::warn!(%err, socket = %self.socket.display(), "no disconnector for the vhost-user connection");
                None
            }
        }
    }

    fn signals_from_outside(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_config_holds_the_tag_and_one_request_queue() {
        let kind = VhostUserKind::Fs {
            tag: "rootfs".into(),
        };
        let config = kind.local_config().unwrap();
        assert_eq!(config.len(), 40);
        assert_eq!(&config[..6], b"rootfs");
        assert!(config[6..36].iter().all(|b| *b == 0));
        assert_eq!(config[36..], 1u32.to_le_bytes());
        assert_eq!(kind.queues(), 2);
        assert_eq!(kind.device_type(), TYPE_FS);
    }

    #[test]
    fn vsock_config_is_the_guest_cid_and_three_queues() {
        let kind = VhostUserKind::Vsock { cid: 0x1_0000_0203 };
        let config = kind.local_config().unwrap();
        assert_eq!(config, [3, 2, 0, 0, 1, 0, 0, 0]);
        assert_eq!(kind.queues(), 3);
        assert_eq!(kind.device_type(), TYPE_VSOCK);
        assert_eq!(kind.withheld_features(), 0);
    }

    proptest::proptest! {
        /// A backend's vsock configuration space matches only when it is exactly the
        /// CID's 8 bytes; any other answer is refused, naming the CID or the length.
        #[test]
        fn backend_vsock_config_matches_only_the_cid(
            config in proptest::collection::vec(proptest::num::u8::ANY, 0..16),
            cid in proptest::num::u64::ANY,
        ) {
            match compare_cid(&config, cid) {
                Ok(()) => proptest::prop_assert_eq!(&config[..], &cid.to_le_bytes()[..]),
                Err(reason) if config.len() == VSOCK_CONFIG_SIZE => {
                    proptest::prop_assert_ne!(&config[..], &cid.to_le_bytes()[..]);
                    proptest::prop_assert!(reason.contains(&format!("not {cid}")), "{}", reason);
                }
                Err(reason) => proptest::prop_assert!(
                    reason.contains(&format!("is {} bytes", config.len())), "{}", reason
                ),
            }
            proptest::prop_assert!(compare_cid(&cid.to_le_bytes(), cid).is_ok());
        }
    }

    #[test]
    fn reserved_or_overlong_vsock_cids_are_refused() {
        for cid in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
            let kind = VhostUserKind::Vsock { cid };
            let err = VhostUserDevice::connect(Path::new("/nonexistent"), kind).unwrap_err();
            assert!(err.to_string().contains(&format!("cid {cid}")), "{err}");
        }
    }

    #[test]
    fn a_backend_that_accepts_and_never_answers_fails_the_set_up_at_its_deadline() {
        let dir = std::env::temp_dir().join(format!("hull-vmm-mute-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("mute.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        // Accepts, reads what it is sent, answers nothing, and keeps the connection open.
        let mute = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stream, &mut sink);
        });
        let err = VhostUserDevice::connect_within(
            &socket,
            VhostUserKind::Block,
            Duration::from_millis(200),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("did not finish the set-up within 200ms") && err.contains("mute.sock"),
            "{err}"
        );
        // The cut connection ends the backend's read too.
        mute.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_backend_is_an_error_naming_the_socket() {
        let socket = Path::new("/nonexistent/hull-vmm-test.sock");
        let err = VhostUserDevice::connect(socket, VhostUserKind::Block).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/hull-vmm-test.sock"),
            "{err}"
        );
    }

    /// A backend that answers SET_OWNER and GET_FEATURES (VERSION_1 only, no protocol
    /// features), then reads every request and never answers again; it tells `asked`
    /// when GET_VRING_BASE arrives.
    fn silent_backend(
        socket: &Path,
        asked: std::sync::mpsc::Sender<()>,
    ) -> std::thread::JoinHandle<()> {
        use std::io::{Read, Write};
        let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut header = [0u8; 12];
            conn.read_exact(&mut header).unwrap(); // SET_OWNER
            conn.read_exact(&mut header).unwrap(); // GET_FEATURES
            assert_eq!(header[..4], 1u32.to_le_bytes(), "GET_FEATURES");
            let mut reply = Vec::new();
            for word in [1u32, 0x5, 8] {
                reply.extend_from_slice(&word.to_le_bytes());
            }
            reply.extend_from_slice(&(1u64 << VIRTIO_F_VERSION_1).to_le_bytes());
            conn.write_all(&reply).unwrap();
            // Headers and bodies of what follows, until the frontend goes.
            while conn.read_exact(&mut header).is_ok() {
                let size = u32::from_le_bytes(header[8..12].try_into().unwrap());
                let mut body = vec![0u8; size as usize];
                if conn.read_exact(&mut body).is_err() {
                    break;
                }
                if header[..4] == 11u32.to_le_bytes() {
                    let _ = asked.send(()); // GET_VRING_BASE
                }
            }
        })
    }

    #[test]
    fn disconnector_frees_a_request_waiting_on_a_silent_backend() {
        use std::sync::mpsc;
        use vmm_sys_util::eventfd::EventFd;

        use crate::virtio::{Interrupt, QueueConfig};

        /// Removes the directory even when the test fails.
        struct TempDir(std::path::PathBuf);
        impl Drop for TempDir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let dir =
            TempDir(std::env::temp_dir().join(format!("hull-vmm-silent-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&dir.0);
        std::fs::create_dir_all(&dir.0).unwrap();
        let socket = dir.0.join("silent.sock");
        let (asked, vring_base_asked) = mpsc::channel();
        let backend = silent_backend(&socket, asked);
        let mut device = VhostUserDevice::connect(&socket, VhostUserKind::Block).unwrap();
        let memory = crate::memory::GuestMemory::new(16).unwrap();
        let kicks = [std::sync::Arc::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        )];
        // Without REPLY_ACK nothing in the set-up waits for an answer.
        device
            .activate(Activation {
                memory: memory.mmap(),
                features: 1 << VIRTIO_F_VERSION_1,
                queues: vec![QueueConfig {
                    index: 0,
                    size: 16,
                    desc: 0x1000,
                    avail: 0x2000,
                    used: 0x3000,
                }],
                kicks: &kicks,
                interrupt: Interrupt::new().unwrap(),
            })
            .unwrap();
        let disconnector = device.disconnector().unwrap();
        // The reset waits for GET_VRING_BASE's answer, which never comes...
        let (done, reset_returned) = mpsc::channel();
        let resetting = std::thread::spawn(move || {
            device.reset();
            done.send(()).unwrap();
        });
        vring_base_asked
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the frontend asked for the ring base");
        // ... until the connection is cut, as a VM's stop does.
        disconnector.disconnect();
        reset_returned
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the reset returned once disconnected");
        resetting.join().unwrap();
        backend.join().unwrap();
    }

    #[test]
    fn overlong_or_empty_fs_tags_are_refused() {
        for tag in ["", &"x".repeat(FS_TAG_MAX + 1)] {
            let kind = VhostUserKind::Fs { tag: tag.into() };
            let err = VhostUserDevice::connect(Path::new("/nonexistent"), kind).unwrap_err();
            assert!(err.to_string().contains("tag"), "{err}");
        }
    }
}
