//! `containerd-shim-hull-v2 start` as each generation of containerd calls it, and the answer
//! each expects:
//!
//! - containerd 1.x: flags (`-namespace -id -address -publish-binary`), containerd's ttrpc
//!   address in `TTRPC_ADDRESS`, the runtime options (if any) as a protobuf `Any` on stdin;
//!   the answer is the shim's address, bare. containerd 1.6 dials whatever it reads as a
//!   socket path, so it must get nothing else.
//! - containerd 2.0 to 2.2: the same, plus `MAX_SHIM_VERSION` in the environment; the answer
//!   may be JSON `{"version":2,"address":"unix://…","protocol":"ttrpc"}`, the version naming
//!   the Task API served (hull serves v2).
//! - containerd 2.3 on (the bootstrap protocol): a `containerd.runtime.bootstrap.v1.
//!   BootstrapParams` on stdin (protobuf; an early draft wrote it as JSON) carrying the id,
//!   namespace and containerd's addresses, which the flags and environment may no longer
//!   carry; the answer is a `BootstrapResult` in the same encoding.
//!
//! The runtime options that containerd 1.x writes on stdin decode as a BootstrapParams too
//! (the fields share numbers), so a BootstrapParams counts only if its id and namespace are
//! the ones on the command line, as containerd's own shims check.
//!
//! The two messages are decoded and encoded by hand with protobuf's wire reader and writer:
//! containerd-shim-protos 0.11 predates them, and a few scalar fields do not justify
//! generated code. Their extensions (runtime options again) are skipped: hull reads its
//! options from CreateTaskRequest, where every containerd generation also sends them.

use containerd_shim_protos::protobuf::rt::WireType;
use containerd_shim_protos::protobuf::{CodedInputStream, CodedOutputStream};

/// The environment variable containerd 2.x sets to the highest Task API version it speaks.
pub const MAX_SHIM_VERSION_ENV: &str = "MAX_SHIM_VERSION";
/// The environment variable containerd sets to its ttrpc address (events go there).
pub const TTRPC_ADDRESS_ENV: &str = "TTRPC_ADDRESS";
/// The version of containerd's Task API that hull serves.
pub const TASK_API_VERSION: i32 = 2;
/// The only transport hull serves.
pub const PROTOCOL: &str = "ttrpc";
/// Largest stdin read at `start`, in bytes: both messages are small.
pub const MAX_INPUT: u64 = 1 << 20;

/// Errors of the bootstrap messages.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The protobuf message is malformed.
    #[error("malformed BootstrapParams: {0}")]
    Malformed(String),
}

/// What hull takes from containerd's `BootstrapParams`.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct BootstrapParams {
    /// The container (or sandbox) id (field 1).
    #[serde(alias = "id")]
    pub instance_id: String,
    /// containerd's namespace (field 2).
    pub namespace: String,
    /// The log level asked for: 0 info, negative more verbose (-4 debug), positive less
    /// (field 3).
    pub log_level: i32,
    /// containerd's version (field 4).
    pub containerd_version: String,
    /// containerd's ttrpc address, where events go (field 5).
    pub containerd_ttrpc_address: String,
    /// containerd's gRPC address (field 6).
    pub containerd_grpc_address: String,
    /// containerd's binary, for publishing events (field 7).
    pub containerd_binary: String,
    /// Where shim sockets go, if containerd says (field 9).
    pub socket_dir: Option<String>,
}

impl BootstrapParams {
    /// Decodes the protobuf encoding; unknown fields and the extensions are skipped.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let malformed =
            |e: containerd_shim_protos::protobuf::Error| Error::Malformed(e.to_string());
        let mut input = CodedInputStream::from_bytes(bytes);
        let mut params = Self::default();
        while let Some(tag) = input.read_raw_tag_or_eof().map_err(malformed)? {
            let wire = WireType::new(tag & 7)
                .ok_or_else(|| Error::Malformed(format!("wire type {} in tag {tag}", tag & 7)))?;
            let field = tag >> 3;
            let string = match (field, wire) {
                (1 | 2 | 4..=7 | 9, WireType::LengthDelimited) => {
                    Some(input.read_string().map_err(malformed)?)
                }
                (3, WireType::Varint) => {
                    params.log_level = input.read_int32().map_err(malformed)?;
                    None
                }
                _ => {
                    input.skip_field(wire).map_err(malformed)?;
                    None
                }
            };
            if let Some(value) = string {
                match field {
                    1 => params.instance_id = value,
                    2 => params.namespace = value,
                    4 => params.containerd_version = value,
                    5 => params.containerd_ttrpc_address = value,
                    6 => params.containerd_grpc_address = value,
                    7 => params.containerd_binary = value,
                    _ => params.socket_dir = Some(value),
                }
            }
        }
        Ok(params)
    }

    /// Whether the level asked for is debug or more verbose.
    pub fn debug(&self) -> bool {
        self.log_level <= -4
    }
}

