//! What the backends' integration tests share: temporary directories and child processes
//! cleaned up on drop, starting a backend binary until its socket appears, compiling a guest
//! program into a test initrd, and a QEMU TCG microvm with shared memory and one vhost-user
//! device.

// Each test binary uses its own part of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hull_tests::prereq::Missing;

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

/// A guest program of `tests/guest/` as a static binary: the file named by the environment
/// variable `prebuilt`, else compiled with `rustc` (std only, one call).
pub fn guest_binary(dir: &Path, source: &str, prebuilt: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(prebuilt) {
        return PathBuf::from(path);
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/guest")
        .join(source);
    let out = dir.join("guest-init");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
        ])
        .args(["-C", "debuginfo=0", "-C", "strip=symbols", "-o"])
        .arg(&out)
        .arg(&source)
        .output()
        .expect("running rustc");
    assert!(
        output.status.success(),
        "compiling the guest program failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

/// A test initrd whose `/init` is `guest`, packed by `agent/image/build-initrd.sh`.
pub fn test_initrd(dir: &Path, guest: &Path) -> Result<PathBuf, Missing> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/image/build-initrd.sh");
    let out = dir.join("initrd.img");
    let output = Command::new(&script)
        .arg(guest)
        .arg(&out)
        .output()
        .map_err(|e| {
            Missing::new(
                format!("initrd builder {} ({e})", script.display()),
                "check out the whole hull tree",
            )
        })?;
    if !output.status.success() {
        return Err(Missing::new(
            format!(
                "a working initrd builder: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            "make deps",
        ));
    }
    Ok(out)
}

/// A QEMU TCG microvm with 256 MiB of shared memory and the vhost-user device `device` (e.g.
/// `vhost-user-vsock-device`, options may follow after a comma) on the frontend socket
/// `socket`; `append` is added to the kernel command line, `extra` to QEMU's. The console
/// goes to `console`, QEMU's stderr next to it.
#[allow(clippy::too_many_arguments)]
pub fn start_qemu(
    qemu: &Path,
    kernel: &Path,
    initrd: &Path,
    device: &str,
    socket: &Path,
    append: &str,
    extra: &[&str],
    console: &Path,
) -> Reaped {
    let chardev = format!("socket,id=vu0,path={}", socket.display());
    let child = Command::new(qemu)
        .args([
            "-M",
            "microvm,acpi=off,memory-backend=mem",
            "-accel",
            "tcg",
            "-cpu",
            "max",
        ])
        .args([
            "-m",
            "256",
            "-object",
            "memory-backend-memfd,id=mem,size=256M,share=on",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-serial", "stdio", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            &format!("console=ttyS0 reboot=t panic=-1 {append}"),
        ])
        .args([
            "-chardev",
            &chardev,
            "-device",
            &format!("{device},chardev=vu0"),
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(console).expect("console file"))
        .stderr(Stdio::from(
            std::fs::File::create(console.with_extension("err")).expect("stderr file"),
        ))
        .spawn()
        .expect("QEMU starts");
    Reaped(child)
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
