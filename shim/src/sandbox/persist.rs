//! What a sandbox owns on the host — processes, mounts, files — written to disk as it is
//! acquired, so that whoever finds the record (a `shim delete` after the shim died, or the
//! shim itself at shutdown) can release all of it.
//!
//! Processes are recorded with their start time (field 22 of /proc/PID/stat): cleanup kills a
//! PID only if it still names the same process, never one the kernel has reused.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The record's format version; a record of another version is refused, not guessed at.
pub const FORMAT_VERSION: u32 = 1;

/// Longest record accepted, in bytes: a record is small, and a huge file is not one.
const MAX_RECORD: u64 = 1 << 20;

/// Errors of the persisted record.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the record failed.
    #[error("sandbox state {path}")]
    Io {
        /// The record file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The record is not one this shim can read.
    #[error("sandbox state {path} is not a valid record: {reason}")]
    Invalid {
        /// The record file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A `Result` with this module's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// A process the sandbox started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedProcess {
    /// What it is (`qemu`, `hull-fs`, ...), for messages.
    pub role: String,
    /// Its pid.
    pub pid: i32,
    /// Its start time in clock ticks after boot, from /proc/PID/stat.
    pub start_time: u64,
    /// Whether cleanup asks it to stop first (SIGTERM, then SIGKILL after
    /// [`GRACEFUL_STOP`]): the host agent of the `none` hypervisor removes its containers on
    /// SIGTERM, which SIGKILL would leave running on the host.
    #[serde(default)]
    pub graceful: bool,
}

/// How long a graceful process has between SIGTERM and SIGKILL.
pub const GRACEFUL_STOP: Duration = Duration::from_secs(3);

impl OwnedProcess {
    /// Records a running process by pid; `None` if it does not exist.
    pub fn of(role: &str, pid: i32) -> Option<Self> {
        Some(Self {
            role: role.to_owned(),
            pid,
            start_time: process_start_time(pid)?,
            graceful: false,
        })
    }
}

/// Everything a sandbox owns on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// The sandbox id.
    pub sandbox_id: String,
    /// Processes, killed in reverse order (the VM before its backends).
    pub processes: Vec<OwnedProcess>,
    /// Host mount points the shim made, unmounted deepest first.
    pub mounts: Vec<PathBuf>,
    /// Files, sockets and directories the shim made, removed after the mounts.
    pub paths: Vec<PathBuf>,
    /// The pod network's filters on the pod's interfaces, removed after the processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::network::RecordedNetwork>,
    /// Host cgroups of the containers the `none` hypervisor's agent runs on the host: emptied
    /// and removed after the processes (a killed agent leaves its containers running).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_cgroups: Vec<PathBuf>,
}

/// What a cleanup did, and what it could not do.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanupReport {
    /// Processes killed (role, pid).
    pub killed: Vec<(String, i32)>,
    /// Recorded processes already gone or replaced by another process with the same pid.
    pub already_gone: Vec<(String, i32)>,
    /// Mount points unmounted.
    pub unmounted: Vec<PathBuf>,
    /// Paths removed.
    pub removed: Vec<PathBuf>,
    /// What failed, one line each.
    pub errors: Vec<String>,
}

impl SandboxRecord {
    /// An empty record for `sandbox_id`.
    pub fn new(sandbox_id: &str) -> Self {
        Self {
            version: FORMAT_VERSION,
            sandbox_id: sandbox_id.to_owned(),
            processes: Vec::new(),
            mounts: Vec::new(),
            paths: Vec::new(),
            network: None,
            host_cgroups: Vec::new(),
        }
    }

