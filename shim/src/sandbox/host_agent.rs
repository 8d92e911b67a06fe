//! The `none` hypervisor: no VM at all. The shim starts `hull-agent --listen unix:PATH` on the
//! host and talks to it over that socket, so the shim's whole path (containerd, task service,
//! stdio, events, cleanup) runs in seconds and the runtime's own overhead can be measured
//! without a guest in the way, as Kata's mock hypervisor does for its tests.
//!
//! It provides NO isolation: the containers run on the host kernel beside everything else.
//! The configuration refuses it unless `runtime.enable_none_hypervisor` is set, and starting
//! it logs a warning saying so.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::agent_link::{self, AgentLink};
use crate::backend::{self, BackendProcess};

/// How long the agent may take to create its socket and answer Check.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// How long an agent that destroyed its sandbox has to exit before it is killed.
const DESTROYED_GRACE: Duration = Duration::from_millis(50);

/// Errors of starting the host agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// hull-agent was not found.
    #[error("hull-agent not found next to this binary or on PATH: run 'make build' and put target/release on PATH")]
    NotFound,
    /// The agent process failed to start.
    #[error("starting hull-agent on the host")]
    Start(#[from] backend::Error),
    /// The agent died before it answered (killed, or crashed).
    #[error("hull-agent on the host (pid {pid}) {ending} before it answered on {socket}; its log: {log}")]
    Died {
        /// Its pid.
        pid: u32,
        /// How it ended.
        ending: crate::sandbox::watch::Ending,
        /// Its socket.
        socket: PathBuf,
        /// What it wrote to stderr.
        log: String,
    },
    /// The agent did not answer on its socket.
    #[error("hull-agent on the host did not answer on {socket}; its log: {log}")]
    Link {
        /// Its socket.
        socket: PathBuf,
        /// What it wrote to stderr.
        log: String,
        /// Why.
        #[source]
        source: agent_link::Error,
    },
}

/// The directory hull-agent on a host keeps its containers' files in
/// (`/run/hull-agent-<its pid>`, hull-agent's `HOST_STATE_PREFIX`): it removes it when it
/// exits, and the next agent removes those of dead agents, but a killed agent leaves it until
/// then, so the sandbox's record lists it.
pub fn state_dir(pid: u32) -> PathBuf {
    PathBuf::from(format!("/run/hull-agent-{pid}"))
}

/// An agent running on the host. Dropping it kills the agent.
#[derive(Debug)]
pub struct HostAgent {
    process: BackendProcess,
    /// Its log, forwarded into the shim's (the file in the run directory keeps it too).
    _log: Option<crate::agent_log::Forwarding>,
}

impl HostAgent {
    /// Starts the agent with its socket and log in `run_dir`, finding `hull-agent` next to
    /// `beside` (the shim binary) or on PATH, and returns it with a link to it once it serves.
    pub async fn start(
        run_dir: &Path,
        beside: Option<&Path>,
        log_level: &str,
        call_timeout: Duration,
    ) -> Result<(Self, AgentLink), Error> {
        let path_env = std::env::var_os("PATH");
        let program = crate::paths::find_helper("hull-agent", beside, path_env.as_deref())
            .ok_or(Error::NotFound)?;
        tracing::warn!(
            agent = %program.display(),
            "hypervisor \"none\": containers run on the host with NO VM ISOLATION (development only)"
        );
        let socket = run_dir.join("agent.sock");
        let listen = format!("unix:{}", socket.display());
        let log_socket = run_dir.join("agent-log.sock");
        let log_listen = format!("unix:{}", log_socket.display());
        let args: [&OsStr; 6] = [
            "--listen".as_ref(),
            listen.as_ref(),
            "--log-level".as_ref(),
            log_level.as_ref(),
            "--log-listen".as_ref(),
            log_listen.as_ref(),
        ];
        // SIGTERM if the shim dies: the agent then removes its containers, which would
        // otherwise run on the host with nothing to end them.
        let process = BackendProcess::start_ending_with(
            &program,
            &args,
            &socket,
            &run_dir.join("hull-agent.log"),
            START_DEADLINE,
            libc::SIGTERM,
        )
        .await?;
        let mut agent = Self {
            process,
            _log: None,
        };
        let pid = agent.process.pid().unwrap_or_default();
        // An agent that dies while the shim waits for it ends the wait at once, named (the
        // fault matrix's "agent killed while creating": a dead agent's socket refuses
        // connections until the deadline, and the error would blame the socket).
        let connected = tokio::select! {
            link = AgentLink::connect_unix(&socket, START_DEADLINE, call_timeout) => link,
            status = agent.process.exited() => {
                let ending = status.map_or(crate::sandbox::watch::Ending::Unknown, Into::into);
                return Err(Error::Died {
                    pid,
                    ending,
                    socket,
                    log: agent.process.log_text(),
                });
            }
        };
        match connected {
            Ok(link) => {
                // The log socket is bound before the protocol's, so it is there by now.
                let sandbox = run_dir
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or_default();
                agent._log = Some(crate::agent_log::Forwarding::start(
                    crate::agent_log::LogSource::Unix(log_socket),
                    sandbox,
                ));
                Ok((agent, link))
            }
            Err(source) => Err(Error::Link {
                socket,
                log: agent.process.log_text(),
                source,
            }),
        }
    }

    /// The agent's process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Stops the agent. After a DestroySandbox it answered (`destroyed`), its containers are
    /// gone and it exits by itself; it is killed if it has not within `grace` — the agent
    /// waits for calls still in flight (a pending GetOOMEvent) before it exits, which
    /// nothing would end. Otherwise SIGTERM first, on which the agent removes its
    /// containers, then SIGKILL.
    pub async fn stop(self, destroyed: bool, grace: Duration) -> Result<(), Error> {
        if destroyed {
            self.process.kill_after(DESTROYED_GRACE.min(grace)).await?;
        } else {
            self.process.stop(grace).await?;
        }
        Ok(())
    }
}
