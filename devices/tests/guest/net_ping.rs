//! The guest side of hull-net's QEMU integration test, run as `/init` of a test initrd.
//!
//! 1. Gives `eth0` (the virtio-net device on hull-net) the address in `HULL_NET_GUEST_IP`
//!    (from the kernel command line), netmask /24, and brings it up.
//! 2. Pings `HULL_NET_HOST_IP` (the tap in the test's network namespace) with a raw ICMP
//!    socket: small, near-MTU and fragmented (8000-byte) echo requests, each answered by the
//!    host's kernel through the tap and hull-net.
//! 3. Connects to the host's TCP echo on port [`ECHO_PORT`], sends [`STREAM_BYTES`] of a
//!    pattern, half-closes and checks the echo: segments larger than the MTU go both ways
//!    when the guest took the segmentation offloads, and checksums are left to the far end.
//!    With `HULL_NET_PAIRS=N`, once from each of CPUs 0 to N-1 (one queue pair each).
//! 4. Prints `net-ping-guest: PASS` or `net-ping-guest: FAIL <why>` and stops the VM.
//!
//! Like the other guest programs it depends on nothing but std (the few libc calls are
//! declared in [`sys`]) and is compiled with one `rustc` call.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// Host TCP port that echoes.
const ECHO_PORT: u16 = 7777;
/// Bytes sent through the TCP echo.
const STREAM_BYTES: usize = 1 << 20;
/// ICMP payload sizes pinged: small, one full frame, fragmented.
const PING_SIZES: [usize; 3] = [56, 1400, 8000];

#[path = "../../../tests/guest/net_if.rs"]
mod net_if;
#[path = "../../../tests/guest/vm.rs"]
mod vm;
use net_if::{configure, sockaddr_in};

fn main() {
    println!("net-ping-guest: started");
    let verdict = run();
    match &verdict {
        Ok(()) => println!("net-ping-guest: PASS"),
        Err(why) => println!("net-ping-guest: FAIL {why}"),
    }
    vm::stop();
}

fn env_ip(name: &str) -> Result<Ipv4Addr, String> {
    std::env::var(name)
        .map_err(|_| format!("{name} missing from the kernel command line"))?
        .parse()
        .map_err(|e| format!("{name}: {e}"))
}

fn run() -> Result<(), String> {
    let guest = env_ip("HULL_NET_GUEST_IP")?;
    let host = env_ip("HULL_NET_HOST_IP")?;
    configure("eth0", guest)?;
    println!("net-ping-guest: eth0 is {guest}/24 and up");
    let icmp = Socket::new(sys::AF_INET, sys::SOCK_RAW, sys::IPPROTO_ICMP)?;
    icmp.set_timeout(2)?;
    for (seq, &size) in (1u16..).zip(PING_SIZES.iter()) {
        ping(&icmp, host, seq, size)?;
        println!("net-ping-guest: {size}-byte ping to {host} answered");
    }
    // With several queue pairs, one echo from each CPU: the driver maps CPU i's transmits
    // to queue pair i.
    let pairs: usize = match std::env::var("HULL_NET_PAIRS") {
        Ok(n) => n.parse().map_err(|_| format!("bad HULL_NET_PAIRS {n}"))?,
        Err(_) => 1,
    };
    for cpu in 0..pairs {
        if pairs > 1 {
            pin(cpu)?;
        }
        echo(host)?;
        println!("net-ping-guest: {STREAM_BYTES} bytes echoed over TCP from CPU {cpu}");
    }
    Ok(())
}

/// Moves this thread to CPU `cpu` alone.
fn pin(cpu: usize) -> Result<(), String> {
    let mask: u64 = 1 << cpu;
    // SAFETY: `mask` is a valid CPU set of 8 bytes for the calling thread (pid 0).
    if unsafe { sys::sched_setaffinity(0, 8, &mask) } < 0 {
        return Err(format!(
            "moving to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn echo(host: Ipv4Addr) -> Result<(), String> {
    let addr = SocketAddrV4::new(host, ECHO_PORT);
    let stream = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(30))
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let data: Vec<u8> = (0..STREAM_BYTES)
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect();
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let sent = data.clone();
    let sender = std::thread::spawn(move || -> Result<(), String> {
        writer.write_all(&sent).map_err(|e| format!("send: {e}"))?;
        writer
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))
    });
    let mut back = Vec::new();
    (&stream)
        .read_to_end(&mut back)
        .map_err(|e| format!("receive after {} bytes: {e}", back.len()))?;
    sender.join().map_err(|_| "sender panicked".to_string())??;
    if back != data {
        return Err(format!("echo differs ({} bytes back)", back.len()));
    }
    Ok(())
}

