//! `hull-bench blk`: IOPS, MB/s and p50/p99 latency of hull-blk against
//! qemu-storage-daemon's vhost-user-blk export on the same file in the same run, both driven
//! by the same fake guest ([`guest`]), with host fio on io_uring ([`fio`]) as the limit.
//!
//! Workloads: 4k random reads and writes at queue depth 1 and 32, 128k sequential reads at
//! queue depth 8. One request queue; the page cache is bypassed everywhere (`--cache direct`,
//! the default) or used everywhere (`--cache buffered`).

pub mod fio;
pub mod guest;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::child::{find_program, RunDir, Server};
use crate::measure::{self, Contestant, Plan, Role, Trial};
use crate::progress::Progress;
use crate::results::{Machine, Run};
use crate::{Error, Result};

/// How the backends and fio use the host page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Cache {
    /// O_DIRECT everywhere: hull-blk `--direct`, qemu-storage-daemon `cache.direct=on`,
    /// fio `--direct=1`.
    Direct,
    /// Through the host page cache everywhere.
    Buffered,
}

/// Options of `hull-bench blk`.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long and how often.
    pub plan: Plan,
    /// A smoke run.
    pub quick: bool,
    /// The hull-blk binary; beside hull-bench or on PATH when `None`.
    pub hull_blk: Option<PathBuf>,
    /// The file to use (its contents are overwritten by the write workloads); a new one in a
    /// temporary directory when `None`.
    pub file: Option<PathBuf>,
    /// Size of a new file, in MiB.
    pub size_mib: u64,
    /// Page cache use.
    pub cache: Cache,
    /// One qemu-storage-daemon peer per I/O engine listed (at least one).
    pub qsd_aio: Vec<QsdAio>,
    /// The names of the workloads to run ([`select_workloads`]); every one when empty.
    pub workloads: Vec<String>,
}

/// qemu-storage-daemon's I/O engine (`aio=` of its file driver).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QsdAio {
    /// Its default: a thread pool doing blocking preadv/pwritev (no `aio=` option given).
    Threads,
    /// Linux AIO (needs cache.direct=on).
    Native,
    /// io_uring, as hull-blk.
    #[value(name = "io_uring")]
    IoUring,
}

impl QsdAio {
    /// The value of `aio=`.
    pub fn as_str(self) -> &'static str {
        match self {
            QsdAio::Threads => "threads",
            QsdAio::Native => "native",
            QsdAio::IoUring => "io_uring",
        }
    }
}

/// A request's direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// VIRTIO_BLK_T_IN.
    Read,
    /// VIRTIO_BLK_T_OUT.
    Write,
}

/// Where successive requests go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Uniformly random block-aligned offsets over the whole disk.
    Random,
    /// One block after the other, wrapping at the end.
    Sequential,
}

/// One I/O workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// Direction.
    pub op: Op,
    /// Offsets.
    pub pattern: Pattern,
    /// Bytes per request, a multiple of 512 up to [`guest::MAX_BLOCK`].
    pub block: u32,
    /// Requests kept in flight.
    pub depth: u16,
}

impl measure::Workload for Workload {
    fn name(&self) -> String {
        let kind = match (self.pattern, self.op) {
            (Pattern::Random, Op::Read) => "randread",
            (Pattern::Random, Op::Write) => "randwrite",
            (Pattern::Sequential, Op::Read) => "seqread",
            (Pattern::Sequential, Op::Write) => "seqwrite",
        };
        format!("{}k {kind} qd{}", self.block / 1024, self.depth)
    }
}

/// The workloads of the benchmark, in run order.
pub const WORKLOADS: [Workload; 5] = [
    Workload {
        op: Op::Read,
        pattern: Pattern::Random,
        block: 4096,
        depth: 1,
    },
    Workload {
        op: Op::Read,
        pattern: Pattern::Random,
        block: 4096,
        depth: 32,
    },
    Workload {
        op: Op::Write,
        pattern: Pattern::Random,
        block: 4096,
        depth: 1,
    },
    Workload {
        op: Op::Write,
        pattern: Pattern::Random,
        block: 4096,
        depth: 32,
    },
    Workload {
        op: Op::Read,
        pattern: Pattern::Sequential,
        block: 128 << 10,
        depth: 8,
    },
];

