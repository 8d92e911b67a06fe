//! `hull-fs`: a vhost-user-fs backend that serves one pod's shared directory to its guest and
//! nothing else.
//!
//! The file system itself (FUSE decoding, the passthrough file system, the vhost-user-fs
//! device) is upstream virtiofsd used as a library; README.md says what is reused and why.
//! hull adds the process life cycle (a supervisor that owns the socket and signals, a worker
//! that is confined before it serves) and its choices of confinement, including a check of
//! every name the guest sends (`name_guard`), and counters of the guest's requests that the
//! supervisor serves on `--metrics-socket` (`metrics`).
//!
//! Process picture, in the default namespace sandbox:
//! ```text
//! hull-fs (supervisor: socket, pid file, signals, exit status, metrics socket)
//!   └─ worker (own process group; waits for the server, exits with its status)
//!        └─ server (pid 1 of new pid/mount/net namespaces, root = shared dir, seccomp,
//!                   reduced capabilities; serves the vhost-user connection)
//! ```

#![warn(clippy::cast_possible_truncation)]

pub mod config;
pub mod metrics;
pub mod name_guard;
pub mod sandbox;
pub mod serve;
pub mod supervisor;

use std::path::PathBuf;

pub use config::{CachePolicy, Config, SandboxMode};
pub use serve::Shutdown;
pub use supervisor::{run, Outcome};

/// What can stop hull-fs from serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The shared directory is missing or not a directory.
    #[error("shared directory {path} is not a directory")]
    SharedDir {
        /// The directory given.
        path: PathBuf,
    },
    /// Another process holds the pid file.
    #[error("pid file {path} is locked: another hull-fs serves this socket")]
    PidFileLocked {
        /// `<socket>.pid`.
        path: PathBuf,
    },
    /// The pid file cannot be written.
    #[error("cannot write pid file {path}")]
    PidFile {
        /// `<socket>.pid`.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The metrics socket cannot be served.
    #[error("cannot serve the metrics socket {path}")]
    MetricsSocket {
        /// The `--metrics-socket` path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The vhost-user socket cannot be created.
    #[error("cannot listen on vhost-user socket {path}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: vhost::vhost_user::Error,
    },
    /// The process already runs threads, so forking the worker would not be safe.
    #[error("hull-fs must fork its server before any thread starts, but {threads} threads run")]
    Threaded {
        /// Threads counted in /proc/self/task.
        threads: usize,
    },
    /// A system call of the process life cycle failed (fork, signals, wait).
    #[error("{what} failed")]
    Sys {
        /// The call.
        what: &'static str,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// Signal handlers cannot be installed.
    #[error("installing signal handlers")]
    Signals(#[source] std::io::Error),
    /// The open file limit cannot be raised.
    #[error("raising the open file limit: {0}")]
    FileLimit(String),
    /// The sandbox cannot be entered.
    #[error("entering the {mode:?} sandbox in {dir}")]
    Sandbox {
        /// The sandbox mode.
        mode: SandboxMode,
        /// The shared directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: virtiofsd::sandbox::Error,
    },
    /// The seccomp filter cannot be installed.
    #[error("installing the seccomp filter")]
    Seccomp(#[source] virtiofsd::seccomp::Error),
    /// Capabilities cannot be reduced.
    #[error("reducing capabilities")]
    Capabilities(#[source] capng::Error),
    /// The passthrough file system cannot open the shared directory.
    #[error("opening the shared directory {dir} for serving")]
    FileSystem {
        /// The shared directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The vhost-user-fs backend cannot be built.
    #[error("creating the vhost-user-fs backend")]
    Backend(#[source] virtiofsd::vhost_user::Error),
    /// A thread of the server cannot be started.
    #[error("starting thread {name}")]
    Thread {
        /// The thread's name.
        name: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The thread serving the vhost-user connection panicked.
    #[error("the vhost-user thread panicked")]
    DaemonPanicked,
    /// The vhost-user connection failed for a reason other than the frontend leaving.
    // vhost-user-backend's error is neither std::error::Error nor Sync: kept as its text.
    #[error("serving the vhost-user connection: {0}")]
    Daemon(String),
}

/// Results of hull-fs.
pub type Result<T> = std::result::Result<T, Error>;
