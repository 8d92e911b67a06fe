//! `hull-bench vmm-start` and `hull-bench vmm-exits`: hull-vmm against QEMU microvm booting
//! the same small guest ([`guest`]) the same way (a PVH ELF as the kernel), with the bare KVM
//! ioctls in this process as the limit ([`limit`]).
//!
//! Contestants, interleaved in the same run:
//! - subject: the `hull-vmm` binary, `--kernel GUEST --memory 16`, serial on its stdout;
//! - peer: `qemu-system-x86_64 -M microvm` with `-accel kvm` where a guest runs under it,
//!   else `-accel tcg` (then named "(TCG)" and flagged in the notes: the ratios then compare
//!   different accelerators), 16 MiB of memfd RAM, an i8042 (microvm has none, and the
//!   guest's reset goes through it), `-no-reboot` so the reset ends QEMU;
//! - limit: [`limit::run`], KVM_CREATE_VM + KVM_RUN and nothing else, in this process.
//!
//! The host measures from just before it spawns the VMM: to the guest's first serial byte
//! read on a pipe, to the process's exit after the guest's reset, and, for `vmm-exits`, the
//! time between the serial bytes written before and after the guest's exit loop. Each run
//! also measures, while a guest is parked in `hlt`, each VMM process's PSS beside guest RAM,
//! the PSS of its guest RAM mapping and its thread count.

pub mod guest;
pub mod limit;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde_json::json;

use crate::child::{find_program, RunDir};
use crate::measure::{
    self, Contestant, Metric, Outcome, Plan, Ratio, Role, Series, Stat, Trial, Workload,
};
use crate::progress::Progress;
use crate::results::{Machine, Run};
use crate::{density, Error, Result};
use guest::{ExitKind, Program, FIRST_OUTPUT, LOOP_DONE};

/// `vmm-start`'s name.
pub const START: &str = "vmm-start";
/// `vmm-exits`'s name.
pub const EXITS: &str = "vmm-exits";
/// Guest RAM of every contestant, MiB (hull-vmm's minimum).
pub const GUEST_MIB: u64 = 16;
/// How long one VMM process may take to do what the guest asks before it counts as hung.
const BOUND: Duration = Duration::from_secs(60);
/// The workload name of the footprint measured while the guest is parked.
pub const RESIDENT: &str = "guest parked in hlt";
/// hull-vmm's guest RAM mapping in `/proc/PID/smaps` (its memfd's name).
const HULL_GUEST_RAM: &str = "/memfd:hull-guest-ram";
/// QEMU's guest RAM mapping: the `memory-backend-memfd` object it is given.
const QEMU_GUEST_RAM: &str = "/memfd:memory-backend-memfd";

/// Options of `vmm-start` and `vmm-exits`.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long and how often.
    pub plan: Plan,
    /// A smoke run.
    pub quick: bool,
    /// The hull-vmm binary; found beside hull-bench or on PATH when `None`.
    pub hull_vmm: Option<PathBuf>,
    /// Exits per guest run of `vmm-exits`.
    pub exits: u32,
}

/// /dev/kvm opens read-write (the small guest runs on KVM even without vmx/svm).
pub fn kvm_usable() -> std::result::Result<(), hull_tests::prereq::Missing> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|err| {
            hull_tests::prereq::Missing::hardware(
                format!("usable /dev/kvm ({err})"),
                "load the kvm module and grant access to /dev/kvm",
            )
        })
}

/// QEMU's accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM, as hull-vmm.
    Kvm,
    /// TCG: a guest does not run under QEMU's KVM here.
    Tcg,
}

/// A VMM program and how it boots a guest image.
#[derive(Debug, Clone)]
enum Vmm {
    Hull(PathBuf),
    Qemu(PathBuf, Accel),
}

impl Vmm {
    fn name(&self) -> String {
        match self {
            Vmm::Hull(_) => "hull-vmm".into(),
            Vmm::Qemu(_, Accel::Kvm) => "qemu microvm (KVM)".into(),
            Vmm::Qemu(_, Accel::Tcg) => "qemu microvm (TCG)".into(),
        }
    }

    fn role(&self) -> Role {
        match self {
            Vmm::Hull(_) => Role::Subject,
            Vmm::Qemu(..) => Role::Peer,
        }
    }

