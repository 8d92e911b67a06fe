//! `hull-bench soak`: many pod life cycles, and whether the long-lived processes stay flat
//! and nothing is left behind (issue #11).
//!
//! Through a private containerd (see [`crate::pods`]), a long-lived pod is started first
//! (`ctr run -d ... sleep`); then `--cycles N` cycles run, `--parallel K` at a time. A cycle
//! is `ctr run --rm` of a busybox container that prints a line naming the cycle (checked),
//! then one `ctr task exec` in the long-lived pod that prints another (checked). The
//! long-lived processes are containerd, that pod's shim and the shim's children (with the
//! `none` hypervisor hull-agent on the host; with `qemu`, QEMU and its backends, the agent
//! being inside the guest).
//!
//! The cycles run in batches; between two batches nothing runs, and the long-lived processes
//! are sampled: open descriptors (`/proc/PID/fd`), threads (`/proc/PID/task`) and `VmRSS`. The
//! first batches (about a tenth of the cycles) are the warm-up: thread pools and caches reach
//! their working size there. From the first sample after the warm-up to the last, descriptors
//! and threads must not change at all, and RSS must not grow by more than [`rss_bound_kib`].
//! After the last batch, nothing of the finished pods may remain: no process, no
//! `/run/hull/<namespace>/<id>`, no mount, no task or container in containerd; and once the
//! long-lived pod is removed, nothing of it either. Every cycle's output must be right.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::density::{parents, status_field, tree, GUEST_RAM_MEMFD};
use crate::measure::Plan;
use crate::pods::{Pods, Runtime};
use crate::progress::Progress;
use crate::results::{Machine, Run};
use crate::{Error, Result};

/// The subcommand's name.
pub const NAME: &str = "soak";

/// Cycles of a `--quick` run.
pub const QUICK_CYCLES: usize = 64;

/// How many log lines naming a failed cycle's process go with its description.
const LOG_LINES_KEPT: usize = 30;

/// How many failed cycles are described in the result (all are counted).
const ERRORS_KEPT: usize = 5;

/// The hypervisor of the soak's pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Hypervisor {
    /// hull-agent on the host, no VM: the runtime's own leaks, about a second per cycle.
    None,
    /// A QEMU microVM per pod (TCG here: slow).
    Qemu,
}

impl Hypervisor {
    fn runtime(self) -> Runtime {
        match self {
            Hypervisor::None => Runtime::HullNone,
            Hypervisor::Qemu => Runtime::HullQemu,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Hypervisor::None => "none",
            Hypervisor::Qemu => "qemu",
        }
    }
}

/// Options of `hull-bench soak`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Create/start/delete cycles in all.
    pub cycles: usize,
    /// Cycles run at once.
    pub parallel: usize,
    /// The pods' hypervisor.
    pub hypervisor: Hypervisor,
    /// A smoke run (recorded with the result).
    pub quick: bool,
    /// Where containerd-shim-hull-v2 and its helpers are; beside hull-bench when `None`.
    pub bin_dir: Option<PathBuf>,
}

/// One reading of a long-lived process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Cycles finished when it was taken.
    pub cycle: usize,
    /// Resident set size (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Threads.
    pub threads: u64,
}

/// A long-lived process over the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Process {
    /// What it is: `containerd`, `containerd-shim-hull-v2`, `hull-agent`, `qemu-system-x86_64`.
    pub role: String,
    /// Its pid.
    pub pid: u32,
    /// Its readings, the warm-up's last first.
    pub samples: Vec<Sample>,
}

/// How a process grew over the measured cycles (see [`Process::growth`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Growth {
    /// The process's role.
    pub role: String,
    /// Descriptors, last sample minus first.
    pub fds: i64,
    /// Threads, last sample minus first.
    pub threads: i64,
    /// RSS, the median of the last third of the samples minus that of the first third, KiB.
    pub rss_kib: i64,
    /// The RSS growth allowed, KiB ([`rss_bound_kib`] of the first sample).
    pub rss_bound_kib: u64,
    /// RSS growth per measured cycle, bytes.
    pub rss_bytes_per_cycle: f64,
    /// Whether it stayed flat: no more descriptors or threads than at first, RSS within the
    /// bound.
    pub flat: bool,
}

