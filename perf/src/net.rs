//! `hull-bench net`: TCP stream throughput and UDP request/response packet rate of a guest's
//! virtio-net NIC served by hull-net (vhost-user-net on a tap) against QEMU's built-in
//! virtio-net on a tap netdev (what the shim uses with `network.backend = "qemu"`), in the
//! same run, with host veth to veth as the limit.
//!
//! Set-up ([`Lab`]): one network namespace holds the host ends: the tap of hull-net
//! (`hbnet0`, 169.254.10.1/24), the tap of QEMU's netdev (`hbqemu0`, 169.254.11.1/24) and a
//! veth (`hbv0`, 169.254.12.1/24) whose peer (`hbv1`, .2) is in a second namespace; the
//! sinks (a TCP sink on [`TCP_PORT`] that answers the byte count it read, a UDP echo on
//! [`UDP_PORT`]) listen there on every address. Both taps are made the same way (vnet_hdr,
//! one queue, MTU 1500, offloads as the guest negotiates them), hull-net's by hull-net and
//! QEMU's by QEMU, each in that namespace (`ip netns exec`). Each backend serves its own QEMU
//! TCG guest (microvm, `virtio-net-device`, 1 vCPU) whose /init is perf/guest/net_bench.rs,
//! driven over its console like `fs` ([`crate::fs::vm`]); the limit runs the same client
//! code on a host thread in the veth's second namespace.
//!
//! Under TCG the guest's CPU, not the backend, bounds both workloads: ratios near 1 say the
//! backends do not limit, not that they are equally fast. The hull-net process's CPU time per
//! operation is recorded (QEMU's own virtio-net runs inside QEMU with the emulated guest, so
//! there is no separate process to measure for the peer).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
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
pub const NAME: &str = "net";
/// Port of the TCP sink in the lab namespace.
pub const TCP_PORT: u16 = 7001;
/// Port of the UDP echo in the lab namespace.
pub const UDP_PORT: u16 = 7002;
/// Port of the TCP source in the lab namespace.
pub const SOURCE_PORT: u16 = 7003;
/// Longest stream the TCP source sends, whatever a client asks.
const SOURCE_MAX: Duration = Duration::from_secs(600);
/// Bytes per TCP write, as the guest writes them.
const CHUNK: usize = 64 << 10;
/// UDP payload bytes, as the guest sends them.
const DATAGRAM: usize = 64;
/// Guest RAM in MiB.
const GUEST_MIB: u32 = 256;
/// A bound on a TCG boot on a loaded machine, not a timing expectation.
const BOOT_BOUND: Duration = Duration::from_secs(300);
/// Boots of a guest before giving up on getting one whose clock is the TSC.
const BOOT_ATTEMPTS: u32 = 5;
/// Time a trial may take beyond its budget (the TCP sink's answer, a lost datagram).
const TRIAL_SLACK: Duration = Duration::from_secs(120);
/// How often a sink looks at its stop flag.
const POLL: Duration = Duration::from_millis(50);

/// Options of `hull-bench net`.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long and how often.
    pub plan: Plan,
    /// A smoke run.
    pub quick: bool,
    /// The hull-net binary; beside hull-bench or on PATH when `None`.
    pub hull_net: Option<PathBuf>,
}

/// What a workload does; see perf/guest/net_bench.rs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// One TCP stream of 64 KiB writes to the host's sink (the backend's transmit path).
    TcpStream,
    /// One TCP stream of 64 KiB writes from the host's source (the backend's receive path).
    TcpRx,
    /// 64-byte UDP request/response with the host's echo, one in flight.
    UdpRr,
}

impl measure::Workload for Workload {
    fn name(&self) -> String {
        match self {
            Workload::TcpStream => "tcp stream guest→host".into(),
            Workload::TcpRx => "tcp stream host→guest".into(),
            Workload::UdpRr => format!("udp {DATAGRAM}B request/response"),
        }
    }
}

impl Workload {
    /// The guest program's name of the workload.
    fn command(self) -> &'static str {
        match self {
            Workload::TcpStream => "tcp",
            Workload::TcpRx => "tcp_rx",
            Workload::UdpRr => "udp_rr",
        }
    }
}

