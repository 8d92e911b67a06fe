//! A small guest, written here as 32-bit machine code, drives a virtio-blk queue by hand on
//! the host's real KVM: it initializes the virtio-mmio device the VMM placed at
//! `virtio::MMIO_BASE` (register writes are MMIO exits to the transport), writes a read
//! request for sector 0 into its queue, kicks, and spins on the used ring until hull-blk,
//! which maps the guest's memory through the vhost-user frontend, has served it. With
//! KVM ioeventfds the kick never leaves the kernel: the transport sees no notification.
//! The user-space fallback path (no ioeventfd) is run the same way and must see exactly
//! one. Skips loudly where /dev/kvm or hull-blk is missing.

mod common;

use hull_tests::{artifacts, require};
use hull_vmm::cpu::EntryMode;
use hull_vmm::lifecycle::StopReason;
use hull_vmm::virtio::vhost_user::{VhostUserDevice, VhostUserKind};
use hull_vmm::virtio::{Activation, VirtioDevice, MMIO_BASE};
use hull_vmm::vm::{KickPath, Vm, VmConfig};
use vm_memory::{Bytes, GuestAddress};

use common::asm::Asm;
use common::backend::*;
use common::driver::*;
use common::{kvm, tiny_kernel, Console};

/// Where the guest code goes.
const CODE: u64 = 0x10_0000;
/// The guest's queue: descriptors, driver area, device area.
const DESC: u32 = 0x20_0000;
const AVAIL: u32 = 0x20_1000;
const USED: u32 = 0x20_2000;
/// The request: header, data buffer, status byte.
const HEADER: u32 = 0x30_0000;
const DATA: u32 = 0x30_1000;
const STATUS_BYTE: u32 = 0x30_2000;

