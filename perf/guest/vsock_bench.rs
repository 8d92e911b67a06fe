//! /init of the guest `hull-bench vsock` boots once per vhost-user-vsock backend. It serves
//! the host-initiated workloads from a listener and runs the guest-initiated ones the host
//! asks for on its serial console, one command a line, answering each with one
//! `HULLFS-BENCH` line (the console protocol of perf/src/fs/vm.rs, shared with fs_bench and
//! net_bench).
//!
//! Every stream, both ways, carries frames: a 4-byte little-endian length (at most 64 KiB)
//! and that many bytes; a frame of length 0 ends it, and the receiver answers the number of
//! payload bytes it read (8 bytes, little-endian), after which both sides close. No
//! half-close: vhost-device-vsock turns the host's half-close into a full shutdown towards
//! the guest and ignores the guest's, so an end of stream cannot mark the end of the data.
//!
//! From boot, a thread listens on vsock port [`GUEST_PORT`] (any CID) and receives one such
//! stream at a time. The host reaches it through the backend's hybrid socket
//! (`CONNECT 5000`): a stream of 64 KiB frames (host→guest throughput), or the end frame
//! alone (connection set-up latency: the host times `CONNECT` to `OK`).
//!
//! Once listening it says `HULLFS-BENCH ready CLOCKSOURCE`. Commands:
//! - `run g2h BUDGET_MS 0`: one connection to the host (CID 2) on port [`SINK_PORT`] (the
//!   backend forwards it to the unix socket `<uds>_5001`, where the host's sink receives
//!   it), 64 KiB frames for about BUDGET_MS, then the end frame and the sink's count.
//!   Answers `result WRITES BYTES_RECEIVED ELAPSED_NS 0 0`, elapsed up to the sink's count.
//! - `run connect BUDGET_MS 0`: connections to the host on port [`SINK_PORT`], one after
//!   the other for about BUDGET_MS; each is timed from `socket()` to `connect()`'s return,
//!   then sends the end frame, reads the sink's count and closes. Answers
//!   `result CONNECTIONS 0 ELAPSED_NS P50_NS P99_NS`.
//! - `quit` powers the VM off.
//!
//! Timings are taken in the guest (CLOCK_MONOTONIC). Built by hull-bench with plain `rustc`
//! (std only, statically linked), not by cargo; the few libc calls it needs are declared in
//! [`sys`], as in devices/tests/guest/vsock_echo.rs.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

#[path = "../../tests/guest/vm.rs"]
mod vm;
mod console;
use console::{ns, Outcome};
use vm::mount_fs;

/// Guest port of the listener the host connects to.
const GUEST_PORT: u32 = 5000;
/// Host port of the stream sink.
const SINK_PORT: u32 = 5001;
/// Payload bytes per frame (and per write).
const CHUNK: usize = 64 << 10;
/// Bytes of a frame's length.
const HEADER: usize = 4;




fn check(rc: i32, what: &str) -> Result<i32, String> {
    if rc < 0 {
        Err(format!("{what}: {}", std::io::Error::last_os_error()))
    } else {
        Ok(rc)
    }
}

fn vsock_socket() -> Result<OwnedFd, String> {
    // SAFETY: plain syscall; the result is checked before use.
    let fd = check(
        unsafe { sys::socket(sys::AF_VSOCK, sys::SOCK_STREAM | sys::SOCK_CLOEXEC, 0) },
        "socket(AF_VSOCK)",
    )?;
    // SAFETY: socket returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn vsock_addr(cid: u32, port: u32) -> sys::sockaddr_vm {
    sys::sockaddr_vm {
        svm_family: sys::AF_VSOCK as u16,
        svm_reserved1: 0,
        svm_port: port,
        svm_cid: cid,
        svm_flags: 0,
        svm_zero: [0; 3],
    }
}

fn addr_len() -> u32 {
    std::mem::size_of::<sys::sockaddr_vm>() as u32
}

/// A stream connected to the host on `port`.
fn connect_host(port: u32) -> Result<std::fs::File, String> {
    let fd = vsock_socket()?;
    let addr = vsock_addr(sys::VMADDR_CID_HOST, port);
    // SAFETY: `addr` is a valid sockaddr_vm and the length is its size.
    let rc = unsafe {
        sys::connect(
            fd.as_raw_fd(),
            (&addr as *const sys::sockaddr_vm).cast(),
            addr_len(),
        )
    };
    check(rc, &format!("connect to host port {port}"))?;
    Ok(std::fs::File::from(fd))
}

/// Reads frames up to the end frame; the number of payload bytes read.
fn receive(stream: &mut std::fs::File, buffer: &mut [u8]) -> Result<u64, String> {
    let mut total = 0u64;
    loop {
        let mut header = [0u8; HEADER];
        stream
            .read_exact(&mut header)
            .map_err(|e| format!("reading a frame's length: {e}"))?;
        let len = u32::from_le_bytes(header) as usize;
        if len == 0 {
            return Ok(total);
        }
        let payload = buffer
            .get_mut(..len)
            .ok_or_else(|| format!("a frame of {len} bytes, more than {CHUNK}"))?;
        stream
            .read_exact(payload)
            .map_err(|e| format!("reading a frame: {e}"))?;
        total += len as u64;
    }
}

