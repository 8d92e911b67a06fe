//! `hull-agent`: PID 1 of a hull guest, or with `--listen` a server on a host. Parses the
//! command line and sets up logging; see the `hull_agent` library for everything else.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hull_agent::container::helper::HELPER_ARG;
use hull_agent::listen::ListenAddr;
use hull_agent::log_forward::LogBuffer;
use hull_agent::Options;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// hull's guest agent. Without options it is the /init of a hull guest and serves on vsock
/// port 1024; with --listen it serves on a host, for tests and benchmarks.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Serve on this address instead of running as PID 1: unix:PATH (or vsock:PORT).
    #[arg(long, value_name = "ADDR")]
    listen: Option<ListenAddr>,
    /// With --listen: the directory CopyFile writes under (the guest's is /run/hull/shared).
    #[arg(long, value_name = "DIR", requires = "listen")]
    shared_dir: Option<PathBuf>,
    /// With --listen: enter containers' rootfs by MS_MOVE and chroot, not pivot_root (what
    /// the agent does by itself when its root is an initramfs, as in a guest).
    #[arg(long, requires = "listen")]
    no_pivot: bool,
    /// Least severe log level written to stderr: error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log_level: LevelFilter,
    /// Also serve the log, a line per event, to a reader on this address: unix:PATH or
    /// vsock:PORT (in a guest the default is vsock port 1025, where the shim reads it).
    #[arg(long, value_name = "ADDR")]
    log_listen: Option<ListenAddr>,
}

fn main() -> ExitCode {
    // The agent runs youki's libcontainer in a child process of its own binary.
    let args: Vec<_> = std::env::args_os().collect();
    if args.get(1).is_some_and(|arg| arg == HELPER_ARG) {
        return hull_agent::container::helper::main(args.get(2..).unwrap_or_default());
    }
    let cli = Cli::parse();
    // Forwarded in a guest always, on a host where asked.
    let forward = (cli.listen.is_none() || cli.log_listen.is_some()).then(LogBuffer::default);
    // Colours only on a terminal: on a host the shim keeps stderr in a file and quotes it in
    // its errors, where escape codes are noise.
    let console = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let forwarded = forward.clone().map(|buffer| {
        // The shim stamps the time and reads the level first.
        tracing_subscriber::fmt::layer()
            .with_writer(buffer)
            .with_target(false)
            .with_ansi(false)
            .without_time()
    });
    tracing_subscriber::registry()
        .with(console.with_filter(cli.log_level))
        .with(forwarded.with_filter(cli.log_level))
        .init();
    let options = Options {
        listen: cli.listen,
        shared_dir: cli.shared_dir,
        no_pivot: cli.no_pivot,
        log: forward.map(|buffer| (buffer, cli.log_listen)),
    };
    match hull_agent::run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hull-agent: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
