//! Marks in the shim's log where a pod's start-up passes from one phase to the next, so the
//! time from `ctr run` to a container's first output can be split by phase (VM boot, agent
//! ready, container create and start). `hull-bench startup` reads them from containerd's log,
//! where the shim's log lines end up, and takes their timestamps.
//!
//! Each mark is one info line, `hull phase sandbox=ID phase=NAME` (or `container=ID` for the
//! container's phases). The names are a contract with hull-bench: change them together.

use std::fmt;

/// A point in a pod's start-up, in the order they are passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The shim got the pod's first container and starts its sandbox.
    SandboxStart,
    /// The VM's device backends (hull-vsock, hull-fs) serve their sockets.
    BackendsReady,
    /// The VMM process runs and answers (QEMU on QMP): the guest is booting.
    VmStarted,
    /// The agent answered its first call (in the VM, or on the host with `none`).
    AgentReady,
    /// The agent created the container.
    ContainerCreated,
    /// The agent started the container's process.
    ContainerStarted,
}

impl Phase {
    /// Every phase, in start-up order.
    pub const ALL: [Phase; 6] = [
        Phase::SandboxStart,
        Phase::BackendsReady,
        Phase::VmStarted,
        Phase::AgentReady,
        Phase::ContainerCreated,
        Phase::ContainerStarted,
    ];

    /// The name the log line carries.
    pub fn name(self) -> &'static str {
        match self {
            Phase::SandboxStart => "sandbox-start",
            Phase::BackendsReady => "backends-ready",
            Phase::VmStarted => "vm-started",
            Phase::AgentReady => "agent-ready",
            Phase::ContainerCreated => "container-created",
            Phase::ContainerStarted => "container-started",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Logs that sandbox `id` reached `phase`.
pub fn sandbox(id: &str, phase: Phase) {
    tracing::info!(sandbox = %id, %phase, "hull phase");
}

/// Logs that container `id` reached `phase`.
pub fn container(id: &str, phase: Phase) {
    tracing::info!(container = %id, %phase, "hull phase");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_names_are_distinct_single_words() {
        let names: Vec<&str> = Phase::ALL.iter().map(|p| p.name()).collect();
        for (i, name) in names.iter().enumerate() {
            assert!(!name.contains(char::is_whitespace), "{name}");
            assert!(!names[..i].contains(name), "{name} twice");
        }
        assert_eq!(Phase::AgentReady.to_string(), "agent-ready");
    }
}
