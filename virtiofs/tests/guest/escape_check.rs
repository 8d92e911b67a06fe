//! /init of the guest in hull-fs's in-guest escape test (tests/qemu_escape.rs): mounts the
//! virtio-fs share tagged `hullfs` on /mnt and tries, as a hostile container would, every
//! way it knows to read a host file outside the share. The host passes the outside
//! directory's host path on the kernel command line (`hullfs.outside=PATH`) so the guest can
//! aim at it by name too.
//!
//! Prints one line per attempt: `HULLFS-ESCAPE <case> <path> -> denied: <error>` or
//! `HULLFS-ESCAPE <case> <path> -> read: <first bytes>`, so the host can check that no line
//! carries the secret (the guest does not know it), then `HULLFS-ESCAPE-DONE` and powers the
//! VM off. For the symlink race it prints `HULLFS-ESCAPE race-start` and reads in a loop
//! until the host has swapped the directory often enough and created /mnt/race-stop.
//!
//! Built by the test with plain `rustc` (std only, statically linked), not by cargo.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

#[path = "../../../tests/guest/vm.rs"]
mod vm;
use vm::mount_fs;


/// Up to 64 bytes of `path`'s content, printable.
fn read_some(path: &str) -> std::io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut buf = [0u8; 64];
    let n = file.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).replace(['\n', '\r'], " "))
}

/// Tries to read `path` and says what happened.
fn attempt(case: &str, path: &str) -> bool {
    match read_some(path) {
        Ok(text) => {
            println!("HULLFS-ESCAPE {case} {path} -> read: {text}");
            true
        }
        Err(err) => {
            println!("HULLFS-ESCAPE {case} {path} -> denied: {err}");
            false
        }
    }
}

/// Lists `path` (names only), or says why not.
fn list(case: &str, path: &str) {
    match fs::read_dir(path) {
        Ok(entries) => {
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect();
            names.sort();
            println!("HULLFS-ESCAPE {case} {path} -> listed: {}", names.join(","));
        }
        Err(err) => println!("HULLFS-ESCAPE {case} {path} -> denied: {err}"),
    }
}

fn outside() -> String {
    fs::read_to_string("/proc/cmdline")
        .unwrap_or_default()
        .split_whitespace()
        .find_map(|w| w.strip_prefix("hullfs.outside=").map(str::to_owned))
        .unwrap_or_else(|| "/nonexistent-outside".into())
}

fn run() {
    let _ = mount_fs("proc", "/proc", "proc");
    if let Err(err) = mount_fs("hullfs", "/mnt", "virtiofs") {
        println!("HULLFS-ESCAPE-FAIL mount: {err}");
        return;
    }
    let outside = outside();
    let secret = format!("{outside}/secret.txt");

    // `..` from the share's root, and the host path by name.
    attempt("dotdot", "/mnt/../secret.txt");
    attempt("dotdot", &format!("/mnt/..{secret}"));
    attempt("dotdot", &format!("/mnt/../../../..{secret}"));
    attempt("host-path", &secret);
    attempt("host-path", &format!("/mnt{secret}"));
    // Symlinks the host left in the share.
    attempt("absolute-symlink", "/mnt/abs-link");
    attempt("relative-symlink", "/mnt/rel-link");
    attempt("relative-symlink", "/mnt/dir/deep-rel-link");
    // /proc/self/fd and /proc/self/root tricks: the guest's own /proc.
    if let Ok(dir) = fs::File::open("/mnt") {
        use std::os::fd::AsRawFd;
        let fd = dir.as_raw_fd();
        attempt("proc-fd", &format!("/proc/self/fd/{fd}/../secret.txt"));
        attempt("proc-fd", &format!("/proc/self/fd/{fd}/..{secret}"));
    }
    attempt("proc-fd", &format!("/proc/self/root{secret}"));
    attempt("proc-fd", "/mnt/proc-link");
    // A hard link to a file outside: the guest knows the host path, and its own files.
    for (from, to) in [
        (secret.as_str(), "/mnt/hardlink-1"),
        ("/init", "/mnt/hardlink-2"),
    ] {
        match fs::hard_link(from, to) {
            Ok(()) => {
                println!("HULLFS-ESCAPE hard-link {from} -> linked {to}");
                attempt("hard-link", to);
            }
            Err(err) => println!("HULLFS-ESCAPE hard-link {from} -> denied: {err}"),
        }
    }
    // Mount points: one the host made before hull-fs started (an outside directory beside
    // the secret), one after (the secret's own directory).
    list("mount-before", "/mnt/bound");
    attempt("mount-before", "/mnt/bound/../secret.txt");
    attempt("mount-before", "/mnt/bound/secret.txt");
    list("mount-after", "/mnt/mounted-later");
    attempt("mount-after", "/mnt/mounted-later/secret.txt");

    // The symlink race: the host swaps /mnt/race between a directory holding a decoy and a
    // symlink to the outside directory while this loop opens through it.
    println!("HULLFS-ESCAPE race-start");
    let _ = std::io::stdout().flush();
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut reads, mut denials, mut others) = (0u64, 0u64, 0u64);
    while !Path::new("/mnt/race-stop").exists() && Instant::now() < deadline {
        match read_some("/mnt/race/secret.txt") {
            Ok(text) if text.starts_with("decoy") => {
                reads += 1;
                if reads == 1 {
                    println!("HULLFS-ESCAPE race-saw-decoy");
                }
            }
            Ok(text) => {
                others += 1;
                println!("HULLFS-ESCAPE race /mnt/race/secret.txt -> read: {text}");
            }
            Err(_) => {
                denials += 1;
                if denials == 1 {
                    println!("HULLFS-ESCAPE race-saw-denied");
                }
            }
        }
    }
    println!("HULLFS-ESCAPE race-end decoys={reads} denied={denials} other={others}");
}

fn main() {
    run();
    println!("HULLFS-ESCAPE-DONE");
    let _ = std::io::stdout().flush();
    vm::stop();
}
