//! `hull-bench soak --quick` (issue #11): 64 pod life cycles through a private containerd with
//! hull's shim (the `none` hypervisor, hull-agent on the host), four at a time, each a
//! `ctr run --rm` and an exec in a long-lived pod. The run must pass its own verdict:
//! containerd's, the long-lived shim's and agent's descriptors and threads did not grow, their
//! RSS stayed within its bound, every cycle printed what it should, and nothing of the pods
//! was left. The test then checks the same from outside: no process of the run remains.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use hull_tests::prereq::find_program;
use hull_tests::{artifacts, leftovers, require};
use serde_json::Value;

/// A temporary directory removed on drop, even when the test fails.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("hull-bench-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn soak_quick_keeps_long_lived_processes_flat_and_leaves_nothing() {
    let test = "soak_quick_keeps_long_lived_processes_flat_and_leaves_nothing";
    let shim = require!(test, artifacts::workspace_binary("containerd-shim-hull-v2"));
    require!(test, artifacts::workspace_binary("hull-agent"));
    require!(test, find_program("containerd", "containerd"));
    require!(test, find_program("ctr", "containerd"));
    require!(test, find_program("runc", "runc"));
    require!(test, hull_tests::oci_image::busybox());
    let bin_dir = shim.parent().expect("the shim's directory").to_owned();
    let out = TempDir::new("soak");
    let child = Command::new(env!("CARGO_BIN_EXE_hull-bench"))
        .args(["soak", "--quick", "--out"])
        .arg(&out.0)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hull-bench starts");
    let pid = child.id();
    let output = child.wait_with_output().expect("hull-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "hull-bench soak --quick: {}\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("hypervisor none"), "{stdout}");
    assert!(stdout.contains(": pass"), "{stdout}");

    let json = std::fs::read_dir(&out.0)
        .expect("the results directory")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("a JSON result");
    let run: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON")).expect("valid JSON");
    let params = &run["params"];
    assert_eq!(run["subcommand"], "soak");
    assert_eq!(params["verdict"], "pass", "{params}");
    assert_eq!(params["cycles"], 64);
    assert_eq!(params["parallel"], 4);
    assert_eq!(params["failed_cycles"], 0, "{params}");
    assert_eq!(params["leftovers"], serde_json::json!([]), "{params}");
    let processes = params["processes"].as_array().expect("processes");
    for role in ["containerd", "containerd-shim-hull-v2", "hull-agent"] {
        let process = processes
            .iter()
            .find(|p| p["role"] == role)
            .unwrap_or_else(|| panic!("{role} sampled: {params}"));
        let samples = process["samples"].as_array().expect("samples");
        assert!(
            samples.len() >= 2,
            "{role} sampled after the warm-up: {process}"
        );
        for sample in samples {
            for key in ["rss_kib", "fds", "threads"] {
                assert!(
                    sample[key].as_u64().is_some_and(|v| v > 0),
                    "{role}.{key}: {sample}"
                );
            }
        }
        assert_eq!(
            samples.last().expect("a sample")["cycle"],
            64,
            "{role} sampled after the last cycle"
        );
    }
    let chart = std::fs::read_to_string(json.with_extension("svg")).expect("the chart");
    assert!(
        chart.starts_with("<svg") && chart.contains("RSS MiB"),
        "chart"
    );

    let prefix = format!("hb-{pid}-");
    assert!(
        leftovers::processes_with(&[&prefix]).is_empty(),
        "a process of the soak's pods still runs: {:?}",
        leftovers::processes_with(&[&prefix])
    );
    let run_dir = std::env::temp_dir().join(format!("hull-bench-soak-{pid}"));
    assert!(!run_dir.exists(), "{} removed", run_dir.display());
}
