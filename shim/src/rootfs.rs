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

/// File systems a block-device rootfs may have to be handed to the guest: those the guest
/// kernel (agent/image/kernel.fragment) mounts. Any other is mounted on the host and shared.
pub const GUEST_BLOCK_FSTYPES: &[&str] = &["ext4"];

/// A rootfs containerd gives as one file system on a block device (the devmapper
/// snapshotter's, or any other that hands out devices): it can reach the guest as a disk,
/// mounted there, never on the host (Kata's block-device rootfs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRootfs {
    /// The host block device.
    pub device: PathBuf,
    /// Its file system, one of [`GUEST_BLOCK_FSTYPES`].
    pub fstype: String,
    /// mount(8) options containerd gave for it (`ro` among them when read-only).
    pub options: Vec<String>,
}

impl BlockRootfs {
    /// Whether containerd asked for it read-only.
    pub fn readonly(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

/// The block device `mounts` amount to: exactly one mount, of a file system in
/// [`GUEST_BLOCK_FSTYPES`], without bind or loop options, whose source is a block device.
/// `None` for anything else (overlay snapshots, binds, image files, a device that vanished):
/// those take the host-mount path, which reports its own errors.
pub fn block_device(mounts: &[RootfsMount]) -> Option<BlockRootfs> {
    use std::os::unix::fs::FileTypeExt;
    let [mount] = mounts else {
        return None;
    };
    if !GUEST_BLOCK_FSTYPES.contains(&mount.fstype.as_str())
        || mount
            .options
            .iter()
            .any(|o| matches!(o.as_str(), "bind" | "rbind" | "loop" | "remount"))
    {
        return None;
    }
    let device = PathBuf::from(&mount.source);
    if !device.is_absolute() {
        return None;
    }
    let is_block = std::fs::metadata(&device)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    is_block.then(|| BlockRootfs {
        device,
        fstype: mount.fstype.clone(),
        options: mount.options.clone(),
    })
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

    fn mount(fstype: &str, source: &str, options: &[&str]) -> RootfsMount {
        RootfsMount {
            fstype: fstype.into(),
            source: source.into(),
            options: options.iter().map(|o| (*o).to_owned()).collect(),
        }
    }

    /// A block device every Linux host has a node for (the loop driver's first device, or
    /// any block device in /dev), or `None` on a host without one.
    fn some_block_device() -> Option<PathBuf> {
        use std::os::unix::fs::FileTypeExt;
        std::fs::read_dir("/dev")
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                std::fs::metadata(p)
                    .map(|m| m.file_type().is_block_device())
                    .unwrap_or(false)
            })
    }

    #[test]
    fn one_ext4_mount_of_a_block_device_is_a_block_rootfs() {
        let Some(device) = some_block_device() else {
            let missing = hull_tests::prereq::Missing::hardware(
                "a block device node in /dev",
                "load the loop module (modprobe loop)",
            );
            hull_tests::prereq::skip(
                "one_ext4_mount_of_a_block_device_is_a_block_rootfs",
                &missing,
            );
            return;
        };
        let source = device.to_str().unwrap();
        let found = block_device(&[mount("ext4", source, &["ro", "noatime"])]).unwrap();
        assert_eq!(found.device, device);
        assert_eq!(found.fstype, "ext4");
        assert!(found.readonly());
        assert!(!block_device(&[mount("ext4", source, &[])])
            .unwrap()
            .readonly());
        // Not a block rootfs: a file system the guest cannot mount, two mounts, a loop or
        // bind option, a regular file, a relative or missing source.
        let file = tempfile::NamedTempFile::new().unwrap();
        for mounts in [
            vec![mount("xfs", source, &[])],
            vec![mount("ext4", source, &[]), mount("ext4", source, &[])],
            vec![mount("ext4", source, &["loop"])],
            vec![mount("ext4", source, &["rbind"])],
            vec![mount("ext4", file.path().to_str().unwrap(), &[])],
            vec![mount("ext4", "dev/loop0", &[])],
            vec![mount("ext4", "/nonexistent/hull-device", &[])],
            vec![mount("overlay", "overlay", &["lowerdir=/a"])],
            vec![],
        ] {
            assert_eq!(block_device(&mounts), None, "{mounts:?}");
        }
    }

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
