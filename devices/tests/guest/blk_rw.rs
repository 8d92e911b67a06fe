//! The guest side of hull-blk's QEMU integration test, run as `/init` of a test initrd.
//!
//! It exercises the disk as raw sectors with checksums, or as an ext4 file system: it mounts
//! devtmpfs on /dev, opens /dev/vda with `O_DIRECT` (so every
//! read and write reaches the device, not the guest's page cache), and then, by the
//! `HULL_BLK_MODE` the kernel passes from its command line:
//!
//! - `rw`: writes [`CHUNK`] bytes of a pattern at each of [`OFFSETS`], flushes (`fsync`, a
//!   virtio-blk FLUSH), reads every chunk back and compares checksums, and checks that a
//!   region never written reads as zeroes. With `HULL_BLK_READ_CPU=N` it writes from CPU 0
//!   and moves to CPU N before reading, so that a multiqueue disk serves the reads on another
//!   queue than the writes (blk-mq maps queues to CPUs). Then it discards one chunk and
//!   zeroes another (`BLKDISCARD`, `BLKZEROOUT`) and checks they read as zeroes, and reads
//!   the disk's serial (GET_ID) from sysfs.
//! - `readonly`: checks that a write fails (the disk is advertised read-only),
//!   and that the chunks the host put at [`OFFSETS`] read back with the pattern.
//! - `fs`: makes an ext4 file system on the disk (`/bin/mke2fs`, e2fsprogs from the host in
//!   the initrd), writes [`FILES`] on it with their checksums, unmounts, checks it with
//!   `/bin/e2fsck -f -n`, mounts it again and reads every file back, comparing checksums; the
//!   page cache is dropped before each look so the device is read.
//!
//! Prints `blk-guest: PASS` or `blk-guest: FAIL <why>` and stops the VM. Like
//! `vsock_echo.rs`, it depends on nothing but std and is compiled with one `rustc` call.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::process::Command;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

/// Byte offsets of the chunks the test writes (the host checks the same ones).
const OFFSETS: [u64; 4] = [0, (1 << 20) + 512, 17 << 20, (64 << 20) - CHUNK as u64];
/// Bytes per chunk.
const CHUNK: usize = 64 * 1024;
/// A region no chunk touches.
const UNTOUCHED: u64 = 32 << 20;
/// Chunks written, then discarded (`BLKDISCARD`) and zeroed (`BLKZEROOUT`) respectively.
const DISCARDED: u64 = 40 << 20;
const ZEROED: u64 = 48 << 20;
/// `BLKDISCARD` and `BLKZEROOUT` (`_IO(0x12, 119)`, `_IO(0x12, 127)`).
const BLKDISCARD: u64 = 0x1277;
const BLKZEROOUT: u64 = 0x127f;
/// What the device answers to GET_ID: hull-blk uses the disk file's name.
const SERIAL: &str = "disk.img";
/// `O_DIRECT` on x86_64 Linux.
const O_DIRECT: i32 = 0o40_000;

#[path = "../../../tests/guest/vm.rs"]
mod vm;

fn main() {
    println!("blk-guest: started");
    let verdict = run();
    match &verdict {
        Ok(()) => println!("blk-guest: PASS"),
        Err(why) => println!("blk-guest: FAIL {why}"),
    }
    vm::stop();
}