/// The workloads of a run, in run order.
pub const WORKLOADS: [Workload; 3] = [Workload::TcpStream, Workload::TcpRx, Workload::UdpRr];

/// Runs `f` on a new thread that has entered the network namespace at `netns`.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<JoinHandle<Result<T>>> {
    let file = std::fs::File::open(netns).map_err(|source| Error::Io {
        what: format!("opening network namespace {}", netns.display()),
        source,
    })?;
    let path = netns.to_owned();
    Ok(std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|errno| {
            Error::Io {
                what: format!("entering network namespace {}", path.display()),
                source: errno.into(),
            }
        })?;
        f()
    }))
}

/// What a thread of [`in_netns`] returned, once it has ended.
fn joined<T>(thread: JoinHandle<Result<T>>) -> Result<T> {
    thread
        .join()
        .map_err(|_| Error::Unexpected("a thread in the lab's namespace panicked".into()))?
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The TCP sink: reads each connection to its end, then answers the byte count.
fn tcp_sink(listener: TcpListener, stop: &AtomicBool) -> Result<()> {
    listener
        .set_nonblocking(true)
        .map_err(io("the TCP sink's listener"))?;
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream
                    .set_nonblocking(false)
                    .map_err(io("a TCP sink connection"))?;
                let mut buffer = vec![0u8; 256 << 10];
                let mut total = 0u64;
                loop {
                    match stream.read(&mut buffer) {
                        Ok(0) => break,
                        Ok(n) => total += n as u64,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                // A client that went away meanwhile just misses its count.
                let _ = stream.write_all(&total.to_le_bytes());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) => return Err(io("accepting on the TCP sink")(e)),
        }
    }
    Ok(())
}

/// The TCP source: reads how long to send (milliseconds, 8 bytes little-endian, at most
/// [`SOURCE_MAX`]), writes 64 KiB chunks for that long, closes.
fn tcp_source(listener: TcpListener, stop: &AtomicBool) -> Result<()> {
    listener
        .set_nonblocking(true)
        .map_err(io("the TCP source's listener"))?;
    let chunk = vec![0xa5u8; CHUNK];
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream
                    .set_nonblocking(false)
                    .map_err(io("a TCP source connection"))?;
                let mut asked = [0u8; 8];
                if stream.read_exact(&mut asked).is_err() {
                    continue;
                }
                let budget = Duration::from_millis(u64::from_le_bytes(asked)).min(SOURCE_MAX);
                let start = Instant::now();
                // A client that went away ends its stream early.
                while start.elapsed() < budget && !stop.load(Ordering::Relaxed) {
                    if stream.write_all(&chunk).is_err() {
                        break;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) => return Err(io("accepting on the TCP source")(e)),
        }
    }
    Ok(())
}

/// The UDP echo: sends every datagram back to where it came from.
fn udp_echo(socket: UdpSocket, stop: &AtomicBool) -> Result<()> {
    socket
        .set_read_timeout(Some(POLL))
        .map_err(io("the UDP echo's socket"))?;
    let mut buffer = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buffer) {
            Ok((n, from)) => {
                let _ = socket.send_to(&buffer[..n], from);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(io("receiving on the UDP echo")(e)),
        }
    }
    Ok(())
}

/// The host side of the run: two network namespaces (deleted on drop), the veth between them
/// and the sinks (stopped on drop).
pub struct Lab {
    stop: Arc<AtomicBool>,
    sinks: Vec<JoinHandle<Result<()>>>,
    // Dropped after the sinks are joined: a thread in a namespace keeps it alive.
    /// Where the limit's client runs: the veth's far end.
    pub peer: hull_tests::netns::Netns,
    /// Where the taps, the sinks, hull-net and both QEMUs are.
    pub host: hull_tests::netns::Netns,
}

/// The lab namespace's address on the subnet numbered `subnet` (10, 11, 12).
fn host_ip(subnet: u8) -> Ipv4Addr {
    Ipv4Addr::new(169, 254, subnet, 1)
}

