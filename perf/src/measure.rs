//! The measurement method every subcommand shares: a warm-up trial per contestant, then
//! rounds in which the subject, its peers and the limit each run one trial of the same
//! workload, one after the other, in an order that rotates every round (so a slow drift of the
//! machine spreads over all of them). Each metric is reported as the median of the rounds
//! with its minimum and maximum; ratios against a peer are taken round by round (the two
//! trials of a round ran seconds apart) and summarised the same way.
//!
//! Owns no knowledge of what is measured: a [`Contestant`] runs a trial and says how many
//! operations and bytes it did, and the per-operation latencies when it has them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::progress::Progress;
use crate::Result;

/// What a contestant is to the question asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The hull component measured.
    Subject,
    /// What hull is compared with (another implementation of the same thing).
    Peer,
    /// The bound no implementation can beat (the operation without the component).
    Limit,
}

/// The result of one trial: counts over a wall-clock time, and latency percentiles.
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    /// Operations completed.
    pub ops: u64,
    /// Bytes moved by those operations (0 when the workload moves none).
    pub bytes: u64,
    /// Wall-clock time the operations took.
    pub elapsed: Duration,
    /// Median latency of one operation, in microseconds, when known.
    pub p50_us: Option<f64>,
    /// 99th percentile latency of one operation, in microseconds, when known.
    pub p99_us: Option<f64>,
    /// CPU time the serving process spent per operation, in microseconds, when known: a count
    /// that depends much less on how busy the machine is than the timings.
    pub cpu_us_per_op: Option<f64>,
}

impl Trial {
    /// A trial from its counts and the latency of each operation in nanoseconds (sorted here).
    pub fn from_latencies(
        ops: u64,
        bytes: u64,
        elapsed: Duration,
        latencies_ns: &mut [u64],
    ) -> Self {
        latencies_ns.sort_unstable();
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            ops,
            bytes,
            elapsed,
            p50_us: percentile(latencies_ns, 50.0).map(us),
            p99_us: percentile(latencies_ns, 99.0).map(us),
            cpu_us_per_op: None,
        }
    }

    /// The trial with `cpu` of the serving process spread over its operations.
    pub fn with_cpu(mut self, cpu: Duration) -> Self {
        if self.ops > 0 {
            self.cpu_us_per_op = Some(cpu.as_secs_f64() * 1e6 / self.ops as f64);
        }
        self
    }

    /// The trial's metrics by name (see [`Metric`]).
    pub fn metrics(&self) -> BTreeMap<Metric, f64> {
        let mut metrics = BTreeMap::new();
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 && self.ops > 0 {
            metrics.insert(Metric::OpsPerSec, self.ops as f64 / secs);
            if self.bytes > 0 {
                metrics.insert(Metric::MbPerSec, self.bytes as f64 / secs / 1e6);
            }
        }
        if let Some(p50) = self.p50_us {
            metrics.insert(Metric::P50Us, p50);
        }
        if let Some(p99) = self.p99_us {
            metrics.insert(Metric::P99Us, p99);
        }
        if let Some(cpu) = self.cpu_us_per_op {
            metrics.insert(Metric::CpuUsPerOp, cpu);
        }
        metrics
    }
}

/// The nearest-rank percentile `p` (0..=100) of sorted `values`; `None` when empty.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// A measured quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Operations (requests, calls) per second.
    OpsPerSec,
    /// Payload megabytes (10^6 bytes) per second.
    MbPerSec,
    /// Median latency of one operation, microseconds.
    P50Us,
    /// 99th percentile latency of one operation, microseconds.
    P99Us,
    /// CPU time (user + system) of the serving process per operation, microseconds.
    CpuUsPerOp,
    /// Proportional set size of a pod's host processes (guest RAM excluded), MiB.
    PssMib,
    /// Proportional set size of a pod's guest RAM mapping, MiB (counted apart from [`PssMib`]).
    ///
    /// [`PssMib`]: Metric::PssMib
    GuestPssMib,
    /// Threads of a pod's host processes.
    Threads,
    /// Open file descriptors of a pod's host processes.
    Fds,
}

impl Metric {
    /// Every metric, in report order.
    pub const ALL: [Metric; 9] = [
        Metric::OpsPerSec,
        Metric::MbPerSec,
        Metric::P50Us,
        Metric::P99Us,
        Metric::CpuUsPerOp,
        Metric::PssMib,
        Metric::GuestPssMib,
        Metric::Threads,
        Metric::Fds,
    ];

    /// Whether a larger value is better.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Metric::OpsPerSec | Metric::MbPerSec)
    }

    /// Name with unit, for tables and plots.
    pub fn label(self) -> &'static str {
        match self {
            Metric::OpsPerSec => "ops/s",
            Metric::MbPerSec => "MB/s",
            Metric::P50Us => "p50 µs",
            Metric::P99Us => "p99 µs",
            Metric::CpuUsPerOp => "CPU µs/op",
            Metric::PssMib => "PSS MiB/pod",
            Metric::GuestPssMib => "guest RAM PSS MiB/pod",
            Metric::Threads => "threads/pod",
            Metric::Fds => "fds/pod",
        }
    }
}

