//! `hull-bench vsock`: stream throughput and connection set-up latency host⇄guest through
//! hull-vsock against rust-vmm's vhost-device-vsock (`cargo install vhost-device-vsock`,
//! [`VHOST_DEVICE_VSOCK_VERSION`], `make bench-deps`), in the same run, with a bare unix
//! socket pair on the host as the limit.
//!
//! Both backends speak the same hybrid vsock on the host side (Firecracker's convention): a
//! host program connects to the backend's unix socket and writes `CONNECT <port>\n`, answered
//! `OK <hostport>\n`; a guest connection to host port P goes to the unix socket `<uds>_P`.
//! Each backend serves its own QEMU TCG guest (microvm, `vhost-user-vsock-device`, memfd
//! shared memory, 1 vCPU), driven over its console like `fs` and `net` ([`crate::fs::vm`]);
//! its /init is perf/guest/vsock_bench.rs. The host side of each guest is a sink thread on
//! `<uds>_5001`.
//!
//! Every stream carries frames (a 4-byte little-endian length, at most 64 KiB, then the
//! payload; length 0 ends the stream) and the receiver answers the payload bytes it read (8
//! bytes, little-endian): vhost-device-vsock turns the host's half-close into a full shutdown
//! towards the guest and ignores the guest's half-close, so the end of the data cannot be an
//! end of stream. Workloads:
//! - stream guest→host: the guest sends 64 KiB frames to the host's sink for the trial's
//!   time (timed in the guest, up to the sink's count);
//! - stream host→guest: hull-bench connects with `CONNECT 5000` and sends 64 KiB frames to
//!   the guest's listener for the trial's time (timed on the host, up to the guest's count);
//! - connect host→guest: `CONNECT 5000` to `OK`, one connection after the other, each then
//!   closed after an empty stream and its count (timed on the host, per connection);
//! - connect guest→host: the guest's `connect()` to host port 5001, the same way (timed in
//!   the guest).
//!
//! Under TCG the guest's emulated CPU is most of every figure, so ratios near 1 say the
//! backends do not limit, not that they are equally fast; the backends' own CPU time per
//! operation (their process, all threads) is read on the host and is the sharper comparison.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::child::{find_program, RunDir, Server};
use crate::fs::vm::{self, Vm, VmConfig};
use crate::measure::{self, Contestant, Plan, Role, Trial};
use crate::progress::Progress;
use crate::results::{Machine, Run};
use crate::{Error, Result};

/// The subcommand's name.
pub const NAME: &str = "vsock";
/// The vhost-device-vsock release hull-bench compares with (`make bench-deps` installs it).
pub const VHOST_DEVICE_VSOCK_VERSION: &str = "0.3.0";
/// Guest port of the guest program's listener.
pub const GUEST_PORT: u32 = 5000;
/// Host port of the sink the guest connects to (the unix socket `<uds>_5001`).
pub const SINK_PORT: u32 = 5001;
/// Payload bytes per frame, and per write.
pub const CHUNK: usize = 64 << 10;
/// Bytes of a frame's length.
const HEADER: usize = 4;
/// The guest's context id.
const GUEST_CID: u32 = 3;
/// Guest RAM in MiB.
const GUEST_MIB: u32 = 256;
/// A bound on a TCG boot on a loaded machine, not a timing expectation.
const BOOT_BOUND: Duration = Duration::from_secs(300);
/// Boots of a guest before giving up on getting one whose clock is the TSC.
const BOOT_ATTEMPTS: u32 = 5;
/// Time a trial may take beyond its budget (the count at the end of a stream).
const TRIAL_SLACK: Duration = Duration::from_secs(120);
/// Longest `OK <port>\n` line read from a backend.
const MAX_OK_LINE: usize = 32;

/// Options of `hull-bench vsock`.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long and how often.
    pub plan: Plan,
    /// A smoke run.
    pub quick: bool,
    /// The hull-vsock binary; beside hull-bench or on PATH when `None`.
    pub hull_vsock: Option<PathBuf>,
    /// vhost-device-vsock; [`vhost_device_vsock_default`] when `None`.
    pub vhost_device_vsock: Option<PathBuf>,
}

/// What a workload does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// 64 KiB frames from the guest to the host's sink.
    GuestToHost,
    /// 64 KiB frames from the host to the guest's listener, through `CONNECT`.
    HostToGuest,
    /// Host-initiated connection set-up: `CONNECT` to `OK`.
    HostConnect,
    /// Guest-initiated connection set-up: `connect()` to host port [`SINK_PORT`].
    GuestConnect,
}

