//! Finding a BLOCK storage's virtio-blk disk by its serial: the id the device answers to
//! `VIRTIO_BLK_T_GET_ID`, which Linux shows in `/sys/block/<name>/serial`. The host chooses
//! it (hull-blk `--serial`), so it names the disk the same way on virtio-mmio and PCI. This
//! module owns the lookup and the wait for a disk still being probed or hot-added (there is
//! no udev in the guest: /sys/block is polled); mounting it is [`super::storage`]'s.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Most bytes read of a `serial` file: the kernel writes at most the 20-byte id.
const MAX_SERIAL_FILE_BYTES: u64 = 64;

/// Why no disk could be given for a serial.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// No disk with that serial (and a device node) appeared in time.
    #[error(
        "no virtio-blk disk with serial {serial:?} appeared in {} within {bound:?}",
        sys_block.display()
    )]
    NotFound {
        /// The serial looked for (lossily decoded, for the message only).
        serial: String,
        /// Where disks were looked for.
        sys_block: PathBuf,
        /// How long the agent waited.
        bound: Duration,
    },
    /// The disks cannot be listed.
    #[error("listing the disks in {}", path.display())]
    Sysfs {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Where and how long to look for disks.
#[derive(Debug, Clone)]
pub struct DiskLookup {
    /// The directory of disks, `/sys/block` in a guest.
    pub sys_block: PathBuf,
    /// Where their device nodes appear, `/dev` (devtmpfs) in a guest.
    pub dev: PathBuf,
    /// How long to wait for a disk to appear.
    pub bound: Duration,
    /// How often to look again meanwhile.
    pub interval: Duration,
}

impl DiskLookup {
    /// The guest's: /sys/block and /dev, waiting up to 10 s, looking every 50 ms.
    pub fn guest() -> Self {
        Self {
            sys_block: PathBuf::from("/sys/block"),
            dev: PathBuf::from("/dev"),
            bound: Duration::from_secs(10),
            interval: Duration::from_millis(50),
        }
    }

    /// The device node of the disk whose serial is `serial`, once both the disk and its node
    /// exist, waiting up to [`DiskLookup::bound`] for them.
    pub async fn wait(&self, serial: &[u8]) -> Result<PathBuf, DiskError> {
        let deadline = tokio::time::Instant::now() + self.bound;
        loop {
            if let Some(name) = find_by_serial(&self.sys_block, serial)? {
                let node = self.dev.join(&name);
                if node.exists() {
                    return Ok(node);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DiskError::NotFound {
                    serial: String::from_utf8_lossy(serial).into_owned(),
                    sys_block: self.sys_block.clone(),
                    bound: self.bound,
                });
            }
            tokio::time::sleep(self.interval).await;
        }
    }
}

/// The name (`vdb`) of the disk in `sys_block` whose `serial` file holds exactly `serial`,
/// if one does. Disks without a serial file (loop, ram) or whose serial cannot be read are
/// passed over. The serial is only compared, never made into a path; the names come from the
/// kernel, and one that could not be a single path component is passed over too.
pub fn find_by_serial(sys_block: &Path, serial: &[u8]) -> Result<Option<String>, DiskError> {
    let entries = std::fs::read_dir(sys_block).map_err(|source| DiskError::Sysfs {
        path: sys_block.to_owned(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| DiskError::Sysfs {
            path: sys_block.to_owned(),
            source,
        })?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            continue;
        }
        let Ok(file) = std::fs::File::open(sys_block.join(&name).join("serial")) else {
            continue;
        };
        let mut found = Vec::new();
        if file
            .take(MAX_SERIAL_FILE_BYTES)
            .read_to_end(&mut found)
            .is_err()
        {
            continue;
        }
        if found == serial {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory laid out like /sys/block: `disks` are (name, serial file contents).
    fn sys_block(disks: &[(&str, Option<&[u8]>)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, serial) in disks {
            let disk = dir.path().join(name);
            std::fs::create_dir(&disk).unwrap();
            if let Some(serial) = serial {
                std::fs::write(disk.join("serial"), serial).unwrap();
            }
        }
        dir
    }

    #[test]
    fn the_disk_whose_serial_matches_exactly_is_found() {
        let dir = sys_block(&[
            ("loop0", None),
            ("vda", Some(b"rootfs")),
            ("vdc", Some(b"hull-test-disk-2")),
            ("vdb", Some(b"hull-test-disk")),
        ]);
        let found = find_by_serial(dir.path(), b"hull-test-disk").unwrap();
        assert_eq!(found.as_deref(), Some("vdb"));
        assert_eq!(find_by_serial(dir.path(), b"hull-test").unwrap(), None);
        assert_eq!(find_by_serial(dir.path(), b"../vda").unwrap(), None);
    }

    #[test]
    fn a_missing_sys_block_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("block");
        let err = find_by_serial(&missing, b"d").unwrap_err();
        assert!(
            err.to_string().contains(&*missing.to_string_lossy()),
            "{err}"
        );
    }

    proptest::proptest! {
        /// Whatever serial a request names, the lookup answers exactly the disk holding those
        /// bytes, or none, and never looks outside the directory.
        #[test]
        fn any_serial_finds_only_the_disk_with_exactly_those_bytes(
            serial in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            other in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..21),
        ) {
            // Serials are unique in a VM (the host chooses them).
            proptest::prop_assume!(other != b"data");
            let dir = sys_block(&[("vda", Some(&other)), ("vdb", Some(b"data")), ("ram0", None)]);
            let found = find_by_serial(dir.path(), &serial).unwrap();
            let expected = if serial == other {
                Some("vda")
            } else if serial == b"data" {
                Some("vdb")
            } else {
                None
            };
            proptest::prop_assert_eq!(found.as_deref(), expected);
        }
    }

    fn lookup(sys_block: &Path, dev: &Path) -> DiskLookup {
        DiskLookup {
            sys_block: sys_block.to_owned(),
            dev: dev.to_owned(),
            bound: Duration::from_millis(100),
            interval: Duration::from_millis(10),
        }
    }

    #[tokio::test]
    async fn waiting_gives_the_device_node_of_the_disk() {
        let sys = sys_block(&[("vdb", Some(b"data"))]);
        let dev = tempfile::tempdir().unwrap();
        std::fs::write(dev.path().join("vdb"), b"").unwrap();
        let node = lookup(sys.path(), dev.path()).wait(b"data").await.unwrap();
        assert_eq!(node, dev.path().join("vdb"));
    }

    #[tokio::test]
    async fn a_serial_that_never_appears_ends_the_wait_naming_it_and_the_bound() {
        let sys = sys_block(&[("vdb", Some(b"data"))]);
        let dev = tempfile::tempdir().unwrap();
        // The disk of "data" has no device node yet, and "other" is nowhere.
        for serial in [&b"data"[..], b"other"] {
            let err = lookup(sys.path(), dev.path())
                .wait(serial)
                .await
                .unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, DiskError::NotFound { .. }), "{message}");
            assert!(
                message.contains(&format!("{:?}", String::from_utf8_lossy(serial)))
                    && message.contains("100ms"),
                "{message}"
            );
        }
    }
}