/// The pattern byte at disk offset `at`: the same formula as the host test's.
fn pattern(at: u64) -> u8 {
    (at.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// FNV-1a, to compare chunks by a short checksum in the log.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A page-aligned buffer of `len` bytes inside `storage` (`O_DIRECT` needs aligned buffers).
fn aligned(storage: &mut Vec<u8>, len: usize) -> &mut [u8] {
    storage.resize(len + 4096, 0);
    let start = storage.as_ptr().align_offset(4096);
    &mut storage[start..start + len]
}

fn run() -> Result<(), String> {
    mount_dev()?;
    let mode = std::env::var("HULL_BLK_MODE").unwrap_or_else(|_| "rw".into());
    println!("blk-guest: mode {mode}");
    let mut storage = Vec::new();
    match mode.as_str() {
        "rw" => {
            let read_cpu = match std::env::var("HULL_BLK_READ_CPU") {
                Ok(cpu) => Some(cpu.parse::<u32>().map_err(|_| format!("bad CPU {cpu}"))?),
                Err(_) => None,
            };
            if read_cpu.is_some() {
                // Init may start on any CPU: write from CPU 0 for certain.
                pin(0)?;
            }
            let disk = open(true)?;
            for &offset in &OFFSETS {
                let buf = aligned(&mut storage, CHUNK);
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = pattern(offset + i as u64);
                }
                disk.write_all_at(buf, offset)
                    .map_err(|e| format!("write at {offset}: {e}"))?;
            }
            disk.sync_all().map_err(|e| format!("flush: {e}"))?;
            println!("blk-guest: wrote and flushed {} chunks", OFFSETS.len());
            if let Some(cpu) = read_cpu {
                pin(cpu)?;
                println!("blk-guest: reading from CPU {cpu}");
            }
            for &offset in &OFFSETS {
                let buf = aligned(&mut storage, CHUNK);
                disk.read_exact_at(buf, offset)
                    .map_err(|e| format!("read at {offset}: {e}"))?;
                let expected: Vec<u8> = (0..CHUNK as u64).map(|i| pattern(offset + i)).collect();
                let (got, want) = (checksum(buf), checksum(&expected));
                println!("blk-guest: offset {offset} checksum {got:016x} (want {want:016x})");
                if got != want {
                    return Err(format!("chunk at {offset} reads back differently"));
                }
            }
            let buf = aligned(&mut storage, CHUNK);
            disk.read_exact_at(buf, UNTOUCHED)
                .map_err(|e| format!("read at {UNTOUCHED}: {e}"))?;
            if buf.iter().any(|&b| b != 0) {
                return Err("a region never written is not zero".into());
            }
            clear_chunks(&disk, &mut storage)?;
            check_serial()
        }
        "readonly" => {
            // Linux opens a read-only disk for writing and refuses the write itself (EPERM)
            // because the device advertised VIRTIO_BLK_F_RO.
            match open(true).and_then(|disk| {
                disk.write_all_at(aligned(&mut storage, CHUNK), 0)
                    .and_then(|()| disk.sync_all())
                    .map_err(|e| e.to_string())
            }) {
                Ok(()) => return Err("a write to the read-only disk succeeded".into()),
                Err(why) => println!("blk-guest: write refused as expected ({why})"),
            }
            let disk = open(false)?;
            for &offset in &OFFSETS {
                let buf = aligned(&mut storage, CHUNK);
                disk.read_exact_at(buf, offset)
                    .map_err(|e| format!("read at {offset}: {e}"))?;
                if buf
                    .iter()
                    .enumerate()
                    .any(|(i, &b)| b != pattern(offset + i as u64))
                {
                    return Err(format!("chunk at {offset} differs from the host's"));
                }
            }
            println!("blk-guest: read {} chunks the host wrote", OFFSETS.len());
            Ok(())
        }
        "fs" => filesystem(),
        other => Err(format!("unknown HULL_BLK_MODE {other}")),
    }
}

/// Writes the pattern at [`DISCARDED`] and [`ZEROED`], checks it is there, then discards the
/// first and zeroes the second (virtio-blk DISCARD and WRITE_ZEROES) and checks both read
/// as zeroes.
fn clear_chunks(disk: &File, storage: &mut Vec<u8>) -> Result<(), String> {
    for (offset, ioctl, what) in [
        (DISCARDED, BLKDISCARD, "discard"),
        (ZEROED, BLKZEROOUT, "zero-out"),
    ] {
        let buf = aligned(storage, CHUNK);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = pattern(offset + i as u64);
        }
        disk.write_all_at(buf, offset)
            .map_err(|e| format!("write at {offset}: {e}"))?;
        let buf = aligned(storage, CHUNK);
        disk.read_exact_at(buf, offset)
            .map_err(|e| format!("read at {offset}: {e}"))?;
        if buf
            .iter()
            .enumerate()
            .any(|(i, &b)| b != pattern(offset + i as u64))
        {
            return Err(format!(
                "chunk at {offset} reads back differently before the {what}"
            ));
        }
        let range: [u64; 2] = [offset, CHUNK as u64];
        // SAFETY: the ioctl reads two u64 from `range`, which lives across the call.
        let rc =
            unsafe { sys::ioctl(std::os::fd::AsRawFd::as_raw_fd(disk), ioctl, range.as_ptr()) };
        if rc < 0 {
            return Err(format!(
                "{what} at {offset}: {}",
                std::io::Error::last_os_error()
            ));
        }
        let buf = aligned(storage, CHUNK);
        disk.read_exact_at(buf, offset)
            .map_err(|e| format!("read at {offset}: {e}"))?;
        if buf.iter().any(|&b| b != 0) {
            return Err(format!("chunk at {offset} is not zero after the {what}"));
        }
        println!("blk-guest: {what} at {offset} reads back as zeroes");
    }
    Ok(())
}

/// The files of the `fs` mode, by name and size (the host test lists the same).
const FILES: [(&str, usize); 3] = [("small", 4096 + 17), ("medium", 1 << 20), ("large", 8 << 20)];