impl measure::Workload for Workload {
    fn name(&self) -> String {
        match self {
            Workload::GuestToHost => "stream guest→host".into(),
            Workload::HostToGuest => "stream host→guest".into(),
            Workload::HostConnect => "connect host→guest".into(),
            Workload::GuestConnect => "connect guest→host".into(),
        }
    }
}

/// The workloads of a run, in run order.
pub const WORKLOADS: [Workload; 4] = [
    Workload::GuestToHost,
    Workload::HostToGuest,
    Workload::HostConnect,
    Workload::GuestConnect,
];

/// Where `make bench-deps` installs vhost-device-vsock: $HULL_CACHE_DIR (default
/// ~/.cache/hull) `/vhost-device-vsock-<version>/bin/vhost-device-vsock`.
pub fn vhost_device_vsock_default() -> PathBuf {
    hull_tests::artifacts::cache_dir()
        .join(format!("vhost-device-vsock-{VHOST_DEVICE_VSOCK_VERSION}"))
        .join("bin/vhost-device-vsock")
}

/// The command that installs the peer where [`vhost_device_vsock_default`] looks.
pub fn vhost_device_vsock_install_command() -> String {
    let root = vhost_device_vsock_default()
        .parent()
        .and_then(Path::parent)
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    format!(
        "make bench-deps (or: cargo install vhost-device-vsock --version \
         {VHOST_DEVICE_VSOCK_VERSION} --locked --root {root}), or pass --vhost-device-vsock PATH"
    )
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// One 64 KiB frame, its length first.
fn data_frame() -> Vec<u8> {
    let mut frame = vec![0xa5u8; HEADER + CHUNK];
    frame[..HEADER].copy_from_slice(&(CHUNK as u32).to_le_bytes());
    frame
}

/// Reads frames from `stream` up to the end frame; the number of payload bytes. The lengths
/// come from the other side (a guest): one above [`CHUNK`] is refused.
pub fn receive_frames(stream: &mut impl Read) -> std::io::Result<u64> {
    let mut buffer = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let mut header = [0u8; HEADER];
        stream.read_exact(&mut header)?;
        let len = u32::from_le_bytes(header) as usize;
        if len == 0 {
            return Ok(total);
        }
        let payload = buffer.get_mut(..len).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a frame of {len} bytes, more than {CHUNK}"),
            )
        })?;
        stream.read_exact(payload)?;
        total += len as u64;
    }
}

/// Sends the end frame on `stream` and reads the receiver's count.
fn finish_stream(stream: &mut UnixStream) -> std::io::Result<u64> {
    stream.write_all(&[0u8; HEADER])?;
    let mut count = [0u8; 8];
    stream.read_exact(&mut count)?;
    Ok(u64::from_le_bytes(count))
}

/// The port of a backend's answer to `CONNECT` (`OK <port>\n`); `None` for anything else.
pub fn parse_ok_line(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    text.strip_suffix('\n')?.strip_prefix("OK ")?.parse().ok()
}

