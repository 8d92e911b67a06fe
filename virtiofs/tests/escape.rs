//! A hostile guest kernel sends FUSE requests crafted to reach files outside the shared
//! directory; each must fail. The requests go through upstream virtiofsd's `Server` and
//! passthrough file system as in `hull-fs`, driven by the fake frontend in
//! `support/fuse.rs`. hull-fs has two walls, each tested alone: the sandbox (namespace mode:
//! the share is the root of a private mount namespace; with the seccomp filter and
//! capabilities) with upstream's file system unwrapped, and the name guard without the
//! sandbox. A control shows the requests do escape with neither.
//!
//! Without the libtest harness: entering the sandbox forks, which needs a single-threaded
//! process.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use hull_fs::name_guard::NameGuard;
use hull_fs::{sandbox, Config, SandboxMode};
use support::fuse::{entry, Frontend, FuseSession};
use vhost::vhost_user::Listener;
use virtiofsd::passthrough::PassthroughFs;

const ROOT: u64 = virtiofsd::fuse::ROOT_ID;
const SECRET: &str = "host secret: must never reach the guest\n";
/// Exit status of the confined child when the sandbox cannot be entered on this machine.
const EXIT_NO_SANDBOX: i32 = 77;
/// Open/read/release cycles of the descriptor leak check.
const CYCLES: usize = 2000;