/// The far end's (guest or veth peer) address on subnet `subnet`.
fn far_ip(subnet: u8) -> Ipv4Addr {
    Ipv4Addr::new(169, 254, subnet, 2)
}

/// Subnet of hull-net's tap.
const HULL_NET_SUBNET: u8 = 10;
/// Subnet of QEMU's tap.
const QEMU_SUBNET: u8 = 11;
/// Subnet of the veth pair.
const VETH_SUBNET: u8 = 12;

fn ip_in(netns: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    hull_tests::netns::run("ip", &all)
        .map(drop)
        .map_err(|why| Error::Unexpected(format!("ip {}: {why}", all.join(" "))))
}

impl Lab {
    /// Makes the namespaces and the veth, and starts the sinks.
    pub fn new() -> Result<Self> {
        let host = hull_tests::netns::Netns::new("bench-net");
        let peer = hull_tests::netns::Netns::new("bench-net-peer");
        let mut lab = Self {
            stop: Arc::new(AtomicBool::new(false)),
            sinks: Vec::new(),
            peer,
            host,
        };
        let (host_ns, peer_ns) = (lab.host.name().to_owned(), lab.peer.name().to_owned());
        ip_in(
            &host_ns,
            &[
                "link", "add", "hbv0", "type", "veth", "peer", "name", "hbv1", "netns", &peer_ns,
            ],
        )?;
        ip_in(&host_ns, &["link", "set", "lo", "up"])?;
        ip_in(&peer_ns, &["link", "set", "lo", "up"])?;
        for (ns, dev, addr) in [
            (&host_ns, "hbv0", host_ip(VETH_SUBNET)),
            (&peer_ns, "hbv1", far_ip(VETH_SUBNET)),
        ] {
            ip_in(ns, &["addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip_in(ns, &["link", "set", dev, "up"])?;
        }
        // The sockets are bound in the namespace before this returns (a client connecting
        // right after found no listener when the binding was left to the serving threads:
        // CI's "connection refused"); a socket stays in the namespace it was made in, so the
        // threads that serve them need not enter it.
        let path = lab.host.path();
        let (sink, source, echo) = joined(in_netns(&path, || {
            let sink = TcpListener::bind((Ipv4Addr::UNSPECIFIED, TCP_PORT))
                .map_err(io(format!("binding the TCP sink on port {TCP_PORT}")))?;
            let source = TcpListener::bind((Ipv4Addr::UNSPECIFIED, SOURCE_PORT))
                .map_err(io(format!("binding the TCP source on port {SOURCE_PORT}")))?;
            let echo = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, UDP_PORT))
                .map_err(io(format!("binding the UDP echo on port {UDP_PORT}")))?;
            Ok((sink, source, echo))
        })?)?;
        let stop = Arc::clone(&lab.stop);
        lab.sinks
            .push(std::thread::spawn(move || tcp_sink(sink, &stop)));
        let stop = Arc::clone(&lab.stop);
        lab.sinks
            .push(std::thread::spawn(move || tcp_source(source, &stop)));
        let stop = Arc::clone(&lab.stop);
        lab.sinks
            .push(std::thread::spawn(move || udp_echo(echo, &stop)));
        Ok(lab)
    }

    /// Gives the tap `name` the lab's address on `subnet` and brings it up.
    fn address_tap(&self, name: &str, subnet: u8) -> Result<()> {
        let ns = self.host.name();
        ip_in(
            ns,
            &[
                "addr",
                "add",
                &format!("{}/24", host_ip(subnet)),
                "dev",
                name,
            ],
        )?;
        ip_in(ns, &["link", "set", name, "up"])
    }

    /// Whether the sinks still run (one that failed has ended).
    fn sinks_alive(&self) -> bool {
        self.sinks.iter().all(|sink| !sink.is_finished())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for sink in self.sinks.drain(..) {
            if let Ok(Err(err)) = sink.join() {
                eprintln!("hull-bench net: a sink failed: {err}");
            }
        }
    }
}

