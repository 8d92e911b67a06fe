//! A Linux guest under QEMU mounts a directory hull-fs serves, works on it, and the host sees
//! the tree the guest left. The guest's /init is tests/guest/fs_check.rs, built here with
//! `rustc` (std only, static) and packed with agent/image/build-initrd.sh.
//!
//! Needs: qemu-system-x86_64, the guest kernel (`make image`), rustc, and the initrd tools
//! build-initrd.sh uses; skips loudly without them.

mod support;

use std::path::Path;
use std::time::Duration;

use hull_tests::prereq::{find_program, Missing};
use hull_tests::qemu::{Guest, GuestConfig, VhostUserDevice};
use hull_tests::{artifacts, guest_program, require};
use support::HullFs;

/// A bound for a TCG boot and the guest's work on a loaded 2-core machine, not a timing
/// expectation.
const GUEST_BOUND: Duration = Duration::from_secs(300);

/// Same content as `big_content` in tests/guest/fs_check.rs.
fn big_content() -> Vec<u8> {
    (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

#[test]
fn guest_works_on_the_share_and_the_host_sees_its_tree() {
    guest_session(
        "guest_works_on_the_share_and_the_host_sees_its_tree",
        &["--xattr"],
    );
}

#[test]
fn same_with_a_thread_pool_and_no_caching() {
    guest_session(
        "same_with_a_thread_pool_and_no_caching",
        &["--xattr", "--thread-pool-size", "4", "--cache", "never"],
    );
}

#[test]
fn unprivileged_server_serves_the_guest() {
    // hull-fs as `nobody`: its sandbox is then a user namespace (plus mount, pid, net), and
    // every file the guest creates belongs to nobody on the host.
    let test = "unprivileged_server_serves_the_guest";
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        hull_tests::prereq::skip(
            test,
            &Missing::hardware(
                "root, to start hull-fs as another user",
                "run the tests as root",
            ),
        );
        return;
    }
    let setpriv = require!(test, find_program("setpriv", "util-linux"));
    let setpriv = setpriv.to_str().expect("utf-8 path");
    let wrapper = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"];
    let Some(dir) = guest_session_under(test, &wrapper, &["--xattr"], Some(NOBODY)) else {
        return;
    };
    for name in ["big.bin", "dir", "dir/greeting.txt", "link"] {
        let meta = std::fs::symlink_metadata(dir.path().join("share").join(name)).expect(name);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            (meta.uid(), meta.gid()),
            (NOBODY, NOBODY),
            "owner of {name}"
        );
    }
}

/// The uid and gid of `nobody`.
const NOBODY: u32 = 65534;

/// Boots the guest against hull-fs started with `args` and checks what both sides see.
fn guest_session(test: &str, args: &[&str]) {
    guest_session_under(test, &[], args, None);
}

/// As [`guest_session`], with hull-fs run through `wrapper` and the test's files owned by
/// `owner`. Returns the temp dir (with `share/` in it), or `None` when skipped.
fn guest_session_under(
    test: &str,
    wrapper: &[&str],
    args: &[&str],
    owner: Option<u32>,
) -> Option<tempfile::TempDir> {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/fs_check.rs");
    let prereqs = artifacts::vmlinux()
        .and_then(|kernel| Ok((kernel, guest_program::build_initrd(&source, dir.path())?)));
    let (kernel, initrd) = match prereqs {
        Ok((kernel, initrd)) => (kernel, initrd.expect("the guest program builds")),
        Err(missing) => {
            hull_tests::prereq::skip(test, &missing);
            return None;
        }
    };
    let share = dir.path().join("share");
    std::fs::create_dir(&share).expect("share dir");
    std::fs::write(share.join("from-host.txt"), "written by the host\n").expect("host file");
    std::os::unix::fs::symlink("/etc/passwd", share.join("escape")).expect("host symlink");
    if let Some(owner) = owner {
        // hull-fs creates its socket and pid file in the temp dir and serves the share.
        for path in [
            dir.path().to_owned(),
            share.clone(),
            share.join("from-host.txt"),
        ] {
            std::os::unix::fs::chown(&path, Some(owner), Some(owner)).expect("chown");
        }
    }

    let socket = dir.path().join("fs.sock");
    let log = dir.path().join("hull-fs.log");
    let mut fs = HullFs::start_under(wrapper, &socket, &share, args, &log);
    fs.wait_for_socket();
    let config = GuestConfig {
        kernel,
        initrd,
        extra_cmdline: "quiet".into(),
        memory_mib: 256,
        vcpus: 1,
        devices: vec![VhostUserDevice {
            socket: socket.clone(),
            model: "vhost-user-fs-device,tag=hullfs".into(),
        }],
    };
    let guest = match Guest::start(&config) {
        Ok(guest) => guest.expect("QEMU starts"),
        Err(missing) => {
            hull_tests::prereq::skip(test, &missing);
            return None;
        }
    };
    let finished = guest.wait(GUEST_BOUND).expect("the guest stops by itself");
    let console = finished.console;
    assert!(
        finished.status.success(),
        "QEMU exited with {}:\n{console}",
        finished.status
    );

    let failed: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("HULLFS-CHECK FAIL"))
        .collect();
    assert!(
        failed.is_empty(),
        "guest checks failed: {failed:#?}\n{console}"
    );
    assert!(
        console.contains("HULLFS-DONE ok"),
        "the guest did not finish:\n{console}"
    );

    // QEMU is gone: hull-fs stops by itself and says why.
    let status = fs.wait(support::PROCESS_BOUND);
    let log = fs.log_text();
    assert!(status.success(), "hull-fs exited with {status}:\n{log}");
    assert!(log.contains("exiting: the frontend disconnected"), "{log}");
    assert!(!socket.exists(), "socket left behind");

    // The tree the guest left, seen from the host.
    let mut names: Vec<String> = std::fs::read_dir(&share)
        .expect("share readable")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "big.bin",
            "dir",
            "escape",
            "from-host.txt",
            "hardlink.txt",
            "link"
        ]
    );
    let greeting = share.join("dir/greeting.txt");
    assert_eq!(
        std::fs::read_to_string(&greeting).expect("renamed file"),
        "hello from the guest\n"
    );
    assert!(
        std::fs::read(share.join("big.bin")).expect("big file") == big_content(),
        "big.bin differs"
    );
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&greeting).expect("metadata");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!(meta.nlink(), 2);
    assert_eq!(
        xattr(&greeting, "user.hull").as_deref(),
        Some(&b"pod-1"[..])
    );
    assert_eq!(
        std::fs::metadata(share.join("hardlink.txt"))
            .expect("hard link")
            .ino(),
        meta.ino()
    );
    assert_eq!(
        std::fs::read_link(share.join("link")).expect("symlink"),
        Path::new("dir/greeting.txt")
    );
    Some(dir)
}

/// The value of extended attribute `name` of `path`, if it has one.
fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let name = std::ffi::CString::new(name).ok()?;
    let mut value = vec![0u8; 256];
    // SAFETY: NUL-terminated path and name; `value` is writable for its length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    value.truncate(usize::try_from(n).ok()?);
    Some(value)
}
