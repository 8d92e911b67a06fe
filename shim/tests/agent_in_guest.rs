//! The whole guest path of a sandbox, for real: hull-vsock serves the VM's vsock device, QEMU
//! boots the hull guest image, and hull-agent (PID 1) answers the shim's ttrpc calls over the
//! hybrid vsock socket. Afterwards no process or file of the boot is left.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hull_shim::config::{Config, HypervisorKind};
use hull_shim::sandbox::boot::boot;
use hull_tests::prereq::Missing;
use hull_tests::{artifacts, require};

fn processes_mentioning(needle: &Path) -> Vec<String> {
    hull_tests::leftovers::processes_with(&[&needle.to_string_lossy()])
}

/// hull-vsock from this build, and a configuration for the qemu backend with the built image.
fn qemu_setup() -> Result<(PathBuf, Config), Missing> {
    let vsock = artifacts::workspace_binary("hull-vsock")?;
    let mut config = Config {
        hypervisor: HypervisorKind::Qemu,
        ..Config::default()
    };
    config.vm.kernel = artifacts::vmlinux()?;
    config.vm.initrd = artifacts::initrd()?;
    Ok((vsock, config))
}

#[tokio::test(flavor = "current_thread")]
async fn the_guest_agent_answers_over_hull_vsock_and_nothing_is_left() {
    let test = "the_guest_agent_answers_over_hull_vsock_and_nothing_is_left";
    let (vsock, mut config) = require!(test, qemu_setup());
    config.vm.vcpus = 2;
    config.agent.start_timeout_secs = 240;
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("pod-in-guest");

    let vm = boot(&config, "pod-in-guest", &run_dir, Some(&vsock))
        .await
        .expect("the VM boots to a serving agent");
    let details = vm.agent.guest_details().await.expect("GetGuestDetails");
    assert!(
        details.kernel_release.starts_with("6.1."),
        "guest kernel: {}",
        details.kernel_release
    );
    assert_eq!(details.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        details.protocol_version,
        hull_agent_protocol::PROTOCOL_VERSION
    );
    assert_eq!(details.cpus, 2, "the guest sees the configured vCPUs");
    vm.agent
        .check()
        .await
        .expect("a second Check on the same link");
    let console = vm.console();
    assert!(
        console.contains("hull-agent ") && console.contains(" started as PID 1: "),
        "{console}"
    );
    println!(
        "booted to a serving agent in {:?} (QEMU {}, not a benchmark)",
        vm.boot_time,
        hull_tests::qemu::accelerator()
    );

    vm.shutdown(Duration::from_secs(10))
        .await
        .expect("the VM and hull-vsock stop");
    assert!(!run_dir.exists(), "the run directory was left behind");
    assert!(
        processes_mentioning(&run_dir).is_empty(),
        "left running: {:?}",
        processes_mentioning(&run_dir)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_boot_that_fails_leaves_nothing_behind() {
    let test = "a_boot_that_fails_leaves_nothing_behind";
    let (vsock, mut config) = require!(test, qemu_setup());
    // The guest stops itself after its self-test, so the agent never serves: the boot fails.
    config.vm.kernel_params = "agent.selftest=1".into();
    config.agent.start_timeout_secs = 60;
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("pod-fails");
    let err = boot(&config, "pod-fails", &run_dir, Some(&vsock))
        .await
        .err()
        .expect("the boot fails");
    let chain = format!("{:?}", anyhow::Error::from(err));
    assert!(
        chain.contains("exited") && chain.contains("before its agent answered"),
        "{chain}"
    );
    assert!(
        chain.contains("self-test passed"),
        "the console's last words are in the error: {chain}"
    );
    assert!(!run_dir.exists(), "the run directory was left behind");
    assert!(
        processes_mentioning(&run_dir).is_empty(),
        "left running: {:?}",
        processes_mentioning(&run_dir)
    );
}
