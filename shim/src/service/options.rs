//! containerd's runtime options for a hull task: the `options` of CreateTaskRequest.
//!
//! containerd passes the container's runtime options there (`ctr run --runtime-config-path`,
//! or CRI's `runtime_options` in its configuration) as `runtimeoptions.v1.Options`, the type
//! Kata and gVisor read too: `type_url` (1) and `config_path` (2). hull reads `config_path`
//! as the configuration file that comes first in the search order. Any other options type is
//! refused by name rather than ignored, so a misconfigured runtime is noticed.
//!
//! The message is decoded by hand with protobuf's wire reader: containerd-shim-protos does
//! not ship this type, and two string fields do not justify generated code.

use std::path::PathBuf;

use containerd_shim_protos::protobuf::rt::WireType;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::CodedInputStream;

/// The options type hull reads.
pub const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// Errors of the runtime options.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Options of a type hull does not read.
    #[error("runtime options of type {0:?} are not hull's: use {RUNTIME_OPTIONS_TYPE} (ConfigPath) or none")]
    UnknownType(String),
    /// The options are not a valid message.
    #[error("malformed {RUNTIME_OPTIONS_TYPE}: {0}")]
    Malformed(String),
}

/// What hull takes from the runtime options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// The configuration file to use, if the options name one.
    pub config_path: Option<PathBuf>,
}

impl TryFrom<Option<&Any>> for RuntimeOptions {
    type Error = Error;

    fn try_from(any: Option<&Any>) -> Result<Self, Error> {
        let Some(any) = any.filter(|a| !a.type_url.is_empty() || !a.value.is_empty()) else {
            return Ok(Self::default());
        };
        // containerd writes the bare name; typeurl-style prefixes ("types.x/...") are allowed.
        let name = any.type_url.rsplit('/').next().unwrap_or_default();
        if name != RUNTIME_OPTIONS_TYPE {
            return Err(Error::UnknownType(any.type_url.clone()));
        }
        let malformed =
            |e: containerd_shim_protos::protobuf::Error| Error::Malformed(e.to_string());
        let mut input = CodedInputStream::from_bytes(&any.value);
        let mut config_path = String::new();
        while let Some(tag) = input.read_raw_tag_or_eof().map_err(malformed)? {
            let wire = WireType::new(tag & 7)
                .ok_or_else(|| Error::Malformed(format!("wire type {} in tag {tag}", tag & 7)))?;
            match (tag >> 3, wire) {
                (2, WireType::LengthDelimited) => {
                    config_path = input.read_string().map_err(malformed)?;
                }
                _ => input.skip_field(wire).map_err(malformed)?,
            }
        }
        Ok(Self {
            config_path: (!config_path.is_empty()).then(|| PathBuf::from(config_path)),
        })
    }
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

    fn options_any(type_url: &str, value: Vec<u8>) -> Any {
        let mut any = Any::new();
        any.type_url = type_url.to_owned();
        any.value = value;
        any
    }

    #[test]
    fn config_path_is_read_from_runtimeoptions() {
        let mut value = string_field(1, "io.containerd.hull.v2");
        value.extend(string_field(2, "/etc/hull/test.toml"));
        let options =
            RuntimeOptions::try_from(Some(&options_any(RUNTIME_OPTIONS_TYPE, value))).unwrap();
        assert_eq!(
            options.config_path,
            Some(PathBuf::from("/etc/hull/test.toml"))
        );
    }

    #[test]
    fn no_options_mean_the_usual_search() {
        assert_eq!(
            RuntimeOptions::try_from(None).unwrap(),
            RuntimeOptions::default()
        );
        assert_eq!(
            RuntimeOptions::try_from(Some(&Any::new())).unwrap(),
            RuntimeOptions::default()
        );
    }

    #[test]
    fn runc_options_are_refused_by_name() {
        let err =
            RuntimeOptions::try_from(Some(&options_any("containerd.runc.v1.Options", vec![])))
                .unwrap_err()
                .to_string();
        assert!(err.contains("containerd.runc.v1.Options"), "{err}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(value in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = RuntimeOptions::try_from(Some(&options_any(RUNTIME_OPTIONS_TYPE, value)));
        }
    }
}
