//! Escapes tried from inside a real Linux guest (QEMU TCG microvm, `vhost-user-fs-device`)
//! against hull-fs: the guest's /init, tests/guest/escape_check.rs, tries every way the issue
//! lists to read a host file outside the shared directory, and the host checks that the
//! secret's content never reached the guest's console.
//!
//! Who stops each attempt (said honestly: a Linux guest resolves paths itself, so most never
//! reach hull-fs as an escaping request):
//!
//! | attempt | stopped by |
//! |---|---|
//! | `..` from the share's root, the host path by name | the guest kernel: `..` at the mount's root is the guest's own tree; hull-fs gets plain LOOKUPs of names in the share |
//! | absolute symlink the host left in the share | the guest kernel: hull-fs answers READLINK with the target and the guest resolves it in its own tree (hull-fs's LOOKUP uses `O_NOFOLLOW`) |
//! | relative symlink climbing out | the guest kernel, the same way |
//! | `/proc/self/fd/N/..`, `/proc/self/root/...`, a symlink into `/proc` | the guest kernel: the guest's own /proc |
//! | hard link to an outside file | the guest kernel: EXDEV (another file system) or ENOENT; LINK only ever names node ids of the share (forged ids: tests/escape.rs) |
//! | mount point made before hull-fs started (outside dir beside the secret) | its content is in the share by the host's choice; `..` out of it is the guest's |
//! | mount point made after hull-fs started (the secret's own dir) | **hull-fs**: its server lives in its own mount namespace on a detached copy of the share, so later host mounts are invisible; silent, nothing to log |
//! | symlink race (host swaps a dir for a symlink to the outside while the guest opens through it) | **hull-fs** and the guest together: a LOOKUP during the symlink phase hands the guest a symlink (not followed by the server, resolved by the guest in its tree); a node looked up in the dir phase stays that directory (held `O_PATH`) |
//!
//! hull-fs's own refusals that a guest can trigger only with hand-made FUSE requests (names
//! with `/` or `..`, forged node ids) are logged and tested in tests/escape.rs; a Linux
//! guest's VFS never sends such a name, and this test checks that the log holds no refusal,
//! i.e. that no escape here got as far as hull-fs's name guard.
//!
//! Needs root (the host's mounts), qemu-system-x86_64, the guest kernel (`make image`) and
//! rustc; skips loudly without them.

mod support;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_tests::qemu::{Guest, GuestConfig, VhostUserDevice};
use hull_tests::{artifacts, guest_program, prereq, require};
use support::HullFs;

/// A bound for a TCG boot and the guest's work on a loaded 2-core machine, not a timing
/// expectation.
const GUEST_BOUND: Duration = Duration::from_secs(600);
/// Swaps of the race directory before the host lets the guest stop (once it saw both).
const MIN_SWAPS: u32 = 200;

/// Mounts made by the test, detached when it ends whatever happens.
struct Mounts(Vec<PathBuf>);

