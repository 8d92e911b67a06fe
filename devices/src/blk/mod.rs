//! The virtio-blk device over a file or block device, split the way Firecracker splits its
//! block device:
//!
//! - [`request`], a descriptor chain parsed and checked into a typed request.
//! - [`disk_id`], the id answered to GET_ID (`--serial`, or the file name).
//! - [`io`], the data engines: io_uring with requests in flight across kicks, and blocking
//!   calls.
//! - [`device`], features, config space, and serving a queue.
//! - [`backend`], the vhost-user backend around the device, one worker thread per queue.

pub mod backend;
pub mod device;
pub mod disk_id;
pub mod io;
pub mod request;

pub use backend::BlkBackend;
pub use device::BlkDevice;
pub use disk_id::DiskId;
pub use io::uring::RING_DEPTH;
pub use io::{SyncEngine, DEFAULT_SUBMIT_BATCH};

#[cfg(test)]
pub(crate) mod test_utils;
