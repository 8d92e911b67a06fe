//! The VMM's device loop: the one thread besides the vCPUs (issue 7: threads = vCPUs + 1)
//! that waits, on io_uring, for everything that is not a vCPU exit: the queue notifications
//! (ioeventfds) of in-VMM devices and their host-side descriptors (the vsock device's unix
//! sockets), the control and metrics sockets, and the process's signals.
//!
//! What it waits on is an [`EventSource`]: a set of descriptors and what to do when one is
//! readable. Sources are added at any time from any thread through a [`Registrar`] (a device
//! is activated by the guest, on a vCPU thread), and removed when they say so.
//!
//! [`DeviceLoop`] is the loop: one `IORING_OP_POLL_ADD` per descriptor of every source, and
//! one on the registrar's wake-up eventfd; [`DeviceLoop::run`] submits what is queued and
//! waits for completions in one `io_uring_enter`, then calls the ready sources.
//!
//! Why io_uring and not epoll: ARCHITECTURE.md has every event loop of hull on io_uring (the
//! shim's stdio, hull-blk's data path), so the VMM's devices can move their I/O onto the same
//! ring later (a vsock packet's read, a console write) instead of mixing two readiness models,
//! and so the seccomp filter of the loop's thread grows by `io_uring_enter` rather than by the
//! epoll family and every I/O call. What an operation costs: a 64-byte submission entry and a
//! 16-byte completion in memory shared with the kernel, no system call of its own (entries
//! ride on the next `io_uring_enter`, which also waits), and in the kernel a wait-queue entry
//! on the descriptor, as an epoll registration has. A one-shot poll is armed again after each
//! event (one more entry, still no extra system call): that keeps epoll's level-triggered
//! meaning, so a source that leaves something unread is called again. A source whose handler
//! always takes everything (an eventfd read, a signalfd read until empty) says so with
//! [`EventSource::edge_triggered`] and gets a multishot poll (Linux 5.13) that stays armed;
//! on a kernel without multishot polls every poll is one-shot.
//!
//! A removed source's polls are cancelled (`IORING_OP_POLL_REMOVE`) before it is dropped: a
//! poll holds a reference on the file, so without that a socket the source closed would stay
//! open until the next event on it.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use vmm_sys_util::eventfd::EventFd;

