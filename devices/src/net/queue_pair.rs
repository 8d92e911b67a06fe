//! Moving frames between one queue pair and one tap queue: the guest's tx chains go out as
//! one `writev` each, and frames the tap hands over are read with one `readv` straight into
//! the guest's rx buffers, spanning several buffers when they are mergeable
//! (`VIRTIO_NET_F_MRG_RXBUF`). The `virtio_net_hdr` is not interpreted here: the tap's vnet
//! header is the same structure, so it passes through both ways and the kernel checks it.
//!
//! Why non-blocking descriptors woken by the vring worker's epoll loop, and not io_uring as
//! hull-blk uses: a frame is one small `readv`/`writev` that never blocks, and how many rx
//! buffers a frame takes is known only once it has been read, so a read cannot be posted
//! ahead of time into buffers that belong to it; a queued io_uring read would hold guest
//! buffers hostage until a frame arrives and still need a readiness wake-up per frame. Each
//! syscall here moves a whole frame directly to or from guest memory (no copy), which is what
//! vhost-net does in the kernel. The descriptor works with anything that keeps datagram
//! boundaries (the unit tests use a unix datagram socket pair in the tap's place).
//!
//! Every chain is validated before use ([`crate::chain`]); a chain that loops, points outside
//! guest memory, is too long, too short for the header or has the wrong direction is
//! returned with nothing written and counted, and the queue goes on.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, BorrowedFd};

use tracing::{debug, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::volatile_memory::PtrGuardMut;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::device::{Counters, FrameFormat, MAX_FRAME_LEN};
use crate::chain::{self, Buffer, Direction};
use crate::notify::Pass;
use crate::vsock::packet::Mem;

/// Most buffers one `readv`/`writev` takes (`IOV_MAX` on Linux).
const MAX_IOVECS: usize = 1024;
/// Byte offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

/// What an rx pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RxPass {
    /// Chains returned to the guest (frames delivered, and malformed chains).
    pub used: usize,
    /// The tap had no more frames (it returned `EAGAIN`); otherwise the pass stopped for
    /// lack of rx buffers and frames may be waiting.
    pub drained: bool,
}

/// A validated rx chain waiting for a frame.
struct RxChain {
    head: u16,
    buffers: Vec<Buffer>,
    len: usize,
}

/// One queue pair's frames to and from one tap queue.
pub struct QueuePair<'a> {
    pair: usize,
    fd: BorrowedFd<'a>,
    format: FrameFormat,
    counters: &'a Counters,
}

/// Why gathering rx buffers stopped.
enum Gathered {
    /// Enough room for the largest frame (or all the guest can give).
    Ready,
    /// Not enough room yet; more buffers may come.
    Short,
}

impl<'a> QueuePair<'a> {
    /// Frames in `format` between queue pair `pair` and the tap queue `fd` (non-blocking).
    pub fn new(
        pair: usize,
        fd: BorrowedFd<'a>,
        format: FrameFormat,
        counters: &'a Counters,
    ) -> Self {
        Self {
            pair,
            fd,
            format,
            counters,
        }
    }

    /// Sends every chain available on the tx `queue` to the tap, with the guest's
    /// notifications off meanwhile and a last look after turning them back on. Returns how
    /// many chains went back to the guest.
    pub fn process_tx(&self, queue: &mut Queue, mem: &Mem) -> Result<usize, virtio_queue::Error> {
        let mut used = 0;
        crate::notify::serve_with_kicks_off(
            queue,
            mem,
            |err| err,
            |queue, pass| {
                let Pass::Chain(chain) = pass else {
                    return Ok(());
                };
                let head = chain.head_index();
                let max = self.format.hdr_len + MAX_FRAME_LEN;
                match chain::validate_buffers(&chain, mem, Direction::DeviceReadable, max) {
                    Ok((valid, buffers)) if valid.len >= self.format.hdr_len => {
                        self.send(&buffers, valid.len, mem);
                    }
                    Ok((valid, _)) => {
                        debug!(head, len = valid.len, "tx chain shorter than the header");
                        self.drop_tx_malformed();
                    }
                    Err(err) => {
                        debug!(%err, "refusing a tx chain");
                        self.drop_tx_malformed();
                    }
                }
                // The device writes nothing into tx buffers.
                queue.add_used(mem, head, 0)?;
                used += 1;
                Ok(())
            },
        )?;
        Ok(used)
    }

