//! The fuzz targets' smoke run, on the stable toolchain and without cargo-fuzz (CI runs it
//! through `make fuzz-smoke`): every target over its committed corpus (`corpus/<target>/`),
//! then over a bounded number of generated inputs: random bytes, and mutations of the corpus
//! (byte flips, insertions, deletions, splices, interesting values), from a fixed seed
//! printed with the results, so any failure replays.
//!
//! A panic on any thread aborts the process (as under libFuzzer), after writing the target,
//! the seed and the input (in hex, and to a file) to stderr.
//!
//! `HULL_FUZZ_SMOKE_RUNS` sets the generated inputs per target (default 20,000 in release,
//! 2,000 in debug); `HULL_FUZZ_SMOKE_SEED` the seed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

use hull_fuzz::{Target, TARGETS};

/// The inputs being run, by target (tests run in parallel).
static CURRENT: Mutex<BTreeMap<&'static str, (u64, Vec<u8>)>> = Mutex::new(BTreeMap::new());

fn install_abort_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            // Straight to the process's stderr: the test harness's capture would be lost
            // with the process.
            let mut err = std::io::stderr().lock();
            let thread = std::thread::current();
            let _ = writeln!(err, "\npanic on thread {:?}: {info}", thread.name());
            let current = CURRENT.lock().map(|c| c.clone()).unwrap_or_default();
            for (name, (seed, input)) in current {
                let file = std::env::temp_dir().join(format!("hull-fuzz-crash-{name}"));
                let _ = std::fs::write(&file, &input);
                let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
                let _ = writeln!(
                    err,
                    "running: target {name}, seed {seed:#x}, input of {} bytes saved to {}:\n{hex}",
                    input.len(),
                    file.display()
                );
            }
            let _ = err.flush();
            std::process::abort();
        }));
    });
}

/// xorshift64*: a fixed, dependency-free sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
}

const INTERESTING: [u64; 12] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x1000,
    0x7fff_ffff,
    0xffff_ffff,
    u64::MAX,
    16,
    44,
];

/// A mutation of `input` (libFuzzer's basic moves, a few at a time), at most `max_len` long.
fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>], max_len: usize) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(7) {
            0 if !out.is_empty() => {
                let at = rng.below(out.len());
                out[at] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let at = rng.below(out.len());
                out[at] = rng.byte();
            }
            2 => {
                let at = rng.below(out.len() + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
                out.splice(at..at, bytes);
            }
            3 if !out.is_empty() => {
                let at = rng.below(out.len());
                let n = (1 + rng.below(16)).min(out.len() - at);
                out.drain(at..at + n);
            }
            4 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                let from = rng.below(other.len() + 1);
                let at = rng.below(out.len() + 1);
                out.truncate(at);
                out.extend_from_slice(&other[from..]);
            }
            5 if !out.is_empty() => {
                let value = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                let width = [1, 2, 4, 8][rng.below(4)];
                let at = rng.below(out.len());
                let end = (at + width).min(out.len());
                out[at..end].copy_from_slice(&value[..end - at]);
            }
            _ => {
                let at = rng.below(out.len() + 1);
                out.truncate(at);
            }
        }
    }
    out.truncate(max_len);
    out
}

fn corpus_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name)
}

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir(name))
        .map(|entries| entries.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().filter_map(|f| std::fs::read(f).ok()).collect()
}

fn runs() -> usize {
    let default = if cfg!(debug_assertions) {
        2_000
    } else {
        20_000
    };
    std::env::var("HULL_FUZZ_SMOKE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seed() -> u64 {
    std::env::var("HULL_FUZZ_SMOKE_SEED")
        .ok()
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0x6875_6c6c_2d66_757a)
}

fn run_one(target: &Target, seed: u64, input: &[u8]) {
    if let Ok(mut current) = CURRENT.lock() {
        current.insert(target.name, (seed, input.to_vec()));
    }
    (target.run)(input);
}

/// `vhost_user_msg` closes the eventfds its daemon leaked (see its docs) by looking at what
/// the process has open: no other target making eventfds (`virtio_mmio`) may run meanwhile.
static EVENTFD_TARGETS: Mutex<()> = Mutex::new(());

fn smoke(name: &str) {
    install_abort_hook();
    let _exclusive = ["vhost_user_msg", "virtio_mmio"]
        .contains(&name)
        .then(|| EVENTFD_TARGETS.lock().unwrap_or_else(|e| e.into_inner()));
    let target = TARGETS
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no target {name}"));
    let corpus = corpus(name);
    assert!(
        !corpus.is_empty(),
        "{name} has no seed corpus in {}",
        corpus_dir(name).display()
    );
    let seed = seed()
        ^ name
            .bytes()
            .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b));
    let mut rng = Rng(seed | 1);
    for input in &corpus {
        run_one(target, seed, input);
    }
    let runs = runs();
    for _ in 0..runs {
        let input = if rng.below(4) == 0 {
            let longest = 1 + rng.below(target.max_len);
            let len = rng.below(longest);
            (0..len).map(|_| rng.byte()).collect()
        } else {
            let base = &corpus[rng.below(corpus.len())];
            mutate(&mut rng, base, &corpus, target.max_len)
        };
        run_one(target, seed, &input);
    }
    if let Ok(mut current) = CURRENT.lock() {
        current.remove(name);
    }
    println!(
        "{name}: {} corpus inputs and {runs} generated inputs (seed {seed:#x}), no crash",
        corpus.len()
    );
}

macro_rules! smoke_tests {
    ($($name:ident),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                smoke(stringify!($name));
            }
        )+

        /// Every target has its smoke test.
        #[test]
        fn every_target_has_a_smoke_test() {
            let tested = [$(stringify!($name)),+];
            for target in TARGETS {
                assert!(tested.contains(&target.name), "{} has no smoke test", target.name);
            }
        }
    };
}

smoke_tests!(
    virtq_chain,
    blk_request,
    net_rx_tx,
    vsock_packet,
    vhost_user_msg,
    virtio_mmio,
    fuse_request,
    agent_request,
    oci_spec,
    config_toml,
);
