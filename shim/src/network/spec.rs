//! What a container's OCI spec says about the pod's network, and how the spec changes for a
//! guest: the pod's network namespace (a host path CNI set up) becomes the guest's own
//! network namespace, where the agent has configured the pod's interfaces, as in Kata.

use std::path::PathBuf;

use serde_json::Value;

fn network_entry(namespace: &Value) -> bool {
    namespace.get("type").and_then(Value::as_str) == Some("network")
}

/// The pod's network namespace: the path of the spec's `network` namespace, if it names one
/// (a spec without a path asks for a new, empty namespace: no pod network to carry).
pub fn pod_netns(spec: &Value) -> Option<PathBuf> {
    spec.pointer("/linux/namespaces")?
        .as_array()?
        .iter()
        .find(|namespace| network_entry(namespace))?
        .get("path")
        .and_then(Value::as_str)
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
}

/// For a container in a VM whose pod network is carried into the guest: drops the `network`
/// namespace that names a host path, so the container shares the guest's network namespace.
/// Answers whether the spec changed.
pub fn share_guest_network(spec: &mut Value) -> bool {
    if pod_netns(spec).is_none() {
        return false;
    }
    match spec
        .pointer_mut("/linux/namespaces")
        .and_then(Value::as_array_mut)
    {
        Some(namespaces) => {
            let before = namespaces.len();
            namespaces.retain(|namespace| !network_entry(namespace));
            namespaces.len() != before
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_pod_netns_is_the_network_namespace_path() {
        let spec = json!({"linux": {"namespaces": [
            {"type": "pid"},
            {"type": "network", "path": "/var/run/netns/cni-1"},
        ]}});
        assert_eq!(
            pod_netns(&spec),
            Some(PathBuf::from("/var/run/netns/cni-1"))
        );
        for without in [
            json!({"linux": {"namespaces": [{"type": "network"}]}}),
            json!({"linux": {"namespaces": [{"type": "network", "path": ""}]}}),
            json!({"linux": {"namespaces": [{"type": "pid", "path": "/proc/1/ns/pid"}]}}),
            json!({"linux": {}}),
            json!({}),
        ] {
            assert_eq!(pod_netns(&without), None, "{without}");
        }
    }

    #[test]
    fn in_a_guest_the_container_shares_the_guests_network_namespace() {
        let mut spec = json!({"linux": {"namespaces": [
            {"type": "pid"},
            {"type": "network", "path": "/var/run/netns/cni-1"},
            {"type": "mount"},
        ]}});
        assert!(share_guest_network(&mut spec));
        assert_eq!(
            spec["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "mount"}])
        );
        // A new, empty network namespace (no path) stays: the container asked for no network.
        let mut isolated = json!({"linux": {"namespaces": [{"type": "network"}]}});
        assert!(!share_guest_network(&mut isolated));
        assert_eq!(
            isolated["linux"]["namespaces"],
            json!([{"type": "network"}])
        );
    }
}
