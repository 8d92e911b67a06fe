//! hull-blk as users run it: the real binary, a vhost-user frontend (QEMU TCG with a Linux
//! guest), and a sparse disk file the host checks afterwards.
//!
//! The guest is `tests/guest/blk_rw.rs`, built and packed as `/init` of a test initrd by
//! `hull_tests::guest_program`; it writes and reads raw sectors of /dev/vda with checksums,
//! and, with e2fsprogs from the host in its initrd, makes an ext4 file system, writes files,
//! checks it with e2fsck and reads the files back.

use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_confined, read, start_backend, terminate, Reaped, TempDir, GUEST_BOUND};
use hull_tests::prereq::{find_program, Missing};
use hull_tests::qemu::{Guest, GuestConfig, VhostUserDevice};
use hull_tests::{artifacts, guest_program, require};

mod common;

/// Size of the test disk: sparse, so it costs nothing.
const DISK_BYTES: u64 = 64 << 20;
/// What the guest program writes and checks; see `tests/guest/blk_rw.rs`.
const OFFSETS: [u64; 4] = [0, (1 << 20) + 512, 17 << 20, (64 << 20) - CHUNK as u64];
const CHUNK: usize = 64 * 1024;
/// Chunks the guest writes, then discards and zeroes.
const CLEARED: [u64; 2] = [40 << 20, 48 << 20];

/// The guest program's pattern byte at disk offset `at`.
fn pattern(at: u64) -> u8 {
    // Truncation to the low byte is the pattern.
    #[allow(clippy::cast_possible_truncation)]
    let byte = (at.wrapping_mul(2_654_435_761) >> 13) as u8;
    byte
}

fn chunk_at(disk: &Path, offset: u64) -> Vec<u8> {
    let file = std::fs::File::open(disk).expect("opening the disk file");
    let mut buf = vec![0u8; CHUNK];
    file.read_exact_at(&mut buf, offset)
        .expect("reading the disk file");
    buf
}

fn expected_chunk(offset: u64) -> Vec<u8> {
    (0..CHUNK as u64).map(|i| pattern(offset + i)).collect()
}

/// The guest said PASS, the disk file holds its pattern at every offset, and the chunks it
/// discarded and zeroed are zeroes.
fn assert_guest_wrote_its_pattern(console: &str, disk: &Path) {
    assert!(
        console.contains("blk-guest: PASS"),
        "guest verdict; console:\n{console}"
    );
    for offset in OFFSETS {
        assert!(
            chunk_at(disk, offset) == expected_chunk(offset),
            "the disk file holds the guest's pattern at {offset}"
        );
    }
    for offset in CLEARED {
        assert!(
            chunk_at(disk, offset).iter().all(|&b| b == 0),
            "the chunk the guest cleared at {offset} is zeroes"
        );
    }
    assert!(
        console.contains("blk-guest: discard at") && console.contains("blk-guest: zero-out at"),
        "the guest discarded and zeroed; console:\n{console}"
    );
}

/// A sparse disk file of [`DISK_BYTES`] in `dir`.
fn sparse_disk(dir: &Path) -> PathBuf {
    let path = dir.join("disk.img");
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(DISK_BYTES))
        .expect("creating the disk file");
    path
}