    fn drop_tx_malformed(&self) {
        Counters::add(&self.counters.malformed, 1);
        Counters::add(&self.counters.tx_dropped, 1);
    }

    fn send(&self, buffers: &[Buffer], len: usize, mem: &Mem) {
        let Some(io) = IoVecs::new(mem, buffers, MAX_IOVECS) else {
            debug!(len, "tx chain of too many buffers or outside memory");
            self.drop_tx_malformed();
            return;
        };
        // SAFETY: the iovecs point into guest memory that `mem` keeps mapped for this call
        // (see `IoVecs`), and `writev` only reads them.
        let n = unsafe { libc::writev(self.fd.as_raw_fd(), io.as_ptr(), io.count()) };
        if n < 0 {
            // A tap refuses a frame whose header it cannot use (EINVAL), or is down (EIO);
            // its unlimited send buffer never makes a write wait.
            let err = std::io::Error::last_os_error();
            debug!(%err, len, "the tap refused a frame");
            Counters::add(&self.counters.tx_dropped, 1);
            return;
        }
        Counters::add(&self.counters.tx_frames, 1);
        self.counters.pair_frame(self.pair, true);
        let frame = len.saturating_sub(self.format.hdr_len) as u64;
        Counters::add(&self.counters.tx_bytes, frame);
    }

    /// Reads frames from the tap into the rx `queue` until the tap is drained or the guest's
    /// buffers run out; when they run out, the guest's notifications are turned on so that
    /// its next buffers wake the device. Chains gathered but not filled are handed back (the
    /// queue's next index moves back over them), so nothing is held between passes.
    pub fn process_rx(&self, queue: &mut Queue, mem: &Mem) -> Result<RxPass, virtio_queue::Error> {
        let mut pass = RxPass::default();
        let mut spare: VecDeque<RxChain> = VecDeque::new();
        // Where the queue stood when the guest's notifications were last turned back on.
        let mut rearmed_at = None;
        queue.disable_notification(mem)?;
        pass.drained = loop {
            match self.gather(queue, mem, &mut spare, &mut pass)? {
                Gathered::Ready => {}
                Gathered::Short => {
                    // Ask for a kick once the guest offers buffers beyond those seen (the
                    // next index still points past them here), and look once more, unless
                    // the last look found nothing: then the ring's index lies (it claims
                    // more than the ring holds, which the queue refuses to pop) and looking
                    // again would spin forever.
                    let more = queue.enable_notification(mem)?;
                    if more && rearmed_at != Some(queue.next_avail()) {
                        rearmed_at = Some(queue.next_avail());
                        queue.disable_notification(mem)?;
                        continue;
                    }
                    break false;
                }
            }
            match self.receive(&spare, mem) {
                Ok((_, 0)) => {
                    // The first chain no longer maps (the memory table changed under it).
                    if let Some(chain) = spare.pop_front() {
                        Counters::add(&self.counters.malformed, 1);
                        queue.add_used(mem, chain.head, 0)?;
                        pass.used += 1;
                    }
                }
                // A tap never reads empty; take it as nothing to read rather than loop.
                Ok((0, _)) => break true,
                Ok((n, chains)) => self.deliver(queue, mem, &mut spare, n, chains, &mut pass)?,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break true,
                Err(err) => {
                    // The tap dequeued the frame before failing to copy it (EINVAL, EFAULT):
                    // it is gone, the next one may be fine. Anything else (EIO: the tap is
                    // down) ends the pass.
                    Counters::add(&self.counters.rx_dropped, 1);
                    if !matches!(err.raw_os_error(), Some(libc::EINVAL | libc::EFAULT)) {
                        warn!(%err, "reading a frame from the tap failed");
                        break true;
                    }
                    debug!(%err, "a frame from the tap was lost");
                }
            }
        };
        let unused = u16::try_from(spare.len()).unwrap_or(u16::MAX);
        queue.set_next_avail(queue.next_avail().wrapping_sub(unused));
        Ok(pass)
    }

