//! hull-agent: the process that runs as PID 1 inside every hull guest.
//!
//! This crate owns the guest side of hull: setting up the guest as its init ([`pid1`]), the
//! options the host passes on the kernel command line ([`cmdline`]), and the check of what the
//! guest kernel offers containers ([`guest_check`]). The ttrpc service the shim talks to comes
//! with the agent protocol (`hull-agent-protocol`); until then the agent boots, reports, and
//! reaps.

pub mod cmdline;
pub mod guest_check;
pub mod pid1;

use anyhow::{bail, Context};

/// The agent's version, printed in its start-up line so the host can tell which agent booted.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Entry point of the `hull-agent` binary.
pub fn run() -> anyhow::Result<()> {
    if std::process::id() != 1 {
        bail!(
            "hull-agent runs as PID 1 of a hull guest (it is the guest image's /init); \
             serving the protocol on a host socket arrives with the agent protocol"
        );
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline");
    pid1::run(cmdline).context("running as PID 1")
}
