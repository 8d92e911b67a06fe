//! A stopped and dropped VM leaves nothing behind in the process: no vCPU thread and no file
//! descriptor (KVM VM and vCPU fds, the guest memory memfd, eventfds, a virtio-mmio
//! device's ioeventfds and irqfd). Alone in its test
//! binary so that no other test opens or closes fds meanwhile.

mod common;

use hull_tests::require;
use hull_vmm::cpu::EntryMode;
use hull_vmm::lifecycle::StopReason;
use hull_vmm::virtio::{Activation, VirtioDevice};
use hull_vmm::vm::{KickPath, Vm, VmConfig};
use vm_memory::{Bytes, GuestAddress};

use common::{kvm, Console};

fn open_fds() -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| {
            let fd = fd.ok()?;
            let target = std::fs::read_link(fd.path()).ok()?;
            Some(format!(
                "{} -> {}",
                fd.file_name().to_string_lossy(),
                target.display()
            ))
        })
        .collect();
    fds.sort();
    fds
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn stopped_vm_closes_every_fd_and_joins_every_thread() {
    require!("stopped_vm_closes_every_fd_and_joins_every_thread", kvm());
    // Warm up once: the first VM installs the kick signal handler and lets std and the
    // test harness open what they keep open.
    run_two_vcpu_guest();
    let (fds, thread_count) = (open_fds(), threads());
    let output = run_two_vcpu_guest();
    assert_eq!(output, "hi");
    assert_eq!(open_fds(), fds, "fds left open by the VM");
    assert_eq!(threads(), thread_count, "threads left by the VM");
}

/// Two vCPUs with the interrupt controllers (and so the serial irqfd) in place as for a
/// Linux guest: the boot vCPU prints "hi" and halts, the other waits for a SIPI that never
/// comes; neither can end by itself, so the VM is stopped from outside.
fn run_two_vcpu_guest() -> String {
    let config = VmConfig {
        memory_mib: 16,
        vcpus: 2,
        interrupt_controller: true,
        hidden_cpu_features: vec![],
    };
    let mut vm = Vm::new(config).unwrap();
    let console = Console::default();
    vm.add_serial(Box::new(console.clone())).unwrap();
    vm.add_virtio_mmio(Box::new(Idle), KickPath::Kernel)
        .unwrap();
    let code = [
        0xba, 0xf8, 0x03, 0xb0, b'h', 0xee, 0xb0, b'i', 0xee, 0xf4, 0xeb, 0xfd,
    ];
    vm.memory()
        .mmap()
        .write_slice(&code, GuestAddress(0x1000))
        .unwrap();
    let running = vm
        .start(EntryMode::Real {
            segment: 0x100,
            ip: 0,
        })
        .unwrap();
    while console.text().len() < 2 {
        std::thread::yield_now();
    }
    running.stop();
    assert_eq!(running.wait(), StopReason::Requested);
    console.text()
}

/// A virtio device with two queues and nothing behind them.
struct Idle;

impl VirtioDevice for Idle {
    fn device_type(&self) -> u32 {
        0x1f
    }
    fn features(&self) -> u64 {
        0
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[8, 8]
    }
    fn read_config(&mut self, _offset: u64, _data: &mut [u8]) {}
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, _activation: Activation<'_>) -> hull_vmm::Result<()> {
        Ok(())
    }
    fn reset(&mut self) {}
}