fn main() {
    let test = "sandbox_keeps_fuse_requests_inside_the_share";
    let dir = tempfile::tempdir().expect("temp dir");
    let outside = dir.path().join("outside");
    let share = dir.path().join("share");
    std::fs::create_dir(&outside).expect("outside dir");
    std::fs::create_dir(&share).expect("share dir");
    let secret = outside.join("secret.txt");
    std::fs::write(&secret, SECRET).expect("secret");
    std::fs::write(share.join("inside.txt"), "inside\n").expect("inside file");
    std::os::unix::fs::symlink(&secret, share.join("abs_link")).expect("symlink");
    std::os::unix::fs::symlink(&outside, share.join("abs_dir")).expect("symlink");
    std::os::unix::fs::symlink("../outside/secret.txt", share.join("rel_link")).expect("symlink");
    std::fs::create_dir(share.join("racy")).expect("racy dir");
    let root_ino = std::fs::metadata(&share).expect("share").ino();

    // SAFETY: this process is single-threaded (no test harness, no thread started yet).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(|| confined(dir.path(), &share, &secret, root_ino))
            .unwrap_or(1);
        std::process::exit(code);
    }
    let mut status = 0;
    // SAFETY: waiting for our own child; `status` outlives the call.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid");
    assert!(
        libc::WIFEXITED(status),
        "confined child died: status {status:#x}"
    );
    match libc::WEXITSTATUS(status) {
        0 => println!("test {test} ... ok"),
        EXIT_NO_SANDBOX => hull_tests::prereq::skip(
            test,
            &hull_tests::prereq::Missing::hardware(
                "mount/pid/net namespaces for the sandbox",
                "run as root or where unprivileged user namespaces are allowed",
            ),
        ),
        // Upstream's sandbox exits with 256 - signal when the confined process is killed.
        code if code > 128 => panic!(
            "test {test} failed: the confined process was killed by signal {} \
             (31 = SIGSYS: a syscall outside the seccomp filter)",
            256 - code
        ),
        code => panic!("test {test} failed: the confined child exited with {code} (see above)"),
    }

    assert_eq!(
        std::fs::read_to_string(&secret).expect("secret still there"),
        SECRET
    );
    for name in ["escaped-dir", "planted"] {
        assert!(
            !dir.path().join(name).exists(),
            "{name} was created outside the share"
        );
    }
    assert!(!outside.join("taken.txt").exists() && !outside.join("linked").exists());

    // The second wall alone: without the sandbox, hull-fs's name guard refuses every name
    // that is not one path component, before upstream's file system sees it.
    let guarded = "name_guard_refuses_paths_without_the_sandbox";
    let config = Config::new(dir.path().join("unused.sock"), &share);
    let fs = PassthroughFs::new(config.passthrough(unconfined_root(&share), 10_000)).expect("fs");
    let mut guest = Frontend::new(NameGuard::new(
        fs,
        std::sync::Arc::new(hull_fs::metrics::SharedCounters::new().expect("counters")),
    ));
    guest.init();
    let einval = |what: &str, reply: &support::fuse::Reply| {
        assert_eq!(
            reply.errno(),
            libc::EINVAL,
            "{what}: not refused by the name guard"
        );
        println!("name guard refused: {what}");
    };
    einval("LOOKUP ..", &guest.lookup(ROOT, b".."));
    einval(
        "LOOKUP ../outside/secret.txt",
        &guest.lookup(ROOT, b"../outside/secret.txt"),
    );
    einval("LOOKUP /etc/passwd", &guest.lookup(ROOT, b"/etc/passwd"));
    einval(
        "RENAME ../outside/secret.txt in",
        &guest.rename(ROOT, b"../outside/secret.txt", ROOT, b"stolen"),
    );
    einval(
        "RENAME inside.txt out",
        &guest.rename(ROOT, b"inside.txt", ROOT, b"../outside/taken.txt"),
    );
    einval(
        "MKDIR ../escaped-dir",
        &guest.mkdir(ROOT, b"../escaped-dir"),
    );
    einval("MKDIR a/b", &guest.mkdir(ROOT, b"abs_dir/made-outside"));
    einval(
        "UNLINK ../outside/secret.txt",
        &guest.unlink(ROOT, b"../outside/secret.txt"),
    );
    einval(
        "SYMLINK ../planted",
        &guest.symlink(ROOT, b"../planted", b"/"),
    );
    let inside = entry(&guest.lookup(ROOT, b"inside.txt"))
        .expect("inside.txt")
        .nodeid;
    einval(
        "LINK as ../outside/linked",
        &guest.link(inside, ROOT, b"../outside/linked"),
    );
    einval("LINK as an empty name", &guest.link(inside, ROOT, b""));
    // Ordinary names still work.
    assert_eq!(
        guest.mkdir(ROOT, b"made-by-guest").error,
        0,
        "MKDIR of a plain name"
    );
    assert_eq!(
        guest.rename(ROOT, b"made-by-guest", ROOT, b"renamed").error,
        0,
        "RENAME"
    );
    assert!(share.join("renamed").is_dir());
    assert_eq!(
        std::fs::read_to_string(&secret).expect("secret still there"),
        SECRET
    );
    assert!(!outside.join("made-outside").exists() && !outside.join("linked").exists());
    println!("test {guarded} ... ok");

    // The control: without the sandbox the same RENAME does take the secret. Upstream's
    // LOOKUP resolves names with openat2(RESOLVE_IN_ROOT) relative to the parent, but its
    // RENAME, MKDIR, UNLINK and friends pass the guest's name to renameat/mkdirat/unlinkat
    // as is; only the sandbox's root stops `..` there (so `--sandbox none` is for debugging
    // only), and this shows the test would see an escape if there were one.
    let control = "without_the_sandbox_a_rename_escapes";
    let fs = PassthroughFs::new(config.passthrough(unconfined_root(&share), 10_000)).expect("fs");
    let mut guest = Frontend::new(fs);
    guest.init();
    let renamed = guest.rename(ROOT, b"../outside/secret.txt", ROOT, b"stolen");
    assert_eq!(
        renamed.error, 0,
        "unconfined, RENAME with `..` leaves the share"
    );
    let escaped = entry(&guest.lookup(ROOT, b"stolen")).expect("the secret, moved in");
    let fh = guest.open(escaped.nodeid).expect("OPEN");
    assert_eq!(
        guest.read(escaped.nodeid, fh, 4096).expect("READ"),
        SECRET.as_bytes()
    );
    println!("test {control} ... ok");
}

/// Runs in the child: enters the sandbox, then plays the hostile guest. Returns the exit code.
fn confined(dir: &Path, share: &Path, secret: &Path, root_ino: u64) -> i32 {
    let listener = Listener::new(dir.join("unused.sock"), true).expect("listener");
    let config = Config::new(dir.join("unused.sock"), share);
    let entered = match sandbox::enter(share, SandboxMode::Namespace, listener) {
        Ok(entered) => entered,
        Err(err) => {
            eprintln!("cannot enter the sandbox: {err}");
            return EXIT_NO_SANDBOX;
        }
    };
    let fs_config = config.passthrough(entered.root, 10_000);
    sandbox::install_seccomp().expect("seccomp filter");
    sandbox::reduce_capabilities().expect("capabilities");
    let fs = PassthroughFs::new(fs_config).expect("passthrough file system");
    let mut guest = Frontend::new(fs);
    guest.init();
    hostile_guest(&mut guest, secret, root_ino);
    no_descriptor_leaks(&mut guest);
    0
}

