//! containerd-shim-hull-v2 under a real, private containerd, driven with `ctr` as a user would.

use std::path::Path;

use hull_tests::containerd::Containerd;
use hull_tests::oci_image::{build_busybox_archive, busybox};
use hull_tests::require;

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-hull-v2");

fn shim_processes(id: &str) -> Vec<String> {
    hull_tests::leftovers::processes_with(&["containerd-shim-hull-v2", id])
}

fn socket_dir_entries() -> Vec<String> {
    std::fs::read_dir("/run/containerd/s")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn ctr_run_gets_hulls_own_refusal_and_nothing_is_left_behind() {
    let test = "ctr_run_gets_hulls_own_refusal_and_nothing_is_left_behind";
    let busybox = require!(test, busybox());
    let shim_dir = Path::new(SHIM)
        .parent()
        .expect("the shim binary is in a directory")
        .to_owned();
    let containerd = require!(test, Containerd::start(&[shim_dir])).expect("containerd starts");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("busybox.tar");
    let image = build_busybox_archive(&busybox, &archive).unwrap();
    containerd.import(&archive).unwrap();
    let sockets_before = socket_dir_entries();

    let output = containerd
        .ctr_command(&[
            "run",
            "--rm",
            "--runtime",
            "io.containerd.hull.v2",
            image,
            "hull-e2e-refusal",
            "echo",
            "hi",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "ctr run succeeded: {stderr}");
    assert!(
        stderr.contains("hull cannot create container hull-e2e-refusal yet"),
        "containerd did not pass on the shim's reason: {stderr}\ncontainerd log:\n{}",
        containerd.log()
    );

    let (containers, tasks) = containerd.leftovers();
    assert!(tasks.is_empty(), "tasks left: {tasks:?}");
    assert!(
        containers.is_empty() || containers == ["hull-e2e-refusal"],
        "containers: {containers:?}"
    );
    // ctr run --rm does not remove a container whose task never started: do it as a user would.
    if !containers.is_empty() {
        containerd
            .ctr(&["containers", "delete", "hull-e2e-refusal"])
            .unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !shim_processes("hull-e2e-refusal").is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        shim_processes("hull-e2e-refusal").is_empty(),
        "shim left running; containerd log:\n{}",
        containerd.log()
    );
    assert_eq!(
        socket_dir_entries(),
        sockets_before,
        "shim socket left in /run/containerd/s"
    );
}