/// The guest's driver: initialize the device, then `requests` times: queue a read of
/// sector 0, kick, wait for the used ring; then print the last request's status as a digit.
fn drive_blk(asm: &mut Asm, requests: u32) {
    asm.device_base();
    asm.reg(STATUS, 0)
        .reg(STATUS, ACKNOWLEDGE)
        .reg(STATUS, ACKNOWLEDGE | DRIVER)
        .reg(DRIVER_FEATURES_SEL, 1)
        .reg(DRIVER_FEATURES, 1) // VIRTIO_F_VERSION_1
        .reg(DRIVER_FEATURES_SEL, 0)
        .reg(DRIVER_FEATURES, 0)
        .reg(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK)
        .reg(QUEUE_SEL, 0)
        .reg(QUEUE_NUM, 16)
        .reg(QUEUE_DESC_LOW, DESC)
        .reg(QUEUE_DESC_HIGH, 0)
        .reg(QUEUE_AVAIL_LOW, AVAIL)
        .reg(QUEUE_AVAIL_HIGH, 0)
        .reg(QUEUE_USED_LOW, USED)
        .reg(QUEUE_USED_HIGH, 0)
        .reg(QUEUE_READY, 1)
        .reg(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    // The request: virtio_blk_outhdr { type IN, reserved, sector 0 }, and a status the
    // device must overwrite.
    for i in 0..4 {
        asm.store(HEADER + 4 * i, 0);
    }
    asm.store(STATUS_BYTE, 0xff);
    // Three descriptors: header (read-only), data (512, writable), status (1, writable).
    let descriptors = [
        (HEADER, 16, DESC_NEXT, 1u16),
        (DATA, 512, DESC_NEXT | DESC_WRITE, 2),
        (STATUS_BYTE, 1, DESC_WRITE, 0),
    ];
    for (i, (addr, len, flags, next)) in (0u32..).zip(descriptors) {
        let entry = DESC + 16 * i;
        asm.store(entry, addr)
            .store(entry + 4, 0)
            .store(entry + 8, len)
            .store(entry + 12, u32::from(flags) | (u32::from(next) << 16));
    }
    // Every avail ring entry is 0 (fresh memory): request i reuses chain 0 once request
    // i - 1 is used. xor ecx, ecx;
    // next: inc ecx; mov [AVAIL + 2], cx (publishes entry i - 1); kick;
    // wait: pause; movzx eax, word [USED + 2]; cmp ax, cx; jne wait;
    // cmp ecx, requests; jne next
    asm.code.extend_from_slice(&[0x31, 0xc9]);
    let next = asm.code.len();
    asm.code.extend_from_slice(&[0xff, 0xc1, 0x66, 0x89]);
    asm.absolute(1, AVAIL + 2);
    asm.reg(QUEUE_NOTIFY, 0);
    let wait = asm.code.len();
    asm.code.extend_from_slice(&[0xf3, 0x90]);
    asm.load_word(USED + 2);
    asm.code.extend_from_slice(&[0x66, 0x39, 0xc8]);
    asm.jne(wait);
    asm.code.extend_from_slice(&[0x81, 0xf9]);
    asm.code.extend_from_slice(&requests.to_le_bytes());
    asm.jne(next);
    asm.print(b"blk status ");
    // mov al, [STATUS_BYTE]; add al, '0'; out dx, al
    asm.load_byte(STATUS_BYTE);
    asm.code.extend_from_slice(&[0x04, b'0', 0xee]);
    asm.print(b"\n");
}

/// The 32-bit guest entered at PVH state: the driver, then hlt.
fn guest_code(requests: u32) -> Vec<u8> {
    let mut asm = Asm::default();
    drive_blk(&mut asm, requests);
    asm.code.push(0xf4); // hlt
    asm.code
}

/// 64-bit code for `hull-vmm`'s tiny kernel: maps the MMIO window at 0xd000_0000 (the
/// identity map covers only the first GiB), prints the kernel command line, runs the
/// driver, and resets through the i8042 (HLT does not end a VM with interrupt controllers).
fn long_mode_guest_code() -> Vec<u8> {
    let mut asm = Asm {
        long: true,
        ..Asm::default()
    };
    asm.map_mmio_window();
    // mov dx, 0x3f8; mov esi, 0x20000 (the command line);
    // l: mov al, [rsi]; test al, al; jz done; out dx, al; inc rsi; jmp l; done: print '\n'.
    asm.code
        .extend_from_slice(&[0x66, 0xba, 0xf8, 0x03, 0xbe, 0x00, 0x00, 0x02, 0x00]);
    asm.code.extend_from_slice(&[
        0x8a, 0x06, 0x84, 0xc0, 0x74, 0x06, 0xee, 0x48, 0xff, 0xc6, 0xeb, 0xf4,
    ]);
    asm.print(b"\n");
    drive_blk(&mut asm, 1);
    asm.reset();
    asm.code
}

/// Requests each guest run makes: the 16-entry ring wraps around six times.
const REQUESTS: u32 = 100;

/// The vhost-user-blk backend a guest runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    HullBlk,
    QemuStorageDaemon,
}

