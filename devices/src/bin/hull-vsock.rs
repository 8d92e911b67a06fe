//! `hull-vsock`: the vhost-user-vsock backend with a hybrid-vsock unix socket on the host side.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use hull_devices::serve::{run_vsock, VsockConfig};

#[path = "cli/mod.rs"]
mod cli;

/// vhost-user-vsock backend. Host processes reach the guest by connecting to the unix socket
/// at --uds and writing `CONNECT <port>\n` (answered `OK <hostport>\n`); guest connections to
/// host port P go to the unix socket `<uds>_P`.
#[derive(Parser, Debug)]
#[command(name = "hull-vsock", version)]
struct Args {
    /// vhost-user socket to listen on for the frontend (QEMU, hull-vmm).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// Hybrid-vsock unix socket for host-side connections.
    #[arg(long, value_name = "PATH")]
    uds: PathBuf,
    /// The guest's context id (3 to 4294967294).
    #[arg(long, value_name = "N")]
    guest_cid: u64,
    /// After a frontend disconnects, wait for the next one instead of exiting.
    #[arg(long)]
    keep_listening: bool,
    /// Serve the device's counters (Prometheus text, once per connection) on this unix
    /// socket.
    #[arg(long, value_name = "PATH")]
    metrics_socket: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = VsockConfig {
        socket: args.socket,
        uds: args.uds,
        guest_cid: args.guest_cid,
        keep_listening: args.keep_listening,
        metrics_socket: args.metrics_socket,
    };
    cli::run("hull-vsock", &config.socket.clone(), |signals| {
        run_vsock(&config, signals)
            .with_context(|| format!("serving vhost-user-vsock on {}", config.socket.display()))
    })
}
