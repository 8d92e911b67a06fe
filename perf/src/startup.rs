//! `hull-bench startup`: the time from `ctr run --rm` to the container's first output, as a
//! user waits for it, through a private containerd.
//!
//! Contestants, interleaved in the same run (see [`crate::measure`]): hull with the `qemu`
//! hypervisor (a microVM per pod; TCG where there is no hardware virtualization) and hull
//! with `none` (the agent on the host: the runtime's own overhead, without a guest), both
//! subjects, and runc, the peer. Workloads: one pod at a time, and `--parallel K` pods started
//! at once (each start's time, and starts per second of the whole batch).
//!
//! hull's time is split by phase from the marks its shim records (`hull_shim::phase`, read
//! from the phase file hull-bench names in the shim's configuration, `runtime.phase_file`,
//! and from containerd's log for any the file lacks): containerd and the shim up to the
//! sandbox's start, the VM's backends, QEMU's start, the guest's boot until the agent
//! answers, the container's create and start, then the first output and the exit with the
//! container's removal, which `ctr` sees.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::measure::{self, Contestant, Metric, Plan, Role, Stat, Trial, Workload};
use crate::pods::{self, Pods, Runtime};
use crate::progress::Progress;
use crate::results::{Machine, Run};
use crate::{Error, Result};

/// The subcommand's name.
pub const NAME: &str = "startup";

/// What the container prints: its first output ends the measured time.
const GREETING: &str = "hull-bench ready";

/// Options of `hull-bench startup`.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often (the trial length does not apply: a trial is one start, or one batch).
    pub plan: Plan,
    /// A smoke run.
    pub quick: bool,
    /// Pods started at once in the concurrent workload; 1 measures sequential starts only.
    pub parallel: usize,
    /// Where containerd-shim-hull-v2 and its helpers are; beside hull-bench when `None`.
    pub bin_dir: Option<std::path::PathBuf>,
}

/// A workload: pods started at the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Starts {
    /// How many.
    pub at_once: usize,
}

impl Workload for Starts {
    fn name(&self) -> String {
        if self.at_once == 1 {
            "one pod".into()
        } else {
            format!("{} pods at once", self.at_once)
        }
    }
}

/// The segments of a start, each named by the point that ends it, in order: the shim's
/// marks (`hull_shim::phase`), then what `ctr` sees.
pub const SEGMENTS: [(&str, &str); 8] = [
    ("sandbox-start", "containerd + shim"),
    ("backends-ready", "backends"),
    ("vm-started", "QEMU start"),
    ("agent-ready", "boot to agent"),
    ("container-created", "container create"),
    ("container-started", "container start"),
    (FIRST_OUTPUT, "first output"),
    (EXITED, "exit + removal"),
];

const FIRST_OUTPUT: &str = "first-output";
const EXITED: &str = "exited";

/// One phase of one contestant in one workload, in milliseconds over the rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseStat {
    /// The workload.
    pub workload: String,
    /// The contestant.
    pub contestant: String,
    /// The segment's label (see [`SEGMENTS`]).
    pub phase: String,
    /// Milliseconds: the median over a trial's pods, then over the rounds.
    pub ms: Stat,
}

/// The durations of the segments of one start, in milliseconds, from the time `ctr` was
/// spawned (`spawned`), the shim's marks, the first output and the exit. Marks missing (runc
/// logs none; `none` has no VM) merge their segment into the next; a segment that ends before
/// the previous one (output may reach `ctr` before the shim logs the start) counts 0.
pub fn segments(
    spawned: SystemTime,
    marks: &BTreeMap<String, SystemTime>,
    first_output: SystemTime,
    exited: SystemTime,
) -> Vec<(&'static str, f64)> {
    let mut last = spawned;
    let mut out = Vec::new();
    for (mark, label) in SEGMENTS {
        let at = match mark {
            FIRST_OUTPUT => first_output,
            EXITED => exited,
            _ => match marks.get(mark) {
                Some(at) => *at,
                None => continue,
            },
        };
        let ms = at
            .duration_since(last)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3);
        out.push((label, ms));
        last = last.max(at);
    }
    out
}

