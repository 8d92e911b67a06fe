//! The architectural state a vCPU starts with: GDT, identity page tables, segment and control
//! registers for each [`EntryMode`], general registers, MSRs, FPU and the local APIC's LINT
//! pins.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_segment, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::cpu::EntryMode;
use crate::memory::{BOOT_STACK_POINTER, GDT_START, IDT_START, PDE_START, PDPTE_START, PML4_START};
use crate::{Error, Result};

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_RESERVED: u64 = 1 << 1;

/// Packs a GDT descriptor from its flags (access byte and the G/DB/L nibble, as in
/// `0xa09b`), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The KVM segment that loading selector `index × 8` with descriptor `entry` gives.
pub fn segment(index: u16, entry: u64) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let raw_limit = (entry & 0xffff) | ((entry >> 32) & 0xf_0000);
    let granular = bit(55) == 1;
    let limit = if granular {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: u32::try_from(limit).unwrap_or(u32::MAX),
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

/// GDT for 64-bit entry: null, 64-bit code, data, TSS.
const GDT_LONG: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];
/// GDT for PVH entry: null, flat 32-bit code, data, TSS.
const GDT_PVH: [u64; 4] = [
    0,
    gdt_entry(0xc09b, 0, 0xffff_ffff),
    gdt_entry(0xc093, 0, 0xffff_ffff),
    gdt_entry(0x008b, 0, 0x67),
];

fn write_guest<T: vm_memory::ByteValued>(mem: &GuestMemoryMmap, value: T, addr: u64) -> Result<()> {
    mem.write_obj(value, GuestAddress(addr))
        .map_err(|_| Error::GuestMemoryAccess {
            addr,
            len: std::mem::size_of::<T>(),
        })
}

fn write_gdt(mem: &GuestMemoryMmap, gdt: &[u64]) -> Result<()> {
    for (i, entry) in gdt.iter().enumerate() {
        write_guest(mem, *entry, GDT_START + 8 * i as u64)?;
    }
    write_guest(mem, 0u64, IDT_START)
}

/// Writes the identity map of the first GiB (2 MiB pages) used by 64-bit entry.
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<()> {
    write_guest(mem, PDPTE_START | 0x03, PML4_START)?;
    write_guest(mem, PDE_START | 0x03, PDPTE_START)?;
    for i in 0..512u64 {
        // Present, writable, 2 MiB page.
        write_guest(mem, (i << 21) | 0x83, PDE_START + i * 8)?;
    }
    Ok(())
}

fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::KvmIoctl { op, source }
}

/// Sets the boot vCPU's registers for `entry`, writing the GDT and page tables it needs.
pub fn setup_entry(vcpu: &VcpuFd, mem: &GuestMemoryMmap, entry: EntryMode) -> Result<()> {
    let mut sregs = vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
    let mut regs = vcpu.get_regs().map_err(ioctl("KVM_GET_REGS"))?;
    regs.rflags = RFLAGS_RESERVED;
    match entry {
        EntryMode::Real { segment, ip } => {
            sregs.cs.selector = segment;
            sregs.cs.base = u64::from(segment) << 4;
            regs.rip = u64::from(ip);
        }
        EntryMode::Pvh { entry, start_info } => {
            load_gdt(&mut sregs, mem, &GDT_PVH)?;
            sregs.cr0 = (sregs.cr0 | CR0_PE | CR0_ET) & !CR0_PG;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = entry;
            regs.rbx = start_info;
        }
        EntryMode::Long { entry, boot_params } => {
            load_gdt(&mut sregs, mem, &GDT_LONG)?;
            write_page_tables(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= CR4_PAE;
            sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rip = entry;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = boot_params;
        }
    }
    vcpu.set_sregs(&sregs).map_err(ioctl("KVM_SET_SREGS"))?;
    vcpu.set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))
}

