//! The agent's event loop: one tokio runtime on the current thread, serving the protocol with
//! ttrpc and, as PID 1, reaping on SIGCHLD. No thread per connection or per process.

use std::sync::Arc;

use anyhow::Context;
use hull_agent_protocol::create_agent_service;
use hull_agent_protocol::ttrpc::r#async::Server;
use tokio::signal::unix::{signal, SignalKind};

use crate::listen::ListenAddr;
use crate::service::Agent;
use crate::{reaper, Mode};

/// Serves the protocol on `addr` until the agent is told to stop: on a host by SIGTERM or
/// SIGINT, after which the socket is removed; in the guest never (the VM ends with it).
pub fn serve(agent: Agent, addr: &ListenAddr) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // File work (CopyFile) runs off the event loop, on at most this many threads.
        .max_blocking_threads(2)
        .build()
        .context("building the agent's event loop")?;
    runtime.block_on(serve_on_runtime(agent, addr))
}

async fn serve_on_runtime(agent: Agent, addr: &ListenAddr) -> anyhow::Result<()> {
    let mode = agent.mode();
    if mode == Mode::Guest {
        let mut reaping = tokio::spawn(reaper::reap_on_sigchld());
        // Fail now, not later, if SIGCHLD cannot be handled: zombies would pile up.
        tokio::task::yield_now().await;
        if reaping.is_finished() {
            (&mut reaping)
                .await
                .context("the reaper task")?
                .context("handling SIGCHLD")?;
        }
    }
    // Handle SIGTERM and SIGINT before listening: a client that connects and at once asks the
    // agent to stop must find the handler there, not the default action.
    let mut stop_signals = match mode {
        Mode::Host => Some((
            signal(SignalKind::terminate()).context("handling SIGTERM")?,
            signal(SignalKind::interrupt()).context("handling SIGINT")?,
        )),
        Mode::Guest => None,
    };
    let listener = addr
        .bind()
        .with_context(|| format!("listening on {addr}"))?;
    let service = create_agent_service(Arc::new(agent));
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(service);
    server
        .start()
        .await
        .with_context(|| format!("serving on {addr}"))?;
    tracing::info!(%addr, "serving hull.agent.v1");

    match stop_signals.as_mut() {
        None => std::future::pending::<anyhow::Result<()>>().await,
        Some((term, int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("stopping");
            server
                .shutdown()
                .await
                .context("stopping the ttrpc server")?;
            if let ListenAddr::Unix(path) = addr {
                std::fs::remove_file(path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
            Ok(())
        }
    }
}
