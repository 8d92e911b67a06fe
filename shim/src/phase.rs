//! Marks in the shim's log where a pod's start-up passes from one phase to the next, so the
//! time from `ctr run` to a container's first output can be split by phase (VM boot, agent
//! ready, container create and start). `hull-bench startup` reads them from the phase file
//! (below) it names in the shim's configuration, and from containerd's log, where the shim's
//! log lines end up, for any the file lacks.
//!
//! Each mark is one info line, `hull phase sandbox=ID phase=NAME` (or `container=ID` for the
//! container's phases). The names are a contract with hull-bench: change them together.
//!
//! containerd 1.6 drops the lines of a shim's log it has not read when the shim exits, so a
//! mark can go missing there. With `runtime.phase_file` set, each mark is also appended to
//! that file as one line, `<unix seconds>.<nanoseconds> sandbox=ID phase=NAME` (see
//! [`line`]), written with one `write` to a file opened `O_APPEND`, so the lines of shims
//! running at once do not mix. hull-bench sets it.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

/// The file marks are appended to, once a configuration named one.
static PHASE_FILE: OnceLock<PathBuf> = OnceLock::new();

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

/// Appends the marks from now on to `path` too (the configuration's `runtime.phase_file`);
/// an empty path leaves them in the log only. A shim serves one pod with one configuration:
/// the first file named stays.
pub fn record_to(path: &Path) {
    if path.as_os_str().is_empty() {
        return;
    }
    let first = PHASE_FILE.get_or_init(|| path.to_owned());
    if first != path {
        tracing::warn!(file = %first.display(), ignored = %path.display(), "phase marks already go to a file");
    }
}

/// The line a mark takes in the phase file: when (wall clock), what (`sandbox` or
/// `container`), which, and the phase.
pub fn line(at: SystemTime, what: &str, id: &str, phase: Phase) -> String {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}.{:09} {what}={id} phase={phase}\n",
        since.as_secs(),
        since.subsec_nanos()
    )
}

/// Logs the mark, and appends it to the phase file if there is one. A small blocking append
/// on the event loop: one short line, a few times per pod.
fn mark(what: &str, id: &str, phase: Phase) {
    let at = SystemTime::now();
    match what {
        "sandbox" => tracing::info!(sandbox = %id, %phase, "hull phase"),
        _ => tracing::info!(container = %id, %phase, "hull phase"),
    }
    let Some(path) = PHASE_FILE.get() else {
        return;
    };
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(line(at, what, id, phase).as_bytes()));
    if let Err(err) = appended {
        tracing::warn!(file = %path.display(), %err, "appending a phase mark");
    }
}

/// Marks that sandbox `id` reached `phase`.
pub fn sandbox(id: &str, phase: Phase) {
    mark("sandbox", id, phase);
}

/// Marks that container `id` reached `phase`.
pub fn container(id: &str, phase: Phase) {
    mark("container", id, phase);
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

    #[test]
    fn a_phase_file_line_carries_the_wall_clock_time_to_the_nanosecond() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::new(1_763_937_601, 5_000_000);
        assert_eq!(
            line(at, "container", "pod-1", Phase::ContainerStarted),
            "1763937601.005000000 container=pod-1 phase=container-started\n"
        );
    }

    #[test]
    fn marks_are_appended_to_the_phase_file_once_one_is_named() {
        // The file is the test process's own from here on; other tests' marks may land in
        // it too, so only this test's pod is looked at.
        let pod = "phase-file-test-pod";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("phases");
        record_to(Path::new(""));
        sandbox(pod, Phase::BackendsReady);
        record_to(&path);
        sandbox(pod, Phase::SandboxStart);
        container(pod, Phase::ContainerCreated);
        record_to(&dir.path().join("other"));
        sandbox(pod, Phase::AgentReady);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(pod)).collect();
        assert_eq!(lines.len(), 3, "{text}");
        for (line, end) in lines.iter().zip([
            " sandbox=phase-file-test-pod phase=sandbox-start",
            " container=phase-file-test-pod phase=container-created",
            " sandbox=phase-file-test-pod phase=agent-ready",
        ]) {
            assert!(line.ends_with(end), "{line}");
            let time = line.split_once(' ').unwrap().0;
            assert!(time.parse::<f64>().unwrap() > 1.6e9, "{line}");
        }
        assert!(!dir.path().join("other").exists());
    }
}
