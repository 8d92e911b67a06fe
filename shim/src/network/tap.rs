//! Tap devices for endpoints: created in the calling thread's network namespace through
//! /dev/net/tun, one file descriptor per queue, not persistent, so the device disappears with
//! its last descriptor (the shim's, QEMU's or hull-net's), whatever way those processes end.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};

use super::{Error, Result};

/// struct ifreq as TUNSETIFF reads it: a name and the flags; the rest of the union is padding.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates the tap `name` with `queues` queues (IFF_MULTI_QUEUE when more than one) and a
/// virtio-net header on every frame (IFF_VNET_HDR, what QEMU and hull-net expect), and returns
/// one descriptor per queue.
pub(crate) fn create(name: &str, queues: u16) -> Result<Vec<OwnedFd>> {
    let tap_error = |source| Error::Tap {
        name: name.to_owned(),
        source,
    };
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', '\0', ' ']) {
        return Err(tap_error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a valid interface name",
        )));
    }
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    if queues > 1 {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    // The IFF_* values used here all fit in the 16 bits of ifr_flags.
    let mut request = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    let mut fds = Vec::with_capacity(usize::from(queues.max(1)));
    for queue in 0..queues.max(1) {
        // The first queue creates the device and must not attach to an existing one (a
        // leftover or someone else's); the others attach to it.
        request.flags = if queue == 0 {
            (flags | libc::IFF_TUN_EXCL) as libc::c_short
        } else {
            flags as libc::c_short
        };
        let tun = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(tap_error)?;
        // SAFETY: TUNSETIFF reads (and may write back the name into) an ifreq-sized buffer;
        // `request` is one, alive and exclusively borrowed for the call.
        let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut request) };
        if rc != 0 {
            return Err(tap_error(std::io::Error::last_os_error()));
        }
        fds.push(OwnedFd::from(tun));
    }
    Ok(fds)
}
