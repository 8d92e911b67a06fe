//! Legacy devices on the port I/O bus: the serial console and the i8042 reset line.
//!
//! Virtio devices are not here yet (see the crate documentation).

pub mod i8042;
pub mod serial;
