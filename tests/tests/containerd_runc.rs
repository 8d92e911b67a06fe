//! The end-to-end harness itself, proven with runc: a private containerd runs the locally
//! built busybox image. The hull shim's tests use the same harness with
//! `--runtime io.containerd.hull.v2`; runc's results here are the baseline they must match.

use hull_tests::containerd::Containerd;
use hull_tests::oci_image::{build_busybox_archive, busybox};
use hull_tests::require;

#[test]
fn runc_runs_the_local_busybox_image_through_a_private_containerd() {
    let test = "runc_runs_the_local_busybox_image_through_a_private_containerd";
    let busybox = require!(test, busybox());
    let containerd = require!(test, Containerd::start(&[])).expect("containerd starts");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("busybox.tar");
    let image = build_busybox_archive(&busybox, &archive).expect("image builds");
    containerd.import(&archive).expect("image imports");

    let out = containerd
        .ctr(&[
            "run",
            "--rm",
            image,
            "echo-test",
            "echo",
            "hello from busybox",
        ])
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello from busybox"
    );

    let status = containerd
        .ctr_command(&["run", "--rm", image, "exit-test", "sh", "-c", "exit 7"])
        .status()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(7),
        "ctr run returns the container's exit code"
    );

    let (containers, tasks) = containerd.leftovers();
    assert!(
        containers.is_empty() && tasks.is_empty(),
        "left: {containers:?} {tasks:?}"
    );
}

#[test]
fn the_image_archive_is_deterministic() {
    let test = "the_image_archive_is_deterministic";
    let busybox = require!(test, busybox());
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.tar"), dir.path().join("b.tar"));
    build_busybox_archive(&busybox, &a).unwrap();
    build_busybox_archive(&busybox, &b).unwrap();
    assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
}
