//! `hull-bench fs`: throughput and metadata operations per second of hull-fs against
//! upstream virtiofsd (the Rust one, `cargo install virtiofsd`) in the same run.
//!
//! Each backend serves its own copy of the same shared directory to its own QEMU TCG guest
//! (microvm, `vhost-user-fs-device`, like hull-fs's QEMU test); both guests stay up for the
//! whole run, and hull-bench asks them in turn, over their serial consoles ([`vm`]), to run
//! one trial of a workload, in the interleaved rounds of [`crate::measure`]. The guest
//! program (perf/guest/fs_bench.rs) times the operations itself, so the console is not in
//! the figures; the backend's CPU time (every process of its tree: supervisor, sandbox,
//! server) is read on the host.
//!
//! Both backends run with `--cache never`, so every read, write, lookup and listing of the
//! guest reaches the backend instead of the guest's page and dentry caches, and otherwise
//! with their defaults (namespace sandbox, seccomp, no thread pool). Under TCG the guest's
//! own CPU is most of each operation's time: ratios near 1 are expected where the backends
//! do the same work, and the CPU µs/op of each backend is the sharper comparison.

pub mod vm;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::child::{find_program, RunDir, Server};
use crate::measure::{self, Contestant, Plan, Role, Trial};
use crate::progress::Progress;
use crate::results::{Machine, Run};
use crate::{Error, Result};

/// The upstream virtiofsd release hull-bench compares with: the one hull-fs's library is.
pub const VIRTIOFSD_VERSION: &str = "1.14.0";

/// Guest RAM: the guest program, its buffers and the kernel, nothing cached.
const GUEST_MIB: u32 = 512;
/// A bound on a TCG boot on a loaded machine, not a timing expectation.
const BOOT_BOUND: Duration = Duration::from_secs(300);
/// Boots of a guest before giving up on getting one whose clock is the TSC.
const BOOT_ATTEMPTS: u32 = 5;
/// Time a trial may take beyond its budget (a fixed-count workload has none).
const TRIAL_SLACK: Duration = Duration::from_secs(600);

/// Options of `hull-bench fs`.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long and how often.
    pub plan: Plan,
    /// A smoke run.
    pub quick: bool,
    /// The hull-fs binary; beside hull-bench or on PATH when `None`.
    pub hull_fs: Option<PathBuf>,
    /// Upstream virtiofsd; [`virtiofsd_default`] when `None`.
    pub virtiofsd: Option<PathBuf>,
    /// Size of data.bin, which the read and write workloads go through, in MiB.
    pub data_mib: u64,
    /// Files created, stat'ed and unlinked per trial of the small-files workload.
    pub files: u64,
    /// Entries of the directory the listing workload lists.
    pub dir_entries: u64,
}

/// What a workload does; see perf/guest/fs_bench.rs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 1 MiB sequential reads.
    SeqRead,
    /// 1 MiB sequential writes.
    SeqWrite,
    /// 4 KiB random reads.
    RandRead,
    /// Create, stat and unlink of many small files.
    SmallFiles,
    /// Listing a large directory.
    ListDir,
}

/// One workload of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// What it does.
    pub kind: Kind,
    /// Files per trial (small files) or entries of the directory (listing).
    pub count: u64,
}

impl measure::Workload for Workload {
    fn name(&self) -> String {
        match self.kind {
            Kind::SeqRead => "1M seqread".into(),
            Kind::SeqWrite => "1M seqwrite".into(),
            Kind::RandRead => "4k randread".into(),
            Kind::SmallFiles => format!("create+stat+unlink {} files", self.count),
            Kind::ListDir => format!("list a {}-entry dir", self.count),
        }
    }
}

impl Workload {
    /// The guest program's name of the workload.
    fn command(&self) -> &'static str {
        match self.kind {
            Kind::SeqRead => "seqread",
            Kind::SeqWrite => "seqwrite",
            Kind::RandRead => "randread",
            Kind::SmallFiles => "smallfiles",
            Kind::ListDir => "listdir",
        }
    }
}

/// The workloads of a run, in run order.
pub fn workloads(options: &Options) -> Vec<Workload> {
    [
        (Kind::SeqRead, 0),
        (Kind::SeqWrite, 0),
        (Kind::RandRead, 0),
        (Kind::SmallFiles, options.files.max(1)),
        (Kind::ListDir, options.dir_entries.max(1)),
    ]
    .into_iter()
    .map(|(kind, count)| Workload { kind, count })
    .collect()
}

/// Where `make bench-deps` installs upstream virtiofsd: $HULL_CACHE_DIR (default
/// ~/.cache/hull) `/virtiofsd-<version>/bin/virtiofsd`.
pub fn virtiofsd_default() -> PathBuf {
    hull_tests::artifacts::cache_dir()
        .join(format!("virtiofsd-{VIRTIOFSD_VERSION}"))
        .join("bin/virtiofsd")
}

/// The command that installs the peer where [`virtiofsd_default`] looks.
pub fn virtiofsd_install_command() -> String {
    let root = virtiofsd_default()
        .parent()
        .and_then(Path::parent)
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    format!(
        "make bench-deps (or: cargo install virtiofsd --version {VIRTIOFSD_VERSION} --locked \
         --root {root}), or pass --virtiofsd PATH"
    )
}

