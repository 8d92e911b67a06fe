//! The small guest that `vmm-start` and `vmm-exits` boot in every VMM: a few dozen bytes of
//! 32-bit x86 code in an ELF with a Xen PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY`), so that
//! hull-vmm (linux-loader's PVH path) and QEMU microvm (`-kernel` takes PVH ELFs) load and
//! enter it the same way: in 32-bit protected mode, paging off, at [`LOAD_ADDR`].
//!
//! The program is written here as machine code bytes, each instruction commented, rather than
//! assembled: the benchmark then needs no assembler on the machine (none is installed here),
//! and the code is short enough to read byte by byte. What it does:
//! 1. `cli`, then writes [`FIRST_OUTPUT`] to COM1 (0x3f8): the host times exec → this byte.
//! 2. [`Program::Exits`]: `n` port writes (`out` to [`EXIT_PORT`], a port no device of either
//!    VMM claims) or `n` MMIO writes (to [`EXIT_MMIO_ADDR`], an address no device or RAM of
//!    either VMM covers), then [`LOOP_DONE`] to COM1: the host times the loop between the
//!    two bytes.
//! 3. "done": the i8042 CPU reset (0xfe to port 0x64), which hull-vmm turns into a stop and
//!    QEMU (`-no-reboot`, with an i8042) into an exit; or, for [`Program::Park`], `hlt` with
//!    interrupts off, so the guest stays resident until the host stops the VMM.

/// Where the program is loaded and entered (1 MiB, where both VMMs put a kernel).
pub const LOAD_ADDR: u32 = 0x10_0000;
/// The serial port the program writes its markers to.
pub const COM1: u16 = 0x3f8;
/// The byte written first: the guest's first output.
pub const FIRST_OUTPUT: u8 = b'A';
/// The byte written after the exit loop.
pub const LOOP_DONE: u8 = b'B';
/// The port of the PIO exit loop: claimed by no device of hull-vmm or of QEMU microvm
/// (not 0x70/0x80, which KVM or QEMU may coalesce, nor fw_cfg's 0x510).
pub const EXIT_PORT: u16 = 0x5e0;
/// The address of the MMIO exit loop: above the guest's RAM (16 MiB), below both VMMs'
/// device windows (hull-vmm's virtio-mmio at 0xd000_0000, QEMU microvm's at 0xfeb0_0000).
pub const EXIT_MMIO_ADDR: u32 = 0xc800_0000;

/// What kind of exit the loop makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// `out dx, al` to [`EXIT_PORT`].
    Pio,
    /// `mov [EXIT_MMIO_ADDR], al`.
    Mmio,
}

/// A guest program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// First output, then the reset: start-up alone.
    Start,
    /// First output, `n` exits of `kind`, [`LOOP_DONE`], then the reset.
    Exits {
        /// The kind of exit.
        kind: ExitKind,
        /// How many.
        n: u32,
    },
    /// First output, then halted with interrupts off until the host stops the VMM.
    Park,
}

/// `mov edx, COM1; mov al, byte; out dx, al`.
fn serial_byte(code: &mut Vec<u8>, byte: u8) {
    let [lo, hi] = COM1.to_le_bytes();
    code.extend_from_slice(&[0xba, lo, hi, 0, 0]); // mov edx, imm32
    code.extend_from_slice(&[0xb0, byte]); // mov al, imm8
    code.push(0xee); // out dx, al
}

/// `cli; hlt; jmp hlt`: stays here, whatever wakes it.
const PARK: [u8; 4] = [0xfa, 0xf4, 0xeb, 0xfd];

