//! Boots the project's guest kernel (ELF vmlinux through PVH) on the host's KVM as far as it
//! gets. On this project's test host (kvm_pvm, no hardware virtualization) the kernel prints
//! its banner, command line and memory map, parses the MP table, and after half a minute or
//! more dies in `int3_selftest` (KVM_EXIT_INTERNAL_ERROR: this KVM cannot handle the int3).
//! The default test asserts the first lines and stops the VM itself.

mod common;

use std::time::{Duration, Instant};

use hull_tests::{artifacts, require};
use hull_vmm::boot::{self, BootConfig};
use hull_vmm::cpu::cpuid::CpuFeature;
use hull_vmm::lifecycle::StopReason;
use hull_vmm::vm::{Vm, VmConfig};

use common::{kvm, Console};

/// How long to wait for the first lines before giving up (not a performance bound).
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);

/// `noxsave`: this KVM reports XSAVE whatever CPUID says, and cannot emulate XRSTOR.
const CMDLINE: &str = "console=ttyS0 earlyprintk=serial reboot=t panic=-1 noxsave";

fn boot_guest_kernel() -> Option<(hull_vmm::vm::RunningVm, Console)> {
    let vmlinux = match artifacts::vmlinux() {
        Ok(path) => path,
        Err(missing) => {
            hull_tests::prereq::skip("linux_boot", &missing);
            return None;
        }
    };
    let config = VmConfig {
        memory_mib: 256,
        vcpus: 2,
        interrupt_controller: true,
        hidden_cpu_features: vec![CpuFeature::Cx16, CpuFeature::Popcnt, CpuFeature::Xsave],
    };
    let mut vm = Vm::new(config).unwrap();
    let console = Console::default();
    vm.add_serial(Box::new(console.clone())).unwrap();
    let boot = BootConfig {
        kernel: vmlinux,
        initrd: None,
        cmdline: CMDLINE.into(),
    };
    let entry = boot::load(vm.memory(), &boot).unwrap();
    assert!(
        matches!(entry, hull_vmm::cpu::EntryMode::Pvh { .. }),
        "the guest vmlinux has a PVH note"
    );
    Some((vm.start(entry).unwrap(), console))
}

#[test]
fn guest_kernel_prints_its_banner_command_line_memory_map_and_finds_the_mp_table() {
    require!(
        "guest_kernel_prints_its_banner_command_line_memory_map_and_finds_the_mp_table",
        kvm()
    );
    let Some((running, console)) = boot_guest_kernel() else {
        return;
    };
    let wanted = [
        "Linux version ",
        &format!("Command line: {CMDLINE}"),
        "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable",
        "found SMP MP-table at [mem 0x000f0000-0x000f000f]",
    ];
    let start = Instant::now();
    let state = running.run_state();
    while !wanted.iter().all(|line| console.text().contains(line)) {
        if state.stop_requested() || start.elapsed() > GIVE_UP_AFTER {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    running.stop();
    let reason = running.wait();
    let text = console.text();
    for line in wanted {
        assert!(
            text.contains(line),
            "no {line:?} on the console (VM stopped: {reason:?}):\n{text}"
        );
    }
}

/// Runs the guest kernel until this KVM gives up and reports how far it got; for manual
/// runs (`cargo test -p hull-vmm --test linux_boot -- --ignored --nocapture`).
#[test]
#[ignore = "runs the kernel until it stops: half a minute or more on kvm_pvm"]
fn guest_kernel_boots_as_far_as_this_kvm_allows() {
    require!("guest_kernel_boots_as_far_as_this_kvm_allows", kvm());
    let Some((running, console)) = boot_guest_kernel() else {
        return;
    };
    let state = running.run_state();
    let start = Instant::now();
    while !state.stop_requested() && start.elapsed() < Duration::from_secs(600) {
        std::thread::sleep(Duration::from_millis(100));
    }
    running.stop();
    let reason = running.wait();
    let text = console.text();
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    eprintln!(
        "stopped after {:?}: {reason:?}\nlast line: {last}",
        start.elapsed()
    );
    assert!(text.contains("Linux version "));
    assert!(
        text.contains("smpboot: Allowing 2 CPUs"),
        "the MP table's two CPUs"
    );
    assert_ne!(
        reason,
        StopReason::Requested,
        "the kernel neither stopped nor failed in 10 minutes"
    );
}
