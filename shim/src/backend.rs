//! A vhost-user device backend process (hull-vsock, hull-fs, hull-blk, hull-net) owned by a
//! sandbox: started with its socket path, ready once the socket exists, its stderr kept in a
//! log file, and stopped with SIGTERM (then SIGKILL) or killed when dropped.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

/// Errors of a backend process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// It could not be started.
    #[error("starting {program}")]
    Spawn {
        /// The binary.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It exited before its socket appeared; its log says why.
    #[error("{program} exited while starting ({status}): {log}")]
    Exited {
        /// The binary.
        program: PathBuf,
        /// Its exit status.
        status: ExitStatus,
        /// What it wrote to stderr.
        log: String,
    },
    /// Its socket did not appear in time.
    #[error("{program} did not create {socket} within {deadline:?}")]
    NotReady {
        /// The binary.
        program: PathBuf,
        /// The socket it was to create.
        socket: PathBuf,
        /// The bound.
        deadline: Duration,
    },
    /// Waiting for it failed.
    #[error("waiting for {program}")]
    Wait {
        /// The binary.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A `Result` with this module's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// A running backend. Dropping it kills the process.
#[derive(Debug)]
pub struct BackendProcess {
    program: PathBuf,
    child: Child,
    log: PathBuf,
}

impl BackendProcess {
    /// Starts `program args` with stderr in `log`, and returns once `socket` exists.
    /// It is SIGKILLed if the shim dies (see [`crate::parent_death`]).
    pub async fn start(
        program: &Path,
        args: &[&std::ffi::OsStr],
        socket: &Path,
        log: &Path,
        deadline: Duration,
    ) -> Result<Self> {
        Self::spawn(program, args, &[], socket, log, deadline, libc::SIGKILL).await
    }

    /// [`BackendProcess::start`] for a process that must clean up when the shim dies: it
    /// gets `signal` (SIGTERM for the host agent, which then removes its containers).
    pub async fn start_ending_with(
        program: &Path,
        args: &[&std::ffi::OsStr],
        socket: &Path,
        log: &Path,
        deadline: Duration,
        signal: libc::c_int,
    ) -> Result<Self> {
        Self::spawn(program, args, &[], socket, log, deadline, signal).await
    }

    /// [`BackendProcess::start`], the child inheriting the shim's open descriptors
    /// `inherited` under the same numbers (hull-net's `--tap-fd`); the shim keeps its copies.
    pub async fn start_inheriting(
        program: &Path,
        args: &[&std::ffi::OsStr],
        inherited: &[RawFd],
        socket: &Path,
        log: &Path,
        deadline: Duration,
    ) -> Result<Self> {
        Self::spawn(
            program,
            args,
            inherited,
            socket,
            log,
            deadline,
            libc::SIGKILL,
        )
        .await
    }

    async fn spawn(
        program: &Path,
        args: &[&std::ffi::OsStr],
        inherited: &[RawFd],
        socket: &Path,
        log: &Path,
        deadline: Duration,
        parent_death: libc::c_int,
    ) -> Result<Self> {
        let spawn_error = |source| Error::Spawn {
            program: program.to_owned(),
            source,
        };
        let stderr = std::fs::File::create(log).map_err(spawn_error)?;
        let mut command = Command::new(program);
        if !inherited.is_empty() {
            let inherited = inherited.to_vec();
            // SAFETY: the closure runs in the child between fork and exec and only calls
            // fcntl(2), which is async-signal-safe, on descriptors the parent holds open;
            // clearing FD_CLOEXEC there leaves the parent's descriptors as they are.
            unsafe {
                command.pre_exec(move || {
                    for fd in &inherited {
                        if libc::fcntl(*fd, libc::F_SETFD, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        crate::parent_death::die_with_parent(command.as_std_mut(), parent_death);
        let child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_error)?;
        let mut backend = Self {
            program: program.to_owned(),
            child,
            log: log.to_owned(),
        };
        let end = tokio::time::Instant::now() + deadline;
        while !socket.exists() {
            if let Some(status) = backend
                .child
                .try_wait()
                .map_err(|source| backend.wait_error(source))?
            {
                return Err(Error::Exited {
                    program: program.to_owned(),
                    status,
                    log: backend.log_text(),
                });
            }
            if tokio::time::Instant::now() >= end {
                return Err(Error::NotReady {
                    program: program.to_owned(),
                    socket: socket.to_owned(),
                    deadline,
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(backend)
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits until the process exits (it is reaped then), and says how. Cancel-safe: a
    /// caller racing it against something else may drop it and keep the process.
    pub async fn exited(&mut self) -> Result<ExitStatus> {
        let status = self.child.wait().await;
        status.map_err(|source| self.wait_error(source))
    }

    /// How the process ended, if it has (it is reaped then); `None` while it runs.
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// What the backend has written to stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    fn wait_error(&self, source: std::io::Error) -> Error {
        Error::Wait {
            program: self.program.clone(),
            source,
        }
    }

    /// Waits at most `grace` for the process to exit by itself, then kills it with SIGKILL:
    /// for a process that has nothing left to clean up.
    pub async fn kill_after(mut self, grace: Duration) -> Result<ExitStatus> {
        if let Ok(status) = tokio::time::timeout(grace, self.child.wait()).await {
            return status.map_err(|source| self.wait_error(source));
        }
        self.child
            .kill()
            .await
            .map_err(|source| self.wait_error(source))?;
        self.child
            .wait()
            .await
            .map_err(|source| self.wait_error(source))
    }

    /// Kills the process (SIGKILL) and reaps it; it has ended when this returns.
    pub async fn kill(&mut self) -> Result<()> {
        if self.try_exited().is_some() {
            return Ok(());
        }
        self.child
            .kill()
            .await
            .map_err(|source| self.wait_error(source))
    }

    /// Waits for the backend to exit by itself (it does when its frontend goes), at most
    /// `grace`, then stops it with SIGTERM and finally SIGKILL.
    pub async fn stop(mut self, grace: Duration) -> Result<ExitStatus> {
        if let Ok(status) = tokio::time::timeout(grace, self.child.wait()).await {
            return status.map_err(|source| self.wait_error(source));
        }
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) takes plain integers; the pid is our unreaped child's.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        if let Ok(status) = tokio::time::timeout(grace, self.child.wait()).await {
            return status.map_err(|source| self.wait_error(source));
        }
        tracing::warn!(program = %self.program.display(), "backend ignored SIGTERM; killing it");
        self.kill().await?;
        self.exited().await
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    /// Starts `sh -c script` as a backend whose "socket" is the file the script writes.
    async fn start_shell(
        dir: &Path,
        script: &str,
        inherited: &[RawFd],
    ) -> (BackendProcess, PathBuf) {
        let out = dir.join("out");
        let script = format!(
            "{{ {script}; }} > {}.tmp && mv {0}.tmp {0}; exec sleep 100",
            out.display()
        );
        let args: [&std::ffi::OsStr; 2] = ["-c".as_ref(), script.as_ref()];
        let backend = BackendProcess::start_inheriting(
            Path::new("/bin/sh"),
            &args,
            inherited,
            &out,
            &dir.join("log"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        (backend, out)
    }

    #[tokio::test]
    async fn inherited_descriptors_keep_their_numbers_in_the_backend_and_others_do_not_leak() {
        let dir = tempfile::tempdir().unwrap();
        let passed = std::fs::File::open(dir.path()).unwrap();
        let kept = std::fs::File::open("/dev/null").unwrap();
        let (fd, other) = (passed.as_raw_fd(), kept.as_raw_fd());
        let script =
            format!("readlink /proc/self/fd/{fd}; readlink /proc/self/fd/{other} || echo closed");
        let (backend, out) = start_shell(dir.path(), &script, &[fd]).await;
        let seen = std::fs::read_to_string(&out).unwrap();
        assert_eq!(
            seen.lines().collect::<Vec<_>>(),
            [dir.path().to_str().unwrap(), "closed"],
            "{seen}"
        );
        // The shim's own copy stays close-on-exec.
        // SAFETY: F_GETFD only reads the flags of a descriptor this test holds open.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        let status = backend.kill_after(Duration::ZERO).await.unwrap();
        assert!(!status.success());
    }
}
