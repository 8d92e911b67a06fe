//! The guest image (`make image`) boots under QEMU: the kernel starts hull-agent as /init,
//! and the agent finds in the guest kernel everything containers need.

use std::time::Duration;

use hull_tests::qemu::{Guest, GuestConfig};
use hull_tests::{artifacts, require};

/// A bound for a TCG boot on a loaded 2-core machine, not a timing expectation.
const BOOT_BOUND: Duration = Duration::from_secs(240);

fn boot_selftest(test: &str, kernel: std::path::PathBuf) {
    let initrd = require!(test, artifacts::initrd());
    let config = GuestConfig {
        kernel,
        initrd,
        extra_cmdline: "agent.selftest=1".into(),
        memory_mib: 256,
        vcpus: 2,
        devices: vec![],
    };
    let guest = require!(test, Guest::start(&config)).expect("QEMU starts");
    let finished = guest
        .wait(BOOT_BOUND)
        .expect("the guest stops by itself after its self-test");
    let console = finished.console;
    println!("{console}");

    assert!(
        console.contains("Linux version 6.1"),
        "no kernel banner on the console"
    );
    let start = console
        .lines()
        .find(|l| l.starts_with("hull-agent ") && l.contains(" started as PID 1: "))
        .expect("hull-agent announced itself as PID 1");
    assert!(
        start.contains(", 2 vCPU, "),
        "the agent saw both vCPUs: {start}"
    );
    assert!(
        console.contains("hull-agent: self-test passed"),
        "the agent's self-test failed; what it lacks is marked MISSING above"
    );
    assert!(
        finished.status.success(),
        "QEMU exited with {}",
        finished.status
    );
}

#[test]
fn pvh_vmlinux_boots_agent_as_init_and_passes_selftest() {
    let test = "pvh_vmlinux_boots_agent_as_init_and_passes_selftest";
    boot_selftest(test, require!(test, artifacts::vmlinux()));
}

#[test]
fn bzimage_boots_agent_as_init_and_passes_selftest() {
    let test = "bzimage_boots_agent_as_init_and_passes_selftest";
    boot_selftest(test, require!(test, artifacts::bzimage()));
}
