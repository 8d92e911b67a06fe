//! Configuring a guest's network interface from a test or benchmark guest's `/init` (no `ip`
//! in those initrds): an IPv4 address with a /24 netmask, and the interface up. Shared by the
//! std-only guest programs (`#[path = ".../tests/guest/net_if.rs"] mod net_if;`).

// A program uses what it needs of this module.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// `ip` as a `struct sockaddr_in` (port 0).
pub fn sockaddr_in(ip: Ipv4Addr) -> [u8; 16] {
    let mut addr = [0u8; 16];
    addr[..2].copy_from_slice(&(sys::AF_INET as u16).to_ne_bytes());
    addr[4..8].copy_from_slice(&ip.octets());
    addr
}

/// Address, netmask /24, up; waits a little for the driver to register the interface.
pub fn configure(name: &str, ip: Ipv4Addr) -> Result<(), String> {
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe { sys::socket(sys::AF_INET, sys::SOCK_DGRAM | sys::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: socket returned a new descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = [0u8; 40];
    req[..name.len()].copy_from_slice(name.as_bytes());
    let mut tries = 0;
    loop {
        // SAFETY: SIOCGIFFLAGS reads and writes a 40-byte ifreq, which `req` is.
        if unsafe { sys::ioctl(sock.as_raw_fd(), sys::SIOCGIFFLAGS, req.as_mut_ptr()) } == 0 {
            break;
        }
        tries += 1;
        if tries > 50 {
            return Err(format!("no {name}: {}", std::io::Error::last_os_error()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let flags = u16::from_ne_bytes([req[16], req[17]]) | sys::IFF_UP;
    for (request, value) in [
        (sys::SIOCSIFADDR, sockaddr_in(ip)),
        (
            sys::SIOCSIFNETMASK,
            sockaddr_in(Ipv4Addr::new(255, 255, 255, 0)),
        ),
    ] {
        req[16..32].copy_from_slice(&value);
        // SAFETY: the ioctl reads a 40-byte ifreq, which `req` is.
        if unsafe { sys::ioctl(sock.as_raw_fd(), request, req.as_mut_ptr()) } < 0 {
            return Err(format!(
                "ioctl {request:#x} on {name}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    req[16..32].fill(0);
    req[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: SIOCSIFFLAGS reads a 40-byte ifreq, which `req` is.
    if unsafe { sys::ioctl(sock.as_raw_fd(), sys::SIOCSIFFLAGS, req.as_mut_ptr()) } < 0 {
        return Err(format!(
            "bringing {name} up: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The libc calls and Linux constants of this module (x86_64 Linux values).
mod sys {
    pub const AF_INET: i32 = 2;
    pub const SOCK_DGRAM: i32 = 2;
    pub const SOCK_CLOEXEC: i32 = 0o2_000_000;
    pub const SIOCGIFFLAGS: u64 = 0x8913;
    pub const SIOCSIFFLAGS: u64 = 0x8914;
    pub const SIOCSIFADDR: u64 = 0x8916;
    pub const SIOCSIFNETMASK: u64 = 0x891c;
    pub const IFF_UP: u16 = 1;

    // Declared as the guest programs that use these calls themselves declare them.
    extern "C" {
        pub fn socket(domain: i32, kind: i32, protocol: i32) -> i32;
        pub fn ioctl(fd: i32, request: u64, arg: *mut u8) -> i32;
    }
}