/// One TCP stream to `host`'s sink for about `budget`, as the guest runs it.
fn tcp_client(host: Ipv4Addr, budget: Duration) -> Result<Trial> {
    let mut stream = TcpStream::connect(SocketAddrV4::new(host, TCP_PORT))
        .map_err(io(format!("connecting to the TCP sink on {host}")))?;
    let chunk = vec![0x5au8; CHUNK];
    let start = Instant::now();
    let mut writes = 0u64;
    while start.elapsed() < budget {
        stream
            .write_all(&chunk)
            .map_err(io("writing to the sink"))?;
        writes += 1;
    }
    stream
        .shutdown(Shutdown::Write)
        .map_err(io("half-closing the stream"))?;
    let mut ack = [0u8; 8];
    stream
        .read_exact(&mut ack)
        .map_err(io("reading the sink's count"))?;
    Ok(Trial {
        ops: writes,
        bytes: u64::from_le_bytes(ack),
        elapsed: start.elapsed(),
        p50_us: None,
        p99_us: None,
        cpu_us_per_op: None,
    })
}

/// One TCP stream from `host`'s source for about `budget`, as the guest runs it.
fn tcp_rx_client(host: Ipv4Addr, budget: Duration) -> Result<Trial> {
    let mut stream = TcpStream::connect(SocketAddrV4::new(host, SOURCE_PORT))
        .map_err(io(format!("connecting to the TCP source on {host}")))?;
    let start = Instant::now();
    let budget_ms = u64::try_from(budget.as_millis()).unwrap_or(u64::MAX);
    stream
        .write_all(&budget_ms.to_le_bytes())
        .map_err(io("asking the source for a stream"))?;
    let mut buffer = vec![0u8; CHUNK];
    let (mut reads, mut bytes) = (0u64, 0u64);
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                reads += 1;
                bytes += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io("reading the source's stream")(e)),
        }
    }
    Ok(Trial {
        ops: reads,
        bytes,
        elapsed: start.elapsed(),
        p50_us: None,
        p99_us: None,
        cpu_us_per_op: None,
    })
}

/// UDP request/response with `host`'s echo for about `budget`, as the guest runs it.
fn udp_client(host: Ipv4Addr, budget: Duration) -> Result<Trial> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(io("a UDP socket"))?;
    socket
        .connect(SocketAddrV4::new(host, UDP_PORT))
        .map_err(io(format!("connecting to the UDP echo on {host}")))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(io("SO_RCVTIMEO"))?;
    let mut payload = [0u8; DATAGRAM];
    let mut answer = [0u8; DATAGRAM * 2];
    let mut latencies = Vec::new();
    let start = Instant::now();
    let mut seq = 0u64;
    while start.elapsed() < budget {
        seq += 1;
        payload[..8].copy_from_slice(&seq.to_le_bytes());
        let sent = Instant::now();
        socket.send(&payload).map_err(io("sending a datagram"))?;
        loop {
            match socket.recv(&mut answer) {
                Ok(n) if n == DATAGRAM && answer[..8] == payload[..8] => {
                    latencies.push(u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX));
                    break;
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => return Err(io("receiving an echo")(e)),
            }
        }
    }
    let elapsed = start.elapsed();
    let ops = latencies.len() as u64;
    Ok(Trial::from_latencies(
        ops,
        ops * DATAGRAM as u64,
        elapsed,
        &mut latencies,
    ))
}

/// A guest on one of the two backends.
struct Guest {
    name: &'static str,
    role: Role,
    // The guest goes before hull-net: QEMU disconnects, then hull-net exits.
    vm: Option<Vm>,
    hull_net: Option<Server>,
}

impl Contestant<Workload> for Guest {
    fn name(&self) -> String {
        self.name.to_owned()
    }

    fn role(&self) -> Role {
        self.role
    }