/// RSS growth allowed over the measured cycles for a process whose first reading after the
/// warm-up was `first_kib`: 1 MiB or 5 %, whichever is larger. RSS cannot be required to stay
/// equal: the allocators (glibc's arenas in the shim and agent, Go's heap in containerd) keep
/// freed pages and fragment under parallel bursts, and Go's heap breathes with its collector
/// by a few percent. A leak of a kilobyte per cycle still exceeds it over 1000 cycles, and
/// descriptors and threads, which are exact, catch the usual leaks (a socket, a task, a
/// thread per pod) at the first one.
pub fn rss_bound_kib(first_kib: u64) -> u64 {
    (first_kib / 20).max(1024)
}

/// The median of `values` (the lower middle one of an even count); 0 when empty.
fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values
        .get(values.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0)
}

impl Process {
    /// Its growth over the measured cycles, `parallel` cycles running at once; `None` with
    /// fewer than two samples.
    ///
    /// Descriptors and threads compare the last sample with the first, exactly: a leak only
    /// adds. Fewer than at first is not growth (the shim's start-up thread, an idle pool
    /// thread, exit after the warm-up) and passes, listed in the delta. RSS compares the median
    /// of the last third of the samples with that of the first third, so one collection more
    /// or less in Go's heap at either end does not decide the verdict; a leak moves the
    /// whole series.
    ///
    /// containerd's threads are the one exception: Go never gives a thread (an M) back, and
    /// starts one more whenever a goroutine stays in a system call while others are runnable,
    /// which on a loaded machine happens at random (its twelfth thread came after 20 cycles in
    /// one run, after 50 in another, never after that in 300). Its count is a high-water mark
    /// of the requests in flight, so it may grow by up to `parallel` threads, one per request
    /// running at once; a thread leaked per cycle exceeds that within a few batches.
    pub fn growth(&self, parallel: usize) -> Option<Growth> {
        let (first, last) = match self.samples.as_slice() {
            [first, .., last] => (first, last),
            _ => return None,
        };
        let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let third = self.samples.len().div_ceil(3);
        let rss = |samples: &[Sample]| median(samples.iter().map(|s| s.rss_kib).collect());
        let early = rss(&self.samples[..third]);
        let late = rss(&self.samples[self.samples.len() - third..]);
        let rss_kib = signed(late) - signed(early);
        let bound = rss_bound_kib(first.rss_kib);
        let fds = signed(last.fds) - signed(first.fds);
        let threads = signed(last.threads) - signed(first.threads);
        let cycles = last.cycle.saturating_sub(first.cycle).max(1);
        let thread_bound = if self.role == "containerd" {
            signed(parallel as u64)
        } else {
            0
        };
        Some(Growth {
            role: self.role.clone(),
            fds,
            threads,
            rss_kib,
            rss_bound_kib: bound,
            rss_bytes_per_cycle: rss_kib as f64 * 1024.0 / cycles as f64,
            flat: fds <= 0 && threads <= thread_bound && rss_kib <= signed(bound),
        })
    }
}

/// The ids of this run's pods (`prefix` followed by digits) that `text` names.
pub fn ids_in(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    if prefix.is_empty() {
        return ids;
    }
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let after = &rest[at + prefix.len()..];
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        if !digits.is_empty() {
            ids.insert(format!("{prefix}{digits}"));
        }
        rest = after;
    }
    ids
}

/// RSS in KiB of the guest RAM mapping (QEMU's `memory-backend-memfd`, which the vhost-user
/// backends map too; see [`crate::density`]) in a process's `smaps`.
pub fn guest_ram_rss_kib(smaps: &str) -> u64 {
    crate::density::mapping_field_kib(smaps, GUEST_RAM_MEMFD, "Rss:")
}

/// Reads a process now: `None` when it is gone. Its RSS leaves out the guest's RAM (with
/// `qemu`): the guest touching more of its memory is not the host process growing.
fn read(pid: u32, cycle: usize) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.count() as u64;
    let guest = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map(|smaps| guest_ram_rss_kib(&smaps))
        .unwrap_or(0);
    Some(Sample {
        cycle,
        rss_kib: status_field(&status, "VmRSS")?.saturating_sub(guest),
        fds,
        threads,
    })
}

/// Reads a process once its descriptors and threads are still (connections of the last
/// cycle close, idle threads exit, asynchronously): two readings 200 ms apart that agree, or
/// the last one after 5 s.
fn settled(pid: u32, cycle: usize) -> Option<Sample> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = read(pid, cycle)?;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = read(pid, cycle)?;
        if (now.fds, now.threads) == (last.fds, last.threads) || Instant::now() >= deadline {
            return Some(now);
        }
        last = now;
    }
}

