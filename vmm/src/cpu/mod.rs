//! Per-vCPU set-up and the vCPU thread.
//!
//! [`cpuid`] filters what KVM supports into what the guest sees; [`regs`] holds the
//! architectural state of each entry mode (GDT, page tables, segment and control registers,
//! MSRs, FPU, LAPIC); [`vcpu`] runs a vCPU on its own thread and handles its exits.

pub mod cpuid;
pub mod regs;
pub mod vcpu;

/// How the boot vCPU enters the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 16-bit real mode at `segment:ip`, as a BIOS would hand over (small test guests).
    Real {
        /// Code segment (base = segment × 16).
        segment: u16,
        /// Instruction pointer.
        ip: u16,
    },
    /// 32-bit protected mode with paging off and `ebx` pointing at the `hvm_start_info`
    /// (the PVH boot protocol of an ELF vmlinux).
    Pvh {
        /// Guest physical entry address.
        entry: u64,
        /// Guest physical address of the start info.
        start_info: u64,
    },
    /// 64-bit long mode with the first GiB identity-mapped and `rsi` pointing at the zero
    /// page (Linux 64-bit boot protocol, and 64-bit test guests).
    Long {
        /// Guest entry address (identity-mapped).
        entry: u64,
        /// Guest physical address of the zero page.
        boot_params: u64,
    },
}
