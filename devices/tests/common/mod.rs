//! What the backends' integration tests share about the backend process: temporary
//! directories and child processes cleaned up on drop, starting a backend binary until its
//! socket appears, stopping it with SIGTERM, and a frontend that only says hello. Guests come
//! from `hull_tests::guest_program` and `hull_tests::qemu`.

// Each test binary uses its own part of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Bounds for a TCG guest on a loaded 2-core machine: failure detectors, not expectations.
pub const GUEST_BOUND: Duration = Duration::from_secs(300);
pub const STARTUP_BOUND: Duration = Duration::from_secs(30);

/// A temporary directory removed on drop, even when the test fails.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("hull-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed and reaped on drop.
pub struct Reaped(pub Child);

impl Reaped {
    pub fn wait_bounded(&mut self, bound: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = i32::try_from(self.0.id()).expect("pid fits");
        // SAFETY: sending SIGTERM to a child this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Starts `binary` with `args` (logging to `log`) and waits until it created `socket`.
pub fn start_backend(binary: &str, args: &[&std::ffi::OsStr], socket: &Path, log: &Path) -> Reaped {
    let name = Path::new(binary)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let child = Command::new(binary)
        .args(args)
        .env("HULL_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("the backend starts");
    let mut backend = Reaped(child);
    let deadline = Instant::now() + STARTUP_BOUND;
    while !socket.exists() {
        assert!(
            backend.0.try_wait().expect("try_wait").is_none(),
            "{name:?} exited early: {}",
            read(log)
        );
        assert!(
            Instant::now() < deadline,
            "{name:?} did not create {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    backend
}

/// Checks the backend runs under its seccomp filter (mode 2 in /proc/PID/status) with the
/// capabilities `kept` only (a mask, [`hull_devices::privileges::mask`]) in its effective,
/// permitted and bounding sets.
pub fn assert_confined(backend: &Reaped, kept: u64) {
    let status = read(Path::new(&format!("/proc/{}/status", backend.0.id())));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
    };
    assert_eq!(
        field("Seccomp:"),
        Some("2"),
        "the backend is not under a seccomp filter:\n{status}"
    );
    for set in ["CapEff:", "CapPrm:", "CapBnd:"] {
        let mask = field(set).and_then(|v| u64::from_str_radix(v, 16).ok());
        assert_eq!(
            mask,
            Some(kept),
            "the backend's {set} is not {kept:#x}:\n{status}"
        );
    }
}

/// Sends SIGTERM to a backend and checks it exits 0 saying why.
pub fn terminate(backend: &mut Reaped, log: &Path) {
    backend.terminate();
    let status = backend
        .wait_bounded(STARTUP_BOUND)
        .expect("the backend exits on SIGTERM");
    let log_text = read(log);
    assert!(status.success(), "exit status {status}; log:\n{log_text}");
    assert!(
        log_text.contains("received SIGTERM"),
        "exit message; log:\n{log_text}"
    );
}

/// A vhost-user frontend that negotiates a little and goes away.
pub fn brief_frontend(socket: &Path) {
    use vhost::vhost_user::Frontend;
    use vhost::VhostBackend;
    let frontend = Frontend::connect(socket, 3).expect("frontend connects");
    frontend.set_owner().expect("owner");
    let features = frontend.get_features().expect("the backend answers");
    assert_ne!(features & (1 << 32), 0, "VIRTIO_F_VERSION_1 offered");
}

/// How many descriptors process `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// Serves `frontends` brief frontends one after another on a `--keep-listening` backend and
/// asserts its descriptors come back to what they were after the first: a backend serving
/// frontend after frontend must not keep anything of the ones that left. The count is taken
/// once it settles (the backend tears one frontend's daemon down and makes the next one's
/// after the frontend has gone); a leak never settles back, and fails at the bound.
pub fn assert_no_descriptor_growth(backend: &Reaped, socket: &Path, frontends: usize) {
    let pid = backend.0.id();
    brief_frontend(socket);
    let settled = || {
        let mut last = open_fds(pid);
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = open_fds(pid);
            if now == last {
                return now;
            }
            last = now;
        }
    };
    let baseline = settled();
    for _ in 1..frontends {
        brief_frontend(socket);
    }
    let deadline = Instant::now() + STARTUP_BOUND;
    let mut now = settled();
    while now > baseline && Instant::now() < deadline {
        now = settled();
    }
    assert!(
        now <= baseline,
        "{now} descriptors open after {frontends} frontends, {baseline} after the first: \
         {} kept per frontend",
        (now - baseline) / (frontends - 1)
    );
}

/// Waits for a backend whose frontend (QEMU) has gone: it must exit 0 and say why. Returns
/// its log.
pub fn expect_exit_after_frontend(backend: &mut Reaped, log: &Path, name: &str) -> String {
    let status = backend
        .wait_bounded(STARTUP_BOUND)
        .unwrap_or_else(|| panic!("{name} did not exit after QEMU"));
    let log_text = read(log);
    assert!(
        status.success(),
        "{name} exit status {status}; log:\n{log_text}"
    );
    assert!(
        log_text.contains("frontend disconnected"),
        "exit message; log:\n{log_text}"
    );
    log_text
}
