//! The virtio-net device: the features it offers (offloads only as far as its tap supports
//! them), its config space (MAC, link status, queue pairs, MTU), what the guest's accepted
//! features mean for the tap and the queues, and its counters. Moving frames is
//! [`super::queue_pair`]'s business; threads and events are [`super::backend`]'s.

use std::sync::atomic::{AtomicU64, Ordering};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use super::tap::{Offloads, Tap, TapError};

/// Bytes of `virtio_net_hdr_v1` (with `num_buffers`), the header of a modern device.
pub const VNET_HDR_LEN: usize = 12;
/// Bytes of the legacy `virtio_net_hdr` (no `num_buffers`), without VERSION_1 and merging.
pub const LEGACY_VNET_HDR_LEN: usize = 10;
/// Largest Ethernet frame a tap hands over or accepts, without the virtio-net header: a
/// 64 KiB IP packet (TSO) behind an Ethernet header and a VLAN tag.
pub const MAX_FRAME_LEN: usize = 65_535 + 14 + 4;
/// Bytes of `struct virtio_net_config` up to and including `mtu` (virtio 1.2, 5.1.4).
pub const CONFIG_SIZE: usize = 12;

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl std::str::FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(|| format!("{s:?}: too short"))?;
            if part.len() != 2 {
                return Err(format!("{s:?}: {part:?} is not two hex digits"));
            }
            *byte = u8::from_str_radix(part, 16)
                .map_err(|_| format!("{s:?}: {part:?} is not two hex digits"))?;
        }
        if parts.next().is_some() {
            return Err(format!("{s:?}: more than six bytes"));
        }
        if mac[0] & 1 != 0 {
            return Err(format!("{s:?} is a multicast address"));
        }
        Ok(Self(mac))
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl Mac {
    /// A random, locally administered unicast address (for a guest given none).
    pub fn random() -> Self {
        let mut mac = [0u8; 6];
        // getrandom(2) with no flags fills 6 bytes from the kernel's pool; on the unlikely
        // failure the address is still unicast and local, only not random.
        // SAFETY: the buffer is valid for 6 bytes of writes.
        let _ = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
        mac[0] = (mac[0] & 0xfe) | 0x02;
        Self(mac)
    }
}

/// How the queues move frames, from the features the guest accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameFormat {
    /// Bytes of the header before every frame.
    pub hdr_len: usize,
    /// A received frame may span several rx chains (`VIRTIO_NET_F_MRG_RXBUF`).
    pub mergeable: bool,
    /// Bytes of rx buffers to gather before reading a frame with merging: the largest frame
    /// the tap may hand over with the accepted offloads, and its header.
    pub rx_room: usize,
    /// Bytes of rx buffers enough to read a frame when the guest offers no more: a frame
    /// of the link's MTU and its header (a larger, segmentation-offloaded frame that does not
    /// fit is dropped, as a NIC with a short ring drops, rather than stalling the queue).
    pub rx_min: usize,
}

impl FrameFormat {
    /// The format for `acked` features on a link of `mtu` bytes.
    pub fn new(acked: u64, mtu: u16) -> Self {
        let has = |bit: u32| acked & (1 << bit) != 0;
        let mergeable = has(VIRTIO_NET_F_MRG_RXBUF);
        let hdr_len = if has(VIRTIO_F_VERSION_1) || mergeable {
            VNET_HDR_LEN
        } else {
            LEGACY_VNET_HDR_LEN
        };
        let mtu_frame = usize::from(mtu.max(1500)) + 14 + 4;
        let frame = if has(VIRTIO_NET_F_GUEST_TSO4) || has(VIRTIO_NET_F_GUEST_TSO6) {
            MAX_FRAME_LEN
        } else {
            mtu_frame
        };
        Self {
            hdr_len,
            mergeable,
            rx_room: hdr_len + frame,
            rx_min: hdr_len + mtu_frame,
        }
    }
}

/// Frames and bytes moved, and frames dropped, by all queues. Read with
/// [`NetDevice::counters`].
#[derive(Debug, Default)]
pub struct Counters {
    pub(crate) tx_frames: AtomicU64,
    pub(crate) tx_bytes: AtomicU64,
    pub(crate) tx_dropped: AtomicU64,
    pub(crate) rx_frames: AtomicU64,
    pub(crate) rx_bytes: AtomicU64,
    pub(crate) rx_dropped: AtomicU64,
    pub(crate) malformed: AtomicU64,
    /// Frames sent and received, by queue pair.
    pub(crate) per_pair: Vec<(AtomicU64, AtomicU64)>,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CounterValues {
    /// Frames the guest sent that went out on the tap.
    pub tx_frames: u64,
    /// Bytes of those frames, without the virtio-net header.
    pub tx_bytes: u64,
    /// Frames the guest sent that the tap refused, or that were malformed.
    pub tx_dropped: u64,
    /// Frames from the tap delivered to the guest.
    pub rx_frames: u64,
    /// Bytes of those frames, without the virtio-net header.
    pub rx_bytes: u64,
    /// Frames from the tap lost (a read failed, or the guest's buffers could not take them).
    pub rx_dropped: u64,
    /// Chains refused (loops, outside memory, wrong direction, too long, too short), on
    /// either queue.
    pub malformed: u64,
    /// Frames the guest sent, by queue pair.
    pub tx_frames_per_pair: Vec<u64>,
    /// Frames delivered to the guest, by queue pair.
    pub rx_frames_per_pair: Vec<u64>,
}

impl Counters {
    /// Counters for `pairs` queue pairs.
    pub fn new(pairs: usize) -> Self {
        Self {
            per_pair: (0..pairs)
                .map(|_| (AtomicU64::new(0), AtomicU64::new(0)))
                .collect(),
            ..Self::default()
        }
    }