fn refused(what: &str, reply: &support::fuse::Reply) -> i32 {
    assert_ne!(reply.error, 0, "{what}: the server answered with an entry");
    println!("escape refused: {what}: errno {}", reply.errno());
    reply.errno()
}

/// A request with `..` in a name the server may carry out, provided it lands inside the
/// share (the parent checks afterwards that nothing appeared outside).
fn contained(what: &str, reply: &support::fuse::Reply) {
    match reply.error {
        0 => println!("escape contained: {what}: `..` of the root is the root"),
        _ => println!("escape refused: {what}: errno {}", reply.errno()),
    }
}

fn hostile_guest(guest: &mut Frontend<PassthroughFs>, secret: &Path, root_ino: u64) {
    let secret_abs = secret
        .to_str()
        .expect("utf-8 temp path")
        .as_bytes()
        .to_vec();

    // `..` of the root is the root itself, and nothing outside is below it.
    let parent = entry(&guest.lookup(ROOT, b"..")).expect("`..` of the root resolves");
    assert_eq!(parent.attr.ino, root_ino, "`..` of the root left the share");
    println!("escape refused: LOOKUP `..` of the root is the root");
    refused(
        "LOOKUP outside via `..`",
        &guest.lookup(parent.nodeid, b"outside"),
    );

    // Names a kernel never sends: paths with slashes.
    refused(
        "LOOKUP ../outside/secret.txt",
        &guest.lookup(ROOT, b"../outside/secret.txt"),
    );
    refused(
        "LOOKUP ../../../../etc/passwd",
        &guest.lookup(ROOT, b"../../../../etc/passwd"),
    );
    refused(
        "LOOKUP absolute path of the secret",
        &guest.lookup(ROOT, &secret_abs),
    );
    refused("LOOKUP /etc/passwd", &guest.lookup(ROOT, b"/etc/passwd"));

    // Symlinks the host left: followed in the middle of a path they resolve inside the
    // share; as the last component they are never followed.
    refused(
        "LOOKUP through an absolute dir symlink",
        &guest.lookup(ROOT, b"abs_dir/secret.txt"),
    );
    refused(
        "LOOKUP through a relative symlink",
        &guest.lookup(ROOT, b"rel_link/x"),
    );
    let link = entry(&guest.lookup(ROOT, b"abs_link")).expect("the symlink itself is visible");
    assert_eq!(
        link.attr.mode & libc::S_IFMT,
        libc::S_IFLNK,
        "abs_link was followed"
    );
    let errno = guest
        .open(link.nodeid)
        .expect_err("OPEN of a symlink must fail");
    println!("escape refused: OPEN of an absolute symlink: errno {errno}");
    assert_eq!(
        guest.readlink(link.nodeid).expect("READLINK"),
        secret_abs,
        "link text"
    );
    let dir_link = entry(&guest.lookup(ROOT, b"abs_dir")).expect("dir symlink visible");
    refused(
        "LOOKUP below a symlink inode",
        &guest.lookup(dir_link.nodeid, b"secret.txt"),
    );

    // A symlink race: the host swaps a directory the guest has already looked up for a
    // symlink to the outside. (Inside the sandbox the share is `/`, so this process plays
    // the host through `/racy`.) The guest's node id still means the old directory, and the
    // new name is a symlink the server does not follow.
    let racy = entry(&guest.lookup(ROOT, b"racy")).expect("racy dir");
    // renameat and symlinkat: the seccomp filter allows these, not rename and symlink.
    nix::fcntl::renameat(None, "/racy", None, "/racy-old").expect("host renames the dir away");
    let outside_abs = secret.parent().expect("outside dir");
    nix::unistd::symlinkat(outside_abs, None, "/racy").expect("host plants a symlink");
    refused(
        "LOOKUP in a directory swapped for a symlink",
        &guest.lookup(racy.nodeid, b"secret.txt"),
    );
    refused(
        "LOOKUP through the swapped-in symlink",
        &guest.lookup(ROOT, b"racy/secret.txt"),
    );
    let swapped = entry(&guest.lookup(ROOT, b"racy")).expect("the new racy");
    assert_eq!(
        swapped.attr.mode & libc::S_IFMT,
        libc::S_IFLNK,
        "racy was followed"
    );
    refused(
        "LOOKUP below the swapped-in symlink",
        &guest.lookup(swapped.nodeid, b"secret.txt"),
    );

    // Symlinks the guest makes: same rules.
    let evil = entry(&guest.symlink(ROOT, b"evil", b"/")).expect("SYMLINK evil -> /");
    refused(
        "LOOKUP below a guest symlink to /",
        &guest.lookup(evil.nodeid, b"etc"),
    );
    refused(
        "LOOKUP through a guest symlink to /",
        &guest.lookup(ROOT, b"evil/etc/passwd"),
    );

    // /proc/self/fd: no /proc inside the sandbox; the server's own /proc/self/fd is a
    // descriptor, not a name.
    refused("LOOKUP proc", &guest.lookup(ROOT, b"proc"));
    refused(
        "LOOKUP /proc/self/fd/0",
        &guest.lookup(ROOT, b"/proc/self/fd/0"),
    );
    refused(
        "LOOKUP /proc/self/root/etc/passwd",
        &guest.lookup(ROOT, b"/proc/self/root/etc/passwd"),
    );

    // Names with `..` in requests that create, move or remove: resolved by the kernel
    // relative to the parent, so only the sandbox's root stops them.
    refused(
        "RENAME ../outside/secret.txt into the share",
        &guest.rename(ROOT, b"../outside/secret.txt", ROOT, b"stolen"),
    );
    refused(
        "RENAME a share file out",
        &guest.rename(ROOT, b"inside.txt", ROOT, b"../outside/taken.txt"),
    );
    contained(
        "MKDIR ../escaped-dir",
        &guest.mkdir(ROOT, b"../escaped-dir"),
    );
    refused(
        "UNLINK ../outside/secret.txt",
        &guest.unlink(ROOT, b"../outside/secret.txt"),
    );
    contained(
        "SYMLINK ../planted",
        &guest.symlink(ROOT, b"../planted", b"/"),
    );
    let inside = inside_ino(guest);
    refused(
        "LINK inside.txt as ../outside/linked",
        &guest.link(inside, ROOT, b"../outside/linked"),
    );

    // Inode numbers the server never handed out: no GETATTR, no hard link to them.
    refused("GETATTR of a forged node id", &guest.getattr(0xdead_beef));
    refused(
        "LINK of a forged node id",
        &guest.link(0xdead_beef, ROOT, b"stolen"),
    );
    refused("LINK of node id 0", &guest.link(0, ROOT, b"stolen0"));

    // And a file that is inside reads normally, so the refusals above are not a broken
    // server.
    let inside = entry(&guest.lookup(ROOT, b"inside.txt")).expect("inside.txt");
    let fh = guest.open(inside.nodeid).expect("OPEN inside.txt");
    assert_eq!(
        guest.read(inside.nodeid, fh, 4096).expect("READ"),
        b"inside\n"
    );
    guest.release(inside.nodeid, fh);
}

