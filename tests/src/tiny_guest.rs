//! The smallest guests the built-in VMM runs without hardware virtualization: x86 machine
//! code in an ELF "kernel" entered in 64-bit mode, for the VMM's own tests and the shim's
//! (the VMM in the shim's process).

/// An ELF "kernel" without a PVH note: `code` loaded at 1 MiB and entered in 64-bit mode.
pub fn tiny_kernel(code: &[u8]) -> Vec<u8> {
    const LOAD: u64 = 0x10_0000;
    let mut elf = vec![0u8; 0x78];
    elf[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
    elf[16..18].copy_from_slice(&2u16.to_le_bytes());
    elf[18..20].copy_from_slice(&0x3eu16.to_le_bytes());
    elf[20..24].copy_from_slice(&1u32.to_le_bytes());
    elf[24..32].copy_from_slice(&LOAD.to_le_bytes());
    elf[32..40].copy_from_slice(&0x40u64.to_le_bytes());
    elf[52..54].copy_from_slice(&0x40u16.to_le_bytes());
    elf[54..56].copy_from_slice(&0x38u16.to_le_bytes());
    elf[56..58].copy_from_slice(&1u16.to_le_bytes());
    elf[0x40..0x44].copy_from_slice(&1u32.to_le_bytes());
    elf[0x48..0x50].copy_from_slice(&0x78u64.to_le_bytes());
    elf[0x50..0x58].copy_from_slice(&LOAD.to_le_bytes());
    elf[0x58..0x60].copy_from_slice(&LOAD.to_le_bytes());
    elf[0x60..0x68].copy_from_slice(&(code.len() as u64).to_le_bytes());
    elf[0x68..0x70].copy_from_slice(&(code.len() as u64).to_le_bytes());
    elf.extend_from_slice(code);
    elf
}

/// Writes `text` to the serial port COM1 (0x3f8), a byte at a time: `mov dx, 0x3f8`, then
/// `mov al, BYTE; out dx, al` per byte.
pub fn print(text: &[u8]) -> Vec<u8> {
    let mut code = vec![0x66, 0xba, 0xf8, 0x03];
    for byte in text {
        code.extend_from_slice(&[0xb0, *byte, 0xee]);
    }
    code
}

/// Halts for good: `cli; hlt; jmp` back to the `hlt` (the vCPU sleeps in KVM until its
/// VM is stopped).
pub const HALT: [u8; 4] = [0xfa, 0xf4, 0xeb, 0xfd];

/// Resets the machine through the i8042 (`mov al, 0xfe; out 0x64, al`), then `jmp $`: the
/// VM stops by itself.
pub const RESET: [u8; 6] = [0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe];