    fn guest_ram(&self) -> &'static str {
        match self {
            Vmm::Hull(_) => HULL_GUEST_RAM,
            Vmm::Qemu(..) => QEMU_GUEST_RAM,
        }
    }

    /// The program and its arguments to boot `image`.
    fn command_line(&self, image: &Path) -> (PathBuf, Vec<String>) {
        let image = image.display().to_string();
        match self {
            Vmm::Hull(path) => (
                path.clone(),
                vec![
                    "--kernel".into(),
                    image,
                    "--memory".into(),
                    GUEST_MIB.to_string(),
                ],
            ),
            Vmm::Qemu(path, accel) => {
                let accel = match accel {
                    Accel::Kvm => "kvm",
                    Accel::Tcg => "tcg",
                };
                let args = [
                    "-M",
                    "microvm,memory-backend=mem",
                    "-accel",
                    accel,
                    // `-cpu host` aborts on kvm_pvm (MSR 0x10a); the guest needs no feature.
                    "-cpu",
                    "qemu64",
                    "-m",
                    &format!("{GUEST_MIB}M"),
                    "-object",
                    &format!("memory-backend-memfd,id=mem,size={GUEST_MIB}M"),
                    "-kernel",
                    &image,
                    "-device",
                    "i8042",
                    "-no-reboot",
                    "-nodefaults",
                    "-display",
                    "none",
                    "-serial",
                    "stdio",
                ];
                (path.clone(), args.iter().map(|s| (*s).to_owned()).collect())
            }
        }
    }
}

/// The guest images of a run, in its temporary directory.
struct Images {
    dir: RunDir,
}

impl Images {
    fn new(purpose: &str) -> Result<Self> {
        Ok(Self {
            dir: RunDir::new(&std::env::temp_dir(), purpose)?,
        })
    }

    /// The image of `program`, written on first use.
    fn path(&self, program: Program) -> Result<PathBuf> {
        let name = match program {
            Program::Start => "start.elf".to_owned(),
            Program::Park => "park.elf".to_owned(),
            Program::Exits { kind, n } => format!("exits-{kind:?}-{n}.elf").to_lowercase(),
        };
        let path = self.dir.path().join(name);
        if !path.exists() {
            std::fs::write(&path, program.elf()).map_err(|source| Error::Io {
                what: format!("writing the guest image {}", path.display()),
                source,
            })?;
        }
        Ok(path)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("vmm.log")
    }
}

/// One VMM process booting one guest: spawned with its stdout on a pipe and its stderr in a
/// log; killed and reaped when dropped, on every path out.
struct Launch {
    name: String,
    child: Child,
    stdout: ChildStdout,
    spawned: Instant,
    log: PathBuf,
    /// Serial bytes read so far.
    seen: Vec<u8>,
    /// For each read of `seen`: the length of `seen` after it, and when it arrived.
    arrivals: Vec<(usize, Duration)>,
    /// How much of `seen` [`Launch::until`] has looked through.
    consumed: usize,
}