    /// Writes the record atomically: a crash leaves the old record or the new, never half.
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        let json = serde_json::to_vec_pretty(self).map_err(|e| Error::Invalid {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let tmp = path.with_extension("tmp");
        let mut file = fs::File::create(&tmp).map_err(io)?;
        file.write_all(&json).map_err(io)?;
        file.sync_all().map_err(io)?;
        fs::rename(&tmp, path).map_err(io)
    }

    /// Reads a record.
    pub fn load(path: &Path) -> Result<Self> {
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        let len = fs::metadata(path).map_err(io)?.len();
        if len > MAX_RECORD {
            return Err(Error::Invalid {
                path: path.to_owned(),
                reason: format!("{len} bytes is too large"),
            });
        }
        let bytes = fs::read(path).map_err(io)?;
        let record: Self = serde_json::from_slice(&bytes).map_err(|e| Error::Invalid {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        if record.version != FORMAT_VERSION {
            return Err(Error::Invalid {
                path: path.to_owned(),
                reason: format!(
                    "format version {} (this shim reads {FORMAT_VERSION})",
                    record.version
                ),
            });
        }
        Ok(record)
    }

    /// Releases everything recorded: kills the processes, unmounts, removes the paths.
    /// Idempotent: what is already gone is reported as such, not as an error.
    pub fn cleanup(&self) -> CleanupReport {
        let mut report = CleanupReport::default();
        let own_pid = i32::try_from(std::process::id()).ok();
        for process in self.processes.iter().rev() {
            // The serving shim records itself (for a `shim delete` run by containerd); its
            // own cleanup leaves it to end by itself.
            if Some(process.pid) == own_pid {
                continue;
            }
            let id = (process.role.clone(), process.pid);
            if process_start_time(process.pid) != Some(process.start_time) {
                report.already_gone.push(id);
                continue;
            }
            if process.graceful {
                // SAFETY: kill(2) takes plain integers; the pid was checked above to still
                // name the recorded process (same start time).
                if unsafe { libc::kill(process.pid, libc::SIGTERM) } == 0
                    && wait_gone(process, GRACEFUL_STOP)
                {
                    report.killed.push(id);
                    continue;
                }
            }
            // SAFETY: kill(2) takes plain integers; the pid was checked above to still name
            // the recorded process (same start time).
            if unsafe { libc::kill(process.pid, libc::SIGKILL) } != 0 {
                let err = std::io::Error::last_os_error();
                report.errors.push(format!(
                    "killing {} (pid {}): {err}",
                    process.role, process.pid
                ));
                continue;
            }
            if wait_gone(process, Duration::from_secs(5)) {
                report.killed.push(id);
            } else {
                report.errors.push(format!(
                    "{} (pid {}) survived SIGKILL for 5s",
                    process.role, process.pid
                ));
            }
        }
        for cgroup in &self.host_cgroups {
            match super::host_cgroups::release(cgroup) {
                Ok(true) => report.removed.push(cgroup.clone()),
                Ok(false) => {}
                Err(err) => report
                    .errors
                    .push(format!("the container cgroup {}: {err}", cgroup.display())),
            }
        }
        if let Some(network) = &self.network {
            if let Err(err) = crate::network::release(network) {
                report.errors.push(format!(
                    "removing the pod network's filters in {}: {err}",
                    network.netns.display()
                ));
            }
        }
        let mut mounts = self.mounts.clone();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for mount in mounts {
            match unmount(&mount) {
                Ok(true) => report.unmounted.push(mount),
                Ok(false) => {}
                Err(err) => report
                    .errors
                    .push(format!("unmounting {}: {err}", mount.display())),
            }
        }
        for path in &self.paths {
            let result = match fs::symlink_metadata(path) {
                Ok(meta) if meta.is_dir() => fs::remove_dir_all(path).map(|()| true),
                Ok(_) => fs::remove_file(path).map(|()| true),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(err) => Err(err),
            };
            match result {
                Ok(true) => report.removed.push(path.clone()),
                Ok(false) => {}
                Err(err) => report
                    .errors
                    .push(format!("removing {}: {err}", path.display())),
            }
            // A namespace's directory under /run/hull goes with its last sandbox, also when
            // this sandbox's own directory was never made (a start that failed before it:
            // the namespace's directory may have been made for it all the same).
            if let Some(namespace) = namespace_dir_of(path) {
                match remove_if_empty(namespace) {
                    Ok(true) => report.removed.push(namespace.to_owned()),
                    Ok(false) => {}
                    Err(err) => report
                        .errors
                        .push(format!("removing {}: {err}", namespace.display())),
                }
            }
        }
        report
    }
}

/// The namespace directory (`/run/hull/<namespace>`) that holds sandbox run directory
/// `run_dir`, if `run_dir` is one ([`crate::paths::sandbox_run_dir`]).
pub fn namespace_dir_of(run_dir: &Path) -> Option<&Path> {
    let namespace = run_dir.parent()?;
    (namespace.parent() == Some(Path::new(crate::paths::RUN_ROOT))).then_some(namespace)
}

/// Removes directory `dir` if it is empty, answering whether it did. A directory that is not
/// empty (another sandbox of the namespace runs or starts) or already gone is left alone:
/// rmdir(2) checks and removes in one step, so this never races with a sandbox's start (which
/// creates its directory with [`create_run_dir`], retrying if the parent just went).
pub fn remove_if_empty(dir: &Path) -> std::io::Result<bool> {
    match fs::remove_dir(dir) {
        Ok(()) => Ok(true),
        Err(err)
            if matches!(
                err.raw_os_error(),
                Some(libc::ENOTEMPTY | libc::EEXIST | libc::ENOENT)
            ) =>
        {
            Ok(false)
        }
        Err(err) => Err(err),
    }
}

/// Creates run directory `dir` (mode 0700; it must not exist) and its parents. The parent, a
/// namespace's directory, may be removed by the last sandbox of the namespace at any moment
/// ([`remove_if_empty`]): creating `dir` then fails with ENOENT, and is tried again.
pub fn create_run_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let mut tries = 0;
    loop {
        // Each retry needs the namespace's last sandbox to go again in between: a bound only
        // against a livelock, never reached by real sandboxes.
        let retry = tries < 100;
        if let Some(parent) = dir.parent() {
            match fs::create_dir_all(parent) {
                // create_dir_all saw the parent exist (EEXIST), then it went before its check.
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && retry => {
                    tries += 1;
                    continue;
                }
                other => other?,
            }
        }
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && retry => tries += 1,
            other => return other,
        }
    }
}

/// A process's start time, in clock ticks after boot (field 22 of /proc/PID/stat), or `None`
/// if there is no such process or it is a zombie.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: parse after it.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // `rest` starts at field 3 (state); the start time is field 22.
    fields.nth(22 - 4)?.parse().ok()
}

