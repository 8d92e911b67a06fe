//! The processes a run starts (hull-agent, hull-blk, qemu-storage-daemon): started with their
//! stderr in a log file, waited for until their socket appears, and stopped (SIGTERM, then
//! SIGKILL) and reaped when dropped, on every path out of a run.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{Error, Result};

/// How long a server may take to create its socket, and to exit after SIGTERM.
const BOUND: Duration = Duration::from_secs(30);

/// A server process owned by the run.
pub struct Server {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Server {
    /// Starts `program` with `args`, its stderr and stdout in `log`, and waits until
    /// `socket` exists.
    pub fn start<S: AsRef<OsStr>>(
        name: &str,
        program: &Path,
        args: &[S],
        socket: &Path,
        log: &Path,
    ) -> Result<Self> {
        let io_error = |what: String| move |source| Error::Io { what, source };
        let log_file = std::fs::File::create(log)
            .map_err(io_error(format!("creating the log {}", log.display())))?;
        let log_out = log_file
            .try_clone()
            .map_err(io_error(format!("duplicating the log {}", log.display())))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_out)
            .stderr(log_file)
            .spawn()
            .map_err(io_error(format!("starting {name} ({})", program.display())))?;
        let mut server = Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        };
        let deadline = Instant::now() + BOUND;
        while !socket.exists() {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(Error::ServerExited {
                    name: server.name.clone(),
                    status: status.to_string(),
                    log: server.log_text(),
                });
            }
            if Instant::now() > deadline {
                return Err(Error::ServerExited {
                    name: server.name.clone(),
                    status: format!("no socket {} after {BOUND:?}", socket.display()),
                    log: server.log_text(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(server)
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user + system, all its threads) it has used so far.
    pub fn cpu_time(&self) -> Option<Duration> {
        cpu_time(self.child.id())
    }
}

/// CPU time (user + system, all threads) process `pid` has used, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).and_then(|ticks| {
        let per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .and_then(|t| u64::try_from(t).ok())
            .filter(|t| *t > 0)?;
        Some(Duration::from_secs_f64(ticks as f64 / per_sec as f64))
    })
}

/// utime + stime, in clock ticks, of a /proc/PID/stat line. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its last ')'.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

impl Drop for Server {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// Asks `child` to stop (SIGTERM), kills it if it has not within 5 s, and reaps it.
pub(crate) fn terminate(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// A temporary directory of the run (sockets, logs, the test file), removed when dropped.
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// A fresh directory named after `purpose` under `parent`.
    pub fn new(parent: &Path, purpose: &str) -> Result<Self> {
        let path = parent.join(format!("hull-bench-{purpose}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(|source| Error::Io {
            what: format!("creating {}", path.display()),
            source,
        })?;
        Ok(Self { path })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Finds a program: `explicit` if given, else beside this executable (a cargo target
/// directory holds hull-bench with hull-agent and hull-blk), else on PATH.
pub fn find_program(name: &str, explicit: Option<&Path>, fix: &str) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_owned())
        } else {
            Err(Error::MissingProgram {
                name: path.display().to_string(),
                fix: fix.to_owned(),
            })
        };
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)));
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .collect()
        })
        .unwrap_or_default();
    beside
        .into_iter()
        .chain(on_path)
        .find(|p| p.is_file())
        .ok_or_else(|| Error::MissingProgram {
            name: name.to_owned(),
            fix: fix.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_utime_plus_stime_whatever_the_name() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(12));
        assert_eq!(parse_cpu_ticks("42 (x) S 1"), None);
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn cpu_time_of_this_process_is_readable() {
        assert!(cpu_time(std::process::id()).is_some());
    }
}