    /// Pops rx chains until they hold room for the largest frame (one chain without
    /// merging), or for a frame of the MTU when the guest offers no more. Malformed chains
    /// go back to the guest at once, unless good chains are already waiting: then the
    /// malformed one is put back (so that the waiting chains stay the last ones popped,
    /// which lets them be handed back) and the frame is read into what there is.
    fn gather(
        &self,
        queue: &mut Queue,
        mem: &Mem,
        spare: &mut VecDeque<RxChain>,
        pass: &mut RxPass,
    ) -> Result<Gathered, virtio_queue::Error> {
        let mut room: usize = spare.iter().map(|c| c.len).sum();
        let mut iovecs: usize = spare.iter().map(|c| c.buffers.len()).sum();
        loop {
            let full = if self.format.mergeable {
                // Or as much as the guest can ever offer at once: the whole ring.
                room >= self.format.rx_room
                    || iovecs >= MAX_IOVECS
                    || iovecs >= usize::from(queue.size())
            } else {
                !spare.is_empty()
            };
            if full {
                return Ok(Gathered::Ready);
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                // The guest offers no more for now: read into what there is if it holds a
                // frame of the MTU, else wait for more.
                if self.format.mergeable && room >= self.format.rx_min {
                    return Ok(Gathered::Ready);
                }
                return Ok(Gathered::Short);
            };
            let head = chain.head_index();
            let max = usize::try_from(u32::MAX).unwrap_or(usize::MAX);
            let refused = match chain::validate_buffers(&chain, mem, Direction::DeviceWritable, max)
            {
                Ok((valid, buffers)) if valid.len >= self.format.hdr_len => {
                    room += valid.len;
                    iovecs += buffers.len();
                    spare.push_back(RxChain {
                        head,
                        buffers,
                        len: valid.len,
                    });
                    continue;
                }
                Ok((valid, _)) => format!("{} bytes, shorter than the header", valid.len),
                Err(err) => err.to_string(),
            };
            if !spare.is_empty() {
                queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                return Ok(Gathered::Ready);
            }
            debug!(head, why = %refused, "refusing an rx chain");
            Counters::add(&self.counters.malformed, 1);
            queue.add_used(mem, head, 0)?;
            pass.used += 1;
        }
    }

    /// Reads one frame into the spare chains; returns its length with the header, and how
    /// many of the chains (from the front) the read could use (none: nothing was read).
    fn receive(&self, spare: &VecDeque<RxChain>, mem: &Mem) -> std::io::Result<(usize, usize)> {
        let mut io = IoVecs::default();
        let mut chains = 0;
        for chain in spare {
            if !io.add(mem, &chain.buffers, MAX_IOVECS) {
                break;
            }
            chains += 1;
        }
        if chains == 0 {
            return Ok((0, 0));
        }
        // SAFETY: the iovecs point into guest memory that `mem` keeps mapped for this call,
        // in buffers the guest made device-writable (validated); `readv` writes only there.
        let n = unsafe { libc::readv(self.fd.as_raw_fd(), io.as_ptr(), io.count()) };
        let n = usize::try_from(n).map_err(|_| std::io::Error::last_os_error())?;
        Ok((n, chains))
    }

    /// Returns the chains a frame of `n` bytes filled to the guest (of the first `chains`
    /// spare ones, which the read used), with `num_buffers` set.
    fn deliver(
        &self,
        queue: &mut Queue,
        mem: &Mem,
        spare: &mut VecDeque<RxChain>,
        n: usize,
        chains: usize,
        pass: &mut RxPass,
    ) -> Result<(), virtio_queue::Error> {
        let room: usize = spare.iter().take(chains).map(|c| c.len).sum();
        if n < self.format.hdr_len || n > room {
            // A tap reports the whole frame even when the buffers were too small for it; a
            // truncated frame is not delivered, and the buffers wait for the next frame.
            debug!(n, room, "frame does not fit the rx buffers; dropped");
            Counters::add(&self.counters.rx_dropped, 1);
            return Ok(());
        }
        let mut left = n;
        let mut filled = Vec::new();
        for chain in spare.iter() {
            if left == 0 {
                break;
            }
            let take = left.min(chain.len);
            filled.push((chain.head, take));
            left -= take;
        }
        if self.format.hdr_len > NUM_BUFFERS_OFFSET {
            // The tap leaves `num_buffers` unwritten: it is ours (1 without merging).
            let count = u16::try_from(filled.len()).unwrap_or(u16::MAX);
            if let Some(first) = spare.front() {
                write_at(
                    mem,
                    &first.buffers,
                    NUM_BUFFERS_OFFSET,
                    &count.to_le_bytes(),
                );
            }
        }
        for &(head, len) in &filled {
            // `len` is at most a validated chain's length, which fits u32.
            queue.add_used(mem, head, u32::try_from(len).unwrap_or(u32::MAX))?;
        }
        spare.drain(..filled.len());
        pass.used += filled.len();
        Counters::add(&self.counters.rx_frames, 1);
        self.counters.pair_frame(self.pair, false);
        Counters::add(&self.counters.rx_bytes, (n - self.format.hdr_len) as u64);
        Ok(())
    }
}

