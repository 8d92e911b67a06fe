//! /init of the guest `hull-bench fs` boots once per vhost-user-fs backend: mounts the
//! virtio-fs share tagged `hullfs` on /mnt and runs the workloads the host asks for on its
//! serial console, one command a line, answering each with one `HULLFS-BENCH` line.
//!
//! Once ready it says `HULLFS-BENCH ready CLOCKSOURCE`. Commands (the host's side is
//! perf/src/fs/vm.rs):
//! - `run WORKLOAD BUDGET_MS COUNT` runs a workload for about BUDGET_MS (or over COUNT files)
//!   and answers `HULLFS-BENCH result OPS BYTES ELAPSED_NS P50_NS P99_NS`, or
//!   `HULLFS-BENCH error WHAT`;
//! - `quit` syncs and powers the VM off.
//!
//! Workloads, on files the host put in the share (`data.bin`, `big-dir/`):
//! - `seqread`: 1 MiB reads one after the other through data.bin, wrapping at its end;
//! - `seqwrite`: 1 MiB writes one after the other through `write-<size>.bin`, wrapping at the
//!   size of data.bin;
//! - `randread`: 4 KiB reads at random 4 KiB-aligned offsets of data.bin;
//! - `smallfiles`: creates COUNT files of 100 bytes in a new directory, stats each, unlinks
//!   each, removes the directory (OPS = 3 × COUNT, each create, stat and unlink timed);
//! - `listdir`: lists big-dir (every entry, names only) again and again for BUDGET_MS;
//!   OPS = entries read, latencies are those of whole listings.
//!
//! Timings are taken in the guest (CLOCK_MONOTONIC), so the console's round trip is not in
//! them. Built by hull-bench with plain `rustc` (std only, statically linked), not by cargo.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

#[path = "../../tests/guest/vm.rs"]
mod vm;
mod console;
use console::{ns, Outcome};
use vm::mount_fs;

const MIB: usize = 1 << 20;




struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Runs `op` (which returns the bytes it moved) until `budget` has passed; at least once.
fn timed_loop(
    budget: Duration,
    mut op: impl FnMut() -> Result<u64, String>,
) -> Result<Outcome, String> {
    let start = Instant::now();
    let mut outcome = Outcome {
        ops: 0,
        bytes: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    loop {
        let before = Instant::now();
        outcome.bytes += op()?;
        let after = Instant::now();
        outcome.latencies.push(ns(after - before));
        outcome.ops += 1;
        if after - start >= budget {
            outcome.elapsed = after - start;
            return Ok(outcome);
        }
    }
}

fn data_size(m: &Path) -> Result<u64, String> {
    let size = fs::metadata(m.join("data.bin")).map_err(s)?.len();
    if size < MIB as u64 {
        return Err(format!("data.bin holds {size} bytes, less than 1 MiB"));
    }
    Ok(size)
}

struct State {
    seq_read: u64,
    seq_write: u64,
    rng: Rng,
    trial: u64,
}

fn run(
    m: &Path,
    state: &mut State,
    workload: &str,
    budget: Duration,
    count: u64,
) -> Result<Outcome, String> {
    state.trial += 1;
    match workload {
        "seqread" => {
            let size = data_size(m)?;
            let file = fs::File::open(m.join("data.bin")).map_err(s)?;
            let mut buf = vec![0u8; MIB];
            let blocks = size / MIB as u64;
            timed_loop(budget, || {
                let offset = (state.seq_read % blocks) * MIB as u64;
                state.seq_read += 1;
                file.read_exact_at(&mut buf, offset).map_err(s)?;
                Ok(MIB as u64)
            })
        }
        "seqwrite" => {
            let size = data_size(m)?;
            let mut file = fs::OpenOptions::new()
                .create(true)
                .write(true)
                .open(m.join("write.bin"))
                .map_err(s)?;
            let buf: Vec<u8> = (0..MIB)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
                .collect();
            let blocks = size / MIB as u64;
            let outcome = timed_loop(budget, || {
                let offset = (state.seq_write % blocks) * MIB as u64;
                state.seq_write += 1;
                file.seek(SeekFrom::Start(offset)).map_err(s)?;
                file.write_all(&buf).map_err(s)?;
                Ok(MIB as u64)
            })?;
            Ok(outcome)
        }
        "randread" => {
            let size = data_size(m)?;
            let file = fs::File::open(m.join("data.bin")).map_err(s)?;
            let mut buf = vec![0u8; 4096];
            let blocks = size / 4096;
            timed_loop(budget, || {
                let offset = (state.rng.next() % blocks) * 4096;
                file.read_exact_at(&mut buf, offset).map_err(s)?;
                Ok(4096)
            })
        }
        "smallfiles" => {
            let dir = m.join(format!("small-{}", state.trial));
            fs::create_dir(&dir).map_err(s)?;
            let content = [b'x'; 100];
            let mut latencies = Vec::with_capacity(3 * count as usize);
            let names: Vec<_> = (0..count).map(|i| dir.join(format!("f{i:06}"))).collect();
            let start = Instant::now();
            for name in &names {
                let t = Instant::now();
                let mut f = fs::File::create(name).map_err(s)?;
                f.write_all(&content).map_err(s)?;
                drop(f);
                latencies.push(ns(t.elapsed()));
            }
            for name in &names {
                let t = Instant::now();
                let meta = fs::metadata(name).map_err(s)?;
                latencies.push(ns(t.elapsed()));
                if meta.len() != 100 {
                    return Err(format!(
                        "{} holds {} bytes, not 100",
                        name.display(),
                        meta.len()
                    ));
                }
            }
            for name in &names {
                let t = Instant::now();
                fs::remove_file(name).map_err(s)?;
                latencies.push(ns(t.elapsed()));
            }
            let elapsed = start.elapsed();
            fs::remove_dir(&dir).map_err(s)?;
            Ok(Outcome {
                ops: 3 * count,
                bytes: 0,
                elapsed,
                latencies,
            })
        }
        "listdir" => {
            let dir = m.join("big-dir");
            let start = Instant::now();
            let mut entries = 0u64;
            let mut latencies = Vec::new();
            loop {
                let t = Instant::now();
                let mut n = 0u64;
                for entry in fs::read_dir(&dir).map_err(s)? {
                    entry.map_err(s)?;
                    n += 1;
                }
                latencies.push(ns(t.elapsed()));
                if n == 0 {
                    return Err("big-dir is empty".into());
                }
                entries += n;
                if start.elapsed() >= budget {
                    break;
                }
            }
            Ok(Outcome {
                ops: entries,
                bytes: 0,
                elapsed: start.elapsed(),
                latencies,
            })
        }
        other => Err(format!("unknown workload {other}")),
    }
}

fn serve(m: &Path) -> Result<(), String> {
    let mut state = State {
        seq_read: 0,
        seq_write: 0,
        rng: Rng(0x9e37_79b9_7f4a_7c15),
        trial: 0,
    };
    console::serve(|workload, budget, count| run(m, &mut state, workload, budget, count))
}

fn main() {
    let _ = mount_fs("proc", "/proc", "proc");
    let _ = mount_fs("sysfs", "/sys", "sysfs");
    match mount_fs("hullfs", "/mnt", "virtiofs") {
        Ok(()) => {
            if let Err(err) = serve(Path::new("/mnt")) {
                println!("HULLFS-BENCH error {err}");
            }
        }
        Err(err) => println!("HULLFS-BENCH error mounting the share: {err}"),
    }
    let _ = std::io::stdout().flush();
    vm::stop();
}