impl Launch {
    fn start(vmm: &Vmm, image: &Path, log: &Path) -> Result<Self> {
        let (program, args) = vmm.command_line(image);
        let log_file = std::fs::File::create(log).map_err(|source| Error::Io {
            what: format!("creating {}", log.display()),
            source,
        })?;
        let spawned = Instant::now();
        let mut child = Command::new(&program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|source| Error::Io {
                what: format!("starting {}", program.display()),
                source,
            })?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Unexpected(format!("{}: no stdout pipe", vmm.name())));
        };
        Ok(Self {
            name: vmm.name(),
            child,
            stdout,
            spawned,
            log: log.to_owned(),
            seen: Vec::new(),
            arrivals: Vec::new(),
            consumed: 0,
        })
    }

    fn failed(&mut self, what: &str) -> Error {
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .map_or_else(|e| e.to_string(), |s| s.to_string());
        Error::ServerExited {
            name: self.name.clone(),
            status: format!(
                "{what} (serial so far {:?}; {status})",
                String::from_utf8_lossy(&self.seen)
            ),
            log: std::fs::read_to_string(&self.log).unwrap_or_default(),
        }
    }

    /// Reads serial output until `byte` arrives; returns the time since the spawn at which
    /// the read that brought it returned. Output already read (one read may bring 'A' and 'B'
    /// together) is looked through first.
    fn until(&mut self, byte: u8) -> Result<Duration> {
        let deadline = self.spawned + BOUND;
        loop {
            if let Some(offset) = self.seen[self.consumed..].iter().position(|&b| b == byte) {
                let index = self.consumed + offset;
                self.consumed = index + 1;
                let at = self
                    .arrivals
                    .iter()
                    .find(|(end, _)| *end > index)
                    .map_or_else(|| self.spawned.elapsed(), |(_, at)| *at);
                return Ok(at);
            }
            self.consumed = self.seen.len();
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.stdout.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) => {
                    return Err(self.failed(&format!("no {:?} within {BOUND:?}", byte as char)))
                }
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(errno) => return Err(self.failed(&format!("poll: {errno}"))),
            }
            let mut buf = [0u8; 256];
            match self.stdout.read(&mut buf) {
                Ok(0) => return Err(self.failed(&format!("exited before {:?}", byte as char))),
                Ok(n) => {
                    let at = self.spawned.elapsed();
                    self.seen.extend_from_slice(&buf[..n]);
                    self.arrivals.push((self.seen.len(), at));
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(self.failed(&format!("reading serial: {err}"))),
            }
        }
    }

    /// Waits for the process to exit by itself (the guest's reset), successfully; returns
    /// the time since the spawn.
    fn exit(&mut self) -> Result<Duration> {
        let deadline = self.spawned + BOUND;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(self.spawned.elapsed()),
                Ok(Some(status)) => return Err(self.failed(&format!("exited with {status}"))),
                Ok(None) if Instant::now() > deadline => {
                    return Err(self.failed(&format!("still running after {BOUND:?}")))
                }
                Ok(None) => {}
                Err(err) => return Err(self.failed(&format!("waiting: {err}"))),
            }
            // Blocks until the process closes its stdout (it exits), or output comes.
            let mut buf = [0u8; 256];
            match self.stdout.read(&mut buf) {
                Ok(0) => {
                    // EOF: the process is going; reap it.
                    return match self.child.wait() {
                        Ok(status) if status.success() => Ok(self.spawned.elapsed()),
                        Ok(status) => Err(self.failed(&format!("exited with {status}"))),
                        Err(err) => Err(self.failed(&format!("waiting: {err}"))),
                    };
                }
                Ok(n) => self.seen.extend_from_slice(&buf[..n]),
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(self.failed(&format!("reading serial: {err}"))),
            }
        }
    }

    /// Asks the process to stop (SIGTERM), then kills it if it does not within 5 s.
    fn stop(&mut self) {
        crate::child::terminate(&mut self.child);
    }
}

