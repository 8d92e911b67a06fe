//! Small guests, written here as machine code, run on the host's real KVM: serial output by
//! port I/O, MMIO exits to a device, HLT, triple fault, the i8042 reset, two vCPUs, and a
//! stop requested from outside. Each test checks what the guest did and that every vCPU
//! thread is gone afterwards. Skips loudly where /dev/kvm is unusable.

mod common;

use std::sync::{Arc, Mutex};

use hull_tests::require;
use hull_vmm::bus::BusDevice;
use hull_vmm::cpu::cpuid::CpuFeature;
use hull_vmm::cpu::vcpu::ExitCounts;
use hull_vmm::cpu::EntryMode;
use hull_vmm::lifecycle::StopReason;
use hull_vmm::vm::{RunningVm, Vm, VmConfig};
use vm_memory::{Bytes, GuestAddress};

use common::{kvm, Console};

/// Where real-mode test code goes (segment 0x100, offset 0).
const REAL_MODE_CODE: u64 = 0x1000;
/// Where 64-bit test code goes.
const LONG_MODE_CODE: u64 = 0x10_0000;
/// A test device's MMIO window: above the 16 MiB of RAM, inside the identity-mapped GiB.
const TEST_MMIO_BASE: u64 = 0x2000_0000;

/// A VM without in-kernel interrupt controllers (so HLT reaches the VMM), with `code` at
/// `addr` and COM1 captured.
fn test_vm(vcpus: u8, addr: u64, code: &[u8]) -> (Vm, Console) {
    let config = VmConfig {
        memory_mib: 16,
        vcpus,
        interrupt_controller: false,
        hidden_cpu_features: vec![],
    };
    let mut vm = Vm::new(config).expect("VM with 16 MiB");
    let console = Console::default();
    vm.add_serial(Box::new(console.clone())).unwrap();
    vm.memory()
        .mmap()
        .write_slice(code, GuestAddress(addr))
        .unwrap();
    (vm, console)
}

fn vcpu_threads_alive(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|comm| comm.trim().to_owned())
        .filter(|comm| comm.starts_with(prefix))
        .collect()
}

/// Waits for the VM to stop and checks its vCPU threads are gone.
fn wait_and_check_joined(running: RunningVm, vcpus: usize) -> (StopReason, Vec<ExitCounts>) {
    let prefix = running.thread_prefix().to_owned();
    let before = vcpu_threads_alive(&prefix).len();
    assert!(before <= vcpus, "{before} threads named {prefix}*");
    let (reason, counts) = running.wait_with_counts();
    assert_eq!(
        vcpu_threads_alive(&prefix),
        Vec::<String>::new(),
        "vCPU threads left after the stop"
    );
    (reason, counts)
}

/// Real mode: `mov dx, 0x3f8`, then `mov al, c; out dx, al` for each byte.
fn real_mode_print(text: &[u8]) -> Vec<u8> {
    let mut code = vec![0xba, 0xf8, 0x03];
    for byte in text {
        code.extend_from_slice(&[0xb0, *byte, 0xee]);
    }
    code
}

const HLT: u8 = 0xf4;

#[test]
fn real_mode_guest_prints_hello_on_serial_and_halts() {
    require!("real_mode_guest_prints_hello_on_serial_and_halts", kvm());
    let mut code = real_mode_print(b"hello");
    code.push(HLT);
    let (vm, console) = test_vm(1, REAL_MODE_CODE, &code);
    let running = vm
        .start(EntryMode::Real {
            segment: 0x100,
            ip: 0,
        })
        .unwrap();
    let (reason, counts) = wait_and_check_joined(running, 1);
    assert_eq!(reason, StopReason::Halted);
    assert_eq!(console.text(), "hello");
    assert_eq!(counts[0].pio_out, 5, "one port write exit per byte");
}

#[test]
fn long_mode_guest_prints_a_64bit_register_on_serial() {
    require!("long_mode_guest_prints_a_64bit_register_on_serial", kvm());
    // mov rax, "hello64!"; mov dx, 0x3f8; 8 × (out dx, al; shr rax, 8); hlt.
    // Only a 64-bit vCPU reads 48 b8 as one 8-byte move.
    let mut code = vec![0x48, 0xb8];
    code.extend_from_slice(b"hello64!");
    code.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03]);
    for _ in 0..8 {
        code.extend_from_slice(&[0xee, 0x48, 0xc1, 0xe8, 0x08]);
    }
    code.push(HLT);
    let (vm, console) = test_vm(1, LONG_MODE_CODE, &code);
    let running = vm
        .start(EntryMode::Long {
            entry: LONG_MODE_CODE,
            boot_params: 0,
        })
        .unwrap();
    assert_eq!(wait_and_check_joined(running, 1).0, StopReason::Halted);
    assert_eq!(console.text(), "hello64!");
}

