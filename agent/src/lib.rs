//! hull-agent: the process that runs as PID 1 inside every hull guest and serves the shim the
//! protocol of `hull-agent-protocol`.
//!
//! This crate owns the guest side of hull: setting up the guest as its init ([`pid1`]), the
//! options the host passes on the kernel command line ([`cmdline`]), the check of what the
//! guest kernel offers containers ([`guest_check`]), serving the protocol ([`server`],
//! [`service`]) on vsock in the guest or on a unix socket on a host ([`listen`]), running
//! containers through youki's libcontainer ([`container`]), and collecting every child's exit
//! status ([`reaper`]).

#![warn(clippy::cast_possible_truncation)]

pub mod cmdline;
pub mod container;
pub mod container_request;
pub mod copy_file;
pub mod guest_check;
pub mod guest_details;
pub mod listen;
pub mod metrics;
pub mod pid1;
pub mod reaper;
pub mod rpc_error;
pub mod server;
pub mod service;

use std::path::PathBuf;

use anyhow::{bail, Context};
use hull_agent_protocol::{AGENT_VSOCK_PORT, GUEST_SHARED_DIR};

use crate::listen::ListenAddr;
use crate::service::Agent;

/// Where the agent keeps its container files in the guest (bundles, libcontainer's state).
pub const GUEST_STATE_DIR: &str = "/run/hull/agent";

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

/// How the agent was started.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Serve on this address on a host; `None` to run as PID 1 of a guest.
    pub listen: Option<ListenAddr>,
    /// On a host, the directory CopyFile writes under (in the guest it is
    /// [`hull_agent_protocol::GUEST_SHARED_DIR`]); without it CopyFile is refused.
    pub shared_dir: Option<PathBuf>,
}

/// Runs the agent: as PID 1 of a guest, or on a host serving on `options.listen`.
pub fn run(options: Options) -> anyhow::Result<()> {
    match options.listen {
        Some(addr) => {
            // Per agent, so agents serving side by side (tests) keep apart; removed on exit.
            let state_dir = PathBuf::from(format!("/run/hull-agent-{}", std::process::id()));
            let agent = Agent::new(Mode::Host, options.shared_dir, state_dir.clone());
            let served = server::serve(agent, &addr);
            if let Err(err) = std::fs::remove_dir_all(&state_dir) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("removing {}: {err}", state_dir.display());
                }
            }
            served
        }
        None => {
            if options.shared_dir.is_some() {
                bail!("--shared-dir is for an agent serving on a host, with --listen");
            }
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
                    let agent = Agent::new(
                        Mode::Guest,
                        Some(PathBuf::from(GUEST_SHARED_DIR)),
                        PathBuf::from(GUEST_STATE_DIR),
                    );
                    server::serve(agent, &addr).context("serving as PID 1")
                }
            }
        }
    }
}
