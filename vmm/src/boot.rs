//! Loading a Linux kernel: an ELF vmlinux (entered through PVH when it has the PVH note, else
//! at its 64-bit entry) or a bzImage, with linux-loader; the command line, the initrd, and the
//! boot parameters (PVH start info or zero page, each with the e820 map).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{self, BzImage, Elf, KernelLoader, KernelLoaderResult};
use vm_memory::{Bytes, GuestAddress};

use crate::cpu::EntryMode;
use crate::memory::{
    e820_entries, GuestMemory, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, PVH_INFO_START,
    PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};
use crate::{Error, Result};

/// What to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// ELF vmlinux or bzImage.
    pub kernel: PathBuf,
    /// Optional initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
}

/// Default kernel command line: serial console, reboot by triple fault (so the VM stops),
/// no panic delay.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=t panic=-1";

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x100_0000;
const PAGE_SIZE: u64 = 4096;
/// Most e820 entries the zero page holds.
const E820_MAX_ZEROPAGE: usize = 128;
/// Most PVH memory map entries between [`PVH_MEMMAP_START`] and [`PVH_MODLIST_START`].
const PVH_MEMMAP_MAX: usize = ((PVH_MODLIST_START - PVH_MEMMAP_START) / 24) as usize;

/// Builds the kernel command line, checking its length against what the kernel accepts.
pub fn build_cmdline(cmdline: &str) -> Result<Cmdline> {
    Cmdline::try_from(cmdline, CMDLINE_MAX_SIZE).map_err(|err| Error::Cmdline {
        cmdline: cmdline.to_owned(),
        reason: err.to_string(),
    })
}

/// Where the initrd was put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Initrd {
    addr: u64,
    size: u64,
}

/// The page-aligned address where an initrd of `size` bytes goes: as high as possible below
/// `limit`, above `kernel_end`.
fn initrd_address(size: u64, kernel_end: u64, limit: u64) -> Option<u64> {
    let addr = limit.checked_sub(size)? & !(PAGE_SIZE - 1);
    (addr >= kernel_end).then_some(addr)
}

/// Loads the kernel, initrd and command line of `config` into `memory` and writes the boot
/// parameters; returns how the boot vCPU enters the kernel.
pub fn load(memory: &GuestMemory, config: &BootConfig) -> Result<EntryMode> {
    let cmdline = build_cmdline(&config.cmdline)?;
    let kernel_path = &config.kernel;
    let read_err = |source| Error::KernelRead {
        path: kernel_path.clone(),
        source,
    };
    let mut kernel = File::open(kernel_path).map_err(read_err)?;
    let mut magic = [0u8; 4];
    kernel.read_exact(&mut magic).map_err(read_err)?;
    kernel.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let malformed = |err: loader::Error| Error::KernelMalformed {
        path: kernel_path.clone(),
        reason: err.to_string(),
    };
    let mem = memory.mmap();
    let himem = Some(GuestAddress(HIMEM_START));
    let loaded = if magic == *b"\x7fELF" {
        Elf::load(mem, None, &mut kernel, himem).map_err(malformed)?
    } else {
        BzImage::load(mem, None, &mut kernel, himem).map_err(malformed)?
    };
    if loaded.kernel_end > memory.low_end() {
        return Err(Error::KernelMalformed {
            path: kernel_path.clone(),
            reason: format!(
                "it ends at {:#x}, beyond guest RAM below 4 GiB",
                loaded.kernel_end
            ),
        });
    }
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline).map_err(|err| {
        Error::Cmdline {
            cmdline: config.cmdline.clone(),
            reason: err.to_string(),
        }
    })?;
    let cmdline_size = cmdline
        .as_cstring()
        .map(|c| c.as_bytes_with_nul().len())
        .unwrap_or(1);
    let initrd_limit = match loaded.setup_header {
        Some(hdr) if hdr.initrd_addr_max != 0 => {
            memory.low_end().min(u64::from(hdr.initrd_addr_max) + 1)
        }
        _ => memory.low_end(),
    };
    let initrd = match &config.initrd {
        Some(path) => Some(load_initrd(memory, path, loaded.kernel_end, initrd_limit)?),
        None => None,
    };
    match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => {
            write_pvh_start_info(memory, initrd)?;
            tracing::info!(entry = entry.0, "booting ELF kernel through PVH");
            Ok(EntryMode::Pvh {
                entry: entry.0,
                start_info: PVH_INFO_START,
            })
        }
        _ => {
            write_zero_page(memory, &loaded, cmdline_size, initrd)?;
            // A bzImage's 64-bit entry is 0x200 past its protected-mode code.
            let entry = match loaded.setup_header {
                Some(_) => loaded.kernel_load.0 + 0x200,
                None => loaded.kernel_load.0,
            };
            tracing::info!(entry, "booting kernel at its 64-bit entry");
            Ok(EntryMode::Long {
                entry,
                boot_params: ZERO_PAGE_START,
            })
        }
    }
}

