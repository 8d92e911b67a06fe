//! Should hull-fs read and write file contents through io_uring instead of blocking
//! `preadv`/`pwritev` (issue #6)? This measures the data path alone, on the host, with the
//! shared measurement core (interleaved rounds, warm-up, median and spread, JSON + SVG):
//!
//! - `io_uring`: one ring, `depth` READ/WRITE requests in flight, reaped one by one (the
//!   candidate, as a backend with an io_uring data path would run);
//! - `thread pool`: `depth` requests in flight handed to a pool of `depth` threads doing
//!   blocking `pread`/`pwrite` and sent back over a channel (virtiofsd's `--thread-pool-size`
//!   path, which hull-fs reuses);
//! - `inline`: blocking `pread`/`pwrite` on the calling thread one after the other
//!   (virtiofsd's default: the queue thread does the I/O itself; depth is always 1).
//!
//! Through the page cache (no O_DIRECT), as virtiofsd and hull-fs open files unless the guest
//! asks for O_DIRECT. Run:
//! `cargo run --release -p hull-bench --example fs_io_uring -- [--quick] [--out DIR]`.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hull_bench::measure::{self, Contestant, Plan, Role, Trial};
use hull_bench::progress::Progress;
use hull_bench::results::{self, Machine, Run};
use hull_bench::{all, report, Error, Result};
use io_uring::{opcode, types, IoUring};

/// A data-path workload.
#[derive(Debug, Clone, Copy)]
struct Workload {
    write: bool,
    random: bool,
    block: usize,
    depth: usize,
}

impl measure::Workload for Workload {
    fn name(&self) -> String {
        let kind = match (self.random, self.write) {
            (true, false) => "randread",
            (true, true) => "randwrite",
            (false, false) => "seqread",
            (false, true) => "seqwrite",
        };
        let size = if self.block >= 1 << 20 {
            format!("{}M", self.block >> 20)
        } else {
            format!("{}k", self.block >> 10)
        };
        format!("{size} {kind} qd{}", self.depth)
    }
}

const WORKLOADS: [Workload; 6] = [
    Workload {
        write: false,
        random: true,
        block: 4096,
        depth: 1,
    },
    Workload {
        write: false,
        random: true,
        block: 4096,
        depth: 16,
    },
    Workload {
        write: false,
        random: false,
        block: 1 << 20,
        depth: 1,
    },
    Workload {
        write: false,
        random: false,
        block: 1 << 20,
        depth: 4,
    },
    Workload {
        write: true,
        random: false,
        block: 1 << 20,
        depth: 1,
    },
    Workload {
        write: true,
        random: true,
        block: 4096,
        depth: 1,
    },
];

/// Offsets of successive requests: the same sequence for every contestant.
struct Offsets {
    size: u64,
    rng: u64,
    next: u64,
}

impl Offsets {
    fn next(&mut self, workload: &Workload) -> u64 {
        let block = workload.block as u64;
        let blocks = (self.size / block).max(1);
        if workload.random {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            (self.rng % blocks) * block
        } else {
            let offset = self.next % (blocks * block);
            self.next = offset + block;
            offset
        }
    }
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        what: what.to_owned(),
        source,
    }
}

/// One I/O the blocking way.
fn blocking(file: &File, buf: &mut [u8], offset: u64, write: bool) -> Result<()> {
    if write {
        file.write_all_at(buf, offset).map_err(io("pwrite"))
    } else {
        file.read_exact_at(buf, offset).map_err(io("pread"))
    }
}

struct Inline {
    file: Arc<File>,
    offsets: Offsets,
    buf: Vec<u8>,
}

impl Contestant<Workload> for Inline {
    fn name(&self) -> String {
        "inline pread/pwrite (virtiofsd default)".into()
    }
    fn role(&self) -> Role {
        Role::Peer
    }
    fn trial(&mut self, workload: &Workload, budget: Duration) -> Result<Trial> {
        let mut latencies = Vec::new();
        let start = Instant::now();
        while start.elapsed() < budget {
            let offset = self.offsets.next(workload);
            let t = Instant::now();
            blocking(
                &self.file,
                &mut self.buf[..workload.block],
                offset,
                workload.write,
            )?;
            latencies.push(t.elapsed().as_nanos() as u64);
        }
        let ops = latencies.len() as u64;
        Ok(Trial::from_latencies(
            ops,
            ops * workload.block as u64,
            start.elapsed(),
            &mut latencies,
        ))
    }
}

