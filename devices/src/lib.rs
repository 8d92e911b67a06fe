//! Standalone vhost-user device backends (`hull-blk`, `hull-net`, `hull-vsock`) and the
//! io_uring vring worker they share.
//!
//! Not built yet: see the devices issue.
