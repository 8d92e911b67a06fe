//! The results of a run as JSON, one file per run (`<subcommand>-<UTC time>.json` in the
//! results directory, by default `$HULL_CACHE_DIR/bench`, i.e. `~/.cache/hull/bench`, outside
//! the repository), and finding the latest one of a subcommand for `hull-bench report`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::measure::{Outcome, Plan, Ratio, Series};
use crate::{Error, Result};

/// Version of the JSON layout; bumped when a field changes meaning.
pub const SCHEMA_VERSION: u32 = 1;

/// Where results go unless `--out` says otherwise.
pub fn default_dir() -> PathBuf {
    let cache = std::env::var_os("HULL_CACHE_DIR").map_or_else(
        || {
            std::env::var_os("HOME")
                .map_or_else(|| PathBuf::from("/root"), PathBuf::from)
                .join(".cache/hull")
        },
        PathBuf::from,
    );
    cache.join("bench")
}

/// The machine a run measured on: figures are comparable only on the same one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPUs this process may run on.
    pub cpus: usize,
    /// The CPU's model name from /proc/cpuinfo.
    pub cpu_model: String,
    /// `uname -r`.
    pub kernel: String,
    /// The 1-minute load average when the run started: above `cpus`, other work competed.
    pub load_at_start: f64,
    /// The 1-minute load average when the run ended.
    pub load_at_end: f64,
}

impl Machine {
    /// This machine now (`load_at_end` is filled by [`Machine::finish`]).
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|rest| rest.split(':').nth(1))
            .map_or_else(|| "unknown".to_owned(), |m| m.trim().to_owned());
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        let load = load_average();
        Self {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
            kernel,
            load_at_start: load,
            load_at_end: load,
        }
    }

    /// Records the load at the end of the run.
    pub fn finish(&mut self) {
        self.load_at_end = load_average();
    }
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|l| l.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// One run of a subcommand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// [`SCHEMA_VERSION`].
    pub schema: u32,
    /// The subcommand ("rpc", "blk").
    pub subcommand: String,
    /// The settings that make runs of a subcommand answer different questions (for blk the
    /// page cache: "cache=direct"); empty when there are none. `report` shows the latest run
    /// of each variant.
    #[serde(default)]
    pub variant: String,
    /// When the run started, UTC, RFC 3339.
    pub started_at: String,
    /// The command line that produced it.
    pub command: String,
    /// A smoke run (`--quick`): its figures mean nothing.
    pub quick: bool,
    /// Where it ran.
    pub machine: Machine,
    /// Rounds and trial length.
    pub plan: Plan,
    /// Subcommand-specific settings (file size, payload bytes, versions of the peers ...).
    pub params: serde_json::Value,
    /// The figures of every contestant.
    pub series: Vec<Series>,
    /// The subject against the others.
    pub ratios: Vec<Ratio>,
    /// What a reader must know to read the figures.
    pub notes: Vec<String>,
}

impl Run {
    /// A run of `subcommand` that started now with `machine`.
    pub fn new(subcommand: &str, quick: bool, plan: Plan, machine: Machine) -> Self {
        Self {
            schema: SCHEMA_VERSION,
            subcommand: subcommand.to_owned(),
            variant: String::new(),
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            quick,
            machine,
            plan,
            params: serde_json::Value::Null,
            series: Vec::new(),
            ratios: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Takes the figures of `outcome`.
    pub fn record(&mut self, outcome: Outcome) {
        self.series = outcome.series;
        self.ratios = outcome.ratios;
    }

    /// The file stem of this run: `<subcommand>-<time>` (`-quick` for smoke runs).
    /// The variant is not part of it: `latest` reads it from the file.
    pub fn stem(&self) -> String {
        let time: String = self
            .started_at
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        let quick = if self.quick { "-quick" } else { "" };
        format!("{}-{time}{quick}", self.subcommand)
    }

    /// Writes the run as `<dir>/<stem>.json`; returns the path.
    pub fn save(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            what: format!("creating the results directory {}", dir.display()),
            source,
        })?;
        let path = dir.join(format!("{}.json", self.stem()));
        let json = serde_json::to_vec_pretty(self).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&path, json).map_err(|source| Error::Io {
            what: format!("writing {}", path.display()),
            source,
        })?;
        Ok(path)
    }

    /// Reads a run written by [`Run::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            what: format!("reading {}", path.display()),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            path: path.to_owned(),
            source,
        })
    }
}

/// The latest run of each variant of `subcommand` in `dir` (full runs before smoke runs, then
/// by start time), ordered by variant.
pub fn latest(dir: &Path, subcommand: &str) -> Result<Vec<(PathBuf, Run)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Io {
                what: format!("listing {}", dir.display()),
                source,
            })
        }
    };
    let prefix = format!("{subcommand}-");
    let mut best: std::collections::BTreeMap<String, (PathBuf, Run)> = Default::default();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&prefix) || !name.ends_with(".json") {
            continue;
        }
        let Ok(run) = Run::load(&path) else { continue };
        if run.subcommand != subcommand {
            continue;
        }
        let key = |r: &Run| (!r.quick, r.started_at.clone());
        let better = best
            .get(&run.variant)
            .is_none_or(|(_, b)| key(&run) > key(b));
        if better {
            best.insert(run.variant.clone(), (path, run));
        }
    }
    Ok(best.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(variant: &str, started_at: &str, quick: bool) -> Run {
        let mut run = Run::new("blk", quick, Plan::quick(), Machine::probe());
        run.variant = variant.into();
        run.started_at = started_at.into();
        run
    }

    #[test]
    fn latest_keeps_the_newest_full_run_of_each_variant() {
        let dir = std::env::temp_dir().join(format!("hull-bench-latest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        run("cache=direct", "2026-01-01T00:00:00.000Z", false)
            .save(&dir)
            .expect("save");
        run("cache=direct", "2026-01-02T00:00:00.000Z", false)
            .save(&dir)
            .expect("save");
        run("cache=direct", "2026-01-03T00:00:00.000Z", true)
            .save(&dir)
            .expect("save");
        run("cache=buffered", "2026-01-01T00:00:00.000Z", true)
            .save(&dir)
            .expect("save");
        let mut other = run("", "2026-01-04T00:00:00.000Z", false);
        other.subcommand = "rpc".into();
        other.save(&dir).expect("save");
        let found_runs = latest(&dir, "blk").expect("latest");
        let missing = latest(&dir.join("nothing"), "blk").expect("no directory: no runs");
        std::fs::remove_dir_all(&dir).expect("cleanup");
        let found: Vec<(&str, &str, bool)> = found_runs
            .iter()
            .map(|(_, r)| (r.variant.as_str(), r.started_at.as_str(), r.quick))
            .collect();
        assert_eq!(
            found,
            [
                ("cache=buffered", "2026-01-01T00:00:00.000Z", true),
                ("cache=direct", "2026-01-02T00:00:00.000Z", false),
            ]
        );
        assert!(missing.is_empty());
    }
}
