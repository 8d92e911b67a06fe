//! Guest RAM and the x86 guest physical layout.
//!
//! All of guest RAM lives in one memfd, mapped shared, so that a vhost-user backend handed
//! the fd and a region's file offset maps exactly the pages the guest sees. RAM below 4 GiB
//! stops at [`MMIO_GAP_START`]; the rest continues at 4 GiB, in the same memfd right after
//! the low part. This module owns the addresses of everything the VMM places in guest memory
//! at boot; it does not own KVM memory slots (see [`crate::vm`]).

use std::fs::File;

use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::{Error, Result};

/// One MiB in bytes.
pub const MIB: u64 = 1 << 20;
/// Smallest guest RAM the layout accepts, in MiB: the boot structures below 1 MiB, a kernel
/// at 1 MiB and room for it to unpack.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Largest guest RAM accepted, in MiB (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

/// Guest GDT.
pub const GDT_START: u64 = 0x500;
/// Guest IDT (empty: the kernel installs its own).
pub const IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH memory map, right after the start info.
pub const PVH_MEMMAP_START: u64 = 0x6040;
/// PVH module list (the initrd), after room for 64 memory map entries.
pub const PVH_MODLIST_START: u64 = 0x6700;
/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level 4 page table of the identity map for 64-bit entry.
pub const PML4_START: u64 = 0x9000;
/// Level 3 page table.
pub const PDPTE_START: u64 = 0xa000;
/// Level 2 page table (512 × 2 MiB pages: the first GiB).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest kernel command line, NUL included (x86 `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area: low RAM ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the kernel goes; low memory below it holds the boot structures.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole; RAM resumes at [`MMIO_GAP_END`].
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;

// The boot stack grows down from between the zero page and the page tables.
const _: () =
    assert!(BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000 && BOOT_STACK_POINTER < PML4_START);

/// One stretch of guest RAM and where it lives in the memfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRange {
    /// Guest physical address of the first byte.
    pub guest_addr: u64,
    /// Size in bytes, a multiple of 4 KiB.
    pub size: u64,
    /// Offset of the first byte in the memfd.
    pub file_offset: u64,
}

/// The RAM ranges of a guest with `size` bytes of RAM: below the MMIO hole, then above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<RamRange> {
    let low = size.min(MMIO_GAP_START);
    let mut ranges = vec![RamRange {
        guest_addr: 0,
        size: low,
        file_offset: 0,
    }];
    if size > low {
        ranges.push(RamRange {
            guest_addr: MMIO_GAP_END,
            size: size - low,
            file_offset: low,
        });
    }
    ranges
}

/// What an e820 entry describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Kind {
    /// Usable RAM (e820 type 1).
    Ram,
}

impl E820Kind {
    /// The e820 type number.
    pub fn raw(self) -> u32 {
        match self {
            E820Kind::Ram => 1,
        }
    }
}

/// One entry of the memory map given to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Guest physical address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: E820Kind,
}

/// The memory map of a guest with `size` bytes of RAM (at least [`MIN_MEMORY_MIB`]): the
/// real-mode RAM below the EBDA, RAM from 1 MiB up to the MMIO hole, and RAM above 4 GiB.
/// Anything not listed (EBDA, VGA, BIOS, MMIO hole) is reserved to the kernel.
pub fn e820_entries(size: u64) -> Vec<E820Entry> {
    let mut entries = vec![E820Entry {
        addr: 0,
        size: EBDA_START,
        kind: E820Kind::Ram,
    }];
    for range in ram_ranges(size) {
        let start = range.guest_addr.max(HIMEM_START);
        let end = range.guest_addr + range.size;
        if end > start {
            entries.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820Kind::Ram,
            });
        }
    }
    entries
}

/// Guest RAM: a memfd and its shared mapping, split in [`RamRange`]s.
#[derive(Debug)]
pub struct GuestMemory {
    memfd: File,
    size: u64,
    ranges: Vec<RamRange>,
    mmap: GuestMemoryMmap,
}

impl GuestMemory {
    /// Creates `mib` MiB of guest RAM in a new memfd.
    pub fn new(mib: u64) -> Result<Self> {
        if mib < MIN_MEMORY_MIB {
            return Err(Error::MemoryTooSmall {
                mib,
                min_mib: MIN_MEMORY_MIB,
            });
        }
        if mib > MAX_MEMORY_MIB || usize::try_from(mib * MIB).is_err() {
            return Err(Error::MemoryTooLarge { mib });
        }
        let size = mib * MIB;
        let name = c"hull-guest-ram";
        let memfd_err = |source: std::io::Error| Error::Memfd {
            bytes: size,
            source,
        };
        let memfd: File = memfd_create(name, MemFdCreateFlag::MFD_CLOEXEC)
            .map_err(|errno| memfd_err(errno.into()))?
            .into();
        memfd.set_len(size).map_err(memfd_err)?;
        let ranges = ram_ranges(size);
        let mut regions = Vec::with_capacity(ranges.len());
        for range in &ranges {
            let file = memfd.try_clone().map_err(memfd_err)?;
            let len = usize::try_from(range.size).map_err(|_| Error::MemoryTooLarge { mib })?;
            regions.push((
                GuestAddress(range.guest_addr),
                len,
                Some(FileOffset::new(file, range.file_offset)),
            ));
        }
        let mmap =
            GuestMemoryMmap::from_ranges_with_files(&regions).map_err(Error::GuestMemoryMap)?;
        Ok(Self {
            memfd,
            size,
            ranges,
            mmap,
        })
    }

