//! Virtio devices of the VMM: the virtio-mmio transport the guest drives, and the device
//! models behind it: the vhost-user frontend, whose data plane is another process, and the
//! in-VMM vsock device ([`vsock`]), driven by the VMM's device loop.
//!
//! The split follows the virtio spec: [`mmio::MmioTransport`] owns everything the spec puts
//! in the transport (registers, status and feature negotiation, queue addresses, the
//! notification and interrupt lines); a [`VirtioDevice`] owns the device type, its features,
//! its configuration space and what happens once the driver says DRIVER_OK. The transport
//! validates every queue against guest memory before a device sees it.
//!
//! Notifications and interrupts bypass the vCPU threads: each queue's notification is an
//! eventfd that the VM registers as a KVM ioeventfd on the QueueNotify register (with the
//! queue index as datamatch), and the device's interrupt line is an eventfd registered as a
//! KVM irqfd (see [`crate::vm::Vm::add_virtio_mmio`]). A vhost-user backend reads the first
//! and writes the second itself, so the VMM is not on the data path at all.

pub mod mmio;
pub mod vhost_user;
pub mod vsock;

use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use vmm_sys_util::eventfd::EventFd;

use crate::{Error, Result};

/// Virtio device type of a block device.
pub const TYPE_BLOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
/// Virtio device type of a network device.
pub const TYPE_NET: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_NET;
/// Virtio device type of a file system (virtio-fs) device.
pub const TYPE_FS: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_FS;
/// Virtio device type of a socket (vsock) device.
pub const TYPE_VSOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;

/// Where the first virtio-mmio device sits: the MMIO hole holds nothing else yet, and
/// Firecracker and QEMU's microvm also start their devices in it.
pub const MMIO_BASE: u64 = 0xd000_0000;
/// Bytes of guest physical address space per device: one page, as the Linux driver maps.
pub const MMIO_SIZE: u64 = 0x1000;
/// The first interrupt line given to a virtio-mmio device: lines 0–4 are the PIT, keyboard,
/// cascade, COM2 and COM1.
pub const FIRST_IRQ: u32 = 5;
/// The last line: the MP table announces the 16 ISA lines of the IOAPIC (see
/// [`crate::mptable`]), so a guest finds its route for lines 5 to 15.
pub const LAST_IRQ: u32 = 15;

/// The kernel command-line entry that announces a virtio-mmio device to Linux
/// (`virtio_mmio.device=<size>@<base>:<irq>`, parsed by `vm_cmdline_set` of the
/// virtio_mmio driver).
pub fn cmdline_entry(size: u64, base: u64, irq: u32) -> String {
    let size = if size.is_multiple_of(1024) {
        format!("{}K", size / 1024)
    } else {
        size.to_string()
    };
    format!("virtio_mmio.device={size}@{base:#x}:{irq}")
}

/// One queue as the driver set it up, checked by the transport: its size is a power of two
/// no larger than the device's maximum, and each of its three areas lies inside one region
/// of guest RAM with the alignment the spec requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Index of the queue in the device.
    pub index: u16,
    /// Number of descriptors.
    pub size: u16,
    /// Guest physical address of the descriptor table.
    pub desc: u64,
    /// Guest physical address of the driver area (available ring).
    pub avail: u64,
    /// Guest physical address of the device area (used ring).
    pub used: u64,
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct Activation<'a> {
    /// Guest RAM, for the device to reach the queues (or to share with a backend).
    pub memory: &'a vm_memory::GuestMemoryMmap,
    /// The features the driver acknowledged (a subset of [`VirtioDevice::features`]).
    pub features: u64,
    /// The queues the driver made ready, checked against guest memory.
    pub queues: Vec<QueueConfig>,
    /// Per queue index, the eventfd signalled when the driver notifies the queue (shared, so
    /// that a device's event source holds its own reference without a `dup` on the vCPU).
    pub kicks: &'a [Arc<EventFd>],
    /// The device's interrupt line and status.
    pub interrupt: Interrupt,
}

