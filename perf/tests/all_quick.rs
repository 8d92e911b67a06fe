//! `hull-bench all --quick`, the smoke run `make test` uses so the harness stays working: the
//! real binary runs every subcommand against the real hull-agent, hull-blk,
//! qemu-storage-daemon and fio, hull-fs and virtiofsd, hull-net, hull-vsock and
//! vhost-device-vsock under QEMU guests, and pods through a private containerd with hull's
//! shim (QEMU and `none`) and runc, and must write well-formed results with every field a reader of
//! RESULTS.md needs. Never a timing: only that figures exist and are numbers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

/// Upstream virtiofsd where `make bench-deps` installs it (or $HULL_VIRTIOFSD).
fn virtiofsd() -> Result<PathBuf, hull_tests::prereq::Missing> {
    let path = std::env::var_os("HULL_VIRTIOFSD")
        .map_or_else(hull_bench::fs::virtiofsd_default, PathBuf::from);
    if path.is_file() {
        Ok(path)
    } else {
        Err(hull_tests::prereq::Missing::new(
            format!("upstream virtiofsd at {}", path.display()),
            "make bench-deps",
        ))
    }
}

/// rust-vmm's vhost-device-vsock where `make bench-deps` installs it (or
/// $HULL_VHOST_DEVICE_VSOCK).
fn vhost_device_vsock() -> Result<PathBuf, hull_tests::prereq::Missing> {
    let path = std::env::var_os("HULL_VHOST_DEVICE_VSOCK")
        .map_or_else(hull_bench::vsock::vhost_device_vsock_default, PathBuf::from);
    if path.is_file() {
        Ok(path)
    } else {
        Err(hull_tests::prereq::Missing::new(
            format!("vhost-device-vsock at {}", path.display()),
            "make bench-deps",
        ))
    }
}

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

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// A median, min, max and one value per round, all finite numbers, min <= median <= max.
fn assert_stat(stat: &Value, rounds: usize, what: &str) {
    let number = |key: &str| {
        stat[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{what}.{key} is a number: {stat}"))
    };
    let (median, min, max) = (number("median"), number("min"), number("max"));
    assert!(
        median.is_finite() && min.is_finite() && max.is_finite(),
        "{what}: {stat}"
    );
    assert!(
        min <= median && median <= max,
        "{what}: min <= median <= max: {stat}"
    );
    assert!(number("spread_pct").is_finite(), "{what}: {stat}");
    let values = stat["rounds"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}.rounds: {stat}"));
    assert_eq!(values.len(), rounds, "{what}: one value per round");
}

/// The result file of `subcommand`: the run's fields, each contestant in each workload with
/// the metrics it must have, ratios of the subject against every other contestant, a chart.
fn assert_run(
    path: &Path,
    subcommand: &str,
    contestants: &[(&str, &str)],
    workloads: &[&str],
    metrics: &[&str],
) {
    let run = read_json(path);
    assert_eq!(run["schema"], 1, "{run}");
    assert_eq!(run["subcommand"], subcommand);
    assert_eq!(run["quick"], true);
    assert!(run["command"]
        .as_str()
        .is_some_and(|c| c.contains(subcommand) || c.contains("all")));
    assert!(
        run["started_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{run}"
    );
    assert!(
        run["machine"]["cpus"].as_u64().is_some_and(|n| n > 0),
        "{run}"
    );
    assert!(run["machine"]["kernel"].is_string(), "{run}");
    assert!(!run["notes"].as_array().expect("notes").is_empty(), "{run}");
    let rounds =
        usize::try_from(run["plan"]["rounds"].as_u64().expect("plan.rounds")).expect("fits");
    assert!(rounds > 0);

    let series = run["series"].as_array().expect("series");
    assert_eq!(series.len(), contestants.len() * workloads.len(), "{run}");
    for workload in workloads {
        for (name, role) in contestants {
            let entry = series
                .iter()
                .find(|s| s["workload"] == *workload && s["contestant"] == *name)
                .unwrap_or_else(|| {
                    panic!("{subcommand}: no series of {name} in {workload}: {run}")
                });
            assert_eq!(entry["role"], *role, "{entry}");
            for metric in metrics {
                assert_stat(
                    &entry["metrics"][metric],
                    rounds,
                    &format!("{name} {workload} {metric}"),
                );
            }
        }
        let subject = contestants[0].0;
        for (other, _) in &contestants[1..] {
            let ratio = run["ratios"]
                .as_array()
                .expect("ratios")
                .iter()
                .find(|r| {
                    r["workload"] == *workload
                        && r["subject"] == subject
                        && r["against"] == *other
                        && r["metric"] == "ops_per_sec"
                })
                .unwrap_or_else(|| {
                    panic!("{subcommand}: no ratio {subject}/{other} in {workload}")
                });
            assert_stat(
                &ratio["ratio"],
                rounds,
                &format!("{subject}/{other} {workload}"),
            );
        }
    }
    let svg = std::fs::read_to_string(path.with_extension("svg")).expect("a chart beside the JSON");
    assert!(svg.starts_with("<svg"), "the chart is an SVG");
}

#[test]
fn all_quick_writes_well_formed_results_of_every_implemented_subcommand() {
    let test = "all_quick_writes_well_formed_results_of_every_implemented_subcommand";
    let agent = require!(test, artifacts::workspace_binary("hull-agent"));
    let blk = require!(test, artifacts::workspace_binary("hull-blk"));
    require!(
        test,
        find_program("qemu-storage-daemon", "qemu-system-common")
    );
    require!(test, find_program("fio", "fio"));
    let hull_fs = require!(test, artifacts::workspace_binary("hull-fs"));
    let virtiofsd = require!(test, virtiofsd());
    let hull_net = require!(test, artifacts::workspace_binary("hull-net"));
    let hull_vsock = require!(test, artifacts::workspace_binary("hull-vsock"));
    let peer_vsock = require!(test, vhost_device_vsock());
    let hull_vmm = require!(test, artifacts::workspace_binary("hull-vmm"));
    require!(test, hull_bench::vmm::kvm_usable());
    require!(test, hull_tests::prereq::root());
    require!(test, hull_tests::prereq::tun());
    require!(test, find_program("ip", "iproute2"));
    require!(test, artifacts::vmlinux());
    require!(test, find_program("qemu-system-x86_64", "qemu-system-x86"));
    let shim = require!(test, artifacts::workspace_binary("containerd-shim-hull-v2"));
    for helper in ["hull-vsock", "hull-fs"] {
        require!(test, artifacts::workspace_binary(helper));
    }
    require!(test, artifacts::initrd());
    require!(test, hull_tests::oci_image::busybox());
    for (program, package) in [
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("runc", "runc"),
    ] {
        require!(test, find_program(program, package));
    }
    let bin_dir = shim.parent().expect("the shim is in a directory");
    let out = TempDir::new("all");
    let (output, pid) = hull_bench(&[
        "all",
        "--quick",
        "--out",
        &out.0.to_string_lossy(),
        "--agent",
        &agent.to_string_lossy(),
        "--hull-blk",
        &blk.to_string_lossy(),
        "--size-mib",
        "16",
        "--hull-fs",
        &hull_fs.to_string_lossy(),
        "--virtiofsd",
        &virtiofsd.to_string_lossy(),
        "--hull-net",
        &hull_net.to_string_lossy(),
        "--hull-vsock",
        &hull_vsock.to_string_lossy(),
        "--vhost-device-vsock",
        &peer_vsock.to_string_lossy(),
        "--hull-vmm",
        &hull_vmm.to_string_lossy(),
        "--bin-dir",
        &bin_dir.to_string_lossy(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "hull-bench all --quick: {}\n{stdout}\n{stderr}",
        output.status
    );

    let files: Vec<PathBuf> = std::fs::read_dir(&out.0)
        .expect("the results directory")
        .map(|e| e.expect("entry").path())
        .collect();
    let find = |prefix: &str| {
        files
            .iter()
            .find(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name.starts_with(prefix) && name.ends_with("-quick.json")
            })
            .unwrap_or_else(|| panic!("no {prefix}*-quick.json in {files:?}"))
            .clone()
    };

    let summary = read_json(&find("all-"));
    let listed = summary["subcommands"].as_array().expect("subcommands");
    let status = |name: &str| {
        listed
            .iter()
            .find(|s| s["subcommand"] == name)
            .map(|s| s["status"].clone())
            .unwrap_or_else(|| panic!("{name} listed in {summary}"))
    };
    for name in [
        "rpc",
        "blk",
        "fs",
        "net",
        "vsock",
        "vmm-start",
        "vmm-exits",
        "startup",
        "density",
    ] {
        assert_eq!(status(name), "ok", "{name}: {summary}");
    }
    // vmm-start and vmm-exits' own contents: perf/tests/vmm_quick.rs.
    find("vmm-start-");
    find("vmm-exits-");

    let latency = ["ops_per_sec", "p50_us", "p99_us"];
    assert_run(
        &find("rpc-"),
        "rpc",
        &[
            ("hull-agent (ttrpc, unix socket)", "subject"),
            ("ttrpc echo in process", "peer"),
            ("bare unix-socket ping-pong", "limit"),
        ],
        &["Check round trip", "Check, 16 in flight"],
        &latency,
    );
    assert_run(
        &find("blk-"),
        "blk",
        &[
            ("hull-blk", "subject"),
            ("qemu-storage-daemon", "peer"),
            ("host fio (io_uring)", "limit"),
        ],
        &[
            "4k randread qd1",
            "4k randread qd32",
            "4k randwrite qd1",
            "4k randwrite qd32",
            "128k seqread qd8",
        ],
        &[
            "ops_per_sec",
            "mb_per_sec",
            "p50_us",
            "p99_us",
            "cpu_us_per_op",
        ],
    );

    assert_run(
        &find("fs-"),
        "fs",
        &[("hull-fs", "subject"), ("virtiofsd", "peer")],
        &[
            "1M seqread",
            "1M seqwrite",
            "4k randread",
            "create+stat+unlink 200 files",
            "list a 500-entry dir",
        ],
        &["ops_per_sec", "cpu_us_per_op"],
    );

    assert_run(
        &find("net-"),
        "net",
        &[
            ("hull-net", "subject"),
            ("qemu virtio-net", "peer"),
            ("host veth", "limit"),
        ],
        &[
            "tcp stream guest→host",
            "tcp stream host→guest",
            "udp 64B request/response",
        ],
        &["ops_per_sec", "mb_per_sec"],
    );

    assert_vsock_run(&find("vsock-"));

    let qemu = if hull_tests::prereq::hardware_virtualization().is_ok() {
        "hull-qemu (KVM)"
    } else {
        "hull-qemu (TCG)"
    };
    let startup = find("startup-");
    assert_run(
        &startup,
        "startup",
        &[
            (qemu, "subject"),
            ("hull-none", "subject"),
            ("runc", "peer"),
        ],
        &["one pod", "2 pods at once"],
        &latency,
    );
    assert_startup_phases(&startup, qemu);
    assert_density(&find("density-"), qemu);

    // Nothing of the run is left: its servers, guests, pods and temporary directories.
    for purpose in [
        "rpc",
        "blk",
        "fs",
        "net",
        "vsock",
        "vmm-start",
        "vmm-exits",
        "startup",
        "density",
    ] {
        let dir = format!("hull-bench-{purpose}-{pid}");
        assert!(
            leftovers::processes_with(&[&dir]).is_empty(),
            "a server of {dir} still runs"
        );
        assert!(!std::env::temp_dir().join(&dir).exists(), "{dir} removed");
    }
    let namespaces = hull_tests::netns::run("ip", &["netns", "list"]).unwrap_or_default();
    assert!(
        !namespaces.contains(&format!("bench-net-{pid}")),
        "net's namespaces were left: {namespaces}"
    );
    let pods = format!("hb-{pid}-");
    assert!(
        leftovers::processes_with(&[&pods]).is_empty(),
        "a pod's process still runs: {:?}",
        leftovers::processes_with(&[&pods])
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(&pods), "a pod's mount is left: {mounts}");
}

/// The phases of a startup run: hull-qemu's include the VM's boot, hull-none's the agent's
/// start without a VM's, runc's only what ctr sees; each a well-formed stat; and their chart.
fn assert_startup_phases(path: &Path, qemu: &str) {
    let run = read_json(path);
    let phases = run["params"]["phases"].as_array().expect("params.phases");
    let of = |contestant: &str| -> Vec<String> {
        phases
            .iter()
            .filter(|p| p["contestant"] == contestant && p["workload"] == "one pod")
            .map(|p| {
                assert_stat(&p["ms"], 2, &format!("{contestant} {}", p["phase"]));
                p["phase"].as_str().expect("a phase name").to_owned()
            })
            .collect()
    };
    // Every phase, every round: the shim appends each mark to the phase file hull-bench
    // names in its configuration (containerd's copy of the shim's log may drop the last ones).
    assert_eq!(
        of(qemu),
        [
            "containerd + shim",
            "backends",
            "QEMU start",
            "boot to agent",
            "container create",
            "container start",
            "first output",
            "exit + removal"
        ]
    );
    assert_eq!(
        of("hull-none"),
        [
            "containerd + shim",
            "boot to agent",
            "container create",
            "container start",
            "first output",
            "exit + removal"
        ]
    );
    assert_eq!(of("runc"), ["first output", "exit + removal"]);
    let name = path.file_stem().and_then(|n| n.to_str()).expect("a name");
    let chart = std::fs::read_to_string(path.with_file_name(format!("{name}-phases.svg")))
        .expect("the phases chart beside the JSON");
    assert!(chart.starts_with("<svg") && chart.contains("boot to agent"));
}

/// A density run of 1 and 2 pods: per pod PSS, threads and descriptors for hull (QEMU, and
/// the builtin VMM where /dev/kvm opens) and runc, guest RAM for hull only, one value per pod;
/// hull's processes named; a builtin pod's shim has one thread per vCPU besides its own; the
/// growth chart.
fn assert_density(path: &Path, qemu: &str) {
    let run = read_json(path);
    assert_eq!(run["subcommand"], "density");
    assert_eq!(run["params"]["pods"], serde_json::json!([1, 2]), "{run}");
    let builtin = hull_tests::prereq::kvm().is_ok().then(|| {
        if hull_tests::prereq::hardware_virtualization().is_ok() {
            "hull-builtin"
        } else {
            "hull-builtin (boot only)"
        }
    });
    let series = run["series"].as_array().expect("series");
    assert_eq!(series.len(), if builtin.is_some() { 6 } else { 4 }, "{run}");
    let hull_metrics = &["pss_mib", "guest_pss_mib", "threads", "fds"][..];
    for (workload, pods) in [("1 pod", 1), ("2 pods", 2)] {
        for (contestant, metrics) in [
            (qemu, hull_metrics),
            ("runc", &["pss_mib", "threads", "fds"][..]),
        ]
        .into_iter()
        .chain(builtin.map(|b| (b, hull_metrics)))
        {
            let entry = series
                .iter()
                .find(|s| s["workload"] == workload && s["contestant"] == contestant)
                .unwrap_or_else(|| panic!("no {contestant} in {workload}: {run}"));
            for metric in metrics {
                let stat = &entry["metrics"][metric];
                assert_stat(stat, pods, &format!("{contestant} {workload} {metric}"));
                assert!(stat["min"].as_f64().expect("min") > 0.0, "{metric}: {stat}");
            }
        }
        assert!(
            run["ratios"]
                .as_array()
                .expect("ratios")
                .iter()
                .any(|r| r["workload"] == workload && r["metric"] == "pss_mib"),
            "a hull/runc PSS ratio for {workload}"
        );
    }
    let roles: Vec<&str> = run["params"]["processes"]
        .as_array()
        .expect("params.processes")
        .iter()
        .filter(|p| p["contestant"] == qemu && p["workload"] == "1 pod")
        .filter_map(|p| p["role"].as_str())
        .collect();
    for process in [
        "containerd-shim-hull-v2",
        "qemu-system-x86_64",
        "hull-vsock",
        "hull-fs",
    ] {
        assert!(roles.contains(&process), "{process} in {roles:?}");
    }
    if let Some(builtin) = builtin {
        let processes: Vec<&serde_json::Value> = run["params"]["processes"]
            .as_array()
            .expect("params.processes")
            .iter()
            .filter(|p| p["contestant"] == builtin && p["workload"] == "1 pod")
            .collect();
        let roles: Vec<&str> = processes
            .iter()
            .filter_map(|p| p["role"].as_str())
            .collect();
        assert_eq!(
            roles,
            ["containerd-shim-hull-v2", "hull-fs"],
            "the VMM and its vsock device are in the shim, no QEMU or hull-vsock"
        );
        // The shim's thread, one per vCPU (1 by default), and KVM's own worker that Linux
        // attaches to a process with a VM (`kvm-nx-lpage-recovery`), counted in Threads.
        let shim_threads = processes[0]["threads"].as_f64().expect("threads");
        assert!(
            (2.0..=3.0).contains(&shim_threads),
            "a builtin pod's shim: {shim_threads} threads"
        );
    }
    assert!(
        run["notes"].as_array().expect("notes").iter().any(|n| n
            .as_str()
            .is_some_and(|n| n.starts_with("Goal PSS per pod"))),
        "the goal is compared: {run}"
    );
    let name = path.file_stem().and_then(|n| n.to_str()).expect("a name");
    let chart = std::fs::read_to_string(path.with_file_name(format!("{name}-growth.svg")))
        .expect("the growth chart beside the JSON");
    assert!(chart.starts_with("<svg") && chart.contains("PSS MiB/pod"));
}

/// A vsock run: both backends and the limit in every workload, throughput where a stream
/// is measured, percentiles where connections are, each backend's CPU per operation.
fn assert_vsock_run(path: &Path) {
    let contestants = [
        ("hull-vsock", "subject"),
        ("vhost-device-vsock", "peer"),
        ("unix socket pair", "limit"),
    ];
    let streams = ["stream guest→host", "stream host→guest"];
    let connects = ["connect host→guest", "connect guest→host"];
    assert_run(
        path,
        "vsock",
        &contestants,
        &[streams[0], streams[1], connects[0], connects[1]],
        &["ops_per_sec"],
    );
    let run = read_json(path);
    let series = run["series"].as_array().expect("series");
    let metric = |workload: &str, contestant: &str, metric: &str| {
        series
            .iter()
            .find(|s| s["workload"] == workload && s["contestant"] == contestant)
            .map(|s| s["metrics"][metric].clone())
            .unwrap_or_default()
    };
    let rounds = usize::try_from(run["plan"]["rounds"].as_u64().expect("rounds")).expect("fits");
    for (contestant, _) in contestants {
        for workload in streams {
            let what = format!("{contestant} {workload} mb_per_sec");
            assert_stat(&metric(workload, contestant, "mb_per_sec"), rounds, &what);
        }
        for workload in connects {
            for percentile in ["p50_us", "p99_us"] {
                let what = format!("{contestant} {workload} {percentile}");
                assert_stat(&metric(workload, contestant, percentile), rounds, &what);
            }
        }
    }
    for backend in ["hull-vsock", "vhost-device-vsock"] {
        for workload in streams.iter().chain(&connects) {
            let what = format!("{backend} {workload} cpu_us_per_op");
            assert_stat(&metric(workload, backend, "cpu_us_per_op"), rounds, &what);
        }
    }
    assert_eq!(
        run["params"]["vhost_device_vsock"],
        "vhost-device-vsock 0.3.0"
    );
}

/// `hull-bench vsock --quick` alone: well-formed results of both backends' guests, and
/// nothing of the run left (QEMU, backends, sockets, the run's directory).
#[test]
fn vsock_quick_compares_both_backends_and_leaves_nothing() {
    let test = "vsock_quick_compares_both_backends_and_leaves_nothing";
    let hull_vsock = require!(test, artifacts::workspace_binary("hull-vsock"));
    let peer = require!(test, vhost_device_vsock());
    require!(test, artifacts::vmlinux());
    require!(test, find_program("qemu-system-x86_64", "qemu-system-x86"));
    let out = TempDir::new("vsock");
    let (output, pid) = hull_bench(&[
        "vsock",
        "--quick",
        "--out",
        &out.0.to_string_lossy(),
        "--hull-vsock",
        &hull_vsock.to_string_lossy(),
        "--vhost-device-vsock",
        &peer.to_string_lossy(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "hull-bench vsock --quick: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("hull-vsock / vhost-device-vsock: ops/s"),
        "{stdout}"
    );
    let json = std::fs::read_dir(&out.0)
        .expect("the results directory")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("a JSON result");
    assert_vsock_run(&json);
    let dir = format!("hull-bench-vsock-{pid}");
    assert!(
        leftovers::processes_with(&[&dir]).is_empty(),
        "a process of {dir} still runs: {:?}",
        leftovers::processes_with(&[&dir])
    );
    assert!(
        !std::env::temp_dir().join(&dir).exists(),
        "{dir} (sockets, logs, initrd) removed"
    );
}

/// A backend that does not serve fails the run naming it, and the error path leaves nothing
/// either (the host sink, the run's directory with the guest's initrd).
#[test]
fn vsock_with_a_backend_that_exits_fails_naming_it_and_leaves_nothing() {
    let test = "vsock_with_a_backend_that_exits_fails_naming_it_and_leaves_nothing";
    let peer = require!(test, vhost_device_vsock());
    let exits = require!(test, find_program("false", "coreutils"));
    require!(test, artifacts::vmlinux());
    require!(test, find_program("qemu-system-x86_64", "qemu-system-x86"));
    let out = TempDir::new("vsock-fail");
    let (output, pid) = hull_bench(&[
        "vsock",
        "--quick",
        "--out",
        &out.0.to_string_lossy(),
        "--hull-vsock",
        &exits.to_string_lossy(),
        "--vhost-device-vsock",
        &peer.to_string_lossy(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the run fails: {stderr}");
    assert!(
        stderr.contains("hull-vsock did not serve (exit status: 1)"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "no figures");
    let dir = format!("hull-bench-vsock-{pid}");
    assert!(leftovers::processes_with(&[&dir]).is_empty(), "{dir}");
    assert!(!std::env::temp_dir().join(&dir).exists(), "{dir} removed");
}

#[test]
fn report_renders_the_tables_from_the_latest_results() {
    let test = "report_renders_the_tables_from_the_latest_results";
    let agent = require!(test, artifacts::workspace_binary("hull-agent"));
    let out = TempDir::new("report");
    let results = out.0.join("results");
    let (output, _) = hull_bench(&[
        "rpc",
        "--quick",
        "--out",
        &results.to_string_lossy(),
        "--agent",
        &agent.to_string_lossy(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let markdown = out.0.join("RESULTS.md");
    std::fs::write(&markdown, "# Results\n\nwritten by people\n").expect("markdown");
    let (output, _) = hull_bench(&[
        "report",
        "--results",
        &results.to_string_lossy(),
        "--output",
        &markdown.to_string_lossy(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&markdown).expect("markdown");
    assert!(
        text.starts_with("# Results\n\nwritten by people\n"),
        "kept: {text}"
    );
    assert!(
        text.contains("| Check round trip | bare unix-socket ping-pong (limit) | **"),
        "{text}"
    );
    assert!(
        text.contains("No results yet: run `hull-bench blk`"),
        "{text}"
    );
    assert!(
        out.0.join("plots/rpc.svg").is_file(),
        "the chart beside the markdown"
    );
}

#[test]
fn all_goes_on_after_a_failing_subcommand_lists_it_and_fails() {
    let test = "all_goes_on_after_a_failing_subcommand_lists_it_and_fails";
    let blk = require!(test, artifacts::workspace_binary("hull-blk"));
    require!(
        test,
        find_program("qemu-storage-daemon", "qemu-system-common")
    );
    require!(test, find_program("fio", "fio"));
    let out = TempDir::new("all-fail");
    let missing_agent = out.0.join("no-such-hull-agent");
    let missing_virtiofsd = out.0.join("no-such-virtiofsd");
    let missing_peer_vsock = out.0.join("no-such-vhost-device-vsock");
    let (output, _) = hull_bench(&[
        "all",
        "--quick",
        "--out",
        &out.0.to_string_lossy(),
        "--agent",
        &missing_agent.to_string_lossy(),
        "--hull-blk",
        &blk.to_string_lossy(),
        "--size-mib",
        "16",
        "--virtiofsd",
        &missing_virtiofsd.to_string_lossy(),
        "--vhost-device-vsock",
        &missing_peer_vsock.to_string_lossy(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a failed subcommand fails the run"
    );
    assert!(
        stderr.contains("rpc: failed: program") && stderr.contains("no-such-hull-agent"),
        "{stderr}"
    );
    let summary = std::fs::read_dir(&out.0)
        .expect("results")
        .map(|e| e.expect("entry").path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("all-"))
        })
        .expect("the list is written even when a subcommand failed");
    let summary = read_json(&summary);
    let listed = summary["subcommands"].as_array().expect("subcommands");
    assert_eq!(listed[0]["subcommand"], "rpc");
    assert_eq!(listed[0]["status"], "failed", "{summary}");
    assert_eq!(listed[1]["subcommand"], "blk");
    assert_eq!(listed[1]["status"], "ok", "blk still ran: {summary}");
    // A missing peer fails fs with the command that installs it.
    assert_eq!(listed[2]["subcommand"], "fs");
    assert_eq!(listed[2]["status"], "failed", "{summary}");
    assert!(
        stderr.contains("fs: failed: program") && stderr.contains("make bench-deps"),
        "{stderr}"
    );
    // So does vsock's, the same way.
    assert_eq!(listed[4]["subcommand"], "vsock");
    assert_eq!(listed[4]["status"], "failed", "{summary}");
    assert!(
        stderr.contains("vsock: failed: program")
            && stderr.contains("no-such-vhost-device-vsock")
            && stderr.contains("cargo install vhost-device-vsock --version 0.3.0"),
        "{stderr}"
    );
}
