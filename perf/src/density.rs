//! `hull-bench density`: what each running pod costs the host, and how it grows with the
//! number of pods.
//!
//! N pods (1, 2, 4, 8 ... as memory allows) run a `sleep` container each, started through a
//! private containerd with hull (the `qemu` hypervisor) and with runc (the peer), one runtime
//! after the other, the order alternating with N. Once all N run, every pod's host processes
//! are read from /proc: for hull the shim and its children (QEMU, hull-vsock, hull-fs), for
//! runc its shim (the container's own processes are not the runtime's). Per pod: the PSS of
//! those processes (`/proc/PID/smaps_rollup`), with the guest RAM mapping (QEMU's
//! `memory-backend-memfd` with id `mem`, which the vhost-user backends map too) reported apart
//! from `/proc/PID/smaps`; their threads and open descriptors. Memory is a count that does not
//! depend on the machine's load, so each N is measured once; a figure's spread is over the
//! N pods. Every task and container is stopped and removed after each N.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::measure::{Metric, Plan, Ratio, Role, Series, Stat};
use crate::pods::{self, Pods, Runtime};
use crate::progress::Progress;
use crate::results::{Machine, Run};
use crate::{Error, Result};

/// The subcommand's name.
pub const NAME: &str = "density";

/// The goal: PSS per pod of shim + VMM + backends, guest RAM excluded, in MiB.
pub const GOAL_PSS_MIB: f64 = 5.0;

/// Guest memory of each VM (the shim's default, `vm.memory_mib`), MiB.
const GUEST_MIB: u64 = 256;
/// Host memory a pod is assumed to need beyond its guest RAM when deciding how many fit, MiB.
const POD_OVERHEAD_MIB: u64 = 200;
/// Memory left to the rest of the machine, MiB.
const RESERVE_MIB: u64 = 4096;
/// How long the pods run before they are measured (the shims and backends settle).
const SETTLE: Duration = Duration::from_secs(2);

/// Options of `hull-bench density`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Recorded with the run; density measures each N once.
    pub plan: Plan,
    /// A smoke run.
    pub quick: bool,
    /// The numbers of pods to run at once, in order; those that do not fit in memory are
    /// skipped (and said so).
    pub pods: Vec<usize>,
    /// Where containerd-shim-hull-v2 and its helpers are; beside hull-bench when `None`.
    pub bin_dir: Option<std::path::PathBuf>,
}

/// One host process of a pod, as measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessFigures {
    /// What it is: the program's name (`containerd-shim-hull-v2`, `qemu-system-x86_64`,
    /// `hull-vsock`, `hull-fs`, `containerd-shim-runc-v2`).
    pub role: String,
    /// PSS without the guest RAM mapping, KiB.
    pub pss_kib: u64,
    /// PSS of the guest RAM mapping, KiB.
    pub guest_pss_kib: u64,
    /// Threads.
    pub threads: u64,
    /// Open file descriptors.
    pub fds: u64,
}

