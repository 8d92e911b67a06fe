//! The crate's error type: every variant names what failed and with which input.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/kvm` could not be opened or used.
    #[error("cannot open /dev/kvm (is the kvm module loaded and the device accessible?)")]
    Kvm(#[source] kvm_ioctls::Error),
    /// A KVM ioctl on the VM or a vCPU failed.
    #[error("KVM {op} failed")]
    KvmIoctl {
        /// The operation, as KVM names it.
        op: &'static str,
        /// The errno KVM returned.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM accepted fewer MSRs than asked for.
    #[error("KVM_SET_MSRS set {set} of {wanted} MSRs; the first refused is {first_refused:#x}")]
    MsrsRefused {
        /// How many MSRs KVM took.
        set: usize,
        /// How many were asked for.
        wanted: usize,
        /// Index of the first MSR KVM did not take.
        first_refused: u32,
    },
    /// The guest memory size is outside what the layout supports.
    #[error("guest memory of {mib} MiB is too small: at least {min_mib} MiB are needed")]
    MemoryTooSmall {
        /// Requested size in MiB.
        mib: u64,
        /// Minimum size in MiB.
        min_mib: u64,
    },
    /// The guest memory size does not fit the host's address space or the guest layout.
    #[error("guest memory of {mib} MiB is too large for this host")]
    MemoryTooLarge {
        /// Requested size in MiB.
        mib: u64,
    },
    /// Creating or sizing the memfd that backs guest memory failed.
    #[error("cannot create the memfd of {bytes} bytes for guest memory")]
    Memfd {
        /// Size in bytes.
        bytes: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Mapping guest memory failed.
    #[error("cannot map guest memory")]
    GuestMemoryMap(#[source] vm_memory::mmap::FromRangesError),
    /// A guest memory access by the VMM fell outside guest RAM.
    #[error("guest memory access of {len} bytes at {addr:#x} is outside guest RAM")]
    GuestMemoryAccess {
        /// Guest physical address.
        addr: u64,
        /// Length in bytes.
        len: usize,
    },
    /// A device range on a bus overlaps one already there.
    #[error("{bus} range {base:#x}+{len:#x} overlaps the range {other_base:#x}+{other_len:#x}")]
    BusOverlap {
        /// Which bus (pio or mmio).
        bus: &'static str,
        /// Base of the new range.
        base: u64,
        /// Length of the new range.
        len: u64,
        /// Base of the range it overlaps.
        other_base: u64,
        /// Length of the range it overlaps.
        other_len: u64,
    },
    /// A device range is empty or wraps around the address space.
    #[error("{bus} range {base:#x}+{len:#x} is empty or wraps around")]
    BusRangeInvalid {
        /// Which bus (pio or mmio).
        bus: &'static str,
        /// Base of the range.
        base: u64,
        /// Length of the range.
        len: u64,
    },
    /// The kernel image could not be opened or read.
    #[error("cannot read kernel {path}")]
    KernelRead {
        /// The kernel path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel is neither a loadable ELF vmlinux nor a bzImage.
    #[error("kernel {path} is not a loadable ELF vmlinux or bzImage: {reason}")]
    KernelMalformed {
        /// The kernel path.
        path: PathBuf,
        /// What the loader found wrong.
        reason: String,
    },
    /// The initrd could not be opened or read.
    #[error("cannot read initrd {path}")]
    InitrdRead {
        /// The initrd path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The initrd does not fit in guest memory below the kernel's limit.
    #[error("initrd {path} ({size} bytes) does not fit in guest memory between the kernel end {kernel_end:#x} and {limit:#x}")]
    InitrdTooLarge {
        /// The initrd path.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// End of the loaded kernel.
        kernel_end: u64,
        /// Highest address the initrd may reach.
        limit: u64,
    },
    /// The kernel command line is invalid or too long.
    #[error("invalid kernel command line {cmdline:?}: {reason}")]
    Cmdline {
        /// The command line given.
        cmdline: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Writing the boot parameters into guest memory failed.
    #[error("cannot write the boot parameters into guest memory: {0}")]
    BootParams(String),
    /// The vCPU count is outside what the VMM supports.
    #[error("{count} vCPUs requested; between 1 and {max} are supported")]
    VcpuCount {
        /// Requested count.
        count: u8,
        /// Maximum supported.
        max: u8,
    },
    /// A thread could not be spawned.
    #[error("cannot spawn thread {name}")]
    Spawn {
        /// The thread name.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A serial output file could not be opened.
    #[error("cannot open serial output file {path}")]
    SerialFile {
        /// The file path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// An io_uring call of the device loop failed.
    #[error("device loop: {op} failed")]
    Uring {
        /// The system call.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The device loop has no room for another event source.
    #[error("device loop: no room for another event source")]
    EventSources,
    /// The signal used to kick vCPUs out of KVM_RUN could not be installed or sent.
    #[error("cannot install or send the vCPU kick signal")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// A queue the driver made ready cannot be used.
    #[error("virtio queue {index}: {fault}")]
    VirtioQueue {
        /// The queue index.
        index: u16,
        /// What is wrong with it.
        fault: crate::virtio::mmio::QueueFault,
    },
    /// A queue the transport accepted cannot be set up by an in-VMM device.
    #[error("virtio queue {index} cannot be set up")]
    QueueSetup {
        /// The queue index.
        index: u16,
        /// What virtio-queue refused.
        #[source]
        source: virtio_queue::Error,
    },
    /// The driver activated an in-VMM device without a queue it needs.
    #[error("the driver did not make queue {index} ({name}) of the {device} device ready")]
    QueueMissing {
        /// The device (`"virtio-vsock"`).
        device: &'static str,
        /// The queue index.
        index: u16,
        /// The queue's name in the spec.
        name: &'static str,
    },
    /// A vsock guest context id outside the range guests may have.
    #[error(
        "vsock guest cid {cid} must be {} to {}",
        crate::virtio::vhost_user::VSOCK_CID_MIN,
        crate::virtio::vhost_user::VSOCK_CID_MAX
    )]
    VsockCid {
        /// The context id given.
        cid: u64,
    },
    /// Waiting for the device loop's descriptors failed.
    #[error("cannot poll the device loop's descriptors")]
    Poll(#[source] std::io::Error),
    /// The vsock device's host side (its hybrid unix socket) cannot be set up.
    #[error("cannot set up the vsock device on {path}")]
    Vsock {
        /// The hybrid-vsock socket path.
        path: PathBuf,
        /// What failed.
        #[source]
        source: hull_devices::Error,
    },
    /// No interrupt line or MMIO window is left for another virtio-mmio device.
    #[error("no room for another virtio-mmio device: {0}")]
    VirtioSlots(&'static str),
    /// A message exchange with a vhost-user backend failed.
    #[error("vhost-user backend {socket}: {op} failed")]
    VhostUser {
        /// The backend's socket.
        socket: PathBuf,
        /// The request, as the vhost-user protocol names it.
        op: &'static str,
        /// What went wrong.
        #[source]
        source: vhost::Error,
    },
    /// A vhost-user backend lacks something the device needs.
    #[error("vhost-user backend {socket}: {reason}")]
    VhostUserBackend {
        /// The backend's socket.
        socket: PathBuf,
        /// What it lacks.
        reason: String,
    },
}

/// Displays an error with its chain of sources, `a: b: c`, for logs.
pub(crate) struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}
