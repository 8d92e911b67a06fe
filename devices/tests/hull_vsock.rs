//! hull-vsock as users run it: the real binary, real vhost-user frontends (the `vhost` crate's,
//! and QEMU TCG with a Linux guest), and host programs on the hybrid-vsock socket.
//!
//! The guest is `tests/guest/vsock_echo.rs`, built into a static binary and packed as `/init`
//! of a test initrd by `hull_tests::guest_program`; the kernel is the hull guest kernel
//! (`make image`).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hull_tests::qemu::{Guest, GuestConfig, VhostUserDevice};
use hull_tests::{artifacts, guest_program, require};

use common::{
    assert_confined, brief_frontend, read, start_backend, terminate, Reaped, TempDir, GUEST_BOUND,
    STARTUP_BOUND,
};

mod common;

/// Guest port the guest program listens on, and host port it connects to (see the program).
const GUEST_ECHO_PORT: u32 = 5000;
const HOST_PORT: u32 = 5001;
const GREETING: &[u8] = b"hello from the guest over hull-vsock\n";

fn start_vsock(dir: &Path, guest_cid: u64) -> (Reaped, PathBuf, PathBuf, PathBuf) {
    start_backend_with(dir, guest_cid, &[])
}

fn start_backend_with(
    dir: &Path,
    guest_cid: u64,
    extra: &[&str],
) -> (Reaped, PathBuf, PathBuf, PathBuf) {
    let socket = dir.join("vhost-user.sock");
    let uds = dir.join("vsock.sock");
    let log = dir.join("hull-vsock.log");
    let cid = guest_cid.to_string();
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "--socket".as_ref(),
        socket.as_os_str(),
        "--uds".as_ref(),
        uds.as_os_str(),
        "--guest-cid".as_ref(),
        cid.as_ref(),
    ];
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    let backend = start_backend(env!("CARGO_BIN_EXE_hull-vsock"), &args, &socket, &log);
    (backend, socket, uds, log)
}

