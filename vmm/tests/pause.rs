//! Pause and resume of a running VM: a small guest counts in guest memory on two vCPUs; while
//! the VM is paused the count does not move, after a resume it does, and a VM stopped while
//! paused joins every vCPU thread. Skips loudly where /dev/kvm is unusable.

mod common;

use std::time::{Duration, Instant};

use hull_tests::require;
use hull_vmm::cpu::EntryMode;
use hull_vmm::lifecycle::StopReason;
use hull_vmm::vm::{RunningVm, Vm, VmConfig};
use vm_memory::{Bytes, GuestAddress};

use common::kvm;

/// Where the real-mode code goes (segment 0x100, offset 0).
const CODE: u64 = 0x1000;
/// The guest's counter (DS is 0 in real mode at reset).
const COUNTER: u64 = 0x500;

/// `inc dword [0x500]; jmp $-5`, forever, on every vCPU.
const COUNT_FOREVER: [u8; 7] = [0x66, 0xff, 0x06, 0x00, 0x05, 0xeb, 0xf9];

fn counting_vm(vcpus: u8) -> RunningVm {
    let config = VmConfig {
        memory_mib: 16,
        vcpus,
        interrupt_controller: false,
        hidden_cpu_features: vec![],
    };
    let vm = Vm::new(config).expect("VM with 16 MiB");
    vm.memory()
        .mmap()
        .write_slice(&COUNT_FOREVER, GuestAddress(CODE))
        .unwrap();
    vm.start(EntryMode::Real {
        segment: 0x100,
        ip: 0,
    })
    .unwrap()
}

fn count(running: &RunningVm) -> u32 {
    running
        .memory()
        .mmap()
        .read_obj::<u32>(GuestAddress(COUNTER))
        .unwrap()
}

/// Waits until the guest's count passes `above` (failing, not hanging, if it never does).
fn wait_past(running: &RunningVm, above: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = count(running);
        if now > above {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the guest's count stays at {now}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn vcpu_threads_alive(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim().starts_with(prefix))
        .count()
}

#[test]
fn a_paused_guest_makes_no_progress_and_a_resumed_one_does() {
    require!(
        "a_paused_guest_makes_no_progress_and_a_resumed_one_does",
        kvm()
    );
    let running = counting_vm(2);
    wait_past(&running, 0);
    running.pause();
    assert!(running.is_paused());
    let paused = count(&running);
    // Long enough for a running vCPU to count millions; a parked one counts none.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(count(&running), paused, "the guest ran while paused");
    running.resume();
    assert!(!running.is_paused());
    let resumed = wait_past(&running, paused);
    // Paused again: the same once more (a second pause parks the vCPUs again).
    running.pause();
    let again = count(&running);
    assert!(again >= resumed);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(count(&running), again, "the guest ran while paused again");
    running.resume();
    wait_past(&running, again);
    running.stop();
    assert_eq!(running.wait(), StopReason::Requested);
}

#[test]
fn a_vm_stopped_while_paused_joins_every_vcpu() {
    require!("a_vm_stopped_while_paused_joins_every_vcpu", kvm());
    let running = counting_vm(2);
    let prefix = running.thread_prefix().to_owned();
    wait_past(&running, 0);
    let control = running.control();
    control.pause();
    assert_eq!(
        vcpu_threads_alive(&prefix),
        2,
        "parked vCPU threads are alive"
    );
    control.stop();
    assert_eq!(running.wait(), StopReason::Requested);
    assert_eq!(
        vcpu_threads_alive(&prefix),
        0,
        "vCPU threads left after the stop"
    );
    // The handle outlives the VM: pausing and resuming it do nothing.
    control.pause();
    control.resume();
}

#[test]
fn dropping_a_paused_vm_joins_its_vcpus() {
    require!("dropping_a_paused_vm_joins_its_vcpus", kvm());
    let running = counting_vm(1);
    let prefix = running.thread_prefix().to_owned();
    wait_past(&running, 0);
    running.pause();
    drop(running);
    assert_eq!(vcpu_threads_alive(&prefix), 0);
}
