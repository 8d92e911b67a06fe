//! The agent's cgroup statistics (cgroup v2, read in the sandbox) as containerd's
//! `io.containerd.cgroups.v2.Metrics`, which `ctr task metrics` and CRI decode.

use containerd_shim_protos::cgroups_v2::metrics::{
    CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim_protos::protobuf::MessageField;
use hull_agent_protocol::types::CgroupStats;

/// containerd's metrics from the agent's statistics. Absent sections stay absent.
pub fn to_containerd(stats: &CgroupStats) -> Metrics {
    let mut metrics = Metrics::new();
    if let Some(cpu) = stats.cpu.as_ref() {
        metrics.cpu = MessageField::some(CPUStat {
            usage_usec: cpu.usage_usec,
            user_usec: cpu.user_usec,
            system_usec: cpu.system_usec,
            nr_periods: cpu.nr_periods,
            nr_throttled: cpu.nr_throttled,
            throttled_usec: cpu.throttled_usec,
            ..Default::default()
        });
    }
    if let Some(memory) = stats.memory.as_ref() {
        let stat = |key: &str| memory.stat.get(key).copied().unwrap_or(0);
        metrics.memory = MessageField::some(MemoryStat {
            anon: stat("anon"),
            file: stat("file"),
            kernel_stack: stat("kernel_stack"),
            slab: stat("slab"),
            sock: stat("sock"),
            shmem: stat("shmem"),
            file_mapped: stat("file_mapped"),
            file_dirty: stat("file_dirty"),
            file_writeback: stat("file_writeback"),
            anon_thp: stat("anon_thp"),
            inactive_anon: stat("inactive_anon"),
            active_anon: stat("active_anon"),
            inactive_file: stat("inactive_file"),
            active_file: stat("active_file"),
            unevictable: stat("unevictable"),
            slab_reclaimable: stat("slab_reclaimable"),
            slab_unreclaimable: stat("slab_unreclaimable"),
            pgfault: stat("pgfault"),
            pgmajfault: stat("pgmajfault"),
            workingset_refault: stat("workingset_refault"),
            workingset_activate: stat("workingset_activate"),
            workingset_nodereclaim: stat("workingset_nodereclaim"),
            pgrefill: stat("pgrefill"),
            pgscan: stat("pgscan"),
            pgsteal: stat("pgsteal"),
            pgactivate: stat("pgactivate"),
            pgdeactivate: stat("pgdeactivate"),
            pglazyfree: stat("pglazyfree"),
            pglazyfreed: stat("pglazyfreed"),
            thp_fault_alloc: stat("thp_fault_alloc"),
            thp_collapse_alloc: stat("thp_collapse_alloc"),
            usage: memory.usage_bytes,
            usage_limit: memory.limit_bytes,
            swap_usage: memory.swap_usage_bytes,
            max_usage: memory.max_usage_bytes,
            ..Default::default()
        });
        metrics.memory_events = MessageField::some(MemoryEvents {
            oom_kill: memory.oom_kills,
            ..Default::default()
        });
    }
    if let Some(pids) = stats.pids.as_ref() {
        metrics.pids = MessageField::some(PidsStat {
            current: pids.current,
            limit: pids.limit,
            ..Default::default()
        });
    }
    if let Some(io) = stats.io.as_ref() {
        metrics.io = MessageField::some(IOStat {
            usage: io
                .devices
                .iter()
                .map(|d| IOEntry {
                    major: u64::from(d.major),
                    minor: u64::from(d.minor),
                    rbytes: d.read_bytes,
                    wbytes: d.write_bytes,
                    rios: d.read_ios,
                    wios: d.write_ios,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
    }
    metrics
}

#[cfg(test)]
mod tests {
    use containerd_shim_protos::protobuf::MessageFull;
    use hull_agent_protocol::types::{CpuStats, IoDeviceStats, IoStats, MemoryStats, PidsStats};

    use super::*;

    #[test]
    fn agent_statistics_land_in_containerds_fields() {
        let mut stats = CgroupStats::new();
        stats.cpu = MessageField::some(CpuStats {
            usage_usec: 1500,
            user_usec: 1000,
            system_usec: 500,
            ..Default::default()
        });
        let mut memory = MemoryStats {
            usage_bytes: 4096,
            limit_bytes: 1 << 20,
            oom_kills: 2,
            ..Default::default()
        };
        memory.stat.insert("anon".into(), 1234);
        stats.memory = MessageField::some(memory);
        stats.pids = MessageField::some(PidsStats {
            current: 3,
            limit: 100,
            ..Default::default()
        });
        stats.io = MessageField::some(IoStats {
            devices: vec![IoDeviceStats {
                major: 254,
                minor: 1,
                read_bytes: 10,
                write_bytes: 20,
                ..Default::default()
            }],
            ..Default::default()
        });
        let metrics = to_containerd(&stats);
        assert_eq!(metrics.cpu.usage_usec, 1500);
        assert_eq!(metrics.memory.usage, 4096);
        assert_eq!(metrics.memory.usage_limit, 1 << 20);
        assert_eq!(metrics.memory.anon, 1234);
        assert_eq!(metrics.memory_events.oom_kill, 2);
        assert_eq!(metrics.pids.current, 3);
        assert_eq!(metrics.io.usage[0].major, 254);
        assert_eq!(metrics.io.usage[0].wbytes, 20);
        // The type containerd decodes the Any by.
        assert_eq!(
            Metrics::descriptor().full_name(),
            "io.containerd.cgroups.v2.Metrics"
        );
    }

    #[test]
    fn missing_sections_stay_missing() {
        let metrics = to_containerd(&CgroupStats::new());
        assert!(metrics.cpu.is_none() && metrics.memory.is_none() && metrics.io.is_none());
    }
}
