//! Confinement of the serving process: the sandbox it enters (upstream virtiofsd's, see
//! README.md), the capabilities it keeps and its seccomp filter. Owns nothing that serves
//! requests.
//!
//! What confines the guest is the sandbox: every name the guest sends is resolved by the
//! kernel relative to a root that *is* the shared directory (`pivot_root` in the namespace
//! mode, `chroot` in the chroot mode), so `..`, absolute symlinks and symlink races end at
//! that root, and no `/proc` is mounted inside it. The passthrough file system does not check
//! names itself, which is why `SandboxMode::None` is for debugging only.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::path::Path;

use vhost::vhost_user::Listener;
use virtiofsd::sandbox::{Sandbox, SandboxMode as UpstreamMode};
use virtiofsd::seccomp::{enable_seccomp, SeccompAction};

use crate::{Error, Result, SandboxMode};

/// Capabilities the server keeps when it runs as root: those needed to create files on
/// behalf of guest users and set their owners and modes. Notably absent:
/// `CAP_DAC_READ_SEARCH`, which would let a compromised server open any inode of the host
/// file system by handle (`open_by_handle_at`) around the sandbox; so inodes are held as
/// `O_PATH` descriptors, never as file handles.
pub const KEPT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "SETGID",
    "SETUID",
    "MKNOD",
    "SETFCAP",
];

/// A process inside its sandbox, with what it needs from outside it.
pub struct Entered {
    /// The vhost-user listener, carried across the sandbox's forks.
    pub listener: Listener,
    /// The shared directory as seen from inside.
    pub root: ConfinedRoot,
}

/// The shared directory as a confined process sees it, with the descriptors it opened
/// before its root changed.
#[derive(Debug)]
pub struct ConfinedRoot {
    /// The shared directory as the process now sees it (`/` inside a sandbox).
    pub root_dir: String,
    /// Prefix to strip from mountinfo paths (chroot mode only).
    pub mountinfo_prefix: Option<String>,
    /// `/proc/self/fd`, opened before the root changed; the passthrough file system reopens
    /// `O_PATH` descriptors through it.
    pub proc_self_fd: Option<File>,
    /// `/proc/self/mountinfo`, opened before the root changed.
    pub mountinfo: Option<File>,
}

/// Confines the calling process to `shared_dir`.
///
/// In the namespace mode this forks: the caller's process waits for the confined child and
/// exits with its status (it never returns here), and the child, pid 1 of its new pid
/// namespace, returns. Must be called while the process is single-threaded.
pub fn enter(shared_dir: &Path, mode: SandboxMode, listener: Listener) -> Result<Entered> {
    let err = |source| Error::Sandbox {
        mode,
        dir: shared_dir.to_owned(),
        source,
    };
    let dir = shared_dir.to_string_lossy().into_owned();
    let upstream_mode = match mode {
        SandboxMode::Namespace => UpstreamMode::Namespace,
        SandboxMode::Chroot => UpstreamMode::Chroot,
        SandboxMode::None => UpstreamMode::None,
    };
    let mut sandbox = Sandbox::new(dir, upstream_mode, Vec::new(), Vec::new());
    let mountinfo_prefix = sandbox
        .get_mountinfo_prefix()
        .map_err(|source| Error::FileSystem {
            dir: shared_dir.to_owned(),
            source,
        })?;
    // The namespace mode's confined child is pid 1 of its pid namespace, where upstream's
    // parent-death signal (SIGTERM) is ignored without a handler: a killed shim (and so a
    // killed worker) left it serving (the fault matrix's "shim killed while creating"). It
    // takes SIGKILL instead, which the kernel forces from the parent's namespace.
    let parent = if mode == SandboxMode::Namespace {
        // SAFETY: pidfd_open(2) of this process, with no flags; the result is checked.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
        let fd = i32::try_from(fd)
            .ok()
            .filter(|fd| *fd >= 0)
            .ok_or_else(|| {
                err(virtiofsd::sandbox::Error::Fork(
                    std::io::Error::last_os_error(),
                ))
            })?;
        // SAFETY: `fd` was just opened and nothing else owns it.
        Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
    } else {
        None
    };
    let listener = sandbox.enter(listener).map_err(err)?;
    if let Some(parent) = parent {
        die_with(&parent);
    }
    Ok(Entered {
        listener,
        root: ConfinedRoot {
            root_dir: sandbox.get_root_dir(),
            mountinfo_prefix,
            proc_self_fd: sandbox.get_proc_self_fd(),
            mountinfo: sandbox.get_mountinfo_fd(),
        },
    })
}

/// Has the calling process (the confined child) get SIGKILL when its parent, `parent` (a
/// pidfd), dies; exits at once if it died already.
fn die_with(parent: &std::os::fd::OwnedFd) {
    use std::os::fd::AsRawFd;
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and changes nothing else.
    let set = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let mut poll = libc::pollfd {
        fd: parent.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one pollfd we own, without waiting; a pidfd is readable once its
    // process has exited.
    let gone = unsafe { libc::poll(&mut poll, 1, 0) } != 0;
    if set != 0 || gone {
        tracing::error!("the process that started the sandbox is gone; exiting");
        std::process::exit(1);
    }
}

/// Installs upstream's seccomp filter on the calling thread and the threads it starts later:
/// a syscall outside the list kills the process.
pub fn install_seccomp() -> Result<()> {
    enable_seccomp(SeccompAction::Kill, false).map_err(Error::Seccomp)
}

/// Keeps only [`KEPT_CAPABILITIES`], in the permitted and effective sets (none inheritable,
/// no ambient ones). A no-op for a non-root process, which has none to drop.
pub fn reduce_capabilities() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        capng::clear(capng::Set::BOTH);
        capng::updatev(
            capng::Action::ADD,
            capng::Type::PERMITTED | capng::Type::EFFECTIVE,
            KEPT_CAPABILITIES.to_vec(),
        )
        .map_err(Error::Capabilities)?;
        capng::apply(capng::Set::BOTH).map_err(Error::Capabilities)?;
    }
    Ok(())
}