/// A device's interrupt: the InterruptStatus bits the driver reads and acknowledges, and
/// the eventfd that raises the line (a KVM irqfd in a VM). Device threads hold clones and
/// set a bit before raising the line, so the driver's read after the interrupt sees why.
#[derive(Debug, Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    line: Arc<EventFd>,
}

impl Interrupt {
    /// A new interrupt with nothing pending.
    pub fn new() -> Result<Self> {
        Ok(Self {
            status: Arc::new(AtomicU32::new(0)),
            line: Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?),
        })
    }

    /// Tells the driver the device used buffers of a queue.
    pub fn signal_used_queue(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    /// Tells the driver the configuration space (or the device status) changed.
    pub fn signal_config_change(&self) {
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(err) = self.line.write(1) {
            tracing::warn!(%err, "cannot raise a virtio interrupt");
        }
    }

    /// The pending InterruptStatus bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears the bits the driver acknowledged.
    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The eventfd of the line: a KVM irqfd, or a vhost-user backend's call fd.
    pub fn eventfd(&self) -> &EventFd {
        &self.line
    }

    /// Forgets pending bits and a pending edge (device reset).
    fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
        let _ = self.line.read();
    }
}

/// Cuts a device's connection to its backend process. A vCPU handling a register access
/// may wait on the backend's reply (a configuration read, a reset); a backend that never
/// answers would hold that vCPU, and so the VM's stop, forever. Stopping a VM shuts these
/// connections down first: the waiting request fails as a disconnect and the vCPU returns.
#[derive(Debug)]
pub struct Disconnector(UnixStream);

impl Disconnector {
    /// A disconnector for the connection `stream` is one end of (any clone of it).
    pub fn new(stream: UnixStream) -> Self {
        Self(stream)
    }

    /// Shuts the connection down both ways; what waits on it returns.
    pub fn disconnect(&self) {
        if let Err(err) = self.0.shutdown(Shutdown::Both) {
            // Already closed by the peer: nothing waits on it any more.
            tracing::debug!(%err, "vhost-user connection shutdown");
        }
    }
}

/// A virtio device model behind a transport.
pub trait VirtioDevice: Send {
    /// The virtio device type (e.g. [`TYPE_BLOCK`]).
    fn device_type(&self) -> u32;
    /// The feature bits the device offers; the transport adds and removes the bits it owns.
    fn features(&self) -> u64;
    /// The maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device configuration space at `offset`; bytes it does not have read as 0.
    fn read_config(&mut self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space at `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device with the negotiated features and the driver's queues.
    fn activate(&mut self, activation: Activation<'_>) -> Result<()>;
    /// Stops the device after the driver reset it; it may be activated again.
    fn reset(&mut self);
    /// A handle that cuts the device's connection to an out-of-process backend, taken when
    /// the device is added to a VM (see [`Disconnector`]); none for in-VMM devices.
    fn disconnector(&self) -> Option<Disconnector> {
        None
    }
    /// Whether used buffers are signalled by writing the interrupt eventfd from outside the
    /// VMM (a vhost-user backend), which cannot set the transport's interrupt status: the
    /// transport then reports "used buffer" whenever the device is active, and the driver
    /// checks its queues on every interrupt (as Firecracker does for its vhost-user
    /// devices on MMIO; a spurious check finds nothing used and costs a ring read).
    fn signals_from_outside(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_entry_is_what_the_linux_driver_parses() {
        assert_eq!(
            cmdline_entry(MMIO_SIZE, MMIO_BASE, FIRST_IRQ),
            "virtio_mmio.device=4K@0xd0000000:5"
        );
        assert_eq!(
            cmdline_entry(0x200, 0x1000, 9),
            "virtio_mmio.device=512@0x1000:9"
        );
    }
}