    /// Counts a frame sent (`tx`) or received on queue pair `pair`.
    pub(crate) fn pair_frame(&self, pair: usize, tx: bool) {
        if let Some((sent, received)) = self.per_pair.get(pair) {
            Self::add(if tx { sent } else { received }, 1);
        }
    }

    /// Adds `n` to `counter`.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The values so far.
    pub fn values(&self) -> CounterValues {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterValues {
            tx_frames: get(&self.tx_frames),
            tx_bytes: get(&self.tx_bytes),
            tx_dropped: get(&self.tx_dropped),
            rx_frames: get(&self.rx_frames),
            rx_bytes: get(&self.rx_bytes),
            rx_dropped: get(&self.rx_dropped),
            malformed: get(&self.malformed),
            tx_frames_per_pair: self.per_pair.iter().map(|(t, _)| get(t)).collect(),
            rx_frames_per_pair: self.per_pair.iter().map(|(_, r)| get(r)).collect(),
        }
    }
}

/// The network device over a tap, shared by the backends of successive frontends.
#[derive(Debug)]
pub struct NetDevice {
    tap: Tap,
    mac: Mac,
    mtu: u16,
    counters: Counters,
    queue_events: crate::metrics::QueueEvents,
}

impl NetDevice {
    /// A device on `tap` whose guest has address `mac`, with the tap's MTU.
    pub fn new(tap: Tap, mac: Mac) -> Result<Self, TapError> {
        let mtu = tap.mtu()?;
        Ok(Self::with_mtu(tap, mac, mtu))
    }

    /// A device on `tap` whose guest has address `mac` and link MTU `mtu`.
    pub fn with_mtu(tap: Tap, mac: Mac, mtu: u16) -> Self {
        let pairs = tap.queues().len();
        Self {
            tap,
            mac,
            mtu,
            counters: Counters::new(pairs),
            // Queue 2k is pair k's rx, 2k + 1 its tx (virtio-net's order).
            queue_events: crate::metrics::QueueEvents::new(2 * pairs),
        }
    }

    /// The tap.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> Mac {
        self.mac
    }

    /// The link's MTU in bytes (the tap's when the device started).
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// Number of queue pairs (one per tap queue).
    pub fn queue_pairs(&self) -> u16 {
        u16::try_from(self.tap.queues().len()).unwrap_or(u16::MAX)
    }

    /// The virtio feature bits offered (without vhost-user's protocol-features bit).
    pub fn features(&self) -> u64 {
        offered_features(self.tap.supported_offloads(), self.queue_pairs())
    }

    /// Sets the tap up for the features the guest accepted: the header size, and the
    /// offloads the guest can take on received frames.
    pub fn accept_features(&self, acked: u64) -> Result<FrameFormat, TapError> {
        let format = FrameFormat::new(acked, self.mtu);
        self.tap.set_vnet_hdr_len(format.hdr_len)?;
        self.tap.set_offloads(tap_offloads(acked))?;
        Ok(format)
    }