/// Records writes; reads return a fixed pattern.
#[derive(Default)]
struct Scratch {
    writes: Vec<(u64, Vec<u8>)>,
    reads: Vec<(u64, usize)>,
}

impl BusDevice for Scratch {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.reads.push((offset, data.len()));
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = b'Z' + i as u8;
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

#[test]
fn mmio_writes_and_reads_reach_the_device_and_the_guest_sees_its_answer() {
    require!(
        "mmio_writes_and_reads_reach_the_device_and_the_guest_sees_its_answer",
        kvm()
    );
    let code = [
        0x48, 0xbb, 0, 0, 0, 0x20, 0, 0, 0, 0, // mov rbx, 0x2000_0000
        0xc7, 0x43, 0x08, 0x0d, 0xf0, 0xfe, 0xca, // mov dword [rbx + 8], 0xcafef00d
        0x8b, 0x43, 0x04, // mov eax, [rbx + 4]
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xee, // out dx, al
        0x88, 0xe0, // mov al, ah
        0xee, // out dx, al
        HLT,
    ];
    let (mut vm, console) = test_vm(1, LONG_MODE_CODE, &code);
    let device = Arc::new(Mutex::new(Scratch::default()));
    vm.add_mmio_device(TEST_MMIO_BASE, 0x1000, device.clone())
        .unwrap();
    let running = vm
        .start(EntryMode::Long {
            entry: LONG_MODE_CODE,
            boot_params: 0,
        })
        .unwrap();
    let (reason, counts) = wait_and_check_joined(running, 1);
    assert_eq!(reason, StopReason::Halted);
    assert_eq!(
        (counts[0].mmio_write, counts[0].mmio_read, counts[0].pio_out),
        (1, 1, 2)
    );
    let device = device.lock().unwrap();
    assert_eq!(
        device.writes,
        vec![(8, 0xcafe_f00d_u32.to_le_bytes().to_vec())]
    );
    assert_eq!(device.reads, vec![(4, 4)]);
    assert_eq!(
        console.text(),
        "Z[",
        "the guest got the device's bytes back in eax"
    );
}

#[test]
fn i8042_reset_stops_the_vm() {
    require!("i8042_reset_stops_the_vm", kvm());
    // mov al, 0xfe; out 0x64, al; jmp $ (the reset must stop the VM, not the code).
    let code = [0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe];
    let (vm, _) = test_vm(1, REAL_MODE_CODE, &code);
    let running = vm
        .start(EntryMode::Real {
            segment: 0x100,
            ip: 0,
        })
        .unwrap();
    assert_eq!(wait_and_check_joined(running, 1).0, StopReason::I8042Reset);
}

#[test]
fn triple_fault_stops_the_vm() {
    require!("triple_fault_stops_the_vm", kvm());
    // ud2 with an IDT whose only entry is null: #UD → #GP → #DF → shutdown.
    let code = [0x0f, 0x0b];
    let (vm, _) = test_vm(1, LONG_MODE_CODE, &code);
    let running = vm
        .start(EntryMode::Long {
            entry: LONG_MODE_CODE,
            boot_params: 0,
        })
        .unwrap();
    assert_eq!(
        wait_and_check_joined(running, 1).0,
        StopReason::TripleFault { vcpu: 0 }
    );
}

#[test]
fn two_vcpus_each_print_their_apic_id_and_the_vm_stops_when_both_halt() {
    require!(
        "two_vcpus_each_print_their_apic_id_and_the_vm_stops_when_both_halt",
        kvm()
    );
    let code = [
        0x66, 0xb8, 0x01, 0, 0, 0, // mov eax, 1
        0x0f, 0xa2, // cpuid
        0x66, 0xc1, 0xeb, 0x18, // shr ebx, 24: the initial APIC ID
        0x80, 0xc3, b'0', // add bl, '0'
        0x88, 0xd8, // mov al, bl
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xee, // out dx, al
        HLT,
    ];
    let (vm, console) = test_vm(2, REAL_MODE_CODE, &code);
    let running = vm
        .start(EntryMode::Real {
            segment: 0x100,
            ip: 0,
        })
        .unwrap();
    assert_eq!(wait_and_check_joined(running, 2).0, StopReason::Halted);
    let mut ids: Vec<char> = console.text().chars().collect();
    ids.sort_unstable();
    assert_eq!(ids, vec!['0', '1']);
}

#[test]
fn stop_from_outside_ends_a_spinning_guest_and_joins_its_vcpus() {
    require!(
        "stop_from_outside_ends_a_spinning_guest_and_joins_its_vcpus",
        kvm()
    );
    // Print "up" so the test knows the guest runs, then spin forever.
    let mut code = real_mode_print(b"up");
    code.extend_from_slice(&[0xeb, 0xfe]);
    let (vm, console) = test_vm(2, REAL_MODE_CODE, &code);
    let running = vm
        .start(EntryMode::Real {
            segment: 0x100,
            ip: 0,
        })
        .unwrap();
    while !console.text().contains("up") {
        std::thread::yield_now();
    }
    running.stop();
    assert_eq!(wait_and_check_joined(running, 2).0, StopReason::Requested);
}

#[test]
fn dropping_a_running_vm_joins_its_vcpus() {
    require!("dropping_a_running_vm_joins_its_vcpus", kvm());
    let (vm, _) = test_vm(1, REAL_MODE_CODE, &[0xeb, 0xfe]);
    let running = vm
        .start(EntryMode::Real {
            segment: 0x100,
            ip: 0,
        })
        .unwrap();
    let prefix = running.thread_prefix().to_owned();
    drop(running);
    assert!(vcpu_threads_alive(&prefix).is_empty());
}

/// Keeps the last 4-byte value written to it.
#[derive(Default)]
struct Latch(Vec<u32>);

impl BusDevice for Latch {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Ok(bytes) = <[u8; 4]>::try_from(data) {
            self.0.push(u32::from_le_bytes(bytes));
        }
    }
}

