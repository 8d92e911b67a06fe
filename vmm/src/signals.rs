//! The process's signals as an [`EventSource`] of the device loop: hull-vmm's main thread
//! blocks SIGINT, SIGTERM and SIGUSR1 before the vCPU threads start (they inherit the mask),
//! and reads them from a signalfd on the loop. SIGINT and SIGTERM stop the VM; SIGUSR1 (which
//! hull-vmm's stop hook once sent itself) stays blocked and is read and ignored, so a stray
//! one neither kills the VMM nor stops its guest.

use std::os::fd::{AsRawFd, RawFd};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::event_loop::{EventSource, Next};
use crate::vm::VmControl;

/// The signals hull-vmm's main thread takes: SIGINT and SIGTERM stop the VM, SIGUSR1 is
/// ignored.
pub fn stop_signals() -> SigSet {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGUSR1);
    signals
}

/// Reads the blocked [`stop_signals`] on the device loop and stops the VM on SIGINT or
/// SIGTERM.
pub struct SignalSource {
    fd: SignalFd,
    vm: VmControl,
}

impl std::fmt::Debug for SignalSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalSource")
            .field("fd", &self.fd.as_raw_fd())
            .finish()
    }
}

impl SignalSource {
    /// A non-blocking signalfd for `signals` (which the caller has blocked on every thread).
    pub fn new(signals: &SigSet, vm: VmControl) -> nix::Result<Self> {
        let fd = SignalFd::with_flags(signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
        Ok(Self { fd, vm })
    }
}

impl EventSource for SignalSource {
    fn name(&self) -> &str {
        "signals"
    }

    fn fds(&self) -> Vec<RawFd> {
        vec![self.fd.as_raw_fd()]
    }

    fn ready(&mut self, _fd: RawFd) -> Next {
        // Every pending signal, so one wake-up is enough (edge-triggered).
        loop {
            match self.fd.read_signal() {
                Ok(Some(info)) => {
                    let signal = i32::try_from(info.ssi_signo)
                        .ok()
                        .and_then(|n| Signal::try_from(n).ok());
                    match signal {
                        Some(Signal::SIGINT | Signal::SIGTERM) => {
                            tracing::info!(?signal, "stopping the VM");
                            self.vm.stop();
                        }
                        other => tracing::debug!(signal = ?other, "signal ignored"),
                    }
                }
                Ok(None) => return Next::Continue,
                Err(nix::errno::Errno::EINTR) => {}
                Err(err) => {
                    // The signalfd is unusable: stop rather than run on deaf to SIGTERM.
                    tracing::error!(%err, "cannot read the signalfd: stopping the VM");
                    self.vm.stop();
                    return Next::Remove;
                }
            }
        }
    }

    fn edge_triggered(&self) -> bool {
        true
    }
}
