//! What every backend binary does around its device: umask 077, logging to stderr
//! (`HULL_LOG` filter, `info` by default), termination signals read from a signalfd, the seccomp filter
//! ([`hull_devices::seccomp`]), and one line on exit saying why, with the exit status (0 for a frontend leaving or a signal, 1 for an error).

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use hull_devices::serve::{ExitReason, TermSignals};

/// Sets up logging, blocks termination signals, runs `serve` and reports how it ended.
pub fn run(
    name: &str,
    socket: &Path,
    serve: impl FnOnce(&TermSignals) -> anyhow::Result<ExitReason>,
) -> ExitCode {
    // Every socket and file the backend makes (vhost-user, metrics, hybrid vsock) is its
    // owner's alone: 0600.
    // SAFETY: umask(2) only sets the process's file mode creation mask.
    unsafe { libc::umask(0o077) };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HULL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = TermSignals::block()
        .context("setting up signal handling")
        .and_then(|signals| {
            hull_devices::seccomp::install(name).context("confining the backend")?;
            serve(&signals)
        });
    match result {
        Ok(ExitReason::FrontendDisconnected) => {
            eprintln!(
                "{name}: frontend disconnected from {}; exiting",
                socket.display()
            );
            ExitCode::SUCCESS
        }
        Ok(ExitReason::Signal(signal)) => {
            eprintln!("{name}: received {signal}; exiting");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{name}: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