/// Each contestant's segments per trial, by workload, in trial order (warm-ups included).
type PhaseLog = Rc<RefCell<BTreeMap<(String, String), Vec<BTreeMap<&'static str, f64>>>>>;

/// Starts pods with one runtime.
struct Starter<'p> {
    pods: &'p Pods,
    runtime: Runtime,
    name: String,
    phases: PhaseLog,
}

/// What `ctr run --rm` of one pod did.
struct Started {
    id: String,
    first_output: Option<Instant>,
    exited: Instant,
    output: String,
    status: std::process::ExitStatus,
    stderr: String,
}

impl Starter<'_> {
    fn start_all(&self, count: usize) -> Result<(Instant, SystemTime, Vec<Started>)> {
        let ids: Vec<String> = (0..count).map(|_| self.pods.new_id()).collect();
        let mut children = Vec::new();
        let spawned_at = SystemTime::now();
        let t0 = Instant::now();
        for id in &ids {
            let child = self
                .pods
                .run_command(self.runtime, &["--rm"], id, &["echo", GREETING])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn();
            match child {
                Ok(child) => children.push((id.clone(), child)),
                Err(source) => {
                    for (id, mut child) in children {
                        let _ = child.kill();
                        let _ = child.wait();
                        self.pods.remove(&id);
                    }
                    return Err(Error::Io {
                        what: "running ctr".into(),
                        source,
                    });
                }
            }
        }
        // One thread per ctr: the first byte of its output is timed as it arrives.
        let started: Vec<std::io::Result<Started>> = std::thread::scope(|scope| {
            let handles: Vec<_> = children
                .into_iter()
                .map(|(id, mut child)| {
                    scope.spawn(move || -> std::io::Result<Started> {
                        let mut output = Vec::new();
                        let mut first_output = None;
                        if let Some(mut stdout) = child.stdout.take() {
                            let mut buf = [0u8; 4096];
                            loop {
                                let n = stdout.read(&mut buf)?;
                                if n == 0 {
                                    break;
                                }
                                first_output.get_or_insert_with(Instant::now);
                                output.extend_from_slice(&buf[..n]);
                            }
                        }
                        let waited = child.wait_with_output()?;
                        Ok(Started {
                            id,
                            first_output,
                            exited: Instant::now(),
                            output: String::from_utf8_lossy(&output).into_owned(),
                            status: waited.status,
                            stderr: String::from_utf8_lossy(&waited.stderr).into_owned(),
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(std::io::Error::other("a ctr reader panicked")))
                })
                .collect()
        });
        let mut done = Vec::new();
        let mut failure = None;
        for result in started {
            match result {
                Ok(s) if s.status.success() && s.output.contains(GREETING) => done.push(s),
                Ok(s) => {
                    failure.get_or_insert_with(|| {
                        format!(
                            "ctr run of {} with {} ({}): printed {:?}, stderr: {}",
                            s.id,
                            self.name,
                            s.status,
                            s.output,
                            s.stderr.trim()
                        )
                    });
                }
                Err(err) => {
                    failure.get_or_insert_with(|| format!("reading ctr's output: {err}"));
                }
            }
        }
        if let Some(failure) = failure {
            // ctr run --rm does not remove a container whose task never started.
            for id in &ids {
                self.pods.remove(id);
            }
            return Err(Error::Unexpected(format!(
                "{failure}\ncontainerd's last errors:\n{}",
                self.pods.log_errors()
            )));
        }
        Ok((t0, spawned_at, done))
    }
}

impl Contestant<Starts> for Starter<'_> {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn role(&self) -> Role {
        match self.runtime {
            Runtime::Runc => Role::Peer,
            Runtime::HullQemu | Runtime::HullBuiltin | Runtime::HullNone => Role::Subject,
        }
    }

    /// One batch of `at_once` starts, whatever the budget: a start takes what it takes.
    fn trial(&mut self, workload: &Starts, _budget: Duration) -> Result<Trial> {
        let (t0, spawned_at, done) = self.start_all(workload.at_once.max(1))?;
        let mut latencies = Vec::new();
        let mut last_output = Duration::ZERO;
        let mut per_phase: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
        for started in &done {
            let first = started
                .first_output
                .unwrap_or(started.exited)
                .duration_since(t0);
            last_output = last_output.max(first);
            latencies.push(u64::try_from(first.as_nanos()).unwrap_or(u64::MAX));
            let marks = self.pods.marks(&started.id);
            let exited = spawned_at + started.exited.duration_since(t0);
            for (label, ms) in segments(spawned_at, &marks, spawned_at + first, exited) {
                per_phase.entry(label).or_default().push(ms);
            }
        }
        let medians = per_phase
            .into_iter()
            .filter_map(|(label, values)| Some((label, Stat::of(values)?.median)))
            .collect();
        self.phases
            .borrow_mut()
            .entry((workload.name(), self.name.clone()))
            .or_default()
            .push(medians);
        let ops = done.len() as u64;
        Ok(Trial::from_latencies(ops, 0, last_output, &mut latencies))
    }
}