/// The workloads `names` picks out of [`WORKLOADS`], in run order: each name as the report
/// prints it, with dashes or spaces between its words ("4k-randread-qd32"), in any case. Every
/// workload when `names` is empty; an error naming the first name that matches none.
pub fn select_workloads(names: &[String]) -> Result<Vec<Workload>> {
    use measure::Workload as _;
    let normal = |name: &str| name.trim().to_lowercase().replace(['-', '_'], " ");
    if let Some(unknown) = names
        .iter()
        .find(|name| !WORKLOADS.iter().any(|w| w.name() == normal(name)))
    {
        let known: Vec<String> = WORKLOADS
            .iter()
            .map(|w| w.name().replace(' ', "-"))
            .collect();
        return Err(Error::Unexpected(format!(
            "no blk workload is called {unknown:?}; the workloads are {}",
            known.join(", ")
        )));
    }
    Ok(WORKLOADS
        .iter()
        .filter(|w| names.is_empty() || names.iter().any(|name| w.name() == normal(name)))
        .copied()
        .collect())
}

/// A vhost-user-blk backend process driven by the fake guest.
struct Backend {
    name: String,
    role: Role,
    // The guest disconnects before the server is stopped.
    guest: guest::FakeGuest,
    server: Server,
}

impl Contestant<Workload> for Backend {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn role(&self) -> Role {
        self.role
    }

    fn trial(&mut self, workload: &Workload, budget: Duration) -> Result<Trial> {
        let before = self.server.cpu_time();
        let trial = self.guest.trial(workload, budget)?;
        Ok(match (before, self.server.cpu_time()) {
            (Some(before), Some(after)) => trial.with_cpu(after.saturating_sub(before)),
            _ => trial,
        })
    }
}

