//! `hull-bench vmm-start --quick` and `hull-bench vmm-exits --quick`: the real binary boots
//! its small guest in the real hull-vmm and QEMU microvm on this host's /dev/kvm, and must
//! write well-formed results: every contestant of every workload with its figures, the ratios
//! against QEMU and the limit, the footprint with the guest parked, notes and a chart, and
//! leave nothing behind. Never a timing: only that figures exist and are numbers.

use std::path::PathBuf;
use std::process::{Command, Output};

use hull_tests::prereq::find_program;
use hull_tests::{artifacts, leftovers};
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

/// Runs hull-bench with `args`; returns its output and pid.
fn hull_bench(args: &[&str]) -> (Output, u32) {
    let child = Command::new(env!("CARGO_BIN_EXE_hull-bench"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("hull-bench starts");
    let pid = child.id();
    (child.wait_with_output().expect("hull-bench runs"), pid)
}

/// A median, min, max and one value per round, all finite, min <= median <= max, min > 0.
fn assert_stat(stat: &Value, rounds: usize, what: &str) {
    let number = |key: &str| {
        stat[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{what}.{key} is a number: {stat}"))
    };
    let (median, min, max) = (number("median"), number("min"), number("max"));
    assert!(median.is_finite() && max.is_finite(), "{what}: {stat}");
    assert!(
        min > 0.0 && min <= median && median <= max,
        "{what}: {stat}"
    );
    let values = stat["rounds"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}.rounds: {stat}"));
    assert_eq!(values.len(), rounds, "{what}: one value per round");
}

/// Runs `subcommand --quick` into a fresh directory; returns its JSON and the name of the
/// QEMU contestant, or `None` after recording a skip when a prerequisite is missing.
fn quick_run(test: &str, subcommand: &str, extra: &[&str]) -> Option<(Value, String)> {
    if let Err(missing) = hull_bench::vmm::kvm_usable() {
        hull_tests::prereq::skip(test, &missing);
        return None;
    }
    let hull_vmm = match artifacts::workspace_binary("hull-vmm") {
        Ok(path) => path,
        Err(missing) => {
            hull_tests::prereq::skip(test, &missing);
            return None;
        }
    };
    if let Err(missing) = find_program("qemu-system-x86_64", "qemu-system-x86") {
        hull_tests::prereq::skip(test, &missing);
        return None;
    }
    let out = TempDir::new(subcommand);
    let mut args = vec![
        subcommand,
        "--quick",
        "--out",
        out.0.to_str().expect("a UTF-8 temp dir"),
        "--hull-vmm",
        hull_vmm.to_str().expect("a UTF-8 path"),
    ];
    args.extend_from_slice(extra);
    let (output, pid) = hull_bench(&args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "hull-bench {subcommand} --quick: {}\n{stdout}\n{stderr}",
        output.status
    );

    // Nothing of the run is left: no VMM process, no temporary directory.
    let dir = format!("hull-bench-{subcommand}-{pid}");
    assert!(
        leftovers::processes_with(&[&dir]).is_empty(),
        "a VMM of {dir} still runs: {:?}",
        leftovers::processes_with(&[&dir])
    );
    assert!(!std::env::temp_dir().join(&dir).exists(), "{dir} removed");

    let files: Vec<PathBuf> = std::fs::read_dir(&out.0)
        .expect("the results directory")
        .map(|e| e.expect("entry").path())
        .collect();
    let json = files
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .unwrap_or_else(|| panic!("no JSON in {files:?}"));
    let run: Value = serde_json::from_slice(&std::fs::read(json).expect("the JSON"))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", json.display()));
    let chart = std::fs::read_to_string(json.with_extension("svg")).expect("a chart beside");
    assert!(chart.starts_with("<svg"), "{chart}");
    assert_eq!(run["subcommand"], subcommand);
    assert_eq!(run["quick"], true);
    assert!(
        stdout.contains("hull-vmm") && stdout.contains(&json.display().to_string()),
        "{stdout}"
    );
    let qemu = run["series"]
        .as_array()
        .expect("series")
        .iter()
        .filter_map(|s| s["contestant"].as_str())
        .find(|c| c.starts_with("qemu microvm ("))
        .unwrap_or_else(|| panic!("a QEMU contestant: {run}"))
        .to_owned();
    assert!(
        qemu == "qemu microvm (KVM)" || qemu == "qemu microvm (TCG)",
        "{qemu}"
    );
    if qemu.ends_with("(TCG)") {
        assert!(
            run["notes"].as_array().expect("notes").iter().any(|n| n
                .as_str()
                .is_some_and(|n| n.contains("QEMU runs under TCG"))),
            "TCG is flagged: {run}"
        );
    }
    // Kept beyond the temporary directory's drop.
    Some((run, qemu))
}

/// Every contestant of every workload has `metrics`, and the subject a ratio against each
/// other contestant; the parked footprint of both VMMs is there, with its ratios.
fn assert_workloads(run: &Value, qemu: &str, workloads: &[&str], metrics: &[&str]) {
    let rounds = usize::try_from(run["plan"]["rounds"].as_u64().expect("rounds")).expect("fits");
    let series = run["series"].as_array().expect("series");
    let ratios = run["ratios"].as_array().expect("ratios");
    let find = |workload: &str, contestant: &str| {
        series
            .iter()
            .find(|s| s["workload"] == workload && s["contestant"] == contestant)
            .unwrap_or_else(|| panic!("no {contestant} in {workload}: {run}"))
    };
    let limit = "KVM_CREATE_VM + KVM_RUN alone";
    for workload in workloads {
        for (contestant, role) in [("hull-vmm", "subject"), (qemu, "peer"), (limit, "limit")] {
            let entry = find(workload, contestant);
            assert_eq!(entry["role"], role, "{entry}");
            for metric in metrics {
                assert_stat(
                    &entry["metrics"][metric],
                    rounds,
                    &format!("{contestant} {workload} {metric}"),
                );
            }
            if contestant != "hull-vmm" {
                assert!(
                    ratios.iter().any(|r| r["workload"] == *workload
                        && r["subject"] == "hull-vmm"
                        && r["against"] == contestant
                        && r["metric"] == metrics[0]),
                    "hull-vmm against {contestant} on {workload}: {run}"
                );
            }
        }
    }
    let resident = "guest parked in hlt";
    for contestant in ["hull-vmm", qemu] {
        let entry = find(resident, contestant);
        for metric in ["pss_mib", "guest_pss_mib", "threads"] {
            assert_stat(
                &entry["metrics"][metric],
                rounds,
                &format!("{contestant} {metric}"),
            );
        }
        // At least the vCPU's thread and the main thread: the process was measured live.
        assert!(
            entry["metrics"]["threads"]["min"].as_f64() >= Some(2.0),
            "{entry}"
        );
    }
    assert!(
        ratios
            .iter()
            .any(|r| r["workload"] == resident && r["metric"] == "pss_mib"),
        "a PSS ratio: {run}"
    );
    let hull_threads = run["params"]["thread_names"]["hull-vmm"]
        .as_array()
        .unwrap_or_else(|| panic!("hull-vmm's thread names: {run}"));
    assert!(
        hull_threads
            .iter()
            .any(|n| n.as_str().is_some_and(|n| n.ends_with("vcpu0"))),
        "hull-vmm's vCPU thread is among {hull_threads:?}"
    );
    let notes: Vec<&str> = run["notes"]
        .as_array()
        .expect("notes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("Goal footprint: hull-vmm")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("Goal ") && n.contains(&format!("hull-vmm / {qemu}"))),
        "{notes:?}"
    );
}

#[test]
fn vmm_start_quick_measures_both_vmms_and_the_limit() {
    let Some((run, qemu)) = quick_run(
        "vmm_start_quick_measures_both_vmms_and_the_limit",
        "vmm-start",
        &[],
    ) else {
        return;
    };
    assert_workloads(
        &run,
        &qemu,
        &[
            "exec to first guest output",
            "exec to exit on the guest's reset",
        ],
        &["p50_us", "p99_us", "ops_per_sec"],
    );
    let commands = run["params"]["commands"].as_array().expect("commands");
    assert!(
        commands.iter().any(|c| c
            .as_str()
            .is_some_and(|c| c.contains("-M microvm") && c.contains("-kernel"))),
        "{commands:?}"
    );
}

#[test]
fn vmm_exits_quick_counts_pio_and_mmio_exits_of_both_vmms_and_the_limit() {
    let Some((run, qemu)) = quick_run(
        "vmm_exits_quick_counts_pio_and_mmio_exits_of_both_vmms_and_the_limit",
        "vmm-exits",
        &["--exits", "500"],
    ) else {
        return;
    };
    assert_eq!(run["params"]["exits_per_guest_run"], 500, "{run}");
    assert_workloads(
        &run,
        &qemu,
        &["PIO out to a free port", "MMIO write to a free address"],
        &["ops_per_sec"],
    );
}

#[test]
fn vmm_start_names_a_missing_hull_vmm() {
    let out = TempDir::new("vmm-missing");
    let missing = out.0.join("no-such-hull-vmm");
    let (output, _) = hull_bench(&[
        "vmm-start",
        "--quick",
        "--out",
        out.0.to_str().expect("UTF-8"),
        "--hull-vmm",
        missing.to_str().expect("UTF-8"),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    // Without /dev/kvm the run stops earlier, naming that instead.
    assert!(
        stderr.contains("no-such-hull-vmm") || stderr.contains("/dev/kvm"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "no figures: {:?}", output.stdout);
}