/// A value measured once per round: its median and spread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// Median over the rounds.
    pub median: f64,
    /// Smallest round.
    pub min: f64,
    /// Largest round.
    pub max: f64,
    /// (max - min) / median, in percent: how noisy the rounds were.
    pub spread_pct: f64,
    /// Every round, in round order.
    pub rounds: Vec<f64>,
}

impl Stat {
    /// The statistics of `rounds`; `None` when there are none.
    pub fn of(rounds: Vec<f64>) -> Option<Self> {
        let mut sorted = rounds.clone();
        sorted.sort_by(f64::total_cmp);
        let min = *sorted.first()?;
        let max = *sorted.last()?;
        let mid = sorted.len() / 2;
        let median = if sorted.len().is_multiple_of(2) {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        } else {
            sorted[mid]
        };
        let spread_pct = if median != 0.0 {
            (max - min) / median * 100.0
        } else {
            0.0
        };
        Some(Self {
            median,
            min,
            max,
            spread_pct,
            rounds,
        })
    }
}

/// One contestant's figures for one workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// The contestant.
    pub contestant: String,
    /// What it is to the question.
    pub role: Role,
    /// The workload.
    pub workload: String,
    /// Each metric over the rounds.
    pub metrics: BTreeMap<Metric, Stat>,
}

/// The subject against another contestant on one workload and metric, round by round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    /// The workload.
    pub workload: String,
    /// The metric.
    pub metric: Metric,
    /// The subject (numerator).
    pub subject: String,
    /// The contestant it is compared with (denominator).
    pub against: String,
    /// That contestant's role.
    pub against_role: Role,
    /// subject / against, over the rounds.
    pub ratio: Stat,
    /// Whether a ratio above 1 means the subject is better.
    pub higher_is_better: bool,
}

/// Something measured: a hull component, a peer or a limit, set up once for all its trials.
pub trait Contestant<W> {
    /// Its name in results ("hull-blk", "qemu-storage-daemon", ...).
    fn name(&self) -> String;
    /// What it is to the question.
    fn role(&self) -> Role;
    /// Runs `workload` for about `budget` of wall-clock time.
    fn trial(&mut self, workload: &W, budget: Duration) -> Result<Trial>;
}

/// A workload's name, as results show it.
pub trait Workload {
    /// The name ("4k randread qd32").
    fn name(&self) -> String;
}

/// How long and how often to measure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Rounds per workload (each contestant runs once per round).
    pub rounds: usize,
    /// Wall-clock time of one measured trial.
    pub trial: Duration,
    /// Wall-clock time of the warm-up trial each contestant runs before the rounds.
    pub warmup: Duration,
}

impl Plan {
    /// The plan of a full run: 5 rounds of `trial`, warm-up a quarter of it.
    pub fn full(trial: Duration, rounds: usize) -> Self {
        Self {
            rounds: rounds.max(1),
            trial,
            warmup: trial / 4,
        }
    }

    /// A smoke run: the machinery works and produces every field; the figures mean nothing.
    pub fn quick() -> Self {
        Self {
            rounds: 2,
            trial: Duration::from_millis(150),
            warmup: Duration::from_millis(30),
        }
    }
}

/// Everything measured by [`run`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outcome {
    /// One per contestant and workload.
    pub series: Vec<Series>,
    /// The subject against each other contestant, per workload and metric.
    pub ratios: Vec<Ratio>,
}

/// Runs `workloads` on `contestants` by `plan`: per workload, a warm-up trial each, then
/// `plan.rounds` interleaved rounds. Reports progress to `progress`.
pub fn run<W: Workload>(
    plan: &Plan,
    workloads: &[W],
    contestants: &mut [Box<dyn Contestant<W> + '_>],
    progress: &Progress,
) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let count = contestants.len();
    for workload in workloads {
        let name = workload.name();
        for contestant in contestants.iter_mut() {
            progress.step_message(&format!("{name}: warming up {}", contestant.name()));
            contestant.trial(workload, plan.warmup)?;
        }
        // rounds[contestant][round] = that trial's metrics
        let mut trials: Vec<Vec<BTreeMap<Metric, f64>>> = vec![Vec::new(); count];
        for round in 0..plan.rounds {
            for offset in 0..count {
                let index = (round + offset) % count;
                let contestant = &mut contestants[index];
                progress.step_message(&format!(
                    "{name}: {} (round {}/{})",
                    contestant.name(),
                    round + 1,
                    plan.rounds
                ));
                let trial = contestant.trial(workload, plan.trial)?;
                trials[index].push(trial.metrics());
                progress.advance();
            }
        }
        let series: Vec<Series> = contestants
            .iter()
            .zip(&trials)
            .map(|(contestant, rounds)| Series {
                contestant: contestant.name(),
                role: contestant.role(),
                workload: name.clone(),
                metrics: per_metric(rounds),
            })
            .collect();
        outcome.ratios.extend(ratios(&series, &trials));
        outcome.series.extend(series);
    }
    Ok(outcome)
}