/// A backend and the guest it serves.
struct Backend {
    name: String,
    role: Role,
    // The guest goes before the server: QEMU disconnects, then the server is stopped.
    vm: Option<vm::Vm>,
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
        let vm = self
            .vm
            .as_mut()
            .ok_or_else(|| Error::Unexpected(format!("{}'s guest is gone", self.name)))?;
        let line = format!(
            "run {} {} {}",
            workload.command(),
            budget.as_millis().max(1),
            workload.count
        );
        let before = tree_cpu_time(self.server.pid());
        let answer = vm.command(&line, budget + TRIAL_SLACK)?;
        let after = tree_cpu_time(self.server.pid());
        let trial = parse_result(&answer).ok_or_else(|| Error::Backend {
            backend: self.name.clone(),
            what: format!("the guest answered '{answer}' to '{line}'"),
        })?;
        Ok(match (before, after) {
            (Some(before), Some(after)) => trial.with_cpu(after.saturating_sub(before)),
            _ => trial,
        })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(vm) = self.vm.take() {
            vm.quit(Duration::from_secs(30));
        }
    }
}

/// A trial from the guest's `result OPS BYTES ELAPSED_NS P50_NS P99_NS`; `None` for
/// anything else.
fn parse_result(answer: &str) -> Option<Trial> {
    let mut words = answer.split_whitespace();
    if words.next()? != "result" {
        return None;
    }
    let numbers: Vec<u64> = words
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    let [ops, bytes, elapsed_ns, p50_ns, p99_ns] = numbers[..] else {
        return None;
    };
    if ops == 0 || elapsed_ns == 0 {
        return None;
    }
    Some(Trial {
        ops,
        bytes,
        elapsed: Duration::from_nanos(elapsed_ns),
        p50_us: Some(p50_ns as f64 / 1000.0),
        p99_us: Some(p99_ns as f64 / 1000.0),
        cpu_us_per_op: None,
    })
}

/// CPU time (user + system) of process `pid` and all its descendants: hull-fs serves from a
/// grandchild (supervisor, worker, sandboxed server), virtiofsd from a child in its sandbox.
fn tree_cpu_time(pid: u32) -> Option<Duration> {
    let mut parents: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(parent) = parent_of(&stat) {
            parents.entry(parent).or_default().push(child);
        }
    }
    let mut total = crate::child::cpu_time(pid)?;
    let mut queue = vec![pid];
    while let Some(next) = queue.pop() {
        for &child in parents.get(&next).map(Vec::as_slice).unwrap_or_default() {
            total += crate::child::cpu_time(child).unwrap_or_default();
            queue.push(child);
        }
    }
    Some(total)
}

