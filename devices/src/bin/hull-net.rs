//! `hull-net`: the vhost-user-net backend on a tap device.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use hull_devices::net::Mac;
use hull_devices::serve::{run_net, NetConfig, TapSource};

#[path = "cli/mod.rs"]
mod cli;

/// vhost-user-net backend: carries the frames of the vhost-user frontend (QEMU, hull-vmm) that
/// connects to --socket to and from a tap, given by name (--tap) or as inherited descriptors
/// (--tap-fd, one per queue pair).
#[derive(Parser, Debug)]
#[command(name = "hull-net", version)]
struct Args {
    /// vhost-user socket to listen on for the frontend.
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// The tap, in hull-net's network namespace (created, non-persistent, if missing). An
    /// existing tap needs vnet_hdr, and multi_queue when --queues is more than 1.
    #[arg(
        long,
        value_name = "NAME",
        required_unless_present = "tap_fd",
        conflicts_with = "tap_fd"
    )]
    tap: Option<String>,
    /// An open descriptor of the tap (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR) inherited from the
    /// caller; repeat once per queue pair.
    #[arg(long, value_name = "N")]
    tap_fd: Vec<RawFd>,
    /// Number of queue pairs, each served by its own worker thread and tap queue (default: 1,
    /// or the number of --tap-fd).
    #[arg(long, value_name = "N")]
    queues: Option<u16>,
    /// The guest's MAC address, aa:bb:cc:dd:ee:ff, in the device's config space (default: a
    /// random locally administered one).
    #[arg(long, value_name = "MAC")]
    mac: Option<Mac>,
    /// The link's MTU the guest is told (default: the tap's, asked in the tap's namespace;
    /// give it for a macvtap, whose namespace its descriptors do not tell).
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u16).range(68..))]
    mtu: Option<u16>,
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
    let socket = args.socket.clone();
    let what = match &args.tap {
        Some(name) => format!("tap {name}"),
        None => format!("tap descriptors {:?}", args.tap_fd),
    };
    let tap = match args.tap {
        Some(name) => TapSource::Name(name),
        None => {
            let mut fds = Vec::new();
            for (i, &fd) in args.tap_fd.iter().enumerate() {
                if fd < 3 || args.tap_fd[..i].contains(&fd) || !is_open(fd) {
                    eprintln!("hull-net: error: --tap-fd {fd} is not an open descriptor of its own (3 or more, each once)");
                    return ExitCode::FAILURE;
                }
                // SAFETY: the caller passed this open descriptor (checked above) to this
                // process for hull-net to own, which is what --tap-fd means; each is taken
                // over once, and one that is not a tap is refused by the first ioctl on it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            TapSource::Fds(fds)
        }
    };
    let fds = u16::try_from(args.tap_fd.len()).unwrap_or(u16::MAX);
    let config = NetConfig {
        socket: args.socket,
        tap,
        queues: args.queues.unwrap_or(fds.max(1)),
        mac: args.mac,
        mtu: args.mtu,
        keep_listening: args.keep_listening,
        metrics_socket: args.metrics_socket,
    };
    cli::run("hull-net", &socket.clone(), |signals| {
        run_net(config, signals)
            .with_context(|| format!("serving {what} as vhost-user-net on {}", socket.display()))
    })
}

/// Whether `fd` is an open descriptor of this process.
fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags; on a descriptor that is not open it
    // fails with EBADF.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}
