//! The limit of both benchmarks, in this process with kvm-ioctls and nothing else: open
//! /dev/kvm, KVM_CREATE_VM, one memory slot, one vCPU in the PVH entry state (32-bit
//! protected mode, flat segments, paging off, as linux-loader's PVH path and QEMU leave it),
//! then KVM_RUN in a loop whose only work is to look at the exit. No devices, no threads, no
//! CPUID or MSR set-up: what any VMM must at least pay to run the same guest.

use std::time::{Duration, Instant};

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::guest::{Program, COM1, FIRST_OUTPUT, LOAD_ADDR, LOOP_DONE};
use crate::{Error, Result};

/// Guest RAM of the limit's VM, as the VMMs get (`--memory 16`, `-m 16M`).
const RAM_BYTES: usize = 16 << 20;
/// Where the GDT goes (as hull-vmm puts it).
const GDT_ADDR: u64 = 0x500;
/// GDT: null, flat 32-bit code (selector 0x08), flat data (0x10).
const GDT: [u64; 3] = [0, 0x00cf_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
/// Most exits one run may take before the limit gives up (a guest that never signals).
const MAX_EXITS: u64 = 1 << 32;

/// What one run of the limit saw, each time from before guest RAM was mapped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timings {
    /// Until the exit of the guest's first output.
    pub first_output: Duration,
    /// Until the exit of [`LOOP_DONE`], if the program has a loop.
    pub loop_done: Option<Duration>,
    /// Exits between the first output and [`LOOP_DONE`] (the loop's own exits).
    pub loop_exits: u64,
    /// Until the reset's exit was seen and the vCPU, VM and /dev/kvm were closed.
    pub done: Duration,
}

fn kvm_err(what: &str) -> impl FnOnce(kvm_ioctls::Error) -> Error + '_ {
    move |err| Error::Io {
        what: format!("the KVM limit: {what}"),
        source: std::io::Error::from_raw_os_error(err.errno()),
    }
}

/// A flat segment with selector `selector` and descriptor type `type_` (0xb code, 0x3 data).
fn flat(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Runs `program` from nothing to its reset (or, for [`Program::Park`], to its first
/// output).
pub fn run(program: Program) -> Result<Timings> {
    let start = Instant::now();
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM_BYTES)])
        .map_err(|err| Error::Unexpected(format!("the KVM limit: mapping guest RAM: {err}")))?;
    let kvm = Kvm::new().map_err(kvm_err("opening /dev/kvm"))?;
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    let write = |bytes: &[u8], addr: u64| {
        memory
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|err| Error::Unexpected(format!("the KVM limit: writing RAM: {err}")))
    };
    write(&program.code(), u64::from(LOAD_ADDR))?;
    for (i, entry) in GDT.iter().enumerate() {
        write(&entry.to_le_bytes(), GDT_ADDR + 8 * i as u64)?;
    }
    let region = memory
        .iter()
        .next()
        .ok_or_else(|| Error::Unexpected("the KVM limit: no RAM region".into()))?;
    let host = region
        .get_host_address(vm_memory::MemoryRegionAddress(0))
        .map_err(|err| Error::Unexpected(format!("the KVM limit: RAM address: {err}")))?;
    let slot = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: RAM_BYTES as u64,
        userspace_addr: host as u64,
        flags: 0,
    };
    // SAFETY: [host, host + RAM_BYTES) is a live mapping owned by `memory`, which is declared
    // before `vm` and so dropped after it on every path (explicitly so below): KVM never sees
    // the slot's memory unmapped while the VM exists.
    unsafe { vm.set_user_memory_region(slot) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    let vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.cs = flat(0x08, 0xb);
    let data = flat(0x10, 0x3);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.cr0 = (sregs.cr0 | CR0_PE | CR0_ET) & !(1 << 31);
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
    let mut regs = vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
    regs.rip = u64::from(LOAD_ADDR);
    regs.rflags = 2;
    vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;

    let mut vcpu = vcpu;
    let mut first_output = None;
    let mut loop_done = None;
    let mut loop_exits = 0u64;
    for _ in 0..MAX_EXITS {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) if port == COM1 => {
                if data == [FIRST_OUTPUT] && first_output.is_none() {
                    first_output = Some(start.elapsed());
                    if program == Program::Park {
                        break;
                    }
                } else if data == [LOOP_DONE] {
                    loop_done = Some(start.elapsed());
                }
            }
            // The i8042 reset: the guest is done.
            Ok(VcpuExit::IoOut(0x64, [0xfe])) => break,
            Ok(VcpuExit::IoOut(..) | VcpuExit::MmioWrite(..)) => {
                if first_output.is_some() && loop_done.is_none() {
                    loop_exits += 1;
                }
            }
            Ok(other) => {
                return Err(Error::Unexpected(format!(
                    "the KVM limit: unexpected exit {other:?}"
                )))
            }
            Err(err) if err.errno() == nix::libc::EINTR || err.errno() == nix::libc::EAGAIN => {}
            Err(err) => return Err(kvm_err("KVM_RUN")(err)),
        }
    }
    drop(vcpu);
    drop(vm);
    drop(kvm);
    drop(memory);
    let first_output = first_output
        .ok_or_else(|| Error::Unexpected("the KVM limit: the guest wrote nothing".into()))?;
    Ok(Timings {
        first_output,
        loop_done,
        loop_exits,
        done: start.elapsed(),
    })
}
