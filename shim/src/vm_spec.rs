//! What a pod's VM is made of, independent of the hypervisor that runs it: kernel, initrd,
//! command line, size, and its devices: vhost-user ones whose backends serve the data plane,
//! and taps the hypervisor serves itself.

use std::path::PathBuf;

/// A VM to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// The sandbox id, used in process and file names.
    pub id: String,
    /// Guest kernel: ELF vmlinux (PVH) or bzImage.
    pub kernel: PathBuf,
    /// Guest initrd.
    pub initrd: PathBuf,
    /// Kernel command line words, hull's and the configuration's.
    pub kernel_params: Vec<String>,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB; always a shared memfd, so vhost-user backends can map it.
    pub memory_mib: u32,
    /// Devices, in the order the guest sees them.
    pub devices: Vec<VmDevice>,
}

/// A device of the VM: served by a vhost-user backend listening on `socket`, or a tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmDevice {
    /// virtio-vsock (hull-vsock): the shim⇄agent link.
    VhostUserVsock {
        /// The backend's vhost-user socket.
        socket: PathBuf,
    },
    /// virtio-vsock served by the hypervisor itself (hull-vmm's in-VMM device), its host side
    /// the hybrid-vsock unix socket `uds` (`CONNECT <port>`), as hull-vsock's: the builtin
    /// backend's shim⇄agent link, with no backend process.
    HybridVsock {
        /// The hybrid socket the hypervisor listens on.
        uds: PathBuf,
    },
    /// virtio-fs (hull-fs), mounted in the guest by `tag`.
    VhostUserFs {
        /// The backend's vhost-user socket.
        socket: PathBuf,
        /// The mount tag, 1 to 36 bytes.
        tag: String,
    },
    /// virtio-blk (hull-blk).
    VhostUserBlk {
        /// The backend's vhost-user socket.
        socket: PathBuf,
    },
    /// virtio-net served by the hypervisor itself on a tap (QEMU's tap netdev), for pod
    /// endpoints where hull-net is not used.
    Tap {
        /// One open descriptor of the tap per queue; the hypervisor process inherits them.
        fds: Vec<std::os::fd::RawFd>,
        /// The guest interface's MAC address.
        mac: [u8; 6],
    },
    /// virtio-net (hull-net).
    VhostUserNet {
        /// The backend's vhost-user socket.
        socket: PathBuf,
        /// The guest interface's MAC address.
        mac: [u8; 6],
    },
}
