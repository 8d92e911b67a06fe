//! Helpers shared by the integration tests: the KVM prerequisite and a captured serial
//! console.

#![allow(dead_code)]

use std::io::Write;
use std::sync::{Arc, Mutex};

pub mod asm;
pub mod backend;
pub mod driver;
pub mod vsock;

/// /dev/kvm opens read-write (small guests run even without hardware virtualization).
#[allow(unused_imports)]
pub use hull_tests::prereq::kvm;

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

#[allow(unused_imports)] // Not every test binary boots a tiny kernel.
pub use hull_tests::tiny_guest::tiny_kernel;