fn per_metric(rounds: &[BTreeMap<Metric, f64>]) -> BTreeMap<Metric, Stat> {
    Metric::ALL
        .iter()
        .filter_map(|&metric| {
            let values: Vec<f64> = rounds
                .iter()
                .filter_map(|m| m.get(&metric))
                .copied()
                .collect();
            // A metric counts only when every round has it.
            (values.len() == rounds.len())
                .then(|| Stat::of(values).map(|stat| (metric, stat)))
                .flatten()
        })
        .collect()
}

/// The subjects against every other contestant, round by round.
fn ratios(series: &[Series], trials: &[Vec<BTreeMap<Metric, f64>>]) -> Vec<Ratio> {
    let mut ratios = Vec::new();
    for (s, subject) in series.iter().enumerate() {
        if subject.role != Role::Subject {
            continue;
        }
        for (o, other) in series.iter().enumerate() {
            if o == s {
                continue;
            }
            for metric in Metric::ALL {
                let per_round: Option<Vec<f64>> = trials[s]
                    .iter()
                    .zip(&trials[o])
                    .map(|(a, b)| match (a.get(&metric), b.get(&metric)) {
                        (Some(a), Some(b)) if *b != 0.0 => Some(a / b),
                        _ => None,
                    })
                    .collect();
                if let Some(stat) = per_round.and_then(Stat::of) {
                    ratios.push(Ratio {
                        workload: subject.workload.clone(),
                        metric,
                        subject: subject.contestant.clone(),
                        against: other.contestant.clone(),
                        against_role: other.role,
                        ratio: stat,
                        higher_is_better: metric.higher_is_better(),
                    });
                }
            }
        }
    }
    ratios
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), Some(50));
        assert_eq!(percentile(&values, 99.0), Some(99));
        assert_eq!(percentile(&values, 100.0), Some(100));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn stat_reports_median_and_spread() {
        let stat = Stat::of(vec![3.0, 1.0, 2.0, 10.0]).expect("values");
        assert_eq!(stat.median, 2.5);
        assert_eq!((stat.min, stat.max), (1.0, 10.0));
        assert_eq!(stat.spread_pct, 360.0);
        assert_eq!(stat.rounds, [3.0, 1.0, 2.0, 10.0], "round order kept");
        assert!(Stat::of(Vec::new()).is_none());
    }

    struct Fixed {
        name: &'static str,
        role: Role,
        ops: u64,
        order: std::rc::Rc<std::cell::RefCell<Vec<&'static str>>>,
    }

    impl Contestant<&'static str> for Fixed {
        fn name(&self) -> String {
            self.name.into()
        }
        fn role(&self) -> Role {
            self.role
        }
        fn trial(&mut self, _: &&'static str, budget: Duration) -> Result<Trial> {
            self.order.borrow_mut().push(self.name);
            let mut latencies = vec![10_000; 4];
            Ok(Trial::from_latencies(
                self.ops,
                self.ops * 4096,
                budget,
                &mut latencies,
            ))
        }
    }

    impl Workload for &'static str {
        fn name(&self) -> String {
            (*self).to_owned()
        }
    }

    #[test]
    fn rounds_rotate_the_order_and_ratios_pair_rounds() {
        let order = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let fixed = |name, role, ops| -> Box<dyn Contestant<&'static str>> {
            Box::new(Fixed {
                name,
                role,
                ops,
                order: order.clone(),
            })
        };
        let mut contestants = vec![fixed("a", Role::Subject, 300), fixed("b", Role::Peer, 100)];
        let plan = Plan {
            rounds: 3,
            trial: Duration::from_secs(1),
            warmup: Duration::from_secs(1),
        };
        let outcome = run(&plan, &["w"], &mut contestants, &Progress::hidden()).expect("run");
        assert_eq!(*order.borrow(), ["a", "b", "a", "b", "b", "a", "a", "b"]);
        assert_eq!(outcome.series.len(), 2);
        let ops = &outcome.series[0].metrics[&Metric::OpsPerSec];
        assert_eq!(ops.median, 300.0);
        assert_eq!(ops.rounds.len(), 3);
        let ratio = outcome
            .ratios
            .iter()
            .find(|r| r.metric == Metric::OpsPerSec)
            .expect("an ops ratio");
        assert_eq!((ratio.subject.as_str(), ratio.against.as_str()), ("a", "b"));
        assert_eq!(ratio.ratio.median, 3.0);
        assert!(ratio.higher_is_better);
    }
}
