//! Turning results into text: the summary a run prints, and the generated part of
//! `perf/RESULTS.md` (`hull-bench report`), rendered from the latest JSON of each
//! subcommand, with its chart copied beside the markdown (`plots/<subcommand>.svg`).
//!
//! Only the text between [`BEGIN`] and [`END`] is rewritten; what surrounds it (the machine,
//! the commands, the discussion of the figures) is written by people.

use std::fmt::Write as _;
use std::path::Path;

use crate::measure::{Metric, Role};
use crate::results::{self, Run};
use crate::{density, net, plot, soak, startup, vmm, vsock, Error, Result};

/// Marks the start of the generated section of RESULTS.md.
pub const BEGIN: &str = "<!-- BEGIN hull-bench report: generated, edits here are lost -->";
/// Marks its end.
pub const END: &str = "<!-- END hull-bench report -->";

/// The subcommands with results to report, in report order.
pub const REPORTED: [&str; 10] = [
    "rpc",
    "blk",
    "fs",
    net::NAME,
    vsock::NAME,
    vmm::START,
    vmm::EXITS,
    startup::NAME,
    density::NAME,
    soak::NAME,
];

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Subject => "subject",
        Role::Peer => "peer",
        Role::Limit => "limit",
    }
}

fn number(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// The summary a run prints: per workload, each contestant's medians (with the spread of the
/// rounds) and the subject's ratios.
pub fn summary(run: &Run) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "hull-bench {}{}: {} rounds of {:.2} s per contestant and workload",
        run.subcommand,
        if run.quick {
            " --quick (smoke run: the figures mean nothing)"
        } else {
            ""
        },
        run.plan.rounds,
        run.plan.trial.as_secs_f64()
    );
    for workload in workloads(run) {
        let _ = writeln!(text, "\n{workload}");
        for series in run.series.iter().filter(|s| s.workload == workload) {
            let mut line = format!("  {:<40}", series.contestant);
            for (metric, stat) in &series.metrics {
                let _ = write!(
                    line,
                    " {} {} (±{:.0}%)",
                    metric.label(),
                    number(stat.median),
                    stat.spread_pct / 2.0
                );
            }
            let _ = writeln!(text, "{line}");
        }
        for ratio in run.ratios.iter().filter(|r| r.workload == workload) {
            if ratio.metric == Metric::MbPerSec {
                continue;
            }
            let _ = writeln!(
                text,
                "  {} / {}: {} {}x ({}..{})",
                ratio.subject,
                ratio.against,
                ratio.metric.label(),
                number(ratio.ratio.median),
                number(ratio.ratio.min),
                number(ratio.ratio.max)
            );
        }
    }
    text
}

fn workloads(run: &Run) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for series in &run.series {
        if !names.contains(&series.workload) {
            names.push(series.workload.clone());
        }
    }
    names
}

