//! The 16550A serial port at COM1 (0x3f8, IRQ 4), vm-superio's model, writing what the guest
//! transmits to stdout, a file, or any writer the embedder passes.
//!
//! Input to the guest is not wired yet; the interrupt line is an eventfd that the VM registers
//! as an irqfd when it has an in-kernel interrupt controller.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial as Uart, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::{Error, Result};

/// COM1's first port.
pub const COM1_PORT: u64 = 0x3f8;
/// Ports covered: 8 registers.
pub const COM1_PORT_LEN: u64 = 8;
/// COM1's ISA interrupt line.
pub const COM1_IRQ: u32 = 4;

/// The interrupt line of the serial port.
#[derive(Debug)]
pub struct IrqLine(EventFd);

impl Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Where the guest's serial output goes.
pub type SerialOutput = Box<dyn Write + Send>;

/// Serial output appended to the file at `path` (created if missing).
pub fn file_output(path: &Path) -> Result<SerialOutput> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| Error::SerialFile {
            path: path.to_owned(),
            source,
        })?;
    Ok(Box::new(file))
}

/// COM1 on the port bus.
pub struct Serial {
    uart: Uart<IrqLine, NoEvents, SerialOutput>,
}

impl Serial {
    /// A serial port writing to `out`.
    pub fn new(out: SerialOutput) -> Result<Self> {
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
        Ok(Self {
            uart: Uart::new(IrqLine(irq), out),
        })
    }

    /// The eventfd signalled when the port raises its interrupt.
    pub fn irq_eventfd(&self) -> &EventFd {
        &self.uart.interrupt_evt().0
    }
}

impl BusDevice for Serial {
    /// Each byte is one register access: KVM hands a `rep insb` over as one exit with
    /// several bytes for the same port.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match u8::try_from(offset) {
            Ok(offset) => data
                .iter_mut()
                .for_each(|byte| *byte = self.uart.read(offset)),
            Err(_) => data.fill(0xff),
        }
    }

    /// Each byte is one register access (`rep outsb` arrives as one exit).
    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(offset) = u8::try_from(offset) else {
            return;
        };
        for value in data {
            if let Err(err) = self.uart.write(offset, *value) {
                tracing::warn!(?err, "serial output failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_written_to_the_data_register_reach_the_output() {
        let sink = Sink::default();
        let mut serial = Serial::new(Box::new(sink.clone())).unwrap();
        for byte in b"hi\n" {
            serial.write(0, &[*byte]);
        }
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"hi\n");
    }

    #[test]
    fn output_to_a_file_appends_what_the_guest_sends() {
        let path = std::env::temp_dir().join(format!("hull-vmm-serial-{}", std::process::id()));
        struct Remove<'a>(&'a Path);
        impl Drop for Remove<'_> {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(self.0);
            }
        }
        let _guard = Remove(&path);
        std::fs::write(&path, b"earlier\n").unwrap();
        let mut serial = Serial::new(file_output(&path).unwrap()).unwrap();
        serial.write(0, b"x");
        drop(serial);
        assert_eq!(std::fs::read(&path).unwrap(), b"earlier\nx");
    }

    #[test]
    fn unopenable_output_file_is_an_error_naming_it() {
        let err = file_output(Path::new("/nonexistent/dir/console.log"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/dir/console.log"));
    }

    #[test]
    fn a_string_io_exit_writes_every_byte_in_order() {
        let sink = Sink::default();
        let mut serial = Serial::new(Box::new(sink.clone())).unwrap();
        serial.write(0, b"hello");
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"hello");
    }

    #[test]
    fn line_status_reports_the_transmitter_empty() {
        let mut serial = Serial::new(Box::new(Sink::default())).unwrap();
        let mut lsr = [0u8];
        serial.read(5, &mut lsr);
        assert_eq!(
            lsr[0] & 0x60,
            0x60,
            "THRE and TEMT set: guests poll these before sending"
        );
    }
}