    fn trial(&mut self, workload: &Workload, budget: Duration) -> Result<Trial> {
        let vm = self
            .vm
            .as_mut()
            .ok_or_else(|| Error::Unexpected(format!("{}'s guest is gone", self.name)))?;
        let line = format!("run {} {} 0", workload.command(), budget.as_millis().max(1));
        let pid = self.hull_net.as_ref().map(Server::pid);
        let before = pid.and_then(crate::child::cpu_time);
        let answer = vm.command(&line, budget + TRIAL_SLACK)?;
        let after = pid.and_then(crate::child::cpu_time);
        let trial = parse_result(&answer).ok_or_else(|| Error::Backend {
            backend: self.name.to_owned(),
            what: format!("the guest answered '{answer}' to '{line}'"),
        })?;
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
    }
}

/// The limit: the same client on the host, across the veth pair.
struct Veth {
    peer: PathBuf,
}

impl Contestant<Workload> for Veth {
    fn name(&self) -> String {
        "host veth".into()
    }

    fn role(&self) -> Role {
        Role::Limit
    }

    fn trial(&mut self, workload: &Workload, budget: Duration) -> Result<Trial> {
        let host = host_ip(VETH_SUBNET);
        let workload = *workload;
        in_netns(&self.peer, move || match workload {
            Workload::TcpStream => tcp_client(host, budget),
            Workload::TcpRx => tcp_rx_client(host, budget),
            Workload::UdpRr => udp_client(host, budget),
        })?
        .join()
        .map_err(|_| Error::Unexpected("the veth client thread panicked".into()))?
    }
}

/// A trial from the guest's `result OPS BYTES ELAPSED_NS P50_NS P99_NS` (percentiles 0 when
/// the workload has none); `None` for anything else.
pub(crate) fn parse_result(answer: &str) -> Option<Trial> {
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
    let us = |ns: u64| (ns > 0).then(|| ns as f64 / 1000.0);
    Some(Trial {
        ops,
        bytes,
        elapsed: Duration::from_nanos(elapsed_ns),
        p50_us: us(p50_ns),
        p99_us: us(p99_ns),
        cpu_us_per_op: None,
    })
}

/// The kernel command line words that tell the guest program its addresses on `subnet`.
fn guest_cmdline(subnet: u8) -> String {
    format!(
        "HULL_NET_GUEST_IP={} HULL_NET_HOST_IP={}",
        far_ip(subnet),
        host_ip(subnet)
    )
}

/// Boots a guest, again (with a new hull-net, which exits with its frontend) while its clock
/// is not the TSC.
fn boot(
    name: &'static str,
    config: &VmConfig,
    prefix: &[String],
    devices: &[String],
    subnet: u8,
    mut start_backend: impl FnMut() -> Result<Option<Server>>,
) -> Result<(Vm, Option<Server>)> {
    let mut attempt = 1;
    loop {
        let backend = start_backend()?;
        match Vm::boot_with(
            name,
            config,
            prefix,
            devices,
            &guest_cmdline(subnet),
            BOOT_BOUND,
        ) {
            Ok(vm) => return Ok((vm, backend)),
            Err(Error::Unexpected(why)) if attempt < BOOT_ATTEMPTS => {
                eprintln!("{why}: booting it again");
                attempt += 1;
            }
            Err(Error::Backend { backend: who, what }) => {
                let log = backend.map(|b| b.log_text()).unwrap_or_default();
                return Err(Error::Backend {
                    backend: who,
                    what: format!("{what}\nhull-net's log:\n{log}"),
                });
            }
            Err(other) => return Err(other),
        }
    }
}

