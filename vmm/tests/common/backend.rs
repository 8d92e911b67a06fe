//! vhost-user backends for tests: a temp dir, a disk file with a known pattern, and a
//! backend process that is always killed and reaped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hull_tests::prereq::{find_program, Missing};

/// A bound on waiting for a backend to start or answer, not a timing assertion.
pub const BOUND: Duration = Duration::from_secs(20);
/// Sectors of the test disk.
pub const DISK_SECTORS: u64 = 2048;

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("hull-vmm-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A backend process, killed and reaped on drop.
pub struct Backend(pub Child);

impl Backend {
    /// Starts `program` with `args`, stderr to `log`, and waits for `socket` to appear.
    pub fn start(program: &Path, args: &[&str], socket: &Path, log: &Path) -> Self {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let mut backend = Backend(child);
        let deadline = Instant::now() + BOUND;
        while !socket.exists() {
            let log_text = std::fs::read_to_string(log).unwrap_or_default();
            assert!(
                backend.0.try_wait().unwrap().is_none(),
                "{} exited early: {log_text}",
                program.display()
            );
            assert!(Instant::now() < deadline, "no socket; log: {log_text}");
            std::thread::sleep(Duration::from_millis(20));
        }
        backend
    }

    /// Waits (bounded) for the process to exit by itself.
    pub fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + BOUND;
        while Instant::now() < deadline {
            if let Some(status) = self.0.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Byte `i` of the disk file.
pub fn disk_byte(i: u64) -> u8 {
    u8::try_from((i * 7 + i / 512) % 251).unwrap()
}

/// A disk file of [`DISK_SECTORS`] with a known pattern.
pub fn disk(dir: &Path) -> PathBuf {
    let path = dir.join("disk.img");
    let bytes: Vec<u8> = (0..DISK_SECTORS * 512).map(disk_byte).collect();
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Starts hull-blk serving `disk` read-only on `dir/blk.sock`; returns it and the socket.
pub fn hull_blk(hull_blk: &Path, dir: &Path, disk: &Path) -> (Backend, PathBuf, PathBuf) {
    let socket = dir.join("blk.sock");
    let log = dir.join("hull-blk.log");
    let backend = Backend::start(
        hull_blk,
        &[
            "--socket",
            socket.to_str().unwrap(),
            "--path",
            disk.to_str().unwrap(),
            "--readonly",
        ],
        &socket,
        &log,
    );
    (backend, socket, log)
}

/// qemu-storage-daemon, a vhost-user-blk peer from QEMU.
pub fn qemu_storage_daemon() -> Result<PathBuf, Missing> {
    find_program("qemu-storage-daemon", "qemu-system-common")
}

/// Starts qemu-storage-daemon exporting `disk` read-only as vhost-user-blk on
/// `dir/qsd.sock`; returns it and the socket. It serves frontends until killed.
pub fn qsd_blk(qsd: &Path, dir: &Path, disk: &Path) -> (Backend, PathBuf) {
    let socket = dir.join("qsd.sock");
    let log = dir.join("qsd.log");
    let blockdev = format!(
        "driver=file,node-name=disk,filename={},read-only=on",
        disk.display()
    );
    let export = format!(
        "type=vhost-user-blk,id=export0,node-name=disk,addr.type=unix,addr.path={}",
        socket.display()
    );
    let backend = Backend::start(
        qsd,
        &["--blockdev", &blockdev, "--export", &export],
        &socket,
        &log,
    );
    (backend, socket)
}

/// Waits (bounded) until `interrupt`'s line was raised; a backend raises it just after it
/// publishes the used ring, so a driver that saw the ring may get here first.
pub fn wait_for_interrupt(interrupt: &hull_vmm::virtio::Interrupt) {
    let deadline = Instant::now() + BOUND;
    while interrupt.eventfd().read().is_err() {
        assert!(
            Instant::now() < deadline,
            "the interrupt line was never raised"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