impl Drop for Launch {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The workloads of `vmm-start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTo {
    /// Exec to the guest's first serial byte.
    FirstOutput,
    /// Exec to the VMM's exit after the guest's reset.
    Exit,
}

impl Workload for StartTo {
    fn name(&self) -> String {
        match self {
            StartTo::FirstOutput => "exec to first guest output".into(),
            StartTo::Exit => "exec to exit on the guest's reset".into(),
        }
    }
}

/// The workloads of `vmm-exits`: `n` exits of one kind per guest run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitLoop {
    /// The kind of exit.
    pub kind: ExitKind,
    /// Exits per guest run.
    pub n: u32,
}

impl Workload for ExitLoop {
    fn name(&self) -> String {
        match self.kind {
            ExitKind::Pio => "PIO out to a free port".into(),
            ExitKind::Mmio => "MMIO write to a free address".into(),
        }
    }
}

/// A VMM process as a contestant.
struct Process<'i> {
    vmm: Vmm,
    images: &'i Images,
}

/// Runs `one` (returning the trial's latency and exits, each in ns) until `budget` is used,
/// at least once.
fn repeat(budget: Duration, mut one: impl FnMut() -> Result<(u64, u64)>) -> Result<Trial> {
    let start = Instant::now();
    let (mut latencies, mut ops, mut loop_ns) = (Vec::new(), 0u64, 0u64);
    while latencies.is_empty() || start.elapsed() < budget {
        let (ns, exits) = one()?;
        latencies.push(ns);
        ops += exits;
        loop_ns += ns;
    }
    Ok(if ops == 0 {
        let elapsed = start.elapsed();
        Trial::from_latencies(latencies.len() as u64, 0, elapsed, &mut latencies)
    } else {
        // Exit loops: the operations are the exits, over the time the loops took.
        Trial::from_latencies(ops, 0, Duration::from_nanos(loop_ns), &mut [])
    })
}

fn ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl Contestant<StartTo> for Process<'_> {
    fn name(&self) -> String {
        self.vmm.name()
    }
    fn role(&self) -> Role {
        self.vmm.role()
    }
    fn trial(&mut self, workload: &StartTo, budget: Duration) -> Result<Trial> {
        let image = self.images.path(Program::Start)?;
        repeat(budget, || {
            let mut launch = Launch::start(&self.vmm, &image, &self.images.log())?;
            let first = launch.until(FIRST_OUTPUT)?;
            let exit = launch.exit()?;
            Ok((
                ns(match workload {
                    StartTo::FirstOutput => first,
                    StartTo::Exit => exit,
                }),
                0,
            ))
        })
    }
}

impl Contestant<ExitLoop> for Process<'_> {
    fn name(&self) -> String {
        self.vmm.name()
    }
    fn role(&self) -> Role {
        self.vmm.role()
    }
    fn trial(&mut self, workload: &ExitLoop, budget: Duration) -> Result<Trial> {
        let image = self.images.path(Program::Exits {
            kind: workload.kind,
            n: workload.n,
        })?;
        repeat(budget, || {
            let mut launch = Launch::start(&self.vmm, &image, &self.images.log())?;
            let first = launch.until(FIRST_OUTPUT)?;
            let done = launch.until(LOOP_DONE)?;
            launch.exit()?;
            Ok((ns(done.saturating_sub(first)), u64::from(workload.n)))
        })
    }
}

/// The KVM ioctls alone, in this process.
struct Limit;

const LIMIT_NAME: &str = "KVM_CREATE_VM + KVM_RUN alone";

impl Contestant<StartTo> for Limit {
    fn name(&self) -> String {
        LIMIT_NAME.into()
    }
    fn role(&self) -> Role {
        Role::Limit
    }
    fn trial(&mut self, workload: &StartTo, budget: Duration) -> Result<Trial> {
        repeat(budget, || {
            let timings = limit::run(Program::Start)?;
            Ok((
                ns(match workload {
                    StartTo::FirstOutput => timings.first_output,
                    StartTo::Exit => timings.done,
                }),
                0,
            ))
        })
    }
}

impl Contestant<ExitLoop> for Limit {
    fn name(&self) -> String {
        LIMIT_NAME.into()
    }
    fn role(&self) -> Role {
        Role::Limit
    }
    fn trial(&mut self, workload: &ExitLoop, budget: Duration) -> Result<Trial> {
        repeat(budget, || {
            let timings = limit::run(Program::Exits {
                kind: workload.kind,
                n: workload.n,
            })?;
            let done = timings
                .loop_done
                .ok_or_else(|| Error::Unexpected("the KVM limit: no end of the loop".into()))?;
            if timings.loop_exits != u64::from(workload.n) {
                return Err(Error::Unexpected(format!(
                    "the KVM limit saw {} exits in the loop, not {}",
                    timings.loop_exits, workload.n
                )));
            }
            Ok((
                ns(done.saturating_sub(timings.first_output)),
                timings.loop_exits,
            ))
        })
    }
}

/// Finds QEMU and the accelerator a guest runs under: KVM if the start guest boots and
/// resets under it, else TCG.
fn qemu(images: &Images) -> Result<(Vmm, Option<String>)> {
    let path = find_program(
        "qemu-system-x86_64",
        None,
        "apt-get install qemu-system-x86",
    )?;
    let image = images.path(Program::Start)?;
    let kvm = Vmm::Qemu(path.clone(), Accel::Kvm);
    let probe = Launch::start(&kvm, &image, &images.log()).and_then(|mut launch| {
        launch.until(FIRST_OUTPUT)?;
        launch.exit()
    });
    match probe {
        Ok(_) => Ok((kvm, None)),
        Err(err) => Ok((Vmm::Qemu(path, Accel::Tcg), Some(err.to_string()))),
    }
}

/// The VMM processes of a run: hull-vmm and QEMU, and why QEMU is not on KVM, if not.
fn vmms(options: &Options, images: &Images) -> Result<(Vec<Vmm>, Option<String>)> {
    kvm_usable()?;
    let hull = find_program(
        "hull-vmm",
        options.hull_vmm.as_deref(),
        "build it with 'cargo build --release -p hull-vmm' or pass --hull-vmm PATH",
    )?;
    let (qemu, tcg_because) = qemu(images)?;
    Ok((vec![Vmm::Hull(hull), qemu], tcg_because))
}

/// One process's footprint while its guest is parked.
#[derive(Debug, Clone, PartialEq)]
struct Footprint {
    pss_kib: u64,
    guest_pss_kib: u64,
    threads: u64,
    /// Each thread's name (`/proc/PID/task/*/comm`), sorted.
    thread_names: Vec<String>,
}

/// The names of process `pid`'s threads, sorted (KVM's own workers, such as
/// `kvm-nx-lpage-recovery`, are listed among them by the kernel).
fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect();
    names.sort();
    names
}

fn footprint(vmm: &Vmm, images: &Images) -> Result<Footprint> {
    let image = images.path(Program::Park)?;
    let mut launch = Launch::start(vmm, &image, &images.log())?;
    launch.until(FIRST_OUTPUT)?;
    let pid = launch.child.id();
    let read = |file: &str| {
        let path = format!("/proc/{pid}/{file}");
        std::fs::read_to_string(&path).map_err(|source| Error::Io {
            what: format!("reading {path}"),
            source,
        })
    };
    let pss = density::rollup_pss_kib(&read("smaps_rollup")?).unwrap_or(0);
    let guest = density::mapping_pss_kib(&read("smaps")?, vmm.guest_ram());
    let threads = density::status_field(&read("status")?, "Threads").unwrap_or(0);
    let thread_names = thread_names(pid);
    launch.stop();
    Ok(Footprint {
        pss_kib: pss.saturating_sub(guest),
        guest_pss_kib: guest,
        threads,
        thread_names,
    })
}

/// Each VMM's footprint with a parked guest, `rounds` times in alternating order: a series
/// per VMM and the subject's ratios against the peer, round by round; and each VMM's thread
/// names (of its last round) as JSON.
fn footprints(
    vmms: &[Vmm],
    images: &Images,
    rounds: usize,
) -> Result<(Outcome, serde_json::Value)> {
    let mut samples: Vec<Vec<Footprint>> = vec![Vec::new(); vmms.len()];
    for round in 0..rounds {
        for offset in 0..vmms.len() {
            let index = (round + offset) % vmms.len();
            samples[index].push(footprint(&vmms[index], images)?);
        }
    }
    let metrics = |samples: &[Footprint]| -> BTreeMap<Metric, Stat> {
        let of = |f: fn(&Footprint) -> f64| Stat::of(samples.iter().map(f).collect());
        [
            (Metric::PssMib, of(|s| s.pss_kib as f64 / 1024.0)),
            (Metric::GuestPssMib, of(|s| s.guest_pss_kib as f64 / 1024.0)),
            (Metric::Threads, of(|s| s.threads as f64)),
        ]
        .into_iter()
        .filter_map(|(metric, stat)| Some((metric, stat?)))
        .collect()
    };
    let mut outcome = Outcome::default();
    for (vmm, samples) in vmms.iter().zip(&samples) {
        outcome.series.push(Series {
            contestant: vmm.name(),
            role: vmm.role(),
            workload: RESIDENT.into(),
            metrics: metrics(samples),
        });
    }
    if let [subject, peer] = &samples[..] {
        for (metric, value) in [
            (
                Metric::PssMib,
                (|s: &Footprint| s.pss_kib) as fn(&Footprint) -> u64,
            ),
            (Metric::Threads, |s: &Footprint| s.threads),
        ] {
            let per_round: Vec<f64> = subject
                .iter()
                .zip(peer)
                .filter(|(_, p)| value(p) > 0)
                .map(|(s, p)| value(s) as f64 / value(p) as f64)
                .collect();
            if let Some(ratio) = Stat::of(per_round) {
                outcome.ratios.push(Ratio {
                    workload: RESIDENT.into(),
                    metric,
                    subject: vmms[0].name(),
                    against: vmms[1].name(),
                    against_role: Role::Peer,
                    ratio,
                    higher_is_better: false,
                });
            }
        }
    }
    let names: serde_json::Map<String, serde_json::Value> = vmms
        .iter()
        .zip(&samples)
        .filter_map(|(vmm, samples)| Some((vmm.name(), json!(samples.last()?.thread_names))))
        .collect();
    Ok((outcome, serde_json::Value::Object(names)))
}

/// Notes every run of both subcommands carries.
fn common_notes(vmms: &[Vmm], tcg_because: Option<&str>) -> Vec<String> {
    let mut notes = vec![
        "The guest is a PVH ELF written by hull-bench (perf/src/vmm/guest.rs): both VMMs load \
         it as their kernel and enter it in 32-bit protected mode at 1 MiB. hull-vmm runs \
         with --memory 16; QEMU microvm with 16 MiB of memfd RAM, -cpu qemu64, an i8042 and \
         -no-reboot (its default firmware runs before the guest)."
            .into(),
        "Times are taken by hull-bench from just before it spawns the VMM: the first serial \
         byte read on the VMM's stdout pipe, and the VMM process's exit after the guest's \
         i8042 reset. The limit runs the same code in this process with kvm-ioctls and no \
         devices."
            .into(),
        format!(
            "'{RESIDENT}': each VMM's PSS beside its guest RAM mapping, the PSS of that \
             mapping, and its threads, read from /proc while the guest halts (interrupts \
             off). Goal (issue 7): hull-vmm ≤ 5 MiB PSS beside guest RAM and threads = vCPUs \
             + 1 (= 2 here: one vCPU); measured, not asserted."
        ),
    ];
    if let Some(Vmm::Qemu(_, Accel::Tcg)) = vmms.get(1) {
        notes.push(format!(
            "QEMU runs under TCG: a guest did not run under its KVM here ({}). Ratios against \
             it compare different accelerators; the KVM limit is the fair reference.",
            tcg_because.unwrap_or("unknown")
        ));
    } else {
        notes.push(
            "Both VMMs run the guest on this host's /dev/kvm; where it is kvm_pvm (no vmx/svm, \
             shadow paging, see ARCHITECTURE.md) each exit is much dearer than on hardware \
             virtualization, and the exit figures are dominated by it."
                .into(),
        );
    }
    notes
}

/// The first line of `program --version`, or why there is none.
fn version(program: &Path) -> String {
    match Command::new(program).arg("--version").output() {
        Ok(output) => String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap_or("no version printed")
            .to_owned(),
        Err(err) => format!("--version failed: {err}"),
    }
}

fn params(vmms: &[Vmm], images: &Images) -> serde_json::Value {
    let commands: Vec<String> = vmms
        .iter()
        .map(|vmm| {
            let (program, args) = vmm.command_line(&images.dir.path().join("GUEST.elf"));
            format!("{} {}", program.display(), args.join(" "))
        })
        .collect();
    let versions: Vec<String> = vmms
        .iter()
        .map(|vmm| {
            let (program, _) = vmm.command_line(Path::new(""));
            format!("{}: {}", vmm.name(), version(&program))
        })
        .collect();
    json!({
        "guest_mib": GUEST_MIB,
        "vcpus": 1,
        "commands": commands,
        "versions": versions,
    })
}

/// The goal of a ratio, as a note: `metric` of `workload` against the peer.
fn goal_note(outcome: &Outcome, workload: &str, metric: Metric, goal: &str) -> Option<String> {
    let ratio = outcome
        .ratios
        .iter()
        .find(|r| r.workload == workload && r.metric == metric && r.against_role == Role::Peer)?;
    Some(format!(
        "Goal {goal}: hull-vmm / {} = {:.3} (median of the rounds; {:.3} to {:.3}) on '{workload}'.",
        ratio.against, ratio.ratio.median, ratio.ratio.min, ratio.ratio.max
    ))
}

/// The footprint goal as a note; `thread_names` is the JSON [`footprints`] returns.
fn footprint_note(outcome: &Outcome, thread_names: &serde_json::Value) -> Option<String> {
    let hull = outcome
        .series
        .iter()
        .find(|s| s.workload == RESIDENT && s.role == Role::Subject)?;
    let pss = hull.metrics.get(&Metric::PssMib)?.median;
    let threads = hull.metrics.get(&Metric::Threads)?.median;
    // KVM's own workers (kvm-nx-lpage-recovery) are listed among a VM process's threads by
    // the kernel, for every VMM alike: not the VMM's threads.
    let kvm_workers = thread_names[&hull.contestant]
        .as_array()
        .map_or(0, |names| {
            names
                .iter()
                .filter(|n| n.as_str().is_some_and(|n| n.starts_with("kvm-")))
                .count()
        }) as f64;
    let own = threads - kvm_workers;
    Some(format!(
        "Goal footprint: hull-vmm {pss:.2} MiB PSS beside guest RAM (goal ≤ 5: {}); {threads} \
         threads, of which {kvm_workers} KVM kernel worker, so {own} of its own (goal 2 = 1 \
         vCPU + 1: {}).",
        if pss <= 5.0 { "met" } else { "missed" },
        if own <= 2.0 { "met" } else { "missed" }
    ))
}

/// Runs `workloads` on each VMM booting `images` and on the in-process limit, in interleaved
/// rounds, then measures each VMM's footprint with the guest parked: the outcome with the
/// footprint's series and ratios, and each VMM's thread names.
fn measure_vmms<'i, W: Workload>(
    name: &str,
    plan: &Plan,
    vmms: &[Vmm],
    images: &'i Images,
    workloads: &[W],
) -> Result<(Outcome, serde_json::Value)>
where
    Process<'i>: Contestant<W>,
    Limit: Contestant<W>,
{
    let mut contestants: Vec<Box<dyn Contestant<W> + 'i>> = vmms
        .iter()
        .map(|vmm| {
            Box::new(Process {
                vmm: vmm.clone(),
                images,
            }) as Box<dyn Contestant<W> + 'i>
        })
        .collect();
    contestants.push(Box::new(Limit));
    let trials = (plan.rounds * contestants.len() * workloads.len()) as u64;
    let progress = Progress::new(name, trials);
    let mut outcome = measure::run(plan, workloads, &mut contestants, &progress)?;
    progress.step_message("footprint with the guest parked");
    let (resident, threads) = footprints(vmms, images, plan.rounds)?;
    drop(progress);
    outcome.series.extend(resident.series);
    outcome.ratios.extend(resident.ratios);
    Ok((outcome, threads))
}

/// `hull-bench vmm-start`.
pub fn run_start(options: &Options) -> Result<Run> {
    let mut run = Run::new(START, options.quick, options.plan, Machine::probe());
    let images = Images::new(START)?;
    let (vmms, tcg_because) = vmms(options, &images)?;
    let workloads = [StartTo::FirstOutput, StartTo::Exit];
    let (outcome, threads) = measure_vmms(START, &options.plan, &vmms, &images, &workloads)?;
    run.machine.finish();
    run.params = params(&vmms, &images);
    run.params["thread_names"] = threads;
    run.notes = common_notes(&vmms, tcg_because.as_deref());
    run.notes.push(
        "'exec to first guest output' is the guest's first instruction as far as the host can \
         see it (its first exit); 'exec to exit' adds the guest's reset and the VMM's \
         teardown. Latencies are per start (p50/p99 over the starts of a trial)."
            .into(),
    );
    run.notes.extend(goal_note(
        &outcome,
        &StartTo::FirstOutput.name(),
        Metric::P50Us,
        "start ≤ 0.2× QEMU's",
    ));
    run.notes
        .extend(footprint_note(&outcome, &run.params["thread_names"]));
    run.record(outcome);
    Ok(run)
}

/// `hull-bench vmm-exits`.
pub fn run_exits(options: &Options) -> Result<Run> {
    let mut run = Run::new(EXITS, options.quick, options.plan, Machine::probe());
    let images = Images::new(EXITS)?;
    let (vmms, tcg_because) = vmms(options, &images)?;
    let n = options.exits.max(1);
    let workloads = [
        ExitLoop {
            kind: ExitKind::Pio,
            n,
        },
        ExitLoop {
            kind: ExitKind::Mmio,
            n,
        },
    ];
    let (outcome, threads) = measure_vmms(EXITS, &options.plan, &vmms, &images, &workloads)?;
    run.machine.finish();
    let mut params = params(&vmms, &images);
    params["thread_names"] = threads;
    params["exits_per_guest_run"] = json!(n);
    params["exit_port"] = json!(format!("{:#x}", guest::EXIT_PORT));
    params["exit_mmio_addr"] = json!(format!("{:#x}", guest::EXIT_MMIO_ADDR));
    run.params = params;
    run.notes = common_notes(&vmms, tcg_because.as_deref());
    run.notes.push(format!(
        "ops/s = exits per second: each guest run makes {n} exits between two serial bytes, \
         timed on the host between their reads (the limit: between their KVM_RUN exits); a \
         trial repeats guest runs until its time is used. The port and the address belong to \
         no device: what is measured is the exit and the VMM's dispatch."
    ));
    run.notes.extend(goal_note(
        &outcome,
        &workloads[0].name(),
        Metric::OpsPerSec,
        "exit throughput ≥ QEMU's",
    ));
    run.notes
        .extend(footprint_note(&outcome, &run.params["thread_names"]));
    run.record(outcome);
    Ok(run)
}

/// The footprint table of a `vmm-start` or `vmm-exits` run, for `perf/RESULTS.md`.
pub fn markdown_footprint(run: &Run) -> String {
    use std::fmt::Write;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\nFootprint with the guest parked in `hlt` (median of the rounds; guest RAM apart):\n"
    );
    let _ = writeln!(
        md,
        "| VMM | PSS MiB beside guest RAM | guest RAM PSS MiB | threads | thread names |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for series in run.series.iter().filter(|s| s.workload == RESIDENT) {
        let cell = |metric: Metric| {
            series
                .metrics
                .get(&metric)
                .map_or_else(|| "–".to_owned(), |s| format!("{:.2}", s.median))
        };
        let names = run.params["thread_names"][&series.contestant]
            .as_array()
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {names} |",
            series.contestant,
            cell(Metric::PssMib),
            cell(Metric::GuestPssMib),
            cell(Metric::Threads)
        );
    }
    md
}

#[cfg(test)]
mod tests {
    /// A VMM whose serial output brings both marks in one read (what a fast release
    /// hull-vmm does) is read correctly: the second mark is found in what was read already,
    /// not waited for after the process ended.
    #[test]
    fn marks_read_together_are_both_found() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "printf AB"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        let stdout = child.stdout.take().expect("a pipe");
        let mut launch = super::Launch {
            name: "sh".into(),
            child,
            stdout,
            spawned: std::time::Instant::now(),
            // Read only when a mark is missed, for the message.
            log: std::path::PathBuf::from("/nonexistent/hull-bench-test.log"),
            seen: Vec::new(),
            arrivals: Vec::new(),
            consumed: 0,
        };
        // Let both bytes reach the pipe before the first read.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let a = launch.until(b'A').expect("A");
        let b = launch.until(b'B').expect("B is in the same read");
        assert!(b >= a);
        assert!(launch.exit().is_ok());
    }

    use super::*;

    #[test]
    fn qemu_boots_the_image_as_a_pvh_kernel_with_an_i8042_and_memfd_ram() {
        let (_, args) = Vmm::Qemu("q".into(), Accel::Kvm).command_line(Path::new("/g.elf"));
        let line = args.join(" ");
        for part in [
            "-M microvm,memory-backend=mem",
            "-accel kvm",
            "-kernel /g.elf",
            "-device i8042",
            "-no-reboot",
            "memory-backend-memfd,id=mem,size=16M",
            "-serial stdio",
        ] {
            assert!(line.contains(part), "{part} in {line}");
        }
        let (_, args) = Vmm::Qemu("q".into(), Accel::Tcg).command_line(Path::new("/g.elf"));
        assert!(args.join(" ").contains("-accel tcg"));
        assert_eq!(
            Vmm::Qemu("q".into(), Accel::Tcg).name(),
            "qemu microvm (TCG)"
        );
        let (_, args) = Vmm::Hull("h".into()).command_line(Path::new("/g.elf"));
        assert_eq!(args, ["--kernel", "/g.elf", "--memory", "16"]);
    }

    #[test]
    fn footprint_table_lists_each_vmm_with_its_figures_and_thread_names() {
        let mut run = Run::new(START, true, Plan::quick(), Machine::probe());
        let stat = |v: f64| Stat::of(vec![v, v]).expect("a stat");
        for (name, pss) in [("hull-vmm", 1.5), ("qemu microvm (KVM)", 30.0)] {
            run.series.push(Series {
                contestant: name.into(),
                role: Role::Peer,
                workload: RESIDENT.into(),
                metrics: [
                    (Metric::PssMib, stat(pss)),
                    (Metric::GuestPssMib, stat(0.25)),
                    (Metric::Threads, stat(3.0)),
                ]
                .into(),
            });
        }
        run.params = json!({"thread_names": {"hull-vmm": ["hull-vmm", "vm0-vcpu0"]}});
        let md = markdown_footprint(&run);
        assert!(
            md.contains("| hull-vmm | 1.50 | 0.25 | 3.00 | hull-vmm, vm0-vcpu0 |"),
            "{md}"
        );
        assert!(
            md.contains("| qemu microvm (KVM) | 30.00 | 0.25 | 3.00 |  |"),
            "{md}"
        );
        // The generic tables leave out the footprint's rows, which have none of their units.
        let report = crate::report::markdown(&run, None);
        assert!(report.contains(&md), "{report}");
        assert!(
            !report.contains("| guest parked in hlt | hull-vmm |"),
            "{report}"
        );
    }

    #[test]
    fn repeated_exit_loops_count_exits_over_loop_time() {
        let trial = repeat(Duration::ZERO, || Ok((2_000_000, 1000))).expect("trial");
        assert_eq!(trial.ops, 1000, "one run when the budget is used up");
        assert_eq!(trial.elapsed, Duration::from_millis(2));
        assert_eq!(trial.metrics()[&Metric::OpsPerSec], 500_000.0);
        let starts = repeat(Duration::ZERO, || Ok((3_000, 0))).expect("trial");
        assert_eq!((starts.ops, starts.p50_us), (1, Some(3.0)));
    }
}