    /// The config space, `struct virtio_net_config` in little endian.
    pub fn config_space(&self) -> [u8; CONFIG_SIZE] {
        let mut config = [0u8; CONFIG_SIZE];
        config[..6].copy_from_slice(&self.mac.0);
        let status = u16::try_from(VIRTIO_NET_S_LINK_UP).unwrap_or(1);
        config[6..8].copy_from_slice(&status.to_le_bytes());
        config[8..10].copy_from_slice(&self.queue_pairs().to_le_bytes());
        config[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        config
    }

    /// Kicks and interrupts of its queues so far (queue 2k is pair k's rx, 2k + 1 its tx).
    pub fn queue_events(&self) -> &crate::metrics::QueueEvents {
        &self.queue_events
    }

    /// Frames moved so far.
    pub fn counters(&self) -> CounterValues {
        self.counters.values()
    }

    /// The counters, for the queues to count on.
    pub(crate) fn counter_set(&self) -> &Counters {
        &self.counters
    }
}

/// The features a device offers on a tap with `supported` offloads and `pairs` queue pairs.
/// Checksum and segmentation offloads go both ways only as far as the tap takes them: the
/// guest may send partial checksums and large segments (`CSUM`, `HOST_TSO*`) because the
/// tap's vnet header carries them to the kernel, and may receive them (`GUEST_*`) because
/// `TUNSETOFFLOAD` lets the tap hand them over.
pub fn offered_features(supported: Offloads, pairs: u16) -> u64 {
    let mut features = (1 << VIRTIO_F_VERSION_1)
        | (1 << VIRTIO_RING_F_EVENT_IDX)
        | (1 << VIRTIO_RING_F_INDIRECT_DESC)
        | (1 << VIRTIO_NET_F_MAC)
        | (1 << VIRTIO_NET_F_MTU)
        | (1 << VIRTIO_NET_F_STATUS)
        | (1 << VIRTIO_NET_F_MRG_RXBUF);
    if pairs > 1 {
        features |= 1 << VIRTIO_NET_F_MQ;
    }
    if supported.has(Offloads::CSUM) {
        features |= (1 << VIRTIO_NET_F_CSUM) | (1 << VIRTIO_NET_F_GUEST_CSUM);
        if supported.has(Offloads::TSO4) {
            features |= (1 << VIRTIO_NET_F_HOST_TSO4) | (1 << VIRTIO_NET_F_GUEST_TSO4);
        }
        if supported.has(Offloads::TSO6) {
            features |= (1 << VIRTIO_NET_F_HOST_TSO6) | (1 << VIRTIO_NET_F_GUEST_TSO6);
        }
        if supported.has(Offloads::TSO_ECN) {
            features |= (1 << VIRTIO_NET_F_HOST_ECN) | (1 << VIRTIO_NET_F_GUEST_ECN);
        }
    }
    features
}

/// The tap offloads that `acked` guest features allow on frames to the guest.
pub fn tap_offloads(acked: u64) -> Offloads {
    let has = |bit: u32| acked & (1 << bit) != 0;
    let mut bits = 0;
    if has(VIRTIO_NET_F_GUEST_CSUM) {
        bits |= Offloads::CSUM;
        if has(VIRTIO_NET_F_GUEST_TSO4) {
            bits |= Offloads::TSO4;
        }
        if has(VIRTIO_NET_F_GUEST_TSO6) {
            bits |= Offloads::TSO6;
        }
        if has(VIRTIO_NET_F_GUEST_ECN) {
            bits |= Offloads::TSO_ECN;
        }
    }
    Offloads(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Offloads =
        Offloads(Offloads::CSUM | Offloads::TSO4 | Offloads::TSO6 | Offloads::TSO_ECN);

    #[test]
    fn offloads_are_offered_only_as_far_as_the_tap_supports_them() {
        let bit = |b: u32| 1u64 << b;
        let none = offered_features(Offloads(0), 1);
        for b in [
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_MQ,
        ] {
            assert_eq!(none & bit(b), 0, "bit {b} without tap offloads");
        }
        assert_ne!(none & bit(VIRTIO_NET_F_MRG_RXBUF), 0);
        let csum = offered_features(Offloads(Offloads::CSUM), 1);
        assert_ne!(csum & bit(VIRTIO_NET_F_GUEST_CSUM), 0);
        assert_eq!(csum & bit(VIRTIO_NET_F_GUEST_TSO4), 0);
        let all = offered_features(ALL, 4);
        for b in [
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_ECN,
            VIRTIO_NET_F_MQ,
        ] {
            assert_ne!(all & bit(b), 0, "bit {b}");
        }
    }

    #[test]
    fn the_tap_hands_over_only_what_the_guest_accepted() {
        let bit = |b: u32| 1u64 << b;
        assert_eq!(tap_offloads(0), Offloads(0));
        // Segmentation without checksum offload is meaningless: nothing.
        assert_eq!(tap_offloads(bit(VIRTIO_NET_F_GUEST_TSO4)), Offloads(0));
        assert_eq!(
            tap_offloads(bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_TSO6)),
            Offloads(Offloads::CSUM | Offloads::TSO6)
        );
        // Host-side offloads (what the guest sends) do not change what the tap hands over.
        assert_eq!(
            tap_offloads(bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_HOST_TSO4)),
            Offloads(0)
        );
    }

    #[test]
    fn frame_format_follows_the_accepted_features() {
        let bit = |b: u32| 1u64 << b;
        let legacy = FrameFormat::new(0, 1500);
        assert_eq!(legacy.hdr_len, LEGACY_VNET_HDR_LEN);
        assert!(!legacy.mergeable);
        let modern = FrameFormat::new(bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF), 9000);
        assert_eq!(modern.hdr_len, VNET_HDR_LEN);
        assert!(modern.mergeable);
        assert_eq!(modern.rx_room, 12 + 9000 + 18);
        let tso = FrameFormat::new(bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_GUEST_TSO4), 1500);
        assert_eq!(tso.rx_room, 12 + MAX_FRAME_LEN);
        assert_eq!(tso.rx_min, 12 + 1518);
    }

    #[test]
    fn mac_addresses_parse_print_and_refuse_multicast() {
        let mac: Mac = "52:54:00:12:34:56".parse().expect("valid");
        assert_eq!(mac.0, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(mac.to_string(), "52:54:00:12:34:56");
        for bad in [
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "5:54:00:12:34:56",
            "zz:54:00:12:34:56",
            "01:00:5e:00:00:01",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        let random = Mac::random();
        assert_eq!(random.0[0] & 0x03, 0x02, "unicast and locally administered");
    }
}
