//! x86 machine code for the small guests of the tests, written by hand: register and memory
//! stores, loads, short jumps and port output, in 32-bit protected mode (the PVH entry
//! state) or 64-bit mode (hull-vmm's tiny kernel).

use hull_vmm::virtio::MMIO_BASE;

/// Machine code for 32-bit protected mode (flat segments, paging off: the PVH entry
/// state) or 64-bit mode. The encodings are the same but for absolute memory operands,
/// which 64-bit mode reads as RIP-relative in the short form: there the SIB form is used.
#[derive(Default)]
pub struct Asm {
    pub code: Vec<u8>,
    pub long: bool,
}

impl Asm {
    /// The ModRM (and SIB) bytes of an absolute `[addr]` operand with register field `reg`.
    pub fn absolute(&mut self, reg: u8, addr: u32) {
        if self.long {
            self.code.extend_from_slice(&[(reg << 3) | 0x04, 0x25]);
        } else {
            self.code.push((reg << 3) | 0x05);
        }
        self.code.extend_from_slice(&addr.to_le_bytes());
    }

    /// `mov dword [addr], value`.
    pub fn store(&mut self, addr: u32, value: u32) -> &mut Self {
        self.code.push(0xc7);
        self.absolute(0, addr);
        self.code.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// `movzx eax, word [addr]`.
    pub fn load_word(&mut self, addr: u32) -> &mut Self {
        self.code.extend_from_slice(&[0x0f, 0xb7]);
        self.absolute(0, addr);
        self
    }

    /// `mov al, byte [addr]`.
    pub fn load_byte(&mut self, addr: u32) -> &mut Self {
        self.code.push(0x8a);
        self.absolute(0, addr);
        self
    }

    /// `jne target` (a short jump back).
    pub fn jne(&mut self, target: usize) {
        let back = i8::try_from(target as isize - (self.code.len() as isize + 2)).unwrap();
        self.code.extend_from_slice(&[0x75, back.to_le_bytes()[0]]);
    }

    /// `mov dword [ebx + offset], value`: a register write (ebx holds the device base).
    pub fn reg(&mut self, offset: u64, value: u32) -> &mut Self {
        self.code.extend_from_slice(&[0xc7, 0x83]);
        self.code
            .extend_from_slice(&u32::try_from(offset).unwrap().to_le_bytes());
        self.code.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// `mov dx, 0x3f8`, then `mov al, c; out dx, al` for each byte.
    pub fn print(&mut self, text: &[u8]) -> &mut Self {
        self.code
            .extend_from_slice(&hull_tests::tiny_guest::print(text));
        self
    }

    /// `mov ebx, MMIO_BASE`: the register writes of [`Asm::reg`] go to the first
    /// virtio-mmio device.
    pub fn device_base(&mut self) -> &mut Self {
        self.code.push(0xbb);
        self.code
            .extend_from_slice(&u32::try_from(MMIO_BASE).unwrap().to_le_bytes());
        self
    }

    /// 64-bit mode: maps the MMIO window at 0xd000_0000 (the tiny kernel's identity map
    /// covers only the first GiB): PDPTE[3] -> a page directory at 0xc000 whose entry 128
    /// maps 0xd000_0000 (2 MiB); then reloads CR3.
    pub fn map_mmio_window(&mut self) -> &mut Self {
        self.store(0xa000 + 3 * 8, 0xc003)
            .store(0xc000 + 128 * 8, 0xd000_0083);
        // mov rax, cr3; mov cr3, rax
        self.code
            .extend_from_slice(&[0x0f, 0x20, 0xd8, 0x0f, 0x22, 0xd8]);
        self
    }

    /// Resets through the i8042 (HLT does not end a VM with interrupt controllers), then
    /// `jmp $`.
    pub fn reset(&mut self) {
        self.code.extend_from_slice(&hull_tests::tiny_guest::RESET);
    }
}