fn guest_reads_sector_zero(test: &str, kicks: KickPath, peer: Peer) {
    require!(test, kvm());
    let program = match peer {
        Peer::HullBlk => artifacts::workspace_binary("hull-blk"),
        Peer::QemuStorageDaemon => qemu_storage_daemon(),
    };
    let program = require!(test, program);
    let dir = TempDir::new(test);
    let disk = disk(&dir.0);
    let (mut backend, socket) = match peer {
        Peer::HullBlk => {
            let (backend, socket, _log) = hull_blk(&program, &dir.0, &disk);
            (backend, socket)
        }
        Peer::QemuStorageDaemon => qsd_blk(&program, &dir.0, &disk),
    };

    let config = VmConfig {
        memory_mib: 16,
        vcpus: 1,
        interrupt_controller: false,
        hidden_cpu_features: vec![],
    };
    let mut vm = Vm::new(config).unwrap();
    let console = Console::default();
    vm.add_serial(Box::new(console.clone())).unwrap();
    let device = VhostUserDevice::connect(&socket, VhostUserKind::Block).unwrap();
    let slot = vm.add_virtio_mmio(Box::new(device), kicks).unwrap();
    assert_eq!((slot.base, slot.irq), (MMIO_BASE, 5));
    vm.memory()
        .mmap()
        .write_slice(&guest_code(REQUESTS), GuestAddress(CODE))
        .unwrap();
    let running = vm
        .start(EntryMode::Pvh {
            entry: CODE,
            start_info: 0,
        })
        .unwrap();
    // A second handle on guest RAM, still mapped once the VM is gone.
    let memory = running.memory().mmap().clone();
    let started = std::time::Instant::now();
    let (reason, counts) = running.wait_with_counts();
    // For the record, not asserted: what a request round trip costs on each path.
    eprintln!(
        "{REQUESTS} requests with kicks {kicks:?}: {:?} per request",
        started.elapsed() / REQUESTS
    );
    assert_eq!(reason, StopReason::Halted, "console: {}", console.text());
    assert_eq!(console.text(), "blk status 0\n", "VIRTIO_BLK_S_OK");

    let transport = slot.transport.lock().unwrap();
    assert!(transport.is_active());
    let expected_notifications = match kicks {
        KickPath::Kernel => 0,
        KickPath::UserSpace => u64::from(REQUESTS),
    };
    assert_eq!(
        transport.counts().notifications,
        expected_notifications,
        "kicks that exited to the VMM"
    );
    // 18 register writes, plus the kicks on the user-space path.
    assert_eq!(counts[0].mmio_write, 18 + expected_notifications);
    // The backend raised the interrupt line (no irqfd on this VM: it is still pending).
    wait_for_interrupt(transport.interrupt());
    drop(transport);
    let mut sector = vec![0u8; 512];
    memory
        .read_slice(&mut sector, GuestAddress(u64::from(DATA)))
        .unwrap();
    let expected: Vec<u8> = (0..512).map(disk_byte).collect();
    assert_eq!(sector, expected, "sector 0 of the file is in guest memory");
    // The last handle on the frontend goes: hull-blk sees it disconnect and exits 0
    // (qemu-storage-daemon serves on until it is killed, when `backend` drops).
    drop(slot);
    if peer == Peer::QemuStorageDaemon {
        return;
    }
    let status = backend
        .wait_exit()
        .expect("hull-blk exits after the frontend");
    assert!(status.success(), "hull-blk: {status}");
    let log_text = std::fs::read_to_string(dir.0.join("hull-blk.log")).unwrap_or_default();
    assert!(
        log_text.contains(&format!("ok: {REQUESTS},")),
        "hull-blk served every request; log: {log_text}"
    );
}

#[test]
fn guest_reads_a_sector_through_hull_blk_with_kicks_as_kvm_ioeventfds() {
    guest_reads_sector_zero(
        "guest_reads_a_sector_through_hull_blk_with_kicks_as_kvm_ioeventfds",
        KickPath::Kernel,
        Peer::HullBlk,
    );
}

#[test]
fn guest_reads_a_sector_through_qemu_storage_daemon_with_kicks_as_kvm_ioeventfds() {
    guest_reads_sector_zero(
        "guest_reads_a_sector_through_qemu_storage_daemon_with_kicks_as_kvm_ioeventfds",
        KickPath::Kernel,
        Peer::QemuStorageDaemon,
    );
}

#[test]
fn guest_reads_a_sector_through_hull_blk_with_kicks_through_the_vmm() {
    guest_reads_sector_zero(
        "guest_reads_a_sector_through_hull_blk_with_kicks_through_the_vmm",
        KickPath::UserSpace,
        Peer::HullBlk,
    );
}

/// A device with one queue and nothing behind it.
struct Idle;

impl VirtioDevice for Idle {
    fn device_type(&self) -> u32 {
        0x1f
    }
    fn features(&self) -> u64 {
        0
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[8]
    }
    fn read_config(&mut self, _offset: u64, _data: &mut [u8]) {}
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, _activation: Activation<'_>) -> hull_vmm::Result<()> {
        Ok(())
    }
    fn reset(&mut self) {}
}

