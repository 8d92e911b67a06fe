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
pub mod log_forward;
pub mod metrics;
pub mod network;
pub mod pid1;
pub mod reaper;
pub mod rpc_error;
pub mod sandbox;
pub mod server;
pub mod service;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use hull_agent_protocol::{AGENT_LOG_VSOCK_PORT, AGENT_VSOCK_PORT, GUEST_SHARED_DIR};

use crate::listen::ListenAddr;
use crate::service::Agent;

/// Where the agent keeps its container files in the guest (bundles, libcontainer's state).
pub const GUEST_STATE_DIR: &str = "/run/hull/agent";

/// Where an agent on a host keeps its container files: `/run/hull-agent-<its PID>`.
const HOST_STATE_PARENT: &str = "/run";
const HOST_STATE_PREFIX: &str = "hull-agent-";

/// Removes the state directories of host agents that are no longer running (killed before
/// they could clean up). The containers such an agent left are not touched.
fn remove_stale_state_dirs(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(HOST_STATE_PREFIX))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    tracing::info!(dir = %entry.path().display(), "removed a dead agent's files")
                }
                Err(err) => {
                    tracing::warn!(dir = %entry.path().display(), "removing a dead agent's files: {err}")
                }
            }
        }
    }
}

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
    /// On a host, enter containers' rootfs by MS_MOVE and chroot instead of pivot_root, as
    /// the agent does by itself when its root is an initramfs (a guest's).
    pub no_pivot: bool,
    /// The agent's log lines, and where to serve them to the shim: in a guest
    /// [`hull_agent_protocol::AGENT_LOG_VSOCK_PORT`] when `None` is given here, on a host
    /// only where asked (`--log-listen`). Without a buffer the log is not forwarded.
    pub log: Option<(log_forward::LogBuffer, Option<ListenAddr>)>,
}

/// Runs the agent: as PID 1 of a guest, or on a host serving on `options.listen`.
pub fn run(options: Options) -> anyhow::Result<()> {
    match options.listen {
        Some(addr) => {
            // Per agent, so agents serving side by side (tests) keep apart; removed on exit,
            // and by the next agent if this one is killed.
            remove_stale_state_dirs(Path::new(HOST_STATE_PARENT));
            let state_dir = PathBuf::from(HOST_STATE_PARENT)
                .join(format!("{HOST_STATE_PREFIX}{}", std::process::id()));
            tracing::debug!(state_dir = %state_dir.display(), "container files");
            let agent = Agent::new(
                Mode::Host,
                options.shared_dir,
                state_dir.clone(),
                options.no_pivot,
            );
            let log = options.log.and_then(|(buffer, addr)| Some((buffer, addr?)));
            let served = server::serve(agent, &addr, log);
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
                        false,
                    );
                    let log = options.log.map(|(buffer, addr)| {
                        (
                            buffer,
                            addr.unwrap_or(ListenAddr::Vsock(AGENT_LOG_VSOCK_PORT)),
                        )
                    });
                    server::serve(agent, &addr, log).context("serving as PID 1")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dead_agents_state_dirs_are_removed() {
        let parent = std::env::temp_dir().join(format!("hull-agent-stale-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&parent);
        // Above the kernel's PID limit (4194304): never a running process.
        let dead = parent.join(format!("{HOST_STATE_PREFIX}4194305"));
        let alive = parent.join(format!("{HOST_STATE_PREFIX}{}", std::process::id()));
        let other = parent.join("hull-agent-notapid");
        for dir in [&dead, &alive, &other] {
            std::fs::create_dir_all(dir.join("lc")).expect("creating a state dir");
        }
        remove_stale_state_dirs(&parent);
        assert!(!dead.exists());
        assert!(alive.exists() && other.exists());
        std::fs::remove_dir_all(&parent).expect("cleaning up");
    }
}