/// The share as an unconfined process sees it.
fn unconfined_root(share: &Path) -> sandbox::ConfinedRoot {
    sandbox::ConfinedRoot {
        root_dir: share.to_str().expect("utf-8 temp path").to_owned(),
        mountinfo_prefix: None,
        proc_self_fd: None,
        mountinfo: None,
    }
}

fn inside_ino(guest: &mut Frontend<PassthroughFs>) -> u64 {
    entry(&guest.lookup(ROOT, b"inside.txt"))
        .expect("inside.txt")
        .nodeid
}

/// Descriptors open in this process, counted with fcntl (there is no /proc in the sandbox).
fn open_descriptors() -> usize {
    // SAFETY: fcntl(F_GETFD) only queries a descriptor number; invalid ones fail with EBADF.
    (0..65_536)
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0)
        .count()
}

fn no_descriptor_leaks(guest: &mut Frontend<PassthroughFs>) {
    let inside = entry(&guest.lookup(ROOT, b"inside.txt")).expect("inside.txt");
    let before = open_descriptors();
    for _ in 0..CYCLES {
        let fh = guest.open(inside.nodeid).expect("OPEN");
        assert_eq!(
            guest.read(inside.nodeid, fh, 16).expect("READ"),
            b"inside\n"
        );
        guest.release(inside.nodeid, fh);
        // Refused lookups must not leave descriptors behind either.
        let _ = guest.lookup(ROOT, b"../outside/secret.txt");
    }
    let after = open_descriptors();
    assert_eq!(
        before, after,
        "descriptors leaked over {CYCLES} open/read/release cycles"
    );
    println!("no descriptor leak: {before} open before and after {CYCLES} cycles");
}