impl Program {
    /// The machine code, 32-bit protected mode, position-independent.
    pub fn code(self) -> Vec<u8> {
        let mut code = vec![0xfa]; // cli
        serial_byte(&mut code, FIRST_OUTPUT);
        match self {
            Program::Start => {}
            Program::Park => {
                code.extend_from_slice(&PARK);
                return code;
            }
            Program::Exits { kind, n } => {
                code.push(0xb9); // mov ecx, imm32
                code.extend_from_slice(&n.to_le_bytes());
                let body: Vec<u8> = match kind {
                    ExitKind::Pio => {
                        let [lo, hi] = EXIT_PORT.to_le_bytes();
                        code.extend_from_slice(&[0x66, 0xba, lo, hi]); // mov dx, imm16
                        vec![0xee] // out dx, al
                    }
                    ExitKind::Mmio => {
                        let mut body = vec![0xa2]; // mov [moffs32], al
                        body.extend_from_slice(&EXIT_MMIO_ADDR.to_le_bytes());
                        body
                    }
                };
                // The body and its `loop` (2 bytes): a few bytes, so the i8 casts hold.
                let span = body.len() as u8 + 2;
                code.extend_from_slice(&[0xe3, span]); // jecxz past the loop (n = 0)
                code.extend_from_slice(&body);
                code.extend_from_slice(&[0xe2, span.wrapping_neg()]); // loop back to the body
                serial_byte(&mut code, LOOP_DONE);
            }
        }
        code.extend_from_slice(&[0xb0, 0xfe]); // mov al, 0xfe (pulse the CPU reset line)
        code.extend_from_slice(&[0xe6, 0x64]); // out 0x64, al (i8042 command port)
        code.extend_from_slice(&PARK); // if the reset did not stop the VM: stay here
        code
    }

    /// The program as a PVH ELF image (see [`pvh_elf`]).
    pub fn elf(self) -> Vec<u8> {
        pvh_elf(&self.code())
    }
}