use crate::{Error, Result};

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
    /// Whether [`EventSource::ready`] always takes everything there is on the descriptor it
    /// is called for (reads an eventfd's count, reads a non-blocking signalfd until it is
    /// empty), so that it need be called again only when something new arrives. Such a
    /// source gets a multishot poll. The default, `false`, has it called again as long as
    /// the descriptor stays readable (epoll's level-triggered meaning).
    fn edge_triggered(&self) -> bool {
        false
    }
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
    pub fn new() -> Result<Self> {
        Ok(Self(Arc::new(Pending {
            sources: Mutex::new(Vec::new()),
            wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(Error::EventFd)?,
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
        self.0.wake.as_raw_fd()
    }

    /// Hands `source` to the loop, which starts waiting on its descriptors.
    pub fn add(&self, source: Box<dyn EventSource>) -> Result<()> {
        self.0
            .sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(source);
        self.wake()
    }

    /// Wakes the loop without adding anything, so it checks its stop condition (see
    /// [`DeviceLoop::run`]): for a VM's stop hook, from any thread.
    pub fn wake(&self) -> Result<()> {
        self.0.wake.write(1).map_err(Error::EventFd)
    }
}

/// Submission queue entries: polls to arm or cancel in one turn of the loop. A turn with
/// more submits the full queue and goes on, so this bounds only a syscall's batch.
const SQ_ENTRIES: u32 = 64;
/// Completion queue entries. Completions beyond it are not lost (the kernel keeps them until
/// there is room), only slower to reach the loop.
const CQ_ENTRIES: u32 = 512;
/// Events waited for on every descriptor: readable, or hung up or in error (which poll
/// reports anyway).
const POLL_MASK: u32 = (libc::POLLIN | libc::POLLERR | libc::POLLHUP) as u32;
/// `user_data` of the poll on the registrar's wake-up eventfd.
const WAKE: u64 = u64::MAX - 1;
/// `user_data` of cancellations, whose completions say nothing the loop needs.
const CANCEL: u64 = u64::MAX;

/// Which poll a completion belongs to, packed in its `user_data`: the source's slot, the
/// index of the descriptor in its [`EventSource::fds`], and the slot's generation (a slot is
/// reused after its source goes, and the late completions of the old one must not reach the
/// new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Token {
    slot: u32,
    index: u16,
    generation: u16,
}

impl Token {
    fn pack(self) -> u64 {
        (u64::from(self.slot) << 32) | (u64::from(self.index) << 16) | u64::from(self.generation)
    }

    fn unpack(data: u64) -> Self {
        // Each field is masked to its width first: the conversions cannot fail.
        Self {
            slot: u32::try_from(data >> 32).unwrap_or(u32::MAX),
            index: u16::try_from((data >> 16) & 0xffff).unwrap_or(u16::MAX),
            generation: u16::try_from(data & 0xffff).unwrap_or(u16::MAX),
        }
    }
}

/// A source the loop drives, with the state of each of its polls.
struct Entry {
    source: Box<dyn EventSource>,
    fds: Vec<RawFd>,
    /// Whether the poll of each descriptor is in the kernel.
    armed: Vec<bool>,
    multishot: bool,
}

/// A place for a source; its generation grows each time a source leaves it.
struct Slot {
    generation: u16,
    entry: Option<Entry>,
}

/// The io_uring loop that drives [`EventSource`]s on the thread that calls
/// [`DeviceLoop::run`] (hull-vmm's main thread). It owns its sources; other threads reach it
/// through its [`Registrar`].
pub struct DeviceLoop {
    ring: IoUring,
    registrar: Registrar,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Whether the kernel takes multishot polls (found out on the first refusal).
    multishot: bool,
    /// Whether the wake-up eventfd's poll is in the kernel.
    wake_armed: bool,
    /// Whether the registrar may hold new sources (it woke the loop, or the loop is new).
    woken: bool,
    /// Polls and cancellations submitted whose last completion has not come back yet.
    in_flight: usize,
}

impl std::fmt::Debug for DeviceLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceLoop")
            .field("sources", &self.sources())
            .field("in_flight", &self.in_flight)
            .field("multishot", &self.multishot)
            .finish()
    }
}

fn uring(op: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Uring { op, source }
}

impl DeviceLoop {
    /// Sets up the ring. Sources already added to `registrar`, and those added later, are
    /// driven once [`Self::run`] is called.
    pub fn new(registrar: Registrar) -> Result<Self> {
        // Polls and their removal, nothing else: the main thread's seccomp filter allows
        // io_uring_enter, and a ring that could open or connect would go around it (see
        // hull_devices::restricted_ring).
        let ring = hull_devices::restricted_ring::restricted_ring(
            SQ_ENTRIES,
            Some(CQ_ENTRIES),
            &[opcode::PollAdd::CODE, opcode::PollRemove::CODE],
            0,
        )
        .map_err(uring("io_uring_setup"))?;
        Ok(Self {
            ring,
            registrar,
            slots: Vec::new(),
            free: Vec::new(),
            multishot: true,
            wake_armed: false,
            woken: true,
            in_flight: 0,
        })
    }

    /// The registrar whose sources this loop drives.
    pub fn registrar(&self) -> &Registrar {
        &self.registrar
    }

    /// Sources being driven (taken from the registrar and not removed).
    pub fn sources(&self) -> usize {
        self.slots.iter().filter(|s| s.entry.is_some()).count()
    }

    /// Polls and cancellations in the kernel, the wake-up eventfd's poll included: once a
    /// removed source's cancellations have completed, none of its polls is left.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Drives the sources until `done()` is true; it is asked before every wait, so whoever
    /// makes it true from another thread then wakes the loop ([`Registrar::wake`]). Sources
    /// still there when it returns stay, for a later call (they are dropped with the loop).
    pub fn run(&mut self, mut done: impl FnMut() -> bool) -> Result<()> {
        while !done() {
            self.turn()?;
        }
        Ok(())
    }