/// Runs the benchmark and returns its results.
pub fn run(options: &Options) -> Result<Run> {
    let mut run = Run::new(NAME, options.quick, options.plan, Machine::probe());
    let runtimes = [Runtime::HullQemu, Runtime::HullNone, Runtime::Runc];
    let pods = Pods::start(NAME, options.bin_dir.as_deref(), &runtimes)?;
    let tcg = pods::tcg();
    let phases: PhaseLog = Rc::default();
    let mut contestants: Vec<Box<dyn Contestant<Starts> + '_>> = Vec::new();
    for runtime in runtimes {
        contestants.push(Box::new(Starter {
            pods: &pods,
            runtime,
            name: runtime.label(tcg),
            phases: Rc::clone(&phases),
        }));
    }
    let mut workloads = vec![Starts { at_once: 1 }];
    if options.parallel > 1 {
        workloads.push(Starts {
            at_once: options.parallel,
        });
    }
    let trials = (options.plan.rounds * contestants.len() * workloads.len()) as u64;
    let progress = Progress::new(NAME, trials);
    let measured = measure::run(&options.plan, &workloads, &mut contestants, &progress);
    drop(progress);
    drop(contestants);
    let leftovers = pods.leftovers();
    let shim = pods.shim().display().to_string();
    drop(pods);
    let outcome = measured?;
    if !leftovers.is_empty() {
        return Err(Error::Unexpected(format!(
            "ctr run --rm left {leftovers:?} in containerd"
        )));
    }
    run.machine.finish();
    let phase_stats = phase_stats(&phases.borrow(), &outcome.series);
    run.params = json!({
        "shim": shim,
        "command_in_container": ["echo", GREETING],
        "parallel": options.parallel,
        "tcg": tcg,
        "phases": phase_stats,
    });
    run.notes = notes(tcg, options.parallel);
    run.record(outcome);
    if let Some(goal) = goal_note(&run) {
        run.notes.push(goal);
    }
    Ok(run)
}

/// The phases of every contestant and workload over the measured rounds (each contestant's
/// first trial of a workload is its warm-up, which `measure::run` runs first: skipped), in the
/// order of `series` and of [`SEGMENTS`].
fn phase_stats(
    log: &BTreeMap<(String, String), Vec<BTreeMap<&'static str, f64>>>,
    series: &[measure::Series],
) -> Vec<PhaseStat> {
    let mut stats = Vec::new();
    for s in series {
        let Some(trials) = log.get(&(s.workload.clone(), s.contestant.clone())) else {
            continue;
        };
        let rounds = trials.get(1..).unwrap_or_default();
        for (_, label) in SEGMENTS {
            let values: Vec<f64> = rounds
                .iter()
                .filter_map(|t| t.get(label))
                .copied()
                .collect();
            // A phase counts only when every round has it.
            if values.len() != rounds.len() {
                continue;
            }
            if let Some(ms) = Stat::of(values) {
                stats.push(PhaseStat {
                    workload: s.workload.clone(),
                    contestant: s.contestant.clone(),
                    phase: label.to_owned(),
                    ms,
                });
            }
        }
    }
    stats
}

