//! The host cgroups of the containers that the `none` hypervisor's agent runs on the host,
//! so that they can be emptied and removed when the agent cannot do it: it was SIGKILLed, or
//! died, and its containers' processes ran on with nothing left to end them (a VM takes its
//! containers with it; a host agent does not). Found by the fault matrix's "agent killed
//! while running/exec/paused" rows, which found `sleep` processes, cgroups and the agent's
//! state directory left after `ctr task delete`.
//!
//! Only `none` needs this; the paths are recorded in the sandbox's record before the agent
//! is asked to create the container ([`super::persist::SandboxRecord::host_cgroups`]).

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// Where cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How long the processes of a cgroup have to leave it once killed.
const EMPTY_DEADLINE: Duration = Duration::from_secs(5);

/// The cgroup the host agent puts container `id` in, as it decides it (hull-agent's
/// `cgroups_path`): the spec's absolute `linux.cgroupsPath`, or `/hull/<id>` when there is
/// none or a systemd-style one. `None` where the agent refuses the spec (it makes no cgroup
/// then) or the path would be a hierarchy's root.
pub fn container_cgroup(spec: &serde_json::Value, id: &str) -> Option<PathBuf> {
    let default = || PathBuf::from(format!("/hull/{id}"));
    let path = match spec.get("linux").and_then(|l| l.get("cgroupsPath")) {
        None | Some(serde_json::Value::Null) => default(),
        Some(serde_json::Value::String(path))
            if !path.starts_with('/') && path.matches(':').count() == 2 =>
        {
            default()
        }
        Some(serde_json::Value::String(path)) => PathBuf::from(path),
        Some(_) => return None,
    };
    is_container_cgroup(&path).then_some(path)
}

/// Whether `path` may name a container's cgroup: absolute, below a hierarchy's root (never
/// the root itself: emptying it would kill the host), without `..`.
pub fn is_container_cgroup(path: &Path) -> bool {
    path.is_absolute()
        && path
            .components()
            .all(|c| !matches!(c, Component::ParentDir))
        && path.components().any(|c| matches!(c, Component::Normal(_)))
}

/// The directories of cgroup `path` in every hierarchy mounted under `root` (cgroup v2: the
/// unified root; v1: one per controller), that exist.
fn cgroup_dirs(root: &Path, path: &Path) -> Vec<PathBuf> {
    let Ok(relative) = path.strip_prefix("/") else {
        return Vec::new();
    };
    let hierarchies: Vec<PathBuf> = if root.join("cgroup.procs").exists() {
        vec![root.to_owned()]
    } else {
        std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("cgroup.procs").exists())
            .collect()
    };
    hierarchies
        .into_iter()
        .map(|h| h.join(relative))
        .filter(|d| d.is_dir())
        .collect()
}

/// `dir` and every cgroup below it, deepest first.
fn with_descendants(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![dir.to_owned()];
    let mut index = 0;
    while let Some(current) = all.get(index).cloned() {
        if let Ok(entries) = std::fs::read_dir(&current) {
            all.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        index += 1;
    }
    all.reverse();
    all
}

/// The pids listed in `dir`'s `cgroup.procs`.
fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|pid| *pid > 0)
        .collect()
}

/// Kills every process in cgroup `path` (in every hierarchy) and removes it. Answers whether
/// there was anything to remove; an error names what stays.
pub fn release(path: &Path) -> Result<bool, String> {
    release_under(Path::new(CGROUP_ROOT), path)
}

fn release_under(root: &Path, path: &Path) -> Result<bool, String> {
    if !is_container_cgroup(path) {
        return Err(format!(
            "{} is not a container's cgroup path: left alone",
            path.display()
        ));
    }
    let dirs = cgroup_dirs(root, path);
    if dirs.is_empty() {
        return Ok(false);
    }
    // Written only where the kernel offers the file (writing elsewhere would create one).
    let write = |file: PathBuf, value: &str| {
        if file.is_file() {
            let _ = std::fs::write(file, value);
        }
    };
    for dir in &dirs {
        for cgroup in with_descendants(dir) {
            // Frozen (a paused container) processes do not die of SIGKILL until thawed.
            write(cgroup.join("freezer.state"), "THAWED");
            write(cgroup.join("cgroup.freeze"), "0");
        }
        // cgroup v2 kills the whole subtree at once where the kernel has it.
        write(dir.join("cgroup.kill"), "1");
    }
    let deadline = Instant::now() + EMPTY_DEADLINE;
    loop {
        let mut busy = Vec::new();
        for dir in &dirs {
            for cgroup in with_descendants(dir) {
                for pid in procs(&cgroup) {
                    // SAFETY: kill(2) takes plain integers; the pid is listed in the
                    // container's own cgroup, which only its processes are in.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                match std::fs::remove_dir(&cgroup) {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => busy.push(format!("{}: {err}", cgroup.display())),
                }
            }
        }
        if busy.is_empty() {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Err(format!("removing cgroups {}", busy.join(", ")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup_is_the_agents_choice() {
        let none = serde_json::json!({"linux": {}});
        assert_eq!(
            container_cgroup(&none, "c1"),
            Some(PathBuf::from("/hull/c1"))
        );
        let given = serde_json::json!({"linux": {"cgroupsPath": "/hull-test/c1"}});
        assert_eq!(
            container_cgroup(&given, "c1"),
            Some(PathBuf::from("/hull-test/c1"))
        );
        let systemd = serde_json::json!({"linux": {"cgroupsPath": "pod.slice:cri:c1"}});
        assert_eq!(
            container_cgroup(&systemd, "c1"),
            Some(PathBuf::from("/hull/c1"))
        );
        for bad in [
            serde_json::json!({"linux": {"cgroupsPath": "/"}}),
            serde_json::json!({"linux": {"cgroupsPath": "/a/../.."}}),
            serde_json::json!({"linux": {"cgroupsPath": 7}}),
        ] {
            assert_eq!(container_cgroup(&bad, "c1"), None, "{bad}");
        }
    }

    #[test]
    fn a_hierarchy_root_is_never_released() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.procs"), "1\n").unwrap();
        assert!(release_under(root.path(), Path::new("/")).is_err());
        assert!(root.path().exists());
    }

    /// A fake v1 layout (plain directories: removing them works as rmdir on a cgroup does
    /// once it is empty): the container's directory goes in every hierarchy, with its
    /// children, and the hierarchy and its other cgroups stay.
    #[test]
    fn a_container_cgroup_goes_in_every_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        for hierarchy in ["pids", "memory"] {
            let h = root.path().join(hierarchy);
            std::fs::create_dir_all(h.join("ns/c1/child")).unwrap();
            std::fs::create_dir_all(h.join("ns/c2")).unwrap();
            std::fs::write(h.join("cgroup.procs"), "").unwrap();
        }
        assert_eq!(release_under(root.path(), Path::new("/ns/c1")), Ok(true));
        for hierarchy in ["pids", "memory"] {
            let h = root.path().join(hierarchy);
            assert!(!h.join("ns/c1").exists());
            assert!(h.join("ns/c2").exists());
        }
        assert_eq!(release_under(root.path(), Path::new("/ns/c1")), Ok(false));
    }
}
