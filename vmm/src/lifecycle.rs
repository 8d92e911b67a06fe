//! Whether a VM runs, and why it stopped.
//!
//! Every vCPU thread and every device that can end the VM (the i8042 reset line) holds a
//! [`RunState`]. The first stop request wins and records its [`StopReason`]; later ones are
//! ignored. The VM's owner waits on it, then kicks and joins the vCPU threads (see
//! [`crate::vm`]).
//!
//! A [`PauseGate`] parks the vCPU threads outside KVM_RUN while the VM is paused: each
//! thread checks it before every KVM_RUN and waits on it, and the pauser counts them in.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

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

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Halted => write!(f, "every vCPU halted"),
            StopReason::I8042Reset => write!(f, "the guest reset the machine (i8042)"),
            StopReason::TripleFault { vcpu } => write!(f, "vCPU {vcpu} triple-faulted"),
            StopReason::SystemEvent { kind } => {
                write!(
                    f,
                    "the guest asked for a reset or power-off (system event {kind})"
                )
            }
            StopReason::Requested => write!(f, "stopped on request"),
            StopReason::VcpuError { vcpu, detail } => write!(f, "vCPU {vcpu} failed: {detail}"),
        }
    }
}

/// What [`RunState::on_stop`] runs.
type StopHook = Box<dyn Fn() + Send + Sync>;

/// The run state shared by a VM's threads and devices.
#[derive(Default)]
pub struct RunState {
    stopping: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    stopped: Condvar,
    on_stop: OnceLock<StopHook>,
}

impl std::fmt::Debug for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunState")
            .field("stopping", &self.stopping)
            .field("reason", &self.reason)
            .field("on_stop", &self.on_stop.get().is_some())
            .finish()
    }
}

impl RunState {
    /// A running VM's state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the VM to stop for `reason`, unless a stop was already asked for.
    pub fn request_stop(&self, reason: StopReason) {
        let mut current = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        // Before the hook: whoever it wakes must see the stop.
        self.stopping.store(true, Ordering::Release);
        if current.is_none() {
            tracing::info!(?reason, "VM stopping");
            *current = Some(reason);
            if let Some(hook) = self.on_stop.get() {
                hook();
            }
        }
        self.stopped.notify_all();
    }

    /// Registers `hook` to run once, on the first stop request (on the requesting thread,
    /// right away if the VM already stopped): for a thread that waits for other events as
    /// well as the stop, such as `hull-vmm`'s main thread waiting for signals. Returns
    /// `false`, and drops `hook`, if one is registered already.
    pub fn on_stop(&self, hook: impl Fn() + Send + Sync + 'static) -> bool {
        // Under the reason's lock, so a concurrent first stop runs the hook exactly once.
        let current = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if self.on_stop.set(Box::new(hook)).is_err() {
            return false;
        }
        if current.is_some() {
            if let Some(hook) = self.on_stop.get() {
                hook();
            }
        }
        true
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

/// Where vCPU threads wait while the VM is paused.
#[derive(Debug, Default)]
pub struct PauseGate {
    requested: AtomicBool,
    /// vCPU threads waiting in [`PauseGate::park`].
    parked: Mutex<usize>,
    changed: Condvar,
}

impl PauseGate {
    /// An open gate (the VM runs).
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the VM is to be paused; vCPU threads check it before every KVM_RUN.
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// Closes (`true`) or opens the gate, waking the threads parked at it.
    pub fn set(&self, paused: bool) {
        let _parked = self.parked.lock().unwrap_or_else(|p| p.into_inner());
        self.requested.store(paused, Ordering::Release);
        self.changed.notify_all();
    }

    /// On a vCPU thread: waits while the gate is closed and the VM is not stopping.
    pub fn park(&self, state: &RunState) {
        let mut parked = self.parked.lock().unwrap_or_else(|p| p.into_inner());
        *parked += 1;
        self.changed.notify_all();
        // A stop sets its flag before it wakes the gate ([`Self::wake`], under this lock),
        // so it is seen here either before the wait or by the wake-up.
        while self.requested() && !state.stop_requested() {
            parked = self.changed.wait(parked).unwrap_or_else(|p| p.into_inner());
        }
        *parked -= 1;
        self.changed.notify_all();
    }

    /// Wakes the parked threads so they see a stop.
    pub fn wake(&self) {
        let _parked = self.parked.lock().unwrap_or_else(|p| p.into_inner());
        self.changed.notify_all();
    }

    /// Threads parked now.
    pub fn parked(&self) -> usize {
        *self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until a thread parks or leaves, or `timeout` passes.
    pub fn wait_for_change(&self, timeout: Duration) {
        let parked = self.parked.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.changed.wait_timeout(parked, timeout);
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
    fn stop_hook_runs_once_on_the_first_stop_or_at_once_if_stopped_already() {
        use std::sync::atomic::AtomicUsize;
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = |runs: &Arc<AtomicUsize>| {
            let runs = Arc::clone(runs);
            move || {
                runs.fetch_add(1, Ordering::SeqCst);
            }
        };
        let state = RunState::new();
        assert!(state.on_stop(counter(&runs)));
        assert!(!state.on_stop(counter(&runs)), "one hook only");
        // What the hook wakes sees the stop already (hull-vmm's main thread checks it).
        let seen = Arc::new(RunState::new());
        let seen_in_hook = Arc::clone(&seen);
        let saw = Arc::new(AtomicBool::new(false));
        let saw_in_hook = Arc::clone(&saw);
        seen.on_stop(move || {
            saw_in_hook.store(seen_in_hook.stop_requested(), Ordering::SeqCst);
        });
        seen.request_stop(StopReason::Halted);
        assert!(
            saw.load(Ordering::SeqCst),
            "stop_requested() is true inside the hook"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        state.request_stop(StopReason::I8042Reset);
        state.request_stop(StopReason::Requested);
        assert_eq!(runs.load(Ordering::SeqCst), 1, "first stop only");

        let late = Arc::new(AtomicUsize::new(0));
        let stopped = RunState::new();
        stopped.request_stop(StopReason::Halted);
        assert!(stopped.on_stop(counter(&late)));
        assert_eq!(
            late.load(Ordering::SeqCst),
            1,
            "already stopped: run at once"
        );
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
