//! `hull-fs`: serves a directory to a VM over vhost-user-fs, confined to it. Accepts the
//! common command line of upstream virtiofsd so that QEMU, cloud-hypervisor and Kata users
//! can swap it in.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use hull_fs::{CachePolicy, Config, Outcome, SandboxMode};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

/// Serve a host directory to a virtual machine over vhost-user-fs (virtio-fs), confined to
/// that directory.
#[derive(Debug, Parser)]
#[command(name = "hull-fs", version)]
struct Args {
    /// Path of the vhost-user socket to create (the VMM connects to it)
    #[arg(long, value_name = "PATH")]
    socket_path: PathBuf,

    /// Directory to share with the guest
    #[arg(long, value_name = "DIR")]
    shared_dir: PathBuf,

    /// How long the guest may cache data, names and attributes
    #[arg(long, value_enum, default_value_t = Cache::Auto)]
    cache: Cache,

    /// Refuse every request that would modify the shared directory
    #[arg(long)]
    readonly: bool,

    /// Threads serving requests; 0 serves them on the queue thread
    #[arg(long, default_value_t = 0, value_name = "N")]
    thread_pool_size: usize,

    /// Serve extended attributes
    #[arg(long)]
    xattr: bool,

    /// Confinement of the serving process; `none` is for debugging only
    #[arg(long, value_enum, default_value_t = Sandbox::Namespace)]
    sandbox: Sandbox,

    /// What a syscall outside the seccomp filter does: `kill` the process, or `none` to run
    /// without the filter (debugging only)
    #[arg(long, value_enum, default_value_t = Seccomp::Kill)]
    seccomp: Seccomp,

    /// Serve the request counters (Prometheus text: requests by kind, errors, bytes read and
    /// written, refused names) on this unix socket, one text per connection
    #[arg(long, value_name = "PATH")]
    metrics_socket: Option<PathBuf>,

    /// Log filter (error, warn, info, debug, trace, or a tracing directive); RUST_LOG wins
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    log_level: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Cache {
    Auto,
    Always,
    Never,
    Metadata,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Sandbox {
    Namespace,
    Chroot,
    None,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Seccomp {
    Kill,
    None,
}

impl From<Args> for Config {
    fn from(args: Args) -> Self {
        let mut config = Config::new(args.socket_path, args.shared_dir);
        config.cache = match args.cache {
            Cache::Auto => CachePolicy::Auto,
            Cache::Always => CachePolicy::Always,
            Cache::Never => CachePolicy::Never,
            Cache::Metadata => CachePolicy::Metadata,
        };
        config.readonly = args.readonly;
        config.thread_pool_size = args.thread_pool_size;
        config.xattr = args.xattr;
        config.sandbox = match args.sandbox {
            Sandbox::Namespace => SandboxMode::Namespace,
            Sandbox::Chroot => SandboxMode::Chroot,
            Sandbox::None => SandboxMode::None,
        };
        config.seccomp = matches!(args.seccomp, Seccomp::Kill);
        config.metrics_socket = args.metrics_socket;
        config
    }
}

fn main() -> ExitCode {
    // The vhost-user and metrics sockets are the owner's alone (0600). What the guest
    // creates in the share gets the guest's own mode: virtiofsd's file system clears the
    // umask for itself before serving.
    // SAFETY: umask(2) only sets the process's file mode creation mask.
    unsafe { libc::umask(0o077) };
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&args.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    match run(args.into()) {
        Ok(outcome) => {
            let code = outcome.exit_code();
            match outcome {
                Outcome::FrontendDisconnected => info!("exiting: the frontend disconnected"),
                Outcome::Stopped { signal } => info!("exiting: stopped by {signal}"),
                Outcome::ServerFailed { status } => {
                    error!("exiting: the server failed with status {status} (see above)")
                }
                Outcome::ServerKilled { signal } => error!(
                    "exiting: the server was killed by {signal} \
                     (SIGSYS: a syscall outside the seccomp filter; SIGABRT: a panic, see above)"
                ),
            }
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Err(err) => {
            error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<Outcome> {
    let socket = config.socket_path.display().to_string();
    hull_fs::run(&config).with_context(|| format!("serving {socket}"))
}