/// The program name of a process (the basename of its first argument).
fn role_of(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let program = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(program)
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// One cycle's commands, made on the main thread and run on a worker.
struct Cycle {
    n: usize,
    id: String,
    run: Command,
    exec: Command,
}

/// Runs `command` and checks it succeeded and printed `expected`.
fn checked(mut command: Command, what: &str, expected: &str) -> std::result::Result<(), String> {
    let output = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|err| format!("{what}: spawning ctr: {err}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if output.status.success() && stdout.contains(expected) {
        Ok(())
    } else {
        Err(format!(
            "{what} ({}): printed {:?}, stderr: {}",
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Cycle {
    /// `ctr run --rm` then `ctr task exec`; the first error, with the container left (if
    /// any) and the id the log names the failed process by.
    fn run(self) -> std::result::Result<(), CycleFailure> {
        let n = self.n;
        checked(
            self.run,
            &format!("cycle {n}: ctr run --rm {}", self.id),
            &greeting(n),
        )
        .map_err(|error| CycleFailure {
            container: self.id.clone(),
            logged_as: self.id.clone(),
            error,
        })?;
        checked(
            self.exec,
            &format!("cycle {n}: ctr task exec"),
            &exec_greeting(n),
        )
        .map_err(|error| CycleFailure {
            container: String::new(),
            logged_as: exec_id(n),
            error,
        })
    }
}

/// A failed cycle.
struct CycleFailure {
    /// The container to remove (`ctr run --rm` leaves one whose task never started).
    container: String,
    /// The id containerd's and the shim's log lines name the failed process by.
    logged_as: String,
    error: String,
}

fn exec_id(n: usize) -> String {
    format!("soak-exec-{n}")
}

fn greeting(n: usize) -> String {
    format!("soak cycle {n}")
}

fn exec_greeting(n: usize) -> String {
    format!("soak exec {n}")
}

/// What the run found.
#[derive(Debug, Default)]
struct Findings {
    failed_cycles: usize,
    first_errors: Vec<String>,
    leftovers: Vec<String>,
}

impl Findings {
    fn fail(&mut self, error: String) {
        self.failed_cycles += 1;
        if self.first_errors.len() < ERRORS_KEPT {
            self.first_errors.push(error);
        }
    }
}

/// What remains of this run's pods other than `keep`: processes naming them, their
/// `/run/hull/<namespace>/<id>`, mounts naming them, tasks and containers.
fn leftovers(pods: &Pods, keep: Option<&str>, keep_pids: &[u32]) -> Vec<String> {
    let prefix = pods.id_prefix();
    let ours = |text: &str| {
        ids_in(text, &prefix)
            .into_iter()
            .any(|id| Some(id.as_str()) != keep)
    };
    let mut found = Vec::new();
    let me = std::process::id();
    for pid in hull_tests::leftovers::pids_with(&[&prefix]) {
        let Ok(pid) = u32::try_from(pid) else {
            continue;
        };
        if pid == me || keep_pids.contains(&pid) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        // ctr itself is never running between batches; the kept pod's processes are skipped.
        if ours(&cmdline) || keep.is_none() {
            found.push(format!("process {pid}: {cmdline}"));
        }
    }
    let run_dir = Path::new(RUN_ROOT).join(hull_tests::containerd::NAMESPACE);
    for entry in std::fs::read_dir(&run_dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if ids_in(&name, &prefix)
            .into_iter()
            .any(|id| id == name && Some(name.as_str()) != keep)
        {
            found.push(format!("directory {}", entry.path().display()));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mounts.lines().filter(|l| ours(l)) {
        found.push(format!("mount {line}"));
    }
    for what in pods.leftovers() {
        if what.split_whitespace().nth(1) != keep {
            found.push(what);
        }
    }
    found
}

/// Where the shim keeps its per-sandbox state (`hull_shim::paths::RUN_ROOT`; perf does not
/// depend on the shim's crate).
const RUN_ROOT: &str = "/run/hull";

/// What `find` finds once it finds nothing, or after 10 s: a shim exits, and its agent with
/// it, a little after containerd has deleted its task, so what is still going away is not
/// counted as left.
fn once_settled(find: impl Fn() -> Vec<String>) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = find();
        if found.is_empty() || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Where a host agent (the `none` hypervisor) keeps its containers' files:
/// `/run/hull-agent-<its pid>` (`hull_agent`'s host state directory); it removes it when it
/// exits.
const AGENT_STATE_PREFIX: &str = "/run/hull-agent-";

/// The pids of the host agents' state directories now.
fn agent_state_dirs() -> BTreeSet<u32> {
    let (parent, prefix) = AGENT_STATE_PREFIX
        .rsplit_once('/')
        .unwrap_or(("/run", "hull-agent-"));
    std::fs::read_dir(parent)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()?
                .strip_prefix(prefix)?
                .parse()
                .ok()
        })
        .collect()
}

/// The host agents' state directories that are not in `before` and whose agent is gone:
/// an agent of this run that did not clean up after itself.
fn stale_agent_dirs(before: &BTreeSet<u32>) -> Vec<String> {
    agent_state_dirs()
        .difference(before)
        .filter(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        .map(|pid| format!("directory {AGENT_STATE_PREFIX}{pid} of an agent that exited"))
        .collect()
}

/// The long-lived processes: containerd, the shim of pod `id` and the shim's descendants.
fn long_lived(pods: &Pods, id: &str) -> Result<Vec<(String, u32)>> {
    let containerd = pods
        .containerd_pid()
        .ok_or_else(|| Error::Unexpected("the private containerd's process is not found".into()))?;
    let shim = pods
        .task_pid(id)
        .ok_or_else(|| Error::Unexpected(format!("the long-lived pod {id} has no task")))?;
    let mut processes = vec![("containerd".to_owned(), containerd)];
    for pid in tree(&parents(), shim, None) {
        // The container's own `sleep` is the workload's, not the runtime's.
        let role = role_of(pid);
        if role != "sleep" && role != "busybox" {
            processes.push((role, pid));
        }
    }
    Ok(processes)
}

/// Starts the long-lived pod; waits until its task runs.
fn start_long_lived(pods: &Pods, runtime: Runtime, id: &str) -> Result<()> {
    let output = pods
        .run_command(runtime, &["-d"], id, &["sleep", "1000000"])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Io {
            what: "running ctr run -d".into(),
            source,
        })?;
    if !output.status.success() {
        return Err(Error::Unexpected(format!(
            "ctr run -d of the long-lived pod {id} ({}): {}\ncontainerd's last errors:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            pods.log_errors()
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while pods.task_status(id).as_deref() != Some("RUNNING") {
        if Instant::now() >= deadline {
            return Err(Error::Unexpected(format!(
                "the long-lived pod {id} is not running after 120 s: {:?}",
                pods.task_status(id)
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The batches' sizes: the warm-up's, and the sampling interval (a multiple of `parallel`,
/// about 20 samples a run). The warm-up is a tenth of the cycles, and at least eight rounds of
/// `parallel` cycles: containerd's Go runtime adds threads until it has met the run's
/// concurrency a few times (here its twelfth thread came after 16 to 20 cycles of 4 at
/// once, and none after that in 300), and its heap grows to its working size.
pub fn batches(cycles: usize, parallel: usize) -> (usize, usize) {
    let parallel = parallel.max(1);
    let every = (cycles / 20).max(parallel).div_ceil(parallel) * parallel;
    let warmup = (cycles / 10).max(8 * parallel).div_ceil(every) * every;
    (warmup.min(cycles), every)
}

/// Runs the soak and returns its result; its verdict is in `params.verdict` (see
/// [`verdict`]).
pub fn run(options: &Options) -> Result<Run> {
    let mut run = Run::new(NAME, options.quick, Plan::quick(), Machine::probe());
    let runtime = options.hypervisor.runtime();
    let parallel = options.parallel.max(1);
    let pods = Pods::start(NAME, options.bin_dir.as_deref(), &[runtime])?;
    let agent_dirs_before = agent_state_dirs();
    let long = pods.new_id();
    let outcome = soak(&pods, runtime, &long, options.cycles, parallel);
    // Whatever happened: the long-lived pod goes, then nothing of the run may remain.
    pods.remove(&long);
    let after_removal = once_settled(|| {
        let mut found = leftovers(&pods, None, &[]);
        found.extend(stale_agent_dirs(&agent_dirs_before));
        found
    });
    drop(pods);
    let (processes, mut findings) = outcome?;
    findings.leftovers.extend(
        after_removal
            .into_iter()
            .map(|l| format!("after removing {long}: {l}")),
    );
    run.machine.finish();
    let (warmup, every) = batches(options.cycles, parallel);
    let growth: Vec<Growth> = processes
        .iter()
        .filter_map(|p| p.growth(parallel))
        .collect();
    let reasons = verdict(&growth, &findings);
    run.params = json!({
        "hypervisor": options.hypervisor.name(),
        "cycles": options.cycles,
        "parallel": parallel,
        "warmup_cycles": warmup,
        "sample_every": every,
        "cycle": ["ctr run --rm busybox echo", "ctr task exec <long-lived pod> echo"],
        "processes": processes,
        "growth": growth,
        "failed_cycles": findings.failed_cycles,
        "first_errors": findings.first_errors,
        "leftovers": findings.leftovers,
        "verdict": if reasons.is_empty() { "pass" } else { "fail" },
        "reasons": reasons,
    });
    run.variant = format!("hypervisor={}", options.hypervisor.name());
    run.notes = vec![
        "A cycle is `ctr run --rm` of a busybox echo (output checked) and one `ctr task exec` \
         echo in the long-lived pod (output checked); --parallel cycles run at once."
            .into(),
        format!(
            "Samples are taken between batches of {every} cycles, when nothing runs, after a \
             warm-up of {warmup} cycles; descriptors and threads must not change from the first \
             sample to the last, RSS may grow by 1 MiB or 5 %, whichever is larger (the \
             allocators keep freed pages)."
        ),
    ];
    Ok(run)
}

/// The long-lived pod runs; the cycles run in batches, sampled between them.
fn soak(
    pods: &Pods,
    runtime: Runtime,
    long: &str,
    cycles: usize,
    parallel: usize,
) -> Result<(Vec<Process>, Findings)> {
    start_long_lived(pods, runtime, long)?;
    let roles = long_lived(pods, long)?;
    let keep_pids: Vec<u32> = roles.iter().map(|(_, pid)| *pid).collect();
    let mut processes: Vec<Process> = roles
        .into_iter()
        .map(|(role, pid)| Process {
            role,
            pid,
            samples: Vec::new(),
        })
        .collect();
    let (warmup, every) = batches(cycles, parallel);
    let mut findings = Findings::default();
    let progress = Progress::new(NAME, cycles as u64);
    let mut done = 0;
    while done < cycles {
        let size = if done < warmup { warmup - done } else { every }.min(cycles - done);
        let batch: Vec<Cycle> = (done..done + size)
            .map(|n| {
                let id = pods.new_id();
                let run = pods.run_command(runtime, &["--rm"], &id, &["echo", &greeting(n)]);
                let exec_id = exec_id(n);
                let exec = pods.ctr_command(&[
                    "tasks",
                    "exec",
                    "--exec-id",
                    &exec_id,
                    long,
                    "echo",
                    &exec_greeting(n),
                ]);
                Cycle { n, id, run, exec }
            })
            .collect();
        progress.step_message(&format!("cycles {done}..{}", done + size));
        for failure in run_batch(batch, parallel, &progress) {
            // ctr run --rm does not remove a container whose task never started.
            if !failure.container.is_empty() {
                pods.remove(&failure.container);
            }
            let log = pods.log_mentioning(&failure.logged_as, LOG_LINES_KEPT);
            findings.fail(format!("{}\n  log:\n{log}", failure.error));
        }
        done += size;
        if done >= warmup {
            for process in &mut processes {
                match settled(process.pid, done) {
                    Some(sample) => process.samples.push(sample),
                    None => findings.leftovers.push(format!(
                        "the long-lived {} ({}) exited by cycle {done}",
                        process.role, process.pid
                    )),
                }
            }
        }
    }
    drop(progress);
    findings
        .leftovers
        .extend(leftovers(pods, Some(long), &keep_pids));
    Ok((processes, findings))
}

/// Runs `batch` on `parallel` threads; the failures, with the id of a container to remove.
fn run_batch(batch: Vec<Cycle>, parallel: usize, progress: &Progress) -> Vec<CycleFailure> {
    let queue = Mutex::new(batch.into_iter().collect::<VecDeque<_>>());
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| loop {
                let next = queue.lock().map(|mut q| q.pop_front()).unwrap_or(None);
                let Some(cycle) = next else { break };
                if let Err(failure) = cycle.run() {
                    if let Ok(mut failures) = failures.lock() {
                        failures.push(failure);
                    }
                }
                progress.advance();
            });
        }
    });
    let mut failures = failures.into_inner().unwrap_or_default();
    failures.sort_by(|a, b| a.error.cmp(&b.error));
    failures
}

/// Why the run fails: growth of a long-lived process, failed cycles, leftovers; empty when
/// it passes.
fn verdict(growth: &[Growth], findings: &Findings) -> Vec<String> {
    let mut reasons = Vec::new();
    for g in growth.iter().filter(|g| !g.flat) {
        reasons.push(format!(
            "{} grew: fds {:+}, threads {:+}, RSS {:+} KiB (bound {} KiB, {:.0} B/cycle)",
            g.role, g.fds, g.threads, g.rss_kib, g.rss_bound_kib, g.rss_bytes_per_cycle
        ));
    }
    if growth.is_empty() {
        reasons.push("no process was sampled twice after the warm-up".into());
    }
    if findings.failed_cycles > 0 {
        reasons.push(format!(
            "{} cycles failed; first: {}",
            findings.failed_cycles,
            findings.first_errors.join("\n")
        ));
    }
    for leftover in &findings.leftovers {
        reasons.push(format!("left: {leftover}"));
    }
    reasons
}

/// The run's verdict and reasons, from its JSON: `Ok` when it passed.
pub fn outcome(run: &Run) -> std::result::Result<(), String> {
    if run.params["verdict"] == "pass" {
        return Ok(());
    }
    let reasons: Vec<&str> = run.params["reasons"]
        .as_array()
        .map(|r| r.iter().filter_map(|r| r.as_str()).collect())
        .unwrap_or_default();
    Err(reasons.join("\n"))
}

/// A table of the long-lived processes' first and last samples and the verdict.
pub fn summary(run: &Run) -> String {
    let p = &run.params;
    let mut out = format!(
        "soak: {} cycles, {} at once, hypervisor {}, warm-up {} cycles, sampled every {}: {}\n",
        p["cycles"],
        p["parallel"],
        p["hypervisor"].as_str().unwrap_or("?"),
        p["warmup_cycles"],
        p["sample_every"],
        p["verdict"].as_str().unwrap_or("?")
    );
    out.push_str("| process | fds | threads | RSS KiB | RSS growth (bound) | B/cycle |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    let processes: Vec<Process> =
        serde_json::from_value(p["processes"].clone()).unwrap_or_default();
    let parallel = p["parallel"]
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(1);
    for process in &processes {
        let (Some(first), Some(last), Some(g)) = (
            process.samples.first(),
            process.samples.last(),
            process.growth(parallel),
        ) else {
            continue;
        };
        out.push_str(&format!(
            "| {} | {} → {} | {} → {} | {} → {} | {:+} KiB ({} KiB) | {:.0} |\n",
            process.role,
            first.fds,
            last.fds,
            first.threads,
            last.threads,
            first.rss_kib,
            last.rss_kib,
            g.rss_kib,
            g.rss_bound_kib,
            g.rss_bytes_per_cycle
        ));
    }
    out.push_str(&format!(
        "failed cycles: {}, leftovers: {}\n",
        p["failed_cycles"],
        p["leftovers"].as_array().map_or(0, Vec::len)
    ));
    out
}

/// Draws RSS, descriptors and threads of every long-lived process over the cycles, one
/// panel each, to `path` (SVG).
pub fn chart(run: &Run, path: &Path) -> Result<()> {
    let plot_error = |message: String| Error::Plot {
        path: path.to_owned(),
        message,
    };
    let processes: Vec<Process> =
        serde_json::from_value(run.params["processes"].clone()).unwrap_or_default();
    let root = SVGBackend::new(path, (900, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(e.to_string()))?;
    let panels = root.split_evenly((3, 1));
    type Pick = fn(&Sample) -> f64;
    let metrics: [(&str, Pick); 3] = [
        ("RSS MiB", |s| s.rss_kib as f64 / 1024.0),
        ("open fds", |s| s.fds as f64),
        ("threads", |s| s.threads as f64),
    ];
    let max_cycle = processes
        .iter()
        .flat_map(|p| p.samples.iter().map(|s| s.cycle))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    for (panel, (label, pick)) in panels.iter().zip(metrics) {
        let top = processes
            .iter()
            .flat_map(|p| p.samples.iter().map(pick))
            .fold(1.0_f64, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("soak: {label} over cycles"), ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..max_cycle, 0.0..top)
            .map_err(|e| plot_error(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("cycles")
            .y_desc(label)
            .draw()
            .map_err(|e| plot_error(e.to_string()))?;
        for (i, process) in processes.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    process.samples.iter().map(|s| (s.cycle as f64, pick(s))),
                    color,
                ))
                .map_err(|e| plot_error(e.to_string()))?
                .label(process.role.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| plot_error(e.to_string()))?;
    }
    root.present().map_err(|e| plot_error(e.to_string()))?;
    Ok(())
}

/// The markdown of a run for RESULTS.md: how it was made, the table of the long-lived
/// processes, the verdict with its reasons, and a link to `chart` when given.
pub fn markdown(run: &Run, chart: Option<&str>) -> String {
    let mut md = format!("### `{}` ({})\n\n", run.subcommand, run.variant);
    if run.quick {
        md.push_str("**Smoke run (`--quick`): too short to show a slow leak.**\n\n");
    }
    let m = &run.machine;
    md.push_str(&format!(
        "- command: `{}`\n- started {}; {} CPUs ({}), load {:.1} → {:.1}\n\n",
        run.command, run.started_at, m.cpus, m.cpu_model, m.load_at_start, m.load_at_end
    ));
    md.push_str(&summary(run));
    if let Some(reasons) = run.params["reasons"].as_array().filter(|r| !r.is_empty()) {
        md.push_str("\nWhy it failed:\n\n");
        for reason in reasons.iter().filter_map(|r| r.as_str()) {
            md.push_str(&format!("- {reason}\n"));
        }
    }
    if let Some(chart) = chart {
        md.push_str(&format!("\nChart: [{chart}]({chart})\n"));
    }
    md
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn process(samples: &[(usize, u64, u64, u64)]) -> Process {
        Process {
            role: "containerd-shim-hull-v2".into(),
            pid: 1,
            samples: samples
                .iter()
                .map(|&(cycle, rss_kib, fds, threads)| Sample {
                    cycle,
                    rss_kib,
                    fds,
                    threads,
                })
                .collect(),
        }
    }

    #[test]
    fn a_process_is_flat_with_equal_fds_and_threads_and_bounded_rss() {
        let flat = process(&[
            (100, 10_000, 12, 5),
            (500, 10_900, 15, 9),
            (1000, 11_000, 12, 5),
        ]);
        let g = flat.growth(4).expect("two samples");
        assert!(g.flat, "{g:?}");
        assert_eq!((g.fds, g.threads, g.rss_kib), (0, 0, 1000));
        let one_fd = process(&[(100, 10_000, 12, 5), (1000, 10_000, 13, 5)]);
        assert!(!one_fd.growth(4).expect("growth").flat);
        let one_thread = process(&[(100, 10_000, 12, 5), (1000, 10_000, 12, 6)]);
        assert!(!one_thread.growth(4).expect("growth").flat);
        let fewer = process(&[(100, 10_000, 12, 2), (1000, 10_000, 11, 1)]);
        let g = fewer.growth(4).expect("growth");
        assert!(g.flat && g.threads == -1 && g.fds == -1, "{g:?}");
        let rss = process(&[(100, 10_000, 12, 5), (1000, 11_100, 12, 5)]);
        let g = rss.growth(4).expect("growth");
        assert!(!g.flat, "1100 KiB > the 1 MiB bound: {g:?}");
        assert!((g.rss_bytes_per_cycle - 1100.0 * 1024.0 / 900.0).abs() < 1e-6);
        assert!(process(&[(100, 1, 1, 1)]).growth(4).is_none());
    }

    #[test]
    fn rss_growth_is_between_the_medians_of_the_first_and_last_thirds() {
        // One high reading at the end (a collection not run yet) is not growth ...
        let spike = process(&[
            (10, 40_000, 1, 1),
            (20, 40_100, 1, 1),
            (30, 40_050, 1, 1),
            (40, 40_000, 1, 1),
            (50, 40_100, 1, 1),
            (60, 44_000, 1, 1),
        ]);
        let g = spike.growth(4).expect("growth");
        assert_eq!(g.rss_kib, 100, "{g:?}");
        assert!(g.flat);
        // ... a series that climbs all along is.
        let climb: Vec<(usize, u64, u64, u64)> = (1..=9)
            .map(|i| (i * 100, 10_000 + i as u64 * 300, 1, 1))
            .collect();
        let g = process(&climb).growth(4).expect("growth");
        assert_eq!(g.rss_kib, 1800, "{g:?}");
        assert!(!g.flat);
    }

    #[test]
    fn containerds_threads_may_grow_by_the_requests_at_once_only() {
        let mut go = process(&[(100, 10_000, 12, 11), (1000, 10_000, 12, 15)]);
        go.role = "containerd".into();
        assert!(go.growth(4).expect("growth").flat);
        assert!(!go.growth(3).expect("growth").flat);
        go.samples[1].fds += 1;
        assert!(!go.growth(4).expect("growth").flat, "its fds stay exact");
    }

    #[test]
    fn the_rss_bound_is_one_mib_or_five_percent() {
        assert_eq!(rss_bound_kib(1000), 1024);
        assert_eq!(rss_bound_kib(100 * 1024), 5 * 1024);
    }

    #[test]
    fn ids_are_the_prefix_and_its_digits() {
        let ids = ids_in(
            "/run/x/hb-7-12/rootfs hb-7-3 hb-7- hb-77-1 xhb-7-40y",
            "hb-7-",
        );
        let expected: BTreeSet<String> = ["hb-7-12", "hb-7-3", "hb-7-40"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(ids, expected);
        assert!(ids_in("anything", "").is_empty());
    }

    #[test]
    fn markdown_shows_the_table_and_the_verdict() {
        let mut run = Run::new(NAME, false, Plan::quick(), Machine::probe());
        run.variant = "hypervisor=none".into();
        let shim = process(&[(100, 16_000, 24, 1), (1000, 16_100, 24, 1)]);
        run.params = json!({
            "cycles": 1000, "parallel": 4, "hypervisor": "none", "warmup_cycles": 104,
            "sample_every": 52, "processes": [shim], "failed_cycles": 0, "leftovers": [],
            "verdict": "pass", "reasons": [],
        });
        let md = markdown(&run, Some("plots/soak.svg"));
        assert!(md.starts_with("### `soak` (hypervisor=none)"), "{md}");
        assert!(
            md.contains("1000 cycles, 4 at once, hypervisor none"),
            "{md}"
        );
        assert!(
            md.contains("| containerd-shim-hull-v2 | 24 → 24 | 1 → 1 | 16000 → 16100 | +100 KiB (1024 KiB) |"),
            "{md}"
        );
        assert!(
            md.contains(": pass") && !md.contains("Why it failed"),
            "{md}"
        );
        run.params["verdict"] = json!("fail");
        run.params["reasons"] = json!(["left: directory /run/hull/hull-test/hb-1-3"]);
        let md = markdown(&run, None);
        assert!(md.contains("Why it failed:\n\n- left: directory"), "{md}");
        assert_eq!(
            outcome(&run),
            Err("left: directory /run/hull/hull-test/hb-1-3".into())
        );
    }

    #[test]
    fn guest_ram_rss_is_the_memfd_mappings_only() {
        let smaps = concat!(
            "7f00-7f10 rw-s 00000000 00:01 12 /memfd:memory-backend-memfd (deleted)\n",
            "Rss:                1000 kB\n",
            "7f10-7f20 rw-s 00000000 00:01 12 /memfd:memory-backend-memfd\n",
            "Rss:                 300 kB\n",
            "Pss:                 100 kB\n",
            "7f20-7f30 r-xp 00000000 08:01 99 /usr/bin/qemu-system-x86_64\n",
            "Rss:                 500 kB\n",
        );
        assert_eq!(
            guest_ram_rss_kib(smaps),
            1300,
            "both memfd mappings, not the binary"
        );
        assert_eq!(guest_ram_rss_kib("garbage\nRss: 5 kB"), 0);
    }

    #[test]
    fn batches_cover_a_warmup_and_about_twenty_samples() {
        assert_eq!(batches(1000, 4), (104, 52));
        assert_eq!(batches(64, 4), (32, 4));
        assert_eq!(batches(3, 4), (3, 4));
    }

    #[test]
    fn the_verdict_names_what_grew_failed_or_was_left() {
        let grew = process(&[(10, 1000, 10, 4), (40, 1000, 11, 4)])
            .growth(4)
            .expect("growth");
        let mut findings = Findings::default();
        assert_eq!(verdict(&[], &findings).len(), 1, "nothing sampled fails");
        for n in 0..7 {
            findings.fail(format!("cycle {n} failed"));
        }
        findings
            .leftovers
            .push("directory /run/hull/hull-test/hb-1-3".into());
        let reasons = verdict(&[grew], &findings);
        assert_eq!(findings.first_errors.len(), ERRORS_KEPT);
        assert!(reasons[0].contains("fds +1"), "{reasons:?}");
        assert!(reasons[1].starts_with("7 cycles failed"), "{reasons:?}");
        assert!(reasons[2].contains("hb-1-3"), "{reasons:?}");
    }

    proptest! {
        #[test]
        fn any_smaps_text_parses_without_panicking(text in "(?s).{0,400}") {
            let _ = guest_ram_rss_kib(&text);
        }

        #[test]
        fn any_text_yields_only_ids_of_the_prefix(text in ".{0,300}") {
            for id in ids_in(&text, "hb-1-") {
                prop_assert!(id.starts_with("hb-1-"));
                prop_assert!(id["hb-1-".len()..].chars().all(|c| c.is_ascii_digit()));
            }
        }
    }
}
