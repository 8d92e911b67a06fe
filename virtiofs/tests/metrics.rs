//! hull-fs's `--metrics-socket` as an operator sees it: a guest (a vhost-user frontend with
//! shared memory, as a VMM is) sends known FUSE requests to a running hull-fs, including
//! names its guard refuses, and the text on the metrics socket counts exactly those; the
//! socket file goes with hull-fs. The requests are served by the confined server process
//! and the text by the supervisor, so the counts cross the sandbox through the shared page.

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;

use support::fuse::{entry, FuseSession};
use support::vhost_guest::VhostGuest;
use support::{HullFs, PROCESS_BOUND};

const ROOT: u64 = virtiofsd::fuse::ROOT_ID;
const CONTENT: &[u8] = b"eleven byte";

/// The metrics text, as `name{labels}` -> value.
fn scrape(path: &Path) -> BTreeMap<String, u64> {
    let mut text = String::new();
    UnixStream::connect(path)
        .expect("the metrics socket accepts")
        .read_to_string(&mut text)
        .expect("the metrics text");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("`series value` lines");
            (series.to_owned(), value.parse().expect("integer values"))
        })
        .collect()
}

fn started(dir: &Path, extra: &[&str]) -> HullFs {
    let share = dir.join("share");
    std::fs::create_dir(&share).expect("share dir");
    std::fs::write(share.join("file.txt"), CONTENT).expect("file");
    let mut fs = HullFs::start(
        &dir.join("fs.sock"),
        &share,
        extra,
        &dir.join("hull-fs.log"),
    );
    fs.wait_for_socket();
    fs
}

#[test]
fn the_metrics_socket_counts_exactly_the_guests_requests_and_goes_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let metrics = dir.path().join("hull-fs.metrics.sock");
    let metrics_arg = metrics.to_str().expect("utf-8 temp path");
    let mut fs = started(dir.path(), &["--metrics-socket", metrics_arg]);
    assert!(metrics.exists(), "no metrics socket:\n{}", fs.log_text());

    // Before any guest: every series there, all zero.
    let idle = scrape(&metrics);
    assert_eq!(idle.len(), 16, "12 kinds and 4 counters: {idle:?}");
    assert!(idle.values().all(|&v| v == 0), "{idle:?}");

    let mut guest = VhostGuest::connect(&fs.socket);
    guest.init();
    let file = entry(&guest.lookup(ROOT, b"file.txt"))
        .expect("LOOKUP file.txt")
        .nodeid;
    assert_eq!(guest.lookup(ROOT, b"..").errno(), libc::EINVAL, "LOOKUP ..");
    assert_eq!(
        guest.lookup(ROOT, b"missing").errno(),
        libc::ENOENT,
        "LOOKUP missing"
    );
    let fh = guest.open_with(file, libc::O_RDWR).expect("OPEN");
    assert_eq!(guest.read(file, fh, 4096).expect("READ"), CONTENT);
    assert_eq!(guest.write(file, fh, b"hello").expect("WRITE"), 5);
    guest.release(file, fh);
    assert_eq!(
        guest.mkdir(ROOT, b"../escaped").errno(),
        libc::EINVAL,
        "MKDIR ../escaped"
    );
    assert_eq!(
        guest.rename(ROOT, b"file.txt", ROOT, b"a/b").errno(),
        libc::EINVAL,
        "RENAME to a/b"
    );
    assert_eq!(guest.getattr(ROOT).error, 0, "GETATTR of the root");

    let seen = scrape(&metrics);
    let kind = |k: &str| seen[&format!("hull_fs_requests_total{{kind=\"{k}\"}}")];
    let expected_kinds = [
        ("lookup", 3),
        ("getattr", 1),
        ("setattr", 0),
        ("read", 1),
        ("write", 1),
        ("create", 1),
        ("remove", 0),
        ("rename", 1),
        ("readdir", 0),
        ("open", 2),
        ("xattr", 0),
        ("other", 1),
    ];
    for (k, n) in expected_kinds {
        assert_eq!(kind(k), n, "requests of kind {k}: {seen:?}");
    }
    assert_eq!(seen["hull_fs_refused_names_total"], 3, "{seen:?}");
    // The three refused names and the missing file.
    assert_eq!(seen["hull_fs_request_errors_total"], 4, "{seen:?}");
    assert_eq!(
        seen["hull_fs_read_bytes_total"],
        CONTENT.len() as u64,
        "{seen:?}"
    );
    assert_eq!(seen["hull_fs_written_bytes_total"], 5, "{seen:?}");
    // A second reader gets the same counts: reading counts nothing.
    assert_eq!(scrape(&metrics), seen);

    fs.signal(libc::SIGTERM);
    let status = fs.wait(PROCESS_BOUND);
    drop(guest);
    let log = fs.log_text();
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(!metrics.exists(), "metrics socket left behind:\n{log}");
    assert!(!fs.socket.exists(), "vhost-user socket left behind");
}

#[test]
fn a_file_in_the_way_of_the_metrics_socket_fails_the_start_and_is_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let metrics = dir.path().join("metrics.sock");
    std::fs::write(&metrics, "keep").expect("a file in the way");
    let share = dir.path().join("share");
    std::fs::create_dir(&share).expect("share dir");
    let socket = dir.path().join("fs.sock");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hull-fs"))
        .arg("--socket-path")
        .arg(&socket)
        .arg("--shared-dir")
        .arg(&share)
        .arg("--metrics-socket")
        .arg(&metrics)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&metrics.display().to_string()), "{stderr}");
    assert_eq!(std::fs::read(&metrics).expect("kept"), b"keep");
    assert!(!socket.exists(), "vhost-user socket left behind");
    assert!(
        !dir.path().join("fs.sock.pid").exists(),
        "pid file left behind"
    );
}

#[test]
fn a_stale_metrics_socket_is_replaced() {
    let dir = tempfile::tempdir().expect("temp dir");
    let metrics = dir.path().join("hull-fs.metrics.sock");
    // A socket file nobody serves, as a killed hull-fs leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&metrics).expect("a stale socket"));
    let metrics_arg = metrics.to_str().expect("utf-8 temp path");
    let _fs = started(dir.path(), &["--metrics-socket", metrics_arg]);
    let text = scrape(&metrics);
    assert_eq!(
        text["hull_fs_requests_total{kind=\"lookup\"}"], 0,
        "{text:?}"
    );
}