/// The first line `program --version` prints, for the record.
fn version(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Writes `size` bytes of non-repeating data to a new file at `path`: reads of a sparse or
/// zeroed file would not reach the disk.
pub(crate) fn create_file(path: &Path, size: u64) -> Result<()> {
    let io_error = |source| Error::Io {
        what: format!("creating the test file {}", path.display()),
        source,
    };
    let mut file = std::fs::File::create(path).map_err(io_error)?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut written = 0;
    while written < size {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let len = usize::try_from((size - written).min(chunk.len() as u64)).unwrap_or(0);
        file.write_all(&chunk[..len]).map_err(io_error)?;
        written += len as u64;
    }
    file.sync_all().map_err(io_error)
}

/// Runs the benchmark and returns its results.
pub fn run(options: &Options) -> Result<Run> {
    // Started now: the record says when the measurement began.
    let workloads = select_workloads(&options.workloads)?;
    let mut run = Run::new("blk", options.quick, options.plan, Machine::probe());
    let hull_blk = find_program(
        "hull-blk",
        options.hull_blk.as_deref(),
        "build it with 'cargo build --release -p hull-devices' or pass --hull-blk PATH",
    )?;
    let qsd = find_program(
        "qemu-storage-daemon",
        None,
        "apt-get install qemu-system-common",
    )?;
    let fio_program = find_program("fio", None, "apt-get install fio")?;
    let dir = RunDir::new(&std::env::temp_dir(), "blk")?;
    let file = match &options.file {
        Some(file) => file.clone(),
        None => {
            let file = dir.path().join("disk.img");
            create_file(&file, options.size_mib.max(1) << 20)?;
            file
        }
    };
    let size = std::fs::metadata(&file)
        .map_err(|source| Error::Io {
            what: format!("reading the size of {}", file.display()),
            source,
        })?
        .len();
    if size < guest::MAX_BLOCK {
        return Err(Error::Unexpected(format!(
            "{} holds {size} bytes: too small for 128k requests",
            file.display()
        )));
    }
    let file_arg = file.to_string_lossy().into_owned();
    if file_arg.contains(',') {
        return Err(Error::Unexpected(format!(
            "{file_arg}: qemu-storage-daemon options cannot name a path with a comma"
        )));
    }

    let hull_socket = dir.path().join("hull-blk.sock");
    let mut hull_args = vec![
        "--socket".to_owned(),
        hull_socket.to_string_lossy().into_owned(),
        "--path".to_owned(),
        file_arg.clone(),
    ];
    if options.cache == Cache::Direct {
        hull_args.push("--direct".into());
    }
    let hull_server = Server::start(
        "hull-blk",
        &hull_blk,
        &hull_args,
        &hull_socket,
        &dir.path().join("hull-blk.log"),
    )?;
    let hull = Backend {
        name: "hull-blk".into(),
        role: Role::Subject,
        guest: guest::FakeGuest::connect("hull-blk", &hull_socket, size)?,
        server: hull_server,
    };

    let direct = match options.cache {
        Cache::Direct => "on",
        Cache::Buffered => "off",
    };
    let mut peers = Vec::new();
    let mut qsd_command_lines = Vec::new();
    for aio in &options.qsd_aio {
        let (name, aio_option) = match aio {
            QsdAio::Threads => ("qemu-storage-daemon".to_owned(), String::new()),
            other => (
                format!("qemu-storage-daemon (aio={})", other.as_str()),
                format!(",aio={}", other.as_str()),
            ),
        };
        let socket = dir.path().join(format!("qsd-{}.sock", aio.as_str()));
        let args = vec![
            "--blockdev".to_owned(),
            format!(
                "driver=file,node-name=f,filename={file_arg},cache.direct={direct}{aio_option}"
            ),
            "--export".to_owned(),
            format!(
                "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={},writable=on",
                socket.display()
            ),
        ];
        let server = Server::start(
            &name,
            &qsd,
            &args,
            &socket,
            &dir.path().join(format!("qsd-{}.log", aio.as_str())),
        )?;
        peers.push(Backend {
            guest: guest::FakeGuest::connect(&name, &socket, size)?,
            name,
            role: Role::Peer,
            server,
        });
        qsd_command_lines.push(args);
    }
    let fio = fio::Fio::new(&fio_program, &file, size, options.cache);

    let mut contestants: Vec<Box<dyn Contestant<Workload>>> = vec![Box::new(hull)];
    for peer in peers {
        contestants.push(Box::new(peer));
    }
    contestants.push(Box::new(fio));
    let trials = (options.plan.rounds * contestants.len() * workloads.len()) as u64;
    let progress = Progress::new("blk", trials);
    let outcome = measure::run(&options.plan, &workloads, &mut contestants, &progress)?;
    drop(progress);
    drop(contestants);

    run.machine.finish();
    run.variant = match options.cache {
        Cache::Direct => "cache=direct".into(),
        Cache::Buffered => "cache=buffered".into(),
    };
    run.params = json!({
        "file": file_arg,
        "file_bytes": size,
        "file_created": options.file.is_none(),
        "cache": format!("{:?}", options.cache).to_lowercase(),
        "queues": 1,
        "hull_blk": hull_blk.display().to_string(),
        "hull_blk_args": hull_args,
        "qemu_storage_daemon": version(&qsd),
        "qemu_storage_daemon_args": qsd_command_lines,
        "fio": version(&fio_program),
    });
    run.notes = vec![
        "hull-blk and qemu-storage-daemon are driven by the same fake guest (hull-bench as the \
         vhost-user frontend: memfd memory, one 256-entry split queue, no EVENT_IDX, no \
         indirect descriptors, no kick while the backend sets VRING_USED_F_NO_NOTIFY); \
         latency runs from publishing a request to seeing it used."
            .into(),
        "fio's latency is its total latency (lat: submission to completion) on the host, \
         with no vhost-user hop."
            .into(),
        "CPU µs/op: user + system time of the backend process (all its threads; for fio, its \
         own usr + sys) per request, in clock ticks of 10 ms: a count, less sensitive to the \
         machine's load than the timings."
            .into(),
        format!(
            "Same file for every contestant ({} MiB), page cache: {}.",
            size >> 20,
            match options.cache {
                Cache::Direct => "bypassed (O_DIRECT)",
                Cache::Buffered => "used",
            }
        ),
    ];
    run.record(outcome);
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;
    use measure::Workload as _;

    #[test]
    fn no_names_selects_every_workload_in_run_order() {
        assert_eq!(select_workloads(&[]).unwrap(), WORKLOADS.to_vec());
    }

    #[test]
    fn names_pick_their_workloads_in_run_order_whatever_their_spelling() {
        let names = ["128k-seqread-qd8".to_owned(), "4K randread QD32".to_owned()];
        let picked: Vec<String> = select_workloads(&names)
            .unwrap()
            .iter()
            .map(|w| w.name())
            .collect();
        assert_eq!(picked, ["4k randread qd32", "128k seqread qd8"]);
    }

    #[test]
    fn an_unknown_name_is_refused_with_the_names_there_are() {
        let err = select_workloads(&["4k-randread-qd64".to_owned()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"4k-randread-qd64\""), "{err}");
        assert!(err.contains("4k-randwrite-qd32"), "{err}");
    }
}