// Asserted for CX16 only: this project's test host (kvm_pvm) keeps reporting POPCNT and XSAVE
// to the guest whatever KVM_SET_CPUID2 says (measured: CPUID.1:ECX 0xf7f81203 with all three
// hidden); Linux guests there need `noxsave` on the command line.
#[test]
fn guest_cpuid_carries_the_apic_id_the_hypervisor_bit_and_hides_cx16() {
    require!(
        "guest_cpuid_carries_the_apic_id_the_hypervisor_bit_and_hides_cx16",
        kvm()
    );
    let code = [
        0x66, 0xb8, 0x01, 0, 0, 0, // mov eax, 1
        0x0f, 0xa2, // cpuid
        0xba, 0x00, 0x05, // mov dx, 0x500
        0x66, 0xef, // out dx, eax
        0x66, 0x89, 0xd8, // mov eax, ebx
        0x66, 0xef, // out dx, eax
        0x66, 0x89, 0xc8, // mov eax, ecx
        0x66, 0xef, // out dx, eax
        0x66, 0x89, 0xd0, // mov eax, edx
        0x66, 0xef, // out dx, eax
        HLT,
    ];
    let config = VmConfig {
        memory_mib: 16,
        vcpus: 1,
        interrupt_controller: false,
        hidden_cpu_features: vec![CpuFeature::Cx16, CpuFeature::Popcnt, CpuFeature::Xsave],
    };
    let mut vm = Vm::new(config).unwrap();
    vm.memory()
        .mmap()
        .write_slice(&code, GuestAddress(REAL_MODE_CODE))
        .unwrap();
    let latch = Arc::new(Mutex::new(Latch::default()));
    vm.add_pio_device(0x500, 4, latch.clone()).unwrap();
    let running = vm
        .start(EntryMode::Real {
            segment: 0x100,
            ip: 0,
        })
        .unwrap();
    assert_eq!(wait_and_check_joined(running, 1).0, StopReason::Halted);
    let regs = latch.lock().unwrap().0.clone();
    eprintln!("guest CPUID.1 = {regs:08x?}");
    let (ebx, ecx) = (regs[1], regs[2]);
    assert_eq!(ebx >> 24, 0, "initial APIC ID of vCPU 0");
    assert_eq!((ebx >> 16) & 0xff, 1, "one logical processor");
    assert_ne!(ecx & (1 << 31), 0, "hypervisor bit");
    assert_eq!(ecx & (1 << 13), 0, "cx16 hidden");
}

#[test]
fn rep_outsb_string_reaches_the_serial_port_whole() {
    require!("rep_outsb_string_reaches_the_serial_port_whole", kvm());
    let code = [
        0xbe, 0x0c, 0x10, // mov si, 0x100c (the text below; ds base 0)
        0xb9, 0x05, 0x00, // mov cx, 5
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xf3, 0x6e, // rep outsb
        HLT, b'h', b'e', b'l', b'l', b'o',
    ];
    let (vm, console) = test_vm(1, REAL_MODE_CODE, &code);
    let running = vm
        .start(EntryMode::Real {
            segment: 0x100,
            ip: 0,
        })
        .unwrap();
    // KVM may hand the string over in one exit or one per byte (kvm_pvm does the latter).
    assert_eq!(wait_and_check_joined(running, 1).0, StopReason::Halted);
    assert_eq!(console.text(), "hello");
}
