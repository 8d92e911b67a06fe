//! A vCPU on its own thread: blocked in KVM_RUN, handling port I/O and MMIO exits itself
//! through the buses, and turning HLT, shutdown and system events into a VM stop.
//!
//! Another thread stops a vCPU by setting the VM's stop flag and sending the thread
//! [`kick_signal`]: the signal interrupts KVM_RUN (EINTR) and the loop sees the flag. The
//! signal is re-sent until the thread has ended, so a kick that lands just before KVM_RUN
//! is never lost. A pause is the same kick with the pause flag: the thread then waits at the
//! VM's [`PauseGate`] until it is resumed or stopped.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Once};

use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::bus::Bus;
use crate::lifecycle::{PauseGate, RunState, StopReason};
use crate::{Error, Result};

/// The real-time signal (offset from SIGRTMIN) that kicks vCPU threads out of KVM_RUN.
const KICK_SIGNAL_OFFSET: i32 = 0;

/// The signal number used to kick vCPU threads.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN() + KICK_SIGNAL_OFFSET
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: being delivered is what makes KVM_RUN return EINTR.
}

/// Installs the kick signal's handler (once per process).
pub fn install_kick_handler() -> Result<()> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
            .map_err(Error::Signal);
    });
    result
}

/// Where the guest was, for error reports (" at guest RIP 0x…"), or nothing if KVM cannot
/// say.
fn guest_ip(fd: &VcpuFd) -> String {
    fd.get_regs()
        .map(|regs| format!(" at guest RIP {:#x}", regs.rip))
        .unwrap_or_default()
}

/// Exits of one vCPU, by kind; written by its thread only, read by anyone.
#[derive(Debug, Default)]
pub struct ExitCounters {
    pio_in: AtomicU64,
    pio_out: AtomicU64,
    mmio_read: AtomicU64,
    mmio_write: AtomicU64,
    interrupted: AtomicU64,
}

/// A snapshot of [`ExitCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitCounts {
    /// Port reads (`in`).
    pub pio_in: u64,
    /// Port writes (`out`).
    pub pio_out: u64,
    /// MMIO reads.
    pub mmio_read: u64,
    /// MMIO writes.
    pub mmio_write: u64,
    /// KVM_RUN interrupted by a signal (kicks).
    pub interrupted: u64,
}

impl ExitCounters {
    /// The counts so far.
    pub fn snapshot(&self) -> ExitCounts {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ExitCounts {
            pio_in: get(&self.pio_in),
            pio_out: get(&self.pio_out),
            mmio_read: get(&self.mmio_read),
            mmio_write: get(&self.mmio_write),
            interrupted: get(&self.interrupted),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Everything a vCPU thread owns or shares.
pub struct Vcpu {
    /// Index of the vCPU (its APIC ID).
    pub id: u8,
    /// The KVM vCPU.
    pub fd: VcpuFd,
    /// Port I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// The VM's run state.
    pub state: Arc<RunState>,
    /// Where the thread waits, outside KVM_RUN, while the VM is paused.
    pub pause: Arc<PauseGate>,
    /// vCPUs still running; the last one to halt stops the VM.
    pub running: Arc<AtomicU8>,
    /// This vCPU's exit counters.
    pub exits: Arc<ExitCounters>,
}

/// How a vCPU's loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuEnd {
    /// The vCPU halted and nothing can wake it.
    Halted,
    /// The VM stopped (this vCPU's exit or another's request).
    Stopped,
}

impl Vcpu {
    /// Runs the vCPU until it halts or the VM stops.
    pub fn run(mut self) -> VcpuEnd {
        let id = self.id;
        let end = self.run_loop();
        // Where the guest was helps to tell a stuck guest from a slow one.
        let rip = self.fd.get_regs().map(|regs| regs.rip).ok();
        tracing::debug!(vcpu = id, ?end, ?rip, "vCPU loop ended");
        end
    }

    fn run_loop(&mut self) -> VcpuEnd {
        let id = self.id;
        loop {
            if self.state.stop_requested() {
                return VcpuEnd::Stopped;
            }
            if self.pause.requested() {
                self.pause.park(&self.state);
                continue;
            }
            let stop = |reason| {
                self.state.request_stop(reason);
                VcpuEnd::Stopped
            };
            match self.fd.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    bump(&self.exits.pio_out);
                    self.pio.write(u64::from(port), data);
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    bump(&self.exits.pio_in);
                    self.pio.read(u64::from(port), data);
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    bump(&self.exits.mmio_write);
                    self.mmio.write(addr, data);
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    bump(&self.exits.mmio_read);
                    self.mmio.read(addr, data);
                }
                Ok(VcpuExit::Hlt) => {
                    // Without an in-kernel interrupt controller nothing can wake this vCPU.
                    if self.running.fetch_sub(1, Ordering::AcqRel) == 1 {
                        self.state.request_stop(StopReason::Halted);
                    }
                    return VcpuEnd::Halted;
                }
                Ok(VcpuExit::Shutdown) => return stop(StopReason::TripleFault { vcpu: id }),
                Ok(VcpuExit::SystemEvent(kind, _)) => {
                    return stop(StopReason::SystemEvent { kind })
                }
                Ok(VcpuExit::Intr) => bump(&self.exits.interrupted),
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    let detail = format!(
                        "KVM_EXIT_FAIL_ENTRY: hardware reason {reason:#x} on host CPU {cpu}"
                    );
                    return stop(StopReason::VcpuError { vcpu: id, detail });
                }
                Ok(VcpuExit::InternalError) => {
                    let detail = format!(
                        "KVM_EXIT_INTERNAL_ERROR (often an instruction KVM cannot emulate){}",
                        guest_ip(&self.fd)
                    );
                    return stop(StopReason::VcpuError { vcpu: id, detail });
                }
                Ok(other) => {
                    let other = format!("{other:?}");
                    let detail = format!("unhandled exit {other}{}", guest_ip(&self.fd));
                    return stop(StopReason::VcpuError { vcpu: id, detail });
                }
                Err(err) if err.errno() == libc::EINTR || err.errno() == libc::EAGAIN => {
                    bump(&self.exits.interrupted);
                }
                Err(err) => {
                    let detail = format!("KVM_RUN failed: {err}");
                    return stop(StopReason::VcpuError { vcpu: id, detail });
                }
            }
        }
    }
}
