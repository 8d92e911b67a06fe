//! The Intel MultiProcessor Specification 1.4 table, by which a Linux guest without ACPI
//! learns how many CPUs it has (their local APIC IDs), where the IOAPIC is, and how the 16
//! ISA interrupts are wired. Without it the kernel boots on the boot CPU alone.
//!
//! The table is serialized field by field (little-endian) rather than through `repr(C)`
//! structs, so building it needs no `unsafe`.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::{Error, Result};

/// Where the table goes: the BIOS area at 0xf0000, which Linux scans for `_MP_`.
pub const MPTABLE_START: u64 = 0xf_0000;
/// Guest physical address of the IOAPIC.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Guest physical address of the local APICs.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// ISA interrupts routed through the IOAPIC.
const ISA_IRQS: u8 = 16;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const MPC_SPEC: u8 = 4;

const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;

/// Size of the floating pointer structure.
const MPF_SIZE: usize = 16;
/// Size of the configuration table header.
const MPC_HEADER_SIZE: usize = 44;

/// Two's complement of the byte sum, so that the bytes with it sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// The table for `vcpus` CPUs (APIC IDs 0 to vcpus − 1; the IOAPIC takes the next ID),
/// placed at [`MPTABLE_START`].
pub fn build(vcpus: u8) -> Vec<u8> {
    let ioapic_id = vcpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..vcpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[MP_PROCESSOR, id, APIC_VERSION, flags]);
        // Stepping/model/family 0x600, features FPU | APIC.
        entries.extend_from_slice(&0x600u32.to_le_bytes());
        entries.extend_from_slice(&0x201u32.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[MP_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 2;
    for irq in 0..ISA_IRQS {
        entries.extend_from_slice(&[MP_INTSRC, MP_IRQ_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // ExtINT to LINT0 of the boot CPU, NMI to LINT1 of every CPU.
    entries.extend_from_slice(&[MP_LINTSRC, MP_IRQ_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_IRQ_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_len = u16::try_from(MPC_HEADER_SIZE + entries.len()).expect("255 CPUs fit in 64 KiB");
    let mut table = Vec::with_capacity(usize::from(table_len));
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&table_len.to_le_bytes());
    table.extend_from_slice(&[MPC_SPEC, 0]); // checksum patched below
    table.extend_from_slice(b"HULL    ");
    table.extend_from_slice(b"HULL-VMM    ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes());
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let table_addr = u32::try_from(MPTABLE_START + MPF_SIZE as u64).expect("below 4 GiB");
    let mut mpf = Vec::with_capacity(MPF_SIZE);
    mpf.extend_from_slice(b"_MP_");
    mpf.extend_from_slice(&table_addr.to_le_bytes());
    mpf.extend_from_slice(&[1, MPC_SPEC, 0, 0, 0, 0, 0, 0]); // length in 16-byte units
    mpf[10] = checksum(&mpf);

    mpf.extend_from_slice(&table);
    mpf
}

/// Writes the table for `vcpus` CPUs into guest memory.
pub fn write(mem: &GuestMemoryMmap, vcpus: u8) -> Result<()> {
    let table = build(vcpus);
    mem.write_slice(&table, GuestAddress(MPTABLE_START))
        .map_err(|_| Error::GuestMemoryAccess {
            addr: MPTABLE_START,
            len: table.len(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn floating_pointer_and_table_checksum_to_zero_and_point_at_each_other() {
        let bytes = build(2);
        assert_eq!(&bytes[..4], b"_MP_");
        assert_eq!(sum(&bytes[..MPF_SIZE]), 0);
        let table_addr = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
        assert_eq!(u64::from(table_addr), MPTABLE_START + MPF_SIZE as u64);
        let table = &bytes[MPF_SIZE..];
        assert_eq!(&table[..4], b"PCMP");
        let len = usize::from(u16::from_le_bytes([table[4], table[5]]));
        assert_eq!(len, table.len());
        assert_eq!(sum(table), 0);
    }

    #[test]
    fn lists_each_vcpu_with_the_first_as_boot_processor() {
        let bytes = build(3);
        let table = &bytes[MPF_SIZE..];
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(count, 3 + 2 + u16::from(ISA_IRQS) + 2);
        let cpus: Vec<(u8, u8)> = table[MPC_HEADER_SIZE..]
            .chunks(20)
            .take(3)
            .map(|cpu| {
                assert_eq!(cpu[0], MP_PROCESSOR);
                (cpu[1], cpu[3])
            })
            .collect();
        assert_eq!(cpus, vec![(0, 3), (1, 1), (2, 1)]);
    }

    #[test]
    fn fits_the_bios_area_for_the_most_vcpus() {
        let size = build(crate::vm::MAX_VCPUS).len() as u64;
        assert!(MPTABLE_START + size <= 0x10_0000);
    }
}