#[test]
fn devices_get_their_own_window_irqfd_line_and_command_line_entry_until_lines_run_out() {
    let test = "devices_get_their_own_window_irqfd_line_and_command_line_entry_until_lines_run_out";
    require!(test, kvm());
    let config = VmConfig {
        memory_mib: 16,
        vcpus: 1,
        interrupt_controller: true,
        hidden_cpu_features: vec![],
    };
    let mut vm = Vm::new(config).unwrap();
    // Lines 5 to 15: eleven devices, each with an irqfd on the in-kernel IOAPIC.
    for n in 0..11u32 {
        let slot = vm
            .add_virtio_mmio(Box::new(Idle), KickPath::Kernel)
            .unwrap();
        assert_eq!(slot.base, MMIO_BASE + u64::from(n) * 0x1000);
        assert_eq!(slot.irq, 5 + n);
    }
    let err = vm
        .add_virtio_mmio(Box::new(Idle), KickPath::Kernel)
        .unwrap_err();
    assert!(err.to_string().contains("interrupt line"), "{err}");
    let cmdline = vm.virtio_cmdline();
    assert!(
        cmdline
            .starts_with("virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 "),
        "{cmdline}"
    );
    assert!(
        cmdline.ends_with("virtio_mmio.device=4K@0xd000a000:15"),
        "{cmdline}"
    );
}

