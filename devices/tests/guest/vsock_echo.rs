//! The guest side of hull-vsock's QEMU integration test, run as `/init` of a test initrd.
//!
//! 1. Listens on vsock port [`ECHO_PORT`], accepts one connection and echoes it until EOF
//!    (the host-initiated direction: the host came through `CONNECT 5000`).
//! 2. Connects to the host (CID 2) on port [`HOST_PORT`], sends [`GREETING`], half-closes,
//!    and checks that the host sends it back (the guest-initiated direction: the host listens
//!    on `<uds>_5001`).
//! 3. Prints `vsock-echo-guest: PASS` or `vsock-echo-guest: FAIL <why>` and stops the VM.
//!
//! It lives outside cargo's test discovery (not `tests/*.rs`, not `tests/*/main.rs`): it is a
//! guest program, not a host test. It depends on nothing but std, so the test compiles it with a single `rustc` call
//! (`-C target-feature=+crt-static`: the initrd has no shared libraries) instead of a cargo
//! build; the few libc calls it needs are declared in [`sys`].

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use sys as libc;

/// Port the guest listens on.
const ECHO_PORT: u32 = 5000;
/// Host port the guest connects to.
const HOST_PORT: u32 = 5001;
/// What the guest sends the host.
const GREETING: &[u8] = b"hello from the guest over hull-vsock\n";

#[path = "../../../tests/guest/vm.rs"]
mod vm;

fn main() {
    println!("vsock-echo-guest: started");
    let verdict = run();
    match &verdict {
        Ok(()) => println!("vsock-echo-guest: PASS"),
        Err(why) => println!("vsock-echo-guest: FAIL {why}"),
    }
    vm::stop();
}

fn run() -> Result<(), String> {
    let listener = vsock_socket()?;
    let addr = vsock_addr(libc::VMADDR_CID_ANY, ECHO_PORT);
    // SAFETY: `addr` is a valid sockaddr_vm and the length is its size.
    let rc = unsafe { libc::bind(listener.raw(), addr_ptr(&addr), addr_len()) };
    check(rc, "bind")?;
    // SAFETY: plain syscall on a socket we own.
    check(unsafe { libc::listen(listener.raw(), 4) }, "listen")?;
    println!("vsock-echo-guest: listening on port {ECHO_PORT}");

    // SAFETY: accept on a listening socket we own; we do not need the peer address.
    let conn = unsafe { libc::accept(listener.raw(), std::ptr::null_mut(), std::ptr::null_mut()) };
    check(conn, "accept")?;
    // SAFETY: accept returned a new descriptor that nothing else owns.
    let mut stream = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(conn) });
    let mut buf = vec![0u8; 64 * 1024];
    let mut echoed = 0usize;
    loop {
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("echo read: {e}"))?;
        if n == 0 {
            break;
        }
        stream
            .write_all(&buf[..n])
            .map_err(|e| format!("echo write: {e}"))?;
        echoed += n;
    }
    drop(stream);
    println!("vsock-echo-guest: echoed {echoed} bytes");

    let out = vsock_socket()?;
    let host = vsock_addr(libc::VMADDR_CID_HOST, HOST_PORT);
    // SAFETY: `host` is a valid sockaddr_vm and the length is its size.
    let rc = unsafe { libc::connect(out.raw(), addr_ptr(&host), addr_len()) };
    check(rc, "connect to the host")?;
    let mut stream = std::fs::File::from(out.0);
    stream
        .write_all(GREETING)
        .map_err(|e| format!("write to host: {e}"))?;
    // SAFETY: plain syscall on a socket we own.
    check(
        unsafe { libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&stream), libc::SHUT_WR) },
        "shutdown",
    )?;
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .map_err(|e| format!("read from host: {e}"))?;
    if reply != GREETING {
        return Err(format!(
            "host sent back {:?}",
            String::from_utf8_lossy(&reply)
        ));
    }
    println!("vsock-echo-guest: host echoed the greeting");
    Ok(())
}

struct Socket(OwnedFd);

impl Socket {
    fn raw(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(&self.0)
    }
}

fn vsock_socket() -> Result<Socket, String> {
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    check(fd, "socket(AF_VSOCK)")?;
    // SAFETY: socket returned a new descriptor that nothing else owns.
    Ok(Socket(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

fn addr_ptr(addr: &libc::sockaddr_vm) -> *const libc::sockaddr {
    (addr as *const libc::sockaddr_vm).cast()
}

fn addr_len() -> libc::socklen_t {
    std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t
}

fn check(rc: i32, what: &str) -> Result<(), String> {
    if rc < 0 {
        Err(format!("{what}: {}", std::io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

/// The libc calls and Linux constants this program needs (x86_64 Linux values).
#[allow(non_camel_case_types)]
mod sys {
    pub type sa_family_t = u16;
    pub type socklen_t = u32;

    pub const AF_VSOCK: i32 = 40;
    pub const SOCK_STREAM: i32 = 1;
    pub const SOCK_CLOEXEC: i32 = 0o2_000_000;
    pub const SHUT_WR: i32 = 1;
    pub const VMADDR_CID_ANY: u32 = u32::MAX;
    pub const VMADDR_CID_HOST: u32 = 2;

    /// `struct sockaddr`, only ever used behind a pointer.
    pub enum sockaddr {}

    /// `struct sockaddr_vm` from <linux/vm_sockets.h>.
    #[repr(C)]
    pub struct sockaddr_vm {
        pub svm_family: sa_family_t,
        pub svm_reserved1: u16,
        pub svm_port: u32,
        pub svm_cid: u32,
        pub svm_flags: u8,
        pub svm_zero: [u8; 3],
    }

    extern "C" {
        pub fn socket(domain: i32, kind: i32, protocol: i32) -> i32;
        pub fn bind(fd: i32, addr: *const sockaddr, len: socklen_t) -> i32;
        pub fn listen(fd: i32, backlog: i32) -> i32;
        pub fn accept(fd: i32, addr: *mut sockaddr, len: *mut socklen_t) -> i32;
        pub fn connect(fd: i32, addr: *const sockaddr, len: socklen_t) -> i32;
        pub fn shutdown(fd: i32, how: i32) -> i32;
    }
}