/// A request to the pool: offset, size, direction, and when it was posted.
type Job = (u64, usize, bool, Instant);

struct Pool {
    offsets: Offsets,
    jobs: Option<crossbeam_like::Sender<Job>>,
    done: mpsc::Receiver<Result<Instant>>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

/// A multi-consumer queue from std parts (a mutex around a receiver): the pool's workers
/// take jobs from it as virtiofsd's pool does from its own queue.
mod crossbeam_like {
    use std::sync::{mpsc, Arc, Mutex};

    pub struct Sender<T>(pub mpsc::Sender<T>);
    #[derive(Clone)]
    pub struct Receiver<T>(pub Arc<Mutex<mpsc::Receiver<T>>>);

    pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
        let (s, r) = mpsc::channel();
        (Sender(s), Receiver(Arc::new(Mutex::new(r))))
    }

    impl<T> Receiver<T> {
        pub fn recv(&self) -> Option<T> {
            self.0.lock().ok()?.recv().ok()
        }
    }
}

impl Pool {
    fn new(file: Arc<File>, threads: usize, size: u64) -> Self {
        let (jobs, queue) = crossbeam_like::channel::<Job>();
        let (done_tx, done) = mpsc::channel();
        let workers = (0..threads)
            .map(|_| {
                let (queue, done_tx, file) = (queue.clone(), done_tx.clone(), Arc::clone(&file));
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 20];
                    while let Some((offset, len, write, posted)) = queue.recv() {
                        let result =
                            blocking(&file, &mut buf[..len], offset, write).map(|()| posted);
                        if done_tx.send(result).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        Self {
            offsets: Offsets {
                size,
                rng: 0x9e37_79b9_7f4a_7c15,
                next: 0,
            },
            jobs: Some(jobs),
            done,
            workers,
        }
    }

    fn post(&mut self, workload: &Workload) -> Result<()> {
        let offset = self.offsets.next(workload);
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| Error::Unexpected("pool closed".into()))?;
        jobs.0
            .send((offset, workload.block, workload.write, Instant::now()))
            .map_err(|_| Error::Unexpected("the pool's workers are gone".into()))
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

impl Contestant<Workload> for Pool {
    fn name(&self) -> String {
        "thread pool pread/pwrite (--thread-pool-size)".into()
    }
    fn role(&self) -> Role {
        Role::Peer
    }
    fn trial(&mut self, workload: &Workload, budget: Duration) -> Result<Trial> {
        let mut latencies = Vec::new();
        let start = Instant::now();
        for _ in 0..workload.depth {
            self.post(workload)?;
        }
        let mut outstanding = workload.depth;
        while outstanding > 0 {
            let posted = self
                .done
                .recv()
                .map_err(|_| Error::Unexpected("the pool's workers are gone".into()))??;
            latencies.push(posted.elapsed().as_nanos() as u64);
            outstanding -= 1;
            if start.elapsed() < budget {
                self.post(workload)?;
                outstanding += 1;
            }
        }
        let ops = latencies.len() as u64;
        Ok(Trial::from_latencies(
            ops,
            ops * workload.block as u64,
            start.elapsed(),
            &mut latencies,
        ))
    }
}

struct Uring {
    ring: IoUring,
    file: Arc<File>,
    offsets: Offsets,
    bufs: Vec<Vec<u8>>,
}

impl Contestant<Workload> for Uring {
    fn name(&self) -> String {
        "io_uring READ/WRITE".into()
    }
    fn role(&self) -> Role {
        Role::Subject
    }
    fn trial(&mut self, workload: &Workload, budget: Duration) -> Result<Trial> {
        let depth = workload.depth.min(self.bufs.len());
        let mut posted = vec![Instant::now(); depth];
        let mut latencies = Vec::new();
        let start = Instant::now();
        let fd = types::Fd(self.file.as_raw_fd());
        let push = |this: &mut Self, slot: usize| -> Result<()> {
            let offset = this.offsets.next(workload);
            let buf = &mut this.bufs[slot][..workload.block];
            let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
            let entry = if workload.write {
                opcode::Write::new(fd, buf.as_ptr(), len)
                    .offset(offset)
                    .build()
            } else {
                opcode::Read::new(fd, buf.as_mut_ptr(), len)
                    .offset(offset)
                    .build()
            };
            // SAFETY: the buffer lives in `this.bufs` (never resized) until the request's
            // completion is reaped below, and only one request uses a slot at a time.
            unsafe { this.ring.submission().push(&entry.user_data(slot as u64)) }
                .map_err(|_| Error::Unexpected("io_uring submission queue full".into()))
        };
        for (slot, at) in posted.iter_mut().enumerate() {
            push(self, slot)?;
            *at = Instant::now();
        }
        let mut outstanding = depth;
        while outstanding > 0 {
            self.ring.submit_and_wait(1).map_err(io("io_uring_enter"))?;
            let completions: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            for (slot, result) in completions {
                let slot = usize::try_from(slot).unwrap_or(usize::MAX);
                if result < 0 || usize::try_from(result).ok() != Some(workload.block) {
                    return Err(Error::Unexpected(format!("io_uring request gave {result}")));
                }
                let at = posted
                    .get_mut(slot)
                    .ok_or_else(|| Error::Unexpected("bad slot".into()))?;
                latencies.push(at.elapsed().as_nanos() as u64);
                outstanding -= 1;
                if start.elapsed() < budget {
                    push(self, slot)?;
                    posted[slot] = Instant::now();
                    outstanding += 1;
                }
            }
        }
        let ops = latencies.len() as u64;
        Ok(Trial::from_latencies(
            ops,
            ops * workload.block as u64,
            start.elapsed(),
            &mut latencies,
        ))
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map_or_else(results::default_dir, PathBuf::from);
    let plan = if quick {
        Plan::quick()
    } else {
        Plan::full(Duration::from_secs(2), 5)
    };
    let size: u64 = if quick { 16 << 20 } else { 512 << 20 };
    let mut run = Run::new("fs-io-uring", quick, plan, Machine::probe());

    let path = std::env::temp_dir().join(format!("hull-bench-fs-io-uring-{}", std::process::id()));
    let result = (|| -> anyhow::Result<()> {
        let mut file = File::options()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let chunk: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        for _ in 0..size >> 20 {
            file.write_all(&chunk)?;
        }
        file.sync_all()?;
        let file = Arc::new(file);
        let threads = WORKLOADS.iter().map(|w| w.depth).max().unwrap_or(1);
        let offsets = || Offsets {
            size,
            rng: 0x9e37_79b9_7f4a_7c15,
            next: 0,
        };
        let mut contestants: Vec<Box<dyn Contestant<Workload>>> = vec![
            Box::new(Uring {
                ring: IoUring::new(64).context("io_uring_setup")?,
                file: Arc::clone(&file),
                offsets: offsets(),
                bufs: vec![vec![0u8; 1 << 20]; threads],
            }),
            Box::new(Pool::new(Arc::clone(&file), threads, size)),
            Box::new(Inline {
                file: Arc::clone(&file),
                offsets: offsets(),
                buf: vec![0u8; 1 << 20],
            }),
        ];
        let trials = (plan.rounds * contestants.len() * WORKLOADS.len()) as u64;
        let progress = Progress::new("fs-io-uring", trials);
        let outcome = measure::run(&plan, &WORKLOADS, &mut contestants, &progress)?;
        drop(progress);
        run.machine.finish();
        run.params = serde_json::json!({ "file_bytes": size, "page_cache": "buffered", "pool_threads": threads });
        run.notes = vec![
            "Host only, no guest and no vhost-user: the data path of a virtio-fs READ/WRITE \
             alone, on a file in the page cache."
                .into(),
            "Inline ignores the depth (one request at a time, as a queue thread without a pool)."
                .into(),
        ];
        run.record(outcome);
        Ok(())
    })();
    let _ = std::fs::remove_file(&path);
    result?;
    let (json, svg) = all::publish(&run, &out)?;
    print!("{}", report::summary(&run));
    println!("results: {}\nchart:   {}", json.display(), svg.display());
    Ok(())
}