/// Sends the end frame and reads the receiver's count.
fn finish(stream: &mut std::fs::File) -> Result<u64, String> {
    stream
        .write_all(&[0u8; HEADER])
        .map_err(|e| format!("writing the end frame: {e}"))?;
    let mut count = [0u8; 8];
    stream
        .read_exact(&mut count)
        .map_err(|e| format!("reading the receiver's count: {e}"))?;
    Ok(u64::from_le_bytes(count))
}

/// The listener the host connects to: each connection's frames received, answered with the
/// count, closed.
fn serve_host_connections(listener: OwnedFd) {
    let mut buffer = vec![0u8; CHUNK];
    loop {
        // SAFETY: accept on a listening socket we own; the peer address is not wanted.
        let fd = unsafe {
            sys::accept(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if fd < 0 {
            continue;
        }
        // SAFETY: accept returned a new descriptor that nothing else owns.
        let mut stream = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        // A host that went away misses its count; the next connection is served all the same.
        if let Ok(total) = receive(&mut stream, &mut buffer) {
            let _ = stream.write_all(&total.to_le_bytes());
        }
    }
}

fn listen_for_host() -> Result<OwnedFd, String> {
    let fd = vsock_socket()?;
    let addr = vsock_addr(sys::VMADDR_CID_ANY, GUEST_PORT);
    // SAFETY: `addr` is a valid sockaddr_vm and the length is its size.
    let rc = unsafe {
        sys::bind(
            fd.as_raw_fd(),
            (&addr as *const sys::sockaddr_vm).cast(),
            addr_len(),
        )
    };
    check(rc, "bind")?;
    // SAFETY: plain syscall on a socket we own.
    check(unsafe { sys::listen(fd.as_raw_fd(), 64) }, "listen")?;
    Ok(fd)
}

fn g2h(budget: Duration) -> Result<Outcome, String> {
    let mut stream = connect_host(SINK_PORT)?;
    let mut frame = vec![0x5au8; HEADER + CHUNK];
    frame[..HEADER].copy_from_slice(&(CHUNK as u32).to_le_bytes());
    let start = Instant::now();
    let mut writes = 0u64;
    while start.elapsed() < budget {
        stream.write_all(&frame).map_err(|e| format!("write: {e}"))?;
        writes += 1;
    }
    let bytes = finish(&mut stream)?;
    Ok(Outcome {
        ops: writes,
        bytes,
        elapsed: start.elapsed(),
        latencies: Vec::new(),
    })
}

fn connect_latency(budget: Duration) -> Result<Outcome, String> {
    let mut latencies = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget {
        let begun = Instant::now();
        let mut stream = connect_host(SINK_PORT)?;
        latencies.push(ns(begun.elapsed()));
        // The sink's count: the connection carried a round trip before the next one.
        finish(&mut stream)?;
    }
    Ok(Outcome {
        ops: latencies.len() as u64,
        bytes: 0,
        elapsed: start.elapsed(),
        latencies,
    })
}

fn serve() -> Result<(), String> {
    let listener = listen_for_host()?;
    std::thread::spawn(move || serve_host_connections(listener));
    console::serve(|workload, budget, _count| match workload {
        "g2h" => g2h(budget),
        "connect" => connect_latency(budget),
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

/// The libc calls and Linux constants this program needs (x86_64 Linux values).
#[allow(non_camel_case_types)]
mod sys {
    pub const AF_VSOCK: i32 = 40;
    pub const SOCK_STREAM: i32 = 1;
    pub const SOCK_CLOEXEC: i32 = 0o2_000_000;
    pub const VMADDR_CID_ANY: u32 = u32::MAX;
    pub const VMADDR_CID_HOST: u32 = 2;

    /// `struct sockaddr`, only ever used behind a pointer.
    pub enum sockaddr {}

    /// `struct sockaddr_vm` from <linux/vm_sockets.h>.
    #[repr(C)]
    pub struct sockaddr_vm {
        pub svm_family: u16,
        pub svm_reserved1: u16,
        pub svm_port: u32,
        pub svm_cid: u32,
        pub svm_flags: u8,
        pub svm_zero: [u8; 3],
    }

    extern "C" {
        pub fn socket(domain: i32, kind: i32, protocol: i32) -> i32;
        pub fn bind(fd: i32, addr: *const sockaddr, len: u32) -> i32;
        pub fn listen(fd: i32, backlog: i32) -> i32;
        pub fn accept(fd: i32, addr: *mut sockaddr, len: *mut u32) -> i32;
        pub fn connect(fd: i32, addr: *const sockaddr, len: u32) -> i32;
    }
}
