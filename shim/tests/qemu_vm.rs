//! The qemu backend's VM process management against real QEMU and the real guest image:
//! boot, pause/resume, stop, death detection, start errors, and nothing left behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hull_shim::config::QemuMachine;
use hull_shim::qemu::{Accel, Error, QemuOptions, QemuVm};
use hull_shim::sandbox::persist::process_start_time;
use hull_shim::vm_spec::{VmDevice, VmSpec};
use hull_tests::prereq::{find_program, hardware_virtualization, Missing};
use hull_tests::{artifacts, require};

/// Bound for a TCG boot on a loaded 2-core machine; not a timing expectation.
const BOOT_BOUND: Duration = Duration::from_secs(240);

fn setup(extra_params: &[&str]) -> Result<(VmSpec, QemuOptions), Missing> {
    let binary = find_program("qemu-system-x86_64", "qemu-system-x86")?;
    let spec = VmSpec {
        id: "test".into(),
        kernel: artifacts::vmlinux()?,
        initrd: artifacts::initrd()?,
        kernel_params: ["console=ttyS0", "reboot=t", "panic=-1"]
            .iter()
            .chain(extra_params)
            .map(|s| s.to_string())
            .collect(),
        vcpus: 1,
        memory_mib: 256,
        devices: vec![],
    };
    let accel = if hardware_virtualization().is_ok() {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    Ok((
        spec,
        QemuOptions {
            binary,
            machine: QemuMachine::Microvm,
            accel,
        },
    ))
}

/// A zombie counts as gone: only its parent's wait is missing.
fn process_gone(pid: u32) -> bool {
    i32::try_from(pid).map_or(true, |pid| process_start_time(pid).is_none())
}

async fn wait_for_console(vm: &QemuVm, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + BOOT_BOUND;
    loop {
        let console = std::fs::read_to_string(vm.console_log()).unwrap_or_default();
        if console.contains(needle) {
            return console;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {needle:?} on the console:\n{console}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn run_dir(parent: &Path) -> PathBuf {
    parent.join("vm")
}

#[tokio::test]
async fn boots_pauses_resumes_and_stops_leaving_nothing() {
    let test = "boots_pauses_resumes_and_stops_leaving_nothing";
    let (spec, options) = require!(test, setup(&[]));
    let dir = tempfile::tempdir().unwrap();
    let mut vm = QemuVm::start(&spec, &options, &run_dir(dir.path()))
        .await
        .expect("QEMU starts");
    let pid = vm.pid().expect("QEMU has a pid");
    wait_for_console(&vm, "started as PID 1").await;

    assert_eq!(vm.status().await.unwrap(), "running");
    vm.pause().await.unwrap();
    assert_eq!(vm.status().await.unwrap(), "paused");
    vm.resume().await.unwrap();
    assert_eq!(vm.status().await.unwrap(), "running");

    let status = vm.stop(Duration::from_secs(10)).await.expect("QEMU stops");
    assert!(status.success(), "QEMU quit with {status}");
    assert!(process_gone(pid), "QEMU {pid} still runs");
    assert!(
        !run_dir(dir.path()).exists(),
        "the run directory was left behind"
    );
}

#[tokio::test]
async fn a_guest_that_stops_is_seen_as_the_vm_exiting() {
    let test = "a_guest_that_stops_is_seen_as_the_vm_exiting";
    let (spec, options) = require!(test, setup(&["agent.selftest=1"]));
    let dir = tempfile::tempdir().unwrap();
    let mut vm = QemuVm::start(&spec, &options, &run_dir(dir.path()))
        .await
        .expect("QEMU starts");
    let status = tokio::time::timeout(BOOT_BOUND, vm.wait())
        .await
        .expect("the guest stops by itself after its self-test")
        .unwrap();
    assert!(status.success(), "{status}");
    let console = std::fs::read_to_string(vm.console_log()).unwrap();
    assert!(console.contains("self-test passed"), "{console}");
    drop(vm);
    assert!(
        !run_dir(dir.path()).exists(),
        "the run directory was left behind"
    );
}

#[tokio::test]
async fn start_errors_carry_qemus_own_message() {
    let test = "start_errors_carry_qemus_own_message";
    let (mut spec, options) = require!(test, setup(&[]));
    spec.devices.push(VmDevice::VhostUserFs {
        socket: PathBuf::from("/nonexistent/hull-fs.sock"),
        tag: "hullfs".into(),
    });
    let dir = tempfile::tempdir().unwrap();
    let err = QemuVm::start(&spec, &options, &run_dir(dir.path()))
        .await
        .unwrap_err();
    println!("{err}");
    assert!(matches!(err, Error::Exited { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent/hull-fs.sock"),
        "{err}"
    );
    assert!(
        !run_dir(dir.path()).exists(),
        "the run directory was left behind"
    );
}

#[tokio::test]
async fn dropping_a_vm_kills_qemu() {
    let test = "dropping_a_vm_kills_qemu";
    let (spec, options) = require!(test, setup(&[]));
    let dir = tempfile::tempdir().unwrap();
    let vm = QemuVm::start(&spec, &options, &run_dir(dir.path()))
        .await
        .expect("QEMU starts");
    let pid = vm.pid().expect("QEMU has a pid");
    drop(vm);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !process_gone(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "QEMU {pid} survived its handle"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !run_dir(dir.path()).exists(),
        "the run directory was left behind"
    );
}

#[tokio::test]
async fn a_hybrid_vsock_is_refused_before_qemu_starts() {
    let test = "a_hybrid_vsock_is_refused_before_qemu_starts";
    let (mut spec, options) = require!(test, setup(&[]));
    spec.devices.push(VmDevice::HybridVsock {
        uds: PathBuf::from("/run/p/agent.vsock"),
    });
    let dir = tempfile::tempdir().unwrap();
    let err = QemuVm::start(&spec, &options, &run_dir(dir.path()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
    assert!(err.to_string().contains("hybrid vsock"), "{err}");
    assert!(!run_dir(dir.path()).exists(), "nothing was made");
}
