//! The virtio-vsock device with a hybrid-vsock host side, split the way Firecracker splits
//! its vsock device:
//!
//! - [`packet`], the packet header, typed, and parsing a packet out of a descriptor chain.
//! - [`connection`], one connection's state machine and credit-based flow control.
//! - [`muxer`], the host side: the hybrid unix socket, host streams, rx scheduling.
//! - [`device`], moving packets between the virtqueues and the muxer.
//! - [`backend`], the vhost-user backend around the device.
//! - [`metrics`], counters.

pub mod backend;
pub mod connection;
pub mod device;
pub mod metrics;
pub mod muxer;
pub mod packet;

#[cfg(test)]
pub(crate) mod test_utils;

pub use backend::VsockBackend;
pub use device::VsockDevice;
pub use muxer::Muxer;
