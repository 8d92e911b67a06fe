//! A pod's shared namespaces: the containers of a CRI pod join the network, IPC and UTS
//! namespaces (and with `shareProcessNamespace` the PID namespace) of the pod's sandbox
//! container, as the kubelet asks.
//!
//! CRI writes those as host paths, `/proc/<pid of the sandbox task>/ns/<kind>`, and the pid a
//! hull shim reports for every task is its own: the paths name the shim's namespaces on the
//! host, never the pod's (in a VM they name nothing at all, or some unrelated guest process).
//! So, as Kata's agent does (`update_container_namespaces`), the agent ignores the host path
//! of a shared namespace and puts the sandbox container's own in its place; it knows which
//! container that is from CRI's annotations. Specs without CRI's annotations (ctr, a plain
//! containerd client) are left as they are.
//!
//! This module owns only the rewrite of `linux.namespaces`; the sandbox container's PID comes
//! from the container service.

use serde_json::Value;

/// CRI's annotation naming a container's kind: `sandbox` or `container`.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";

/// CRI's annotation naming the pod sandbox a container belongs to.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// Why a spec's namespaces cannot be rewritten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `linux.namespaces` is not a list of objects.
    #[error("oci_spec_json: linux.namespaces is not a list of objects")]
    NotAList,
}

/// The pod sandbox a CRI container (not the sandbox container itself) belongs to, from its
/// annotations; `None` for a sandbox container or a spec CRI did not make.
pub fn cri_sandbox_of(spec: &Value) -> Option<&str> {
    let annotations = spec.get("annotations")?;
    let kind = annotations
        .get(CONTAINER_TYPE_ANNOTATION)
        .and_then(Value::as_str)?;
    if kind != "container" {
        return None;
    }
    annotations
        .get(SANDBOX_ID_ANNOTATION)
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
}

/// The name of a shared namespace kind's file under `/proc/<pid>/ns`; `None` for the kinds a
/// pod does not share (mount, user, cgroup, time: a host path there is left alone).
fn shared_ns_file(kind: &str) -> Option<&'static str> {
    match kind {
        "network" => Some("net"),
        "ipc" => Some("ipc"),
        "uts" => Some("uts"),
        "pid" => Some("pid"),
        _ => None,
    }
}

