//! A container's cgroup, through youki's libcgroups: stats, freezer, resources, processes,
//! OOM kills. The manager is chosen by what is mounted at /sys/fs/cgroup (libcgroups detects
//! it): cgroup v2 in a hull guest; v1 (legacy or hybrid) on a host running the agent with
//! `--listen`. Both are served fully; the few figures that differ between them are converted
//! here to the protocol's units (microseconds, bytes). Statistics of a v2 cgroup are read by
//! `stats_v2` rather than libcgroups (which fails on a minimal guest kernel; see there).
//!
//! Not enforced in a guest: the spec's device rules (`linux.resources.devices`). cgroup v2
//! enforces them with an eBPF program, which libcgroups loads only with its
//! `cgroupsv2_devices` feature, built on the C library libbpf; the static agent does without,
//! and the VM stays the isolation boundary (on a v1 host the devices controller applies them).

use std::fs;
use std::path::{Path, PathBuf};

use hull_agent_protocol::types::{
    CgroupStats, CpuStats, IoDeviceStats, IoStats, MemoryStats, PidsStats,
};
use libcgroups::common::{
    create_cgroup_manager, get_cgroup_setup, AnyCgroupManager, CgroupConfig, CgroupManager,
    CgroupSetup, ControllerOpt, FreezerState, DEFAULT_CGROUP_ROOT,
};
use libcontainer::oci_spec::runtime::LinuxResources;

mod stats_v2;

/// Why a cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cgroup setup could not be detected or the manager not made.
    #[error("opening cgroup {path}: {message}")]
    Open {
        /// The cgroup path.
        path: String,
        /// The cause.
        message: String,
    },
    /// An operation on it failed.
    #[error("{what} of cgroup {path}: {message}")]
    Op {
        /// What.
        what: &'static str,
        /// The cgroup path.
        path: String,
        /// The cause.
        message: String,
    },
}

/// One container's cgroup.
pub struct Cgroup {
    path: PathBuf,
    setup: CgroupSetup,
    manager: AnyCgroupManager,
}

impl std::fmt::Debug for Cgroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cgroup")
            .field("path", &self.path)
            .field("setup", &self.setup.to_string())
            .finish()
    }
}

/// Microseconds per USER_HZ tick of cgroup v1's cpuacct.stat (USER_HZ is 100 on Linux).
const USEC_PER_TICK: u64 = 10_000;