fn load_gdt(
    sregs: &mut kvm_bindings::kvm_sregs,
    mem: &GuestMemoryMmap,
    gdt: &[u64; 4],
) -> Result<()> {
    write_gdt(mem, gdt)?;
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = u16::try_from(gdt.len() * 8 - 1).expect("a four-entry GDT");
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    let data = segment(2, gdt[2]);
    sregs.cs = segment(1, gdt[1]);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(3, gdt[3]);
    Ok(())
}

/// MSRs every vCPU starts with: syscall/sysenter state cleared, TSC at 0, fast strings on,
/// MTRRs enabled with write-back as the default type.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    const MSR_IA32_TSC: u32 = 0x10;
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    const MTRR_ENABLE: u64 = 1 << 11;
    const MTRR_TYPE_WB: u64 = 6;
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WB),
    ]
}

/// Sets [`boot_msrs`] on `vcpu`, failing with the first MSR KVM refuses.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<()> {
    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).expect("a dozen MSRs fit KVM's MSR array");
    let set = vcpu.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?;
    if set != entries.len() {
        return Err(Error::MsrsRefused {
            set,
            wanted: entries.len(),
            first_refused: entries.get(set).map_or(0, |e| e.index),
        });
    }
    Ok(())
}

/// Sets the x87 control word and MXCSR to their reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(ioctl("KVM_SET_FPU"))
}

/// Wires the local APIC's LINT0 to ExtINT (the PIC) and LINT1 to NMI, as firmware would.
/// Needs the in-kernel interrupt controller.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<()> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const DELIVERY_EXTINT: u32 = 7;
    const DELIVERY_NMI: u32 = 4;
    let mut lapic = vcpu.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?;
    for (reg, mode) in [(APIC_LVT0, DELIVERY_EXTINT), (APIC_LVT1, DELIVERY_NMI)] {
        let value = lapic_reg(&lapic.regs, reg);
        set_lapic_reg(&mut lapic.regs, reg, (value & !0x700) | (mode << 8));
    }
    vcpu.set_lapic(&lapic).map_err(ioctl("KVM_SET_LAPIC"))
}

fn lapic_reg(regs: &[std::ffi::c_char], offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (byte, reg) in bytes.iter_mut().zip(&regs[offset..offset + 4]) {
        *byte = *reg as u8;
    }
    u32::from_le_bytes(bytes)
}

fn set_lapic_reg(regs: &mut [std::ffi::c_char], offset: usize, value: u32) {
    for (reg, byte) in regs[offset..offset + 4].iter_mut().zip(value.to_le_bytes()) {
        *reg = byte as std::ffi::c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_the_segments_they_describe() {
        let code = segment(1, GDT_LONG[1]);
        assert_eq!(
            (code.selector, code.l, code.db, code.present, code.type_),
            (8, 1, 0, 1, 0xb)
        );
        assert_eq!(
            code.limit, 0xffff_ffff,
            "4 KiB granular limit 0xfffff spans 4 GiB"
        );
        let data = segment(2, GDT_PVH[2]);
        assert_eq!((data.selector, data.db, data.s, data.type_), (16, 1, 1, 3));
        let tss = segment(3, GDT_PVH[3]);
        assert_eq!((tss.limit, tss.s, tss.type_), (0x67, 0, 0xb));
        assert_eq!(segment(0, 0).unusable, 1);
    }

    #[test]
    fn gdt_entry_packs_base_and_limit_across_their_split_fields() {
        let entry = gdt_entry(0x0093, 0x1234_5678, 0xa_bcde);
        let seg = segment(1, entry);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0xa_bcde);
    }

    #[test]
    fn page_tables_identity_map_the_first_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_page_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPTE_START);
        let last: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(last & !0xfff, 511 << 21);
        assert_eq!(last & 0x81, 0x81, "present 2 MiB page");
    }

    #[test]
    fn lapic_registers_round_trip_little_endian() {
        let mut regs = [0 as std::ffi::c_char; 1024];
        set_lapic_reg(&mut regs, 0x350, 0x0001_0700);
        assert_eq!(lapic_reg(&regs, 0x350), 0x0001_0700);
        assert_eq!(regs[0x351] as u8, 0x07);
    }
}