/// The markdown of one run: how it was made, a table of medians, a table of ratios.
pub fn markdown(run: &Run, chart: Option<&str>) -> String {
    let mut md = String::new();
    if run.variant.is_empty() {
        let _ = writeln!(md, "### `{}`\n", run.subcommand);
    } else {
        let _ = writeln!(md, "### `{}` ({})\n", run.subcommand, run.variant);
    }
    if run.quick {
        let _ = writeln!(
            md,
            "**Smoke run (`--quick`): these figures only show the harness works.**\n"
        );
    }
    let m = &run.machine;
    let _ = writeln!(md, "- command: `{}`", run.command);
    let _ = writeln!(
        md,
        "- started {}; {} rounds of {:.2} s per contestant and workload, interleaved, after a \
         {:.2} s warm-up each",
        run.started_at,
        run.plan.rounds,
        run.plan.trial.as_secs_f64(),
        run.plan.warmup.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "- machine: {} CPUs ({}), kernel {}, load average {:.2} at the start and {:.2} at the end",
        m.cpus, m.cpu_model, m.kernel, m.load_at_start, m.load_at_end
    );
    for note in &run.notes {
        let _ = writeln!(md, "- {note}");
    }
    if let Some(chart) = chart {
        let _ = writeln!(md, "- chart: [{chart}]({chart})");
    }
    if run.subcommand == density::NAME {
        md.push_str(&density::markdown(run));
        return md;
    }
    let _ = writeln!(
        md,
        "\nRatios, subject / other, median of the per-round ratios (min–max over the rounds). \
         For ops/s above 1 is better for hull; for latency and CPU per op below 1 is.\n"
    );
    let _ = writeln!(
        md,
        "| workload | against | ops/s | p50 latency | p99 latency | CPU per op |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for workload in workloads(run) {
        let mut against: Vec<(&str, Role)> = Vec::new();
        for r in run.ratios.iter().filter(|r| r.workload == workload) {
            if !against.iter().any(|(n, _)| *n == r.against) {
                against.push((&r.against, r.against_role));
            }
        }
        for (other, role) in against {
            let cell = |metric: Metric| {
                run.ratios
                    .iter()
                    .find(|r| r.workload == workload && r.against == other && r.metric == metric)
                    .map_or_else(
                        || "–".to_owned(),
                        |r| {
                            format!(
                                "**{}×** ({}–{})",
                                number(r.ratio.median),
                                number(r.ratio.min),
                                number(r.ratio.max)
                            )
                        },
                    )
            };
            let cells = [
                cell(Metric::OpsPerSec),
                cell(Metric::P50Us),
                cell(Metric::P99Us),
                cell(Metric::CpuUsPerOp),
            ];
            // A workload measured in other units (vmm's footprint) has its own table.
            if cells.iter().all(|c| c == "–") {
                continue;
            }
            let _ = writeln!(
                md,
                "| {workload} | {other} ({}) | {} |",
                role_name(role),
                cells.join(" | ")
            );
        }
    }
    let _ = writeln!(
        md,
        "\nMedians of the rounds (spread: (max−min)/median). Absolute figures of a shared, \
         noisy machine: read the ratios above.\n"
    );
    let _ = writeln!(
        md,
        "| workload | contestant | role | ops/s | MB/s | p50 µs | p99 µs | CPU µs/op |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for series in &run.series {
        let cell = |metric: Metric| {
            series.metrics.get(&metric).map_or_else(
                || "–".to_owned(),
                |s| format!("{} (±{:.0}%)", number(s.median), s.spread_pct / 2.0),
            )
        };
        let cells = [
            cell(Metric::OpsPerSec),
            cell(Metric::MbPerSec),
            cell(Metric::P50Us),
            cell(Metric::P99Us),
            cell(Metric::CpuUsPerOp),
        ];
        if cells.iter().all(|c| c == "–") {
            continue;
        }
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            series.workload,
            series.contestant,
            role_name(series.role),
            cells.join(" | ")
        );
    }
    if run.subcommand == startup::NAME {
        md.push_str(&startup::markdown_phases(run));
    }
    if run.subcommand == vmm::START || run.subcommand == vmm::EXITS {
        md.push_str(&vmm::markdown_footprint(run));
    }
    md
}