    /// Total RAM in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The memfd holding all of guest RAM, to hand to vhost-user backends.
    pub fn memfd(&self) -> &File {
        &self.memfd
    }

    /// The RAM ranges, with their offsets in [`Self::memfd`].
    pub fn ranges(&self) -> &[RamRange] {
        &self.ranges
    }

    /// The mapping, for loaders and devices.
    pub fn mmap(&self) -> &GuestMemoryMmap {
        &self.mmap
    }

    /// End of RAM below the MMIO hole (exclusive).
    pub fn low_end(&self) -> u64 {
        self.size.min(MMIO_GAP_START)
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    use super::*;

    #[test]
    fn small_guest_has_one_range_and_ram_below_ebda_and_from_1mib() {
        let size = 64 * MIB;
        assert_eq!(
            ram_ranges(size),
            vec![RamRange {
                guest_addr: 0,
                size,
                file_offset: 0
            }]
        );
        assert_eq!(
            e820_entries(size),
            vec![
                E820Entry {
                    addr: 0,
                    size: EBDA_START,
                    kind: E820Kind::Ram
                },
                E820Entry {
                    addr: HIMEM_START,
                    size: size - HIMEM_START,
                    kind: E820Kind::Ram
                },
            ]
        );
    }

    #[test]
    fn large_guest_skips_the_mmio_hole_and_continues_the_memfd_after_low_ram() {
        let size = 4096 * MIB;
        let ranges = ram_ranges(size);
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[0].size, MMIO_GAP_START);
        assert_eq!(ranges[1].guest_addr, MMIO_GAP_END);
        assert_eq!(ranges[1].file_offset, MMIO_GAP_START);
        assert_eq!(ranges[0].size + ranges[1].size, size);
        let e820 = e820_entries(size);
        assert!(e820
            .iter()
            .all(|e| e.addr + e.size <= MMIO_GAP_START || e.addr >= MMIO_GAP_END));
        assert_eq!(
            e820.last().map(|e| e.addr + e.size),
            Some(MMIO_GAP_END + size - MMIO_GAP_START)
        );
    }

    #[test]
    fn boot_structures_sit_below_the_kernel_and_do_not_overlap() {
        let mut areas = [
            (GDT_START, 4 * 8),
            (IDT_START, 8),
            (PVH_INFO_START, 0x40),
            (PVH_MEMMAP_START, PVH_MODLIST_START - PVH_MEMMAP_START),
            (PVH_MODLIST_START, 0x20),
            (ZERO_PAGE_START, 0x1000),
            (PML4_START, 0x1000),
            (PDPTE_START, 0x1000),
            (PDE_START, 0x1000),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
        ];
        areas.sort();
        for pair in areas.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:x?} overlap");
        }
        assert!(areas.iter().all(|(a, len)| a + len <= EBDA_START));
    }

    #[test]
    fn rejects_too_little_memory_naming_the_minimum() {
        let err = GuestMemory::new(MIN_MEMORY_MIB - 1).unwrap_err();
        assert!(matches!(
            err,
            Error::MemoryTooSmall {
                mib: 15,
                min_mib: MIN_MEMORY_MIB
            }
        ));
        assert!(err.to_string().contains("at least 16 MiB"));
    }

    #[test]
    fn rejects_absurd_memory_sizes() {
        assert!(matches!(
            GuestMemory::new(u64::MAX),
            Err(Error::MemoryTooLarge { .. })
        ));
    }

    #[test]
    fn guest_ram_is_the_memfd_at_the_recorded_offsets() {
        use std::os::unix::fs::FileExt;
        let mem = GuestMemory::new(MIN_MEMORY_MIB).unwrap();
        mem.mmap()
            .write_obj(0xdead_beef_u32, GuestAddress(0x1234))
            .unwrap();
        let mut buf = [0u8; 4];
        mem.memfd().read_exact_at(&mut buf, 0x1234).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
        let region = mem.mmap().find_region(GuestAddress(0)).unwrap();
        assert_eq!(region.file_offset().map(|f| f.start()), Some(0));
        assert_eq!(region.len(), mem.size());
    }

    #[test]
    fn accesses_beyond_guest_ram_fail_instead_of_touching_host_memory() {
        let mem = GuestMemory::new(MIN_MEMORY_MIB).unwrap();
        let end = GuestAddress(MIN_MEMORY_MIB * MIB - 2);
        assert!(mem.mmap().write_obj(0u32, end).is_err());
        assert!(mem
            .mmap()
            .read_obj::<u64>(GuestAddress(u64::MAX - 3))
            .is_err());
    }
}