/// Writes `bytes` at byte `offset` of the buffers of a chain (it may straddle buffers).
fn write_at(mem: &Mem, buffers: &[Buffer], mut offset: usize, mut bytes: &[u8]) {
    for &(addr, len) in buffers {
        if bytes.is_empty() {
            return;
        }
        if offset >= len {
            offset -= len;
            continue;
        }
        let now = bytes.len().min(len - offset);
        let Some(at) = addr.0.checked_add(offset as u64) else {
            return;
        };
        // Validated memory; a failure means the guest's memory map changed under us, and
        // then the guest reads a stale count from a frame it no longer has anyway.
        let _ = mem.write_slice(&bytes[..now], GuestAddress(at));
        bytes = &bytes[now..];
        offset = 0;
    }
}

/// Host addresses of guest buffers for one `readv`/`writev`, with the guards that keep their
/// pointers valid. The guest memory they point into stays mapped while the `&Mem` they came
/// from is borrowed (vhost-user-backend swaps memory maps only between events).
#[derive(Default)]
struct IoVecs {
    iovecs: Vec<libc::iovec>,
    _guards: Vec<PtrGuardMut>,
}

impl IoVecs {
    /// The buffers of a chain, or `None` if one is outside `mem` or there are more than
    /// `limit` pieces.
    fn new(mem: &Mem, buffers: &[Buffer], limit: usize) -> Option<Self> {
        let mut io = Self::default();
        io.add(mem, buffers, limit).then_some(io)
    }

    /// Adds `buffers`; `false` (adding nothing) if one is outside `mem` or they would make
    /// more than `limit` pieces (a buffer may take several, one per memory region it spans).
    fn add(&mut self, mem: &Mem, buffers: &[Buffer], limit: usize) -> bool {
        let mark = self.iovecs.len();
        for &(addr, len) in buffers {
            for slice in mem.get_slices(addr, len) {
                let slice = match slice {
                    Ok(slice) if self.iovecs.len() < limit => slice,
                    _ => {
                        self.iovecs.truncate(mark);
                        self._guards.truncate(mark);
                        return false;
                    }
                };
                let guard = slice.ptr_guard_mut();
                self.iovecs.push(libc::iovec {
                    iov_base: guard.as_ptr().cast(),
                    iov_len: slice.len(),
                });
                self._guards.push(guard);
            }
        }
        true
    }

    fn as_ptr(&self) -> *const libc::iovec {
        self.iovecs.as_ptr()
    }

