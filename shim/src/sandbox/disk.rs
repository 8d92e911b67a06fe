//! Disks a pod's VM gets besides its share: each a file or block device on the host, served
//! by its own hull-blk with `--serial`, so the agent finds it in the guest by that serial (a
//! BLOCK storage whose source is `serial:<ID>`). A block-device rootfs (see
//! [`crate::rootfs::block_device`]) reaches the guest as one: a [`RootDisk`], the disk
//! [`ROOT_SERIAL`] mounted at [`guest_disk_root`]. Booting with disks is
//! [`super::boot::boot_pod_with_disks`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use hull_agent_protocol::types::{Storage, StorageKind};

/// The serial of the disk that holds the rootfs of the pod's first container. One per VM:
/// disks are attached at boot only (microvm has no hot-plug). A container created again
/// later on the same device (the same snapshot) finds the disk still there.
pub const ROOT_SERIAL: &str = "hull-rootfs";

/// Where the agent mounts container `id`'s rootfs disk in the guest, which becomes its root.
pub fn guest_disk_root(id: &str) -> String {
    format!("/run/hull/storage/{id}/rootfs")
}

/// A container's block-device rootfs, as a disk of the VM booted for its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootDisk {
    /// The container whose rootfs it is.
    pub container: String,
    /// The disk.
    pub disk: BlockDisk,
    /// Its file system and containerd's mount options for it.
    pub rootfs: crate::rootfs::BlockRootfs,
}

impl RootDisk {
    /// Container `container`'s `rootfs`, as the disk [`ROOT_SERIAL`].
    pub fn new(container: &str, rootfs: crate::rootfs::BlockRootfs) -> Self {
        Self {
            container: container.to_owned(),
            disk: BlockDisk {
                path: rootfs.device.clone(),
                serial: ROOT_SERIAL.to_owned(),
                readonly: rootfs.readonly(),
            },
            rootfs,
        }
    }

    /// The storage that mounts it at [`guest_disk_root`] of its container.
    pub fn storage(&self) -> Storage {
        let options: Vec<&str> = self.rootfs.options.iter().map(String::as_str).collect();
        self.disk.storage(
            &self.rootfs.fstype,
            &guest_disk_root(&self.container),
            &options,
        )
    }
}

/// A disk of the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDisk {
    /// The host file or block device.
    pub path: PathBuf,
    /// Its virtio-blk serial, 1 to 20 bytes (hull-blk refuses longer ones), unique in the VM.
    pub serial: String,
    /// Served read-only.
    pub readonly: bool,
}

impl BlockDisk {
    /// hull-blk's arguments to serve this disk on `socket`.
    pub fn hull_blk_args(&self, socket: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--socket".into(),
            socket.into(),
            "--path".into(),
            self.path.clone().into(),
            "--serial".into(),
            self.serial.clone().into(),
        ];
        if self.readonly {
            args.push("--readonly".into());
        }
        args
    }

    /// The storage that has the agent mount this disk's `fstype` file system on
    /// `mount_point` (a guest path) with mount(8)-style `options`.
    pub fn storage(&self, fstype: &str, mount_point: &str, options: &[&str]) -> Storage {
        let mut options: Vec<String> = options.iter().map(|o| (*o).to_owned()).collect();
        if self.readonly && !options.iter().any(|o| o == "ro") {
            options.push("ro".to_owned());
        }
        Storage {
            kind: StorageKind::STORAGE_KIND_BLOCK.into(),
            source: format!("serial:{}", self.serial),
            fstype: fstype.to_owned(),
            options,
            mount_point: mount_point.to_owned(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(readonly: bool) -> BlockDisk {
        BlockDisk {
            path: PathBuf::from("/v/data.img"),
            serial: "vol-1".into(),
            readonly,
        }
    }

    #[test]
    fn hull_blk_serves_the_disk_under_its_serial() {
        let args = disk(false).hull_blk_args(Path::new("/run/x/blk0.sock"));
        assert_eq!(
            args,
            [
                "--socket",
                "/run/x/blk0.sock",
                "--path",
                "/v/data.img",
                "--serial",
                "vol-1"
            ]
            .map(OsString::from)
        );
        let args = disk(true).hull_blk_args(Path::new("/s"));
        assert_eq!(args.last(), Some(&OsString::from("--readonly")));
    }

    #[test]
    fn a_root_disk_is_mounted_under_its_containers_storage_with_containerds_options() {
        let rootfs = crate::rootfs::BlockRootfs {
            device: PathBuf::from("/dev/mapper/snap-7"),
            fstype: "ext4".into(),
            options: vec!["ro".into(), "noatime".into()],
        };
        let root = RootDisk::new("web", rootfs);
        assert_eq!(root.disk.path, Path::new("/dev/mapper/snap-7"));
        assert_eq!(root.disk.serial, ROOT_SERIAL);
        assert!(root.disk.readonly);
        let storage = root.storage();
        assert_eq!(storage.source, format!("serial:{ROOT_SERIAL}"));
        assert_eq!(storage.mount_point, "/run/hull/storage/web/rootfs");
        assert_eq!(storage.mount_point, guest_disk_root("web"));
        assert_eq!(storage.fstype, "ext4");
        assert_eq!(storage.options, ["ro", "noatime"]);
        // The serial fits virtio-blk's 20-byte id, which hull-blk enforces.
        assert!(ROOT_SERIAL.len() <= 20);
    }

    #[test]
    fn the_storage_names_the_disk_by_serial_and_a_readonly_disk_mounts_ro() {
        let storage = disk(false).storage("ext4", "/run/hull/storage/c/vol", &["noatime"]);
        assert_eq!(
            storage.kind.enum_value(),
            Ok(StorageKind::STORAGE_KIND_BLOCK)
        );
        assert_eq!(storage.source, "serial:vol-1");
        assert_eq!(storage.fstype, "ext4");
        assert_eq!(storage.options, ["noatime"]);
        assert_eq!(storage.mount_point, "/run/hull/storage/c/vol");
        assert_eq!(disk(true).storage("ext4", "/m", &[]).options, ["ro"]);
    }
}
