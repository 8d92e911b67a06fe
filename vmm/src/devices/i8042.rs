//! The i8042 keyboard controller, reduced to what a guest kernel uses of it: the CPU reset
//! command, which stops the VM (Linux `reboot=k`). Ports 0x60–0x64.

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use crate::bus::BusDevice;
use crate::lifecycle::{RunState, StopReason};

/// First port of the controller (data); the command/status port is at +4.
pub const I8042_PORT: u64 = 0x60;
/// Ports covered: 0x60 to 0x64.
pub const I8042_PORT_LEN: u64 = 5;

/// Turns the controller's reset line into a VM stop.
#[derive(Debug)]
pub struct ResetLine(Arc<RunState>);

impl Trigger for ResetLine {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request_stop(StopReason::I8042Reset);
        Ok(())
    }
}

/// The i8042 device on the port bus.
pub struct I8042 {
    inner: I8042Device<ResetLine>,
}

impl I8042 {
    /// A controller whose reset command stops the VM of `state`.
    pub fn new(state: Arc<RunState>) -> Self {
        Self {
            inner: I8042Device::new(ResetLine(state)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = u8::try_from(offset).map_or(0xff, |offset| self.inner.read(offset));
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Only single-byte writes are meaningful to an 8-bit controller.
        if let (Ok(offset), [value]) = (u8::try_from(offset), data) {
            let Ok(()) = self.inner.write(offset, *value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_stops_the_vm() {
        let state = Arc::new(RunState::new());
        let mut i8042 = I8042::new(Arc::clone(&state));
        i8042.write(4, &[0x01]);
        i8042.write(0, &[0xfe]);
        assert!(
            !state.stop_requested(),
            "only 0xfe on the command port resets"
        );
        i8042.write(4, &[0xfe]);
        assert_eq!(state.wait(), StopReason::I8042Reset);
    }
}
