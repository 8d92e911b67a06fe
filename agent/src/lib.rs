//! hull-agent: the process that runs as PID 1 inside every hull guest and serves the shim the
//! protocol of `hull-agent-protocol`.
//!
//! This crate owns the guest side of hull: setting up the guest as its init ([`pid1`]), the
//! options the host passes on the kernel command line ([`cmdline`]), the check of what the
//! guest kernel offers containers ([`guest_check`]), and serving the protocol ([`server`],
//! [`service`]) on vsock in the guest or on a unix socket on a host ([`listen`]).

#![warn(clippy::cast_possible_truncation)]

pub mod cmdline;
pub mod container_request;
pub mod guest_check;
pub mod guest_details;
pub mod listen;
pub mod metrics;
pub mod pid1;
pub mod reaper;
pub mod rpc_error;
pub mod server;
pub mod service;

use anyhow::{bail, Context};
use hull_agent_protocol::AGENT_VSOCK_PORT;

use crate::listen::ListenAddr;

/// The agent's version, printed in its start-up line so the host can tell which agent booted.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where the agent runs, which decides what it may do to the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 of a hull guest: the machine is the agent's to manage.
    Guest,
    /// A process on a host, for tests and benchmarks: it never changes the host itself (its
    /// clock, its network, its power).
    Host,
}

/// Runs the agent: as PID 1 of a guest when `listen` is `None`, else serving on `listen`.
pub fn run(listen: Option<ListenAddr>) -> anyhow::Result<()> {
    match listen {
        Some(addr) => server::serve(Mode::Host, &addr),
        None => {
            if std::process::id() != 1 {
                bail!(
                    "hull-agent runs as PID 1 of a hull guest (it is the guest image's /init); \
                     on a host, give it a socket to serve on: --listen unix:PATH"
                );
            }
            let cmdline = std::fs::read_to_string("/proc/cmdline");
            match pid1::set_up(cmdline).context("setting the guest up as PID 1")? {
                pid1::Next::Stopped => Ok(()),
                pid1::Next::Serve => {
                    let addr = ListenAddr::Vsock(AGENT_VSOCK_PORT);
                    server::serve(Mode::Guest, &addr).context("serving as PID 1")
                }
            }
        }
    }
}