/// Points each shared namespace of `spec` that names a path (CRI's way of saying "the pod's")
/// at the sandbox container's, whose init has PID `sandbox_pid` here. A namespace without a
/// path (a new one, as CRI asks for the PID namespace by default) stays new. Answers the
/// kinds that were redirected.
pub fn join_sandbox(spec: &mut Value, sandbox_pid: i32) -> Result<Vec<String>, Error> {
    let Some(namespaces) = spec.pointer_mut("/linux/namespaces") else {
        return Ok(Vec::new());
    };
    if namespaces.is_null() {
        return Ok(Vec::new());
    }
    let namespaces = namespaces.as_array_mut().ok_or(Error::NotAList)?;
    let mut joined = Vec::new();
    for namespace in namespaces {
        let namespace = namespace.as_object_mut().ok_or(Error::NotAList)?;
        let Some(kind) = namespace.get("type").and_then(Value::as_str) else {
            continue;
        };
        let Some(file) = shared_ns_file(kind) else {
            continue;
        };
        let kind = kind.to_owned();
        let has_path = namespace
            .get("path")
            .and_then(Value::as_str)
            .is_some_and(|path| !path.is_empty());
        if has_path {
            namespace.insert(
                "path".into(),
                Value::String(format!("/proc/{sandbox_pid}/ns/{file}")),
            );
            joined.push(kind);
        }
    }
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn cri_container(namespaces: Value) -> Value {
        json!({
            "annotations": {
                CONTAINER_TYPE_ANNOTATION: "container",
                SANDBOX_ID_ANNOTATION: "pod-1",
            },
            "linux": {"namespaces": namespaces},
        })
    }

    #[test]
    fn a_cri_container_names_its_sandbox_and_a_sandbox_does_not() {
        assert_eq!(cri_sandbox_of(&cri_container(json!([]))), Some("pod-1"));
        let sandbox = json!({"annotations": {
            CONTAINER_TYPE_ANNOTATION: "sandbox",
            SANDBOX_ID_ANNOTATION: "pod-1",
        }});
        assert_eq!(cri_sandbox_of(&sandbox), None);
        assert_eq!(cri_sandbox_of(&json!({"annotations": {}})), None);
        assert_eq!(cri_sandbox_of(&json!({})), None);
        let empty = json!({"annotations": {
            CONTAINER_TYPE_ANNOTATION: "container",
            SANDBOX_ID_ANNOTATION: "",
        }});
        assert_eq!(cri_sandbox_of(&empty), None);
    }

    #[test]
    fn host_paths_of_shared_namespaces_become_the_sandboxs() {
        let mut spec = cri_container(json!([
            {"type": "pid"},
            {"type": "ipc", "path": "/proc/4242/ns/ipc"},
            {"type": "uts", "path": "/proc/4242/ns/uts"},
            {"type": "mount"},
            {"type": "network", "path": "/proc/4242/ns/net"},
        ]));
        let joined = join_sandbox(&mut spec, 17).unwrap();
        assert_eq!(joined, ["ipc", "uts", "network"]);
        assert_eq!(
            spec["linux"]["namespaces"],
            json!([
                {"type": "pid"},
                {"type": "ipc", "path": "/proc/17/ns/ipc"},
                {"type": "uts", "path": "/proc/17/ns/uts"},
                {"type": "mount"},
                {"type": "network", "path": "/proc/17/ns/net"},
            ])
        );
    }

    #[test]
    fn a_shared_pid_namespace_is_the_sandboxs_and_others_stay() {
        let mut spec = cri_container(json!([
            {"type": "pid", "path": "/proc/4242/ns/pid"},
            {"type": "cgroup", "path": "/proc/4242/ns/cgroup"},
        ]));
        assert_eq!(join_sandbox(&mut spec, 9).unwrap(), ["pid"]);
        assert_eq!(spec["linux"]["namespaces"][0]["path"], "/proc/9/ns/pid");
        assert_eq!(
            spec["linux"]["namespaces"][1]["path"],
            "/proc/4242/ns/cgroup"
        );
    }

    #[test]
    fn malformed_namespaces_are_refused_and_absent_ones_are_fine() {
        for bad in [json!({"x": 1}), json!([1]), json!("pid")] {
            let mut spec = cri_container(bad.clone());
            assert_eq!(join_sandbox(&mut spec, 1), Err(Error::NotAList), "{bad}");
        }
        assert_eq!(join_sandbox(&mut json!({}), 1), Ok(vec![]));
        assert_eq!(join_sandbox(&mut json!({"linux": {}}), 1), Ok(vec![]));
        assert_eq!(
            join_sandbox(&mut json!({"linux": {"namespaces": null}}), 1),
            Ok(vec![])
        );
    }

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            prop_oneof![
                Just("network".to_owned()),
                Just("pid".to_owned()),
                Just("path".to_owned()),
                Just("type".to_owned()),
                "[a-z/]{0,12}",
            ]
            .prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("type".to_owned()),
                        Just("path".to_owned()),
                        "[a-z]{1,6}"
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever the shim sends as namespaces, the rewrite never panics, and every
        /// namespace it reports joined now names the sandbox's.
        #[test]
        fn any_namespaces_are_rewritten_or_refused(namespaces in any_json(), pid in 1i32..100_000) {
            let mut spec = cri_container(namespaces);
            if let Ok(joined) = join_sandbox(&mut spec, pid) {
                let list = spec["linux"]["namespaces"].as_array().cloned().unwrap_or_default();
                let prefix = format!("/proc/{pid}/ns/");
                for kind in joined {
                    prop_assert!(list.iter().any(|n| n["type"] == kind.as_str()
                        && n["path"].as_str().is_some_and(|p| p.starts_with(&prefix))));
                }
            }
        }
    }
}