/// A unix listener served by one thread, one connection at a time, until dropped.
struct Listener {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Listens on `path` and hands every accepted connection to `serve`.
    fn start(path: &Path, serve: impl Fn(UnixStream) + Send + 'static) -> Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener =
            UnixListener::bind(path).map_err(io(format!("binding {}", path.display())))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(stream) = stream {
                    serve(stream);
                }
            }
        });
        Ok(Self {
            path: path.to_owned(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the blocking accept; the thread then sees the flag. A connection being
        // served ends with its peer (the guest or the backend goes first).
        let _ = UnixStream::connect(&self.path);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The sink: receives one framed stream per connection and answers its byte count.
fn sink(mut stream: UnixStream) {
    let _ = stream.set_read_timeout(Some(TRIAL_SLACK));
    // A peer that went away or sent a bad frame misses its count.
    if let Ok(total) = receive_frames(&mut stream) {
        let _ = stream.write_all(&total.to_le_bytes());
    }
}

/// The limit's stand-in for a backend and its guest: a unix socket that answers `CONNECT`
/// with `OK` and then receives like the guest's listener.
fn hybrid_stand_in(mut stream: UnixStream) {
    let _ = stream.set_read_timeout(Some(TRIAL_SLACK));
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < MAX_OK_LINE && !line.ends_with(b"\n") {
        match stream.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            _ => return,
        }
    }
    if !line.starts_with(b"CONNECT ") || stream.write_all(b"OK 1\n").is_err() {
        return;
    }
    sink(stream);
}

/// Connects to `uds` and asks for guest port `port`; the stream once `OK` came.
fn hybrid_connect(uds: &Path, port: u32, backend: &str) -> Result<UnixStream> {
    let mut stream = UnixStream::connect(uds).map_err(io(format!(
        "connecting to {backend}'s hybrid socket {}",
        uds.display()
    )))?;
    stream
        .set_read_timeout(Some(TRIAL_SLACK))
        .and_then(|()| stream.set_write_timeout(Some(TRIAL_SLACK)))
        .map_err(io("timeouts on the hybrid socket"))?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(io(format!("writing CONNECT {port} to {backend}")))?;
    // Byte by byte: what follows the line is the guest's, not to be read here.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < MAX_OK_LINE && !line.ends_with(b"\n") {
        match stream.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            Ok(_) => break,
            Err(e) => return Err(io(format!("reading {backend}'s answer to CONNECT"))(e)),
        }
    }
    match parse_ok_line(&line) {
        Some(_) => Ok(stream),
        None => Err(Error::Backend {
            backend: backend.to_owned(),
            what: format!(
                "answered {:?} to CONNECT {port}",
                String::from_utf8_lossy(&line)
            ),
        }),
    }
}

/// Host→guest stream through `uds` for about `budget`.
fn host_stream(uds: &Path, budget: Duration, backend: &str) -> Result<Trial> {
    let mut stream = hybrid_connect(uds, GUEST_PORT, backend)?;
    let frame = data_frame();
    let start = Instant::now();
    let mut writes = 0u64;
    while start.elapsed() < budget {
        stream
            .write_all(&frame)
            .map_err(io(format!("writing to the guest through {backend}")))?;
        writes += 1;
    }
    let bytes =
        finish_stream(&mut stream).map_err(io(format!("the guest's count through {backend}")))?;
    Ok(Trial {
        ops: writes,
        bytes,
        elapsed: start.elapsed(),
        p50_us: None,
        p99_us: None,
        cpu_us_per_op: None,
    })
}

/// Host-initiated connections through `uds`, one after the other, for about `budget`.
fn host_connects(uds: &Path, budget: Duration, backend: &str) -> Result<Trial> {
    let mut latencies = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget {
        let begun = Instant::now();
        let mut stream = hybrid_connect(uds, GUEST_PORT, backend)?;
        latencies.push(u64::try_from(begun.elapsed().as_nanos()).unwrap_or(u64::MAX));
        finish_stream(&mut stream).map_err(io(format!("an empty stream through {backend}")))?;
    }
    let ops = latencies.len() as u64;
    Ok(Trial::from_latencies(
        ops,
        0,
        start.elapsed(),
        &mut latencies,
    ))
}

/// A backend, its guest and the host's sink for that guest.
struct Guest {
    name: &'static str,
    role: Role,
    uds: PathBuf,
    // Dropped in this order: the guest (QEMU disconnects), the backend, the sink.
    vm: Option<Vm>,
    server: Option<Server>,
    sink: Option<Listener>,
}

impl Contestant<Workload> for Guest {
    fn name(&self) -> String {
        self.name.to_owned()
    }

    fn role(&self) -> Role {
        self.role
    }

    fn trial(&mut self, workload: &Workload, budget: Duration) -> Result<Trial> {
        let pid = self.server.as_ref().map(Server::pid);
        let before = pid.and_then(crate::child::cpu_time);
        let trial = match workload {
            Workload::HostToGuest => host_stream(&self.uds, budget, self.name)?,
            Workload::HostConnect => host_connects(&self.uds, budget, self.name)?,
            Workload::GuestToHost | Workload::GuestConnect => {
                let command = if *workload == Workload::GuestToHost {
                    "g2h"
                } else {
                    "connect"
                };
                let vm = self
                    .vm
                    .as_mut()
                    .ok_or_else(|| Error::Unexpected(format!("{}'s guest is gone", self.name)))?;
                let line = format!("run {command} {} 0", budget.as_millis().max(1));
                let answer = vm.command(&line, budget + TRIAL_SLACK)?;
                crate::net::parse_result(&answer).ok_or_else(|| Error::Backend {
                    backend: self.name.to_owned(),
                    what: format!("the guest answered '{answer}' to '{line}'"),
                })?
            }
        };
        let after = pid.and_then(crate::child::cpu_time);
        Ok(match (before, after) {
            (Some(before), Some(after)) => trial.with_cpu(after.saturating_sub(before)),
            _ => trial,
        })
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(vm) = self.vm.take() {
            vm.quit(Duration::from_secs(30));
        }
        self.server.take();
        self.sink.take();
    }
}

