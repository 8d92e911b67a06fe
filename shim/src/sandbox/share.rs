//! The pod's shared directory: one host directory per sandbox, served to the guest by one
//! hull-fs (virtio-fs, tag [`SHARE_TAG`]), under which each container's rootfs is
//! bind-mounted as `<container id>/rootfs`, and each of its host bind mounts (volumes) as
//! `<container id>/volumes/<index in the spec's mounts>`. The agent mounts the share once for
//! the whole sandbox (a CreateSandbox storage, [`guest_share_storage`]) at
//! [`GUEST_SHARED_DIR`], and each container's root is `GUEST_SHARED_DIR/<id>/rootfs` (Kata
//! mounts its share once at `/run/kata-containers/shared/containers` the same way).
//!
//! Once, not per container: hull-fs announces each bind mount in the share as a submount
//! (its own st_dev), and the guest kernel keys a virtio-fs submount's superblock by the
//! host's device. A second mount of the same tag per container got the first container's
//! submount superblock back for the second container's rootfs (`root.path ... is not a
//! directory in the guest`); one mount of the share has one submount per bind mount.
//!
//! The directory is made a shared mount of itself, so that the bind mounts the shim adds
//! after hull-fs started propagate into hull-fs's mount namespace (hull-fs makes its copy a
//! slave: the host's mounts reach it, nothing of its own reaches the host).

use std::path::{Path, PathBuf};

use hull_agent_protocol::types::{Storage, StorageKind};

/// The virtio-fs tag of the pod's share.
pub const SHARE_TAG: &str = "hull-shared";
/// Where the agent mounts the share, once for the sandbox.
pub const GUEST_SHARED_DIR: &str = "/run/hull/shared";

/// Errors of the shared directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A directory could not be made or removed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A `Result` with this module's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

fn c_path(path: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

/// mount(2) without a file system type or data (bind mounts and propagation changes).
fn mount(source: Option<&Path>, target: &Path, flags: libc::c_ulong) -> std::io::Result<()> {
    let target = c_path(target)?;
    let source = source.map(c_path).transpose()?;
    let source_ptr = source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is a NUL-terminated string that outlives the call, or null where
    // mount(2) allows it (source of a propagation change, fstype and data of a bind).
    let rc = unsafe {
        libc::mount(
            source_ptr,
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn unmount(target: &Path) {
    let Ok(c) = c_path(target) else {
        return;
    };
    // SAFETY: umount2 reads a NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINVAL) && err.raw_os_error() != Some(libc::ENOENT) {
            tracing::warn!(target = %target.display(), %err, "unmounting");
        }
    }
}

/// The host side of a pod's share.
#[derive(Debug)]
pub struct SharedDir {
    host: PathBuf,
}

impl SharedDir {
    /// Creates `host` (which must not exist) as a shared mount of itself. The caller records
    /// `host` as a mount of the sandbox before calling.
    pub fn create(host: &Path) -> Result<Self> {
        let io = |what, source| Error::Io {
            what,
            path: host.to_owned(),
            source,
        };
        std::fs::create_dir(host).map_err(|e| io("creating the shared directory", e))?;
        mount(Some(host), host, libc::MS_BIND).map_err(|e| io("bind-mounting", e))?;
        let shared = Self {
            host: host.to_owned(),
        };
        mount(None, host, libc::MS_SHARED).map_err(|e| io("making shared", e))?;
        Ok(shared)
    }

    /// The host directory.
    pub fn host(&self) -> &Path {
        &self.host
    }

    /// Where container `id`'s rootfs appears on the host side of the share.
    pub fn rootfs_target(&self, id: &str) -> PathBuf {
        self.host.join(id).join("rootfs")
    }

    /// Bind-mounts `rootfs` (the container's rootfs on the host) into the share. The caller
    /// records [`SharedDir::rootfs_target`] as a mount first.
    pub fn share_rootfs(&self, id: &str, rootfs: &Path) -> Result<()> {
        let target = self.rootfs_target(id);
        std::fs::create_dir_all(&target).map_err(|source| Error::Io {
            what: "creating",
            path: target.clone(),
            source,
        })?;
        mount(Some(rootfs), &target, libc::MS_BIND | libc::MS_REC).map_err(|source| Error::Io {
            what: "bind-mounting the rootfs on",
            path: target.clone(),
            source,
        })
    }

    /// Where spec mount `index` of container `id` (a host bind) is bound on the host side of
    /// the share.
    pub fn volume_target(&self, id: &str, index: usize) -> PathBuf {
        self.host.join(id).join("volumes").join(index.to_string())
    }

    /// Removes container `id`'s rootfs from the share, and its directory there. The caller
    /// removes the container's volumes first. Directories are removed one by one, never
    /// recursively: one that is still a mount point (or holds one) stays, rather than the
    /// removal descending into the rootfs or a volume and deleting the host's files.
    pub fn unshare_rootfs(&self, id: &str) {
        let target = self.rootfs_target(id);
        unmount(&target);
        let dir = self.host.join(id);
        for dir in [target, dir.join("volumes"), dir] {
            if let Err(err) = std::fs::remove_dir(&dir) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %dir.display(), %err, "removing a container's share directory");
                }
            }
        }
    }
}

