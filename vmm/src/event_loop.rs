//! The VMM's device loop: the one thread besides the vCPUs (issue 7: threads = vCPUs + 1)
//! that waits, on io_uring, for everything that is not a vCPU exit: the queue notifications
//! (ioeventfds) of in-VMM devices and their host-side descriptors (the vsock device's unix
//! sockets), the control and metrics sockets, and the process's signals.
//!
//! What it waits on is an [`EventSource`]: a set of descriptors and what to do when one is
//! readable. Sources are added at any time from any thread through a [`Registrar`] (a device
//! is activated by the guest, on a vCPU thread), and removed when they say so.
//!
//! This file holds the interface both sides code against; the loop itself is being built
//! (see the `device-loop` work in progress).

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

/// What an [`EventSource`] asks of the loop after handling an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Keep waiting on the source's descriptors.
    Continue,
    /// Forget the source (it is dropped on the loop thread).
    Remove,
}

/// Something the device loop drives: the descriptors it waits on for readability, and the
/// handler called on the loop thread when one is ready.
pub trait EventSource: Send {
    /// A name for logs and errors (`"virtio-vsock"`).
    fn name(&self) -> &str;
    /// The descriptors to wait on (readable, hung up or in error), asked once when the
    /// source is added: a set that changes (the vsock device's connections) sits behind one
    /// descriptor of its own, an epoll descriptor.
    fn fds(&self) -> Vec<RawFd>;
    /// `fd`, one of [`EventSource::fds`], is ready.
    fn ready(&mut self, fd: RawFd) -> Next;
}

/// Sources added but not yet taken by the loop, and the eventfd that wakes it to take them.
pub(crate) struct Pending {
    pub(crate) sources: Mutex<Vec<Box<dyn EventSource>>>,
    pub(crate) wake: EventFd,
}

/// Adds [`EventSource`]s to the device loop from any thread (a device activated on a vCPU
/// thread hands its queues' eventfds over this way). Cheap to clone.
#[derive(Clone)]
pub struct Registrar(pub(crate) Arc<Pending>);

impl Registrar {
    /// A registrar whose sources wait until a loop takes them ([`Registrar::take`], woken
    /// through [`Registrar::wake_fd`]).
    pub fn new() -> crate::Result<Self> {
        Ok(Self(Arc::new(Pending {
            sources: Mutex::new(Vec::new()),
            wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
                .map_err(crate::Error::EventFd)?,
        })))
    }

    /// The sources added since the last call, for the loop (and tests) to drive.
    pub fn take(&self) -> Vec<Box<dyn EventSource>> {
        // Reset the wake-up count; a racing add writes it again after pushing.
        let _ = self.0.wake.read();
        std::mem::take(
            &mut *self
                .0
                .sources
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Readable when sources wait to be taken.
    pub fn wake_fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.0.wake.as_raw_fd()
    }

    /// Hands `source` to the loop, which starts waiting on its descriptors.
    pub fn add(&self, source: Box<dyn EventSource>) -> crate::Result<()> {
        self.0
            .sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(source);
        self.0.wake.write(1).map_err(crate::Error::EventFd)
    }
}