fn load_initrd(memory: &GuestMemory, path: &Path, kernel_end: u64, limit: u64) -> Result<Initrd> {
    let read_err = |source| Error::InitrdRead {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let too_large = || Error::InitrdTooLarge {
        path: path.to_owned(),
        size,
        kernel_end,
        limit,
    };
    let addr = initrd_address(size, kernel_end, limit).ok_or_else(too_large)?;
    let len = usize::try_from(size).map_err(|_| too_large())?;
    memory
        .mmap()
        .read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|err| read_err(std::io::Error::other(err.to_string())))?;
    Ok(Initrd { addr, size })
}

fn boot_params_err(err: impl std::fmt::Display) -> Error {
    Error::BootParams(err.to_string())
}

fn write_pvh_start_info(memory: &GuestMemory, initrd: Option<Initrd>) -> Result<()> {
    let memmap: Vec<hvm_memmap_table_entry> = e820_entries(memory.size())
        .into_iter()
        .take(PVH_MEMMAP_MAX)
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind.raw(),
            reserved: 0,
        })
        .collect();
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: u32::try_from(memmap.len()).expect("bounded by PVH_MEMMAP_MAX"),
        ..Default::default()
    };
    let modules: Vec<hvm_modlist_entry> = initrd
        .map(|i| hvm_modlist_entry {
            paddr: i.addr,
            size: i.size,
            ..Default::default()
        })
        .into_iter()
        .collect();
    if !modules.is_empty() {
        start_info.nr_modules = 1;
        start_info.modlist_paddr = PVH_MODLIST_START;
    }
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&params, memory.mmap()).map_err(boot_params_err)
}