/// How `start` was called, which decides the answer's form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// containerd 1.x (or anything that says no more): the bare address.
    Legacy,
    /// containerd 2.0 to 2.2: JSON with version, address and protocol.
    Json,
    /// The bootstrap protocol, protobuf on stdin and stdout.
    Bootstrap(BootstrapParams),
    /// The bootstrap protocol's early draft, JSON on stdin and stdout.
    BootstrapJson(BootstrapParams),
}

impl Caller {
    /// Tells the callers apart by what `start` got: `stdin`, the command line's `id` and
    /// `namespace`, and the value of [`MAX_SHIM_VERSION_ENV`].
    pub fn detect(stdin: &[u8], id: &str, namespace: &str, max_shim_version: Option<&str>) -> Self {
        let ours = |p: &BootstrapParams| {
            !p.instance_id.is_empty()
                && p.instance_id == id
                && !p.namespace.is_empty()
                && p.namespace == namespace
        };
        if stdin.trim_ascii_start().starts_with(b"{") {
            if let Ok(params) = serde_json::from_slice::<BootstrapParams>(stdin) {
                if ours(&params) {
                    return Self::BootstrapJson(params);
                }
            }
        } else if let Ok(params) = BootstrapParams::decode(stdin) {
            if ours(&params) {
                return Self::Bootstrap(params);
            }
        }
        match max_shim_version {
            Some(v) if !v.trim().is_empty() => Self::Json,
            _ => Self::Legacy,
        }
    }

    /// The bootstrap parameters, when containerd sent them.
    pub fn params(&self) -> Option<&BootstrapParams> {
        match self {
            Self::Bootstrap(p) | Self::BootstrapJson(p) => Some(p),
            Self::Legacy | Self::Json => None,
        }
    }

    /// What `start` prints for a shim serving at `address`.
    pub fn answer(&self, address: &str) -> Vec<u8> {
        match self {
            Self::Legacy => address.as_bytes().to_vec(),
            Self::Json | Self::BootstrapJson(_) => serde_json::json!({
                "version": TASK_API_VERSION,
                "address": address,
                "protocol": PROTOCOL,
            })
            .to_string()
            .into_bytes(),
            Self::Bootstrap(_) => encode_result(address),
        }
    }
}

