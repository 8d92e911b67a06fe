//! The host end of the network device: a tap, opened by name on `/dev/net/tun` (one
//! descriptor per queue pair, `IFF_MULTI_QUEUE` when there are several) or taken over from
//! descriptors the caller inherited, set up the way the device uses it: no packet-info prefix,
//! a `virtio_net_hdr` before every frame (`IFF_VNET_HDR`), non-blocking, and only the
//! offloads the guest accepted ([`Tap::set_offloads`]).
//!
//! This module owns the tap ioctls only; moving frames is [`super::queue_pair`]'s business.
//! No crate of the field we use wraps the tun ioctls (nix has no tun module, and
//! `vmm-sys-util`'s tap helpers live in cloud-hypervisor's `net_util`, not a published
//! crate), so they are issued here, each behind a safe function.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Errors setting up a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The interface name does not fit `IFNAMSIZ` or holds a NUL byte.
    #[error("tap name {name:?} is invalid: use 1 to 15 bytes without NUL")]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// `/dev/net/tun` cannot be opened.
    #[error(
        "cannot open /dev/net/tun (is the tun module loaded, and are we root or CAP_NET_ADMIN?)"
    )]
    OpenTun(#[source] std::io::Error),
    /// Attaching to (or creating) the tap failed.
    #[error("cannot attach queue {queue} to tap {name} (TUNSETIFF): an existing tap must be a tap with vnet_hdr, and multi_queue exactly when --queues is more than 1")]
    Attach {
        /// The tap's name.
        name: String,
        /// The queue being attached, from 0.
        queue: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An inherited descriptor is not a tap with a virtio-net header.
    #[error("descriptor {fd} is not a tap opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR")]
    NotATap {
        /// The descriptor.
        fd: RawFd,
    },
    /// Inherited descriptors belong to different taps.
    #[error("descriptors {fds:?} do not all belong to one tap (got {names:?})")]
    MixedTaps {
        /// The descriptors.
        fds: Vec<RawFd>,
        /// The interfaces they belong to.
        names: Vec<String>,
    },
    /// No descriptor was given.
    #[error("no tap descriptor given")]
    NoQueues,
    /// A setting the device needs was refused.
    #[error("tap {name}: {what} failed")]
    Setup {
        /// The tap.
        name: String,
        /// The setting.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Offloads a tap may hand to the reader (`TUN_F_*` bits of `TUNSETOFFLOAD`): frames with a
/// partial checksum, TCP segments larger than the MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offloads(pub u32);

impl Offloads {
    /// Partial checksums (`TUN_F_CSUM`).
    pub const CSUM: u32 = libc::TUN_F_CSUM;
    /// TCP segmentation over IPv4 (`TUN_F_TSO4`).
    pub const TSO4: u32 = libc::TUN_F_TSO4;
    /// TCP segmentation over IPv6 (`TUN_F_TSO6`).
    pub const TSO6: u32 = libc::TUN_F_TSO6;
    /// TCP segmentation with ECN (`TUN_F_TSO_ECN`).
    pub const TSO_ECN: u32 = libc::TUN_F_TSO_ECN;

    /// Whether every bit of `bits` is set.
    pub fn has(self, bits: u32) -> bool {
        self.0 & bits == bits
    }
}

/// An open tap, configured for the device: one non-blocking descriptor per queue pair.
#[derive(Debug)]
pub struct Tap {
    queues: Vec<OwnedFd>,
    name: String,
    supported: Offloads,
}

/// The flags the device needs on its tap.
const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// Offload combinations tried, most capable first, to learn what the tap supports.
const OFFLOAD_PROBES: [u32; 3] = [
    Offloads::CSUM | Offloads::TSO4 | Offloads::TSO6 | Offloads::TSO_ECN,
    Offloads::CSUM | Offloads::TSO4 | Offloads::TSO6,
    Offloads::CSUM,
];

fn ifreq(name: &str) -> Option<libc::ifreq> {
    let c = CString::new(name).ok()?;
    let bytes = c.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ || bytes.len() < 2 {
        return None;
    }
    // SAFETY: ifreq is plain old data (a name array and a union of integers, addresses and
    // a pointer); all zeroes is a valid value of each.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    Some(req)
}

fn ifreq_name(req: &libc::ifreq) -> String {
    let bytes: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

impl Tap {
    /// Opens the tap `name` in the current network namespace with `queues` descriptors
    /// (creating a non-persistent tap if none exists) and configures it.
    pub fn open(name: &str, queues: u16) -> Result<Self, TapError> {
        let invalid = || TapError::InvalidName {
            name: name.to_owned(),
        };
        let mut flags = TAP_FLAGS;
        if queues > 1 {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        let mut fds = Vec::new();
        let mut actual = name.to_owned();
        for queue in 0..queues.max(1) {
            let mut req = ifreq(name).ok_or_else(invalid)?;
            // The flags fit the 16-bit flags word (the highest is IFF_VNET_HDR, 0x4000).
            req.ifr_ifru.ifru_flags = libc::c_short::try_from(flags).unwrap_or(0);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open("/dev/net/tun")
                .map_err(TapError::OpenTun)?;
            let fd = OwnedFd::from(file);
            // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is and which
            // outlives the call; `fd` is an open tun descriptor.
            let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
            if rc < 0 {
                return Err(TapError::Attach {
                    name: name.to_owned(),
                    queue,
                    source: std::io::Error::last_os_error(),
                });
            }
            actual = ifreq_name(&req);
            fds.push(fd);
        }
        Self::configure(fds, actual)
    }

    /// Takes over `fds`, queues of one tap the caller opened (for example in another network
    /// namespace); checks that they have the flags the device needs and configures them.
    pub fn from_fds(fds: Vec<OwnedFd>) -> Result<Self, TapError> {
        let mut names = Vec::new();
        for fd in &fds {
            let raw = fd.as_raw_fd();
            let mut req = ifreq("x").ok_or(TapError::NotATap { fd: raw })?;
            // SAFETY: TUNGETIFF writes a `struct ifreq` into `req`, which is one and
            // outlives the call; on a descriptor that is not a tun device it fails with
            // EBADFD or EINVAL (or ENOTTY) and writes nothing.
            let rc = unsafe { libc::ioctl(raw, libc::TUNGETIFF, &mut req) };
            // SAFETY: TUNGETIFF fills the flags member of the union.
            let flags = libc::c_int::from(unsafe { req.ifr_ifru.ifru_flags }) & 0xffff;
            if rc < 0 || flags & TAP_FLAGS != TAP_FLAGS {
                return Err(TapError::NotATap { fd: raw });
            }
            names.push(ifreq_name(&req));
            // SAFETY: F_GETFL/F_SETFL with plain flags on a descriptor the caller gave us.
            let rc = unsafe {
                let current = libc::fcntl(raw, libc::F_GETFL);
                libc::fcntl(raw, libc::F_SETFL, current | libc::O_NONBLOCK)
            };
            if rc < 0 {
                return Err(TapError::Setup {
                    name: names.last().cloned().unwrap_or_default(),
                    what: "O_NONBLOCK",
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        let Some(first) = names.first().cloned() else {
            return Err(TapError::NoQueues);
        };
        if names.iter().any(|n| *n != first) {
            return Err(TapError::MixedTaps {
                fds: fds.iter().map(AsRawFd::as_raw_fd).collect(),
                names,
            });
        }
        Self::configure(fds, first)
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue descriptors, one per queue pair.
    pub fn queues(&self) -> &[OwnedFd] {
        &self.queues
    }

    /// The offloads this tap can hand to the device (what [`Tap::set_offloads`] accepts).
    pub fn supported_offloads(&self) -> Offloads {
        self.supported
    }

    /// Lets the tap hand the device frames with `offloads` (the ones the guest accepted);
    /// the kernel finishes checksums and segments the rest before they reach the tap.
    pub fn set_offloads(&self, offloads: Offloads) -> Result<(), TapError> {
        // The setting belongs to the interface; every queue descriptor reaches it.
        let Some(fd) = self.queues.first() else {
            return Err(TapError::NoQueues);
        };
        set_offload(fd.as_raw_fd(), offloads.0).map_err(|source| TapError::Setup {
            name: self.name.clone(),
            what: "TUNSETOFFLOAD",
            source,
        })
    }

    /// Attaches or detaches queue `queue` (`TUNSETQUEUE`): the kernel hands a detached
    /// queue no frames, so a queue pair the guest does not use loses none.
    pub fn set_queue_attached(&self, queue: usize, attached: bool) -> Result<(), TapError> {
        let Some(fd) = self.queues.get(queue) else {
            return Err(TapError::NoQueues);
        };
        let mut req = ifreq("x").ok_or(TapError::NoQueues)?;
        let flags = if attached {
            libc::IFF_ATTACH_QUEUE
        } else {
            libc::IFF_DETACH_QUEUE
        };
        req.ifr_ifru.ifru_flags = libc::c_short::try_from(flags).unwrap_or(0);
        // SAFETY: TUNSETQUEUE reads the flags of a `struct ifreq`, which `req` is and which
        // outlives the call; `fd` is one of this tap's queue descriptors.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETQUEUE, &mut req) };
        if rc < 0 {
            return Err(TapError::Setup {
                name: self.name.clone(),
                what: "TUNSETQUEUE",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Sets the size of the header before every frame: 12 bytes (`virtio_net_hdr_v1`, with
    /// `num_buffers`) for a modern or merging device, 10 for a legacy one.
    pub fn set_vnet_hdr_len(&self, len: usize) -> Result<(), TapError> {
        let len = libc::c_int::try_from(len).unwrap_or(libc::c_int::MAX);
        for fd in &self.queues {
            // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer, which outlives the
            // call; the kernel refuses sizes smaller than `virtio_net_hdr`.
            let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &len) };
            if rc < 0 {
                return Err(TapError::Setup {
                    name: self.name.clone(),
                    what: "TUNSETVNETHDRSZ",
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        Ok(())
    }

    /// The interface's MTU in bytes, asked in the tap's own network namespace (a tap passed
    /// in may live in another one, such as a pod's).
    pub fn mtu(&self) -> Result<u16, TapError> {
        let setup = |what, source| TapError::Setup {
            name: self.name.clone(),
            what,
            source,
        };
        let mut req = ifreq(&self.name).ok_or_else(|| TapError::InvalidName {
            name: self.name.clone(),
        })?;
        let sock = match self.namespace() {
            Some(ns) => std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        // SAFETY: setns on this short-lived thread only, with a namespace
                        // descriptor we own; the socket keeps that namespace after it ends.
                        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        socket()
                    })
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")))
            }),
            None => socket(),
        }
        .map_err(|e| setup("socket for interface ioctls in the tap's namespace", e))?;
        // SAFETY: SIOCGIFMTU writes the MTU into the ifreq's union, which `req` is and which
        // outlives the call.
        let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) };
        if rc < 0 {
            return Err(setup("SIOCGIFMTU", std::io::Error::last_os_error()));
        }
        // SAFETY: SIOCGIFMTU succeeded, so the union holds the MTU.
        let mtu = unsafe { req.ifr_ifru.ifru_mtu };
        u16::try_from(mtu).map_err(|_| {
            setup(
                "SIOCGIFMTU (MTU out of range)",
                std::io::ErrorKind::InvalidData.into(),
            )
        })
    }

    /// The tap's network namespace (`SIOCGSKNS` on its descriptor), if the kernel says.
    fn namespace(&self) -> Option<OwnedFd> {
        let fd = self.queues.first()?;
        // SAFETY: SIOCGSKNS takes no argument and returns a new descriptor of the tap's
        // network namespace, or fails.
        let ns = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGSKNS) };
        // SAFETY: on success the ioctl returned a new descriptor that nothing else owns.
        (ns >= 0).then(|| unsafe { OwnedFd::from_raw_fd(ns) })
    }

    /// A 12-byte header, no offloads until the guest accepts some, and a probe of which the
    /// tap supports.
    fn configure(queues: Vec<OwnedFd>, name: String) -> Result<Self, TapError> {
        let mut tap = Self {
            queues,
            name,
            supported: Offloads(0),
        };
        tap.set_vnet_hdr_len(super::device::VNET_HDR_LEN)?;
        if let Some(fd) = tap.queues.first() {
            tap.supported = OFFLOAD_PROBES
                .iter()
                .copied()
                .find(|&bits| set_offload(fd.as_raw_fd(), bits).is_ok())
                .map_or(Offloads(0), Offloads);
        }
        tap.set_offloads(Offloads(0))?;
        Ok(tap)
    }
}

fn set_offload(fd: RawFd, bits: u32) -> std::io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; `fd` is an open tap descriptor.
    let rc = unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, libc::c_ulong::from(bits)) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: socket returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_do_not_fit_ifnamsiz_are_refused() {
        for name in ["", "a-name-of-16byte", "nul\0inside"] {
            assert!(
                matches!(Tap::open(name, 1), Err(TapError::InvalidName { .. })),
                "{name:?}"
            );
        }
    }

    #[test]
    fn a_descriptor_that_is_not_a_tap_is_refused() {
        let file = std::fs::File::open("/dev/null").expect("/dev/null");
        let err = Tap::from_fds(vec![OwnedFd::from(file)]).expect_err("not a tap");
        assert!(matches!(err, TapError::NotATap { .. }), "{err}");
        assert!(matches!(Tap::from_fds(Vec::new()), Err(TapError::NoQueues)));
    }
}
