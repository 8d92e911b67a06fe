//! GetMetrics: the agent's and the guest's figures in the Prometheus text format (version
//! 0.0.4), read from /proc when asked. Only what the kernel already counts; per-call counters
//! arrive with the container service.

use std::fmt::Write as _;
use std::fs;
use std::time::Instant;

use hull_agent_protocol::PROTOCOL_VERSION;

use crate::guest_check::mem_total_kib;

/// One reading of everything reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Seconds since the agent started serving.
    pub uptime_secs: f64,
    /// The agent's resident set, in bytes.
    pub resident_bytes: Option<u64>,
    /// The agent's open file descriptors.
    pub open_fds: Option<u64>,
    /// The guest's MemTotal, in bytes.
    pub memory_total_bytes: Option<u64>,
    /// The guest's MemAvailable, in bytes.
    pub memory_available_bytes: Option<u64>,
    /// The guest's 1-minute load average.
    pub load1: Option<f64>,
}

impl Snapshot {
    /// Reads the running system; the agent started serving at `started`.
    pub fn read(started: Instant) -> Snapshot {
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Snapshot {
            uptime_secs: started.elapsed().as_secs_f64(),
            resident_bytes: fs::read_to_string("/proc/self/statm")
                .ok()
                .and_then(|statm| resident_pages(&statm))
                .map(|pages| pages.saturating_mul(page_size())),
            open_fds: fs::read_dir("/proc/self/fd")
                .ok()
                .map(|dir| u64::try_from(dir.count()).unwrap_or(u64::MAX)),
            memory_total_bytes: mem_total_kib(&meminfo).map(|kib| kib.saturating_mul(1024)),
            memory_available_bytes: meminfo_kib(&meminfo, "MemAvailable:")
                .map(|kib| kib.saturating_mul(1024)),
            load1: fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|avg| avg.split_whitespace().next()?.parse().ok()),
        }
    }

    /// The Prometheus text exposition of the snapshot. A figure that could not be read is
    /// left out rather than reported as 0.
    pub fn to_prometheus(&self) -> String {
        // Writing to a String cannot fail: the results of write! are ignored below.
        let mut out = String::new();
        let _ = write!(
            out,
            "# HELP hull_agent_build_info The agent's version and protocol version; always 1.\n\
             # TYPE hull_agent_build_info gauge\n\
             hull_agent_build_info{{version=\"{}\",protocol=\"{PROTOCOL_VERSION}\"}} 1\n",
            crate::VERSION
        );
        let gauges = [
            (
                "hull_agent_uptime_seconds",
                "Seconds since the agent started serving.",
                Some(format!("{:.3}", self.uptime_secs)),
            ),
            (
                "hull_agent_resident_memory_bytes",
                "The agent's resident memory, in bytes.",
                self.resident_bytes.map(|v| v.to_string()),
            ),
            (
                "hull_agent_open_fds",
                "File descriptors the agent holds open.",
                self.open_fds.map(|v| v.to_string()),
            ),
            (
                "hull_guest_memory_total_bytes",
                "The guest's total memory (MemTotal), in bytes.",
                self.memory_total_bytes.map(|v| v.to_string()),
            ),
            (
                "hull_guest_memory_available_bytes",
                "The guest's available memory (MemAvailable), in bytes.",
                self.memory_available_bytes.map(|v| v.to_string()),
            ),
            (
                "hull_guest_load1",
                "The guest's 1-minute load average.",
                self.load1.map(|v| format!("{v:.2}")),
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let _ = write!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
                );
            }
        }
        out
    }
}

/// The resident-set field (the second) of /proc/self/statm, in pages.
fn resident_pages(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// A /proc/meminfo field in KiB.
fn meminfo_kib(meminfo: &str, key: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|size| u64::try_from(size).ok())
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_help_type_and_value_and_leaves_out_what_was_not_read() {
        let snapshot = Snapshot {
            uptime_secs: 1.5,
            resident_bytes: Some(4096),
            open_fds: None,
            memory_total_bytes: Some(256 << 20),
            memory_available_bytes: None,
            load1: Some(0.25),
        };
        let text = snapshot.to_prometheus();
        assert!(text.starts_with("# HELP hull_agent_build_info "), "{text}");
        assert!(text.contains(&format!(
            "hull_agent_build_info{{version=\"{}\",protocol=\"1\"}} 1\n",
            crate::VERSION
        )));
        assert!(text.contains(
            "# HELP hull_agent_uptime_seconds Seconds since the agent started serving.\n\
             # TYPE hull_agent_uptime_seconds gauge\nhull_agent_uptime_seconds 1.500\n"
        ));
        assert!(text.contains("\nhull_agent_resident_memory_bytes 4096\n"));
        assert!(text.contains("\nhull_guest_memory_total_bytes 268435456\n"));
        assert!(text.contains("\nhull_guest_load1 0.25\n"));
        assert!(!text.contains("hull_agent_open_fds"), "{text}");
        assert!(
            !text.contains("hull_guest_memory_available_bytes"),
            "{text}"
        );
    }

    #[test]
    fn reads_statm_and_meminfo_fields() {
        assert_eq!(resident_pages("1000 250 100 1 0 300 0\n"), Some(250));
        assert_eq!(resident_pages("1000"), None);
        let meminfo = "MemTotal: 100 kB\nMemAvailable:  60 kB\n";
        assert_eq!(meminfo_kib(meminfo, "MemAvailable:"), Some(60));
        assert_eq!(meminfo_kib(meminfo, "SwapTotal:"), None);
    }

    #[test]
    fn reading_this_process_finds_its_memory_and_fds() {
        let snapshot = Snapshot::read(Instant::now());
        assert!(
            snapshot.resident_bytes.is_some_and(|b| b > 0),
            "{snapshot:?}"
        );
        assert!(snapshot.open_fds.is_some_and(|n| n >= 3), "{snapshot:?}");
        assert!(
            snapshot.memory_total_bytes.is_some_and(|b| b > 0),
            "{snapshot:?}"
        );
    }
}
