//! The limit of `hull-bench blk`: host fio with io_uring on the same file, one fio process
//! per trial, its own JSON report read for the counts and the percentiles of the whole
//! latency (submission to completion).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::{Cache, Op, Pattern, Workload};
use crate::measure::{Contestant, Role, Trial};
use crate::{Error, Result};

/// fio on the host file.
pub struct Fio {
    program: PathBuf,
    file: PathBuf,
    size: u64,
    cache: Cache,
}

impl Fio {
    /// fio (`program`) on `file` of `size` bytes.
    pub fn new(program: &Path, file: &Path, size: u64, cache: Cache) -> Self {
        Self {
            program: program.to_owned(),
            file: file.to_owned(),
            size,
            cache,
        }
    }

    /// The arguments of a trial of `workload` for `budget`.
    pub fn args(&self, workload: &Workload, budget: Duration) -> Vec<String> {
        let rw = match (workload.op, workload.pattern) {
            (Op::Read, Pattern::Random) => "randread",
            (Op::Write, Pattern::Random) => "randwrite",
            (Op::Read, Pattern::Sequential) => "read",
            (Op::Write, Pattern::Sequential) => "write",
        };
        let direct = match self.cache {
            Cache::Direct => 1,
            Cache::Buffered => 0,
        };
        vec![
            "--name=hull-bench".into(),
            format!("--filename={}", self.file.display()),
            format!("--size={}", self.size),
            "--ioengine=io_uring".into(),
            format!("--direct={direct}"),
            format!("--rw={rw}"),
            format!("--bs={}", workload.block),
            format!("--iodepth={}", workload.depth),
            "--norandommap".into(),
            // fio drops the file's pages from the page cache before each trial by default: in
            // the buffered variant the contestant after it then read from the disk what the
            // others read from memory (hull-blk followed fio in three rounds of five).
            "--invalidate=0".into(),
            "--randrepeat=0".into(),
            // Percentiles of the whole latency (submission included), as the fake guest
            // measures: fio's default clat leaves out an io_uring_enter that completed inline.
            "--lat_percentiles=1".into(),
            "--time_based".into(),
            format!("--runtime={}ms", budget.as_millis().max(50)),
            "--output-format=json".into(),
        ]
    }
}

/// The trial in fio's JSON report `text` for an `op` workload.
pub fn parse_report(text: &str, op: Op) -> Result<Trial> {
    let json_start = text
        .find('{')
        .ok_or_else(|| Error::Fio(format!("no JSON report in its output: {text}")))?;
    let report: Value = serde_json::from_str(&text[json_start..])
        .map_err(|err| Error::Fio(format!("unreadable JSON report ({err})")))?;
    let side = match op {
        Op::Read => "read",
        Op::Write => "write",
    };
    let job = report
        .get("jobs")
        .and_then(|jobs| jobs.get(0))
        .and_then(|job| job.get(side))
        .ok_or_else(|| Error::Fio(format!("the report has no jobs[0].{side}")))?;
    let number = |path: &[&str]| -> Option<f64> {
        path.iter()
            .try_fold(job, |value, key| value.get(key))
            .and_then(Value::as_f64)
    };
    let ops = number(&["total_ios"]).unwrap_or(0.0);
    let bytes = number(&["io_bytes"]).unwrap_or(0.0);
    let runtime_ms = number(&["runtime"]).unwrap_or(0.0);
    if ops <= 0.0 || runtime_ms <= 0.0 {
        return Err(Error::Fio(format!(
            "the report counts no I/O ({side}: {ops} ios in {runtime_ms} ms)"
        )));
    }
    let percentile = |p: &str| {
        number(&["lat_ns", "percentile", p]).or_else(|| number(&["clat_ns", "percentile", p]))
    };
    let p50 = percentile("50.000000");
    let p99 = percentile("99.000000");
    // usr_cpu and sys_cpu: percent of the job's runtime.
    let cpu_percent = |key: &str| {
        report
            .get("jobs")
            .and_then(|jobs| jobs.get(0))
            .and_then(|job| job.get(key))
            .and_then(Value::as_f64)
    };
    let cpu_us_per_op = match (cpu_percent("usr_cpu"), cpu_percent("sys_cpu")) {
        (Some(usr), Some(sys)) => Some((usr + sys) / 100.0 * runtime_ms * 1000.0 / ops),
        _ => None,
    };
    Ok(Trial {
        ops: ops as u64,
        bytes: bytes as u64,
        elapsed: Duration::from_secs_f64(runtime_ms / 1000.0),
        p50_us: p50.map(|ns| ns / 1000.0),
        p99_us: p99.map(|ns| ns / 1000.0),
        cpu_us_per_op,
    })
}

