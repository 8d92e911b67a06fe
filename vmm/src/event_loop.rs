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

/// Sources a [`poll_sources`] caller drives, each with the descriptors it asked for when it
/// was taken.
pub type PolledSources = Vec<(Box<dyn EventSource>, Vec<RawFd>)>;

/// STAND-IN for the io_uring device loop (to be replaced by it): one `poll(2)` round on the
/// calling thread. Takes the sources `registrar` holds into `sources`, waits up to `timeout`
/// (`None`: until something is ready) for `extra` (the caller's own descriptors), the
/// registrar's wake-up and every source's descriptors, calls [`EventSource::ready`] for each
/// ready source descriptor (dropping sources that answer [`Next::Remove`]), and answers,
/// per `extra` descriptor, whether it is readable (or hung up, or in error).
///
/// hull-vmm's main thread calls it in its wait for signals, so in-VMM devices run before
/// the loop exists; tests call it to drive devices by hand.
pub fn poll_sources(
    registrar: &Registrar,
    sources: &mut PolledSources,
    extra: &[std::os::fd::BorrowedFd<'_>],
    timeout: Option<std::time::Duration>,
) -> crate::Result<Vec<bool>> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::BorrowedFd;

    let take = |sources: &mut PolledSources| {
        for source in registrar.take() {
            let fds = source.fds();
            sources.push((source, fds));
        }
    };
    take(sources);
    let timeout = match timeout {
        None => PollTimeout::NONE,
        // Longer waits than PollTimeout::MAX (about 24 days) wait that long.
        Some(timeout) => PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX),
    };
    let source_fds: Vec<RawFd> = sources
        .iter()
        .flat_map(|(_, fds)| fds.iter().copied())
        .collect();
    let wake_fd = registrar.wake_fd();
    let (extra_ready, ready_fds) = {
        // SAFETY: the registrar owns its wake eventfd and each source owns the descriptors
        // it listed for as long as it lives (the contract of `EventSource::fds`); both
        // outlive these borrows, which end with this block.
        let borrowed: Vec<BorrowedFd<'_>> = std::iter::once(wake_fd)
            .chain(source_fds.iter().copied())
            .map(|fd| unsafe { BorrowedFd::borrow_raw(fd) })
            .collect();
        let mut pollfds: Vec<PollFd<'_>> = extra
            .iter()
            .chain(&borrowed)
            .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
            .collect();
        loop {
            match poll(&mut pollfds, timeout) {
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => {}
                Err(err) => return Err(crate::Error::Poll(err.into())),
            }
        }
        let readable = |fd: &PollFd<'_>| {
            fd.revents().is_some_and(|r| {
                r.intersects(PollFlags::POLLIN | PollFlags::POLLERR | PollFlags::POLLHUP)
            })
        };
        let mut extra_ready: Vec<bool> = pollfds.iter().map(readable).collect();
        let rest = extra_ready.split_off(extra.len());
        let ready_fds: Vec<RawFd> = std::iter::once(wake_fd)
            .chain(source_fds.iter().copied())
            .zip(rest)
            .filter_map(|(fd, ready)| ready.then_some(fd))
            .collect();
        (extra_ready, ready_fds)
    };
    if ready_fds.contains(&wake_fd) {
        take(sources);
    }
    sources.retain_mut(|(source, fds)| {
        for fd in fds.iter().filter(|fd| ready_fds.contains(fd)) {
            if source.ready(*fd) == Next::Remove {
                tracing::debug!(source = source.name(), "event source removed");
                return false;
            }
        }
        true
    });
    Ok(extra_ready)
}
