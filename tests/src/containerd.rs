//! A private containerd for tests: its own root, state and sockets under a temp directory,
//! driven with `ctr`. Dropping it kills and removes every task and container it ran, stops
//! containerd, and unmounts whatever it left mounted, so a failing test leaves nothing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::prereq::{find_program, Missing};

/// The namespace tests run in.
pub const NAMESPACE: &str = "hull-test";

/// Errors of the test containerd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or process operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// containerd did not come up.
    #[error("containerd did not answer within {0:?}; its log:\n{1}")]
    NotReady(Duration, String),
    /// A ctr command failed.
    #[error("ctr {args} failed ({status}):\n{output}")]
    Ctr {
        /// The arguments.
        args: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed.
        output: String,
    },
}

/// A running private containerd.
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
    ctr: PathBuf,
    path_env: std::ffi::OsString,
}

impl Containerd {
    /// Starts containerd with `extra_path` ahead of PATH (where it finds runtime shims).
    pub fn start(extra_path: &[PathBuf]) -> Result<Result<Self, Error>, Missing> {
        let containerd = find_program("containerd", "containerd")?;
        let ctr = find_program("ctr", "containerd")?;
        find_program("runc", "runc")?;
        Ok(Self::spawn(&containerd, ctr, extra_path))
    }

    fn spawn(containerd: &Path, ctr: PathBuf, extra_path: &[PathBuf]) -> Result<Self, Error> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| Error::Io { what, source }
        };
        let dir = tempfile::Builder::new()
            .prefix("hull-containerd-")
            .tempdir()
            .map_err(io("creating a temp dir"))?;
        let d = dir.path().display();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
             [debug]\n  level = \"debug\"\n"
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).map_err(io("writing containerd's config"))?;
        let log = std::fs::File::create(dir.path().join("containerd.log"))
            .map_err(io("creating the log"))?;
        let log_err = log.try_clone().map_err(io("duplicating the log"))?;
        let mut paths: Vec<PathBuf> = extra_path.to_vec();
        paths.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        let path_env = std::env::join_paths(paths).map_err(|e| Error::Io {
            what: "joining PATH".into(),
            source: std::io::Error::other(e),
        })?;
        let child = Command::new(containerd)
            .arg("--config")
            .arg(&config_path)
            .env("PATH", &path_env)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(io("starting containerd"))?;
        let containerd = Self {
            dir,
            child,
            ctr,
            path_env,
        };
        let bound = Duration::from_secs(60);
        let deadline = Instant::now() + bound;
        while containerd.ctr(&["version"]).is_err() {
            if Instant::now() >= deadline {
                return Err(Error::NotReady(bound, containerd.log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(containerd)
    }

    /// containerd's gRPC socket.
    pub fn address(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// containerd's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// A `ctr` command against this containerd, in [`NAMESPACE`].
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg("--address")
            .arg(self.address())
            .args(["--namespace", NAMESPACE])
            .args(args);
        cmd.env("PATH", &self.path_env).stdin(Stdio::null());
        cmd
    }

    /// Runs `ctr` and returns its output, or an error with everything it printed.
    pub fn ctr(&self, args: &[&str]) -> Result<Output, Error> {
        let output = self
            .ctr_command(args)
            .output()
            .map_err(|source| Error::Io {
                what: format!("running ctr {}", args.join(" ")),
                source,
            })?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(Error::Ctr {
                args: args.join(" "),
                status: output.status,
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            })
        }
    }

    /// Imports an OCI archive.
    pub fn import(&self, archive: &Path) -> Result<(), Error> {
        let archive = archive.to_str().ok_or_else(|| Error::Io {
            what: format!("image archive path {archive:?}"),
            source: std::io::Error::other("not UTF-8"),
        })?;
        self.ctr(&["images", "import", archive]).map(drop)
    }

    /// Names of the containers and tasks that exist now, for leak checks.
    pub fn leftovers(&self) -> (Vec<String>, Vec<String>) {
        let names = |args: &[&str]| {
            self.ctr(args)
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        (
            names(&["containers", "ls", "-q"]),
            names(&["tasks", "ls", "-q"]),
        )
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let (containers, tasks) = self.leftovers();
        for task in &tasks {
            let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", task]);
            let _ = self.ctr(&["tasks", "delete", "-f", task]);
        }
        for container in &containers {
            let _ = self.ctr(&["containers", "delete", container]);
        }
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet; at worst ESRCH.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        unmount_below(self.dir.path());
    }
}

/// Unmounts everything mounted at or below `dir`, deepest first.
fn unmount_below(dir: &Path) {
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
