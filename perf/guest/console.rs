//! The console protocol of hull-bench's guest programs (fs_bench, net_bench, vsock_bench),
//! shared through `#[path]` as they are built with a bare `rustc`: the guest says
//! `HULLFS-BENCH ready CLOCKSOURCE`, then answers each `run WORKLOAD BUDGET_MS COUNT` line
//! from the host (perf/src/fs/vm.rs) with one `HULLFS-BENCH result OPS BYTES ELAPSED_NS
//! P50_NS P99_NS` or `HULLFS-BENCH error …` line, until `quit` (or the console closes).

use std::io::BufRead;
use std::time::Duration;

/// Counts and per-operation latencies (ns) of one trial.
pub struct Outcome {
    pub ops: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    pub latencies: Vec<u64>,
}

/// `d` in nanoseconds, saturating.
pub fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The `p`th percentile of `sorted` by nearest rank, as the host's (perf/src/measure.rs)
/// takes it; 0 for none.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Says the guest is ready, with the clock source its timings use (the host insists on the
/// TSC: a microvm falls back to jiffies, 4 ms steps, when the kernel finds the TSC unusable),
/// then serves the host's commands with `run(workload, budget, count)`. Ends with `quit`
/// (Ok) or when the console closes (Err).
pub fn serve(
    mut run: impl FnMut(&str, Duration, u64) -> Result<Outcome, String>,
) -> Result<(), String> {
    let clock = std::fs::read_to_string(
        "/sys/devices/system/clocksource/clocksource0/current_clocksource",
    )
    .unwrap_or_else(|_| "unknown".into());
    println!("HULLFS-BENCH ready {}", clock.trim());
    let stdin = std::io::stdin();
    let mut lines = stdin.lock();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("the console closed".into());
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["quit"] => return Ok(()),
            ["run", workload, budget_ms, count] => {
                let parsed = budget_ms
                    .parse::<u64>()
                    .map_err(|e| format!("budget {budget_ms:?}: {e}"))
                    .and_then(|b| {
                        count
                            .parse::<u64>()
                            .map_err(|e| format!("count {count:?}: {e}"))
                            .map(|c| (b, c))
                    });
                let answer = parsed.and_then(|(budget_ms, count)| {
                    run(workload, Duration::from_millis(budget_ms), count)
                });
                match answer {
                    Ok(mut outcome) => {
                        outcome.latencies.sort_unstable();
                        println!(
                            "HULLFS-BENCH result {} {} {} {} {}",
                            outcome.ops,
                            outcome.bytes,
                            ns(outcome.elapsed),
                            percentile(&outcome.latencies, 50.0),
                            percentile(&outcome.latencies, 99.0)
                        );
                    }
                    Err(err) => println!("HULLFS-BENCH error {workload}: {err}"),
                }
            }
            [] => {}
            _ => println!("HULLFS-BENCH error unknown command: {}", line.trim()),
        }
    }
}
