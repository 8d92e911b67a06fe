//! The chart of a run, as SVG beside its JSON: one panel per workload and metric, a bar per
//! contestant at the median of the rounds with a whisker from the slowest to the fastest
//! round, coloured by role (subject, peer, limit).

use std::path::Path;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::measure::{Metric, Role, Series};
use crate::results::Run;
use crate::{Error, Result};

/// Width of one panel, in pixels.
const PANEL_W: u32 = 360;
/// Height of one panel, in pixels.
const PANEL_H: u32 = 240;

fn color(role: Role) -> RGBColor {
    match role {
        Role::Subject => RGBColor(31, 119, 180),
        Role::Peer => RGBColor(255, 127, 14),
        Role::Limit => RGBColor(127, 127, 127),
    }
}

/// A contestant's name short enough to fit under its bar.
fn short(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("qemu-storage-daemon") {
        return match rest.split("aio=").nth(1) {
            Some(aio) => format!("qsd {}", aio.trim_end_matches(')')),
            None => "qsd".into(),
        };
    }
    match name {
        "ttrpc echo in process" => "ttrpc echo".into(),
        "bare unix-socket ping-pong" => "ping-pong".into(),
        _ => name.split(" (").next().unwrap_or(name).to_owned(),
    }
}

/// An axis value without needless decimals.
fn tick(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// A white SVG canvas of `size` pixels at `path`, titled "hull-bench `what` (when the run
/// started[, quick: not figures]): `caption`", for every chart of the harness.
pub(crate) fn titled_canvas<'a>(
    path: &'a Path,
    size: (u32, u32),
    run: &Run,
    what: &str,
    caption: &str,
) -> Result<DrawingArea<SVGBackend<'a>, plotters::coord::Shift>> {
    let plot_error = |message: String| Error::Plot {
        path: path.to_owned(),
        message,
    };
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(e.to_string()))?;
    let quick = if run.quick {
        ", quick: not figures"
    } else {
        ""
    };
    let title = format!("hull-bench {what} ({}{quick}): {caption}", run.started_at);
    root.titled(&title, ("sans-serif", 15))
        .map_err(|e| plot_error(e.to_string()))
}

/// Draws `run` into the SVG file `path`.
pub fn chart(run: &Run, path: &Path) -> Result<()> {
    let plot_error = |message: String| Error::Plot {
        path: path.to_owned(),
        message,
    };
    let mut workloads: Vec<&str> = Vec::new();
    for series in &run.series {
        if !workloads.contains(&series.workload.as_str()) {
            workloads.push(&series.workload);
        }
    }
    let metrics: Vec<Metric> = Metric::ALL
        .into_iter()
        .filter(|m| run.series.iter().any(|s| s.metrics.contains_key(m)))
        .collect();
    if workloads.is_empty() || metrics.is_empty() {
        return Err(plot_error("the run has no figures".into()));
    }
    let rows = u32::try_from(workloads.len()).unwrap_or(u32::MAX);
    let cols = u32::try_from(metrics.len()).unwrap_or(u32::MAX);
    let size = (
        PANEL_W.saturating_mul(cols),
        PANEL_H.saturating_mul(rows).saturating_add(40),
    );
    let root = titled_canvas(
        path,
        size,
        run,
        &run.subcommand,
        "median of the rounds, whisker min-max; blue hull, orange peer, grey limit",
    )?;
    let panels = root.split_evenly((workloads.len(), metrics.len()));
    for (index, panel) in panels.iter().enumerate() {
        let workload = workloads[index / metrics.len()];
        let metric = metrics[index % metrics.len()];
        let series: Vec<&Series> = run
            .series
            .iter()
            .filter(|s| s.workload == workload && s.metrics.contains_key(&metric))
            .collect();
        draw_panel(panel, workload, metric, &series).map_err(plot_error)?;
    }
    root.present().map_err(|e| plot_error(e.to_string()))?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    workload: &str,
    metric: Metric,
    series: &[&Series],
) -> std::result::Result<(), String> {
    let top = series
        .iter()
        .filter_map(|s| s.metrics.get(&metric).map(|stat| stat.max))
        .fold(0.0_f64, f64::max);
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };
    let count = u32::try_from(series.len()).unwrap_or(u32::MAX);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{workload}: {}", metric.label()),
            ("sans-serif", 13),
        )
        .margin(6)
        .x_label_area_size(22)
        .y_label_area_size(52)
        // A segmented 0..n range has n + 1 segments: one per contestant is 0..n - 1.
        .build_cartesian_2d(
            (0..count.saturating_sub(1).max(1)).into_segmented(),
            0.0..top,
        )
        .map_err(|e| e.to_string())?;
    let names: Vec<String> = series.iter().map(|s| short(&s.contestant)).collect();
    chart
        .configure_mesh()
        .disable_mesh()
        .y_labels(5)
        // One more than the bars: plotters 0.3.7 overflows computing the key points of a
        // two-segment axis asked for exactly two labels.
        .x_labels(series.len() + 1)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => usize::try_from(*i)
                .ok()
                .and_then(|i| names.get(i))
                .cloned()
                .unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_formatter(&|v| tick(*v))
        .label_style(("sans-serif", 10))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, s) in series.iter().enumerate() {
        let Some(stat) = s.metrics.get(&metric) else {
            continue;
        };
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), stat.median),
            ],
            color(s.role).filled(),
        );
        bar.set_margin(0, 0, 8, 8);
        chart.draw_series([bar]).map_err(|e| e.to_string())?;
        chart
            .draw_series([PathElement::new(
                vec![
                    (SegmentValue::CenterOf(i), stat.min),
                    (SegmentValue::CenterOf(i), stat.max),
                ],
                BLACK.stroke_width(2),
            )])
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::measure::{Plan, Stat};
    use crate::results::Machine;

    #[test]
    fn short_names_fit_under_a_bar() {
        assert_eq!(short("qemu-storage-daemon"), "qsd");
        assert_eq!(short("qemu-storage-daemon (aio=io_uring)"), "qsd io_uring");
        assert_eq!(short("hull-agent (ttrpc, unix socket)"), "hull-agent");
        assert_eq!(short("host fio (io_uring)"), "host fio");
    }

    #[test]
    fn chart_is_an_svg_naming_every_contestant_and_workload() {
        let mut run = Run::new("blk", true, Plan::quick(), Machine::probe());
        for (name, role) in [("hull-blk", Role::Subject), ("fio (host)", Role::Limit)] {
            for workload in ["4k randread qd1", "128k read qd8"] {
                let mut metrics = BTreeMap::new();
                metrics.insert(Metric::OpsPerSec, Stat::of(vec![1.0, 3.0]).expect("stat"));
                metrics.insert(Metric::P99Us, Stat::of(vec![5.0]).expect("stat"));
                run.series.push(Series {
                    contestant: name.into(),
                    role,
                    workload: workload.into(),
                    metrics,
                });
            }
        }
        let path = std::env::temp_dir().join(format!("hull-bench-plot-{}.svg", std::process::id()));
        chart(&run, &path).expect("chart");
        let svg = std::fs::read_to_string(&path).expect("svg");
        std::fs::remove_file(&path).expect("cleanup");
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(100)]);
        for text in [
            "hull-blk",
            "fio",
            "4k randread qd1",
            "128k read qd8",
            "p99 µs",
        ] {
            assert!(svg.contains(text), "{text} in the chart");
        }
    }
}