/// ELF64 file header size.
const EHDR: usize = 0x40;
/// ELF64 program header size.
const PHDR: usize = 0x38;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the 32-bit physical entry of a PVH kernel.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// A minimal x86-64 ELF executable: one PT_LOAD segment holding `code` at [`LOAD_ADDR`]
/// (also `e_entry`), and a PT_NOTE with the Xen PVH entry note pointing at it.
pub fn pvh_elf(code: &[u8]) -> Vec<u8> {
    fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
        buf[at..at + bytes.len()].copy_from_slice(bytes);
    }
    let headers = EHDR + 2 * PHDR;
    let mut elf = vec![0u8; headers];
    put(&mut elf, 0, b"\x7fELF\x02\x01\x01"); // ELFCLASS64, little-endian, version 1
    put(&mut elf, 16, &2u16.to_le_bytes()); // e_type: ET_EXEC
    put(&mut elf, 18, &0x3eu16.to_le_bytes()); // e_machine: x86-64
    put(&mut elf, 20, &1u32.to_le_bytes()); // e_version
    put(&mut elf, 24, &u64::from(LOAD_ADDR).to_le_bytes()); // e_entry
    put(&mut elf, 32, &(EHDR as u64).to_le_bytes()); // e_phoff
    put(&mut elf, 52, &(EHDR as u16).to_le_bytes()); // e_ehsize
    put(&mut elf, 54, &(PHDR as u16).to_le_bytes()); // e_phentsize
    put(&mut elf, 56, &2u16.to_le_bytes()); // e_phnum
    let segment = |elf: &mut Vec<u8>, at: usize, kind: u32, offset: usize, addr: u64, len| {
        put(elf, at, &kind.to_le_bytes()); // p_type
        put(elf, at + 4, &5u32.to_le_bytes()); // p_flags: R+X
        put(elf, at + 8, &(offset as u64).to_le_bytes()); // p_offset
        put(elf, at + 16, &addr.to_le_bytes()); // p_vaddr
        put(elf, at + 24, &addr.to_le_bytes()); // p_paddr
        put(elf, at + 32, &(len as u64).to_le_bytes()); // p_filesz
        put(elf, at + 40, &(len as u64).to_le_bytes()); // p_memsz
        put(elf, at + 48, &4u64.to_le_bytes()); // p_align
    };
    segment(&mut elf, EHDR, 1, headers, u64::from(LOAD_ADDR), code.len()); // PT_LOAD
    elf.extend_from_slice(code);
    while !elf.len().is_multiple_of(4) {
        elf.push(0); // notes are 4-byte aligned
    }
    let note = elf.len();
    elf.extend_from_slice(&4u32.to_le_bytes()); // n_namesz ("Xen\0")
    elf.extend_from_slice(&4u32.to_le_bytes()); // n_descsz
    elf.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes()); // n_type
    elf.extend_from_slice(b"Xen\0");
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes());
    let len = elf.len() - note;
    segment(&mut elf, EHDR + PHDR, 4, note, 0, len); // PT_NOTE
    elf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }
    fn u64_at(bytes: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn elf_loads_the_code_at_1mib_and_carries_the_pvh_entry_note() {
        let code = Program::Start.code();
        let elf = pvh_elf(&code);
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(u64_at(&elf, 24), 0x10_0000, "e_entry");
        let phoff = u64_at(&elf, 32) as usize;
        // PT_LOAD: the code at its offset, loaded at 1 MiB.
        assert_eq!(u32_at(&elf, phoff), 1);
        let offset = u64_at(&elf, phoff + 8) as usize;
        assert_eq!(u64_at(&elf, phoff + 24), 0x10_0000, "p_paddr");
        assert_eq!(&elf[offset..offset + code.len()], &code[..]);
        // PT_NOTE: "Xen", type 18, the entry.
        let note_ph = phoff + PHDR;
        assert_eq!(u32_at(&elf, note_ph), 4);
        let note = u64_at(&elf, note_ph + 8) as usize;
        assert_eq!(note % 4, 0);
        assert_eq!(u32_at(&elf, note + 8), 18);
        assert_eq!(&elf[note + 12..note + 16], b"Xen\0");
        assert_eq!(u32_at(&elf, note + 16), 0x10_0000);
        assert_eq!(u64_at(&elf, note_ph + 32) as usize, elf.len() - note);
    }

    #[test]
    fn start_writes_the_first_byte_then_resets() {
        let code = Program::Start.code();
        assert_eq!(
            code,
            [
                0xfa, 0xba, 0xf8, 0x03, 0, 0, 0xb0, b'A', 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xfa, 0xf4,
                0xeb, 0xfd
            ]
        );
    }

    #[test]
    fn park_halts_after_the_first_byte_without_a_reset() {
        let code = Program::Park.code();
        assert!(code.ends_with(&[0xee, 0xfa, 0xf4, 0xeb, 0xfd]));
        assert!(!code.windows(2).any(|w| w == [0xe6, 0x64]), "no reset");
    }

    /// The loop's `jecxz` lands right after the `loop`, and the `loop` on the body's start.
    #[test]
    fn exit_loops_jump_to_their_body_and_past_it() {
        for (kind, body) in [
            (ExitKind::Pio, vec![0xee]),
            (ExitKind::Mmio, vec![0xa2, 0, 0, 0, 0xc8]),
        ] {
            let code = Program::Exits {
                kind,
                n: 0x0102_0304,
            }
            .code();
            let mov_ecx = code.iter().position(|&b| b == 0xb9).unwrap();
            assert_eq!(u32_at(&code, mov_ecx + 1), 0x0102_0304);
            let jecxz = code.iter().position(|&b| b == 0xe3).unwrap();
            let start = jecxz + 2;
            assert_eq!(&code[start..start + body.len()], &body[..], "{kind:?}");
            let loop_at = start + body.len();
            assert_eq!(code[loop_at], 0xe2);
            let back = loop_at as isize + 2 + isize::from(code[loop_at + 1] as i8);
            assert_eq!(back as usize, start, "{kind:?}: loop targets the body");
            let past = start as isize + isize::from(code[jecxz + 1] as i8);
            assert_eq!(past as usize, loop_at + 2, "{kind:?}: jecxz skips the loop");
            // Then "B" to COM1 and the reset.
            assert_eq!(
                &code[loop_at + 2..loop_at + 10],
                [0xba, 0xf8, 0x03, 0, 0, 0xb0, b'B', 0xee]
            );
            assert!(code.ends_with(&[0xb0, 0xfe, 0xe6, 0x64, 0xfa, 0xf4, 0xeb, 0xfd]));
        }
        let pio = Program::Exits {
            kind: ExitKind::Pio,
            n: 1,
        }
        .code();
        assert!(
            pio.windows(4).any(|w| w == [0x66, 0xba, 0xe0, 0x05]),
            "port"
        );
    }
}