/// A `BootstrapResult` (version 1, address 2, protocol 3) in protobuf.
fn encode_result(address: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut out = CodedOutputStream::vec(&mut bytes);
    // Writing into a Vec cannot fail; an error would only truncate the answer, which
    // containerd then rejects by name.
    let written = out
        .write_int32(1, TASK_API_VERSION)
        .and_then(|()| out.write_string(2, address))
        .and_then(|()| out.write_string(3, PROTOCOL))
        .and_then(|()| out.flush());
    if let Err(err) = written {
        tracing::error!(%err, "encoding the BootstrapResult");
    }
    drop(out);
    bytes
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn string_field(number: u8, value: &str) -> Vec<u8> {
        let mut bytes = vec![(number << 3) | 2, u8::try_from(value.len()).unwrap()];
        bytes.extend_from_slice(value.as_bytes());
        bytes
    }

    /// A BootstrapParams as containerd 2.3 writes it, with a runtime options extension.
    fn params_bytes(id: &str, namespace: &str) -> Vec<u8> {
        let mut bytes = string_field(1, id);
        bytes.extend(string_field(2, namespace));
        // log_level = -4 (debug): a negative int32 is a 10-byte varint.
        bytes.extend([
            3 << 3,
            0xfc,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0x01,
        ]);
        bytes.extend(string_field(4, "2.3.0"));
        bytes.extend(string_field(
            5,
            "unix:///run/containerd/containerd.sock.ttrpc",
        ));
        bytes.extend(string_field(6, "/run/containerd/containerd.sock"));
        bytes.extend(string_field(7, "/usr/bin/containerd"));
        let extension = string_field(1, "runtimeoptions.v1.Options");
        bytes.push((8 << 3) | 2);
        bytes.push(u8::try_from(extension.len()).unwrap());
        bytes.extend(extension);
        bytes.extend(string_field(9, "/run/containerd/s"));
        bytes
    }

    #[test]
    fn containerd_1_gets_the_bare_address() {
        // containerd 1.x writes the runtime options on stdin (or nothing).
        let mut options = string_field(1, "runtimeoptions.v1.Options");
        options.extend(string_field(2, "\u{12}\u{5}/x.toml"));
        for stdin in [Vec::new(), options] {
            let caller = Caller::detect(&stdin, "c1", "default", None);
            assert_eq!(caller, Caller::Legacy);
            assert_eq!(
                caller.answer("unix:///run/containerd/s/ab"),
                b"unix:///run/containerd/s/ab"
            );
        }
    }

    #[test]
    fn containerd_2_gets_json_naming_task_api_v2_over_ttrpc() {
        let caller = Caller::detect(b"", "c1", "default", Some("3"));
        assert_eq!(caller, Caller::Json);
        let answer: serde_json::Value =
            serde_json::from_slice(&caller.answer("unix:///run/containerd/s/ab")).unwrap();
        assert_eq!(
            answer,
            serde_json::json!({"version": 2, "address": "unix:///run/containerd/s/ab", "protocol": "ttrpc"})
        );
    }

    #[test]
    fn bootstrap_params_are_read_and_answered_in_protobuf() {
        let caller = Caller::detect(&params_bytes("c1", "k8s.io"), "c1", "k8s.io", Some("2"));
        let Caller::Bootstrap(params) = &caller else {
            panic!("{caller:?}");
        };
        assert_eq!(params.instance_id, "c1");
        assert_eq!(params.namespace, "k8s.io");
        assert!(params.debug());
        assert_eq!(params.containerd_version, "2.3.0");
        assert_eq!(
            params.containerd_ttrpc_address,
            "unix:///run/containerd/containerd.sock.ttrpc"
        );
        assert_eq!(
            params.containerd_grpc_address,
            "/run/containerd/containerd.sock"
        );
        assert_eq!(params.containerd_binary, "/usr/bin/containerd");
        assert_eq!(params.socket_dir.as_deref(), Some("/run/containerd/s"));

        let answer = caller.answer("unix:///run/containerd/s/ab");
        let mut expected = vec![1 << 3, 2];
        expected.extend(string_field(2, "unix:///run/containerd/s/ab"));
        expected.extend(string_field(3, "ttrpc"));
        assert_eq!(answer, expected);
    }

    #[test]
    fn bootstrap_params_of_another_instance_are_not_ours() {
        let caller = Caller::detect(&params_bytes("c2", "k8s.io"), "c1", "k8s.io", None);
        assert_eq!(caller, Caller::Legacy);
        let caller = Caller::detect(&params_bytes("c1", "default"), "c1", "k8s.io", Some("2"));
        assert_eq!(caller, Caller::Json);
    }

    #[test]
    fn the_drafts_json_params_are_answered_in_json() {
        let stdin = br#"{"instance_id":"c1","namespace":"default","containerd_ttrpc_address":"unix:///t","log_level":-4}"#;
        let caller = Caller::detect(stdin, "c1", "default", None);
        let Caller::BootstrapJson(params) = &caller else {
            panic!("{caller:?}");
        };
        assert_eq!(params.containerd_ttrpc_address, "unix:///t");
        let answer: serde_json::Value =
            serde_json::from_slice(&caller.answer("unix:///s")).unwrap();
        assert_eq!(answer["address"], "unix:///s");
        assert_eq!(answer["version"], 2);
    }

    #[test]
    fn malformed_params_are_refused() {
        // A length that runs past the end.
        assert!(BootstrapParams::decode(&[(1 << 3) | 2, 40, b'a']).is_err());
        // Wire type 7 does not exist.
        assert!(BootstrapParams::decode(&[(1 << 3) | 7]).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_stdin_never_panics(stdin in proptest::collection::vec(any::<u8>(), 0..512)) {
            let caller = Caller::detect(&stdin, "c1", "default", None);
            let _ = caller.answer("unix:///s");
        }
    }
}
