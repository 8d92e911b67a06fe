//! A container's root file system on the host: containerd hands a v2 shim the snapshot's
//! mounts (normally one overlay) in the Create request, and the shim mounts them on the
//! bundle's `rootfs` directory, as runc's shim does. What the guest then sees of that
//! directory is the sandbox's business (shared through hull-fs, or the host path itself with
//! the `none` hypervisor). Option parsing and the long-lowerdir case are the
//! `containerd-shim` crate's `mount_rootfs`, reused rather than written again.

use std::path::{Path, PathBuf};

/// Errors of mounting a rootfs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A mount had no type.
    #[error("rootfs mount {index} has no type")]
    NoType {
        /// Its position in the request.
        index: usize,
    },
    /// The mount point could not be made.
    #[error("creating the rootfs mount point {path}")]
    MountPoint {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Mounting failed.
    #[error("mounting {fstype} {source_path} on {target}: {message}")]
    Mount {
        /// File system type.
        fstype: String,
        /// Its source.
        source_path: String,
        /// The mount point.
        target: PathBuf,
        /// The cause, as the mount helper put it.
        message: String,
    },
}

/// A `Result` with this module's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// One mount of a rootfs, as containerd describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsMount {
    /// File system type (`overlay`, `bind` ...).
    pub fstype: String,
    /// Its source.
    pub source: String,
    /// mount(8) options.
    pub options: Vec<String>,
}

impl From<&containerd_shim_protos::types::mount::Mount> for RootfsMount {
    fn from(mount: &containerd_shim_protos::types::mount::Mount) -> Self {
        Self {
            fstype: mount.type_.clone(),
            source: mount.source.clone(),
            options: mount.options.clone(),
        }
    }
}

/// Mounts `mounts` on `target` in order (creating `target` if missing). Returns whether
/// anything was mounted: an empty list means the bundle's rootfs is ready as it is. On an
/// error part-way, what was mounted is unmounted again.
pub fn mount_all(mounts: &[RootfsMount], target: &Path) -> Result<bool> {
    if mounts.is_empty() {
        return Ok(false);
    }
    std::fs::create_dir_all(target).map_err(|source| Error::MountPoint {
        path: target.to_owned(),
        source,
    })?;
    for (index, mount) in mounts.iter().enumerate() {
        if mount.fstype.is_empty() {
            unmount(target, index);
            return Err(Error::NoType { index });
        }
        let result = containerd_shim::mount::mount_rootfs(
            Some(&mount.fstype),
            Some(&mount.source),
            &mount.options,
            target,
        );
        if let Err(err) = result {
            unmount(target, index);
            return Err(Error::Mount {
                fstype: mount.fstype.clone(),
                source_path: mount.source.clone(),
                target: target.to_owned(),
                message: err.to_string(),
            });
        }
    }
    Ok(true)
}

/// Unmounts `target` up to `layers` times (each mount made on it stacks).
pub fn unmount(target: &Path, layers: usize) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(target.as_os_str().as_bytes()) else {
        return;
    };
    for _ in 0..layers {
        // SAFETY: umount2 reads a NUL-terminated path that outlives the call.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINVAL) {
                tracing::warn!(target = %target.display(), %err, "unmounting the rootfs");
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_mounts_leave_the_bundle_rootfs_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!mount_all(&[], &dir.path().join("rootfs")).unwrap());
        assert!(!dir.path().join("rootfs").exists());
    }

    #[test]
    fn a_mount_without_a_type_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let mounts = [RootfsMount {
            fstype: String::new(),
            source: "/x".into(),
            options: vec![],
        }];
        let err = mount_all(&mounts, &dir.path().join("rootfs")).unwrap_err();
        assert!(
            err.to_string().contains("rootfs mount 0 has no type"),
            "{err}"
        );
    }

    #[test]
    fn a_failed_mount_names_source_and_target() {
        let dir = tempfile::tempdir().unwrap();
        let mounts = [RootfsMount {
            fstype: "bind".into(),
            source: "/nonexistent/hull-rootfs-source".into(),
            options: vec!["rbind".into()],
        }];
        let target = dir.path().join("rootfs");
        let err = mount_all(&mounts, &target).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/hull-rootfs-source"), "{err}");
        assert!(err.contains(&target.display().to_string()), "{err}");
    }
}
