//! Sweeping what earlier test runs left behind when they were killed before their cleanup
//! ran (a SIGKILLed `cargo test`, a CI timeout): their temp directories (`hull-containerd-*`
//! of [`crate::containerd`]), the containerd, shims, QEMU and backends still running for them,
//! and their mounts.
//!
//! A run claims each directory it makes ([`claim`]: its pid and that process's start time in
//! [`OWNER_FILE`]). [`sweep`] looks only at directories with such a file whose owner is dead
//! (no process with that pid and start time): a directory without one may be another run's
//! being made, or one of a harness that does not claim, and is never touched.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The file in a claimed directory naming its owner: `<pid> <start time>`.
pub const OWNER_FILE: &str = ".hull-test-owner";

/// Where the shims' run directories are (`hull_shim::paths::RUN_ROOT`); a stale run's
/// sandbox record may name mounts and paths only below it.
const RUN_ROOT: &str = "/run/hull";

/// The start time of process `pid` (field 22 of /proc/PID/stat), `None` if there is none.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Marks `dir` as this process's own, so that a later run sweeps it only after this process
/// is gone.
pub fn claim(dir: &Path) -> std::io::Result<()> {
    let pid = std::process::id();
    let started = i32::try_from(pid)
        .ok()
        .and_then(start_time)
        .ok_or_else(|| std::io::Error::other("reading this process's start time"))?;
    std::fs::write(dir.join(OWNER_FILE), format!("{pid} {started}\n"))
}

/// Whether the owner `dir`'s [`OWNER_FILE`] names is gone; `None` if the directory names no
/// owner (unclaimed, or its file is not one this harness wrote).
pub fn owner_is_dead(dir: &Path) -> Option<bool> {
    let text = std::fs::read_to_string(dir.join(OWNER_FILE)).ok()?;
    let mut fields = text.split_whitespace();
    let pid: i32 = fields.next()?.parse().ok()?;
    let started: u64 = fields.next()?.parse().ok()?;
    if fields.next().is_some() || pid <= 0 {
        return None;
    }
    Some(start_time(pid) != Some(started))
}

/// Every live process whose command line mentions `needle`, and all their descendants.
fn processes_of(needle: &str) -> BTreeSet<i32> {
    let mut parents = Vec::new();
    let mut found = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(needle) {
                found.insert(pid);
            }
        }
        if let Some(parent) = crate::leftovers::parent_of(pid) {
            parents.push((pid, parent));
        }
    }
    // Descendants (QEMU and the backends are the shims' children): until nothing is added.
    loop {
        let before = found.len();
        for &(pid, parent) in &parents {
            if found.contains(&parent) {
                found.insert(pid);
            }
        }
        if found.len() == before {
            return found;
        }
    }
}

/// The sandbox records (`hull-sandbox.json`) below `dir`, at most a few levels deep (they are
/// in containerd's bundles, `state/io.containerd.runtime.v2.task/<ns>/<id>/`).
fn sandbox_records(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() && depth > 0 {
            sandbox_records(&path, depth - 1, out);
        } else if kind.is_file() && entry.file_name() == "hull-sandbox.json" {
            out.push(path);
        }
    }
}

/// The mounts and paths a sandbox record lists below [`RUN_ROOT`]; nothing else is trusted
/// (the record is a file a dead run left).
fn record_targets(text: &str) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let Ok(record) = serde_json::from_str::<serde_json::Value>(text) else {
        return (Vec::new(), Vec::new());
    };
    let list = |key: &str| -> Vec<PathBuf> {
        record[key]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|item| item.as_str())
                    .map(PathBuf::from)
                    .filter(|p| {
                        p.starts_with(RUN_ROOT)
                            && p.components().count() > 4
                            && !p
                                .components()
                                .any(|c| matches!(c, std::path::Component::ParentDir))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    (list("mounts"), list("paths"))
}

/// Unmounts (detached) every mount at or below `dir`, deepest first.
pub fn unmount_below(dir: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut targets: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|t| Path::new(t).starts_with(dir))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for target in targets {
        let Ok(c) = std::ffi::CString::new(target) else {
            continue;
        };
        // SAFETY: umount2 reads a NUL-terminated path that outlives the call.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Sweeps the directories in `parent` whose names start with `prefix` and whose owner (see
/// [`claim`]) is dead: kills every process whose command line names the directory and their
/// descendants (containerd, its shims, their QEMU and backends), releases the mounts and run
/// directories the shims' records list, unmounts what is mounted below the directory and
/// removes it. Answers the directories swept.
pub fn sweep(parent: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut swept = Vec::new();
    let Ok(entries) = std::fs::read_dir(parent) else {
        return swept;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir || !name.to_string_lossy().starts_with(prefix) {
            continue;
        }
        let dir = entry.path();
        if owner_is_dead(&dir) != Some(true) {
            continue;
        }
        // With the trailing slash: `hull-containerd-ab` must not match `hull-containerd-abc`.
        for pid in processes_of(&format!("{}/", dir.display())) {
            // SAFETY: kill(2) takes plain integers; the pid was read from /proc just now and
            // names a process of the dead run (or at worst one gone since: ESRCH).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let mut records = Vec::new();
        sandbox_records(&dir, 6, &mut records);
        for record in records {
            let (mounts, paths) =
                record_targets(&std::fs::read_to_string(&record).unwrap_or_default());
            for mount in mounts {
                unmount_below(&mount);
            }
            for path in paths {
                unmount_below(&path);
                let _ = std::fs::remove_dir_all(&path);
            }
        }
        unmount_below(&dir);
        if std::fs::remove_dir_all(&dir).is_ok() {
            swept.push(dir);
        }
    }
    swept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_directory_is_alive_while_its_owner_runs() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(owner_is_dead(dir.path()), None, "unclaimed");
        claim(dir.path()).unwrap();
        assert_eq!(owner_is_dead(dir.path()), Some(false));
        // Same pid, another start time: the pid was reused, the owner is gone.
        std::fs::write(
            dir.path().join(OWNER_FILE),
            format!("{} 1\n", std::process::id()),
        )
        .unwrap();
        assert_eq!(owner_is_dead(dir.path()), Some(true));
        std::fs::write(dir.path().join(OWNER_FILE), "junk").unwrap();
        assert_eq!(owner_is_dead(dir.path()), None);
    }

    #[test]
    fn records_name_only_paths_below_run_hull() {
        let (mounts, paths) = record_targets(
            r#"{"mounts":["/run/hull/ns/p/shared","/","/etc","/run/hull/../etc/x"],
                "paths":["/run/hull/ns/p","/run/hull/ns",7]}"#,
        );
        assert_eq!(mounts, [PathBuf::from("/run/hull/ns/p/shared")]);
        assert_eq!(paths, [PathBuf::from("/run/hull/ns/p")]);
        assert_eq!(record_targets("not json"), (Vec::new(), Vec::new()));
    }
}