fn write_zero_page(
    memory: &GuestMemory,
    loaded: &KernelLoaderResult,
    cmdline_size: usize,
    initrd: Option<Initrd>,
) -> Result<()> {
    let mut params = boot_params::default();
    if let Some(hdr) = loaded.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = u32::try_from(CMDLINE_START).expect("command line sits below 4 GiB");
    params.hdr.cmdline_size = u32::try_from(cmdline_size).expect("bounded by CMDLINE_MAX_SIZE");
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = u32::try_from(initrd.addr).expect("initrd placed below 4 GiB");
        params.hdr.ramdisk_size = u32::try_from(initrd.size).map_err(boot_params_err)?;
    }
    let entries = e820_entries(memory.size());
    for (slot, entry) in params
        .e820_table
        .iter_mut()
        .zip(entries.iter().take(E820_MAX_ZEROPAGE))
    {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind.raw(),
        };
    }
    params.e820_entries = u8::try_from(entries.len().min(E820_MAX_ZEROPAGE)).expect("at most 128");
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        memory.mmap(),
    )
    .map_err(boot_params_err)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn temp_file(bytes: &[u8]) -> tempfile_guard::TempFile {
        tempfile_guard::TempFile::new(bytes)
    }

    /// A temporary file removed on drop, even when the test fails.
    mod tempfile_guard {
        use std::path::PathBuf;

        pub struct TempFile(pub PathBuf);

        impl TempFile {
            pub fn new(bytes: &[u8]) -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "hull-vmm-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&path, bytes).unwrap();
                Self(path)
            }
        }

        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn cmdline_longer_than_the_kernel_accepts_is_rejected() {
        let long = "a".repeat(CMDLINE_MAX_SIZE);
        let err = build_cmdline(&long).unwrap_err();
        assert!(matches!(err, Error::Cmdline { .. }), "{err}");
        assert_eq!(
            build_cmdline(DEFAULT_CMDLINE)
                .unwrap()
                .as_cstring()
                .unwrap()
                .to_str()
                .unwrap(),
            DEFAULT_CMDLINE
        );
    }

    #[test]
    fn initrd_goes_page_aligned_at_the_top_below_the_limit() {
        assert_eq!(
            initrd_address(0x1800, 0x20_0000, 0x100_0000),
            Some(0xff_e000)
        );
        assert_eq!(
            initrd_address(0x100_0000, 0x20_0000, 0x100_0000),
            None,
            "would overlap the kernel"
        );
        assert_eq!(initrd_address(u64::MAX, 0, 0x100_0000), None);
    }

    #[test]
    fn missing_kernel_is_an_error_naming_the_path() {
        let memory = GuestMemory::new(16).unwrap();
        let config = BootConfig {
            kernel: "/nonexistent/vmlinux".into(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.into(),
        };
        let err = load(&memory, &config).unwrap_err();
        assert!(matches!(err, Error::KernelRead { .. }));
        assert!(err.to_string().contains("/nonexistent/vmlinux"));
    }

    #[test]
    fn garbage_kernel_is_rejected_as_malformed() {
        let memory = GuestMemory::new(16).unwrap();
        for bytes in [vec![0u8; 8192], b"\x7fELF\x01\x02".to_vec(), b"MZ".to_vec()] {
            let file = temp_file(&bytes);
            let config = BootConfig {
                kernel: file.0.clone(),
                initrd: None,
                cmdline: String::new(),
            };
            let err = load(&memory, &config).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::KernelMalformed { .. } | Error::KernelRead { .. }
                ),
                "{bytes:x?}: {err}"
            );
            assert!(err.to_string().contains(&file.0.display().to_string()));
        }
    }

    /// A minimal 64-bit ELF with one PT_LOAD segment of `code` at 1 MiB (entry at its start)
    /// and, with `pvh_entry`, a PT_NOTE holding the Xen PVH entry note.
    fn tiny_elf(code: &[u8], pvh_entry: Option<u32>) -> Vec<u8> {
        fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
            buf[at..at + bytes.len()].copy_from_slice(bytes);
        }
        let phnum: u16 = if pvh_entry.is_some() { 2 } else { 1 };
        let data_start = 0x40 + 0x38 * usize::from(phnum);
        let mut elf = vec![0u8; data_start];
        put(&mut elf, 0, b"\x7fELF\x02\x01\x01"); // 64-bit, little-endian, version 1
        put(&mut elf, 16, &2u16.to_le_bytes()); // ET_EXEC
        put(&mut elf, 18, &0x3eu16.to_le_bytes()); // x86-64
        put(&mut elf, 20, &1u32.to_le_bytes());
        put(&mut elf, 24, &HIMEM_START.to_le_bytes()); // e_entry
        put(&mut elf, 32, &0x40u64.to_le_bytes()); // e_phoff
        put(&mut elf, 52, &0x40u16.to_le_bytes()); // e_ehsize
        put(&mut elf, 54, &0x38u16.to_le_bytes()); // e_phentsize
        put(&mut elf, 56, &phnum.to_le_bytes());
        let segment =
            |elf: &mut Vec<u8>, ph: usize, kind: u32, offset: usize, addr: u64, len: usize| {
                put(elf, ph, &kind.to_le_bytes());
                put(elf, ph + 8, &(offset as u64).to_le_bytes());
                put(elf, ph + 16, &addr.to_le_bytes());
                put(elf, ph + 24, &addr.to_le_bytes());
                put(elf, ph + 32, &(len as u64).to_le_bytes());
                put(elf, ph + 40, &(len as u64).to_le_bytes());
            };
        segment(&mut elf, 0x40, 1, data_start, HIMEM_START, code.len());
        elf.extend_from_slice(code);
        if let Some(entry) = pvh_entry {
            let note_start = elf.len();
            elf.extend_from_slice(&4u32.to_le_bytes()); // namesz
            elf.extend_from_slice(&4u32.to_le_bytes()); // descsz
            elf.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
            elf.extend_from_slice(b"Xen\0");
            elf.extend_from_slice(&entry.to_le_bytes());
            let len = elf.len() - note_start;
            segment(&mut elf, 0x78, 4, note_start, 0, len);
        }
        elf
    }

    #[test]
    fn elf_with_pvh_note_boots_through_pvh_with_start_info_memory_map_and_initrd() {
        let memory = GuestMemory::new(32).unwrap();
        let kernel = temp_file(&tiny_elf(&[0xf4], Some(0x10_0000)));
        let initrd = temp_file(&[0x77; 300]);
        let config = BootConfig {
            kernel: kernel.0.clone(),
            initrd: Some(initrd.0.clone()),
            cmdline: DEFAULT_CMDLINE.into(),
        };
        let entry = load(&memory, &config).unwrap();
        assert_eq!(
            entry,
            EntryMode::Pvh {
                entry: 0x10_0000,
                start_info: PVH_INFO_START
            }
        );
        let mem = memory.mmap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(
            (info.memmap_paddr, info.memmap_entries),
            (PVH_MEMMAP_START, 2)
        );
        let high: hvm_memmap_table_entry =
            mem.read_obj(GuestAddress(PVH_MEMMAP_START + 24)).unwrap();
        assert_eq!(
            (high.addr, high.size, high.type_),
            (HIMEM_START, (32 << 20) - HIMEM_START, 1)
        );
        assert_eq!(
            (info.nr_modules, info.modlist_paddr),
            (1, PVH_MODLIST_START)
        );
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!(module.size, 300);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(module.paddr + 299))
                .unwrap(),
            0x77
        );
    }

    #[test]
    fn elf_without_pvh_note_boots_at_its_64bit_entry_with_a_zero_page() {
        let memory = GuestMemory::new(32).unwrap();
        let kernel = temp_file(&tiny_elf(&[0xf4], None));
        let mut initrd_bytes = vec![0x5a; 5000];
        initrd_bytes.flush().unwrap();
        let initrd = temp_file(&initrd_bytes);
        let config = BootConfig {
            kernel: kernel.0.clone(),
            initrd: Some(initrd.0.clone()),
            cmdline: "console=ttyS0".into(),
        };
        let entry = load(&memory, &config).unwrap();
        assert_eq!(
            entry,
            EntryMode::Long {
                entry: HIMEM_START,
                boot_params: ZERO_PAGE_START
            }
        );
        let mem = memory.mmap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(HIMEM_START)).unwrap(), 0xf4);
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!(u64::from(hdr.cmd_line_ptr), CMDLINE_START);
        let mut cmdline = [0u8; 14];
        mem.read_slice(&mut cmdline, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&cmdline, b"console=ttyS0\0");
        let (addr, size) = ({ hdr.ramdisk_image }, { hdr.ramdisk_size });
        assert_eq!(size, 5000);
        assert_eq!(u64::from(addr) % PAGE_SIZE, 0);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(u64::from(addr) + 4999))
                .unwrap(),
            0x5a
        );
        assert_eq!({ params.e820_entries }, 2);
        let top = params.e820_table[1];
        assert_eq!(
            ({ top.addr }, { top.size }),
            (HIMEM_START, 32 * crate::memory::MIB - HIMEM_START)
        );
    }

    #[test]
    fn initrd_too_large_for_guest_memory_is_an_error_naming_it() {
        let memory = GuestMemory::new(16).unwrap();
        let kernel = temp_file(&tiny_elf(&[0xf4], None));
        let initrd = temp_file(&vec![0u8; 17 << 20]);
        let config = BootConfig {
            kernel: kernel.0.clone(),
            initrd: Some(initrd.0.clone()),
            cmdline: String::new(),
        };
        let err = load(&memory, &config).unwrap_err();
        assert!(matches!(err, Error::InitrdTooLarge { .. }), "{err}");
    }
}