/// The contents of file `name` of `len` bytes: the pattern from an offset its name picks (the
/// host test computes the same).
fn file_bytes(name: &str, len: usize) -> Vec<u8> {
    let base = checksum(name.as_bytes());
    (0..len as u64).map(|i| pattern(base.wrapping_add(i))).collect()
}

/// Runs `program` with `args`, failing with what it printed unless it exits 0.
fn run_program(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("running {program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Drops the guest's page cache, so the next reads come from the device.
fn drop_caches() -> Result<(), String> {
    // SAFETY: no pointers.
    unsafe { sys::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").map_err(|e| format!("drop_caches: {e}"))
}

/// The `fs` mode: mkfs, files written with checksums, fsck, files read back.
fn filesystem() -> Result<(), String> {
    std::fs::create_dir_all("/proc").map_err(|e| format!("mkdir /proc: {e}"))?;
    vm::mount_fs("proc", "/proc", "proc").map_err(|e| format!("mount proc: {e}"))?;
    run_program("/bin/mke2fs", &["-q", "-F", "-t", "ext4", "-L", "hull", "/dev/vda"])?;
    println!("blk-guest: mkfs.ext4 done");
    std::fs::create_dir_all("/mnt").map_err(|e| format!("mkdir /mnt: {e}"))?;
    vm::mount_fs("/dev/vda", "/mnt", "ext4").map_err(|e| format!("mount ext4: {e}"))?;
    for (name, len) in FILES {
        let bytes = file_bytes(name, len);
        let mut file =
            File::create(format!("/mnt/{name}")).map_err(|e| format!("create {name}: {e}"))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("write {name}: {e}"))?;
        println!("blk-guest: wrote {name} checksum {:016x}", checksum(&bytes));
    }
    vm::unmount("/mnt").map_err(|e| format!("umount: {e}"))?;
    drop_caches()?;
    run_program("/bin/e2fsck", &["-f", "-n", "/dev/vda"])?;
    println!("blk-guest: e2fsck clean");
    drop_caches()?;
    vm::mount_fs("/dev/vda", "/mnt", "ext4").map_err(|e| format!("mount ext4 again: {e}"))?;
    for (name, len) in FILES {
        let got = std::fs::read(format!("/mnt/{name}")).map_err(|e| format!("read {name}: {e}"))?;
        let (got, want) = (checksum(&got), checksum(&file_bytes(name, len)));
        println!("blk-guest: read back {name} checksum {got:016x} (want {want:016x})");
        if got != want {
            return Err(format!("{name} reads back differently"));
        }
    }
    vm::unmount("/mnt").map_err(|e| format!("umount: {e}"))
}

/// Checks the disk's serial (virtio-blk GET_ID) through sysfs.
fn check_serial() -> Result<(), String> {
    std::fs::create_dir_all("/sys").map_err(|e| format!("mkdir /sys: {e}"))?;
    // SAFETY: C strings are NUL-terminated literals; a null data pointer is allowed.
    let rc = unsafe {
        sys::mount(
            c"sysfs".as_ptr(),
            c"/sys".as_ptr(),
            c"sysfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc < 0 {
        return Err(format!("mount sysfs: {}", std::io::Error::last_os_error()));
    }
    let serial = std::fs::read_to_string("/sys/block/vda/serial")
        .map_err(|e| format!("reading the serial: {e}"))?;
    if serial.trim_end() != SERIAL {
        return Err(format!("serial {serial:?}, expected {SERIAL:?}"));
    }
    println!("blk-guest: serial {SERIAL}");
    Ok(())
}

/// Moves this thread to CPU `cpu` alone.
fn pin(cpu: u32) -> Result<(), String> {
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

fn open(write: bool) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(O_DIRECT)
        .open("/dev/vda")
        .map_err(|e| format!("open /dev/vda (write: {write}): {e}"))
}

fn mount_dev() -> Result<(), String> {
    // SAFETY: C strings are NUL-terminated literals; a null data pointer is allowed.
    let rc = unsafe {
        sys::mount(
            c"devtmpfs".as_ptr(),
            c"/dev".as_ptr(),
            c"devtmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        // EBUSY: the kernel mounted it already.
        if err.raw_os_error() != Some(16) {
            return Err(format!("mount devtmpfs: {err}"));
        }
    }
    Ok(())
}

/// The libc calls this program needs (x86_64 Linux values).
mod sys {
    use std::ffi::c_char;

    extern "C" {
        pub fn mount(
            source: *const c_char,
            target: *const c_char,
            fstype: *const c_char,
            flags: u64,
            data: *const std::ffi::c_void,
        ) -> i32;
        pub fn ioctl(fd: i32, request: u64, arg: *const u64) -> i32;
        pub fn sched_setaffinity(pid: i32, size: usize, mask: *const u64) -> i32;
        pub fn sync();
    }
}
