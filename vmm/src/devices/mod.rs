//! Legacy devices on the port I/O bus: the serial console and the i8042 reset line.
//!
//! Virtio devices are not here yet (see the crate documentation).

pub mod i8042;
pub mod serial;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::bus::BusDevice;
    use crate::lifecycle::RunState;

    proptest! {
        /// The guest picks offsets and access sizes; no choice of them panics a device.
        #[test]
        fn legacy_devices_take_any_access_without_panicking(
            accesses in proptest::collection::vec((any::<u64>(), proptest::collection::vec(any::<u8>(), 0..9), any::<bool>()), 0..64),
        ) {
            let mut serial = serial::Serial::new(Box::new(std::io::sink())).unwrap();
            let mut i8042 = i8042::I8042::new(Arc::new(RunState::new()));
            for (offset, mut data, is_write) in accesses {
                let devices: [&mut dyn BusDevice; 2] = [&mut serial, &mut i8042];
                for device in devices {
                    if is_write {
                        device.write(offset, &data);
                    } else {
                        device.read(offset, &mut data);
                    }
                }
            }
        }
    }
}
