//! The `fuse_request` target: FUSE requests a guest places in a descriptor chain, decoded by
//! upstream virtiofsd's server exactly as hull-fs's queue workers hand them over, through
//! hull-fs's [`NameGuard`] (the name checks and request counting every request passes).
//! The file system behind the guard answers upstream's defaults (ENOSYS), so what is
//! exercised is decoding, the guard and the error replies, not a disk (the escape tests
//! cover the real file system).

use std::sync::{Arc, OnceLock};

use hull_fs::metrics::SharedCounters;
use hull_fs::name_guard::NameGuard;
use vhost_user_backend_fs::bitmap::BitmapMmapRegion;
use virtio_queue_fs::desc::split::Descriptor as SplitDescriptor;
use virtio_queue_fs::desc::RawDescriptor;
use virtio_queue_fs::mock::MockSplitQueue;
use virtiofsd::descriptor_utils::{Reader, Writer};
use virtiofsd::filesystem::{DirEntry, DirectoryIterator, FileSystem};
use virtiofsd::server::Server;
use vm_memory_fs::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::input::Input;

/// Guest memory: the queue at 0, requests at [`REQUEST_ADDR`], replies at [`REPLY_ADDR`].
const MEMORY_SIZE: usize = 0x4_0000;
const REQUEST_ADDR: u64 = 0x1_0000;
const REPLY_ADDR: u64 = 0x2_0000;
/// Largest reply buffer offered.
const MAX_REPLY: u32 = 0x1_0000;
/// Most requests per input (one session).
const MAX_REQUESTS: usize = 8;
const VRING_DESC_F_WRITE: u16 = 2;

/// READ, READDIR and READDIRPLUS: upstream virtiofsd 1.14 `unwrap()`s the split of their
/// reply buffer at 16 bytes, so a chain offering fewer panics the queue's thread (pinned by
/// hull-fs's `known_upstream_bug_tiny_reply_buffer_panics_read`; the damage stays with that
/// guest's own share). Not hull's code: the target gives them 16 bytes or more, so that the
/// fuzzer looks for other crashes.
const TINY_REPLY_PANICS: [u32; 3] = [15, 28, 44];

/// A file system that implements nothing: every request gets upstream's default answer.
struct NullFs;

struct NoEntries;

impl DirectoryIterator for NoEntries {
    fn next(&mut self) -> Option<DirEntry<'_>> {
        None
    }
}

impl FileSystem for NullFs {
    type Inode = u64;
    type Handle = u64;
    type DirIter = NoEntries;
}

fn counters() -> Arc<SharedCounters> {
    static COUNTERS: OnceLock<Arc<SharedCounters>> = OnceLock::new();
    Arc::clone(
        COUNTERS
            .get_or_init(|| Arc::new(SharedCounters::new().expect("mapping hull-fs's counters"))),
    )
}

/// `fuse_request`: the input is a session of requests, each a length, a reply buffer size,
/// how many descriptors the request is cut into, and the request's bytes (a FUSE in-header
/// and body, with whatever length the header claims).
pub fn fuse_request(data: &[u8]) {
    let mut input = Input::new(data);
    let mem = GuestMemoryMmap::<BitmapMmapRegion>::from_ranges(&[(GuestAddress(0), MEMORY_SIZE)])
        .expect("guest memory");
    let server = Server::new(NameGuard::new(NullFs, counters()));
    for _ in 0..MAX_REQUESTS {
        if input.is_empty() {
            break;
        }
        let len = usize::from(input.u16() % 0x2000);
        let mut reply_len = u32::from(input.u16()) % (MAX_REPLY + 1);
        let pieces = u32::from(input.u8() % 4) + 1;
        let request = input.bytes(len);
        let opcode = request
            .get(4..8)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0);
        if TINY_REPLY_PANICS.contains(&opcode) {
            reply_len = reply_len.max(16);
        }
        let _ = mem.write_slice(request, GuestAddress(REQUEST_ADDR));
        let _ = mem.write_slice(&vec![0; reply_len as usize], GuestAddress(REPLY_ADDR));

        let request_len = u32::try_from(request.len()).unwrap_or(0);
        let mut descs = Vec::new();
        // The request cut into up to `pieces` readable descriptors, then the reply buffer.
        let step = request_len.div_ceil(pieces).max(1);
        let mut at = 0;
        while at < request_len {
            let n = step.min(request_len - at);
            descs.push(RawDescriptor::from(SplitDescriptor::new(
                REQUEST_ADDR + u64::from(at),
                n,
                0,
                0,
            )));
            at += n;
        }
        if descs.is_empty() && reply_len == 0 {
            // A chain has at least one descriptor: an empty request is a zero-length one.
            descs.push(RawDescriptor::from(SplitDescriptor::new(
                REQUEST_ADDR,
                0,
                0,
                0,
            )));
        }
        if reply_len > 0 {
            descs.push(RawDescriptor::from(SplitDescriptor::new(
                REPLY_ADDR,
                reply_len,
                VRING_DESC_F_WRITE,
                0,
            )));
        }
        let queue = MockSplitQueue::new(&mem, 16);
        let Ok(chain) = queue.build_desc_chain(&descs) else {
            continue;
        };
        let (Ok(reader), Ok(writer)) = (Reader::new(&mem, chain.clone()), Writer::new(&mem, chain))
        else {
            continue;
        };
        if let Ok(written) = server.handle_message(reader, writer, None::<&mut ()>) {
            assert!(
                written <= reply_len as usize,
                "the server wrote {written} bytes into a {reply_len}-byte buffer"
            );
        }
    }
}