/// Runs the benchmark and returns its results.
pub fn run(options: &Options) -> Result<Run> {
    let mut run = Run::new(NAME, options.quick, options.plan, Machine::probe());
    for (name, fix) in [
        ("ip", "apt-get install iproute2"),
        ("qemu-system-x86_64", "apt-get install qemu-system-x86"),
    ] {
        find_program(name, None, fix)?;
    }
    let hull_net = find_program(
        "hull-net",
        options.hull_net.as_deref(),
        "build it with 'cargo build --release -p hull-devices --bin hull-net' or pass \
         --hull-net PATH",
    )?;
    let qemu = find_program(
        "qemu-system-x86_64",
        None,
        "apt-get install qemu-system-x86",
    )?;
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::MissingProgram {
            name: "root (network namespaces, taps)".into(),
            fix: "run hull-bench net as root".into(),
        });
    }
    let kernel = vm::kernel()?;
    let dir = RunDir::new(&std::env::temp_dir(), NAME)?;
    let initrd = vm::initrd_of("net_bench.rs", dir.path())?;
    let accel = hull_tests::qemu::accelerator().to_owned();
    let lab = Lab::new()?;
    let prefix: Vec<String> = ["ip", "netns", "exec", lab.host.name()]
        .map(str::to_owned)
        .to_vec();
    let config = VmConfig {
        qemu: qemu.clone(),
        kernel,
        initrd,
        socket: PathBuf::new(),
        memory_mib: GUEST_MIB,
        accel: accel.clone(),
    };

    // hull-net on its tap (made by hull-net in the lab namespace).
    let socket = dir.path().join("hull-net.sock");
    let hull_net_args: Vec<String> = vec![
        "netns".into(),
        "exec".into(),
        lab.host.name().into(),
        hull_net.display().to_string(),
        "--socket".into(),
        socket.display().to_string(),
        "--tap".into(),
        "hbnet0".into(),
    ];
    let hull_net_devices = [
        "-chardev".to_owned(),
        format!("socket,id=net,path={}", socket.display()),
        "-netdev".to_owned(),
        "vhost-user,id=n0,chardev=net".to_owned(),
        "-device".to_owned(),
        "virtio-net-device,netdev=n0,mac=52:54:00:00:10:02".to_owned(),
    ];
    let ip = find_program("ip", None, "apt-get install iproute2")?;
    let log = dir.path().join("hull-net.log");
    let (hull_net_vm, hull_net_server) = boot(
        "hull-net",
        &config,
        &prefix,
        &hull_net_devices,
        HULL_NET_SUBNET,
        || {
            let _ = std::fs::remove_file(&socket);
            Server::start("hull-net", &ip, &hull_net_args, &socket, &log).map(Some)
        },
    )?;
    let hull_net_guest = Guest {
        name: "hull-net",
        role: Role::Subject,
        vm: Some(hull_net_vm),
        hull_net: hull_net_server,
    };
    lab.address_tap("hbnet0", HULL_NET_SUBNET)?;

    // QEMU's own virtio-net on a tap netdev (QEMU makes the tap in the lab namespace).
    let qemu_devices = [
        "-netdev".to_owned(),
        "tap,id=n0,ifname=hbqemu0,script=no,downscript=no,vnet_hdr=on,vhost=off".to_owned(),
        "-device".to_owned(),
        "virtio-net-device,netdev=n0,mac=52:54:00:00:11:02".to_owned(),
    ];
    let (qemu_vm, _) = boot(
        "qemu virtio-net",
        &config,
        &prefix,
        &qemu_devices,
        QEMU_SUBNET,
        || Ok(None),
    )?;
    let qemu_guest = Guest {
        name: "qemu virtio-net",
        role: Role::Peer,
        vm: Some(qemu_vm),
        hull_net: None,
    };
    lab.address_tap("hbqemu0", QEMU_SUBNET)?;

    let mut contestants: Vec<Box<dyn Contestant<Workload>>> = vec![
        Box::new(hull_net_guest),
        Box::new(qemu_guest),
        Box::new(Veth {
            peer: lab.peer.path(),
        }),
    ];
    let trials = (options.plan.rounds * contestants.len() * WORKLOADS.len()) as u64;
    let progress = Progress::new(NAME, trials);
    let outcome = measure::run(&options.plan, &WORKLOADS, &mut contestants, &progress);
    drop(progress);
    drop(contestants);
    let sinks_alive = lab.sinks_alive();
    drop(lab);
    let outcome = outcome?;
    if !sinks_alive {
        return Err(Error::Unexpected(
            "a sink of the lab namespace stopped during the run".into(),
        ));
    }

    run.machine.finish();
    run.variant = format!("{accel} guest, 1 vCPU, 1 queue pair, MTU 1500");
    run.params = json!({
        "accel": accel,
        "guest_memory_mib": GUEST_MIB,
        "guest_vcpus": 1,
        "tcp_write_bytes": CHUNK,
        "udp_payload_bytes": DATAGRAM,
        "hull_net_command": hull_net_args,
        "hull_net_devices": hull_net_devices,
        "qemu_devices": qemu_devices,
    });
    run.notes = vec![
        format!(
            "Each backend serves its own QEMU {accel} guest (microvm, virtio-net-device, 1 vCPU, \
             {GUEST_MIB} MiB) on its own tap in one network namespace: hull-net's tap made by \
             hull-net, QEMU's by its tap netdev (vnet_hdr=on, vhost=off: no /dev/vhost-net); the \
             sinks are host threads in that namespace."
        ),
        "tcp guest→host: one stream of 64 KiB writes from the guest; bytes are those the \
         host's sink read, time up to its answer. tcp host→guest: the host's source writes 64 \
         KiB chunks for the trial's time; bytes and time as the guest read them. udp: 64-byte request/response with one in flight \
         (netperf UDP_RR style); ops/s is round trips per second, latency per round trip."
            .into(),
        "Limit: the same clients on the host across a veth pair, without a VM. Under TCG the \
         guest's emulated CPU bounds both backends, so ratios near 1 mean the backend is not \
         the bottleneck. CPU µs/op is hull-net's process only (QEMU's virtio-net has no \
         process of its own)."
            .into(),
    ];
    run.record(outcome);
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_results_parse_with_and_without_latencies() {
        let trial = parse_result("result 30 1966080 2000000 0 0").expect("a result");
        assert_eq!((trial.ops, trial.bytes), (30, 1_966_080));
        assert_eq!(trial.elapsed, Duration::from_millis(2));
        assert_eq!((trial.p50_us, trial.p99_us), (None, None));
        let trial = parse_result("result 4 256 1000 1500 2500").expect("a result");
        assert_eq!((trial.p50_us, trial.p99_us), (Some(1.5), Some(2.5)));
    }

    #[test]
    fn anything_else_is_not_a_result() {
        for answer in [
            "ready tsc",
            "result",
            "result 1 2 3 4",
            "result 1 2 3 4 5 6",
            "result 0 0 10 0 0",
            "result 1 0 0 0 0",
            "result -1 2 3 4 5",
        ] {
            assert!(parse_result(answer).is_none(), "{answer}");
        }
    }

    #[test]
    fn guests_are_told_their_own_subnet() {
        assert_eq!(
            guest_cmdline(HULL_NET_SUBNET),
            "HULL_NET_GUEST_IP=169.254.10.2 HULL_NET_HOST_IP=169.254.10.1"
        );
    }

    /// The host side without a VM: the limit's clients against the sinks across the veth
    /// (root only: namespaces).
    #[test]
    fn the_veth_limit_streams_and_echoes_through_the_lab() {
        let test = "the_veth_limit_streams_and_echoes_through_the_lab";
        hull_tests::require!(test, hull_tests::prereq::root());
        hull_tests::require!(test, hull_tests::prereq::find_program("ip", "iproute2"));
        let lab = Lab::new().unwrap();
        let mut veth = Veth {
            peer: lab.peer.path(),
        };
        let tcp = veth
            .trial(&Workload::TcpStream, Duration::from_millis(50))
            .unwrap();
        assert!(tcp.ops > 0);
        assert_eq!(
            tcp.bytes,
            tcp.ops * CHUNK as u64,
            "every byte written arrived"
        );
        let udp = veth
            .trial(&Workload::UdpRr, Duration::from_millis(50))
            .unwrap();
        assert!(udp.ops > 0 && udp.p50_us.is_some(), "{udp:?}");
        let (host, peer) = (lab.host.name().to_owned(), lab.peer.name().to_owned());
        drop(lab);
        let namespaces = hull_tests::netns::run("ip", &["netns", "list"]).unwrap();
        assert!(
            !namespaces.contains(&host) && !namespaces.contains(&peer),
            "namespaces left: {namespaces}"
        );
    }
}
