//! The storages of a CreateContainer: mounted before the container is created, unmounted
//! (in reverse order) when it is removed or when creating it fails. A BLOCK storage's disk
//! is found by its serial first ([`super::disk`]).

use std::path::{Path, PathBuf};

use hull_agent_protocol::types::StorageKind;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::disk::{DiskError, DiskLookup};
use super::Failure;
use crate::container_request::StorageRequest;

/// Why a storage could not be mounted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kind is one this agent cannot mount yet.
    #[error("storages[{index}]: {kind:?} storages are not implemented by this agent")]
    Unsupported {
        /// Its index in the request.
        index: usize,
        /// Its kind.
        kind: StorageKind,
    },
    /// A BLOCK storage's disk is not there (or the disks cannot be listed).
    #[error("storages[{index}]: {cause}")]
    Disk {
        /// Its index in the request.
        index: usize,
        /// Why (in the message: the agent answers with it).
        cause: DiskError,
    },
    /// Mounting failed.
    #[error("storages[{index}]: mounting {source_name} on {}: {cause}", mount_point.display())]
    Mount {
        /// Its index in the request.
        index: usize,
        /// What was mounted.
        source_name: String,
        /// Where.
        mount_point: PathBuf,
        /// The cause.
        cause: String,
    },
}

impl From<Error> for Failure {
    /// A kind not mounted here is UNIMPLEMENTED, a disk that never appeared
    /// DEADLINE_EXCEEDED, anything else the guest failing.
    fn from(err: Error) -> Self {
        match &err {
            Error::Unsupported { .. } => Failure::Unimplemented(err.to_string()),
            Error::Disk {
                cause: DiskError::NotFound { .. },
                ..
            } => Failure::DeadlineExceeded(err.to_string()),
            Error::Disk { .. } | Error::Mount { .. } => Failure::Internal(err.to_string()),
        }
    }
}

/// Splits mount(8)-style options into flags and file-system data.
fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options {
        match option.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "bind" => flags |= MsFlags::MS_BIND,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// Mounts `storages` in order, BLOCK disks found in the guest's /sys/block; on a failure
/// unmounts those already mounted. Returns the mount points, to unmount with
/// [`unmount_all`].
pub async fn mount_all(storages: &[StorageRequest]) -> Result<Vec<PathBuf>, Error> {
    mount_all_with(storages, &DiskLookup::guest()).await
}

/// [`mount_all`], finding BLOCK disks with `disks`.
pub async fn mount_all_with(
    storages: &[StorageRequest],
    disks: &DiskLookup,
) -> Result<Vec<PathBuf>, Error> {
    let mut mounted = Vec::new();
    for (index, storage) in storages.iter().enumerate() {
        let result = match (&storage.kind, &storage.serial) {
            (StorageKind::STORAGE_KIND_BLOCK, Some(serial)) => match disks.wait(serial).await {
                Ok(node) => mount_one(index, storage, Some(&node)),
                Err(cause) => Err(Error::Disk { index, cause }),
            },
            // container_request gives every BLOCK storage a serial; one built otherwise is
            // refused as such rather than reported as an unsupported kind.
            (StorageKind::STORAGE_KIND_BLOCK, None) => Err(Error::Mount {
                index,
                source_name: storage.source.clone(),
                mount_point: storage.mount_point.clone(),
                cause: "a BLOCK storage needs a serial:<ID> source".into(),
            }),
            _ => mount_one(index, storage, None),
        };
        if let Err(err) = result {
            unmount_all(&mounted);
            return Err(err);
        }
        mounted.push(storage.mount_point.clone());
    }
    Ok(mounted)
}

/// Mounts one storage; `disk` is a BLOCK storage's device node.
fn mount_one(index: usize, storage: &StorageRequest, disk: Option<&Path>) -> Result<(), Error> {
    let (mut flags, data) = parse_options(&storage.options);
    let disk_name = disk.map(|node| node.to_string_lossy().into_owned());
    let (source, fstype) = match (storage.kind, &disk_name) {
        (StorageKind::STORAGE_KIND_VIRTIO_FS, _) => (storage.source.as_str(), Some("virtiofs")),
        (StorageKind::STORAGE_KIND_TMPFS, _) => ("tmpfs", Some("tmpfs")),
        (StorageKind::STORAGE_KIND_BIND, _) => {
            flags |= MsFlags::MS_BIND | MsFlags::MS_REC;
            (storage.source.as_str(), None)
        }
        (StorageKind::STORAGE_KIND_BLOCK, Some(node)) => {
            (node.as_str(), Some(storage.fstype.as_str()))
        }
        (kind, _) => return Err(Error::Unsupported { index, kind }),
    };
    let error = |cause: String| Error::Mount {
        index,
        source_name: source.to_owned(),
        mount_point: storage.mount_point.clone(),
        cause,
    };
    std::fs::create_dir_all(&storage.mount_point)
        .map_err(|err| error(format!("creating the mount point: {err}")))?;
    let data = (!data.is_empty()).then_some(data.as_str());
    mount(Some(source), &storage.mount_point, fstype, flags, data)
        .map_err(|err| error(err.to_string()))?;
    // A bind mount ignores MS_RDONLY until it is remounted.
    if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
        let remount = flags | MsFlags::MS_REMOUNT;
        if let Err(err) = mount(
            None::<&str>,
            &storage.mount_point,
            None::<&str>,
            remount,
            None::<&str>,
        ) {
            unmount(&storage.mount_point);
            return Err(error(format!("making it read-only: {err}")));
        }
    }
    Ok(())
}

/// `root` when it is the root of a virtio-fs mount that is not one of `own_storages`: a
/// submount the guest kernel made when the container's root was first looked up in the
/// sandbox's share (hull-fs announces each of the share's bind mounts as a submount). The
/// kernel never expires it, and it pins the host's rootfs in hull-fs, so the container's
/// removal unmounts it. `None` for anything else (on a host, the shim's own overlay).
pub fn automounted_root(root: &Path, own_storages: &[PathBuf]) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    if own_storages.iter().any(|point| point == root) {
        return None;
    }
    let fs = nix::sys::statfs::statfs(root).ok()?;
    // virtio-fs is FUSE to the guest kernel.
    if fs.filesystem_type() != nix::sys::statfs::FUSE_SUPER_MAGIC {
        return None;
    }
    let dev = std::fs::metadata(root).ok()?.dev();
    let parent_dev = std::fs::metadata(root.join("..")).ok()?.dev();
    (dev != parent_dev).then(|| root.to_owned())
}

/// Unmounts `mount_points` in reverse order, detaching what is busy; failures are logged.
pub fn unmount_all(mount_points: &[PathBuf]) {
    for point in mount_points.iter().rev() {
        unmount(point);
    }
}

fn unmount(point: &Path) {
    if let Err(err) = umount2(point, MntFlags::MNT_DETACH) {
        tracing::warn!(mount_point = %point.display(), "unmounting a storage: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_that_is_not_a_virtio_fs_submount_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        // A plain directory (tmpfs or ext4 here), and a storage's own mount point.
        assert_eq!(automounted_root(dir.path(), &[]), None);
        assert_eq!(automounted_root(dir.path(), &[dir.path().to_owned()]), None);
        assert_eq!(automounted_root(&dir.path().join("missing"), &[]), None);
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let options = ["ro", "nodev", "size=64m", "mode=0755"].map(String::from);
        let (flags, data) = parse_options(&options);
        assert_eq!(flags, MsFlags::MS_RDONLY | MsFlags::MS_NODEV);
        assert_eq!(data, "size=64m,mode=0755");
    }
}
