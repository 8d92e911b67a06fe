//! The agent's event loop: one tokio runtime on the current thread, serving the protocol with
//! ttrpc and reaping on SIGCHLD (see [`crate::reaper`]). No thread per connection or per process.

use std::sync::Arc;

use anyhow::Context;
use hull_agent_protocol::create_agent_service;
use hull_agent_protocol::ttrpc::r#async::Server;
use tokio::signal::unix::{signal, SignalKind};

use crate::listen::ListenAddr;
use crate::log_forward::LogBuffer;
use crate::service::Agent;
use crate::{pid1, Mode};

/// Serves the protocol on `addr` until the agent is told to stop: on a host by DestroySandbox,
/// or by SIGTERM or SIGINT (which remove its containers first), after which the socket is
/// removed; in the guest by DestroySandbox, after which the VM powers off.
pub fn serve(
    agent: Agent,
    addr: &ListenAddr,
    log: Option<(LogBuffer, ListenAddr)>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // File work (CopyFile) runs off the event loop, on at most this many threads.
        .max_blocking_threads(2)
        .build()
        .context("building the agent's event loop")?;
    runtime.block_on(serve_on_runtime(agent, addr, log))
}

async fn serve_on_runtime(
    agent: Agent,
    addr: &ListenAddr,
    log: Option<(LogBuffer, ListenAddr)>,
) -> anyhow::Result<()> {
    let mode = agent.mode();
    if mode == Mode::Host {
        // A container's processes are created by a helper child that exits at once (see
        // container::helper); as a subreaper the agent inherits them, as PID 1 does in a
        // guest, and its reaper can collect their exit statuses.
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error()).context("becoming a child subreaper");
        }
    }
    let mut reaping = tokio::spawn(agent.reaper().run());
    // Fail now, not later, if SIGCHLD cannot be handled: exit statuses would be lost.
    tokio::task::yield_now().await;
    if reaping.is_finished() {
        (&mut reaping)
            .await
            .context("the reaper task")?
            .context("handling SIGCHLD")?;
    }
    let shutdown = agent.shutdown_signal();
    // Handle SIGTERM and SIGINT before listening: a client that can connect can stop us.
    let stop_signals = match mode {
        Mode::Host => Some((
            signal(SignalKind::terminate()).context("handling SIGTERM")?,
            signal(SignalKind::interrupt()).context("handling SIGINT")?,
        )),
        Mode::Guest => None,
    };
    // The log is served before the protocol, so a shim that reaches the agent can also
    // reach its log. Losing it is no reason to stop serving: the console still has it.
    let mut log_socket = None;
    if let Some((buffer, log_addr)) = log {
        if let ListenAddr::Unix(path) = &log_addr {
            log_socket = Some(path.clone());
        }
        tokio::spawn(async move {
            let shown = log_addr.to_string();
            if let Err(err) = buffer.serve(log_addr).await {
                tracing::warn!(addr = %shown, %err, "the agent's log is not forwarded");
            }
        });
        tokio::task::yield_now().await;
    }
    let listener = addr
        .bind()
        .with_context(|| format!("listening on {addr}"))?;
    let agent = Arc::new(agent);
    let service = create_agent_service(agent.clone());
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(service);
    server
        .start()
        .await
        .with_context(|| format!("serving on {addr}"))?;
    tracing::info!(%addr, "serving hull.agent.v1");

    match stop_signals {
        None => {
            shutdown.notified().await;
            tracing::info!("sandbox destroyed: powering off");
            // Let the DestroySandbox answer go out before the VM ends.
            stop_server(&mut server).await?;
            pid1::stop_vm()
        }
        Some((mut term, mut int)) => {
            let signalled = tokio::select! {
                _ = term.recv() => true,
                _ = int.recv() => true,
                () = shutdown.notified() => false,
            };
            if signalled {
                // Stopped without DestroySandbox: its containers go with it, as they would
                // with the VM, rather than run on orphaned on the host.
                if let Err(err) = agent.remove_all_containers().await {
                    tracing::error!("removing the containers: {err}");
                }
            } else {
                tracing::info!("sandbox destroyed");
            }
            tracing::info!("stopping");
            stop_server(&mut server).await?;
            if let Some(path) = log_socket {
                let _ = std::fs::remove_file(path);
            }
            if let ListenAddr::Unix(path) = addr {
                std::fs::remove_file(path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
            Ok(())
        }
    }
}

/// How long stopping waits for calls still in flight.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Stops the ttrpc server, letting answers already made (DestroySandbox's) go out, but not
/// waiting beyond [`STOP_GRACE`] for calls that block by design: a shim's pending
/// GetOOMEvent would otherwise keep the agent (and the VM) alive forever.
async fn stop_server(server: &mut Server) -> anyhow::Result<()> {
    match tokio::time::timeout(STOP_GRACE, server.shutdown()).await {
        Ok(result) => result.context("stopping the ttrpc server"),
        Err(_) => {
            tracing::info!(grace = ?STOP_GRACE, "stopping with calls still in flight");
            Ok(())
        }
    }
}
