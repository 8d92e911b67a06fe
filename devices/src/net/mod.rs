//! The virtio-net device on a tap, split the way cloud-hypervisor's `vhost_user_net` and
//! Firecracker's net device are:
//!
//! - [`tap`], opening and configuring the tap (queues, vnet header, offloads).
//! - [`device`], features, config space, counters.
//! - [`queue_pair`], moving frames between a queue pair and a tap queue.
//! - [`backend`], the vhost-user backend around the device, one worker thread per queue pair.
//! - [`frontend_relay`], putting QEMU's vhost-user-net messages in the order the daemon takes.

pub mod backend;
pub mod device;
pub mod frontend_relay;
pub mod queue_pair;
pub mod tap;

#[cfg(test)]
pub(crate) mod test_utils;

pub use backend::NetBackend;
pub use device::{Mac, NetDevice};
pub use tap::Tap;