impl Mounts {
    fn bind(&mut self, source: &Path, target: &Path) {
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).expect("no NUL in a path");
        let (source_c, target_c) = (c(source), c(target));
        // SAFETY: NUL-terminated paths that outlive the call; no fs type or data for a bind.
        let rc = unsafe {
            libc::mount(
                source_c.as_ptr(),
                target_c.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        assert_eq!(
            rc,
            0,
            "bind-mounting {} on {}: {}",
            source.display(),
            target.display(),
            std::io::Error::last_os_error()
        );
        self.0.push(target.to_owned());
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for target in self.0.drain(..).rev() {
            if let Ok(target) = CString::new(target.as_os_str().as_bytes()) {
                // SAFETY: a NUL-terminated path that outlives the call.
                unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

/// Whether anything is mounted at or below `dir` in this mount namespace.
fn mounted_below(dir: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let dir = dir.to_string_lossy();
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|point| point.starts_with(&*dir))
}

#[test]
fn guest_never_reads_a_host_file_outside_the_share() {
    let test = "guest_never_reads_a_host_file_outside_the_share";
    require!(test, prereq::root());
    let dir = tempfile::tempdir().expect("temp dir");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/escape_check.rs");
    let kernel = require!(test, artifacts::vmlinux());
    let initrd = require!(test, guest_program::build_initrd(&source, dir.path()))
        .expect("the guest program builds");

    // The outside: a secret beside the share, which the guest must never read.
    let secret = format!(
        "HULL-SECRET-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos()
    );
    let outside = dir.path().join("outside");
    let secret_path = outside.join("secret.txt");
    std::fs::create_dir_all(outside.join("beside")).expect("outside dirs");
    std::fs::write(&secret_path, &secret).expect("secret");
    std::fs::write(outside.join("beside/bound-ok.txt"), "bound content\n").expect("bound");

    let share = dir.path().join("share");
    for sub in ["dir", "bound", "mounted-later", "race-dir"] {
        std::fs::create_dir_all(share.join(sub)).expect("share dirs");
    }
    std::fs::write(share.join("race-dir/secret.txt"), "decoy\n").expect("decoy");
    use std::os::unix::fs::symlink;
    symlink(&secret_path, share.join("abs-link")).expect("absolute symlink");
    symlink("../outside/secret.txt", share.join("rel-link")).expect("relative symlink");
    symlink("../../outside/secret.txt", share.join("dir/deep-rel-link")).expect("deep link");
    let proc_target = format!("/proc/self/root{}", secret_path.display());
    symlink(&proc_target, share.join("proc-link")).expect("proc symlink");
    symlink(&outside, share.join("race-sym")).expect("race symlink");

    let mut mounts = Mounts(Vec::new());
    // Before hull-fs starts: a directory beside the secret, bind-mounted into the share.
    mounts.bind(&outside.join("beside"), &share.join("bound"));

    let socket = dir.path().join("fs.sock");
    let log = dir.path().join("hull-fs.log");
    let mut fs = HullFs::start(&socket, &share, &[], &log);
    fs.wait_for_socket();
    fs.wait_for_log("confined");
    // After hull-fs confined itself: the secret's own directory mounted into the share.
    mounts.bind(&outside, &share.join("mounted-later"));
    assert_eq!(
        std::fs::read_to_string(share.join("mounted-later/secret.txt")).expect("host view"),
        secret,
        "the host itself sees the later mount"
    );

    let config = GuestConfig {
        kernel,
        initrd,
        extra_cmdline: format!("quiet hullfs.outside={}", outside.display()),
        memory_mib: 256,
        vcpus: 1,
        devices: vec![VhostUserDevice {
            socket: socket.clone(),
            model: "vhost-user-fs-device,tag=hullfs".into(),
        }],
    };
    let guest = require!(test, Guest::start(&config)).expect("QEMU starts");

    // The race: swap share/race between the decoy directory and a symlink to the outside
    // while the guest opens race/secret.txt in a loop, until it has seen both at least once.
    let deadline = Instant::now() + GUEST_BOUND;
    while !guest.console().contains("HULLFS-ESCAPE race-start") {
        assert!(
            Instant::now() < deadline && !guest.console().contains("HULLFS-ESCAPE-DONE"),
            "the guest never started the race:\n{}",
            guest.console()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let race = share.join("race");
    let mut swaps = 0u32;
    loop {
        for name in ["race-dir", "race-sym"] {
            std::fs::rename(share.join(name), &race).expect("swap in");
            std::thread::sleep(Duration::from_millis(5));
            std::fs::rename(&race, share.join(name)).expect("swap out");
        }
        swaps += 1;
        let console = guest.console();
        let saw_both = console.contains("race-saw-decoy") && console.contains("race-saw-denied");
        if swaps >= MIN_SWAPS && saw_both {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the guest did not see both sides of the race after {swaps} swaps:\n{console}"
        );
    }
    std::fs::write(share.join("race-stop"), "").expect("race-stop");

    let finished = guest.wait(GUEST_BOUND).expect("the guest stops by itself");
    let console = finished.console;
    assert!(
        finished.status.success(),
        "QEMU: {}\n{console}",
        finished.status
    );
    assert!(console.contains("HULLFS-ESCAPE-DONE"), "{console}");
    assert!(!console.contains("HULLFS-ESCAPE-FAIL"), "{console}");

    // The point of it all: not one byte of the secret reached the guest.
    assert!(
        !console.contains(&secret),
        "the guest read the secret:\n{console}"
    );
    // Every attempt ran and was refused (by whoever), none read anything outside.
    let attempts: Vec<&str> = console
        .lines()
        .filter(|l| l.starts_with("HULLFS-ESCAPE ") && l.contains(" -> "))
        .collect();
    for case in [
        "dotdot",
        "host-path",
        "absolute-symlink",
        "relative-symlink",
        "proc-fd",
        "hard-link",
        "mount-before",
        "mount-after",
    ] {
        assert!(
            attempts
                .iter()
                .any(|l| l.starts_with(&format!("HULLFS-ESCAPE {case} "))),
            "no {case} attempt:\n{console}"
        );
    }
    let read: Vec<&&str> = attempts
        .iter()
        .filter(|l| l.contains("-> read:") || l.contains("-> linked"))
        .collect();
    assert!(read.is_empty(), "reads that should have failed: {read:#?}");
    // The controls: the guest does read through the share, so the refusals mean something.
    assert!(
        console.contains("HULLFS-ESCAPE mount-before /mnt/bound -> listed: bound-ok.txt"),
        "{console}"
    );
    assert!(
        console
            .lines()
            .any(|l| l.trim_end() == "HULLFS-ESCAPE mount-after /mnt/mounted-later -> listed:"),
        "hull-fs shows the later mount's mount point empty:\n{console}"
    );
    let race_end = console
        .lines()
        .find(|l| l.starts_with("HULLFS-ESCAPE race-end"))
        .unwrap_or_else(|| panic!("no race-end:\n{console}"));
    assert!(race_end.ends_with(" other=0"), "{race_end}");

    // Nothing the guest did reached hull-fs's name guard; hull-fs ends cleanly.
    let status = fs.wait(support::PROCESS_BOUND);
    let log = fs.log_text();
    assert!(status.success(), "hull-fs exited with {status}:\n{log}");
    assert!(
        !log.contains("refused a guest name"),
        "a Linux guest sent a name only a forged request carries:\n{log}"
    );
    assert!(log.contains("exiting: the frontend disconnected"), "{log}");
    for name in ["hardlink-1", "hardlink-2"] {
        assert!(
            std::fs::symlink_metadata(share.join(name)).is_err(),
            "{name} created in the share"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&secret_path).expect("secret"),
        secret
    );

    drop(mounts);
    assert!(!mounted_below(dir.path()), "the test's mounts are all gone");
}
