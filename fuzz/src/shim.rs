//! The shim's targets: a bundle's config.json (`oci_spec`) and the shim's configuration
//! files (`config_toml`), through the functions the shim's Create and configuration loader
//! run, without their side effects (no mount, no VM).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use hull_shim::config::annotations;
use hull_shim::config::load::{load, ConfigSearch};
use hull_shim::config::Config;
use hull_shim::mounts;
use hull_shim::network::spec::{pod_netns, share_guest_network};
use hull_shim::service::task::{parse_bundle_spec, set_root_path, spec_annotations};

/// A bundle and room for a configuration file, per thread, removed when the thread ends
/// (a libFuzzer run, whose main thread never ends, leaves one in the temporary directory).
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hull-fuzz-shim-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(dir.join("bundle/rootfs")).expect("creating a bundle");
        std::fs::create_dir_all(dir.join("bundle/data")).expect("creating a bundle");
        std::fs::write(dir.join("bundle/hosts"), "127.0.0.1 localhost\n")
            .expect("creating a bundle");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

thread_local! {
    static SCRATCH: Scratch = Scratch::new();
}

fn scratch() -> PathBuf {
    SCRATCH.with(|s| s.0.clone())
}

/// `oci_spec`: a bundle's config.json as the shim's Create handles it for a VM: parsed and
/// checked, its annotations applied to the configuration, its mounts classified (bind
/// sources relative to a bundle holding `rootfs/`, `data/` and `hosts`) and checked for a VM,
/// bind sources rewritten to the share, the pod network handed to the guest, and the root
/// pointed at the guest's path; then encoded for the agent.
pub fn oci_spec(data: &[u8]) {
    let Ok(mut spec) = parse_bundle_spec(data) else {
        return;
    };
    let _ = annotations::apply(&Config::default(), &spec_annotations(&spec));
    let bundle = scratch().join("bundle");
    let Ok(classified) = mounts::classify(&spec, &bundle) else {
        return;
    };
    let _ = pod_netns(&spec);
    let Ok(binds) = mounts::for_vm(&classified) else {
        return;
    };
    for (index, bind) in &binds {
        assert!(
            !bind.source.starts_with("/proc") && !bind.source.starts_with("/sys"),
            "the host kernel's {} is bound into a VM",
            bind.source.display()
        );
        mounts::rewrite_source(
            &mut spec,
            *index,
            &format!("/run/hull/shared/volumes/{index}"),
        );
    }
    share_guest_network(&mut spec);
    set_root_path(&mut spec, "/run/hull/shared/c1/rootfs".to_owned())
        .expect("a spec the shim accepted takes the guest's root");
    assert_eq!(
        spec.pointer("/root/path")
            .and_then(serde_json::Value::as_str),
        Some("/run/hull/shared/c1/rootfs")
    );
    serde_json::to_vec(&spec).expect("a JSON value encodes");
}

/// `config_toml`: the input is a configuration file's text, then (after a NUL byte) pod
/// annotations, one `key=value` per line. The file is loaded as the shim loads its
/// configuration (parsed alone, merged, validated), and the annotations applied to it.
pub fn config_toml(data: &[u8]) {
    let (text, annotation_bytes) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let path = scratch().join("configuration.toml");
    if std::fs::write(&path, text).is_err() {
        return;
    }
    let search = ConfigSearch {
        explicit: Some(path),
        ..ConfigSearch::default()
    };
    let Ok(loaded) = load(&search) else {
        return;
    };
    // What loaded is valid: validation must accept it again.
    loaded
        .config
        .validate("the fuzz input")
        .expect("a loaded configuration validates");
    let overrides: BTreeMap<String, String> = String::from_utf8_lossy(annotation_bytes)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (format!("{}{k}", annotations::PREFIX), v.to_owned()))
        .collect();
    if let Ok(config) = annotations::apply(&loaded.config, &overrides) {
        config
            .validate("annotations")
            .expect("a configuration with annotations applied validates");
    }
}
