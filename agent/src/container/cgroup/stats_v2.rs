//! StatsContainer's figures from a cgroup v2 directory, read straight from its interface
//! files.
//!
//! Why not libcgroups' `stats()` here: it fails as a whole when any file it reads is missing,
//! and a hull guest's kernel is minimal: without `CONFIG_PSI` there is no `cpu.pressure` or
//! `memory.pressure`, without `CONFIG_HUGETLBFS` no `/sys/kernel/mm/hugepages`, so every
//! call failed in a VM. Here each section is read when its controller's files are there
//! and left out (absent, not zero) when they are not; a file that is there but does not
//! parse is an error naming it. cgroup v1 (a host running the agent with `--listen`) keeps
//! libcgroups' reader.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use hull_agent_protocol::types::{
    CgroupStats, CpuStats, IoDeviceStats, IoStats, MemoryStats, PidsStats,
};

/// Why a cgroup v2 interface file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file is there but reading it failed.
    #[error("reading {file}: {source}")]
    Io {
        /// The file's name in the cgroup directory.
        file: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file's content is not in the format the kernel documents.
    #[error("{file}: {message}")]
    Malformed {
        /// The file's name in the cgroup directory.
        file: &'static str,
        /// What is wrong, with the offending text.
        message: String,
    },
}

/// Everything StatsContainer reports, from the cgroup v2 directory `dir`.
pub fn read(dir: &Path) -> Result<CgroupStats, ReadError> {
    let files = Files(dir);
    let mut out = CgroupStats::new();
    if let Some(text) = files.read("cpu.stat")? {
        out.cpu = Some(cpu(&text)?).into();
    }
    if let Some(usage) = files.read("memory.current")? {
        let mut memory = MemoryStats::new();
        memory.usage_bytes = single("memory.current", &usage)?.unwrap_or(0);
        if let Some(text) = files.read("memory.max")? {
            memory.limit_bytes = single("memory.max", &text)?.unwrap_or(0);
        }
        if let Some(text) = files.read("memory.peak")? {
            memory.max_usage_bytes = single("memory.peak", &text)?.unwrap_or(0);
        }
        if let Some(text) = files.read("memory.swap.current")? {
            memory.swap_usage_bytes = single("memory.swap.current", &text)?.unwrap_or(0);
        }
        if let Some(text) = files.read("memory.events")? {
            memory.oom_kills = flat_keyed("memory.events", &text)?
                .get("oom_kill")
                .copied()
                .unwrap_or(0);
        }
        if let Some(text) = files.read("memory.stat")? {
            memory.stat = flat_keyed("memory.stat", &text)?;
        }
        out.memory = Some(memory).into();
    }
    if let Some(current) = files.read("pids.current")? {
        let mut pids = PidsStats::new();
        pids.current = single("pids.current", &current)?.unwrap_or(0);
        if let Some(text) = files.read("pids.max")? {
            pids.limit = single("pids.max", &text)?.unwrap_or(0);
        }
        out.pids = Some(pids).into();
    }
    if let Some(text) = files.read("io.stat")? {
        let mut io = IoStats::new();
        io.devices = io_devices(&text)?;
        out.io = Some(io).into();
    }
    Ok(out)
}

/// A cgroup directory's interface files.
struct Files<'a>(&'a Path);

impl Files<'_> {
    /// The content of `file`, or `None` when it does not exist (its controller is not
    /// enabled for this cgroup, or the kernel lacks the feature).
    fn read(&self, file: &'static str) -> Result<Option<String>, ReadError> {
        match std::fs::read_to_string(self.0.join(file)) {
            Ok(text) => Ok(Some(text)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ReadError::Io { file, source }),
        }
    }
}

/// A single-value file: a number, or "max" (`None`, no limit).
fn single(file: &'static str, text: &str) -> Result<Option<u64>, ReadError> {
    match text.trim() {
        "max" => Ok(None),
        value => value.parse().map(Some).map_err(|_| ReadError::Malformed {
            file,
            message: format!("{value:?} is neither a number nor \"max\""),
        }),
    }
}

/// A flat keyed file: "key value" per line.
fn flat_keyed(file: &'static str, text: &str) -> Result<HashMap<String, u64>, ReadError> {
    let mut map = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let malformed = || ReadError::Malformed {
            file,
            message: format!("line {line:?} is not \"key value\""),
        };
        let mut fields = line.split_whitespace();
        let (Some(key), Some(value), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(malformed());
        };
        map.insert(key.to_owned(), value.parse().map_err(|_| malformed())?);
    }
    Ok(map)
}

/// cpu.stat. Without the cpu controller only the usage keys are there; the others stay 0.
fn cpu(text: &str) -> Result<CpuStats, ReadError> {
    let map = flat_keyed("cpu.stat", text)?;
    let get = |key: &str| map.get(key).copied().unwrap_or(0);
    let mut cpu = CpuStats::new();
    cpu.usage_usec = get("usage_usec");
    cpu.user_usec = get("user_usec");
    cpu.system_usec = get("system_usec");
    cpu.nr_periods = get("nr_periods");
    cpu.nr_throttled = get("nr_throttled");
    cpu.throttled_usec = get("throttled_usec");
    Ok(cpu)
}