impl Contestant<Workload> for Fio {
    fn name(&self) -> String {
        "host fio (io_uring)".into()
    }

    fn role(&self) -> Role {
        Role::Limit
    }

    fn trial(&mut self, workload: &Workload, budget: Duration) -> Result<Trial> {
        let output = Command::new(&self.program)
            .args(self.args(workload, budget))
            .output()
            .map_err(|source| Error::Io {
                what: format!("running {}", self.program.display()),
                source,
            })?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(Error::Fio(format!(
                "exited with {}: {}{}",
                output.status,
                stdout,
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        parse_report(&stdout, workload.op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"note: a warning fio printed first
{ "jobs": [ { "read": { "total_ios": 2000, "io_bytes": 8192000, "runtime": 1000,
  "clat_ns": { "percentile": { "50.000000": 1, "99.000000": 2 } },
  "lat_ns": { "percentile": { "50.000000": 40960, "99.000000": 120832 } } },
  "write": { "total_ios": 0, "io_bytes": 0, "runtime": 0 },
  "usr_cpu": 10.0, "sys_cpu": 30.0 } ] }"#;

    #[test]
    fn reads_counts_and_total_latency_percentiles_from_the_report() {
        let trial = parse_report(REPORT, Op::Read).expect("report");
        assert_eq!(trial.ops, 2000);
        assert_eq!(trial.bytes, 8_192_000);
        assert_eq!(trial.elapsed, Duration::from_secs(1));
        assert_eq!(trial.p50_us, Some(40.96));
        assert_eq!(trial.p99_us, Some(120.832));
        // 40 % of 1 s over 2000 requests.
        assert_eq!(trial.cpu_us_per_op, Some(200.0));
    }

    #[test]
    fn a_report_without_io_is_an_error() {
        let err = parse_report(REPORT, Op::Write).expect_err("no writes");
        assert!(err.to_string().contains("counts no I/O"), "{err}");
        assert!(parse_report("fio: command not understood", Op::Read).is_err());
    }

    /// Resident bytes of `file` in the page cache, by util-linux's `fincore`.
    fn resident_bytes(fincore: &Path, file: &Path) -> u64 {
        let output = Command::new(fincore)
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .arg(file)
            .output()
            .expect("fincore runs");
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("fincore prints a byte count")
    }

    /// The buffered variant measures the page cache: fio must not drop the file's pages
    /// before its trial (its default), or the next contestant reads from the disk.
    #[test]
    fn a_buffered_trial_leaves_the_file_in_the_page_cache() {
        let test = "a_buffered_trial_leaves_the_file_in_the_page_cache";
        let fio = hull_tests::require!(test, hull_tests::prereq::find_program("fio", "fio"));
        let fincore = hull_tests::require!(
            test,
            hull_tests::prereq::find_program("fincore", "util-linux")
        );
        let dir = crate::child::RunDir::new(&std::env::temp_dir(), "fio-cache").expect("dir");
        let file = dir.path().join("disk.img");
        // Large enough that a 50 ms trial at QD1 cannot read it all back in.
        let size = 64 << 20;
        crate::blk::create_file(&file, size).expect("file");
        std::fs::read(&file).expect("reading the file into the page cache");
        assert_eq!(resident_bytes(&fincore, &file), size, "cached before fio");
        let mut fio = Fio::new(&fio, &file, size, Cache::Buffered);
        let workload = crate::blk::WORKLOADS[0];
        fio.trial(&workload, Duration::from_millis(50))
            .expect("fio trial");
        assert_eq!(resident_bytes(&fincore, &file), size, "cached after fio");
    }
}