impl Cgroup {
    /// The cgroup at `path` (the spec's `linux.cgroupsPath`), which libcontainer created.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let open_error = |message: String| Error::Open {
            path: path.display().to_string(),
            message,
        };
        let setup = get_cgroup_setup().map_err(|err| open_error(err.to_string()))?;
        let manager = create_cgroup_manager(CgroupConfig {
            cgroup_path: path.to_owned(),
            systemd_cgroup: false,
            container_name: String::new(),
        })
        .map_err(|err| open_error(err.to_string()))?;
        Ok(Cgroup {
            path: path.to_owned(),
            setup,
            manager,
        })
    }

    fn op_error(&self, what: &'static str) -> impl FnOnce(String) -> Error + '_ {
        move |message| Error::Op {
            what,
            path: self.path.display().to_string(),
            message,
        }
    }

    /// Every PID in the cgroup.
    pub fn pids(&self) -> Result<Vec<i32>, Error> {
        self.manager
            .get_all_pids()
            .map(|pids| pids.into_iter().map(|pid| pid.as_raw()).collect())
            .map_err(|err| self.op_error("listing the processes")(err.to_string()))
    }

    /// Freezes (`true`) or thaws the cgroup.
    pub fn freeze(&self, frozen: bool) -> Result<(), Error> {
        let state = if frozen {
            FreezerState::Frozen
        } else {
            FreezerState::Thawed
        };
        self.manager
            .freeze(state)
            .map_err(|err| self.op_error("freezing")(err.to_string()))
    }

    /// Applies cpu, memory and pids resources (the others in `resources` too, where the
    /// controller is there).
    pub fn update(&self, resources: &LinuxResources) -> Result<(), Error> {
        let options = ControllerOpt {
            resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        };
        self.manager
            .apply(&options)
            .map_err(|err| self.op_error("updating the resources")(err.to_string()))
    }

    /// Removes the cgroup (it must be empty).
    pub fn remove(&self) -> Result<(), Error> {
        self.manager
            .remove()
            .map_err(|err| self.op_error("removing")(err.to_string()))
    }

    /// How many times the kernel's OOM killer killed a process of this cgroup: `oom_kill` of
    /// memory.events (v2) or memory.oom_control (v1). 0 if the file is missing.
    pub fn oom_kills(&self) -> u64 {
        let relative = self.path.strip_prefix("/").unwrap_or(&self.path);
        let file = match self.setup {
            CgroupSetup::Unified => Path::new(DEFAULT_CGROUP_ROOT)
                .join(relative)
                .join("memory.events"),
            CgroupSetup::Legacy | CgroupSetup::Hybrid => Path::new(DEFAULT_CGROUP_ROOT)
                .join("memory")
                .join(relative)
                .join("memory.oom_control"),
        };
        fs::read_to_string(file)
            .ok()
            .and_then(|text| keyed_value(&text, "oom_kill"))
            .unwrap_or(0)
    }

    /// Everything StatsContainer reports. On cgroup v2, a section whose controller is not
    /// enabled in the cgroup is absent.
    pub fn stats(&self) -> Result<CgroupStats, Error> {
        if matches!(self.setup, CgroupSetup::Unified) {
            let relative = self.path.strip_prefix("/").unwrap_or(&self.path);
            let dir = Path::new(DEFAULT_CGROUP_ROOT).join(relative);
            return stats_v2::read(&dir)
                .map_err(|err| self.op_error("reading the statistics")(err.to_string()));
        }
        let stats = self
            .manager
            .stats()
            .map_err(|err| self.op_error("reading the statistics")(err.to_string()))?;
        let v1 = !matches!(self.setup, CgroupSetup::Unified);

        let mut cpu = CpuStats::new();
        let usage = &stats.cpu.usage;
        let throttling = &stats.cpu.throttling;
        if v1 {
            // cpuacct.usage and cpu.stat's throttled_time are nanoseconds; cpuacct.stat ticks.
            cpu.usage_usec = usage.usage_total / 1000;
            cpu.user_usec = usage.usage_user.saturating_mul(USEC_PER_TICK);
            cpu.system_usec = usage.usage_kernel.saturating_mul(USEC_PER_TICK);
            cpu.throttled_usec = throttling.throttled_time / 1000;
        } else {
            cpu.usage_usec = usage.usage_total;
            cpu.user_usec = usage.usage_user;
            cpu.system_usec = usage.usage_kernel;
            cpu.throttled_usec = throttling.throttled_time;
        }
        cpu.nr_periods = throttling.periods;
        cpu.nr_throttled = throttling.throttled_periods;

        let mut memory = MemoryStats::new();
        memory.usage_bytes = stats.memory.memory.usage;
        // No limit reads as u64::MAX (v2 "max") or a page-rounded huge value (v1).
        memory.limit_bytes = match stats.memory.memory.limit {
            limit if limit >= i64::MAX as u64 / 2 => 0,
            limit => limit,
        };
        memory.max_usage_bytes = stats.memory.memory.max_usage;
        memory.swap_usage_bytes = if v1 {
            // v1's memsw counts memory and swap together.
            stats
                .memory
                .memswap
                .usage
                .saturating_sub(stats.memory.memory.usage)
        } else {
            stats.memory.memswap.usage
        };
        memory.oom_kills = self.oom_kills();
        memory.stat = stats
            .memory
            .stats
            .iter()
            .map(|(key, value)| (key.clone(), *value))
            .collect();

        let mut pids = PidsStats::new();
        pids.current = stats.pids.current;
        pids.limit = stats.pids.limit;

        let mut io = IoStats::new();
        let mut devices: Vec<IoDeviceStats> = Vec::new();
        let mut device = |major: u64, minor: u64| -> usize {
            let (major, minor) = (
                u32::try_from(major).unwrap_or(u32::MAX),
                u32::try_from(minor).unwrap_or(u32::MAX),
            );
            if let Some(i) = devices
                .iter()
                .position(|d| d.major == major && d.minor == minor)
            {
                return i;
            }
            let mut d = IoDeviceStats::new();
            d.major = major;
            d.minor = minor;
            devices.push(d);
            devices.len() - 1
        };
        let mut entries = Vec::new();
        for stat in &stats.blkio.service_bytes {
            entries.push((true, stat));
        }
        for stat in &stats.blkio.serviced {
            entries.push((false, stat));
        }
        let mut updates = Vec::new();
        for (bytes, stat) in entries {
            let op = stat
                .op_type
                .as_deref()
                .unwrap_or_default()
                .to_ascii_lowercase();
            let index = device(stat.major, stat.minor);
            updates.push((index, bytes, op, stat.value));
        }
        for (index, bytes, op, value) in updates {
            let Some(d) = devices.get_mut(index) else {
                continue;
            };
            match (bytes, op.as_str()) {
                (true, "read") => d.read_bytes = value,
                (true, "write") => d.write_bytes = value,
                (false, "read") => d.read_ios = value,
                (false, "write") => d.write_ios = value,
                _ => {}
            }
        }
        io.devices = devices;

        let mut out = CgroupStats::new();
        out.cpu = Some(cpu).into();
        out.memory = Some(memory).into();
        out.pids = Some(pids).into();
        out.io = Some(io).into();
        Ok(out)
    }
}

/// The value of `key` in a flat keyed file ("key value" per line).
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_keyed_values() {
        let events = "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\n";
        assert_eq!(keyed_value(events, "oom_kill"), Some(1));
        assert_eq!(keyed_value(events, "oom"), Some(2));
        assert_eq!(
            keyed_value("oom_kill_disable 0\nunder_oom 0\n", "oom_kill"),
            None
        );
    }
}