/// The limit: the same host-side operations on bare unix sockets, no backend, no guest.
struct UnixPair {
    hybrid: PathBuf,
    sink: PathBuf,
    _listeners: [Listener; 2],
}

impl UnixPair {
    fn new(dir: &Path) -> Result<Self> {
        let hybrid = dir.join("limit.sock");
        let sink_path = dir.join(format!("limit.sock_{SINK_PORT}"));
        let listeners = [
            Listener::start(&hybrid, hybrid_stand_in)?,
            Listener::start(&sink_path, sink)?,
        ];
        Ok(Self {
            hybrid,
            sink: sink_path,
            _listeners: listeners,
        })
    }

    /// What the guest program does, on the host.
    fn guest_side(&self, workload: Workload, budget: Duration) -> Result<Trial> {
        let connect = || {
            UnixStream::connect(&self.sink).map_err(io(format!(
                "connecting to the limit's sink {}",
                self.sink.display()
            )))
        };
        let mut latencies = Vec::new();
        let (mut ops, mut bytes) = (0u64, 0u64);
        let start = Instant::now();
        if workload == Workload::GuestToHost {
            let mut stream = connect()?;
            let frame = data_frame();
            while start.elapsed() < budget {
                stream
                    .write_all(&frame)
                    .map_err(io("writing to the limit's sink"))?;
                ops += 1;
            }
            bytes = finish_stream(&mut stream).map_err(io("the limit's sink count"))?;
        } else {
            while start.elapsed() < budget {
                let begun = Instant::now();
                let mut stream = connect()?;
                latencies.push(u64::try_from(begun.elapsed().as_nanos()).unwrap_or(u64::MAX));
                finish_stream(&mut stream).map_err(io("the limit's sink count"))?;
                ops += 1;
            }
        }
        Ok(Trial::from_latencies(
            ops,
            bytes,
            start.elapsed(),
            &mut latencies,
        ))
    }
}

impl Contestant<Workload> for UnixPair {
    fn name(&self) -> String {
        "unix socket pair".into()
    }

    fn role(&self) -> Role {
        Role::Limit
    }

    fn trial(&mut self, workload: &Workload, budget: Duration) -> Result<Trial> {
        match workload {
            Workload::HostToGuest => host_stream(&self.hybrid, budget, "the limit"),
            Workload::HostConnect => host_connects(&self.hybrid, budget, "the limit"),
            Workload::GuestToHost | Workload::GuestConnect => self.guest_side(*workload, budget),
        }
    }
}

/// How one backend is started.
struct BackendSpec {
    name: &'static str,
    role: Role,
    program: PathBuf,
    args: Vec<String>,
    socket: PathBuf,
    uds: PathBuf,
}

/// Starts the backend and boots its guest, again (with a new backend: both exit with their
/// frontend) while the guest's clock is not the TSC.
fn start_guest(spec: &BackendSpec, config: &VmConfig, dir: &Path) -> Result<Guest> {
    let devices = [
        "-chardev".to_owned(),
        format!("socket,id=vsock,path={}", spec.socket.display()),
        "-device".to_owned(),
        "vhost-user-vsock-device,chardev=vsock".to_owned(),
    ];
    let log = dir.join(format!("{}.log", spec.name));
    let sink = Listener::start(
        &PathBuf::from(format!("{}_{SINK_PORT}", spec.uds.display())),
        sink,
    )?;
    let mut attempt = 1;
    loop {
        // vhost-device-vsock leaves its sockets behind when it stops.
        let _ = std::fs::remove_file(&spec.socket);
        let _ = std::fs::remove_file(&spec.uds);
        let server = Server::start(spec.name, &spec.program, &spec.args, &spec.socket, &log)?;
        match Vm::boot_with(spec.name, config, &[], &devices, "", BOOT_BOUND) {
            Ok(vm) => {
                return Ok(Guest {
                    name: spec.name,
                    role: spec.role,
                    uds: spec.uds.clone(),
                    vm: Some(vm),
                    server: Some(server),
                    sink: Some(sink),
                })
            }
            Err(Error::Unexpected(why)) if attempt < BOOT_ATTEMPTS => {
                eprintln!("{why}: booting it again");
                attempt += 1;
            }
            Err(Error::Backend { backend, what }) => {
                return Err(Error::Backend {
                    backend,
                    what: format!("{what}\n{}'s log:\n{}", spec.name, server.log_text()),
                })
            }
            Err(other) => return Err(other),
        }
    }
}