fn notes(tcg: bool, parallel: usize) -> Vec<String> {
    let mut notes = vec![
        format!(
            "One trial is `ctr run --rm` of a busybox container running `echo {GREETING}`; its \
             time (p50/p99 µs) is from spawning ctr to the first byte of its output. ops/s: \
             pods per second of the whole batch, up to the last first output."
        ),
        "hull-qemu and hull-none are both subjects; runc is the peer. Goal: hull-none ≤ 1.5× \
         runc (the runtime's own overhead, without a guest)."
            .into(),
        "Phases (params.phases, ms, the median over a batch's pods then over the rounds) come \
         from the marks the shim records (hull_shim::phase) in its phase file; runc has none, \
         so its whole time to first output is one phase. 'exit + removal' runs from the first \
         output to ctr's exit (the container exits, ctr --rm deletes it)."
            .into(),
    ];
    if tcg {
        notes.push(
            "No hardware virtualization here: hull-qemu's guest runs under QEMU TCG, so its boot \
             is many times what it is on KVM; compare it with nothing measured on KVM."
                .into(),
        );
    }
    if parallel > 1 {
        notes.push(format!(
            "'{parallel} pods at once': {parallel} ctr run at the same time; p50/p99 are each \
             pod's own time, ops/s the batch's pods per second."
        ));
    }
    notes
}

/// What the run says of the goal hull-none ≤ 1.5× runc (p50 of one pod at a time).
fn goal_note(run: &Run) -> Option<String> {
    let ratio = run.ratios.iter().find(|r| {
        r.workload == "one pod"
            && r.metric == Metric::P50Us
            && r.subject == Runtime::HullNone.label(false)
            && r.against == Runtime::Runc.label(false)
    })?;
    let median = ratio.ratio.median;
    let verdict = if median <= 1.5 {
        "met".to_owned()
    } else {
        format!("missed by {:.2}×", median / 1.5)
    };
    Some(format!(
        "Goal hull-none ≤ 1.5× runc, time to first output of one pod: {median:.2}× \
         ({:.2}–{:.2} over the rounds): {verdict}.",
        ratio.ratio.min, ratio.ratio.max
    ))
}