/// Rewrites the generated section of `output` from the latest results in `dir`, copying each
/// run's chart to `plots/<subcommand>.svg` beside `output`. Returns what it reported.
pub fn render(dir: &Path, output: &Path) -> Result<Vec<String>> {
    let io_error = |what: String| move |source| Error::Io { what, source };
    let base = output.parent().unwrap_or_else(|| Path::new("."));
    let mut section = String::new();
    let mut reported = Vec::new();
    for subcommand in REPORTED {
        let runs = results::latest(dir, subcommand)?;
        if runs.is_empty() {
            let _ = writeln!(
                section,
                "### `{subcommand}`\n\nNo results yet: run `hull-bench {subcommand}`.\n"
            );
        }
        for (json, run) in runs {
            let svg = json.with_extension("svg");
            if subcommand == soak::NAME {
                soak::chart(&run, &svg)?;
            } else {
                plot::chart(&run, &svg)?;
            }
            let plots = base.join("plots");
            std::fs::create_dir_all(&plots)
                .map_err(io_error(format!("creating {}", plots.display())))?;
            let stem: String = std::iter::once(subcommand.to_owned())
                .chain((!run.variant.is_empty()).then(|| run.variant.clone()))
                .collect::<Vec<_>>()
                .join("-")
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            let copy = plots.join(format!("{stem}.svg"));
            std::fs::copy(&svg, &copy)
                .map_err(io_error(format!("copying the chart to {}", copy.display())))?;
            let link = format!("plots/{stem}.svg");
            let mut text = if subcommand == soak::NAME {
                soak::markdown(&run, Some(&link))
            } else {
                markdown(&run, Some(&link))
            };
            let phases = startup::phase_chart_path(&json);
            if subcommand == startup::NAME && startup::phase_chart(&run, &phases).is_ok() {
                let copy = plots.join(format!("{stem}-phases.svg"));
                std::fs::copy(&phases, &copy)
                    .map_err(io_error(format!("copying the chart to {}", copy.display())))?;
                text.push_str(&format!(
                    "\nPhases chart: [plots/{stem}-phases.svg](plots/{stem}-phases.svg)\n"
                ));
            }
            let growth = density::growth_chart_path(&json);
            if subcommand == density::NAME && density::growth_chart(&run, &growth).is_ok() {
                let copy = plots.join(format!("{stem}-growth.svg"));
                std::fs::copy(&growth, &copy)
                    .map_err(io_error(format!("copying the chart to {}", copy.display())))?;
                text.push_str(&format!(
                    "\nGrowth chart: [plots/{stem}-growth.svg](plots/{stem}-growth.svg)\n"
                ));
            }
            let _ = writeln!(section, "{text}");
            reported.push(format!("{subcommand} ({})", json.display()));
        }
    }
    let existing = match std::fs::read_to_string(output) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(Error::Io {
                what: format!("reading {}", output.display()),
                source,
            })
        }
    };
    let generated = format!("{BEGIN}\n\n{section}{END}");
    let text = match (existing.find(BEGIN), existing.find(END)) {
        (Some(start), Some(end)) if end > start => format!(
            "{}{generated}{}",
            &existing[..start],
            &existing[end + END.len()..]
        ),
        _ => format!("{existing}\n{generated}\n"),
    };
    std::fs::write(output, text).map_err(io_error(format!("writing {}", output.display())))?;
    Ok(reported)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::measure::{Plan, Ratio, Series, Stat};
    use crate::results::Machine;

    fn sample_run() -> Run {
        let mut run = Run::new("rpc", false, Plan::quick(), Machine::probe());
        for (name, role, p50) in [
            ("hull-agent", Role::Subject, 30.0),
            ("ping-pong", Role::Limit, 10.0),
        ] {
            let mut metrics = BTreeMap::new();
            metrics.insert(Metric::P50Us, Stat::of(vec![p50, p50]).expect("stat"));
            run.series.push(Series {
                contestant: name.into(),
                role,
                workload: "Check round trip".into(),
                metrics,
            });
        }
        run.ratios.push(Ratio {
            workload: "Check round trip".into(),
            metric: Metric::P50Us,
            subject: "hull-agent".into(),
            against: "ping-pong".into(),
            against_role: Role::Limit,
            ratio: Stat::of(vec![2.9, 3.1]).expect("stat"),
            higher_is_better: false,
        });
        run
    }

    #[test]
    fn markdown_shows_the_ratio_and_the_command() {
        let md = markdown(&sample_run(), None);
        assert!(
            md.contains(
                "| Check round trip | ping-pong (limit) | – | **3.00×** (2.90–3.10) | – | – |"
            ),
            "{md}"
        );
        assert!(md.contains("- command: `"), "{md}");
    }

    #[test]
    fn render_replaces_only_the_generated_section() {
        let dir = std::env::temp_dir().join(format!("hull-bench-report-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let output = dir.join("RESULTS.md");
        std::fs::write(&output, format!("# head\n{BEGIN}\nold\n{END}\ntail\n")).expect("md");
        sample_run().save(&dir).expect("save");
        let reported = render(&dir, &output).expect("render");
        let text = std::fs::read_to_string(&output).expect("md");
        let plot_exists = dir.join("plots/rpc.svg").is_file();
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(reported.len(), 1, "{reported:?}");
        assert!(
            text.starts_with("# head\n") && text.ends_with("tail\n"),
            "{text}"
        );
        assert!(!text.contains("old"), "{text}");
        assert!(text.contains("**3.00×**"), "{text}");
        assert!(
            text.contains("No results yet: run `hull-bench blk`"),
            "{text}"
        );
        assert!(plot_exists, "the chart is copied beside the markdown");
    }
}
