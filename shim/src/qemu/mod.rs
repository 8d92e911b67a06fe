//! The `qemu` hypervisor backend: one child `qemu-system-x86_64` per pod, KVM where the host
//! has hardware virtualization and TCG otherwise, with guest memory in a shared memfd so the
//! vhost-user backends can serve its devices.
//!
//! Owns the QEMU process from spawn to reaping, its per-VM run directory (QMP socket, console
//! log, QEMU's stderr), and control through QMP. It does not start the device backends or
//! talk to the agent: the sandbox does, with the sockets it puts in the [`VmSpec`].

pub mod command;
pub mod qmp;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

pub use command::Accel;
pub use qmp::{Qmp, QmpError};

use crate::config::QemuMachine;
use crate::run_dir::RunDir;
use crate::vm_spec::{VmDevice, VmSpec};

/// How long QEMU may take to answer on QMP after it is spawned.
const QMP_DEADLINE: Duration = Duration::from_secs(30);

/// Errors of the QEMU backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The run directory could not be made.
    #[error("creating the VM run directory {path}")]
    RunDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// QEMU could not be started at all.
    #[error("starting {binary}")]
    Spawn {
        /// The QEMU binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// QEMU exited while starting; its own message says why.
    #[error("QEMU exited while starting the VM ({status}): {stderr}")]
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// QEMU did not open its QMP socket in time.
    #[error("QEMU did not answer on {qmp} within {deadline:?}")]
    NoQmp {
        /// The socket.
        qmp: PathBuf,
        /// The bound.
        deadline: Duration,
    },
    /// The spec has a device QEMU cannot serve.
    #[error("QEMU cannot {0}")]
    Unsupported(&'static str),
    /// A QMP command failed.
    #[error(transparent)]
    Qmp(#[from] QmpError),
    /// Waiting for QEMU failed.
    #[error("waiting for QEMU (pid {pid:?})")]
    Wait {
        /// Its pid.
        pid: Option<u32>,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A `Result` with this module's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Which QEMU, and how it runs guests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuOptions {
    /// The binary.
    pub binary: PathBuf,
    /// Machine type.
    pub machine: QemuMachine,
    /// Accelerator.
    pub accel: Accel,
}

/// A running QEMU VM. Dropping it kills QEMU and removes its run directory; [`QemuVm::stop`]
/// is the orderly way.
#[derive(Debug)]
pub struct QemuVm {
    child: Child,
    qmp: Qmp,
    pid: Option<u32>,
    run_dir: RunDir,
}

impl QemuVm {
    /// Starts QEMU for `spec` with its files in `run_dir` (created 0700, must not exist) and
    /// returns once QEMU answers on QMP. The guest is then booting.
    pub async fn start(spec: &VmSpec, options: &QemuOptions, run_dir: &Path) -> Result<Self> {
        if spec
            .devices
            .iter()
            .any(|d| matches!(d, crate::vm_spec::VmDevice::HybridVsock { .. }))
        {
            return Err(Error::Unsupported(
                "serve a hybrid vsock itself: its vsock is hull-vsock's (vhost-user)",
            ));
        }
        let run_dir = RunDir::create(run_dir).map_err(|source| Error::RunDir {
            path: run_dir.to_owned(),
            source,
        })?;
        let stderr_path = run_dir.path().join("qemu.stderr");
        let stderr = run_dir
            .file("qemu.stderr")
            .map_err(|(path, source)| Error::RunDir { path, source })?;
        let args = command::arguments(spec, options.machine, options.accel, run_dir.path());
        tracing::info!(vm = %spec.id, binary = %options.binary.display(), accel = ?options.accel, "starting QEMU");
        tracing::debug!(?args, "QEMU arguments");
        // Tap descriptors are inherited by QEMU under the numbers its arguments name.
        let inherited: Vec<std::os::fd::RawFd> = spec
            .devices
            .iter()
            .flat_map(|device| match device {
                VmDevice::Tap { fds, .. } => fds.clone(),
                _ => Vec::new(),
            })
            .collect();
        let mut command = Command::new(&options.binary);
        // SAFETY: the closure runs in the child between fork and exec and only calls umask(2)
        // and fcntl(2), which are async-signal-safe, the latter on descriptors the parent
        // holds open.
        unsafe {
            command.pre_exec(move || {
                // QEMU's QMP socket and console log: the shim's alone (0600).
                libc::umask(0o077);
                for fd in &inherited {
                    if libc::fcntl(*fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        // QEMU does not outlive the shim (see crate::parent_death).
        crate::parent_death::die_with_parent(command.as_std_mut(), libc::SIGKILL);
        let mut child = command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| Error::Spawn {
                binary: options.binary.clone(),
                source,
            })?;
        let pid = child.id();

        let qmp_path = run_dir.path().join("qmp.sock");
        let deadline = tokio::time::Instant::now() + QMP_DEADLINE;
        let qmp = loop {
            if let Some(status) = child
                .try_wait()
                .map_err(|source| Error::Wait { pid, source })?
            {
                let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
                return Err(Error::Exited {
                    status,
                    stderr: stderr.trim().to_owned(),
                });
            }
            if qmp_path.exists() {
                match Qmp::connect(&qmp_path).await {
                    Ok(qmp) => break qmp,
                    Err(QmpError::Io { .. }) => {}
                    Err(err) => return Err(err.into()),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::NoQmp {
                    qmp: qmp_path,
                    deadline: QMP_DEADLINE,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        Ok(Self {
            child,
            qmp,
            pid,
            run_dir,
        })
    }

    /// QEMU's process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The file the guest's serial console is written to.
    pub fn console_log(&self) -> PathBuf {
        self.run_dir.path().join("console.log")
    }

    /// The VM's run state as QEMU reports it (`running`, `paused`, ...).
    pub async fn status(&mut self) -> Result<String> {
        Ok(self.qmp.status().await?)
    }

    /// Stops the vCPUs; the guest's memory and devices stay as they are.
    pub async fn pause(&mut self) -> Result<()> {
        self.qmp.execute("stop", None).await?;
        Ok(())
    }

    /// Resumes the vCPUs after [`QemuVm::pause`].
    pub async fn resume(&mut self) -> Result<()> {
        self.qmp.execute("cont", None).await?;
        Ok(())
    }

    /// Kills QEMU (SIGKILL) and reaps it, for a boot that failed: it has ended when this
    /// returns (dropping it only sends the signal).
    pub async fn kill(&mut self) -> Result<()> {
        let pid = self.pid;
        self.child
            .kill()
            .await
            .map_err(|source| Error::Wait { pid, source })
    }

    /// Waits until QEMU exits by itself (the guest stopped, or QEMU died). Cancel-safe.
    pub async fn wait(&mut self) -> Result<ExitStatus> {
        let pid = self.pid;
        self.child
            .wait()
            .await
            .map_err(|source| Error::Wait { pid, source })
    }

    /// Asks QEMU to quit, and kills it if it has not exited within `grace`. Returns once it
    /// is reaped and its run directory removed.
    pub async fn stop(mut self, grace: Duration) -> Result<ExitStatus> {
        // QEMU may exit before it answers `quit`: a closed socket here is success.
        if let Err(err) = self.qmp.execute("quit", None).await {
            tracing::debug!(%err, "QMP quit");
        }
        let pid = self.pid;
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.map_err(|source| Error::Wait { pid, source }),
            Err(_) => {
                tracing::warn!(?pid, ?grace, "QEMU did not quit in time; killing it");
                self.kill().await?;
                self.wait().await
            }
        }
    }
}