#[test]
fn hull_vmm_announces_its_vhost_user_blk_device_and_a_guest_reads_through_it() {
    let test = "hull_vmm_announces_its_vhost_user_blk_device_and_a_guest_reads_through_it";
    require!(test, kvm());
    let binary = require!(test, artifacts::workspace_binary("hull-blk"));
    let dir = TempDir::new("vu-cli");
    let disk = disk(&dir.0);
    let (mut backend, socket, _log) = hull_blk(&binary, &dir.0, &disk);
    let kernel = dir.0.join("tiny-kernel");
    std::fs::write(&kernel, tiny_kernel(&long_mode_guest_code())).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
        .args(["--kernel", kernel.to_str().unwrap(), "--memory", "32"])
        .args(["--cmdline", "console=ttyS0"])
        .args(["--vhost-user-blk", socket.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5\nblk status 0\n",
        "the command line announces the device, and the guest's read succeeds; stderr: {stderr}"
    );
    // hull-vmm is gone, so is its frontend: hull-blk exits 0.
    let status = backend.wait_exit().expect("hull-blk exits after hull-vmm");
    assert!(status.success(), "hull-blk: {status}");
}

/// Where the interrupt handler of [`irq_guest_code`] goes, and its IDT.
const HANDLER: u32 = 0x18_0000;
const IDT: u32 = 0x40_0000;
const IDTR: u32 = 0x40_1000;
/// The vector the IOAPIC delivers the device's line on.
const VECTOR: u32 = 0x30;

/// The interrupt handler: prints "irq " and the InterruptStatus it acknowledges, sends
/// the LAPIC its EOI, prints what the device did, and resets through the i8042. It does
/// not return: this machine's KVM (kvm_pvm) cannot emulate IRET for a 32-bit guest.
fn irq_handler_code() -> Vec<u8> {
    let mut asm = Asm::default();
    asm.print(b"irq ");
    // mov eax, [ebx + INTERRUPT_STATUS]; mov [ebx + INTERRUPT_ACK], eax
    asm.code.extend_from_slice(&[0x8b, 0x83]);
    asm.code
        .extend_from_slice(&u32::try_from(INTERRUPT_STATUS).unwrap().to_le_bytes());
    asm.code.extend_from_slice(&[0x89, 0x83]);
    asm.code
        .extend_from_slice(&u32::try_from(INTERRUPT_ACK).unwrap().to_le_bytes());
    asm.code.extend_from_slice(&[0x04, b'0', 0xee]); // add al, '0'; out dx, al
    asm.print(b"\n");
    asm.store(0xfee0_00b0, 0); // LAPIC EOI
    asm.print(b"used ");
    asm.load_byte(USED + 2);
    asm.code.extend_from_slice(&[0x04, b'0', 0xee]);
    asm.print(b", blk status ");
    asm.load_byte(STATUS_BYTE);
    asm.code.extend_from_slice(&[0x04, b'0', 0xee]);
    asm.print(b"\n");
    asm.reset();
    asm.code
}

/// A 32-bit guest on a VM with interrupt controllers: it routes IOAPIC pin 5 to
/// [`VECTOR`], masks the 8259s, enables its LAPIC, then queues a read of sector 0, kicks
/// and sleeps (`sti; hlt`) until the device's interrupt wakes it into the handler.
fn irq_guest_code() -> Vec<u8> {
    let mut asm = Asm::default();
    // mov esp, 0x50_0000: PVH entry leaves no stack, and the interrupt needs one.
    asm.code.push(0xbc);
    asm.code.extend_from_slice(&0x50_0000u32.to_le_bytes());
    // IDT gate for VECTOR: 32-bit interrupt gate to HANDLER in code segment 0x08.
    let gate = IDT + 8 * VECTOR;
    asm.store(gate, (HANDLER & 0xffff) | (0x08 << 16))
        .store(gate + 4, (HANDLER & 0xffff_0000) | 0x8e00)
        .store(IDTR, (8 * VECTOR + 7) | ((IDT & 0xffff) << 16))
        .store(IDTR + 4, IDT >> 16);
    asm.code.extend_from_slice(&[0x0f, 0x01]); // lidt [IDTR]
    asm.absolute(3, IDTR);
    // Mask both 8259s: the line reaches the CPU through the IOAPIC only.
    asm.code
        .extend_from_slice(&[0xb0, 0xff, 0xe6, 0x21, 0xe6, 0xa1]);
    // IOAPIC redirection entry 5: VECTOR, fixed, edge, unmasked, to APIC 0.
    asm.store(0xfec0_0000, 0x10 + 2 * 5)
        .store(0xfec0_0010, VECTOR)
        .store(0xfec0_0000, 0x10 + 2 * 5 + 1)
        .store(0xfec0_0010, 0);
    // LAPIC software enable, spurious vector 0xff.
    asm.store(0xfee0_00f0, 0x1ff);
    // The device set-up and the request as in drive_blk, but without the spin wait.
    let mut driver = Asm::default();
    drive_blk(&mut driver, 1);
    let kick_end = driver
        .code
        .windows(6)
        .position(|w| w == [0xc7, 0x83, 0x50, 0x00, 0x00, 0x00])
        .expect("the kick")
        + 10;
    asm.code.extend_from_slice(&driver.code[..kick_end]);
    asm.print(b"asleep\n");
    asm.code.extend_from_slice(&[0xfb, 0xf4, 0xeb, 0xfd]); // sti; l: hlt; jmp l
    asm.code
}

#[test]
fn guest_sleeps_until_the_backends_interrupt_arrives_through_the_irqfd() {
    let test = "guest_sleeps_until_the_backends_interrupt_arrives_through_the_irqfd";
    require!(test, kvm());
    let binary = require!(test, artifacts::workspace_binary("hull-blk"));
    let dir = TempDir::new("vu-irq");
    let disk = disk(&dir.0);
    let (mut backend, socket, _log) = hull_blk(&binary, &dir.0, &disk);
    let config = VmConfig {
        memory_mib: 16,
        vcpus: 1,
        interrupt_controller: true,
        hidden_cpu_features: vec![],
    };
    let mut vm = Vm::new(config).unwrap();
    let console = Console::default();
    vm.add_serial(Box::new(console.clone())).unwrap();
    let device = VhostUserDevice::connect(&socket, VhostUserKind::Block).unwrap();
    let slot = vm
        .add_virtio_mmio(Box::new(device), KickPath::Kernel)
        .unwrap();
    let mem = vm.memory().mmap();
    mem.write_slice(&irq_guest_code(), GuestAddress(CODE))
        .unwrap();
    mem.write_slice(&irq_handler_code(), GuestAddress(u64::from(HANDLER)))
        .unwrap();
    let running = vm
        .start(EntryMode::Pvh {
            entry: CODE,
            start_info: 0,
        })
        .unwrap();
    // A bound on a guest that never wakes, not a timing assertion.
    let deadline = std::time::Instant::now() + BOUND;
    let state = running.run_state();
    while !state.stop_requested() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    running.stop();
    let reason = running.wait();
    assert_eq!(
        console.text(),
        "asleep\nirq 1\nused 1, blk status 0\n",
        "the interrupt woke the guest, which acknowledged InterruptStatus VRING (stop: {reason:?})"
    );
    assert_eq!(reason, StopReason::I8042Reset);
    assert_eq!(slot.transport.lock().unwrap().counts().notifications, 0);
    drop(slot);
    let status = backend
        .wait_exit()
        .expect("hull-blk exits after the frontend");
    assert!(status.success(), "hull-blk: {status}");
}
