//! What hull-fs's integration tests share: a hull-fs process that is always stopped and
//! reaped, even when the test fails.

#![allow(dead_code)] // Each test binary uses a different part.

pub mod fuse;
pub mod vhost_guest;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A bound for hull-fs to create its socket or exit on a loaded machine, not a timing
/// expectation.
pub const PROCESS_BOUND: Duration = Duration::from_secs(60);

/// A running `hull-fs`, its stderr going to a file. Dropping it sends SIGTERM, then SIGKILL
/// if it does not exit, and reaps it.
pub struct HullFs {
    child: Option<Child>,
    /// Where its log goes.
    pub log: PathBuf,
    /// Its vhost-user socket.
    pub socket: PathBuf,
}

impl HullFs {
    /// Starts hull-fs on `socket` serving `shared_dir`, with `extra` arguments, logging into
    /// `log`.
    pub fn start(socket: &Path, shared_dir: &Path, extra: &[&str], log: &Path) -> Self {
        Self::start_under(&[], socket, shared_dir, extra, log)
    }

    /// Like [`HullFs::start`], run through `wrapper` (a program and its arguments that execs
    /// the rest of its command line, e.g. `setpriv --reuid=...`).
    pub fn start_under(
        wrapper: &[&str],
        socket: &Path,
        shared_dir: &Path,
        extra: &[&str],
        log: &Path,
    ) -> Self {
        let stderr = File::create(log).expect("hull-fs log file can be created");
        let hull_fs = env!("CARGO_BIN_EXE_hull-fs");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(hull_fs);
                command
            }
            None => Command::new(hull_fs),
        };
        let child = command
            .arg("--socket-path")
            .arg(socket)
            .arg("--shared-dir")
            .arg(shared_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("hull-fs starts");
        Self {
            child: Some(child),
            log: log.to_owned(),
            socket: socket.to_owned(),
        }
    }

    /// The process id of the supervisor.
    pub fn pid(&self) -> i32 {
        let child = self.child.as_ref().expect("hull-fs not yet reaped");
        i32::try_from(child.id()).expect("pids fit in i32")
    }

    /// Waits until the socket exists, or panics with the log.
    pub fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + PROCESS_BOUND;
        while !self.socket.exists() {
            if let Some(status) = self.try_wait() {
                panic!(
                    "hull-fs exited with {status} before listening:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no socket after {PROCESS_BOUND:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to the supervisor.
    pub fn signal(&self, signal: i32) {
        let pid = self.pid();
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet (self.child is
        // Some), so the pid cannot have been reused.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "signalling hull-fs");
    }

    /// Waits for hull-fs to exit by itself, at most `bound`; panics with its log if not.
    pub fn wait(&mut self, bound: Duration) -> ExitStatus {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "hull-fs still running after {bound:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = child.try_wait().expect("waitpid on hull-fs")?;
        self.child = None;
        Some(status)
    }

    /// Waits until the log contains `text`, or panics with the log.
    pub fn wait_for_log(&mut self, text: &str) {
        let deadline = Instant::now() + PROCESS_BOUND;
        while !self.log_text().contains(text) {
            if let Some(status) = self.try_wait() {
                panic!(
                    "hull-fs exited with {status} before logging {text:?}:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {text:?} after {PROCESS_BOUND:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for HullFs {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) on our unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Pids of live processes whose command line mentions `needle` (a unique socket path).
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Zombies are gone for our purposes once reaped; a zombie still counts.
            !stat.is_empty() && String::from_utf8_lossy(&cmdline).contains(needle)
        })
        .collect()
}