fn wait_gone(process: &OwnedProcess, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    while process_start_time(process.pid) == Some(process.start_time) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Unmounts `target` (lazily, so a busy mount still leaves the namespace). `Ok(false)` if it
/// was not mounted.
fn unmount(target: &Path) -> std::io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(target.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: umount2 reads a NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(false),
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn start_time_identifies_a_live_process() {
        let mut child = Command::new("sleep").arg("100").spawn().unwrap();
        let pid = child.id() as i32;
        let start = process_start_time(pid).expect("a live process has a start time");
        assert_eq!(process_start_time(pid), Some(start), "stable while it runs");
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(process_start_time(pid), None);
    }

    #[test]
    fn save_and_load_round_trip_and_refuse_other_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sandbox.json");
        let mut record = SandboxRecord::new("pod-1");
        record.processes.push(OwnedProcess {
            role: "qemu".into(),
            pid: 42,
            start_time: 7,
            graceful: true,
        });
        record.paths.push(dir.path().join("run"));
        record.save(&path).unwrap();
        assert_eq!(SandboxRecord::load(&path).unwrap(), record);

        record.version = 99;
        record.save(&path).unwrap();
        let err = SandboxRecord::load(&path).unwrap_err().to_string();
        assert!(err.contains("format version 99"), "{err}");
        fs::write(&path, b"{\"version\": 1").unwrap();
        assert!(matches!(
            SandboxRecord::load(&path),
            Err(Error::Invalid { .. })
        ));
    }

    #[test]
    fn cleanup_kills_recorded_processes_and_removes_paths_then_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("sleep").arg("100").spawn().unwrap();
        let pid = child.id() as i32;
        let run = dir.path().join("run");
        fs::create_dir_all(run.join("nested")).unwrap();
        let sock = dir.path().join("vsock.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let mut record = SandboxRecord::new("pod-1");
        record
            .processes
            .push(OwnedProcess::of("hull-fs", pid).unwrap());
        record.paths.extend([run.clone(), sock.clone()]);

        // Reap the child concurrently, as the kernel would for an orphan after a shim crash.
        let reaper = std::thread::spawn(move || child.wait());
        let report = record.cleanup();
        reaper.join().unwrap().unwrap();
        assert_eq!(report.killed, [("hull-fs".to_owned(), pid)]);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(!run.exists() && !sock.exists());

        let again = record.cleanup();
        assert!(again.killed.is_empty() && again.removed.is_empty() && again.errors.is_empty());
        assert_eq!(again.already_gone, [("hull-fs".to_owned(), pid)]);
    }

    #[test]
    fn cleanup_never_kills_a_process_that_reused_the_pid() {
        let mut child = Command::new("sleep").arg("100").spawn().unwrap();
        let pid = child.id() as i32;
        let real = process_start_time(pid).unwrap();
        let mut record = SandboxRecord::new("pod-1");
        record.processes.push(OwnedProcess {
            role: "qemu".into(),
            pid,
            start_time: real + 1,
            graceful: false,
        });
        let report = record.cleanup();
        assert_eq!(report.already_gone.len(), 1);
        assert_eq!(
            process_start_time(pid),
            Some(real),
            "the other process must live"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn cleanup_unmounts_deepest_first() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            let missing = hull_tests::prereq::Missing::hardware("root", "run the tests as root");
            hull_tests::prereq::skip("cleanup_unmounts_deepest_first", &missing);
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let outer = dir.path().join("outer");
        let inner = outer.join("inner");
        fs::create_dir_all(&outer).unwrap();
        mount_tmpfs(&outer);
        fs::create_dir_all(&inner).unwrap();
        mount_tmpfs(&inner);
        let mut record = SandboxRecord::new("pod-1");
        record.mounts.extend([outer.clone(), inner.clone()]);
        let report = record.cleanup();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.unmounted, [inner, outer.clone()]);
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mountinfo.contains(outer.to_str().unwrap()),
            "still mounted"
        );
    }

    fn mount_tmpfs(target: &Path) {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(target)
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[test]
    fn a_graceful_process_gets_sigterm_first() {
        use std::os::unix::process::ExitStatusExt;
        let mut child = Command::new("sleep").arg("100").spawn().unwrap();
        let pid = child.id() as i32;
        let mut process = OwnedProcess::of("hull-agent", pid).unwrap();
        process.graceful = true;
        let mut record = SandboxRecord::new("pod-1");
        record.processes.push(process);
        // Reaped by a thread: cleanup waits for the pid to be gone, not for a zombie.
        let waiter = std::thread::spawn(move || child.wait().unwrap());
        let report = record.cleanup();
        assert_eq!(report.killed, [("hull-agent".to_owned(), pid)]);
        assert_eq!(waiter.join().unwrap().signal(), Some(libc::SIGTERM));
    }

    #[test]
    fn records_without_the_graceful_field_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sandbox.json");
        std::fs::write(
            &path,
            r#"{"version":1,"sandbox_id":"p","processes":[{"role":"qemu","pid":1,"start_time":2}],"mounts":[],"paths":[]}"#,
        )
        .unwrap();
        assert!(!SandboxRecord::load(&path).unwrap().processes[0].graceful);
    }

    proptest::proptest! {
        /// Any bytes as a record: an error or a record, never a panic.
        #[test]
        fn arbitrary_records_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("sandbox.json");
            fs::write(&path, &bytes).unwrap();
            let _ = SandboxRecord::load(&path);
        }
    }

    #[test]
    fn cleanup_removes_the_namespace_directory_even_if_the_run_directory_was_never_made() {
        // The real /run/hull, under a namespace of this test's own.
        let namespace = Path::new(crate::paths::RUN_ROOT)
            .join(format!("hull-unit-cleanup-{}", std::process::id()));
        if let Err(err) = fs::create_dir_all(&namespace) {
            eprintln!(
                "SKIPPED: creating {} needs root: {err}",
                namespace.display()
            );
            return;
        }
        // Removed whatever the outcome, so a failure leaves nothing in /run/hull.
        struct Gone<'a>(&'a Path);
        impl Drop for Gone<'_> {
            fn drop(&mut self) {
                let _ = fs::remove_dir_all(self.0);
            }
        }
        let _gone = Gone(&namespace);
        // A start that failed before making its run directory (the namespace's was made
        // for it), beside another sandbox of the namespace that still runs.
        let mut failed = SandboxRecord::new("pod-failed");
        failed.paths.push(namespace.join("pod-failed"));
        let running = namespace.join("pod-running");
        fs::create_dir(&running).unwrap();
        let report = failed.cleanup();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(namespace.is_dir(), "another sandbox of the namespace runs");

        fs::remove_dir(&running).unwrap();
        let report = failed.cleanup();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.removed, std::slice::from_ref(&namespace));
        assert!(!namespace.exists(), "the empty namespace directory is left");
    }

    #[test]
    fn only_run_directories_under_run_hull_have_a_namespace_directory() {
        let run_dir = crate::paths::sandbox_run_dir("k8s.io", "pod-1");
        assert_eq!(
            namespace_dir_of(&run_dir),
            Some(Path::new("/run/hull/k8s.io"))
        );
        assert_eq!(namespace_dir_of(Path::new("/tmp/x/pod-1")), None);
        assert_eq!(namespace_dir_of(Path::new("/run/hull/k8s.io")), None);
        assert_eq!(namespace_dir_of(Path::new("/")), None);
    }

    #[test]
    fn a_directory_is_removed_only_when_empty() {
        let dir = tempfile::tempdir().unwrap();
        let namespace = dir.path().join("ns");
        create_run_dir(&namespace.join("a")).unwrap();
        create_run_dir(&namespace.join("b")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(namespace.join("a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(
            create_run_dir(&namespace.join("a")).is_err(),
            "it must not exist"
        );
        fs::remove_dir(namespace.join("a")).unwrap();
        assert!(!remove_if_empty(&namespace).unwrap(), "b is still there");
        assert!(namespace.is_dir());
        fs::remove_dir(namespace.join("b")).unwrap();
        assert!(remove_if_empty(&namespace).unwrap());
        assert!(!namespace.exists());
        assert!(!remove_if_empty(&namespace).unwrap(), "gone already");
        let file = dir.path().join("file");
        fs::write(&file, "").unwrap();
        assert!(remove_if_empty(&file).is_err(), "not a directory");
    }

    #[test]
    fn a_run_directory_is_made_even_while_its_namespace_directory_comes_and_goes() {
        let dir = tempfile::tempdir().unwrap();
        let namespace = dir.path().join("ns");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let remover = {
            let (namespace, stop) = (namespace.clone(), stop.clone());
            std::thread::spawn(move || {
                // As often as sandboxes could end, and far more: a remover spinning without a
                // pause starves the creator on a loaded 2-core machine and says nothing.
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = remove_if_empty(&namespace);
                    std::thread::sleep(std::time::Duration::from_micros(20));
                }
            })
        };
        for i in 0..200 {
            let run_dir = namespace.join(format!("pod-{i}"));
            create_run_dir(&run_dir).unwrap();
            assert!(run_dir.is_dir());
            fs::remove_dir(&run_dir).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        remover.join().unwrap();
    }
}
