//! Helpers shared by the integration tests: the KVM prerequisite and a captured serial
//! console.

#![allow(dead_code)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use hull_tests::prereq::Missing;

pub mod asm;
pub mod backend;
pub mod driver;
pub mod vsock;

/// /dev/kvm opens read-write (small guests run even without hardware virtualization).
pub fn kvm() -> Result<(), Missing> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|err| {
            Missing::hardware(
                format!("usable /dev/kvm ({err})"),
                "load the kvm module and grant access to /dev/kvm",
            )
        })
}

/// What the guest wrote to its serial port.
#[derive(Clone, Default)]
pub struct Console(Arc<Mutex<Vec<u8>>>);

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Console {
    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

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
