//! The VM's counters in Prometheus' text format, and the metrics socket that serves them as
//! an [`EventSource`] of the device loop (one answer per connection).

use std::os::fd::{AsFd, AsRawFd, RawFd};

use hull_metrics::{MetricsListener, Sample};

use crate::cpu::vcpu::ExitCounts;
use crate::event_loop::{EventSource, Next};
use crate::vm::VmControl;

/// Prometheus text of the VM's counters: exits per vCPU and kind, unclaimed accesses per bus.
pub fn render(exits: &[ExitCounts], pio: u64, mmio: u64) -> String {
    let mut samples = Vec::new();
    for (vcpu, counts) in exits.iter().enumerate() {
        for (kind, value) in [
            ("pio_in", counts.pio_in),
            ("pio_out", counts.pio_out),
            ("mmio_read", counts.mmio_read),
            ("mmio_write", counts.mmio_write),
            ("interrupted", counts.interrupted),
        ] {
            samples.push(
                Sample::counter(
                    "hull_vmm_vcpu_exits_total",
                    "Exits to the VMM handled, by vCPU and kind.",
                    value,
                )
                .with_labels(format!("vcpu=\"{vcpu}\",kind=\"{kind}\"")),
            );
        }
    }
    for (bus, value) in [("pio", pio), ("mmio", mmio)] {
        samples.push(
            Sample::counter(
                "hull_vmm_unclaimed_accesses_total",
                "Guest port and MMIO accesses no device claims.",
                value,
            )
            .with_labels(format!("bus=\"{bus}\"")),
        );
    }
    hull_metrics::render(&samples)
}

/// The metrics socket on the device loop: each reader gets the VM's counters. Its file goes
/// with it.
pub struct MetricsSource {
    listener: MetricsListener,
    vm: VmControl,
    extra: Option<Box<dyn Fn() -> String + Send>>,
}

impl std::fmt::Debug for MetricsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsSource")
            .field("listener", &self.listener)
            .field("extra", &self.extra.is_some())
            .finish_non_exhaustive()
    }
}

impl MetricsSource {
    /// Serves `listener` with `vm`'s counters.
    pub fn new(listener: MetricsListener, vm: VmControl) -> Self {
        Self {
            listener,
            vm,
            extra: None,
        }
    }

    /// Also serves the text `extra` renders (in-VMM devices' series) after the VM's own.
    pub fn with_extra(mut self, extra: impl Fn() -> String + Send + 'static) -> Self {
        self.extra = Some(Box::new(extra));
        self
    }
}

impl EventSource for MetricsSource {
    fn name(&self) -> &str {
        "metrics-socket"
    }

    fn fds(&self) -> Vec<RawFd> {
        vec![self.listener.as_fd().as_raw_fd()]
    }

    fn ready(&mut self, _fd: RawFd) -> Next {
        // One reader per call; the loop calls again while more wait (level-triggered).
        self.listener.answer(|| {
            let (pio, mmio) = self.vm.unmapped_accesses();
            let mut text = render(&self.vm.exit_counts(), pio, mmio);
            if let Some(extra) = &self.extra {
                text.push_str(&extra());
            }
            text
        });
        Next::Continue
    }
}