    /// One turn: takes new sources, arms what needs arming, waits for at least one event
    /// and handles every completion there is.
    pub fn turn(&mut self) -> Result<()> {
        self.turn_within(None)
    }

    /// [`Self::turn`], waiting at most `timeout` for an event (a test driving devices by
    /// hand, which may expect none).
    pub fn turn_for(&mut self, timeout: std::time::Duration) -> Result<()> {
        self.turn_within(Some(timeout))
    }

    /// The ring's descriptor, for a loop that runs this one inside another event loop (the
    /// shim's): it polls readable when completions wait, and [`Self::turn_nowait`] then
    /// handles them. The descriptor stays the loop's.
    pub fn ring_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// One turn that does not wait: takes new sources, handles every completion there is,
    /// and submits what that asked for (polls armed again, new sources' polls), so that the
    /// next event makes [`Self::ring_fd`] readable. For another event loop that polls the
    /// ring's descriptor; call it once before the first poll, to arm the sources.
    pub fn turn_nowait(&mut self) -> Result<()> {
        self.turn_within(Some(std::time::Duration::ZERO))?;
        // A completion of the wake-up poll asks for the registrar's new sources, and the
        // handled completions for polls armed again: all of it reaches the kernel now, not
        // at a next turn that only an event would bring.
        if std::mem::take(&mut self.woken) {
            self.take_new()?;
        }
        if !self.wake_armed {
            self.arm_wake()?;
        }
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(err) if err.raw_os_error() == Some(libc::EINTR) => {}
                // The completion queue is full: the ring is readable, the next turn drains it.
                Err(err) if err.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(err) => return Err(uring("io_uring_enter")(err)),
            }
        }
    }

    fn turn_within(&mut self, timeout: Option<std::time::Duration>) -> Result<()> {
        if std::mem::take(&mut self.woken) {
            self.take_new()?;
        }
        if !self.wake_armed {
            self.arm_wake()?;
        }
        let timespec = timeout.map(|t| {
            io_uring::types::Timespec::new()
                .sec(t.as_secs())
                .nsec(t.subsec_nanos())
        });
        let args = timespec
            .as_ref()
            .map(|ts| io_uring::types::SubmitArgs::new().timespec(ts));
        loop {
            let waited = match &args {
                None => self.ring.submit_and_wait(1),
                Some(args) => self.ring.submitter().submit_with_args(1, args),
            };
            match waited {
                Ok(_) => break,
                Err(err) if err.raw_os_error() == Some(libc::EINTR) => {}
                // The completion queue is full: handle what is there, then submit again.
                Err(err) if err.raw_os_error() == Some(libc::EBUSY) => break,
                // The timeout passed with nothing to handle.
                Err(err) if err.raw_os_error() == Some(libc::ETIME) => break,
                Err(err) => return Err(uring("io_uring_enter")(err)),
            }
        }
        let completions: Vec<cqueue::Entry> = self.ring.completion().collect();
        for completion in completions {
            self.complete(
                completion.user_data(),
                completion.result(),
                completion.flags(),
            )?;
        }
        Ok(())
    }

    /// Queues `entry`, submitting the queue first if it is full.
    fn push(&mut self, entry: &squeue::Entry) -> Result<()> {
        loop {
            // SAFETY: every entry the loop queues is a poll or a cancellation, which points
            // at no memory of the process: nothing has to outlive the submission.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            match self.ring.submit() {
                Ok(_) => {}
                Err(err) if err.raw_os_error() == Some(libc::EINTR) => {}
                Err(err) => return Err(uring("io_uring_enter")(err)),
            }
        }
    }

    fn poll_entry(&self, fd: RawFd, multishot: bool, user_data: u64) -> squeue::Entry {
        opcode::PollAdd::new(types::Fd(fd), POLL_MASK)
            .multi(multishot && self.multishot)
            .build()
            .user_data(user_data)
    }

    fn arm_wake(&mut self) -> Result<()> {
        let entry = self.poll_entry(self.registrar.wake_fd(), true, WAKE);
        self.push(&entry)?;
        self.wake_armed = true;
        self.in_flight += 1;
        Ok(())
    }

    fn arm(&mut self, slot: u32, index: u16) -> Result<()> {
        let Some(s) = self.slots.get(slot as usize) else {
            return Ok(());
        };
        let generation = s.generation;
        let Some(entry) = &s.entry else {
            return Ok(());
        };
        let Some(&fd) = entry.fds.get(usize::from(index)) else {
            return Ok(());
        };
        let token = Token {
            slot,
            index,
            generation,
        };
        let sqe = self.poll_entry(fd, entry.multishot, token.pack());
        self.push(&sqe)?;
        if let Some(armed) = self
            .slots
            .get_mut(slot as usize)
            .and_then(|s| s.entry.as_mut())
            .and_then(|e| e.armed.get_mut(usize::from(index)))
        {
            *armed = true;
        }
        self.in_flight += 1;
        Ok(())
    }

    /// Takes the registrar's new sources and arms a poll for each of their descriptors.
    fn take_new(&mut self) -> Result<()> {
        for source in self.registrar.take() {
            self.insert(source)?;
        }
        Ok(())
    }

    fn insert(&mut self, source: Box<dyn EventSource>) -> Result<()> {
        let fds = source.fds();
        if fds.len() > usize::from(u16::MAX) || fds.iter().any(|fd| *fd < 0) {
            tracing::error!(
                source = source.name(),
                fds = fds.len(),
                "event source dropped: it has a negative descriptor or more than 65535"
            );
            return Ok(());
        }
        let entry = Entry {
            multishot: source.edge_triggered(),
            armed: vec![false; fds.len()],
            fds,
            source,
        };
        let count = entry.fds.len();
        let slot = match self.free.pop() {
            Some(slot) => {
                if let Some(s) = self.slots.get_mut(slot as usize) {
                    s.entry = Some(entry);
                }
                slot
            }
            None => {
                // Slots below the two reserved user_data values: 2^32 - 2 sources at once.
                let slot = u32::try_from(self.slots.len())
                    .ok()
                    .filter(|s| *s < u32::MAX - 1)
                    .ok_or(Error::EventSources)?;
                self.slots.push(Slot {
                    generation: 0,
                    entry: Some(entry),
                });
                slot
            }
        };
        for index in 0..count {
            // `count` fits u16 (checked above).
            self.arm(slot, u16::try_from(index).unwrap_or(u16::MAX))?;
        }
        Ok(())
    }

    fn complete(&mut self, user_data: u64, result: i32, flags: u32) -> Result<()> {
        let more = cqueue::more(flags);
        if !more {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        if user_data == CANCEL {
            return Ok(());
        }
        let refused_multishot = result == -libc::EINVAL && self.multishot;
        if refused_multishot {
            // A kernel before 5.13 refuses IORING_POLL_ADD_MULTI: one-shot polls from now.
            tracing::debug!("io_uring multishot polls refused: polls are re-armed instead");
            self.multishot = false;
        }
        if user_data == WAKE {
            if !more {
                self.wake_armed = false;
            }
            // New sources are taken at the start of the next turn.
            self.woken = true;
            return Ok(());
        }
        let token = Token::unpack(user_data);
        let Some(slot) = self.slots.get_mut(token.slot as usize) else {
            return Ok(());
        };
        if slot.generation != token.generation {
            // A late completion of a removed source's poll (its cancellation).
            return Ok(());
        }
        let Some(entry) = slot.entry.as_mut() else {
            return Ok(());
        };
        let index = usize::from(token.index);
        if !more {
            if let Some(armed) = entry.armed.get_mut(index) {
                *armed = false;
            }
        }
        let Some(&fd) = entry.fds.get(index) else {
            return Ok(());
        };
        if result < 0 && result != -libc::ECANCELED && !refused_multishot {
            // The poll itself failed (a descriptor closed under it): the source cannot be
            // waited on any more.
            tracing::warn!(
                source = entry.source.name(),
                fd,
                errno = -result,
                "cannot poll an event source's descriptor: source removed"
            );
            return self.remove(token.slot);
        }
        if result > 0 {
            let next = entry.source.ready(fd);
            if next == Next::Remove {
                return self.remove(token.slot);
            }
        }
        let still_armed = self
            .slots
            .get(token.slot as usize)
            .and_then(|s| s.entry.as_ref())
            .and_then(|e| e.armed.get(index).copied())
            .unwrap_or(true);
        if !still_armed {
            self.arm(token.slot, token.index)?;
        }
        Ok(())
    }

    /// Cancels the polls of the source in `slot` still in the kernel and drops it.
    fn remove(&mut self, slot: u32) -> Result<()> {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return Ok(());
        };
        let generation = s.generation;
        let Some(entry) = s.entry.take() else {
            return Ok(());
        };
        s.generation = s.generation.wrapping_add(1);
        self.free.push(slot);
        for (index, armed) in (0u16..).zip(&entry.armed) {
            if *armed {
                let token = Token {
                    slot,
                    index,
                    generation,
                };
                let cancel = opcode::PollRemove::new(token.pack())
                    .build()
                    .user_data(CANCEL);
                self.push(&cancel)?;
                self.in_flight += 1;
            }
        }
        tracing::debug!(source = entry.source.name(), "event source removed");
        drop(entry);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use super::*;

    /// An eventfd source counting its calls; it reads the eventfd (takes the event) unless
    /// told to leave it, and asks to be removed after `remove_after` calls.
    struct Counter {
        fd: EventFd,
        calls: Arc<AtomicUsize>,
        leave_first: bool,
        remove_after: Option<usize>,
        edge: bool,
    }

    impl Counter {
        fn new() -> (Self, Arc<AtomicUsize>) {
            let calls = Arc::new(AtomicUsize::new(0));
            let counter = Self {
                fd: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                calls: Arc::clone(&calls),
                leave_first: false,
                remove_after: None,
                edge: false,
            };
            (counter, calls)
        }

        fn trigger(&self) -> EventFd {
            self.fd.try_clone().unwrap()
        }
    }

    impl EventSource for Counter {
        fn name(&self) -> &str {
            "counter"
        }
        fn fds(&self) -> Vec<RawFd> {
            vec![self.fd.as_raw_fd()]
        }
        fn ready(&mut self, fd: RawFd) -> Next {
            assert_eq!(fd, self.fd.as_raw_fd());
            let calls = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if !(self.leave_first && calls == 1) {
                let _ = self.fd.read();
            }
            match self.remove_after {
                Some(n) if calls >= n => Next::Remove,
                _ => Next::Continue,
            }
        }
        fn edge_triggered(&self) -> bool {
            self.edge
        }
    }

    /// Runs `lp` until `cond` holds, failing (rather than hanging) if it never does: a
    /// watchdog wakes the loop now and then so the deadline is seen.
    fn run_until(lp: &mut DeviceLoop, what: &str, cond: impl Fn() -> bool) {
        let stop = Arc::new(AtomicBool::new(false));
        let watchdog = {
            let stop = Arc::clone(&stop);
            let registrar = lp.registrar().clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                    registrar.wake().unwrap();
                }
            })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        lp.run(|| cond() || Instant::now() > deadline).unwrap();
        stop.store(true, Ordering::SeqCst);
        watchdog.join().unwrap();
        assert!(cond(), "never happened: {what}");
    }

    fn new_loop() -> DeviceLoop {
        DeviceLoop::new(Registrar::new().unwrap()).unwrap()
    }

    #[test]
    fn a_source_is_called_when_its_descriptor_is_readable_and_not_before() {
        let mut lp = new_loop();
        let (quiet, quiet_calls) = Counter::new();
        let quiet_trigger = quiet.trigger();
        let (busy, busy_calls) = Counter::new();
        busy.trigger().write(1).unwrap();
        lp.registrar().add(Box::new(quiet)).unwrap();
        lp.registrar().add(Box::new(busy)).unwrap();
        run_until(&mut lp, "the readable source is called", || {
            busy_calls.load(Ordering::SeqCst) == 1
        });
        assert_eq!(lp.sources(), 2);
        assert_eq!(
            quiet_calls.load(Ordering::SeqCst),
            0,
            "called before readable"
        );
        quiet_trigger.write(1).unwrap();
        run_until(&mut lp, "the quiet source is called once written", || {
            quiet_calls.load(Ordering::SeqCst) == 1
        });
        assert_eq!(
            busy_calls.load(Ordering::SeqCst),
            1,
            "called without an event"
        );
    }

    #[test]
    fn a_source_added_from_another_thread_is_served() {
        let mut lp = new_loop();
        let registrar = lp.registrar().clone();
        let (counter, calls) = Counter::new();
        let adder = std::thread::spawn(move || {
            counter.trigger().write(1).unwrap();
            registrar.add(Box::new(counter)).unwrap();
        });
        run_until(
            &mut lp,
            "the source added by another thread is called",
            || calls.load(Ordering::SeqCst) == 1,
        );
        adder.join().unwrap();
    }

    #[test]
    fn a_source_that_leaves_its_event_is_called_again_and_an_edge_one_once_per_event() {
        let mut lp = new_loop();
        let (mut level, level_calls) = Counter::new();
        level.leave_first = true;
        level.trigger().write(1).unwrap();
        let (mut edge, edge_calls) = Counter::new();
        edge.edge = true;
        let edge_trigger = edge.trigger();
        lp.registrar().add(Box::new(level)).unwrap();
        lp.registrar().add(Box::new(edge)).unwrap();
        run_until(&mut lp, "the unread eventfd is reported again", || {
            level_calls.load(Ordering::SeqCst) >= 2
        });
        for n in 1..=3 {
            edge_trigger.write(1).unwrap();
            run_until(&mut lp, "each event reaches the edge source", || {
                edge_calls.load(Ordering::SeqCst) == n
            });
        }
    }

    /// A source on one end of a socket pair that asks to go on its first event.
    struct OneShot {
        socket: UnixStream,
        calls: Arc<AtomicUsize>,
    }

    impl EventSource for OneShot {
        fn name(&self) -> &str {
            "one-shot"
        }
        fn fds(&self) -> Vec<RawFd> {
            vec![self.socket.as_raw_fd()]
        }
        fn ready(&mut self, _fd: RawFd) -> Next {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mut byte = [0u8; 1];
            let _ = self.socket.read(&mut byte);
            Next::Remove
        }
    }

    #[test]
    fn a_removed_source_is_never_called_again_and_its_polls_are_gone() {
        removed_source_is_gone(false);
    }

    #[test]
    fn a_removed_edge_triggered_source_is_gone_too_its_multishot_polls_cancelled() {
        removed_source_is_gone(true);
    }

    fn removed_source_is_gone(edge: bool) {
        let mut lp = new_loop();
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let source = OneShot {
            socket: ours,
            calls: Arc::clone(&calls),
        };
        // A second descriptor whose poll is still armed when the source goes.
        let (idle, mut idle_peer) = UnixStream::pair().unwrap();
        struct Both(OneShot, UnixStream, bool);
        impl EventSource for Both {
            fn edge_triggered(&self) -> bool {
                self.2
            }
            fn name(&self) -> &str {
                "both"
            }
            fn fds(&self) -> Vec<RawFd> {
                vec![self.0.socket.as_raw_fd(), self.1.as_raw_fd()]
            }
            fn ready(&mut self, fd: RawFd) -> Next {
                self.0.ready(fd)
            }
        }
        lp.registrar()
            .add(Box::new(Both(source, idle, edge)))
            .unwrap();
        peer.write_all(b"x").unwrap();
        run_until(&mut lp, "the source is called", || {
            calls.load(Ordering::SeqCst) == 1
        });
        assert_eq!(lp.sources(), 0);
        // Its cancellations complete: only the wake-up poll is left in the kernel.
        let deadline = Instant::now() + Duration::from_secs(30);
        while lp.in_flight() != 1 && Instant::now() < deadline {
            lp.registrar().wake().unwrap();
            lp.turn().unwrap();
        }
        assert_eq!(lp.in_flight(), 1, "polls left besides the wake-up poll");
        // No poll holds its sockets open (the idle one's poll was armed when it went): the
        // peers see them closed.
        let mut byte = [0u8; 1];
        for peer in [&mut peer, &mut idle_peer] {
            peer.set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            assert_eq!(peer.read(&mut byte).unwrap(), 0, "a socket is still open");
        }
        // A new source in the freed slot gets its own events, the old one none.
        let (counter, counter_calls) = Counter::new();
        counter.trigger().write(1).unwrap();
        lp.registrar().add(Box::new(counter)).unwrap();
        run_until(&mut lp, "the new source is called", || {
            counter_calls.load(Ordering::SeqCst) == 1
        });
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "removed source called again"
        );
        assert_eq!(lp.in_flight(), 2, "the wake-up poll and the new source's");
    }

    #[test]
    fn many_sources_are_each_called_for_their_own_event() {
        let mut lp = new_loop();
        let mut all = Vec::new();
        for _ in 0..300 {
            let (counter, calls) = Counter::new();
            let trigger = counter.trigger();
            lp.registrar().add(Box::new(counter)).unwrap();
            all.push((trigger, calls));
        }
        for (trigger, _) in all.iter().step_by(2) {
            trigger.write(1).unwrap();
        }
        run_until(&mut lp, "every written source is called", || {
            all.iter()
                .step_by(2)
                .all(|(_, calls)| calls.load(Ordering::SeqCst) == 1)
        });
        assert_eq!(lp.sources(), 300);
        assert!(all
            .iter()
            .skip(1)
            .step_by(2)
            .all(|(_, calls)| calls.load(Ordering::SeqCst) == 0));
    }

    /// Whether `fd` polls readable within `timeout`.
    fn readable(fd: RawFd, timeout: Duration) -> bool {
        let mut pollfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap();
        // SAFETY: poll(2) reads and writes the one valid pollfd passed.
        let rc = unsafe { libc::poll(&mut pollfd, 1, ms) };
        assert!(rc >= 0, "poll: {}", std::io::Error::last_os_error());
        rc == 1 && pollfd.revents & libc::POLLIN != 0
    }

    #[test]
    fn another_loop_polls_the_ring_and_a_turn_without_wait_serves_the_ready_source() {
        let mut lp = new_loop();
        let (counter, calls) = Counter::new();
        let trigger = counter.trigger();
        // Arms the registrar's wake-up poll.
        lp.turn_nowait().unwrap();
        // Added from another thread, as a device activated on a vCPU thread is: the wake-up
        // makes the ring readable, and a turn takes the source.
        let registrar = lp.registrar().clone();
        std::thread::spawn(move || registrar.add(Box::new(counter)).unwrap())
            .join()
            .unwrap();
        for _ in 0..3 {
            if lp.sources() == 0 {
                assert!(readable(lp.ring_fd(), Duration::from_secs(30)));
                lp.turn_nowait().unwrap();
            }
        }
        assert_eq!(
            lp.sources(),
            1,
            "the source is taken without a waiting turn"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 0, "called before readable");
        // Nothing ready: the ring does not poll readable, and a turn returns at once.
        assert!(!readable(lp.ring_fd(), Duration::from_millis(0)));
        lp.turn_nowait().unwrap();
        for round in 1..=3 {
            trigger.write(1).unwrap();
            assert!(
                readable(lp.ring_fd(), Duration::from_secs(30)),
                "round {round}: the ready source makes the ring readable"
            );
            lp.turn_nowait().unwrap();
            assert_eq!(calls.load(Ordering::SeqCst), round, "served by the turn");
        }
    }

    #[test]
    fn tokens_round_trip() {
        let token = Token {
            slot: u32::MAX - 2,
            index: u16::MAX,
            generation: 7,
        };
        assert_eq!(Token::unpack(token.pack()), token);
        assert_ne!(token.pack(), WAKE);
        assert_ne!(token.pack(), CANCEL);
    }
}
