//! What one hull-fs instance serves and how: the settings behind virtiofsd's common command
//! line, and their translation into the settings of upstream virtiofsd's passthrough file
//! system. The command line itself is parsed in `main.rs`.

use std::path::PathBuf;
use std::time::Duration;

use virtiofsd::passthrough::{self, InodeFileHandlesMode};

use crate::sandbox::ConfinedRoot;

/// How long the guest may cache file data, names and attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachePolicy {
    /// No caching: every access goes to the host. For directories the host changes behind the
    /// guest's back.
    Never,
    /// Names and attributes are cached for one second; file data until the file is closed.
    Auto,
    /// Names and attributes are cached for a day; file data stays cached. Only safe when the
    /// guest is the sole writer of the directory.
    Always,
    /// Like `Never` for file data, like `Always` for names and attributes.
    Metadata,
}

impl CachePolicy {
    /// How long the guest may trust a looked-up name or attribute.
    pub fn timeout(self) -> Duration {
        match self {
            Self::Never => Duration::ZERO,
            Self::Auto => Duration::from_secs(1),
            Self::Always | Self::Metadata => Duration::from_secs(86_400),
        }
    }

    fn upstream(self) -> passthrough::CachePolicy {
        match self {
            Self::Never => passthrough::CachePolicy::Never,
            Self::Auto => passthrough::CachePolicy::Auto,
            Self::Always => passthrough::CachePolicy::Always,
            Self::Metadata => passthrough::CachePolicy::Metadata,
        }
    }
}

/// How the serving process is walled into the shared directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    /// New mount, pid and network namespaces (and a user namespace when not root), with the
    /// shared directory as the root of the mount namespace (`pivot_root`). The default.
    Namespace,
    /// `chroot` into the shared directory; needs root.
    Chroot,
    /// No confinement beyond the file system's own checks: for debugging only.
    None,
}

/// Everything one hull-fs instance needs to serve a directory.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the vhost-user socket is created; `<socket_path>.pid` holds the pid.
    pub socket_path: PathBuf,
    /// The directory the guest sees as the root of the share.
    pub shared_dir: PathBuf,
    /// Guest caching.
    pub cache: CachePolicy,
    /// Refuse every request that would change the directory.
    pub readonly: bool,
    /// Threads serving requests; 0 serves them on the queue's own thread.
    pub thread_pool_size: usize,
    /// Serve extended attributes.
    pub xattr: bool,
    /// Confinement of the serving process.
    pub sandbox: SandboxMode,
    /// Install the seccomp filter (killing the process on a syscall outside the list).
    pub seccomp: bool,
    /// Where the supervisor serves the request counters (Prometheus text, one per
    /// connection); none if `None`.
    pub metrics_socket: Option<PathBuf>,
}

impl Config {
    /// A configuration with virtiofsd's defaults: cache auto, read-write, no thread pool, no
    /// xattrs, namespace sandbox, seccomp on, no metrics socket.
    pub fn new(socket_path: impl Into<PathBuf>, shared_dir: impl Into<PathBuf>) -> Self {
        Self {
            socket_path: socket_path.into(),
            shared_dir: shared_dir.into(),
            cache: CachePolicy::Auto,
            readonly: false,
            thread_pool_size: 0,
            xattr: false,
            sandbox: SandboxMode::Namespace,
            seccomp: true,
            metrics_socket: None,
        }
    }

    /// The settings of upstream's passthrough file system serving `root`, the shared
    /// directory as a confined process sees it, with at most `guest_fd_limit` descriptors
    /// open on the guest's behalf.
    pub fn passthrough(&self, root: ConfinedRoot, guest_fd_limit: u64) -> passthrough::Config {
        let timeout = self.cache.timeout();
        passthrough::Config {
            root_dir: root.root_dir,
            mountinfo_prefix: root.mountinfo_prefix,
            proc_sfd_rawfd: root.proc_self_fd,
            proc_mountinfo_rawfd: root.mountinfo,
            guest_fd_limit,
            entry_timeout: timeout,
            attr_timeout: timeout,
            cache_policy: self.cache.upstream(),
            xattr: self.xattr,
            readdirplus: self.cache != CachePolicy::Never,
            // Tell the guest where host mount points are, so it gives them their own inode
            // numbers (upstream's default).
            announce_submounts: true,
            // O_PATH descriptors, never file handles: opening by handle needs
            // CAP_DAC_READ_SEARCH, which reaches every inode of the host file system around
            // the sandbox (see sandbox::KEPT_CAPABILITIES).
            inode_file_handles: InodeFileHandlesMode::Never,
            // Guest uids/gids are host uids/gids: no translation in this slice.
            uid_map: Some(Vec::new()),
            gid_map: Some(Vec::new()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(dir: &str) -> ConfinedRoot {
        ConfinedRoot {
            root_dir: dir.into(),
            mountinfo_prefix: None,
            proc_self_fd: None,
            mountinfo: None,
        }
    }

    #[test]
    fn cache_never_disables_readdirplus_and_caching() {
        let mut config = Config::new("/run/fs.sock", "/srv");
        config.cache = CachePolicy::Never;
        let fs = config.passthrough(root("/"), 1000);
        assert!(!fs.readdirplus);
        assert_eq!(fs.entry_timeout, Duration::ZERO);
        assert_eq!(fs.attr_timeout, Duration::ZERO);
    }

    #[test]
    fn defaults_match_virtiofsd() {
        let config = Config::new("/run/fs.sock", "/srv");
        assert_eq!(config.cache, CachePolicy::Auto);
        assert_eq!(config.sandbox, SandboxMode::Namespace);
        assert!(config.seccomp && !config.readonly && !config.xattr);
        let fs = config.passthrough(root("/"), 1000);
        assert!(fs.readdirplus);
        assert_eq!(fs.entry_timeout, Duration::from_secs(1));
        assert_eq!(fs.root_dir, "/");
        assert_eq!(fs.guest_fd_limit, 1000);
        assert_eq!(fs.inode_file_handles, InodeFileHandlesMode::Never);
    }
}
