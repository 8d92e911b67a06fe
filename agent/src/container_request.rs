//! The edge between the protocol's container requests and the agent's own types: a
//! CreateContainerRequest becomes a [`ContainerRequest`] only if every field is well formed
//! (the id, the OCI spec JSON, each storage), so nothing behind this module sees a raw
//! protobuf message. Whether the request can be carried out (a duplicate id, a missing
//! device) is decided later, by the container service.

use std::path::{Component, Path, PathBuf};

use hull_agent_protocol::agent::CreateContainerRequest;
use hull_agent_protocol::types::{Storage, StorageKind};
use hull_agent_protocol::MAX_JSON_BYTES;
use serde::Deserialize;

/// What is wrong with a request; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The container id is empty, too long, or has a character outside [A-Za-z0-9_.-].
    #[error("container id {0:?} is not 1 to 64 characters of [A-Za-z0-9_.-] (and not . or ..)")]
    BadContainerId(String),
    /// The OCI spec is bigger than the agent accepts.
    #[error("oci_spec_json is {len} bytes, more than the {max} accepted")]
    SpecTooLarge {
        /// Its size in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The OCI spec is not JSON of the spec's shape.
    #[error("oci_spec_json is not a valid OCI runtime spec: {0}")]
    BadSpec(String),
    /// A storage is malformed.
    #[error("storages[{index}]: {reason}")]
    BadStorage {
        /// Its index in the request.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

/// A container id: 1 to 64 characters of [A-Za-z0-9_.-], neither "." nor "..", so it is safe
/// as a path component and in a cgroup name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(String);

impl ContainerId {
    /// Checks `id`.
    pub fn parse(id: &str) -> Result<Self, Error> {
        let valid = (1..=64).contains(&id.len())
            && id != "."
            && id != ".."
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if valid {
            Ok(ContainerId(id.to_owned()))
        } else {
            Err(Error::BadContainerId(id.to_owned()))
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The parts of the OCI runtime spec the agent checks before it accepts a container. The
/// whole spec is parsed again by the container runtime; unknown fields are ignored here.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpecSummary {
    /// `ociVersion`, "1.x.y".
    pub oci_version: String,
    /// `root`.
    pub root: Root,
    /// `process`; absent for a container that is only created, never started.
    pub process: Option<Process>,
}

/// The spec's `root`.
#[derive(Debug, Clone, Deserialize)]
pub struct Root {
    /// The root file system, an absolute guest path.
    pub path: PathBuf,
    /// Whether it is mounted read-only.
    #[serde(default)]
    pub readonly: bool,
}

/// The spec's `process`, the parts checked here.
#[derive(Debug, Clone, Deserialize)]
pub struct Process {
    /// The command and its arguments; not empty.
    pub args: Vec<String>,
    /// The working directory, an absolute path in the container.
    pub cwd: PathBuf,
}

/// A storage the agent mounts before the container is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRequest {
    /// How it reaches the guest.
    pub kind: StorageKind,
    /// See `Storage.source` in types.proto.
    pub source: String,
    /// A BLOCK storage's disk: the serial of `serial:<ID>`, 1 to [`MAX_SERIAL_BYTES`]
    /// bytes. `None` for the other kinds.
    pub serial: Option<Vec<u8>>,
    /// File system type.
    pub fstype: String,
    /// mount(8)-style options.
    pub options: Vec<String>,
    /// Absolute, normalised guest path.
    pub mount_point: PathBuf,
}

/// A well-formed CreateContainerRequest.
#[derive(Debug, Clone)]
pub struct ContainerRequest {
    /// The container's id.
    pub id: ContainerId,
    /// What the agent checked of the spec.
    pub spec: SpecSummary,
    /// The spec as sent, for the container runtime.
    pub spec_json: Vec<u8>,
    /// Storages to mount first.
    pub storages: Vec<StorageRequest>,
}

impl TryFrom<CreateContainerRequest> for ContainerRequest {
    type Error = Error;

    fn try_from(request: CreateContainerRequest) -> Result<Self, Error> {
        let id = ContainerId::parse(&request.container_id)?;
        let spec = parse_spec(&request.oci_spec_json)?;
        let storages = storage_requests(&request.storages)?;
        Ok(ContainerRequest {
            id,
            spec,
            spec_json: request.oci_spec_json,
            storages,
        })
    }
}

fn parse_spec(json: &[u8]) -> Result<SpecSummary, Error> {
    if json.len() > MAX_JSON_BYTES {
        return Err(Error::SpecTooLarge {
            len: json.len(),
            max: MAX_JSON_BYTES,
        });
    }
    let spec: SpecSummary =
        serde_json::from_slice(json).map_err(|err| Error::BadSpec(err.to_string()))?;
    if !spec.oci_version.starts_with("1.") {
        return Err(Error::BadSpec(format!(
            "ociVersion {:?} is not a 1.x version",
            spec.oci_version
        )));
    }
    if !is_clean_absolute(&spec.root.path) {
        return Err(Error::BadSpec(format!(
            "root.path {:?} is not an absolute path without '..'",
            spec.root.path
        )));
    }
    if let Some(process) = &spec.process {
        if process.args.is_empty() {
            return Err(Error::BadSpec("process.args is empty".into()));
        }
        if !is_clean_absolute(&process.cwd) {
            return Err(Error::BadSpec(format!(
                "process.cwd {:?} is not an absolute path without '..'",
                process.cwd
            )));
        }
    }
    Ok(spec)
}

/// Checks the storages of a request (CreateContainer's or CreateSandbox's).
pub fn storage_requests(storages: &[Storage]) -> Result<Vec<StorageRequest>, Error> {
    storages
        .iter()
        .enumerate()
        .map(|(index, storage)| {
            storage_request(storage).map_err(|reason| Error::BadStorage { index, reason })
        })
        .collect()
}

fn storage_request(storage: &Storage) -> Result<StorageRequest, String> {
    let kind = match storage.kind.enum_value() {
        Ok(StorageKind::STORAGE_KIND_UNSPECIFIED) => return Err("kind is not set".into()),
        Ok(kind) => kind,
        Err(value) => return Err(format!("kind {value} is unknown to this agent")),
    };
    let mount_point = PathBuf::from(&storage.mount_point);
    if !is_clean_absolute(&mount_point) {
        return Err(format!(
            "mount_point {:?} is not an absolute path without '..'",
            storage.mount_point
        ));
    }
    let needs_source = kind != StorageKind::STORAGE_KIND_TMPFS;
    if needs_source && storage.source.is_empty() {
        return Err("source is empty".into());
    }
    let serial = if kind == StorageKind::STORAGE_KIND_BLOCK {
        if storage.fstype.is_empty() {
            return Err(
                "fstype is empty: a BLOCK storage names the file system on its disk \
                 (\"ext4\", \"xfs\" ...)"
                    .into(),
            );
        }
        Some(block_serial(&storage.source)?)
    } else {
        None
    };
    if kind == StorageKind::STORAGE_KIND_BIND && !is_clean_absolute(Path::new(&storage.source)) {
        return Err(format!(
            "bind source {:?} is not an absolute path without '..'",
            storage.source
        ));
    }
    Ok(StorageRequest {
        kind,
        source: storage.source.clone(),
        serial,
        fstype: storage.fstype.clone(),
        options: storage.options.clone(),
        mount_point,
    })
}

/// Most bytes of a disk serial: the size of the virtio-blk id (VIRTIO_BLK_ID_BYTES), all
/// a guest can read of it, so a longer one could never match.
pub const MAX_SERIAL_BYTES: usize = 20;

/// The serial of a BLOCK storage's `source`, `serial:<ID>` (see `Storage.source` in
/// types.proto). The `pci:` and `mmio:` forms the protocol once described are refused by
/// name: the host cannot predict a disk's place on a bus as surely as its serial.
fn block_serial(source: &str) -> Result<Vec<u8>, String> {
    if let Some(id) = source.strip_prefix("serial:") {
        let id = id.as_bytes();
        if id.is_empty() || id.len() > MAX_SERIAL_BYTES || id.contains(&0) {
            return Err(format!(
                "block source {source:?}: the serial is {} bytes; give 1 to \
                 {MAX_SERIAL_BYTES} bytes without NUL",
                id.len()
            ));
        }
        return Ok(id.to_vec());
    }
    for form in ["pci:", "mmio:"] {
        if source.starts_with(form) {
            return Err(format!(
                "block source {source:?}: the {form}<...> form is not supported by this \
                 agent; name the disk by its serial, serial:<ID>"
            ));
        }
    }
    Err(format!(
        "block source {source:?} is not of the form serial:<ID> (the disk's virtio-blk serial)"
    ))
}

/// Whether `path` is absolute and has no `..` component (so it cannot climb out of a root).
fn is_clean_absolute(path: &Path) -> bool {
    path.is_absolute()
        && path
            .components()
            .all(|c| !matches!(c, Component::ParentDir))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"{"ociVersion":"1.1.0","root":{"path":"/run/hull/c/web/rootfs"},
        "process":{"args":["/bin/sh"],"cwd":"/","env":["PATH=/bin"]},"linux":{"namespaces":[]}}"#;

    fn request(id: &str, spec: &str) -> CreateContainerRequest {
        let mut request = CreateContainerRequest::new();
        request.container_id = id.into();
        request.oci_spec_json = spec.as_bytes().to_vec();
        request
    }

    #[test]
    fn accepts_a_well_formed_request() {
        let parsed = ContainerRequest::try_from(request("web-1", SPEC)).expect("valid");
        assert_eq!(parsed.id.as_str(), "web-1");
        assert_eq!(parsed.spec.root.path, Path::new("/run/hull/c/web/rootfs"));
        assert_eq!(
            parsed.spec.process.map(|p| p.args),
            Some(vec!["/bin/sh".to_owned()])
        );
    }

    #[test]
    fn rejects_ids_unsafe_as_paths() {
        for id in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(65)] {
            assert_eq!(
                ContainerRequest::try_from(request(id, SPEC)).err(),
                Some(Error::BadContainerId(id.to_owned())),
                "{id:?}"
            );
        }
    }

    #[test]
    fn rejects_malformed_specs_naming_the_field() {
        let cases = [
            ("not json", "expected"),
            (r#"{"root":{"path":"/r"}}"#, "ociVersion"),
            (
                r#"{"ociVersion":"2.0.0","root":{"path":"/r"}}"#,
                "not a 1.x version",
            ),
            (
                r#"{"ociVersion":"1.1.0","root":{"path":"rootfs"}}"#,
                "root.path",
            ),
            (
                r#"{"ociVersion":"1.1.0","root":{"path":"/a/../../etc"}}"#,
                "root.path",
            ),
            (
                r#"{"ociVersion":"1.1.0","root":{"path":"/r"},"process":{"args":[],"cwd":"/"}}"#,
                "process.args",
            ),
        ];
        for (spec, field) in cases {
            let err = ContainerRequest::try_from(request("c", spec)).expect_err(spec);
            assert!(matches!(err, Error::BadSpec(_)), "{spec}: {err}");
            assert!(err.to_string().contains(field), "{spec}: {err}");
        }
        let huge = format!(
            r#"{{"ociVersion":"1.1.0","pad":"{}"}}"#,
            "x".repeat(MAX_JSON_BYTES)
        );
        assert!(matches!(
            ContainerRequest::try_from(request("c", &huge)),
            Err(Error::SpecTooLarge { .. })
        ));
    }

    #[test]
    fn rejects_storages_without_kind_or_escaping_paths() {
        let storage = |kind: StorageKind, source: &str, mount_point: &str| {
            let mut s = Storage::new();
            s.kind = kind.into();
            s.source = source.into();
            s.mount_point = mount_point.into();
            s
        };
        let cases = [
            (
                storage(StorageKind::STORAGE_KIND_UNSPECIFIED, "tag", "/m"),
                "kind is not set",
            ),
            (
                storage(StorageKind::STORAGE_KIND_VIRTIO_FS, "tag", "m"),
                "mount_point",
            ),
            (
                storage(StorageKind::STORAGE_KIND_VIRTIO_FS, "", "/m"),
                "source is empty",
            ),
            (
                storage(StorageKind::STORAGE_KIND_BIND, "/a/../..", "/m"),
                "bind source",
            ),
        ];
        for (bad, reason) in cases {
            let mut req = request("c", SPEC);
            req.storages = vec![storage(StorageKind::STORAGE_KIND_TMPFS, "", "/t"), bad];
            match ContainerRequest::try_from(req) {
                Err(Error::BadStorage {
                    index: 1,
                    reason: got,
                }) => {
                    assert!(got.contains(reason), "{got}")
                }
                other => panic!("expected storages[1] to be rejected for {reason}: {other:?}"),
            }
        }
    }

    fn block(source: &str, fstype: &str) -> Storage {
        let mut s = Storage::new();
        s.kind = StorageKind::STORAGE_KIND_BLOCK.into();
        s.source = source.into();
        s.fstype = fstype.into();
        s.mount_point = "/run/hull/c/vol".into();
        s
    }

    #[test]
    fn block_storages_name_their_disk_by_serial() {
        let parsed = storage_requests(&[block("serial:hull-test-disk", "ext4")]).unwrap();
        assert_eq!(parsed[0].serial.as_deref(), Some(&b"hull-test-disk"[..]));
        assert_eq!(parsed[0].fstype, "ext4");
        // 20 bytes, the whole virtio-blk id, and any bytes but NUL.
        let full = format!("serial:{}", "é".repeat(10));
        assert_eq!(
            storage_requests(&[block(&full, "xfs")]).unwrap()[0].serial,
            Some("é".repeat(10).into_bytes())
        );
        // Other kinds have no serial.
        let mut tmpfs = Storage::new();
        tmpfs.kind = StorageKind::STORAGE_KIND_TMPFS.into();
        tmpfs.mount_point = "/t".into();
        assert_eq!(storage_requests(&[tmpfs]).unwrap()[0].serial, None);
    }

    #[test]
    fn block_sources_of_other_forms_are_refused_naming_the_form() {
        let cases = [
            ("pci:02/00", "the pci:<...> form is not supported"),
            ("mmio:1", "the mmio:<...> form is not supported"),
            ("/dev/vdb", "is not of the form serial:<ID>"),
            ("vdb", "is not of the form serial:<ID>"),
            ("serial:", "the serial is 0 bytes"),
            ("serial:abcdefghijklmnopqrstu", "the serial is 21 bytes"),
            ("serial:a\0b", "without NUL"),
        ];
        for (source, reason) in cases {
            match storage_requests(&[block(source, "ext4")]) {
                Err(Error::BadStorage {
                    index: 0,
                    reason: got,
                }) => {
                    assert!(got.contains(reason), "{source:?}: {got}")
                }
                other => panic!("expected {source:?} to be refused: {other:?}"),
            }
        }
    }

    #[test]
    fn block_storages_without_fstype_are_refused_naming_it() {
        match storage_requests(&[block("serial:d", "")]) {
            Err(Error::BadStorage { index: 0, reason }) => {
                assert!(reason.starts_with("fstype is empty"), "{reason}")
            }
            other => panic!("expected a missing fstype to be refused: {other:?}"),
        }
    }

    proptest::proptest! {
        /// Whatever a shim sends, checking it answers Ok or a precise error, never a panic.
        #[test]
        fn arbitrary_requests_never_panic(
            id in ".{0,80}",
            spec in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            json_root in "[a-z/.]{0,20}",
            kind in 0i32..7,
            source in ".{0,20}",
            mount_point in "[a-z/.]{0,20}",
        ) {
            let mut req = request(&id, "");
            req.oci_spec_json = spec;
            let _ = ContainerRequest::try_from(req);

            // Any block source: a serial of 1 to 20 bytes without NUL, or refused.
            let block_source = format!("serial:{source}");
            match storage_requests(&[block(&block_source, "ext4")]) {
                Ok(parsed) => {
                    let serial = parsed[0].serial.clone().unwrap_or_default();
                    proptest::prop_assert_eq!(serial.as_slice(), source.as_bytes());
                    proptest::prop_assert!((1..=MAX_SERIAL_BYTES).contains(&serial.len()));
                }
                Err(_) => proptest::prop_assert!(
                    source.is_empty() || source.len() > MAX_SERIAL_BYTES || source.contains('\0')
                ),
            }

            let spec = format!(r#"{{"ociVersion":"1.0.0","root":{{"path":"{json_root}"}}}}"#);
            let mut req = request(&id, &spec);
            let mut storage = Storage::new();
            storage.kind = hull_agent_protocol::protobuf::EnumOrUnknown::from_i32(kind);
            storage.source = source;
            storage.mount_point = mount_point;
            req.storages = vec![storage];
            if let Ok(parsed) = ContainerRequest::try_from(req) {
                proptest::prop_assert!(is_clean_absolute(&parsed.spec.root.path));
                for storage in &parsed.storages {
                    proptest::prop_assert!(is_clean_absolute(&storage.mount_point));
                }
            }
        }
    }
}