/// Connects through the hybrid socket, retrying until the guest listens.
fn connect_to_guest(uds: &Path, port: u32, guest: &Guest) -> (UnixStream, String) {
    let deadline = Instant::now() + GUEST_BOUND;
    loop {
        assert!(
            Instant::now() < deadline,
            "the guest never accepted port {port}; console:\n{}",
            guest.console()
        );
        if let Ok(mut stream) = UnixStream::connect(uds) {
            stream
                .write_all(format!("CONNECT {port}\n").as_bytes())
                .expect("writing CONNECT");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            if reader.read_line(&mut line).is_ok() && line.starts_with("OK ") {
                return (stream, line);
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn guest_and_host_echo_both_ways_through_hull_vsock_under_qemu() {
    let test = "guest_and_host_echo_both_ways_through_hull_vsock_under_qemu";
    let kernel = require!(test, artifacts::vmlinux());
    let dir = TempDir::new("vsock-qemu");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/vsock_echo.rs");
    let initrd =
        require!(test, guest_program::build_initrd(&source, &dir.0)).expect("the guest builds");
    let (mut backend, socket, uds, log) = start_vsock(&dir.0, 3);

    // The guest-initiated direction: the guest connects to host port 5001.
    let host_listener =
        UnixListener::bind(format!("{}_{HOST_PORT}", uds.display())).expect("binding <uds>_5001");
    let host_side = std::thread::spawn(move || -> Vec<u8> {
        let (mut stream, _) = host_listener
            .accept()
            .expect("the guest connects to the host");
        stream.set_read_timeout(Some(GUEST_BOUND)).expect("timeout");
        let mut greeting = Vec::new();
        stream
            .read_to_end(&mut greeting)
            .expect("reading the guest's greeting");
        stream.write_all(&greeting).expect("echoing the greeting");
        greeting
    });

    let config = GuestConfig {
        kernel,
        initrd,
        extra_cmdline: String::new(),
        memory_mib: 256,
        vcpus: 1,
        devices: vec![VhostUserDevice {
            socket: socket.clone(),
            model: "vhost-user-vsock-device".into(),
        }],
    };
    let guest = require!(test, Guest::start(&config)).expect("QEMU starts");

    // The host-initiated direction: 1 MiB through CONNECT 5000, more than the credit window,
    // echoed back by the guest.
    let (stream, ok_line) = connect_to_guest(&uds, GUEST_ECHO_PORT, &guest);
    let port: u32 = ok_line
        .trim()
        .strip_prefix("OK ")
        .and_then(|p| p.parse().ok())
        .expect("OK <port>");
    assert!(port > 0, "a host port in {ok_line:?}");
    stream.set_read_timeout(Some(GUEST_BOUND)).expect("timeout");
    let payload: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(7) % 251) as u8)
        .collect();
    let mut writer = stream.try_clone().expect("clone");
    let sent = payload.clone();
    let sender = std::thread::spawn(move || {
        writer.write_all(&sent).expect("sending to the guest");
        writer
            .shutdown(std::net::Shutdown::Write)
            .expect("half-close");
    });
    let mut echoed = Vec::new();
    (&stream)
        .read_to_end(&mut echoed)
        .expect("reading the echo");
    sender.join().expect("sender thread");
    assert_eq!(
        echoed.len(),
        payload.len(),
        "echo length; console:\n{}",
        guest.console()
    );
    assert!(echoed == payload, "the echo differs from what was sent");

    let greeting = host_side.join().expect("host listener thread");
    assert_eq!(greeting, GREETING, "the guest's greeting arrived intact");

    let finished = guest.wait(GUEST_BOUND).expect("the guest stops by itself");
    let console_text = finished.console;
    assert!(
        console_text.contains("vsock-echo-guest: PASS"),
        "guest verdict; console:\n{console_text}"
    );

    // QEMU gone: hull-vsock notices the frontend left, says so, exits 0 and cleans up.
    common::expect_exit_after_frontend(&mut backend, &log, "hull-vsock");
    assert!(
        !socket.exists() && !uds.exists(),
        "hull-vsock removed its sockets"
    );
}

#[test]
fn sigterm_stops_hull_vsock_cleanly_before_any_frontend() {
    let dir = TempDir::new("vsock-sigterm");
    let (mut backend, socket, uds, log) = start_vsock(&dir.0, 3);
    assert_confined(&backend, 0);
    terminate(&mut backend, &log);
    assert!(!socket.exists() && !uds.exists(), "sockets removed");
}

#[test]
fn reserved_guest_cid_is_refused_with_a_message_naming_it() {
    let dir = TempDir::new("vsock-cid");
    let output = Command::new(env!("CARGO_BIN_EXE_hull-vsock"))
        .arg("--socket")
        .arg(dir.0.join("vu.sock"))
        .arg("--uds")
        .arg(dir.0.join("v.sock"))
        .args(["--guest-cid", "2"])
        .output()
        .expect("hull-vsock runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("guest CID 2 is invalid"), "{stderr}");
}

#[test]
fn frontend_disconnect_ends_hull_vsock_with_status_0_and_says_why() {
    let dir = TempDir::new("vsock-disconnect");
    let (mut backend, socket, uds, log) = start_vsock(&dir.0, 3);
    brief_frontend(&socket);
    let status = backend
        .wait_bounded(STARTUP_BOUND)
        .expect("hull-vsock exits after the frontend left");
    let log_text = read(&log);
    assert!(status.success(), "exit status {status}; log:\n{log_text}");
    assert!(
        log_text.contains("frontend disconnected"),
        "exit message; log:\n{log_text}"
    );
    assert!(!socket.exists() && !uds.exists(), "sockets removed");
}

#[test]
fn keep_listening_serves_the_next_frontend_until_sigterm() {
    let dir = TempDir::new("vsock-keep");
    let (mut backend, socket, _uds, log) = start_backend_with(&dir.0, 3, &["--keep-listening"]);
    // Eight frontends, and nothing of them kept (vhost-user-backend leaks an eventfd per
    // worker thread per frontend, closed by hull's exit_events).
    common::assert_no_descriptor_growth(&backend, &socket, 8);
    assert!(
        backend.0.try_wait().expect("try_wait").is_none(),
        "still serving: {}",
        read(&log)
    );
    terminate(&mut backend, &log);
    assert!(!socket.exists(), "vhost-user socket removed");
}
