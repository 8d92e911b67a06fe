//! `hull-bench all`: every subcommand of the design in turn, each run saved with its chart
//! ([`publish`]); one that fails or is not built yet does not stop the others. The list of
//! what ran, with each outcome, is saved as `all-<time>.json` beside the results.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::results::{Run, SCHEMA_VERSION};
use crate::{blk, density, fs, net, plot, rpc, soak, startup, vmm, vsock, Error, Result};

/// Every subcommand of the design that measures, in the order `all` runs them.
pub const SUBCOMMANDS: [&str; 9] = [
    "rpc",
    "blk",
    "fs",
    "net",
    "vsock",
    "vmm-start",
    "vmm-exits",
    "density",
    "startup",
];

/// What became of one subcommand.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    /// It measured; its results are in this file.
    Ok {
        /// The JSON results.
        results: PathBuf,
    },
    /// It is not built yet.
    #[serde(rename = "not implemented")]
    NotImplemented {
        /// "not implemented yet: <name>".
        message: String,
    },
    /// It failed.
    Failed {
        /// The error chain.
        message: String,
    },
}

/// One line of the list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listed {
    /// The subcommand.
    pub subcommand: &'static str,
    /// Its outcome.
    #[serde(flatten)]
    pub status: Status,
}

/// Saves `run` as JSON in `out` and draws its chart beside it; returns both paths.
pub fn publish(run: &Run, out: &Path) -> Result<(PathBuf, PathBuf)> {
    let json = run.save(out)?;
    let svg = json.with_extension("svg");
    if run.subcommand == soak::NAME {
        soak::chart(run, &svg)?;
        return Ok((json, svg));
    }
    plot::chart(run, &svg)?;
    if run.subcommand == startup::NAME {
        startup::phase_chart(run, &startup::phase_chart_path(&json))?;
    }
    if run.subcommand == density::NAME {
        density::growth_chart(run, &density::growth_chart_path(&json))?;
    }
    Ok((json, svg))
}

/// The options of every subcommand `all` runs.
#[derive(Debug)]
pub struct Options {
    /// For `rpc`.
    pub rpc: rpc::Options,
    /// For `blk`.
    pub blk: blk::Options,
    /// For `fs`.
    pub fs: fs::Options,
    /// For `net`.
    pub net: net::Options,
    /// For `vsock`.
    pub vsock: vsock::Options,
    /// For `startup`.
    pub startup: startup::Options,
    /// For `density`.
    pub density: density::Options,
    /// For `vmm-start` and `vmm-exits`.
    pub vmm: vmm::Options,
}

/// Runs every subcommand with these options, saving each run in `out`; `on_run` sees each
/// run once saved (with its JSON and chart paths), `on_listed` each outcome. Returns the
/// list and the path of the saved list.
pub fn run(
    options: &Options,
    out: &Path,
    mut on_run: impl FnMut(&Run, &Path, &Path),
    mut on_listed: impl FnMut(&Listed),
) -> Result<(Vec<Listed>, PathBuf)> {
    let mut listed = Vec::new();
    for subcommand in SUBCOMMANDS {
        let measured = match subcommand {
            "rpc" => Some(rpc::run(&options.rpc)),
            "blk" => Some(blk::run(&options.blk)),
            "fs" => Some(fs::run(&options.fs)),
            net::NAME => Some(net::run(&options.net)),
            vsock::NAME => Some(vsock::run(&options.vsock)),
            startup::NAME => Some(startup::run(&options.startup)),
            density::NAME => Some(density::run(&options.density)),
            vmm::START => Some(vmm::run_start(&options.vmm)),
            vmm::EXITS => Some(vmm::run_exits(&options.vmm)),
            _ => None,
        };
        let status = match measured {
            None => Status::NotImplemented {
                message: Error::NotImplemented(subcommand.into()).to_string(),
            },
            Some(Ok(run)) => {
                let (json, svg) = publish(&run, out)?;
                on_run(&run, &json, &svg);
                Status::Ok { results: json }
            }
            Some(Err(err)) => Status::Failed {
                message: error_chain(&err),
            },
        };
        let entry = Listed { subcommand, status };
        on_listed(&entry);
        listed.push(entry);
    }
    let quick = options.rpc.quick || options.blk.quick;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ");
    let path = out.join(format!(
        "all-{stamp}{}.json",
        if quick { "-quick" } else { "" }
    ));
    let summary = serde_json::json!({
        "schema": SCHEMA_VERSION,
        "quick": quick,
        "subcommands": listed,
    });
    std::fs::create_dir_all(out).map_err(|source| Error::Io {
        what: format!("creating {}", out.display()),
        source,
    })?;
    let bytes = serde_json::to_vec_pretty(&summary).map_err(|source| Error::Json {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&path, bytes).map_err(|source| Error::Io {
        what: format!("writing {}", path.display()),
        source,
    })?;
    Ok((listed, path))
}

/// `err` and its causes, one after the other.
fn error_chain(err: &Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_serializes_with_a_status_field() {
        let entry = Listed {
            subcommand: "fs",
            status: Status::NotImplemented {
                message: "not implemented yet: fs".into(),
            },
        };
        let json = serde_json::to_value(&entry).expect("json");
        assert_eq!(json["subcommand"], "fs");
        assert_eq!(json["status"], "not implemented");
        assert_eq!(json["message"], "not implemented yet: fs");
        let ok = Listed {
            subcommand: "rpc",
            status: Status::Ok {
                results: "/r/rpc.json".into(),
            },
        };
        let json = serde_json::to_value(&ok).expect("json");
        assert_eq!(
            (json["status"].as_str(), json["results"].as_str()),
            (Some("ok"), Some("/r/rpc.json"))
        );
    }
}
