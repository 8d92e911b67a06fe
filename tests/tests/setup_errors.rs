//! The set-up commands tell a user exactly what is missing and how to get it, instead of
//! failing somewhere deeper with a stack trace or a tool's raw error.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hull_tests::prereq::{find_program, Missing};
use hull_tests::require;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repo")
        .to_owned()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs a command as the unprivileged user `nobody`, who cannot install packages.
fn as_nobody(program: &str) -> Result<Command, Missing> {
    let setpriv = find_program("setpriv", "util-linux")?;
    if !nix_is_root() {
        return Err(Missing::hardware(
            "root, to switch to the user nobody",
            "run the tests as root",
        ));
    }
    let mut cmd = Command::new(setpriv);
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", program]);
    Ok(cmd)
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn make_deps_names_missing_packages_and_the_command_to_install_them() {
    let test = "make_deps_names_missing_packages_and_the_command_to_install_them";
    let make = require!(test, find_program("make", "make"));
    let mut cmd = require!(
        test,
        as_nobody(make.to_str().expect("PATH entries are UTF-8"))
    );
    // A copy in a directory nobody can read, wherever the checkout is.
    let dir = tempfile::tempdir().expect("creating a temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("opening the temp dir to nobody");
    std::fs::copy(repo().join("Makefile"), dir.path().join("Makefile")).expect("copying Makefile");
    let output = cmd
        .args(["-s", "-C"])
        .arg(dir.path())
        .args([
            "deps",
            "APT_PACKAGES=busybox-static hull-test-no-such-package",
        ])
        .env("HOME", "/nonexistent")
        .output()
        .expect("make runs");
    let out = text(&output);
    assert!(
        !output.status.success(),
        "make deps succeeded without the package:\n{out}"
    );
    assert!(
        out.contains("missing Debian packages: hull-test-no-such-package"),
        "{out}"
    );
    assert!(
        out.contains("apt-get install hull-test-no-such-package"),
        "{out}"
    );
    assert!(
        !out.contains("busybox-static"),
        "an installed package was reported missing:\n{out}"
    );
}

#[test]
fn initrd_builder_refuses_a_dynamically_linked_agent() {
    let test = "initrd_builder_refuses_a_dynamically_linked_agent";
    let dynamic = require!(test, find_program("ls", "coreutils"));
    let out_dir = tempfile::tempdir().expect("creating a temp dir");
    let out_dir = out_dir.path();
    let output = Command::new(repo().join("agent/image/build-initrd.sh"))
        .arg(&dynamic)
        .arg(out_dir.join("initrd.img"))
        .env("HULL_CACHE_DIR", out_dir)
        .output()
        .expect("build-initrd.sh runs");
    let out = text(&output);
    assert!(!output.status.success(), "{out}");
    assert!(
        out.contains("dynamically linked") && out.contains("make agent"),
        "{out}"
    );
    assert!(
        !out_dir.join("initrd.img").exists(),
        "a broken initrd was left behind"
    );
}

/// `make demo` (hull-demo) on a machine without the guest image: the pod's start fails and
/// the user is told, through containerd, to build the image.
#[test]
fn demo_without_an_image_says_to_build_it() {
    let test = "demo_without_an_image_says_to_build_it";
    let shim = require!(
        test,
        hull_tests::artifacts::workspace_binary("containerd-shim-hull-v2")
    );
    require!(test, hull_tests::oci_image::busybox());
    let empty_cache = tempfile::tempdir().expect("creating a temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_hull-demo"))
        .arg(shim.parent().expect("the shim is in a directory"))
        .env("HULL_CACHE_DIR", empty_cache.path())
        .output()
        .expect("hull-demo runs");
    let out = text(&output);
    assert!(!output.status.success(), "{out}");
    assert!(
        out.contains("vmlinux does not exist: run 'make image'"),
        "{out}"
    );
}