/// The first line `program --version` prints, for the record.
fn version(program: &Path) -> String {
    std::process::Command::new(program)
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

/// Runs the benchmark and returns its results.
pub fn run(options: &Options) -> Result<Run> {
    let mut run = Run::new(NAME, options.quick, options.plan, Machine::probe());
    let peer = match &options.vhost_device_vsock {
        Some(path) => find_program(
            "vhost-device-vsock",
            Some(path),
            &vhost_device_vsock_install_command(),
        )?,
        None => {
            let path = vhost_device_vsock_default();
            if !path.is_file() {
                return Err(Error::MissingProgram {
                    name: path.display().to_string(),
                    fix: vhost_device_vsock_install_command(),
                });
            }
            path
        }
    };
    let hull_vsock = find_program(
        "hull-vsock",
        options.hull_vsock.as_deref(),
        "build it with 'cargo build --release -p hull-devices --bin hull-vsock' or pass \
         --hull-vsock PATH",
    )?;
    let qemu = find_program(
        "qemu-system-x86_64",
        None,
        "apt-get install qemu-system-x86",
    )?;
    let kernel = vm::kernel()?;
    let dir = RunDir::new(&std::env::temp_dir(), NAME)?;
    let initrd = vm::initrd_of("vsock_bench.rs", dir.path())?;
    let accel = hull_tests::qemu::accelerator().to_owned();
    let config = VmConfig {
        qemu: qemu.clone(),
        kernel,
        initrd,
        socket: PathBuf::new(),
        memory_mib: GUEST_MIB,
        accel: accel.clone(),
    };

    let path = |name: &str| dir.path().join(name);
    let hull = BackendSpec {
        name: "hull-vsock",
        role: Role::Subject,
        program: hull_vsock.clone(),
        args: vec![
            "--socket".into(),
            path("hull-vsock.vhost.sock").display().to_string(),
            "--uds".into(),
            path("hull-vsock.sock").display().to_string(),
            "--guest-cid".into(),
            GUEST_CID.to_string(),
        ],
        socket: path("hull-vsock.vhost.sock"),
        uds: path("hull-vsock.sock"),
    };
    let upstream = BackendSpec {
        name: "vhost-device-vsock",
        role: Role::Peer,
        program: peer.clone(),
        args: vec![
            "--guest-cid".into(),
            GUEST_CID.to_string(),
            "--socket".into(),
            path("vhost-device-vsock.vhost.sock").display().to_string(),
            "--uds-path".into(),
            path("vhost-device-vsock.sock").display().to_string(),
        ],
        socket: path("vhost-device-vsock.vhost.sock"),
        uds: path("vhost-device-vsock.sock"),
    };
    let mut contestants: Vec<Box<dyn Contestant<Workload>>> = Vec::new();
    for spec in [&hull, &upstream] {
        contestants.push(Box::new(start_guest(spec, &config, dir.path())?));
    }
    contestants.push(Box::new(UnixPair::new(dir.path())?));

    let trials = (options.plan.rounds * contestants.len() * WORKLOADS.len()) as u64;
    let progress = Progress::new(NAME, trials);
    let outcome = measure::run(&options.plan, &WORKLOADS, &mut contestants, &progress);
    drop(progress);
    drop(contestants);
    drop(dir);
    let outcome = outcome?;

    run.machine.finish();
    run.variant = format!("{accel} guest, 1 vCPU, 64 KiB frames");
    run.params = json!({
        "accel": accel,
        "guest_memory_mib": GUEST_MIB,
        "guest_vcpus": 1,
        "guest_cid": GUEST_CID,
        "frame_payload_bytes": CHUNK,
        "hull_vsock": version(&hull_vsock),
        "vhost_device_vsock": version(&peer),
        "command_lines": {
            "hull-vsock": [hull_vsock.display().to_string(), hull.args],
            "vhost-device-vsock": [peer.display().to_string(), upstream.args],
        },
        "qemu": version(&qemu),
    });
    run.notes = vec![
        format!(
            "Each backend serves its own QEMU {accel} guest (microvm, vhost-user-vsock-device, \
             memfd shared memory, 1 vCPU, {GUEST_MIB} MiB, CID {GUEST_CID}); both speak hybrid \
             vsock on the host side (CONNECT <port> / OK, guest connections to port P on \
             <uds>_P). A TCG guest: its emulated CPU is most of every figure, which pulls the \
             ratios towards 1; CPU µs/op is the backend process's own time (all threads) per \
             operation, clock ticks of 10 ms."
        ),
        "Streams carry 64 KiB frames (4-byte length first; an empty frame ends them) and the \
         receiver answers its byte count: vhost-device-vsock turns a host half-close into a \
         full shutdown and ignores the guest's. stream guest→host: timed in the guest up to \
         the host sink's count; stream host→guest: timed on the host up to the guest's count. \
         ops/s is frames per second."
            .into(),
        "connect host→guest: CONNECT 5000 to OK on the backend's unix socket, timed on the \
         host; connect guest→host: the guest's connect() to host port 5001, timed in the \
         guest; each connection then carries an empty stream and its count before the next. \
         Limit: the same host-side operations on bare unix sockets (a stand-in answers \
         CONNECT), no backend, no VM."
            .into(),
    ];
    run.record(outcome);
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ok_lines_name_a_port() {
        assert_eq!(parse_ok_line(b"OK 1073741824\n"), Some(1_073_741_824));
        for line in [
            &b"OK\n"[..],
            b"OK 12",
            b"ok 12\n",
            b"OK -1\n",
            b"OK 99999999999\n",
            b"ERR\n",
            b"",
            b"OK \xff\n",
        ] {
            assert_eq!(parse_ok_line(line), None, "{line:?}");
        }
    }

    #[test]
    fn frames_are_counted_up_to_the_end_frame() {
        let mut bytes = Vec::new();
        for len in [3u32, 0] {
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend(std::iter::repeat_n(7u8, len as usize));
        }
        bytes.extend_from_slice(b"after the end");
        assert_eq!(receive_frames(&mut bytes.as_slice()).unwrap(), 3);
    }

    #[test]
    fn an_oversized_or_cut_frame_is_an_error() {
        let mut oversized = ((CHUNK + 1) as u32).to_le_bytes().to_vec();
        oversized.extend(vec![0u8; CHUNK + 1]);
        let err = receive_frames(&mut oversized.as_slice()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        let mut cut = 10u32.to_le_bytes().to_vec();
        cut.extend_from_slice(b"short");
        let err = receive_frames(&mut cut.as_slice()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    /// The limit end to end: its sockets carry both streams and both connection loops, and
    /// leave nothing behind.
    #[test]
    fn the_unix_socket_limit_streams_and_connects() {
        let dir = RunDir::new(&std::env::temp_dir(), "vsock-unit").unwrap();
        let mut limit = UnixPair::new(dir.path()).unwrap();
        for workload in WORKLOADS {
            let trial = limit.trial(&workload, Duration::from_millis(30)).unwrap();
            assert!(trial.ops > 0, "{workload:?}: {trial:?}");
            match workload {
                Workload::GuestToHost | Workload::HostToGuest => {
                    assert_eq!(trial.bytes, trial.ops * CHUNK as u64, "every byte arrived")
                }
                Workload::HostConnect | Workload::GuestConnect => {
                    assert!(
                        trial.p50_us.is_some() && trial.p99_us.is_some(),
                        "{trial:?}"
                    )
                }
            }
        }
        drop(limit);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "sockets left: {left:?}");
    }

    proptest! {
        /// Whatever a guest sends, the receiver returns a count or an error, never panics,
        /// and never counts more than was sent.
        #[test]
        fn arbitrary_streams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(count) = receive_frames(&mut bytes.as_slice()) {
                prop_assert!(count as usize <= bytes.len());
            }
        }

        #[test]
        fn arbitrary_ok_lines_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if parse_ok_line(&bytes).is_some() {
                prop_assert!(bytes.starts_with(b"OK ") && bytes.ends_with(b"\n"));
            }
        }
    }
}
