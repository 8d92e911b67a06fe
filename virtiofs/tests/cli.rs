//! hull-fs's command line and life cycle, as a caller (a VMM, the shim, an operator) sees
//! them: the virtiofsd-compatible options, the errors, and a clean stop on SIGTERM.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{processes_mentioning, HullFs, PROCESS_BOUND};

#[test]
fn help_lists_the_virtiofsd_compatible_options() {
    let out = Command::new(env!("CARGO_BIN_EXE_hull-fs"))
        .arg("--help")
        .output()
        .expect("runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--socket-path",
        "--shared-dir",
        "--cache",
        "--readonly",
        "--thread-pool-size",
        "--xattr",
    ] {
        assert!(
            help.contains(option),
            "--help does not mention {option}:\n{help}"
        );
    }
}

#[test]
fn accepts_virtiofsd_option_syntax() {
    // `--cache=never` style, as Kata and libvirt write it; a missing directory fails the
    // run, not the parse.
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_hull-fs"))
        .arg(format!(
            "--socket-path={}",
            dir.path().join("s.sock").display()
        ))
        .arg(format!(
            "--shared-dir={}",
            dir.path().join("missing").display()
        ))
        .args([
            "--cache=never",
            "--readonly",
            "--thread-pool-size=4",
            "--xattr",
        ])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("error: unexpected argument"), "{stderr}");
    assert!(!stderr.contains("invalid value"), "{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
}

#[test]
fn missing_shared_dir_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-such-dir");
    let out = Command::new(env!("CARGO_BIN_EXE_hull-fs"))
        .arg("--socket-path")
        .arg(dir.path().join("s.sock"))
        .arg("--shared-dir")
        .arg(&missing)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    assert!(!dir.path().join("s.sock").exists(), "socket left behind");
}

#[test]
fn unknown_cache_policy_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_hull-fs"))
        .args([
            "--socket-path",
            "/tmp/x.sock",
            "--shared-dir",
            "/tmp",
            "--cache",
            "sometimes",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sometimes"));
}

#[test]
fn sigterm_stops_every_process_and_removes_the_socket() {
    let dir = tempfile::tempdir().expect("temp dir");
    let share = dir.path().join("share");
    std::fs::create_dir(&share).expect("share dir");
    let socket = dir.path().join("fs.sock");
    let mut fs = HullFs::start(&socket, &share, &[], &dir.path().join("hull-fs.log"));
    fs.wait_for_socket();
    let needle = socket.display().to_string();
    // The supervisor, the worker and the confined server.
    let deadline = std::time::Instant::now() + PROCESS_BOUND;
    while processes_mentioning(&needle).len() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        processes_mentioning(&needle).len(),
        3,
        "supervisor, worker and server run"
    );
    fs.wait_for_log("waiting for the vhost-user frontend");

    fs.signal(libc::SIGTERM);
    let status = fs.wait(PROCESS_BOUND);
    let log = fs.log_text();
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(log.contains("exiting: stopped by SIGTERM"), "{log}");
    assert!(!socket.exists(), "socket left behind");
    assert!(
        !dir.path().join("fs.sock.pid").exists(),
        "pid file left behind"
    );
    assert_eq!(
        processes_mentioning(&needle),
        Vec::<i32>::new(),
        "processes left behind"
    );
}

#[test]
fn a_second_instance_on_the_same_socket_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let share = dir.path().join("share");
    std::fs::create_dir(&share).expect("share dir");
    let socket = dir.path().join("fs.sock");
    let mut first = HullFs::start(&socket, &share, &[], &dir.path().join("first.log"));
    first.wait_for_socket();
    let out = Command::new(env!("CARGO_BIN_EXE_hull-fs"))
        .arg("--socket-path")
        .arg(&socket)
        .arg("--shared-dir")
        .arg(&share)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is locked: another hull-fs serves this socket"),
        "{stderr}"
    );
    assert!(
        socket.exists(),
        "the second instance removed the first one's socket"
    );
}

#[test]
fn sigterm_during_start_up_still_stops_promptly() {
    // The signal may reach the server before it has installed its handlers; the supervisor
    // repeats it, so the run ends by the signal, not by the kill after the grace period.
    let dir = tempfile::tempdir().expect("temp dir");
    let share = dir.path().join("share");
    std::fs::create_dir(&share).expect("share dir");
    let socket = dir.path().join("fs.sock");
    let mut fs = HullFs::start(&socket, &share, &[], &dir.path().join("hull-fs.log"));
    fs.wait_for_socket();
    fs.signal(libc::SIGTERM);
    let status = fs.wait(PROCESS_BOUND);
    let log = fs.log_text();
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(log.contains("exiting: stopped by SIGTERM"), "{log}");
    assert!(
        !log.contains("killed it"),
        "the server had to be killed:\n{log}"
    );
    assert_eq!(
        processes_mentioning(&socket.display().to_string()),
        Vec::<i32>::new()
    );
}
