//! `hull-bench`: hull's components measured against a peer in the same run.
//!
//! Every subcommand answers one question a user asks (see `/work/shared/BENCHMARKS.md` and
//! `perf/RESULTS.md`) by running the hull component, its peer and the limit one after the
//! other in interleaved rounds ([`measure`]), and writes the figures as JSON ([`results`])
//! with an SVG chart beside them ([`plot`]); [`report`] renders `perf/RESULTS.md` from the
//! latest results. Figures are compared only as ratios within one run: the machines this
//! runs on are shared and noisy.
//!
//! Implemented: [`rpc`] (agent round trips), [`blk`] (vhost-user-blk backends through a fake
//! guest), [`fs`] (vhost-user-fs backends under QEMU guests), [`net`] (hull-net against
//! QEMU's virtio-net under QEMU guests), [`vsock`] (hull-vsock against vhost-device-vsock
//! under QEMU guests), [`startup`] (`ctr run` to first
//! output through containerd, split by phase) and [`density`] (memory, threads and descriptors
//! per pod), the last two on [`pods`] (a private containerd with hull's shim and runc), and
//! [`vmm`] (`vmm-start`, `vmm-exits`: hull-vmm against QEMU microvm with the same small
//! guest). The other subcommands of the design answer "not implemented yet".

pub mod all;
pub mod blk;
pub mod child;
pub mod density;
pub mod fs;
pub mod measure;
pub mod net;
pub mod plot;
pub mod pods;
pub mod progress;
pub mod report;
pub mod results;
pub mod rpc;
pub mod soak;
pub mod startup;
pub mod vmm;
pub mod vsock;

use std::path::PathBuf;

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or socket operation failed.
    #[error("{what}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A results file could not be written or read.
    #[error("results file {}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A program the benchmark runs is missing.
    #[error("program {name} not found: {fix}")]
    MissingProgram {
        /// The program.
        name: String,
        /// How to get it.
        fix: String,
    },
    /// A server the benchmark started exited or never listened.
    #[error("{name} did not serve ({status}); its log:\n{log}")]
    ServerExited {
        /// The server.
        name: String,
        /// Its exit status, or what it failed to do.
        status: String,
        /// What it logged.
        log: String,
    },
    /// A ttrpc call or connection failed.
    #[error("ttrpc: {what}")]
    Ttrpc {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: hull_agent_protocol::ttrpc::Error,
    },
    /// A protobuf message could not be encoded.
    #[error("protobuf: {what}")]
    Protobuf {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: hull_agent_protocol::protobuf::Error,
    },
    /// A vhost-user request to a backend failed.
    #[error("vhost-user: {what} ({backend})")]
    VhostUser {
        /// The backend.
        backend: String,
        /// The request.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: vhost::Error,
    },
    /// The backend broke the virtio contract (a used element that names no request in
    /// flight, a request failed), or stopped answering.
    #[error("{backend}: {what}")]
    Backend {
        /// The backend.
        backend: String,
        /// What it did.
        what: String,
    },
    /// fio failed or printed something that is not its JSON report.
    #[error("fio: {0}")]
    Fio(String),
    /// A plot could not be drawn.
    #[error("plot {}: {message}", path.display())]
    Plot {
        /// The SVG file.
        path: PathBuf,
        /// What plotters said.
        message: String,
    },
    /// Something the run needs is missing from this machine (a program, the guest image).
    #[error("{0}")]
    Missing(#[from] hull_tests::prereq::Missing),
    /// The private containerd failed, or a `ctr` command did.
    #[error("containerd: {what}")]
    Containerd {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: hull_tests::containerd::Error,
    },
    /// The busybox image could not be built.
    #[error("the busybox image")]
    Image(#[from] hull_tests::oci_image::Error),
    /// Something answered in a way the benchmark does not expect.
    #[error("{0}")]
    Unexpected(String),
    /// A subcommand of the design that is not built yet.
    #[error("not implemented yet: {0}")]
    NotImplemented(String),
}

/// A `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