/// One echo request of `size` payload bytes; retries a few times (the first may wait for
/// ARP, and the link may still be coming up).
fn ping(icmp: &Socket, host: Ipv4Addr, seq: u16, size: usize) -> Result<(), String> {
    let id: u16 = 0x4e54;
    let mut request = vec![8u8, 0, 0, 0];
    request.extend_from_slice(&id.to_be_bytes());
    request.extend_from_slice(&seq.to_be_bytes());
    request.extend((0..size).map(|i| (i % 253) as u8));
    let sum = checksum(&request);
    request[2..4].copy_from_slice(&sum.to_be_bytes());
    let to = sockaddr_in(host);
    for _ in 0..10 {
        // SAFETY: the buffer and the address are valid for the lengths given.
        let n = unsafe {
            sys::sendto(
                icmp.raw(),
                request.as_ptr(),
                request.len(),
                0,
                to.as_ptr(),
                16,
            )
        };
        if n < 0 {
            return Err(format!("sendto: {}", std::io::Error::last_os_error()));
        }
        let mut buf = vec![0u8; 65_536];
        loop {
            // SAFETY: the buffer is valid for its length; no source address wanted.
            let n = unsafe {
                sys::recvfrom(
                    icmp.raw(),
                    buf.as_mut_ptr(),
                    buf.len(),
                    0,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
            let Ok(n) = usize::try_from(n) else {
                break; // timed out: send again
            };
            let reply = &buf[..n];
            let ihl = usize::from(reply.first().copied().unwrap_or(0) & 0x0f) * 4;
            let Some(icmp_part) = reply.get(ihl..) else {
                continue;
            };
            if icmp_part.len() >= 8
                && icmp_part[0] == 0
                && icmp_part[4..6] == id.to_be_bytes()
                && icmp_part[6..8] == seq.to_be_bytes()
            {
                if icmp_part[8..] != request[8..] {
                    return Err(format!("ping {seq}: the reply's payload differs"));
                }
                return Ok(());
            }
        }
    }
    Err(format!("no answer to the {size}-byte ping {seq} from {host}"))
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

struct Socket(OwnedFd);

impl Socket {
    fn new(domain: i32, kind: i32, protocol: i32) -> Result<Self, String> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { sys::socket(domain, kind | sys::SOCK_CLOEXEC, protocol) };
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: socket returned a new descriptor that nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn raw(&self) -> i32 {
        self.0.as_raw_fd()
    }

    fn set_timeout(&self, seconds: i64) -> Result<(), String> {
        let timeval = [seconds, 0i64];
        // SAFETY: SO_RCVTIMEO reads a 16-byte timeval, which `timeval` is.
        let rc = unsafe {
            sys::setsockopt(self.raw(), sys::SOL_SOCKET, sys::SO_RCVTIMEO, timeval.as_ptr().cast(), 16)
        };
        if rc < 0 {
            return Err(format!("SO_RCVTIMEO: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

/// The libc calls and Linux constants this program needs (x86_64 Linux values).
mod sys {
    pub const AF_INET: i32 = 2;
    pub const SOCK_RAW: i32 = 3;
    pub const SOCK_CLOEXEC: i32 = 0o2_000_000;
    pub const IPPROTO_ICMP: i32 = 1;
    pub const SOL_SOCKET: i32 = 1;
    pub const SO_RCVTIMEO: i32 = 20;

    extern "C" {
        pub fn socket(domain: i32, kind: i32, protocol: i32) -> i32;
        pub fn sched_setaffinity(pid: i32, size: usize, mask: *const u64) -> i32;
        pub fn setsockopt(fd: i32, level: i32, name: i32, value: *const u8, len: u32) -> i32;
        pub fn sendto(fd: i32, buf: *const u8, len: usize, flags: i32, to: *const u8, tolen: u32)
            -> isize;
        pub fn recvfrom(
            fd: i32,
            buf: *mut u8,
            len: usize,
            flags: i32,
            from: *mut u8,
            fromlen: *mut u32,
        ) -> isize;
    }
}
