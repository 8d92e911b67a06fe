//! The data engines of hull-blk, moving sectors between the backing file (or block device)
//! and guest memory, as Firecracker splits them:
//!
//! - [`sync`], the backing file and blocking calls on the queue's worker thread: every request
//!   when io_uring is unavailable (or `--sync-io`), and otherwise the rare ones (discard,
//!   write-zeroes, get-id) and the rest of a short transfer.
//! - [`uring`], one io_uring per queue: the reads, writes and flushes of a queue, submitted
//!   in small groups as a pass over the queue parses them and answered one by one as they
//!   complete.

pub mod sync;
pub mod uring;

pub use sync::SyncEngine;
pub use uring::{InFlight, QueueRing, UringQueues, DEFAULT_SUBMIT_BATCH};
