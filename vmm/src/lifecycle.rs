//! Whether a VM runs, and why it stopped.
//!
//! Every vCPU thread and every device that can end the VM (the i8042 reset line) holds a
//! [`RunState`]. The first stop request wins and records its [`StopReason`]; later ones are
//! ignored. The VM's owner waits on it, then kicks and joins the vCPU threads (see
//! [`crate::vm`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

/// Why a VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Every vCPU executed HLT with no interrupt controller left to wake it.
    Halted,
    /// The guest pulsed the CPU reset line of the i8042 controller (Linux `reboot=k`).
    I8042Reset,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN; Linux `reboot=t`).
    TripleFault {
        /// The vCPU that faulted.
        vcpu: u8,
    },
    /// The guest asked KVM for a reset or power-off (KVM_EXIT_SYSTEM_EVENT).
    SystemEvent {
        /// KVM_SYSTEM_EVENT_* type.
        kind: u32,
    },
    /// The VM's owner asked it to stop.
    Requested,
    /// A vCPU could not go on: KVM failed or reported an exit the VMM cannot handle.
    VcpuError {
        /// The vCPU.
        vcpu: u8,
        /// What happened.
        detail: String,
    },
}

/// The run state shared by a VM's threads and devices.
#[derive(Debug, Default)]
pub struct RunState {
    stopping: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    stopped: Condvar,
}

impl RunState {
    /// A running VM's state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the VM to stop for `reason`, unless a stop was already asked for.
    pub fn request_stop(&self, reason: StopReason) {
        let mut current = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if current.is_none() {
            tracing::info!(?reason, "VM stopping");
            *current = Some(reason);
        }
        self.stopping.store(true, Ordering::Release);
        self.stopped.notify_all();
    }

    /// Whether a stop was asked for; vCPU threads check it before every KVM_RUN.
    pub fn stop_requested(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Blocks until a stop is asked for, and returns why.
    pub fn wait(&self) -> StopReason {
        let mut reason = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(reason) = reason.as_ref() {
                return reason.clone();
            }
            reason = self.stopped.wait(reason).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn first_stop_reason_wins() {
        let state = RunState::new();
        assert!(!state.stop_requested());
        state.request_stop(StopReason::I8042Reset);
        state.request_stop(StopReason::Requested);
        assert!(state.stop_requested());
        assert_eq!(state.wait(), StopReason::I8042Reset);
    }

    #[test]
    fn waiter_wakes_on_a_stop_from_another_thread() {
        let state = Arc::new(RunState::new());
        let stopper = Arc::clone(&state);
        let thread = std::thread::spawn(move || stopper.request_stop(StopReason::Halted));
        assert_eq!(state.wait(), StopReason::Halted);
        thread.join().unwrap();
    }
}
