//! `hull-blk`: the vhost-user-blk backend over a file or block device.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use hull_devices::blk::{DiskId, DEFAULT_SUBMIT_BATCH, RING_DEPTH};
use hull_devices::serve::{run_blk, BlkConfig};

#[path = "cli/mod.rs"]
mod cli;

/// vhost-user-blk backend: serves the file or block device at --path as a virtio-blk disk to
/// the vhost-user frontend (QEMU, hull-vmm) that connects to --socket.
#[derive(Parser, Debug)]
#[command(name = "hull-blk", version)]
struct Args {
    /// vhost-user socket to listen on for the frontend.
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// The disk: a regular file (its size is the disk's) or a block device.
    #[arg(long, value_name = "FILE")]
    path: PathBuf,
    /// Refuse writes (VIRTIO_BLK_S_IOERR) and advertise a read-only disk.
    #[arg(long)]
    readonly: bool,
    /// Open the disk with O_DIRECT, bypassing the host page cache.
    #[arg(long)]
    direct: bool,
    /// Number of request queues, each served by its own worker thread.
    #[arg(long, value_name = "N", default_value_t = 1)]
    queues: u16,
    /// After a frontend disconnects, wait for the next one instead of exiting.
    #[arg(long)]
    keep_listening: bool,
    /// Serve the device's counters (Prometheus text, once per connection) on this unix
    /// socket.
    #[arg(long, value_name = "PATH")]
    metrics_socket: Option<PathBuf>,
    /// Serve every request with blocking calls instead of io_uring (which is used when the
    /// kernel allows it).
    #[arg(long)]
    sync_io: bool,
    /// The disk's serial, answered to VIRTIO_BLK_T_GET_ID (a Linux guest shows it in
    /// /sys/block/vd*/serial): 1 to 20 bytes. The file name of --path (cut to 20 bytes) by
    /// default.
    #[arg(long, value_name = "ID")]
    serial: Option<DiskId>,
    /// Requests handed to the kernel per io_uring_enter while a pass over a queue parses the
    /// guest's requests (the rest at the end of the pass): small groups start the disk on the
    /// first requests while the others are parsed; the whole pass at once saves system calls
    /// but holds every request back until the last is ready.
    #[arg(
        long,
        value_name = "N",
        default_value_t = DEFAULT_SUBMIT_BATCH as u64,
        value_parser = clap::value_parser!(u64).range(1..=u64::from(RING_DEPTH)),
    )]
    submit_batch: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = BlkConfig {
        socket: args.socket,
        path: args.path,
        readonly: args.readonly,
        direct: args.direct,
        queues: args.queues,
        keep_listening: args.keep_listening,
        metrics_socket: args.metrics_socket,
        sync_io: args.sync_io,
        serial: args.serial,
        submit_batch: usize::try_from(args.submit_batch)
            .ok()
            .and_then(NonZeroUsize::new),
    };
    cli::run("hull-blk", &config.socket.clone(), |signals| {
        run_blk(&config, signals).with_context(|| {
            format!(
                "serving {} as vhost-user-blk on {}",
                config.path.display(),
                config.socket.display()
            )
        })
    })
}