/// The parent pid (field 4) of a /proc/PID/stat line, counted after the name's last ')'.
fn parent_of(stat: &str) -> Option<u32> {
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The first line `program --version` prints, for the record.
fn version(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines().next().map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Fills `share` with what the workloads use: data.bin of `data_bytes` and big-dir/ with
/// `entries` empty files.
fn fill_share(share: &Path, data_bytes: u64, entries: u64) -> Result<()> {
    let io_error = |what: String| move |source| Error::Io { what, source };
    let big_dir = share.join("big-dir");
    std::fs::create_dir_all(&big_dir)
        .map_err(io_error(format!("creating {}", big_dir.display())))?;
    crate::blk::create_file(&share.join("data.bin"), data_bytes)?;
    for i in 0..entries {
        let path = big_dir.join(format!("entry-{i:06}"));
        std::fs::File::create(&path).map_err(io_error(format!("creating {}", path.display())))?;
    }
    Ok(())
}

/// Runs the benchmark and returns its results.
pub fn run(options: &Options) -> Result<Run> {
    let mut run = Run::new("fs", options.quick, options.plan, Machine::probe());
    let virtiofsd = match &options.virtiofsd {
        Some(path) => find_program("virtiofsd", Some(path), &virtiofsd_install_command())?,
        None => {
            let path = virtiofsd_default();
            if !path.is_file() {
                return Err(Error::MissingProgram {
                    name: path.display().to_string(),
                    fix: virtiofsd_install_command(),
                });
            }
            path
        }
    };
    let hull_fs = find_program(
        "hull-fs",
        options.hull_fs.as_deref(),
        "build it with 'cargo build --release -p hull-fs' or pass --hull-fs PATH",
    )?;
    let qemu = find_program(
        "qemu-system-x86_64",
        None,
        "apt-get install qemu-system-x86",
    )?;
    let kernel = vm::kernel()?;
    let dir = RunDir::new(&std::env::temp_dir(), "fs")?;
    let initrd = vm::initrd(dir.path())?;
    let accel = hull_tests::qemu::accelerator().to_owned();
    let data_bytes = options.data_mib.max(1) << 20;

    let mut backends = Vec::new();
    let mut command_lines = BTreeMap::new();
    for (name, role, program) in [
        ("hull-fs", Role::Subject, &hull_fs),
        ("virtiofsd", Role::Peer, &virtiofsd),
    ] {
        let share = dir.path().join(format!("share-{name}"));
        fill_share(&share, data_bytes, options.dir_entries)?;
        let socket = dir.path().join(format!("{name}.sock"));
        let args = vec![
            "--socket-path".to_owned(),
            socket.display().to_string(),
            "--shared-dir".to_owned(),
            share.display().to_string(),
            "--cache".to_owned(),
            "never".to_owned(),
        ];
        let log = dir.path().join(format!("{name}.log"));
        let config = vm::VmConfig {
            qemu: qemu.clone(),
            kernel: kernel.clone(),
            initrd: initrd.clone(),
            socket: socket.clone(),
            memory_mib: GUEST_MIB,
            accel: accel.clone(),
        };
        // The backend exits with its guest, so a guest booted again needs a new backend.
        let mut attempt = 1;
        let (server, guest) = loop {
            // Upstream virtiofsd leaves its socket behind when it stops.
            let _ = std::fs::remove_file(&socket);
            let server = Server::start(name, program, &args, &socket, &log)?;
            match vm::Vm::boot(name, &config, BOOT_BOUND) {
                Ok(guest) => break (server, guest),
                Err(Error::Unexpected(why)) if attempt < BOOT_ATTEMPTS => {
                    eprintln!("{why}: booting it again");
                    attempt += 1;
                }
                Err(Error::Backend { backend, what }) => {
                    return Err(Error::Backend {
                        backend,
                        what: format!("{what}\n{name}'s log:\n{}", server.log_text()),
                    })
                }
                Err(other) => return Err(other),
            }
        };
        command_lines.insert(name, json!([program.display().to_string(), args]));
        backends.push(Backend {
            name: name.to_owned(),
            role,
            vm: Some(guest),
            server,
        });
    }

    let workloads = workloads(options);
    let mut contestants: Vec<Box<dyn Contestant<Workload>>> = Vec::new();
    for backend in backends {
        contestants.push(Box::new(backend));
    }
    let trials = (options.plan.rounds * contestants.len() * workloads.len()) as u64;
    let progress = Progress::new("fs", trials);
    let outcome = measure::run(&options.plan, &workloads, &mut contestants, &progress)?;
    drop(progress);
    drop(contestants);

    run.machine.finish();
    run.variant = format!("tcg guest, cache=never, {} MiB", options.data_mib);
    run.params = json!({
        "accel": accel,
        "guest_memory_mib": GUEST_MIB,
        "guest_vcpus": 1,
        "data_bytes": data_bytes,
        "files": options.files,
        "dir_entries": options.dir_entries,
        "hull_fs": version(&hull_fs),
        "virtiofsd": version(&virtiofsd),
        "command_lines": command_lines,
        "qemu": version(&qemu),
    });
    run.notes = vec![
        format!(
            "Each backend serves its own copy of the same share to its own QEMU {accel} guest \
             (microvm, vhost-user-fs-device, 1 vCPU, {GUEST_MIB} MiB); both run with --cache \
             never, so each guest operation reaches the backend."
        ),
        "Timings are taken in the guest; under TCG the guest's own CPU is most of each \
         operation, which pulls ratios towards 1. CPU µs/op is the user + system time of the \
         backend's whole process tree per operation (clock ticks of 10 ms)."
            .into(),
        "seqread/seqwrite: 1 MiB pread/write through data.bin (write.bin); randread: 4 KiB \
         pread at random aligned offsets; small files: ops = creates + stats + unlinks of 100 \
         byte files, latencies per call; listing: ops = entries read, latencies per whole \
         listing."
            .into(),
        "No limit contestant: the same operations on the host directory would skip TCG, so \
         they would not bound anything measured here."
            .into(),
    ];
    run.record(outcome);
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_parse() {
        let trial = parse_result("result 30 0 2000000 0 7").expect("a result");
        assert_eq!((trial.ops, trial.bytes), (30, 0));
        assert_eq!(trial.elapsed, Duration::from_millis(2));
        assert_eq!((trial.p50_us, trial.p99_us), (Some(0.0), Some(0.007)));
        let trial = parse_result("result 4 4194304 1000 1500 2500").expect("a result");
        assert_eq!((trial.p50_us, trial.p99_us), (Some(1.5), Some(2.5)));
    }

    #[test]
    fn anything_else_is_not_a_result() {
        for answer in [
            "ready",
            "result",
            "result 1 2 3 4",
            "result 1 2 3 4 5 6",
            "result 0 0 10 0 0",
            "result 1 0 0 0 0",
            "result -1 2 3 4 5",
            "result a b c d e",
        ] {
            assert!(parse_result(answer).is_none(), "{answer}");
        }
    }

    #[test]
    fn parent_pid_is_read_after_the_name() {
        assert_eq!(parent_of("42 (a) b) c) S 17 42 42 0"), Some(17));
        assert_eq!(parent_of("42 (x)"), None);
    }

    #[test]
    fn cpu_of_a_tree_includes_this_process() {
        assert!(tree_cpu_time(std::process::id()).is_some());
    }
}
