//! Macvtap endpoints: a macvtap interface in the pod's namespace (as the macvtap CNI plugin
//! makes one) is already a tap, so the VM's NIC is served on its own queues and no tap or
//! filter is added (Kata's macvtap endpoint does the same).
//!
//! A macvtap's queues are opened through its character device, `tap<ifindex>`, whose number
//! the kernel shows only in the sysfs of the interface's own network namespace. The device
//! node udev or devtmpfs makes in the host's /dev is not used: it is named by the interface
//! index alone, so a pod's macvtap and another namespace's with the same index would share a
//! name, and /dev of a shim in a container may have neither. Instead a thread of the pod's
//! namespace takes a mount namespace of its own (as `ip netns exec` does), mounts a sysfs of
//! the pod's namespace there, reads the device number, makes the node on a private tmpfs and
//! opens it. The mount namespace dies with the thread, taking the mounts and the node with it,
//! so nothing is left whatever happens after.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::path::Path;

use super::{Error, Result};

/// Opens `queues` queues (at least one) of the macvtap `name`, interface `index` of the
/// calling thread's network namespace. Each descriptor carries frames with a virtio-net
/// header (a macvtap's default), as QEMU and hull-net expect.
pub(crate) fn open_queues(name: &str, index: u32, queues: u16) -> Result<Vec<OwnedFd>> {
    let error = |what: &str, source: std::io::Error| Error::Macvtap {
        name: name.to_owned(),
        what: what.to_owned(),
        source,
    };
    std::thread::scope(|scope| {
        // A thread started here shares the caller's network namespace; its mount namespace
        // becomes its own below, so the caller's never changes.
        std::thread::Builder::new()
            .name("hull-macvtap".into())
            .spawn_scoped(scope, || open_in_private_mounts(name, index, queues))
            .map_err(|source| error("starting its thread", source))?
            .join()
            .map_err(|_| {
                error(
                    "opening its queues",
                    std::io::Error::other("the thread panicked"),
                )
            })?
    })
}

fn open_in_private_mounts(name: &str, index: u32, queues: u16) -> Result<Vec<OwnedFd>> {
    let error = |what: String, source: std::io::Error| Error::Macvtap {
        name: name.to_owned(),
        what,
        source,
    };
    // SAFETY: unshare(2) with CLONE_NEWNS only gives this thread (it implies CLONE_FS, so the
    // thread also stops sharing its root and cwd with the rest of the shim) a copy of the
    // mount namespace; no memory is involved.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(error(
            "taking a private mount namespace".into(),
            std::io::Error::last_os_error(),
        ));
    }
    // Nothing mounted below may propagate back to the host's namespace.
    mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE)
        .map_err(|source| error("making the private mount namespace private".into(), source))?;
    // A sysfs mounted by a thread of the pod's network namespace shows that namespace's
    // interfaces.
    mount(Some("sysfs"), "/sys", Some("sysfs"), 0)
        .map_err(|source| error("mounting the pod namespace's sysfs".into(), source))?;
    let dev_file = format!("/sys/class/net/{name}/macvtap/tap{index}/dev");
    let text = std::fs::read_to_string(&dev_file).map_err(|source| {
        error(
            format!("reading its device number from {dev_file} (is it a macvtap?)"),
            source,
        )
    })?;
    let device = parse_device_number(&text).ok_or_else(|| {
        error(
            format!("reading its device number from {dev_file}"),
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not MAJOR:MINOR: {text:?}"),
            ),
        )
    })?;
    // The node goes on a tmpfs of this namespace only (the shim's own /run and /tmp may be
    // nodev): it vanishes with the namespace.
    mount(Some("tmpfs"), "/sys", Some("tmpfs"), libc::MS_NOSUID)
        .map_err(|source| error("mounting a private tmpfs".into(), source))?;
    let node = Path::new("/sys").join(format!("tap{index}"));
    let node_c = CString::new(node.as_os_str().as_encoded_bytes()).map_err(|_| {
        error(
            "naming its device node".into(),
            std::io::Error::from(std::io::ErrorKind::InvalidInput),
        )
    })?;
    // SAFETY: mknod(2) with a NUL-terminated path that outlives the call.
    if unsafe { libc::mknod(node_c.as_ptr(), libc::S_IFCHR | 0o600, device) } != 0 {
        return Err(error(
            "making its device node".into(),
            std::io::Error::last_os_error(),
        ));
    }
    (0..queues.max(1))
        .map(|queue| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&node)
                .map(OwnedFd::from)
                .map_err(|source| error(format!("opening queue {queue}"), source))
        })
        .collect()
}

/// `MAJOR:MINOR` as sysfs writes a device number, with its newline.
fn parse_device_number(text: &str) -> Option<libc::dev_t> {
    let (major, minor) = text.trim().split_once(':')?;
    Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
}

fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
) -> std::io::Result<()> {
    let c = |s: &str| {
        CString::new(s).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let source = source.map(c).transpose()?;
    let target = c(target)?;
    let fstype = fstype.map(c).transpose()?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call; no
    // data argument.
    let rc = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn device_numbers_read_as_sysfs_writes_them() {
        assert_eq!(parse_device_number("246:1\n"), Some(libc::makedev(246, 1)));
        assert_eq!(parse_device_number("246"), None);
        assert_eq!(parse_device_number("a:1"), None);
        assert_eq!(parse_device_number(""), None);
    }

    proptest! {
        #[test]
        fn any_text_parses_without_panic(text in ".{0,40}") {
            let _ = parse_device_number(&text);
        }

        #[test]
        fn every_device_number_round_trips(major in 0u32..4096, minor in 0u32..1_048_576) {
            let text = format!("{major}:{minor}\n");
            let device = parse_device_number(&text);
            prop_assert_eq!(device.map(|d| libc::major(d)), Some(major));
            prop_assert_eq!(device.map(|d| libc::minor(d)), Some(minor));
        }
    }
}
