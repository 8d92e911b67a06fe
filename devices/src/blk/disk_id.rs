//! The disk's id, what the device answers to `VIRTIO_BLK_T_GET_ID` and Linux shows in
//! `/sys/block/vd*/serial`: the `--serial` given to hull-blk (the host chooses it, so a guest
//! agent can find the disk by it whatever the transport), or the backing file's name.

use std::path::Path;
use std::str::FromStr;

use super::request::ID_BYTES;

/// A disk id of at most [`ID_BYTES`] bytes, NUL-padded; no NUL is needed when it is full
/// (virtio 1.2, 5.2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskId([u8; ID_BYTES]);

/// A serial that does not fit the virtio-blk id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskIdError {
    /// Longer than the id field.
    #[error("the serial is {len} bytes: virtio-blk ids hold at most {max} bytes")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// [`ID_BYTES`].
        max: usize,
    },
    /// Empty, or holding a NUL, which would end the id early.
    #[error("the serial is empty or holds a NUL byte: give 1 to {max} bytes without NUL")]
    Malformed {
        /// [`ID_BYTES`].
        max: usize,
    },
}

impl DiskId {
    /// The id hull-blk answers by default: the file name of `path`, cut to [`ID_BYTES`].
    pub fn from_file_name(path: &Path) -> Self {
        let mut id = [0u8; ID_BYTES];
        let name = path
            .file_name()
            .map(|n| n.as_encoded_bytes().to_vec())
            .unwrap_or_default();
        for (dst, src) in id.iter_mut().zip(name) {
            *dst = src;
        }
        Self(id)
    }

    /// The id's bytes as the device answers them.
    pub fn as_bytes(&self) -> &[u8; ID_BYTES] {
        &self.0
    }
}

impl FromStr for DiskId {
    type Err = DiskIdError;

    /// A serial given on the command line: 1 to [`ID_BYTES`] bytes, no NUL. Never cut, so
    /// the guest sees exactly what the host asked for.
    fn from_str(serial: &str) -> Result<Self, DiskIdError> {
        let bytes = serial.as_bytes();
        if bytes.len() > ID_BYTES {
            return Err(DiskIdError::TooLong {
                len: bytes.len(),
                max: ID_BYTES,
            });
        }
        if bytes.is_empty() || bytes.contains(&0) {
            return Err(DiskIdError::Malformed { max: ID_BYTES });
        }
        let mut id = [0u8; ID_BYTES];
        id[..bytes.len()].copy_from_slice(bytes);
        Ok(Self(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_of_1_to_20_bytes_are_padded_with_nul() {
        let id: DiskId = "hull-test-disk".parse().unwrap();
        let mut expected = b"hull-test-disk".to_vec();
        expected.resize(ID_BYTES, 0);
        assert_eq!(id.as_bytes().as_slice(), expected);
        let full: DiskId = "a".repeat(20).parse().unwrap();
        assert_eq!(full.as_bytes(), &[b'a'; ID_BYTES]);
    }

    #[test]
    fn serials_too_long_empty_or_with_nul_are_refused() {
        assert_eq!(
            "a".repeat(21).parse::<DiskId>(),
            Err(DiskIdError::TooLong { len: 21, max: 20 })
        );
        // Multi-byte characters count in bytes: 11 × 2 bytes.
        assert_eq!(
            "é".repeat(11).parse::<DiskId>(),
            Err(DiskIdError::TooLong { len: 22, max: 20 })
        );
        assert_eq!(
            "".parse::<DiskId>(),
            Err(DiskIdError::Malformed { max: 20 })
        );
        assert_eq!(
            "a\0b".parse::<DiskId>(),
            Err(DiskIdError::Malformed { max: 20 })
        );
    }

    #[test]
    fn the_default_id_is_the_file_name_cut_to_20_bytes() {
        let id = DiskId::from_file_name(Path::new("/x/a-very-long-disk-file-name.img"));
        assert_eq!(id.as_bytes(), b"a-very-long-disk-fil");
        let none = DiskId::from_file_name(Path::new("/"));
        assert_eq!(none.as_bytes(), &[0; ID_BYTES]);
    }
}
