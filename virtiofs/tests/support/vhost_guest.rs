//! A fake guest that reaches a running hull-fs the way a VMM's guest does: over its
//! vhost-user socket (the `vhost` crate's frontend sends the memory table and the vring
//! addresses), with memfd guest memory shared with the server and FUSE requests in its
//! request queue. One request at a time: two descriptors (the request, then a writable reply
//! buffer), a kick, a wait on the call eventfd, the used element's length.
//!
//! It negotiates VERSION_1 and the vhost-user protocol features, nothing else (no
//! EVENT_IDX, no indirect descriptors), as perf/src/blk/guest.rs does for block backends.

use std::fs::File;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::Ordering;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::desc::split::Descriptor;
use virtiofsd::fuse::OutHeader;
use vm_memory::{ByteValued, Bytes, FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::fuse::{request_message, FuseSession, Reply};
use super::PROCESS_BOUND;

/// The request queue of virtio-fs (queue 0 is the high-priority one, unused here).
const REQUEST_QUEUE: usize = 1;
const QUEUE_SIZE: u16 = 16;
const DESC_TABLE: u64 = 0x0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;
const REQUEST: u64 = 0x10000;
const REPLY: u64 = 0x20000;
/// Largest request and reply, in bytes.
const MESSAGE_MAX: u32 = 0x10000;
const MEMORY_SIZE: u64 = 0x30000;

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;

/// A guest connected to hull-fs's vhost-user socket.
pub struct VhostGuest {
    // Dropped first: closing the socket ends the server's session.
    _frontend: Frontend,
    mem: GuestMemoryMmap<()>,
    _memfd: File,
    kick: EventFd,
    call: EventFd,
    next_avail: u16,
    last_used: u16,
    unique: u64,
}

impl VhostGuest {
    /// Connects to the vhost-user-fs backend at `socket` and sets up its request queue.
    pub fn connect(socket: &Path) -> Self {
        let memfd = nix::sys::memfd::memfd_create(
            c"hull-fs-test-guest",
            nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
        )
        .expect("memfd");
        let memfd = File::from(memfd);
        memfd.set_len(MEMORY_SIZE).expect("sizing the memfd");
        let offset = FileOffset::new(memfd.try_clone().expect("dup of the memfd"), 0);
        let size = usize::try_from(MEMORY_SIZE).expect("small");
        let mem =
            GuestMemoryMmap::<()>::from_ranges_with_files(&[(GuestAddress(0), size, Some(offset))])
                .expect("guest memory");

        let mut frontend = Frontend::connect(socket, 2).expect("connect to hull-fs");
        frontend.set_owner().expect("SET_OWNER");
        let offered = frontend.get_features().expect("GET_FEATURES");
        assert_ne!(
            offered & VIRTIO_F_VERSION_1,
            0,
            "no VERSION_1: {offered:#x}"
        );
        let wanted = offered & (VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES);
        frontend.set_features(wanted).expect("SET_FEATURES");
        if wanted & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            let protocol = frontend
                .get_protocol_features()
                .expect("GET_PROTOCOL_FEATURES");
            frontend
                .set_protocol_features(protocol & VhostUserProtocolFeatures::MQ)
                .expect("SET_PROTOCOL_FEATURES");
        }
        let region = mem.find_region(GuestAddress(0)).expect("one region");
        let host_base = region.as_ptr() as u64;
        let info = VhostUserMemoryRegionInfo::from_guest_region(region).expect("region info");
        frontend.set_mem_table(&[info]).expect("SET_MEM_TABLE");

        let kick = EventFd::new(EFD_NONBLOCK).expect("kick eventfd");
        let call = EventFd::new(EFD_NONBLOCK).expect("call eventfd");
        frontend
            .set_vring_num(REQUEST_QUEUE, QUEUE_SIZE)
            .expect("SET_VRING_NUM");
        let ring = VringConfigData {
            queue_max_size: QUEUE_SIZE,
            queue_size: QUEUE_SIZE,
            flags: 0,
            desc_table_addr: host_base + DESC_TABLE,
            used_ring_addr: host_base + USED_RING,
            avail_ring_addr: host_base + AVAIL_RING,
            log_addr: None,
        };
        frontend
            .set_vring_addr(REQUEST_QUEUE, &ring)
            .expect("SET_VRING_ADDR");
        frontend
            .set_vring_base(REQUEST_QUEUE, 0)
            .expect("SET_VRING_BASE");
        frontend
            .set_vring_call(REQUEST_QUEUE, &call)
            .expect("SET_VRING_CALL");
        frontend
            .set_vring_kick(REQUEST_QUEUE, &kick)
            .expect("SET_VRING_KICK");
        if wanted & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            frontend
                .set_vring_enable(REQUEST_QUEUE, true)
                .expect("SET_VRING_ENABLE");
        }
        Self {
            _frontend: frontend,
            mem,
            _memfd: memfd,
            kick,
            call,
            next_avail: 0,
            last_used: 0,
            unique: 0,
        }
    }

    /// Puts `message` in the request queue with a reply buffer, kicks, and returns the
    /// reply's bytes (as many as the used element says were written).
    fn exchange(&mut self, message: &[u8]) -> Vec<u8> {
        let len = u32::try_from(message.len()).expect("small request");
        assert!(len <= MESSAGE_MAX, "request of {len} bytes");
        self.mem
            .write_slice(message, GuestAddress(REQUEST))
            .expect("request fits");
        let descriptors = [
            Descriptor::new(REQUEST, len, VRING_DESC_F_NEXT, 1),
            Descriptor::new(REPLY, MESSAGE_MAX, VRING_DESC_F_WRITE, 0),
        ];
        for (i, descriptor) in (0u64..).zip(descriptors) {
            self.mem
                .write_obj(descriptor, GuestAddress(DESC_TABLE + i * 16))
                .expect("descriptor");
        }
        let slot = AVAIL_RING + 4 + u64::from(self.next_avail % QUEUE_SIZE) * 2;
        self.mem
            .write_obj(0u16, GuestAddress(slot))
            .expect("avail ring");
        self.next_avail = self.next_avail.wrapping_add(1);
        self.mem
            .store(
                self.next_avail,
                GuestAddress(AVAIL_RING + 2),
                Ordering::Release,
            )
            .expect("avail idx");
        self.kick.write(1).expect("kick");

        loop {
            let used: u16 = self
                .mem
                .load(GuestAddress(USED_RING + 2), Ordering::Acquire)
                .expect("used idx");
            if used != self.last_used {
                break;
            }
            self.wait_call();
        }
        let at = USED_RING + 4 + u64::from(self.last_used % QUEUE_SIZE) * 8;
        self.last_used = self.last_used.wrapping_add(1);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).expect("used id");
        let written: u32 = self.mem.read_obj(GuestAddress(at + 4)).expect("used len");
        assert_eq!(id, 0, "the used element names another chain");
        assert!(written <= MESSAGE_MAX, "used length {written}");
        let mut reply = vec![0; written as usize];
        self.mem
            .read_slice(&mut reply, GuestAddress(REPLY))
            .expect("reply");
        reply
    }

    /// Waits for the call eventfd, at most [`PROCESS_BOUND`] (a hang guard, not a timing
    /// expectation).
    fn wait_call(&self) {
        // SAFETY: the eventfd is owned by `self` and stays open for the whole borrow.
        let call = unsafe { BorrowedFd::borrow_raw(self.call.as_raw_fd()) };
        let mut fds = [PollFd::new(call, PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(PROCESS_BOUND).expect("bound fits");
        match poll(&mut fds, timeout) {
            Ok(0) => panic!("hull-fs answered no request for {PROCESS_BOUND:?}"),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => panic!("waiting for the call eventfd: {errno}"),
        }
        let _ = self.call.read();
    }
}

impl FuseSession for VhostGuest {
    fn request(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> Reply {
        self.unique += 1;
        let message = request_message(self.unique, opcode, nodeid, body);
        let reply = self.exchange(&message);
        let out = reply
            .get(..size_of::<OutHeader>())
            .and_then(OutHeader::from_slice)
            .copied()
            .unwrap_or_else(|| panic!("opcode {opcode}: reply of {} bytes", reply.len()));
        assert_eq!(out.unique, self.unique, "reply to another request");
        Reply {
            error: out.error,
            body: reply[size_of::<OutHeader>()..].to_vec(),
        }
    }
}
