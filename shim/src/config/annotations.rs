//! Pod annotations `io.hull.config.<key>` that override configuration keys for one sandbox.
//!
//! Only keys in [`OVERRIDABLE`] can ever be overridden, and only those the administrator lists
//! in `runtime.allowed_annotations`: a pod must never choose the kernel, the initrd, the QEMU
//! binary or the hypervisor, which would let it run code of its choosing on the host.

use std::collections::BTreeMap;

use super::{Config, Error, Result};

/// The annotation prefix.
pub const PREFIX: &str = "io.hull.config.";

/// Every key a pod annotation may override, given the administrator's consent.
pub const OVERRIDABLE: &[&str] = &[
    "vm.vcpus",
    "vm.memory_mib",
    "vm.kernel_params",
    "agent.start_timeout_secs",
];

/// Applies the `io.hull.config.*` annotations of a pod to `config`. Other annotations are
/// ignored. A refused key, a bad value, or a result that fails validation is an error naming
/// the annotation.
pub fn apply(config: &Config, annotations: &BTreeMap<String, String>) -> Result<Config> {
    let mut table = toml::Table::try_from(config).map_err(|e| Error::Annotation {
        annotation: PREFIX.to_owned(),
        reason: format!("the configuration could not be re-encoded: {e}"),
    })?;
    let mut applied = Vec::new();
    for (annotation, value) in annotations {
        let Some(key) = annotation.strip_prefix(PREFIX) else {
            continue;
        };
        let refuse = |reason: String| Error::Annotation {
            annotation: annotation.clone(),
            reason,
        };
        if !OVERRIDABLE.contains(&key) {
            return Err(refuse(format!(
                "'{key}' cannot be set by a pod annotation (possible: {})",
                OVERRIDABLE.join(", ")
            )));
        }
        if !config.runtime.allowed_annotations.iter().any(|k| k == key) {
            return Err(refuse(format!(
                "'{key}' is not in runtime.allowed_annotations of the configuration"
            )));
        }
        let (section, field) = key.split_once('.').unwrap_or(("", key));
        // A value that is valid TOML (`2`, `true`) keeps its type; anything else is a string.
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let mut overlay = toml::Table::new();
        overlay.insert(field.to_owned(), parsed);
        let mut outer = toml::Table::new();
        outer.insert(section.to_owned(), toml::Value::Table(overlay));
        super::load::merge(&mut table, outer);
        applied.push(annotation.clone());
    }
    if applied.is_empty() {
        return Ok(config.clone());
    }
    let origin = format!("annotations {}", applied.join(", "));
    let merged: Config = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| Error::Annotation {
            annotation: applied.join(", "),
            reason: e.to_string(),
        })?;
    merged.validate(&origin)?;
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn allowed_keys_are_applied_with_their_types() {
        let config = Config::default();
        let out = apply(
            &config,
            &annotations(&[
                ("io.hull.config.vm.vcpus", "2"),
                ("io.hull.config.vm.memory_mib", "512"),
                ("io.kubernetes.cri.sandbox-id", "abc"),
            ]),
        )
        .unwrap();
        assert_eq!(out.vm.vcpus, 2);
        assert_eq!(out.vm.memory_mib, 512);
    }

    #[test]
    fn keys_not_allowed_by_the_administrator_are_refused() {
        let config = Config::default();
        let err = apply(
            &config,
            &annotations(&[("io.hull.config.vm.kernel_params", "quiet")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("io.hull.config.vm.kernel_params"), "{err}");
        assert!(err.contains("allowed_annotations"), "{err}");
    }

    #[test]
    fn paths_and_hypervisor_can_never_be_overridden() {
        let mut config = Config::default();
        config.runtime.allowed_annotations = OVERRIDABLE.iter().map(|s| s.to_string()).collect();
        for key in [
            "vm.kernel",
            "vm.initrd",
            "qemu.path",
            "hypervisor.",
            "runtime.enable_none_hypervisor",
        ] {
            let annotation = format!("{PREFIX}{key}");
            let err = apply(&config, &annotations(&[(&annotation, "/tmp/evil")])).unwrap_err();
            assert!(
                err.to_string().contains("cannot be set by a pod"),
                "{key}: {err}"
            );
        }
    }

    #[test]
    fn bad_values_are_refused_naming_the_annotation() {
        let config = Config::default();
        let err = apply(
            &config,
            &annotations(&[("io.hull.config.vm.vcpus", "many")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("io.hull.config.vm.vcpus"), "{err}");
        let err = apply(&config, &annotations(&[("io.hull.config.vm.vcpus", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("vm.vcpus = 0"), "{err}");
    }
}