impl Drop for SharedDir {
    /// Unmounts the share and removes its directory.
    fn drop(&mut self) {
        unmount(&self.host);
        if let Err(err) = std::fs::remove_dir_all(&self.host) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.host.display(), %err, "removing the shared directory");
            }
        }
    }
}

/// Where the agent finds spec mount `index` of container `id` (a host bind, at
/// [`SharedDir::volume_target`] on the host) in the guest.
pub fn guest_volume(id: &str, index: usize) -> String {
    format!("{GUEST_SHARED_DIR}/{id}/volumes/{index}")
}

/// Container `id`'s root path in the guest (its rootfs at [`SharedDir::rootfs_target`] on
/// the host).
pub fn guest_root(id: &str) -> String {
    format!("{GUEST_SHARED_DIR}/{id}/rootfs")
}

/// The sandbox's storage that mounts the share at [`GUEST_SHARED_DIR`] in the guest.
pub fn guest_share_storage() -> Storage {
    Storage {
        kind: StorageKind::STORAGE_KIND_VIRTIO_FS.into(),
        source: SHARE_TAG.to_owned(),
        fstype: "virtiofs".to_owned(),
        mount_point: GUEST_SHARED_DIR.to_owned(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rootfs_bound_into_the_share_is_seen_there_and_removed_again() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("bundle-rootfs");
        std::fs::create_dir(&rootfs).unwrap();
        std::fs::write(rootfs.join("marker"), "x").unwrap();
        let share = SharedDir::create(&dir.path().join("shared")).unwrap();
        share.share_rootfs("c1", &rootfs).unwrap();
        assert_eq!(
            std::fs::read_to_string(share.rootfs_target("c1").join("marker")).unwrap(),
            "x"
        );
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = mounts
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(share.host().to_str().unwrap()))
            .expect("the share is a mount point");
        assert!(line.contains("shared:"), "propagation: {line}");
        share.unshare_rootfs("c1");
        assert!(!share.host().join("c1").exists());
        assert!(
            rootfs.join("marker").exists(),
            "the rootfs itself is untouched"
        );
        let host = share.host().to_owned();
        drop(share);
        assert!(!host.exists());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(host.to_str().unwrap()), "no mount left");
    }

    #[test]
    fn guest_roots_and_volumes_are_paths_in_the_one_share_mount() {
        let storage = guest_share_storage();
        assert_eq!(storage.source, SHARE_TAG);
        assert_eq!(storage.mount_point, "/run/hull/shared");
        assert_eq!(guest_root("c1"), "/run/hull/shared/c1/rootfs");
        assert_eq!(guest_volume("c1", 4), "/run/hull/shared/c1/volumes/4");
        assert_eq!(
            storage.kind.enum_value(),
            Ok(StorageKind::STORAGE_KIND_VIRTIO_FS)
        );
    }
}
