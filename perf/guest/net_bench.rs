//! /init of the guest `hull-bench net` boots once per virtio-net backend: gives `eth0` the
//! address in `HULL_NET_GUEST_IP` (/24, from the kernel command line) and runs the network
//! workloads the host asks for on its serial console, one command a line, answering each with
//! one `HULLFS-BENCH` line (the console protocol of perf/src/fs/vm.rs, shared with fs_bench).
//!
//! Once ready it says `HULLFS-BENCH ready CLOCKSOURCE`. Commands:
//! - `run tcp BUDGET_MS 0`: one TCP connection to `HULL_NET_HOST_IP`:[`TCP_PORT`], 64 KiB
//!   writes for about BUDGET_MS, then a half-close; the host's sink answers with the number
//!   of bytes it received (8 bytes, little-endian) once it has read them all. Answers
//!   `result WRITES BYTES_RECEIVED ELAPSED_NS 0 0`, elapsed up to the sink's answer, so only
//!   bytes that arrived are counted.
//! - `run tcp_rx BUDGET_MS 0`: one TCP connection to the host's source on [`SOURCE_PORT`],
//!   which is sent BUDGET_MS (8 bytes, little-endian), writes 64 KiB chunks for that long and
//!   closes. Answers `result READS BYTES_RECEIVED ELAPSED_NS 0 0`, elapsed up to the end of
//!   the stream.
//! - `run udp_rr BUDGET_MS 0`: 64-byte UDP datagrams to `HULL_NET_HOST_IP`:[`UDP_PORT`], one
//!   at a time, each waiting for the host's echo (a request/response packet rate, like
//!   netperf's UDP_RR). Answers `result ROUND_TRIPS BYTES ELAPSED_NS P50_NS P99_NS`; a lost
//!   datagram is retried after 200 ms and counted in neither.
//! - `quit` powers the VM off.
//!
//! Timings are taken in the guest (CLOCK_MONOTONIC). Built by hull-bench with plain `rustc`
//! (std only, statically linked), not by cargo.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

#[path = "../../tests/guest/net_if.rs"]
mod net_if;
#[path = "../../tests/guest/vm.rs"]
mod vm;
mod console;
use console::{ns, Outcome};
use net_if::configure;
use vm::mount_fs;

/// Host port of the TCP sink.
const TCP_PORT: u16 = 7001;
/// Host port of the UDP echo.
const UDP_PORT: u16 = 7002;
/// Host port of the TCP source.
const SOURCE_PORT: u16 = 7003;
/// Bytes per TCP write.
const CHUNK: usize = 64 << 10;
/// UDP payload bytes.
const DATAGRAM: usize = 64;


fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}




fn tcp(host: Ipv4Addr, budget: Duration) -> Result<Outcome, String> {
    let mut stream =
        TcpStream::connect(SocketAddrV4::new(host, TCP_PORT)).map_err(|e| format!("connect: {e}"))?;
    let chunk = vec![0x5au8; CHUNK];
    let start = Instant::now();
    let mut writes = 0u64;
    while start.elapsed() < budget {
        stream.write_all(&chunk).map_err(|e| format!("write: {e}"))?;
        writes += 1;
    }
    stream.shutdown(Shutdown::Write).map_err(s)?;
    let mut ack = [0u8; 8];
    stream
        .read_exact(&mut ack)
        .map_err(|e| format!("reading the sink's count: {e}"))?;
    Ok(Outcome {
        ops: writes,
        bytes: u64::from_le_bytes(ack),
        elapsed: start.elapsed(),
        latencies: Vec::new(),
    })
}

fn tcp_rx(host: Ipv4Addr, budget: Duration) -> Result<Outcome, String> {
    let mut stream = TcpStream::connect(SocketAddrV4::new(host, SOURCE_PORT))
        .map_err(|e| format!("connect: {e}"))?;
    let start = Instant::now();
    let budget_ms = u64::try_from(budget.as_millis()).unwrap_or(u64::MAX);
    stream
        .write_all(&budget_ms.to_le_bytes())
        .map_err(|e| format!("write: {e}"))?;
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
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    Ok(Outcome {
        ops: reads,
        bytes,
        elapsed: start.elapsed(),
        latencies: Vec::new(),
    })
}

fn udp_rr(host: Ipv4Addr, budget: Duration) -> Result<Outcome, String> {
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(s)?;
    socket
        .connect(SocketAddrV4::new(host, UDP_PORT))
        .map_err(s)?;
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(s)?;
    let mut payload = [0u8; DATAGRAM];
    let mut answer = [0u8; DATAGRAM * 2];
    let mut latencies = Vec::new();
    let start = Instant::now();
    let mut seq = 0u64;
    while start.elapsed() < budget {
        seq += 1;
        payload[..8].copy_from_slice(&seq.to_le_bytes());
        let sent = Instant::now();
        socket.send(&payload).map_err(|e| format!("send: {e}"))?;
        loop {
            match socket.recv(&mut answer) {
                Ok(n) if n == DATAGRAM && answer[..8] == payload[..8] => {
                    latencies.push(ns(sent.elapsed()));
                    break;
                }
                // An old echo of a datagram given up on: wait for this one's.
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => return Err(format!("recv: {e}")),
            }
        }
    }
    let elapsed = start.elapsed();
    let ops = latencies.len() as u64;
    Ok(Outcome {
        ops,
        bytes: ops * DATAGRAM as u64,
        elapsed,
        latencies,
    })
}

fn env_ip(name: &str) -> Result<Ipv4Addr, String> {
    std::env::var(name)
        .map_err(|_| format!("{name} missing from the kernel command line"))?
        .parse()
        .map_err(|e| format!("{name}: {e}"))
}

fn serve() -> Result<(), String> {
    let guest = env_ip("HULL_NET_GUEST_IP")?;
    let host = env_ip("HULL_NET_HOST_IP")?;
    configure("eth0", guest)?;
    console::serve(|workload, budget, _count| match workload {
        "tcp" => tcp(host, budget),
        "tcp_rx" => tcp_rx(host, budget),
        "udp_rr" => udp_rr(host, budget),
        other => Err(format!("unknown workload {other}")),
    })
}

fn main() {
    let _ = mount_fs("proc", "/proc", "proc");
    let _ = mount_fs("sysfs", "/sys", "sysfs");
    if let Err(err) = serve() {
        println!("HULLFS-BENCH error {err}");
    }
    let _ = std::io::stdout().flush();
    vm::stop();
}