/// The phases of `run` (a startup run), from its params.
pub fn phases_of(run: &Run) -> Vec<PhaseStat> {
    run.params
        .get("phases")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

/// The markdown table of `run`'s phases (a startup run): a row per workload and contestant,
/// the median milliseconds of each phase, and their sum.
pub fn markdown_phases(run: &Run) -> String {
    let phases = phases_of(run);
    if phases.is_empty() {
        return String::new();
    }
    let labels: Vec<&str> = SEGMENTS
        .iter()
        .map(|(_, label)| *label)
        .filter(|label| phases.iter().any(|p| p.phase == *label))
        .collect();
    let mut md = format!(
        "\nPhases, median ms over the rounds (a phase without a mark is merged into the next):\n\n\
         | workload | contestant | {} | sum |\n|---|---|{}---|\n",
        labels.join(" | "),
        "---|".repeat(labels.len())
    );
    let mut rows: Vec<(&str, &str)> = Vec::new();
    for p in &phases {
        if !rows.contains(&(p.workload.as_str(), p.contestant.as_str())) {
            rows.push((&p.workload, &p.contestant));
        }
    }
    for (workload, contestant) in rows {
        let of_row: Vec<&PhaseStat> = phases
            .iter()
            .filter(|p| p.workload == workload && p.contestant == contestant)
            .collect();
        let cells: Vec<String> = labels
            .iter()
            .map(|label| {
                of_row
                    .iter()
                    .find(|p| p.phase == *label)
                    .map_or_else(|| "–".to_owned(), |p| format!("{:.0}", p.ms.median))
            })
            .collect();
        let sum: f64 = of_row.iter().map(|p| p.ms.median).sum();
        md.push_str(&format!(
            "| {workload} | {contestant} | {} | {sum:.0} |\n",
            cells.join(" | ")
        ));
    }
    md
}

/// Where the phase chart of the run saved as `json` goes: beside it, `<stem>-phases.svg`.
pub fn phase_chart_path(json: &Path) -> std::path::PathBuf {
    let stem = json
        .file_stem()
        .map_or_else(|| NAME.to_owned(), |s| s.to_string_lossy().into_owned());
    json.with_file_name(format!("{stem}-phases.svg"))
}

/// Colours of the phases, in [`SEGMENTS`] order.
const PHASE_COLOURS: [RGBColor; 8] = [
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(255, 127, 14),
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(199, 199, 199),
];

/// Draws the phases of `run` (a startup run) as SVG into `path`: per workload, a bar per
/// contestant stacking the median of each phase, in milliseconds.
pub fn phase_chart(run: &Run, path: &Path) -> Result<()> {
    let plot_error = |message: String| Error::Plot {
        path: path.to_owned(),
        message,
    };
    let phases = phases_of(run);
    let mut workloads: Vec<&str> = Vec::new();
    for p in &phases {
        if !workloads.contains(&p.workload.as_str()) {
            workloads.push(&p.workload);
        }
    }
    if workloads.is_empty() {
        return Err(plot_error("the run has no phases".into()));
    }
    let rows = u32::try_from(workloads.len()).unwrap_or(u32::MAX);
    let root = crate::plot::titled_canvas(
        path,
        (900, 60 + 220 * rows),
        run,
        "startup",
        "ctr run to first output and exit, by phase (median ms)",
    )?;
    for (panel, workload) in root
        .split_evenly((workloads.len(), 1))
        .iter()
        .zip(&workloads)
    {
        let of_workload: Vec<&PhaseStat> =
            phases.iter().filter(|p| p.workload == *workload).collect();
        draw_phases(panel, workload, &of_workload).map_err(plot_error)?;
    }
    root.present().map_err(|e| plot_error(e.to_string()))?;
    Ok(())
}

fn draw_phases<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    workload: &str,
    phases: &[&PhaseStat],
) -> std::result::Result<(), String> {
    let mut contestants: Vec<&str> = Vec::new();
    for p in phases {
        if !contestants.contains(&p.contestant.as_str()) {
            contestants.push(&p.contestant);
        }
    }
    let total = |c: &str| -> f64 {
        phases
            .iter()
            .filter(|p| p.contestant == c)
            .map(|p| p.ms.median)
            .sum()
    };
    let top = contestants.iter().map(|c| total(c)).fold(0.0_f64, f64::max);
    let top = if top > 0.0 { top * 1.05 } else { 1.0 };
    let count = u32::try_from(contestants.len()).unwrap_or(u32::MAX);
    let mut chart = ChartBuilder::on(area)
        .caption(workload, ("sans-serif", 13))
        .margin(6)
        .x_label_area_size(22)
        .y_label_area_size(110)
        .build_cartesian_2d(
            0.0..top,
            (0..count.saturating_sub(1).max(1)).into_segmented(),
        )
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(6)
        .y_labels(contestants.len())
        .x_desc("ms")
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => usize::try_from(*i)
                .ok()
                .and_then(|i| contestants.get(i))
                .map(|c| (*c).to_owned())
                .unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 10))
        .draw()
        .map_err(|e| e.to_string())?;
    for (index, (_, label)) in SEGMENTS.iter().enumerate() {
        let colour = PHASE_COLOURS[index % PHASE_COLOURS.len()];
        let mut bars = Vec::new();
        for (row, contestant) in contestants.iter().enumerate() {
            let before: f64 = SEGMENTS[..index]
                .iter()
                .filter_map(|(_, l)| {
                    phases
                        .iter()
                        .find(|p| p.contestant == *contestant && p.phase == *l)
                })
                .map(|p| p.ms.median)
                .sum();
            let Some(stat) = phases
                .iter()
                .find(|p| p.contestant == *contestant && p.phase == *label)
            else {
                continue;
            };
            let row = u32::try_from(row).unwrap_or(u32::MAX);
            let mut bar = Rectangle::new(
                [
                    (before, SegmentValue::Exact(row)),
                    (before + stat.ms.median, SegmentValue::Exact(row + 1)),
                ],
                colour.filled(),
            );
            bar.set_margin(6, 6, 0, 0);
            bars.push(bar);
        }
        if bars.is_empty() {
            continue;
        }
        chart
            .draw_series(bars)
            .map_err(|e| e.to_string())?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 10))
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_000 + ms)
    }

    #[test]
    fn segments_follow_the_marks_and_merge_missing_ones() {
        let marks: BTreeMap<String, SystemTime> = [
            ("sandbox-start", 100),
            ("agent-ready", 400),
            ("container-created", 450),
            ("container-started", 600),
        ]
        .into_iter()
        .map(|(m, t)| (m.to_owned(), at(t)))
        .collect();
        let got = segments(at(0), &marks, at(550), at(900));
        assert_eq!(
            got,
            [
                ("containerd + shim", 100.0),
                ("boot to agent", 300.0),
                ("container create", 50.0),
                ("container start", 150.0),
                // The output came before the shim logged the start.
                ("first output", 0.0),
                ("exit + removal", 300.0),
            ]
        );
        let runc = segments(at(0), &BTreeMap::new(), at(80), at(120));
        assert_eq!(runc, [("first output", 80.0), ("exit + removal", 40.0)]);
    }

    #[test]
    fn phase_stats_skip_the_warm_up_and_keep_phases_every_round_has() {
        let trial = |create: f64, extra: Option<f64>| {
            let mut t: BTreeMap<&'static str, f64> = [("container create", create)].into();
            if let Some(v) = extra {
                t.insert("backends", v);
            }
            t
        };
        let log: BTreeMap<(String, String), Vec<BTreeMap<&'static str, f64>>> = [(
            ("one pod".to_owned(), "hull-none".to_owned()),
            vec![
                trial(1000.0, None),
                trial(10.0, Some(1.0)),
                trial(30.0, None),
            ],
        )]
        .into();
        let series = vec![measure::Series {
            contestant: "hull-none".into(),
            role: Role::Subject,
            workload: "one pod".into(),
            metrics: BTreeMap::new(),
        }];
        let stats = phase_stats(&log, &series);
        assert_eq!(stats.len(), 1, "{stats:?}");
        assert_eq!(stats[0].phase, "container create");
        assert_eq!(
            stats[0].ms.rounds,
            [10.0, 30.0],
            "the warm-up is not a round"
        );
        assert_eq!(stats[0].ms.median, 20.0);
    }

    #[test]
    fn phase_chart_names_every_phase_and_contestant() {
        let mut run = Run::new(NAME, true, Plan::quick(), Machine::probe());
        let phases: Vec<PhaseStat> = [
            ("hull-none", "containerd + shim", 80.0),
            ("hull-none", "boot to agent", 20.0),
            ("runc", "first output", 90.0),
        ]
        .into_iter()
        .map(|(contestant, phase, ms)| PhaseStat {
            workload: "one pod".into(),
            contestant: contestant.into(),
            phase: phase.into(),
            ms: Stat::of(vec![ms]).expect("stat"),
        })
        .collect();
        run.params = json!({ "phases": phases });
        assert_eq!(phases_of(&run), phases);
        let path =
            std::env::temp_dir().join(format!("hull-bench-phases-{}.svg", std::process::id()));
        phase_chart(&run, &path).expect("chart");
        let svg = std::fs::read_to_string(&path).expect("svg");
        std::fs::remove_file(&path).expect("cleanup");
        for text in [
            "hull-none",
            "runc",
            "containerd + shim",
            "boot to agent",
            "first output",
        ] {
            assert!(svg.contains(text), "{text} in the chart");
        }
        assert!(phase_chart(
            &Run::new(NAME, true, Plan::quick(), Machine::probe()),
            &path
        )
        .is_err());
        let md = markdown_phases(&run);
        assert!(
            md.contains("| workload | contestant | containerd + shim | boot to agent | first output | sum |"),
            "{md}"
        );
        assert!(
            md.contains("| one pod | hull-none | 80 | 20 | – | 100 |"),
            "{md}"
        );
        assert!(md.contains("| one pod | runc | – | – | 90 | 90 |"), "{md}");
    }
}