    fn count(&self) -> libc::c_int {
        // At most MAX_IOVECS pieces are ever handed to a syscall.
        libc::c_int::try_from(self.iovecs.len().min(MAX_IOVECS)).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    // Test values (small lengths, descriptor flags) all fit their targets.
    #![allow(clippy::cast_possible_truncation)]

    use proptest::prelude::*;
    use virtio_bindings::virtio_net::VIRTIO_NET_F_GUEST_TSO4;
    use virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;
    use virtio_queue::QueueT;

    use super::*;
    use crate::net::test_utils::{packet, NetGuest, MODERN, MODERN_MRG, R_NEXT, W_LAST, W_NEXT};
    use crate::vsock::test_utils::{test_memory, MEM_SIZE};

    const HDR: usize = 12;
    /// A raw descriptor: address, length, flags, next (relative to the chain's first).
    type Desc = (u64, u32, u16, u16);
    const TSO: u64 = 1 << VIRTIO_NET_F_GUEST_TSO4;

    fn num_buffers(guest: &NetGuest<'_>, addr: u64) -> u16 {
        let b = guest.bytes(addr + 10, 2);
        u16::from_le_bytes([b[0], b[1]])
    }

    #[test]
    fn a_frame_split_over_descriptors_leaves_as_one_write_with_its_header() {
        let mem = test_memory();
        let mut guest = NetGuest::new(&mem, MODERN_MRG);
        let mut sent = packet(HDR, 1000, 7);
        sent[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM: passed through untouched
        let head = guest.send(&sent, &[5, 7, 300]);
        assert_eq!(guest.run_tx(), vec![(u32::from(head), 0)]);
        assert_eq!(guest.host_recv().as_deref(), Some(&sent[..]));
        assert!(guest.host_recv().is_none(), "exactly one frame");
        let c = guest.counters.values();
        assert_eq!((c.tx_frames, c.tx_bytes, c.tx_dropped), (1, 1000, 0));
        assert_eq!(c.tx_frames_per_pair, [1]);
    }

    /// A buffer spanning two guest memory regions goes out and comes in whole (two pieces
    /// of host memory behind one descriptor).
    #[test]
    fn buffers_that_span_memory_regions_carry_whole_frames() {
        let half = (MEM_SIZE / 2) as usize;
        let mem = Mem::from_ranges(&[(GuestAddress(0), half), (GuestAddress(half as u64), half)])
            .expect("two regions");
        let mut guest = NetGuest::new(&mem, MODERN);
        let sent = packet(HDR, 200, 8);
        let at = half as u64 - 50;
        mem.write_slice(&sent, GuestAddress(at)).expect("packet");
        guest.tx_raw(&[(at, sent.len() as u32, 0, 0)]);
        assert_eq!(guest.run_tx().len(), 1);
        assert_eq!(guest.host_recv().as_deref(), Some(&sent[..]));

        let rx_at = half as u64 - 30;
        guest.rx_raw(&[(rx_at, 1600, W_LAST, 0)]);
        let back = packet(HDR, 300, 9);
        guest.host_send(&back);
        let (_, used) = guest.run_rx();
        assert_eq!(used, vec![(0, back.len() as u32)]);
        let mut got = guest.bytes(rx_at, back.len());
        got[10..12].copy_from_slice(&[0, 0]); // num_buffers, ours
        assert_eq!(got, back);
    }

    #[test]
    fn a_frame_in_an_indirect_table_is_sent() {
        let mem = test_memory();
        let mut guest = NetGuest::new(&mem, MODERN_MRG);
        let sent = packet(HDR, 64, 1);
        let a = guest.place(&sent[..HDR]);
        let b = guest.place(&sent[HDR..]);
        let table = guest.place(&[0u8; 32]);
        let mut raw = Vec::new();
        for (addr, len, flags, next) in [(a, HDR as u32, R_NEXT, 1u16), (b, 64, 0, 0)] {
            raw.extend_from_slice(&addr.to_le_bytes());
            raw.extend_from_slice(&len.to_le_bytes());
            raw.extend_from_slice(&flags.to_le_bytes());
            raw.extend_from_slice(&next.to_le_bytes());
        }
        mem.write_slice(&raw, GuestAddress(table)).expect("table");
        guest.tx_raw(&[(table, 32, VRING_DESC_F_INDIRECT as u16, 0)]);
        assert_eq!(guest.run_tx().len(), 1);
        assert_eq!(guest.host_recv().as_deref(), Some(&sent[..]));
    }

    /// Every malformed tx chain comes back with nothing sent, and the queue goes on.
    /// Found by the `net_rx_tx` fuzz target: an avail index more than the ring's size ahead
    /// made the tx and rx passes loop forever (the queue refuses to pop from such a ring,
    /// and re-enabling notifications kept reporting more work).
    #[test]
    fn a_ring_index_beyond_the_ring_size_does_not_spin_either_queue() {
        let mem = test_memory();
        let mut guest = NetGuest::new(&mem, MODERN_MRG);
        let (rx, tx) = guest.available();
        // 300 chains more than offered, in rings of 256 entries.
        guest.set_available(false, tx.wrapping_add(300));
        assert_eq!(guest.run_tx(), vec![], "nothing is sent from a lying ring");
        guest.host_send(&packet(HDR, 100, 1));
        guest.set_available(true, rx.wrapping_add(300));
        let (pass, used) = guest.run_rx();
        assert_eq!(used, vec![], "nothing is received into a lying ring");
        assert!(!pass.drained, "the frame waits for buffers");
    }

    #[test]
    fn malformed_tx_chains_are_dropped_and_the_next_frame_goes_out() {
        let mem = test_memory();
        let mut guest = NetGuest::new(&mem, MODERN_MRG);
        let good = packet(HDR, 100, 3);
        let a = guest.place(&good);
        let cases: Vec<(&str, Vec<Desc>)> = vec![
            ("loop", vec![(a, 20, R_NEXT, 1), (a, 20, R_NEXT, 0)]),
            ("outside memory", vec![(MEM_SIZE - 8, 64, 0, 0)]),
            ("address overflow", vec![(u64::MAX - 4, 64, 0, 0)]),
            (
                "wrong direction",
                vec![(a, 20, R_NEXT, 1), (a, 80, W_LAST, 0)],
            ),
            (
                "too long",
                vec![(a, 112, R_NEXT, 1), (0x20_0000, 70_000, 0, 0)],
            ),
            ("shorter than the header", vec![(a, 11, 0, 0)]),
            ("next outside the table", vec![(a, 20, R_NEXT, 300)]),
        ];
        for (what, descs) in &cases {
            let head = guest.tx_raw(descs);
            let used = guest.run_tx();
            assert_eq!(used, vec![(u32::from(head), 0)], "{what}");
            assert!(guest.host_recv().is_none(), "{what}: nothing sent");
        }
        guest.send(&good, &[]);
        assert_eq!(guest.run_tx().len(), 1);
        assert_eq!(guest.host_recv().as_deref(), Some(&good[..]));
        let c = guest.counters.values();
        assert_eq!(c.malformed, cases.len() as u64);
        assert_eq!(c.tx_dropped, cases.len() as u64);
        assert_eq!(c.tx_frames, 1);
    }

    #[test]
    fn a_frame_from_the_tap_fills_one_buffer_with_num_buffers_1_without_merging() {
        let mem = test_memory();
        let mut guest = NetGuest::new(&mem, MODERN);
        let bufs = guest.offer_rx(2, 1600);
        let frame = packet(HDR, 600, 9);
        guest.host_send(&frame);
        let (pass, used) = guest.run_rx();
        assert!(pass.drained);
        assert_eq!(used, vec![(0, frame.len() as u32)]);
        assert_eq!(num_buffers(&guest, bufs[0]), 1);
        assert_eq!(guest.bytes(bufs[0] + 12, 600), frame[12..]);
        assert!(
            guest.bytes(bufs[1], 16).iter().all(|&b| b == 0xee),
            "the second buffer is untouched"
        );
        // The unused chain went back: the next frame lands in it.
        guest.host_send(&packet(HDR, 60, 1));
        let (_, used) = guest.run_rx();
        assert_eq!(used, vec![(1, 72)]);
        let c = guest.counters.values();
        assert_eq!((c.rx_frames, c.rx_bytes), (2, 660));
        assert_eq!(c.rx_frames_per_pair, [2]);
    }

    #[test]
    fn a_large_frame_spans_mergeable_buffers_and_the_rest_serve_the_next_frame() {
        let mem = test_memory();
        let mut guest = NetGuest::new(&mem, MODERN_MRG | TSO);
        let bufs = guest.offer_rx(64, 1536);
        let big = packet(HDR, 4000, 5);
        guest.host_send(&big);
        guest.host_send(&packet(HDR, 100, 6));
        let (pass, used) = guest.run_rx();
        assert!(pass.drained);
        assert_eq!(
            used,
            vec![(0, 1536), (1, 1536), (2, 4012 - 3072), (3, 112)],
            "three buffers for the big frame, the fourth for the next"
        );
        assert_eq!(num_buffers(&guest, bufs[0]), 3);
        assert_eq!(num_buffers(&guest, bufs[3]), 1);
        let mut got = guest.bytes(bufs[0] + 12, 1536 - 12);
        got.extend(guest.bytes(bufs[1], 1536));
        got.extend(guest.bytes(bufs[2], 4012 - 3072));
        assert_eq!(got, big[12..]);
        // 60 chains remain offered: the queue's next index is back behind them.
        assert_eq!(guest.rxq.next_avail(), 4);
    }

    #[test]
    fn frames_wait_in_the_tap_until_the_guest_offers_buffers() {
        let mem = test_memory();
        let mut guest = NetGuest::new(&mem, MODERN_MRG);
        let frame = packet(HDR, 200, 2);
        guest.host_send(&frame);
        let (pass, used) = guest.run_rx();
        assert!(!pass.drained, "the frame waits");
        assert!(used.is_empty());
        let bufs = guest.offer_rx(1, 2048);
        let (pass, used) = guest.run_rx();
        assert!(!pass.drained, "out of buffers again: the tap may hold more");
        assert_eq!(used, vec![(0, 212)]);
        assert_eq!(guest.bytes(bufs[0] + 12, 200), frame[12..]);
    }

    #[test]
    fn a_tap_with_nothing_to_read_hands_every_buffer_back() {
        let mem = test_memory();
        let mut guest = NetGuest::new(&mem, MODERN_MRG);
        guest.offer_rx(8, 1536);
        let (pass, used) = guest.run_rx();
        assert!(pass.drained);
        assert!(used.is_empty());
        assert_eq!(guest.rxq.next_avail(), 0);
    }

    /// Malformed rx chains come back unused with nothing written, and the frame goes to the
    /// next good chain.
    #[test]
    fn malformed_rx_chains_are_returned_empty_and_the_frame_takes_the_next_good_one() {
        for features in [MODERN, MODERN_MRG] {
            let mem = test_memory();
            let mut guest = NetGuest::new(&mem, features);
            let a = guest.buf(2048, 0x55);
            let cases: Vec<(&str, Vec<Desc>)> = vec![
                ("loop", vec![(a, 20, W_NEXT, 1), (a + 20, 20, W_NEXT, 0)]),
                ("outside memory", vec![(MEM_SIZE - 8, 1536, W_LAST, 0)]),
                ("device-readable", vec![(a, 1536, 0, 0)]),
                (
                    "readable after writable",
                    vec![(a, 12, W_NEXT, 1), (a + 12, 1500, 0, 0)],
                ),
                ("shorter than the header", vec![(a, 8, W_LAST, 0)]),
                (
                    "longer than memory",
                    vec![(a, u32::MAX, W_NEXT, 1), (a, 64, W_LAST, 0)],
                ),
            ];
            let mut heads = Vec::new();
            for (_, descs) in &cases {
                heads.push(guest.rx_raw(descs));
            }
            let good = guest.offer_rx(1, 1600);
            let frame = packet(HDR, 300, 4);
            guest.host_send(&frame);
            let (_, used) = guest.run_rx();
            let expected: Vec<(u32, u32)> = heads.iter().map(|&h| (u32::from(h), 0)).collect();
            assert_eq!(
                used.len(),
                cases.len() + 1,
                "features {features:#x}: {used:?}"
            );
            assert_eq!(used[..cases.len()], expected[..]);
            assert_eq!(used[cases.len()].1, 312);
            assert_eq!(guest.bytes(good[0] + 12, 300), frame[12..]);
            assert!(
                guest.bytes(a, 2048).iter().all(|&b| b == 0x55),
                "nothing written into refused chains"
            );
            assert_eq!(guest.counters.values().malformed, cases.len() as u64);
        }
    }

    /// A malformed chain behind good ones waiting for a frame is left where it is (the good
    /// ones take the frame) and refused once it is first in line.
    #[test]
    fn a_malformed_rx_chain_behind_good_ones_is_refused_in_its_turn() {
        let mem = test_memory();
        let mut guest = NetGuest::new(&mem, MODERN_MRG | TSO);
        let good = guest.offer_rx(2, 1536);
        let bad = guest.rx_raw(&[(good[0], 1536, 0, 0)]);
        let after = guest.offer_rx(1, 1536);
        for seed in 0..3 {
            guest.host_send(&packet(HDR, 100, seed));
        }
        let (_, used) = guest.run_rx();
        assert_eq!(
            used,
            vec![(0, 112), (1, 112), (u32::from(bad), 0), (3, 112)],
            "frames in the good chains, the bad one refused in order"
        );
        assert_eq!(guest.bytes(after[0] + 12, 100), packet(HDR, 100, 2)[12..]);
    }

    #[test]
    fn a_frame_larger_than_the_buffers_is_not_delivered_truncated() {
        let mem = test_memory();
        let mut guest = NetGuest::new(&mem, MODERN);
        guest.offer_rx(1, 100);
        // The unix socket stand-in truncates silently; the device still must not report
        // more than the chain holds. A tap reports the whole length, which is dropped.
        guest.host_send(&packet(HDR, 400, 1));
        let (_, used) = guest.run_rx();
        assert!(used.iter().all(|&(_, len)| len <= 100), "{used:?}");
    }

    /// The most a chain starting at `head` of the table `descs` (laid from index 0) can hold:
    /// the lengths of the descriptors its `next` links reach, each counted once however the
    /// links loop, whatever their direction. `None` when the chain goes through an indirect
    /// descriptor, whose table is guest memory the device may itself have written.
    fn chain_capacity(descs: &[(u64, u32, u16, u16)], head: u32) -> Option<u64> {
        let mut seen = vec![false; descs.len()];
        let mut at = usize::try_from(head).ok()?;
        let mut most = 0u64;
        while let Some(&(_, len, flags, next)) = descs.get(at) {
            if u32::from(flags) & VRING_DESC_F_INDIRECT != 0 {
                return None;
            }
            if std::mem::replace(&mut seen[at], true) {
                break;
            }
            most += u64::from(len);
            if flags & R_NEXT == 0 {
                break;
            }
            at = usize::from(next);
        }
        Some(most)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Arbitrary tx descriptor tables never panic the device, every chain made available
        /// comes back with a used length of 0, and whatever reaches the tap is at least a
        /// header long.
        #[test]
        fn arbitrary_tx_descriptor_tables_never_panic(
            descs in proptest::collection::vec(
                (
                    prop_oneof![0x10_0000u64..0x10_2000, Just(MEM_SIZE - 8), any::<u64>()],
                    prop_oneof![0u32..2000, any::<u32>()],
                    0u16..8,
                    0u16..6,
                ),
                1..8,
            ),
        ) {
            let mem = test_memory();
            let mut guest = NetGuest::new(&mem, MODERN_MRG);
            guest.tx_raw(&descs);
            let used = guest.run_tx();
            prop_assert_eq!(used.len(), usize::from(guest.available().1));
            prop_assert!(used.iter().all(|&(_, len)| len == 0));
            while let Some(frame) = guest.host_recv() {
                prop_assert!(frame.len() >= HDR);
            }
        }

        /// Arbitrary rx descriptor tables with frames waiting never panic the device; every
        /// used length fits the chain it names, and no more chains come back than were
        /// offered.
        #[test]
        fn arbitrary_rx_descriptor_tables_never_panic(
            descs in proptest::collection::vec(
                (
                    prop_oneof![0x10_0000u64..0x10_2000, Just(MEM_SIZE - 8), any::<u64>()],
                    prop_oneof![0u32..2000, any::<u32>()],
                    0u16..8,
                    0u16..6,
                ),
                1..8,
            ),
            frames in proptest::collection::vec(0usize..3000, 0..4),
            mergeable in any::<bool>(),
        ) {
            let mem = test_memory();
            let features = if mergeable { MODERN_MRG | TSO } else { MODERN };
            let mut guest = NetGuest::new(&mem, features);
            guest.rx_raw(&descs);
            for (i, &len) in frames.iter().enumerate() {
                guest.host_send(&packet(HDR, len, i as u8));
            }
            let (_, used) = guest.run_rx();
            prop_assert!(used.len() <= usize::from(guest.available().0));
            for &(head, len) in &used {
                if let Some(most) = chain_capacity(&descs, head) {
                    prop_assert!(u64::from(len) <= most, "head {} len {}", head, len);
                }
            }
        }
    }
}
