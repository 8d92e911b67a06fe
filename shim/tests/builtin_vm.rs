//! `hypervisor = "builtin"`: the sandbox's boot with the built-in VMM instead of QEMU, in the
//! shim's own process (`vm.builtin_process = "shim"`, the default) or in a child hull-vmm
//! (found next to the test's binaries, as next to the shim). The VMM boots the hull guest
//! image and serves the VM's vsock device itself (no hull-vsock process), and hull-agent
//! answers over its hybrid vsock socket. A Linux guest needs hardware virtualization under
//! the built-in VMM, so that test skips without it; a boot that the VMM cannot start (a
//! kernel it cannot load) runs everywhere: the error carries the VMM's own words and nothing
//! of the boot is left (no vCPU thread in this process, no hull-vmm process).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hull_shim::config::{BuiltinProcess, Config, HypervisorKind};
use hull_shim::sandbox::boot::boot;
use hull_tests::prereq::{hardware_virtualization, kvm, Missing};
use hull_tests::{artifacts, require};

fn processes_mentioning(needle: &Path) -> Vec<String> {
    hull_tests::leftovers::processes_with(&[&needle.to_string_lossy()])
}

/// A stopped or failed boot left nothing: no run directory, no vCPU thread in this process,
/// no process naming the run directory (hull-vmm, backends).
fn assert_nothing_left(run_dir: &Path) {
    assert!(!run_dir.exists(), "the run directory was left behind");
    assert!(vcpu_threads().is_empty(), "{:?}", vcpu_threads());
    assert!(
        processes_mentioning(run_dir).is_empty(),
        "left running: {:?}",
        processes_mentioning(run_dir)
    );
}

/// hull-vmm from this build, and a `builtin` configuration running it as a child.
fn builtin_setup() -> Result<(PathBuf, Config), Missing> {
    let vmm = artifacts::workspace_binary("hull-vmm")?;
    let mut config = Config {
        hypervisor: HypervisorKind::Builtin,
        ..Config::default()
    };
    config.vm.builtin_process = BuiltinProcess::HullVmm;
    Ok((vmm, config))
}

/// The threads of this process named as the built-in VMM names its vCPU threads
/// (`vm<N>-vcpu<M>`).
fn vcpu_threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| name.starts_with("vm") && name.contains("-vcpu"))
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn builtin_boots_the_guest_agent_with_hull_vmm_and_nothing_is_left() {
    let test = "builtin_boots_the_guest_agent_with_hull_vmm_and_nothing_is_left";
    require!(test, hardware_virtualization());
    let (vmm, hull_vmm_config) = require!(test, builtin_setup());
    // The VMM in the shim (the default), then in a child hull-vmm.
    for process in [BuiltinProcess::Shim, BuiltinProcess::HullVmm] {
        let mut config = hull_vmm_config.clone();
        config.vm.builtin_process = process;
        config.vm.kernel = require!(test, artifacts::vmlinux());
        config.vm.initrd = require!(test, artifacts::initrd());
        config.vm.vcpus = 2;
        config.agent.start_timeout_secs = 120;
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().join("pod-builtin");

        let vm = boot(&config, "pod-builtin", &run_dir, Some(&vmm))
            .await
            .expect("the built-in VMM boots to a serving agent");
        let details = vm.agent.guest_details().await.expect("GetGuestDetails");
        assert_eq!(details.agent_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(details.cpus, 2, "the guest sees the configured vCPUs");
        let roles: Vec<&str> = vm.processes().iter().map(|(role, _)| *role).collect();
        match process {
            // No process at all: the VM's threads are this process's.
            BuiltinProcess::Shim => {
                assert!(roles.is_empty(), "{roles:?}");
                assert_eq!(vcpu_threads().len(), 2, "{:?}", vcpu_threads());
            }
            BuiltinProcess::HullVmm => {
                assert_eq!(roles, ["hull-vmm"], "hull-vmm serves the vsock itself")
            }
        }
        let console = vm.console();
        assert!(console.contains(" started as PID 1: "), "{console}");

        vm.shutdown(Duration::from_secs(10))
            .await
            .expect("the VM stops");
        assert_nothing_left(&run_dir);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_kernel_hull_vmm_cannot_load_fails_the_boot_with_its_words_and_leaves_nothing() {
    let test = "a_kernel_hull_vmm_cannot_load_fails_the_boot_with_its_words_and_leaves_nothing";
    // The VMM creates its VM (so opens /dev/kvm) before it loads the kernel.
    require!(test, kvm());
    // The VMM in the shim needs no binary; hull-vmm's mode is tried where it is built.
    let mut modes = vec![(None, BuiltinProcess::Shim)];
    match builtin_setup() {
        Ok((vmm, _)) => modes.push((Some(vmm), BuiltinProcess::HullVmm)),
        Err(missing) => eprintln!("{test}: the hull-vmm mode is not tried: {missing}"),
    }
    for (vmm, process) in modes {
        let mut config = Config {
            hypervisor: HypervisorKind::Builtin,
            ..Config::default()
        };
        config.vm.builtin_process = process;
        let dir = tempfile::tempdir().unwrap();
        config.vm.kernel = dir.path().join("not-a-kernel");
        config.vm.initrd = dir.path().join("initrd.img");
        std::fs::write(&config.vm.kernel, b"this is not a kernel").unwrap();
        std::fs::write(&config.vm.initrd, b"").unwrap();
        config.agent.start_timeout_secs = 60;
        let run_dir = dir.path().join("pod-bad-kernel");

        let err = boot(&config, "pod-bad-kernel", &run_dir, vmm.as_deref())
            .await
            .err()
            .expect("the boot fails");
        let chain = format!("{:?}", anyhow::Error::from(err));
        match process {
            // The VM never starts: the launch's own error.
            BuiltinProcess::Shim => assert!(
                chain.contains("the VMM in the shim")
                    && chain.contains("cannot load the kernel")
                    && chain.contains("not-a-kernel is not a loadable ELF vmlinux or bzImage"),
                "the VMM's own words name why: {chain}"
            ),
            BuiltinProcess::HullVmm => {
                assert!(chain.contains("before its agent answered"), "{chain}");
                assert!(
                    chain.contains("hull-vmm: cannot load the kernel"),
                    "hull-vmm's own message is in the error: {chain}"
                );
            }
        }
        assert_nothing_left(&run_dir);
    }
}