fn start_blk(dir: &Path, disk: &Path, extra: &[&str]) -> (Reaped, PathBuf, PathBuf) {
    let socket = dir.join("vhost-user-blk.sock");
    let log = dir.join("hull-blk.log");
    let mut args: Vec<&OsStr> = vec![
        "--socket".as_ref(),
        socket.as_os_str(),
        "--path".as_ref(),
        disk.as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    let backend = start_backend(env!("CARGO_BIN_EXE_hull-blk"), &args, &socket, &log);
    (backend, socket, log)
}

/// The guest kernel and a test initrd with the guest program as `/init`.
struct TestGuest {
    kernel: PathBuf,
    initrd: PathBuf,
}

fn guest(dir: &TempDir) -> Result<TestGuest, Missing> {
    guest_with_programs(dir, &[])
}

/// [`guest`] with host `programs` under the initrd's /bin.
fn guest_with_programs(dir: &TempDir, programs: &[&Path]) -> Result<TestGuest, Missing> {
    find_program("qemu-system-x86_64", "qemu-system-x86")?;
    let kernel = artifacts::vmlinux()?;
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/blk_rw.rs");
    let initrd = guest_program::build_initrd_with_programs(&source, &dir.0, programs)?
        .expect("the guest program builds");
    Ok(TestGuest { kernel, initrd })
}

/// The files the guest's `fs` mode writes, by name and size (see `tests/guest/blk_rw.rs`).
const FILES: [(&str, usize); 3] = [
    ("small", 4096 + 17),
    ("medium", 1 << 20),
    ("large", 8 << 20),
];

/// The guest program's FNV-1a.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The contents the guest gives file `name` of `len` bytes.
fn file_bytes(name: &str, len: usize) -> Vec<u8> {
    let base = checksum(name.as_bytes());
    (0..len as u64)
        .map(|i| pattern(base.wrapping_add(i)))
        .collect()
}

/// Boots `guest` on hull-blk (started with `extra` options) in `mode`; returns the console
/// and hull-blk's log once the guest stopped and hull-blk exited (checking it said why and
/// exited 0).
fn run_guest(guest: &TestGuest, dir: &TempDir, disk: &Path, mode: &str, extra: &[&str]) -> String {
    run_guest_with(
        guest,
        dir,
        disk,
        (extra, "vhost-user-blk", 1),
        &format!("HULL_BLK_MODE={mode}"),
    )
}

/// [`run_guest`] with hull-blk options, the QEMU device model (and options) and the number of
/// vCPUs, and the kernel command line addition spelled out.
fn run_guest_with(
    guest: &TestGuest,
    dir: &TempDir,
    disk: &Path,
    (extra, model, vcpus): (&[&str], &str, u32),
    append: &str,
) -> String {
    let (mut backend, socket, log) = start_blk(&dir.0, disk, extra);
    let config = GuestConfig {
        kernel: guest.kernel.clone(),
        initrd: guest.initrd.clone(),
        extra_cmdline: append.into(),
        memory_mib: 256,
        vcpus,
        devices: vec![VhostUserDevice {
            socket: socket.clone(),
            model: model.into(),
        }],
    };
    let running = Guest::start(&config)
        .expect("QEMU was found before")
        .expect("QEMU starts");
    let console_text = running
        .wait(GUEST_BOUND)
        .expect("the guest stops by itself")
        .console;
    let log_text = common::expect_exit_after_frontend(&mut backend, &log, "hull-blk");
    assert!(!socket.exists(), "hull-blk removed its socket");
    format!("{console_text}\n--- hull-blk ---\n{log_text}")
}

#[test]
fn guest_writes_flushes_and_reads_back_sectors_through_hull_blk_under_qemu() {
    let test = "guest_writes_flushes_and_reads_back_sectors_through_hull_blk_under_qemu";
    let dir = TempDir::new("blk-qemu-rw");
    let disk = sparse_disk(&dir.0);
    let guest = require!(test, guest(&dir));
    let console = run_guest(&guest, &dir, &disk, "rw", &[]);
    assert_guest_wrote_its_pattern(&console, &disk);
    assert_eq!(
        std::fs::metadata(&disk).expect("disk").len(),
        DISK_BYTES,
        "the disk file keeps its size"
    );
}

/// mkfs, files, fsck and read-back in the guest, on hull-blk: then the host finds the same
/// file system in the disk file, clean, with the guest's files in it byte for byte.
#[test]
fn guest_makes_ext4_writes_files_fscks_and_reads_them_back_through_hull_blk_under_qemu() {
    let test =
        "guest_makes_ext4_writes_files_fscks_and_reads_them_back_through_hull_blk_under_qemu";
    let mke2fs = require!(test, find_program("mke2fs", "e2fsprogs"));
    let e2fsck = require!(test, find_program("e2fsck", "e2fsprogs"));
    let debugfs = require!(test, find_program("debugfs", "e2fsprogs"));
    let dir = TempDir::new("blk-qemu-fs");
    let disk = sparse_disk(&dir.0);
    let guest = require!(test, guest_with_programs(&dir, &[&mke2fs, &e2fsck]));
    let console = run_guest(&guest, &dir, &disk, "fs", &[]);
    assert!(
        console.contains("blk-guest: PASS") && console.contains("blk-guest: e2fsck clean"),
        "guest verdict; console:\n{console}"
    );
    let fsck = Command::new(&e2fsck)
        .args(["-f", "-n"])
        .arg(&disk)
        .output()
        .expect("e2fsck runs");
    assert!(
        fsck.status.success(),
        "the host's e2fsck finds the guest's file system damaged: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    for (name, len) in FILES {
        let copy = dir.0.join(format!("{name}.copy"));
        let dump = Command::new(&debugfs)
            .arg("-R")
            .arg(format!("dump /{name} {}", copy.display()))
            .arg(&disk)
            .output()
            .expect("debugfs runs");
        assert!(dump.status.success(), "debugfs dump /{name}: {dump:?}");
        let bytes = std::fs::read(&copy).expect("debugfs wrote the file out");
        assert!(
            bytes == file_bytes(name, len),
            "/{name} in the disk file differs from what the guest wrote ({} bytes; it wrote {len})",
            bytes.len()
        );
    }
}

#[test]
fn readonly_hull_blk_refuses_the_guests_writes_and_leaves_the_file_unchanged() {
    let test = "readonly_hull_blk_refuses_the_guests_writes_and_leaves_the_file_unchanged";
    let dir = TempDir::new("blk-qemu-ro");
    let guest = require!(test, guest(&dir));
    let disk = sparse_disk(&dir.0);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .expect("disk");
    for offset in OFFSETS {
        file.write_all_at(&expected_chunk(offset), offset)
            .expect("writing the host pattern");
    }
    drop(file);
    let before = std::fs::read(&disk).expect("disk");
    let console = run_guest(&guest, &dir, &disk, "readonly", &["--readonly"]);
    assert!(
        console.contains("blk-guest: write refused as expected"),
        "the guest could not open the disk for writing; console:\n{console}"
    );
    assert!(
        console.contains("blk-guest: PASS"),
        "guest verdict; console:\n{console}"
    );
    assert!(
        std::fs::read(&disk).expect("disk") == before,
        "the disk file is unchanged"
    );
}

#[test]
fn two_queues_with_o_direct_serve_a_guest_on_two_cpus() {
    let test = "two_queues_with_o_direct_serve_a_guest_on_two_cpus";
    let dir = TempDir::new("blk-qemu-mq");
    let guest = require!(test, guest(&dir));
    let disk = sparse_disk(&dir.0);
    let console = run_guest_with(
        &guest,
        &dir,
        &disk,
        (
            &["--queues", "2", "--direct"],
            "vhost-user-blk,num-queues=2",
            2,
        ),
        "HULL_BLK_MODE=rw HULL_BLK_READ_CPU=1",
    );
    assert_guest_wrote_its_pattern(&console, &disk);
    // The writes came from CPU 0 and the reads from CPU 1: both queues served requests.
    let per_queue = console
        .lines()
        .find_map(|l| l.split("per_queue: [").nth(1))
        .and_then(|rest| rest.split(']').next())
        .map(|list| {
            list.split(", ")
                .filter_map(|n| n.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert_eq!(per_queue.len(), 2, "per-queue counters; log:\n{console}");
    assert!(
        per_queue.iter().all(|&n| n > 0),
        "both queues served requests: {per_queue:?}; console:\n{console}"
    );
}

#[test]
fn blocking_engine_serves_the_guest_too() {
    let test = "blocking_engine_serves_the_guest_too";
    let dir = TempDir::new("blk-qemu-sync");
    let guest = require!(test, guest(&dir));
    let disk = sparse_disk(&dir.0);
    let console = run_guest(&guest, &dir, &disk, "rw", &["--sync-io"]);
    assert!(
        console.contains("engine=sync"),
        "the log names the engine; console:\n{console}"
    );
    assert_guest_wrote_its_pattern(&console, &disk);
}

#[test]
fn sigterm_stops_hull_blk_cleanly_before_any_frontend() {
    let dir = TempDir::new("blk-sigterm");
    let disk = sparse_disk(&dir.0);
    let (mut backend, socket, log) = start_blk(&dir.0, &disk, &[]);
    assert_confined(&backend, 0);
    terminate(&mut backend, &log);
    assert!(!socket.exists(), "socket removed");
}

#[test]
fn keep_listening_serves_the_next_frontend_until_sigterm() {
    let dir = TempDir::new("blk-keep");
    let disk = sparse_disk(&dir.0);
    let (mut backend, socket, log) = start_blk(&dir.0, &disk, &["--keep-listening"]);
    // Eight frontends, and nothing of them kept (vhost-user-backend leaks an eventfd per
    // worker thread per frontend, closed by hull's exit_events).
    common::assert_no_descriptor_growth(&backend, &socket, 8);
    assert!(
        backend.0.try_wait().expect("try_wait").is_none(),
        "still serving: {}",
        read(&log)
    );
    terminate(&mut backend, &log);
    assert!(!socket.exists(), "socket removed");
}

/// Runs hull-blk on `path` with `extra` arguments, expecting it to refuse them before it
/// serves: it fails and makes no socket. Returns what it printed on stderr.
fn refusal(dir: &Path, path: &Path, extra: &[&str]) -> String {
    let socket = dir.join("vu.sock");
    let output = Command::new(env!("CARGO_BIN_EXE_hull-blk"))
        .arg("--socket")
        .arg(&socket)
        .arg("--path")
        .arg(path)
        .args(extra)
        .output()
        .expect("hull-blk runs");
    assert!(!output.status.success());
    assert!(
        !socket.exists(),
        "refused before serving, yet made its socket"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn missing_disk_is_refused_with_a_message_naming_it() {
    let dir = TempDir::new("blk-missing");
    let stderr = refusal(&dir.0, &dir.0.join("nope.img"), &[]);
    assert!(
        stderr.contains("cannot use") && stderr.contains("nope.img"),
        "{stderr}"
    );
}

#[test]
fn a_serial_longer_than_20_bytes_is_refused_naming_the_limit() {
    let dir = TempDir::new("blk-serial");
    let disk = sparse_disk(&dir.0);
    let stderr = refusal(&dir.0, &disk, &["--serial", "abcdefghijklmnopqrstu"]);
    assert!(
        stderr.contains("--serial") && stderr.contains("21 bytes") && stderr.contains("at most 20"),
        "{stderr}"
    );
}

#[test]
fn a_submission_group_outside_the_ring_is_refused_naming_the_range() {
    let dir = TempDir::new("blk-submit-batch");
    let disk = sparse_disk(&dir.0);
    for batch in ["0", "129"] {
        let stderr = refusal(&dir.0, &disk, &["--submit-batch", batch]);
        assert!(
            stderr.contains("--submit-batch") && stderr.contains("1..=128"),
            "{stderr}"
        );
    }
}

#[test]
fn help_lists_the_command_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_hull-blk"))
        .arg("--help")
        .output()
        .expect("hull-blk runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    for option in [
        "--serial",
        "--socket",
        "--path",
        "--readonly",
        "--direct",
        "--queues",
        "--keep-listening",
    ] {
        assert!(stdout.contains(option), "{option} in:\n{stdout}");
    }
}
