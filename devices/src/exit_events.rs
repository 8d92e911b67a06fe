//! The exit events a backend hands vhost-user-backend's worker threads, and closing the
//! descriptors the crate leaks.
//!
//! vhost-user-backend 0.24 registers each worker thread's exit-event consumer in the thread's
//! epoll with `into_raw_fd` and never closes it (`VringEpollHandler::new`): one eventfd per
//! worker thread per frontend. A backend that serves one frontend and exits loses nothing,
//! but one started with `--keep-listening` serves frontend after frontend for as long as a
//! host runs, and would run out of descriptors. So each frontend's daemon gets its exit
//! events from an [`ExitEvents`], which keeps a witness of each (a duplicate of the notifier,
//! the same open eventfd), and once the daemon is dropped, [`ExitEvents::close_leaked`]
//! closes each consumer descriptor that still refers to that same eventfd. The check
//! (kcmp(2), `KCMP_FILE`) makes it safe whatever a later version of the crate does: a
//! consumer it closed itself, and whose number was reused, is left alone.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use vmm_sys_util::event::{EventConsumer, EventFlag, EventNotifier};

/// kcmp(2)'s "same open file description" comparison.
const KCMP_FILE: libc::c_long = 0;

/// Exit events handed to one daemon's worker threads.
#[derive(Debug, Default)]
pub struct ExitEvents {
    handed: Mutex<Vec<Handed>>,
}

/// One handed-out exit event: the consumer's descriptor number as given to the crate, and our
/// own descriptor of the same eventfd.
#[derive(Debug)]
struct Handed {
    consumer: RawFd,
    witness: OwnedFd,
}

impl ExitEvents {
    /// A new exit event for a worker thread (what `VhostUserBackend::exit_event` returns);
    /// `None` if no eventfd can be made (the thread then has no exit event, as upstream's
    /// backends do on that error).
    pub fn create(&self) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) = vmm_sys_util::event::new_event_consumer_and_notifier(
            EventFlag::NONBLOCK | EventFlag::CLOEXEC,
        )
        .ok()?;
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor we hold open (the notifier) returns a
        // new descriptor or -1, and touches no memory.
        let witness = unsafe { libc::fcntl(notifier.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if witness >= 0 {
            // SAFETY: `witness` was just returned by fcntl as a new descriptor nobody else owns.
            let witness = unsafe { OwnedFd::from_raw_fd(witness) };
            self.lock().push(Handed {
                consumer: consumer.as_raw_fd(),
                witness,
            });
        }
        Some((consumer, notifier))
    }

    /// Closes the consumer descriptors the crate leaked. Call it only once the daemon that
    /// took the events is dropped (its worker threads joined, its epolls closed); returns how
    /// many it closed.
    pub fn close_leaked(&self) -> usize {
        let pid = libc::c_long::from(std::process::id() as libc::pid_t);
        let mut closed = 0;
        for Handed { consumer, witness } in self.lock().drain(..) {
            // SAFETY: kcmp(2) compares two of this process's descriptor numbers and touches no
            // memory; it fails on a number that is not open.
            let same = unsafe {
                libc::syscall(
                    libc::SYS_kcmp,
                    pid,
                    pid,
                    KCMP_FILE,
                    libc::c_long::from(consumer),
                    libc::c_long::from(witness.as_raw_fd()),
                )
            } == 0;
            if same {
                // SAFETY: `consumer` is open and refers to the eventfd we made for it; the
                // crate gave up its ownership (into_raw_fd) and its epoll is gone, so nothing
                // else uses or closes this number.
                unsafe { libc::close(consumer) };
                closed += 1;
            }
        }
        closed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Handed>> {
        self.handed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::IntoRawFd;

    use super::*;

    fn is_open(fd: RawFd) -> bool {
        // SAFETY: F_GETFD reads a descriptor's flags and touches no memory.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        flags >= 0
    }

    #[test]
    fn a_consumer_given_away_as_upstream_does_is_closed_afterwards() {
        let events = ExitEvents::default();
        let (consumer, notifier) = events.create().expect("eventfd");
        // What VringEpollHandler::new does with it.
        let leaked = consumer.into_raw_fd();
        drop(notifier);
        assert!(is_open(leaked));
        assert_eq!(events.close_leaked(), 1);
        assert!(!is_open(leaked), "the leaked consumer is closed");
    }

    #[test]
    fn a_number_reused_for_another_file_is_left_alone() {
        let events = ExitEvents::default();
        let (consumer, _notifier) = events.create().expect("eventfd");
        // A later version closes it itself and the number goes to an unrelated file: dup2
        // makes that happen in one step, with no window for the test's other threads.
        let number = consumer.into_raw_fd();
        let other = std::fs::File::open("/dev/null").expect("/dev/null");
        // SAFETY: dup2 onto a number this test owns (the consumer it took over).
        assert_eq!(unsafe { libc::dup2(other.as_raw_fd(), number) }, number);
        assert_eq!(events.close_leaked(), 0);
        assert!(is_open(number), "the unrelated file stays open");
        // SAFETY: `number` is this test's (the /dev/null duplicate).
        drop(unsafe { OwnedFd::from_raw_fd(number) });
    }
}