/// io.stat: "MAJ:MIN key=value ..." per device. Keys other than the byte and operation
/// counts (dbytes, dios, and whatever later kernels add) are skipped.
fn io_devices(text: &str) -> Result<Vec<IoDeviceStats>, ReadError> {
    let mut devices = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let malformed = |what: &str| ReadError::Malformed {
            file: "io.stat",
            message: format!("line {line:?}: {what}"),
        };
        let mut fields = line.split_whitespace();
        let number = fields.next().unwrap_or_default();
        let (major, minor) = number
            .split_once(':')
            .and_then(|(major, minor)| Some((major.parse().ok()?, minor.parse().ok()?)))
            .ok_or_else(|| malformed("no MAJOR:MINOR device number"))?;
        let mut device = IoDeviceStats::new();
        device.major = major;
        device.minor = minor;
        for field in fields {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| malformed("a field is not key=value"))?;
            let value: u64 = value
                .parse()
                .map_err(|_| malformed("a value is not a number"))?;
            match key {
                "rbytes" => device.read_bytes = value,
                "wbytes" => device.write_bytes = value,
                "rios" => device.read_ios = value,
                "wios" => device.write_ios = value,
                _ => {}
            }
        }
        devices.push(device);
    }
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    fn write(dir: &Path, files: &[(&str, &str)]) {
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }

    #[test]
    fn reads_every_section_of_a_guest_cgroup_without_pressure_files() {
        let dir = tempfile::tempdir().unwrap();
        // A hull guest kernel: no cpu.pressure, memory.pressure or hugetlb files.
        write(
            dir.path(),
            &[
                (
                    "cpu.stat",
                    "usage_usec 5321\nuser_usec 3000\nsystem_usec 2321\nnr_periods 4\n\
                     nr_throttled 1\nthrottled_usec 77\n",
                ),
                ("memory.current", "397312\n"),
                ("memory.max", "67108864\n"),
                ("memory.swap.current", "0\n"),
                (
                    "memory.events",
                    "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\noom_group_kill 0\n",
                ),
                ("memory.stat", "anon 110592\nfile 4096\npgfault 1234\n"),
                ("pids.current", "2\n"),
                ("pids.max", "max\n"),
                (
                    "io.stat",
                    "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
                ),
            ],
        );
        let stats = read(dir.path()).unwrap();
        let cpu = stats.cpu.as_ref().expect("cpu section");
        assert_eq!(
            (cpu.usage_usec, cpu.user_usec, cpu.system_usec),
            (5321, 3000, 2321)
        );
        assert_eq!(
            (cpu.nr_periods, cpu.nr_throttled, cpu.throttled_usec),
            (4, 1, 77)
        );
        let memory = stats.memory.as_ref().expect("memory section");
        assert_eq!(memory.usage_bytes, 397_312);
        assert_eq!(memory.limit_bytes, 64 << 20);
        assert_eq!(memory.max_usage_bytes, 0, "no memory.peak before 5.19");
        assert_eq!(memory.oom_kills, 1);
        assert_eq!(memory.stat.get("pgfault"), Some(&1234));
        let pids = stats.pids.as_ref().expect("pids section");
        assert_eq!((pids.current, pids.limit), (2, 0));
        let io = stats.io.as_ref().expect("io section");
        assert_eq!(io.devices.len(), 1);
        let d = &io.devices[0];
        assert_eq!((d.major, d.minor), (254, 0));
        assert_eq!(
            (d.read_bytes, d.write_bytes, d.read_ios, d.write_ios),
            (4096, 8192, 1, 2)
        );
    }

    #[test]
    fn leaves_out_the_sections_of_controllers_that_are_not_enabled() {
        let dir = tempfile::tempdir().unwrap();
        // No controller enabled: only the core files and cpu.stat's usage keys.
        write(
            dir.path(),
            &[("cpu.stat", "usage_usec 10\nuser_usec 6\nsystem_usec 4\n")],
        );
        let stats = read(dir.path()).unwrap();
        let cpu = stats.cpu.as_ref().expect("cpu.stat is always there");
        assert_eq!((cpu.usage_usec, cpu.nr_periods), (10, 0));
        assert!(stats.memory.is_none());
        assert!(stats.pids.is_none());
        assert!(stats.io.is_none());
    }

    #[test]
    fn a_malformed_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &[("memory.current", "lots\n")]);
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("memory.current"), "{err}");
        assert!(err.contains("lots"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &[("io.stat", "254 rbytes=1\n")]);
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("io.stat"), "{err}");
        assert!(err.contains("MAJOR:MINOR"), "{err}");
    }

    proptest! {
        #[test]
        fn parsers_never_panic_on_arbitrary_text(text in "\\PC*") {
            let _ = single("f", &text);
            let _ = flat_keyed("f", &text);
            let _ = cpu(&text);
            let _ = io_devices(&text);
        }

        #[test]
        fn flat_keyed_reads_back_what_was_written(
            entries in proptest::collection::hash_map("[a-z_]{1,12}", any::<u64>(), 0..8)
        ) {
            let text: String = entries.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
            prop_assert_eq!(flat_keyed("f", &text).unwrap(), entries);
        }
    }
}