/// PSS in KiB of a process's whole address space (`smaps_rollup`'s `Pss:` line).
pub fn rollup_pss_kib(smaps_rollup: &str) -> Option<u64> {
    smaps_rollup.lines().find_map(|line| {
        let rest = line.strip_prefix("Pss:")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The guest RAM's mapping in `/proc/PID/smaps`: QEMU's `memory-backend-memfd` object (QEMU
/// names the memfd after the object's type; hull's VMs have exactly one), mapped by QEMU and
/// by every vhost-user backend that maps the guest's memory.
pub(crate) const GUEST_RAM_MEMFD: &str = "/memfd:memory-backend-memfd";

/// The guest RAM of hull's builtin VMM (`vmm/src/memory.rs`), mapped by the VMM (in the
/// shim's process) and by the vhost-user backends.
pub(crate) const BUILTIN_GUEST_RAM_MEMFD: &str = "/memfd:hull-guest-ram";

/// PSS in KiB of the guest RAM mappings ([`GUEST_RAM_MEMFD`], [`BUILTIN_GUEST_RAM_MEMFD`])
/// in a process's `smaps`.
pub fn guest_ram_pss_kib(smaps: &str) -> u64 {
    mapping_pss_kib(smaps, GUEST_RAM_MEMFD) + mapping_pss_kib(smaps, BUILTIN_GUEST_RAM_MEMFD)
}

/// PSS in KiB of the mappings of file `path` (as `smaps` names it) in a process's `smaps`.
pub fn mapping_pss_kib(smaps: &str, path: &str) -> u64 {
    mapping_field_kib(smaps, path, "Pss:")
}

/// The sum of `field` (`"Pss:"`, `"Rss:"`, ...) in KiB over the mappings of file `path` (as
/// `smaps` names it) in a process's `smaps`.
pub fn mapping_field_kib(smaps: &str, path: &str, field: &str) -> u64 {
    let mut total = 0;
    let mut in_mapping = false;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        // A mapping's header starts with its address range "start-end".
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            in_mapping = fields.nth(4).is_some_and(|name| name == path);
            continue;
        }
        if in_mapping && first == field {
            total += fields
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// A field of `/proc/PID/status` (`Threads:`, `PPid:`) as a number.
pub(crate) fn status_field(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Measures process `pid` now.
fn measure_process(pid: u32) -> Result<ProcessFigures> {
    let read = |file: &str| {
        let path = format!("/proc/{pid}/{file}");
        std::fs::read_to_string(&path).map_err(|source| Error::Io {
            what: format!("reading {path}"),
            source,
        })
    };
    let status = read("status")?;
    let pss = rollup_pss_kib(&read("smaps_rollup")?).unwrap_or(0);
    let guest = guest_ram_pss_kib(&read("smaps")?);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|source| Error::Io {
            what: format!("listing /proc/{pid}/fd"),
            source,
        })?
        .count() as u64;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let program = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let role = String::from_utf8_lossy(program)
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    Ok(ProcessFigures {
        role,
        pss_kib: pss.saturating_sub(guest),
        guest_pss_kib: guest,
        threads: status_field(&status, "Threads").unwrap_or(0),
        fds,
    })
}

/// Every process's parent, from /proc.
pub(crate) fn parents() -> BTreeMap<u32, u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
            let ppid = u32::try_from(status_field(&status, "PPid")?).ok()?;
            Some((pid, ppid))
        })
        .collect()
}

/// `root` and its descendants, except `excluded` and its descendants.
pub(crate) fn tree(parents: &BTreeMap<u32, u32>, root: u32, excluded: Option<u32>) -> Vec<u32> {
    let mut found = vec![root];
    let mut index = 0;
    while let Some(&pid) = found.get(index) {
        for (&child, &parent) in parents {
            if parent == pid && Some(child) != excluded && !found.contains(&child) {
                found.push(child);
            }
        }
        index += 1;
    }
    found
}

/// The host processes of pod `id` that belong to the runtime.
fn pod_processes(pods: &Pods, runtime: Runtime, id: &str) -> Result<Vec<u32>> {
    let pid = pods
        .task_pid(id)
        .ok_or_else(|| Error::Unexpected(format!("pod {id} has no task in ctr tasks ls")))?;
    let parents = parents();
    Ok(match runtime {
        // hull's task pid is its shim; QEMU and the backends are its children.
        Runtime::HullQemu | Runtime::HullBuiltin | Runtime::HullNone => tree(&parents, pid, None),
        // runc's task pid is the container's process; its parent is the shim.
        Runtime::Runc => {
            let shim = parents.get(&pid).copied().ok_or_else(|| {
                Error::Unexpected(format!("the container process {pid} of {id} has no parent"))
            })?;
            tree(&parents, shim, Some(pid))
        }
    })
}

/// Host memory available now, MiB.
fn mem_available_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    status_field(&meminfo, "MemAvailable").map(|kib| kib / 1024)
}

/// One runtime with N pods: each pod's processes.
struct Measured {
    pods: Vec<Vec<ProcessFigures>>,
}

/// Starts `count` pods with `runtime`, measures them, and removes them (also on error).
fn measure_pods(pods: &Pods, runtime: Runtime, count: usize) -> Result<Measured> {
    let ids: Vec<String> = (0..count).map(|_| pods.new_id()).collect();
    let result = if runtime == Runtime::HullBuiltin && !Pods::builtin_boots_linux() {
        measure_booting(pods, runtime, &ids)
    } else {
        start_and_measure(pods, runtime, &ids)
    };
    for id in &ids {
        pods.remove(id);
    }
    result
}

/// `ctr run -d` of a `sleep` container for each of `ids`, all at once.
fn spawn_runs<'a>(
    pods: &Pods,
    runtime: Runtime,
    ids: &'a [String],
) -> Result<Vec<(&'a String, std::process::Child)>> {
    ids.iter()
        .map(|id| {
            let child = pods
                .run_command(runtime, &["-d"], id, &["sleep", "3600"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|source| Error::Io {
                    what: "running ctr".into(),
                    source,
                })?;
            Ok((id, child))
        })
        .collect()
}

fn start_and_measure(pods: &Pods, runtime: Runtime, ids: &[String]) -> Result<Measured> {
    let children = spawn_runs(pods, runtime, ids)?;
    let mut failure = None;
    for (id, child) in children {
        match child.wait_with_output() {
            Ok(output) if output.status.success() => {}
            Ok(output) => {
                failure.get_or_insert_with(|| {
                    format!(
                        "ctr run -d of {id} ({}): {}",
                        output.status,
                        String::from_utf8_lossy(&output.stderr).trim()
                    )
                });
            }
            Err(err) => {
                failure.get_or_insert_with(|| format!("waiting for ctr run of {id}: {err}"));
            }
        }
    }
    if let Some(failure) = failure {
        return Err(Error::Unexpected(format!(
            "{failure}\ncontainerd's last errors:\n{}",
            pods.log_errors()
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in ids {
        while pods.task_status(id).as_deref() != Some("RUNNING") {
            if Instant::now() > deadline {
                return Err(Error::Unexpected(format!(
                    "pod {id} is not RUNNING: {:?}",
                    pods.task_status(id)
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    std::thread::sleep(SETTLE);
    let mut measured = Vec::new();
    for id in ids {
        let processes = pod_processes(pods, runtime, id)?
            .into_iter()
            .map(measure_process)
            .collect::<Result<Vec<_>>>()?;
        measured.push(processes);
    }
    Ok(Measured { pods: measured })
}

/// Builtin pods where Linux does not boot under the builtin VMM (no hardware
/// virtualization): each pod's VM runs a guest that halts, so its shim stays in the boot,
/// waiting for an agent that never answers, until the agent's start timeout
/// ([`pods::BUILTIN_BOOT_TIMEOUT_SECS`]) fails it. Measured in that wait, once every pod's
/// shim has its VM (the guest RAM mapped, the vCPU threads started) and its hull-fs: the
/// shim with the VMM in it and the backends, as they are before the agent's connection and
/// the container. Then every boot must fail and every pod's processes end.
fn measure_booting(pods: &Pods, runtime: Runtime, ids: &[String]) -> Result<Measured> {
    let children = spawn_runs(pods, runtime, ids)?;
    let limit = Duration::from_secs(pods::BUILTIN_BOOT_TIMEOUT_SECS);
    let deadline = Instant::now() + limit;
    let mut shims = Vec::new();
    for id in ids {
        let shim = loop {
            if let Some(pid) = pods.shim_pid(id).filter(|&pid| vm_started(pid)) {
                break pid;
            }
            if Instant::now() > deadline {
                return Err(Error::Unexpected(format!(
                    "the shim of builtin pod {id} has no running VM with hull-fs after {}s \
                     (shim pid {:?})\ncontainerd's last errors:\n{}",
                    limit.as_secs(),
                    pods.shim_pid(id),
                    pods.log_errors()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        shims.push(shim);
    }
    std::thread::sleep(SETTLE);
    let parents = parents();
    let mut measured = Vec::new();
    for &shim in &shims {
        let processes = tree(&parents, shim, None)
            .into_iter()
            .map(measure_process)
            .collect::<Result<Vec<_>>>()?;
        measured.push(processes);
    }
    // The boots must fail (no agent), and take every process of the pod with them.
    for (id, child) in children {
        let output = child.wait_with_output().map_err(|source| Error::Io {
            what: format!("waiting for ctr run of {id}"),
            source,
        })?;
        if output.status.success() {
            return Err(Error::Unexpected(format!(
                "builtin pod {id} started although its guest only halts"
            )));
        }
    }
    let gone_by = Instant::now() + Duration::from_secs(30);
    while let Some(pid) = shims
        .iter()
        .copied()
        .find(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
    {
        if Instant::now() > gone_by {
            return Err(Error::Unexpected(format!(
                "the shim {pid} of a failed builtin boot is still running"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Measured { pods: measured })
}

/// Whether shim `pid` runs its builtin VM: the guest RAM mapped, a thread beside the
/// shim's one (a vCPU's), a hull-fs child.
fn vm_started(pid: u32) -> bool {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mapped = smaps.contains(BUILTIN_GUEST_RAM_MEMFD);
    let vcpu = status_field(&status, "Threads").is_some_and(|threads| threads > 1);
    let fs = tree(&parents(), pid, None).into_iter().any(|child| {
        std::fs::read_to_string(format!("/proc/{child}/comm"))
            .is_ok_and(|comm| comm.trim() == "hull-fs")
    });
    mapped && vcpu && fs
}

/// The figures of one pod: PSS and guest PSS in MiB, threads and descriptors.
fn pod_totals(processes: &[ProcessFigures]) -> BTreeMap<Metric, f64> {
    let sum = |f: fn(&ProcessFigures) -> u64| processes.iter().map(f).sum::<u64>() as f64;
    [
        (Metric::PssMib, sum(|p| p.pss_kib) / 1024.0),
        (Metric::GuestPssMib, sum(|p| p.guest_pss_kib) / 1024.0),
        (Metric::Threads, sum(|p| p.threads)),
        (Metric::Fds, sum(|p| p.fds)),
    ]
    .into_iter()
    .collect()
}

/// The median figures of one process role over the pods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleFigures {
    /// The workload ("4 pods").
    pub workload: String,
    /// The contestant.
    pub contestant: String,
    /// The process's program.
    pub role: String,
    /// PSS without guest RAM, MiB, median over the pods.
    pub pss_mib: f64,
    /// Guest RAM PSS, MiB, median over the pods.
    pub guest_pss_mib: f64,
    /// Threads, median over the pods.
    pub threads: f64,
    /// Open descriptors, median over the pods.
    pub fds: f64,
}

fn workload_name(count: usize) -> String {
    if count == 1 {
        "1 pod".into()
    } else {
        format!("{count} pods")
    }
}

/// Runs the benchmark and returns its results.
pub fn run(options: &Options) -> Result<Run> {
    let mut plan = options.plan;
    plan.rounds = 1;
    let mut run = Run::new(NAME, options.quick, plan, Machine::probe());
    let mut runtimes = vec![Runtime::HullQemu, Runtime::Runc];
    let kvm = hull_tests::prereq::kvm();
    if kvm.is_ok() {
        runtimes.insert(1, Runtime::HullBuiltin);
    }
    let pods = Pods::start(NAME, options.bin_dir.as_deref(), &runtimes)?;
    let tcg = pods::tcg();
    let progress = Progress::new(NAME, (options.pods.len() * runtimes.len()) as u64);
    let mut series = Vec::new();
    let mut ratios = Vec::new();
    let mut breakdown = Vec::new();
    let mut skipped = Vec::new();
    let mut measured_counts = Vec::new();
    for (index, &count) in options.pods.iter().enumerate() {
        let count = count.max(1);
        let needed = count as u64 * (GUEST_MIB + POD_OVERHEAD_MIB) + RESERVE_MIB;
        if mem_available_mib().is_some_and(|available| available < needed) {
            skipped.push(count);
            continue;
        }
        let workload = workload_name(count);
        let mut order = runtimes.clone();
        order.rotate_left(index % runtimes.len());
        let mut per_runtime: BTreeMap<Runtime, BTreeMap<Metric, Stat>> = BTreeMap::new();
        for runtime in order {
            let name = runtime.label(tcg);
            progress.step_message(&format!("{workload}: {name}"));
            let measured = measure_pods(&pods, runtime, count)?;
            progress.advance();
            let totals: Vec<BTreeMap<Metric, f64>> =
                measured.pods.iter().map(|p| pod_totals(p)).collect();
            let metrics: BTreeMap<Metric, Stat> = [
                Metric::PssMib,
                Metric::GuestPssMib,
                Metric::Threads,
                Metric::Fds,
            ]
            .into_iter()
            .filter(|m| runtime != Runtime::Runc || *m != Metric::GuestPssMib)
            .filter_map(|m| {
                let values = totals.iter().filter_map(|t| t.get(&m)).copied().collect();
                Some((m, Stat::of(values)?))
            })
            .collect();
            breakdown.extend(roles(&workload, &name, &measured));
            per_runtime.insert(runtime, metrics.clone());
            series.push(Series {
                contestant: name,
                role: if runtime == Runtime::Runc {
                    Role::Peer
                } else {
                    Role::Subject
                },
                workload: workload.clone(),
                metrics,
            });
        }
        if let Some(runc) = per_runtime.get(&Runtime::Runc) {
            for (hull_runtime, hull) in per_runtime.iter().filter(|(r, _)| **r != Runtime::Runc) {
                for (metric, stat) in hull {
                    let Some(peer) = runc.get(metric).filter(|p| p.median != 0.0) else {
                        continue;
                    };
                    if let Some(ratio) = Stat::of(vec![stat.median / peer.median]) {
                        ratios.push(Ratio {
                            workload: workload.clone(),
                            metric: *metric,
                            subject: hull_runtime.label(tcg),
                            against: Runtime::Runc.label(tcg),
                            against_role: Role::Peer,
                            ratio,
                            higher_is_better: false,
                        });
                    }
                }
            }
        }
        measured_counts.push(count);
    }
    drop(progress);
    let leftovers = pods.leftovers();
    let shim = pods.shim().display().to_string();
    drop(pods);
    if !leftovers.is_empty() {
        return Err(Error::Unexpected(format!(
            "density left {leftovers:?} in containerd"
        )));
    }
    if series.is_empty() {
        return Err(Error::Unexpected(format!(
            "not enough memory for any of {:?} pods ({} MiB available)",
            options.pods,
            mem_available_mib().unwrap_or(0)
        )));
    }
    run.machine.finish();
    run.params = json!({
        "shim": shim,
        "pods": measured_counts,
        "skipped_for_memory": skipped,
        "guest_memory_mib": GUEST_MIB,
        "tcg": tcg,
        "processes": breakdown,
    });
    run.series = series;
    run.ratios = ratios;
    run.notes = notes(&skipped, &runtimes, tcg);
    let goals = goal_notes(&run);
    run.notes.extend(goals);
    Ok(run)
}

/// The median figures of each process role of a runtime's pods.
fn roles(workload: &str, contestant: &str, measured: &Measured) -> Vec<RoleFigures> {
    let mut by_role: BTreeMap<&str, Vec<&ProcessFigures>> = BTreeMap::new();
    for pod in &measured.pods {
        for process in pod {
            by_role
                .entry(process.role.as_str())
                .or_default()
                .push(process);
        }
    }
    by_role
        .into_iter()
        .map(|(role, processes)| {
            let median = |f: fn(&ProcessFigures) -> u64| {
                Stat::of(processes.iter().map(|p| f(p) as f64).collect()).map_or(0.0, |s| s.median)
            };
            RoleFigures {
                workload: workload.to_owned(),
                contestant: contestant.to_owned(),
                role: role.to_owned(),
                pss_mib: median(|p| p.pss_kib) / 1024.0,
                guest_pss_mib: median(|p| p.guest_pss_kib) / 1024.0,
                threads: median(|p| p.threads),
                fds: median(|p| p.fds),
            }
        })
        .collect()
}

fn notes(skipped: &[usize], runtimes: &[Runtime], tcg: bool) -> Vec<String> {
    let mut notes = vec![
        format!(
            "Each pod runs `sleep 3600` in a busybox container; figures are read {}s after \
             every pod of the batch runs. Per pod: the sum over its host processes (hull-qemu: \
             the shim, QEMU, hull-vsock, hull-fs; hull-builtin: the shim, with the VMM and its \
             vsock device in the shim's process, and hull-fs; runc: its shim, not the \
             container's process). Each N is measured once: a figure's median/min/max are over \
             the N pods, not rounds.",
            SETTLE.as_secs()
        ),
        format!(
            "PSS excludes the guest RAM ({GUEST_MIB} MiB per VM: QEMU's memfd \
             `memory-backend-memfd`, the builtin VMM's `hull-guest-ram`, each mapped by the VMM \
             and the vhost-user backends), which is reported apart as guest RAM PSS: only the \
             pages the guest touched count. Goal: PSS per pod ≤ {GOAL_PSS_MIB} MiB without \
             guest RAM; threads per pod ≤ 1 + vCPUs for shim + VMM (1 vCPU here)."
        ),
        "params.processes: the median per process of each runtime's pods (which process \
         dominates)."
            .into(),
    ];
    if runtimes.contains(&Runtime::HullBuiltin) && tcg {
        notes.push(format!(
            "hull-builtin (boot only): no hardware virtualization here, so Linux does not boot \
             under the builtin VMM; each builtin pod's VM runs a guest that halts (its vCPU \
             sleeps in KVM), and the pod is measured {}s after its shim has the VM running and \
             hull-fs serving, while the shim waits for an agent that never comes; then the \
             boot fails at the agent's start timeout ({}s) and the pod is gone. Not counted: \
             what a shim adds once its agent answers and its container runs (its agent \
             connection and container state; compare the hull-qemu shim's figure), and what a \
             Linux guest's device traffic makes the VMM allocate.",
            SETTLE.as_secs(),
            pods::BUILTIN_BOOT_TIMEOUT_SECS
        ));
    }
    if !runtimes.contains(&Runtime::HullBuiltin) {
        notes.push("hull-builtin not measured: /dev/kvm does not open here.".into());
    }
    if !skipped.is_empty() {
        notes.push(format!(
            "Skipped for want of memory (MemAvailable below N × {} MiB + {RESERVE_MIB} MiB): \
             {skipped:?} pods.",
            GUEST_MIB + POD_OVERHEAD_MIB
        ));
    }
    notes
}

/// What the run says of the goal (PSS per pod without guest RAM ≤ 5 MiB), for each hull
/// contestant at the largest N it ran.
fn goal_notes(run: &Run) -> Vec<String> {
    let processes: Vec<RoleFigures> = run
        .params
        .get("processes")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let mut contestants: Vec<&str> = Vec::new();
    for series in run.series.iter().filter(|s| s.role == Role::Subject) {
        if !contestants.contains(&series.contestant.as_str()) {
            contestants.push(&series.contestant);
        }
    }
    contestants
        .into_iter()
        .filter_map(|contestant| {
            let hull = run
                .series
                .iter()
                .rev()
                .find(|s| s.contestant == contestant)?;
            let pss = hull.metrics.get(&Metric::PssMib)?.median;
            let dominant = processes
                .iter()
                .filter(|r| r.workload == hull.workload && r.contestant == hull.contestant)
                .max_by(|a, b| a.pss_mib.total_cmp(&b.pss_mib))?;
            let verdict = if pss <= GOAL_PSS_MIB {
                "met".to_owned()
            } else {
                format!(
                    "missed by {:.1} MiB ({:.1}× the goal)",
                    pss - GOAL_PSS_MIB,
                    pss / GOAL_PSS_MIB
                )
            };
            Some(format!(
                "Goal PSS per pod ≤ {GOAL_PSS_MIB} MiB (guest RAM excluded), {contestant}, {}: \
                 {pss:.1} MiB, {verdict}; the largest share is {} ({:.1} MiB).",
                hull.workload, dominant.role, dominant.pss_mib
            ))
        })
        .collect()
}

/// The markdown tables of `run` (a density run): figures per pod, hull against runc, and the
/// processes of a pod.
pub fn markdown(run: &Run) -> String {
    use std::fmt::Write as _;
    let mut md = String::new();
    let cell = |series: &Series, metric: Metric| {
        series.metrics.get(&metric).map_or_else(
            || "–".to_owned(),
            |s| format!("{:.1} ({:.1}–{:.1})", s.median, s.min, s.max),
        )
    };
    let _ = writeln!(
        md,
        "\nPer pod, median over the pods (min–max):\n\n\
         | pods | contestant | PSS MiB, guest RAM excluded | guest RAM PSS MiB | threads | fds |\n\
         |---|---|---|---|---|---|"
    );
    for s in &run.series {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            s.workload,
            s.contestant,
            cell(s, Metric::PssMib),
            cell(s, Metric::GuestPssMib),
            cell(s, Metric::Threads),
            cell(s, Metric::Fds)
        );
    }
    let _ = writeln!(
        md,
        "\nhull / runc per pod (below 1 hull costs less):\n\n\
         | pods | hull | PSS | threads | fds |\n|---|---|---|---|---|"
    );
    let mut rows: Vec<(&str, &str)> = Vec::new();
    for r in &run.ratios {
        if !rows.contains(&(r.workload.as_str(), r.subject.as_str())) {
            rows.push((&r.workload, &r.subject));
        }
    }
    for (workload, subject) in rows {
        let ratio = |metric: Metric| {
            run.ratios
                .iter()
                .find(|r| r.workload == workload && r.subject == subject && r.metric == metric)
                .map_or_else(|| "–".to_owned(), |r| format!("**{:.1}×**", r.ratio.median))
        };
        let _ = writeln!(
            md,
            "| {workload} | {subject} | {} | {} | {} |",
            ratio(Metric::PssMib),
            ratio(Metric::Threads),
            ratio(Metric::Fds)
        );
    }
    let processes: Vec<RoleFigures> = run
        .params
        .get("processes")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    if !processes.is_empty() {
        let _ = writeln!(
            md,
            "\nEach process of a pod, median over the pods:\n\n\
             | pods | contestant | process | PSS MiB, guest RAM excluded | guest RAM PSS MiB | threads | fds |\n\
             |---|---|---|---|---|---|---|"
        );
        for p in processes {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.1} | {:.1} | {:.0} | {:.0} |",
                p.workload, p.contestant, p.role, p.pss_mib, p.guest_pss_mib, p.threads, p.fds
            );
        }
    }
    md
}

/// Where the growth chart of the run saved as `json` goes: beside it, `<stem>-growth.svg`.
pub fn growth_chart_path(json: &Path) -> PathBuf {
    let stem = json
        .file_stem()
        .map_or_else(|| NAME.to_owned(), |s| s.to_string_lossy().into_owned());
    json.with_file_name(format!("{stem}-growth.svg"))
}

/// The number of pods of a workload name ("4 pods").
fn pods_of(workload: &str) -> Option<u32> {
    workload.split_whitespace().next()?.parse().ok()
}

/// Draws how each metric per pod grows with the number of pods (a line per contestant, a
/// panel per metric) as SVG into `path`.
pub fn growth_chart(run: &Run, path: &Path) -> Result<()> {
    let plot_error = |message: String| Error::Plot {
        path: path.to_owned(),
        message,
    };
    let metrics = [
        Metric::PssMib,
        Metric::GuestPssMib,
        Metric::Threads,
        Metric::Fds,
    ];
    let mut contestants: Vec<(&str, Role)> = Vec::new();
    for s in &run.series {
        if !contestants.iter().any(|(c, _)| *c == s.contestant) {
            contestants.push((&s.contestant, s.role));
        }
    }
    let max_pods = run
        .series
        .iter()
        .filter_map(|s| pods_of(&s.workload))
        .max()
        .ok_or_else(|| plot_error("the run has no figures".into()))?;
    let root = crate::plot::titled_canvas(
        path,
        (900, 600),
        run,
        "density",
        "per pod against the number of pods; blue hull, orange runc",
    )?;
    for (panel, metric) in root.split_evenly((2, 2)).iter().zip(metrics) {
        let lines: Vec<(Role, Vec<(u32, f64)>)> = contestants
            .iter()
            .map(|(name, role)| {
                let points = run
                    .series
                    .iter()
                    .filter(|s| s.contestant == *name)
                    .filter_map(|s| Some((pods_of(&s.workload)?, s.metrics.get(&metric)?.median)))
                    .collect();
                (*role, points)
            })
            .collect();
        let top = lines
            .iter()
            .flat_map(|(_, points)| points.iter().map(|(_, v)| *v))
            .fold(0.0_f64, f64::max);
        let top = if top > 0.0 { top * 1.15 } else { 1.0 };
        let mut chart = ChartBuilder::on(panel)
            .caption(metric.label(), ("sans-serif", 13))
            .margin(8)
            .x_label_area_size(24)
            .y_label_area_size(48)
            .build_cartesian_2d(0..max_pods + 1, 0.0..top)
            .map_err(|e| plot_error(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("pods")
            .label_style(("sans-serif", 10))
            .draw()
            .map_err(|e| plot_error(e.to_string()))?;
        for (role, points) in lines {
            let colour = if role == Role::Subject {
                RGBColor(31, 119, 180)
            } else {
                RGBColor(255, 127, 14)
            };
            chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
                .map_err(|e| plot_error(e.to_string()))?;
            chart
                .draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 3, colour.filled())),
                )
                .map_err(|e| plot_error(e.to_string()))?;
        }
    }
    root.present().map_err(|e| plot_error(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0100000 r-xp 00000000 fd:01 1234   /usr/bin/qemu-system-x86_64
Size:               1024 kB
Pss:                 300 kB
7f0000000000-7f0010000000 rw-s 00000000 00:01 99     /memfd:memory-backend-memfd (deleted)
Size:             262144 kB
Pss:               40960 kB
Swap:                  0 kB
7f0010000000-7f0010001000 rw-p 00000000 00:00 0 
Size:                  4 kB
Pss:                   4 kB
7f0020000000-7f0020100000 rw-s 00000000 00:01 98     /memfd:other (deleted)
Size:               1024 kB
Pss:                 512 kB
7f0030000000-7f0040000000 rw-s 00000000 00:01 97     /memfd:hull-guest-ram (deleted)
Size:             262144 kB
Pss:                1024 kB
";

    #[test]
    fn guest_ram_is_the_guest_memfd_mappings_only() {
        assert_eq!(guest_ram_pss_kib(SMAPS), 40960 + 1024);
        assert_eq!(guest_ram_pss_kib(""), 0);
    }

    #[test]
    fn rollup_pss_is_read_from_its_line() {
        let rollup = "00400000-7ffd0000 ---p 00000000 00:00 0   [rollup]\nRss:  9000 kB\nPss:  7000 kB\nPss_Anon: 5000 kB\n";
        assert_eq!(rollup_pss_kib(rollup), Some(7000));
        assert_eq!(rollup_pss_kib("Rss: 1 kB"), None);
    }

    #[test]
    fn a_tree_leaves_out_the_excluded_subtree() {
        // 1 -> 2 -> 3, 1 -> 4 -> 5, 6 unrelated
        let parents: BTreeMap<u32, u32> = [(2, 1), (3, 2), (4, 1), (5, 4), (6, 0)]
            .into_iter()
            .collect();
        let mut all = tree(&parents, 1, None);
        all.sort_unstable();
        assert_eq!(all, [1, 2, 3, 4, 5]);
        let mut without = tree(&parents, 1, Some(4));
        without.sort_unstable();
        assert_eq!(without, [1, 2, 3]);
    }

    #[test]
    fn this_process_is_measured() {
        let me = measure_process(std::process::id()).expect("measured");
        assert!(me.pss_kib > 0 && me.threads >= 1 && me.fds >= 3, "{me:?}");
        assert_eq!(me.guest_pss_kib, 0);
    }

    #[test]
    fn pod_totals_sum_the_processes_in_mib() {
        let p = |pss, guest, threads, fds| ProcessFigures {
            role: "x".into(),
            pss_kib: pss,
            guest_pss_kib: guest,
            threads,
            fds,
        };
        let totals = pod_totals(&[p(1024, 2048, 3, 10), p(2048, 0, 1, 5)]);
        assert_eq!(totals[&Metric::PssMib], 3.0);
        assert_eq!(totals[&Metric::GuestPssMib], 2.0);
        assert_eq!(totals[&Metric::Threads], 4.0);
        assert_eq!(totals[&Metric::Fds], 15.0);
    }

    fn sample_run() -> Run {
        let mut run = Run::new(NAME, true, Plan::quick(), Machine::probe());
        for (count, hull_pss) in [(1, 40.0), (2, 38.0)] {
            for (name, role, pss) in [
                ("hull-qemu (TCG)", Role::Subject, hull_pss),
                ("hull-builtin", Role::Subject, 4.0),
                ("runc", Role::Peer, 8.0),
            ] {
                let metrics = [
                    (Metric::PssMib, pss),
                    (Metric::Threads, 10.0),
                    (Metric::Fds, 20.0),
                ]
                .into_iter()
                .map(|(m, v)| (m, Stat::of(vec![v; count]).expect("stat")))
                .collect();
                run.series.push(Series {
                    contestant: name.into(),
                    role,
                    workload: workload_name(count),
                    metrics,
                });
            }
            run.ratios.push(Ratio {
                workload: workload_name(count),
                metric: Metric::PssMib,
                subject: "hull-qemu (TCG)".into(),
                against: "runc".into(),
                against_role: Role::Peer,
                ratio: Stat::of(vec![hull_pss / 8.0]).expect("stat"),
                higher_is_better: false,
            });
        }
        run.params = json!({ "processes": [RoleFigures {
            workload: "2 pods".into(),
            contestant: "hull-qemu (TCG)".into(),
            role: "qemu-system-x86_64".into(),
            pss_mib: 30.0,
            guest_pss_mib: 20.0,
            threads: 5.0,
            fds: 30.0,
        }, RoleFigures {
            workload: "2 pods".into(),
            contestant: "hull-builtin".into(),
            role: "containerd-shim-hull-v2".into(),
            pss_mib: 3.5,
            guest_pss_mib: 0.5,
            threads: 2.0,
            fds: 20.0,
        }] });
        run
    }

    #[test]
    fn markdown_and_goal_name_the_figures_and_the_dominant_process() {
        let run = sample_run();
        let md = markdown(&run);
        assert!(md.contains("| 2 pods | hull-qemu (TCG) | 38.0 (38.0–38.0) | – | 10.0 (10.0–10.0) | 20.0 (20.0–20.0) |"), "{md}");
        assert!(
            md.contains("| 1 pod | hull-qemu (TCG) | **5.0×** | – | – |"),
            "{md}"
        );
        assert!(
            md.contains("| 2 pods | hull-qemu (TCG) | qemu-system-x86_64 | 30.0 | 20.0 | 5 | 30 |"),
            "{md}"
        );
        let goals = goal_notes(&run);
        assert_eq!(goals.len(), 2, "one per hull contestant: {goals:?}");
        assert!(
            goals[0].contains("hull-qemu (TCG), 2 pods: 38.0 MiB, missed by 33.0 MiB"),
            "{goals:?}"
        );
        assert!(
            goals[0].contains("qemu-system-x86_64 (30.0 MiB)"),
            "{goals:?}"
        );
        assert!(
            goals[1].contains("hull-builtin, 2 pods: 4.0 MiB, met; the largest share is containerd-shim-hull-v2 (3.5 MiB)"),
            "{goals:?}"
        );
    }

    #[test]
    fn growth_chart_is_an_svg_per_metric() {
        let path =
            std::env::temp_dir().join(format!("hull-bench-growth-{}.svg", std::process::id()));
        growth_chart(&sample_run(), &path).expect("chart");
        let svg = std::fs::read_to_string(&path).expect("svg");
        std::fs::remove_file(&path).expect("cleanup");
        for text in ["PSS MiB/pod", "threads/pod", "fds/pod", "pods"] {
            assert!(svg.contains(text), "{text} in the chart");
        }
        assert_eq!(
            growth_chart_path(Path::new("/r/density-1.json")),
            Path::new("/r/density-1-growth.svg")
        );
    }

    proptest! {
        #[test]
        fn any_smaps_text_parses_without_panicking(text in "(?s).{0,600}") {
            let _ = guest_ram_pss_kib(&text);
            let _ = rollup_pss_kib(&text);
        }
    }
}
