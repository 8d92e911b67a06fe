//! `hull-bench blk`: vhost-user-blk backends through a fake guest.

use std::path::PathBuf;

use crate::measure::Plan;
use crate::results::Run;
use crate::{Error, Result};

/// How the backends and fio use the host page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Cache {
    /// O_DIRECT everywhere.
    Direct,
    /// Through the page cache.
    Buffered,
}

/// Options of `hull-bench blk`.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long and how often.
    pub plan: Plan,
    /// A smoke run.
    pub quick: bool,
    /// The hull-blk binary.
    pub hull_blk: Option<PathBuf>,
    /// The file to use.
    pub file: Option<PathBuf>,
    /// Size of a created file, MiB.
    pub size_mib: u64,
    /// Page cache use.
    pub cache: Cache,
}

/// Runs the benchmark.
pub fn run(_options: &Options) -> Result<Run> {
    Err(Error::NotImplemented("blk".into()))
}
