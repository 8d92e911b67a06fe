//! Serving a virtqueue with the guest's notifications off, shared by every device's queue
//! loop: turn kicks off, take what is available, turn kicks back on and look once more.
//!
//! The last look is what makes this correct. While kicks are off (VRING_USED_F_NO_NOTIFY, or
//! an event index left behind), a driver that honours it, as Linux's do, publishes requests
//! without kicking; one published after a pass looked and before kicks came back on is seen
//! only by the look that follows turning them on. `enable_notification` reports it, and the
//! loop must then pass again, even when the pass before found nothing: a pass finds nothing
//! when it was started by a kick for requests an earlier pass already took, and returning
//! then leaves the new request with no kick coming (the guest waits for it for ever).

use virtio_queue::{DescriptorChain, Queue, QueueT};

use crate::vsock::packet::Mem;

/// What a device's queue loop is handed: each chain the guest made available, then the end of
/// the pass (where a device answers what it queued during the pass).
pub enum Pass<'a> {
    /// The next available chain.
    Chain(DescriptorChain<&'a Mem>),
    /// Nothing more is available in this pass.
    End,
}

/// Serves `queue` with the guest's notifications off: pops every available chain and hands it
/// to `serve`, then [`Pass::End`], and repeats until a look after turning notifications back
/// on finds nothing new. Two passes in a row that pop nothing although the queue claims more
/// mean its index lies (it claims more than the ring holds, or entries the queue cannot read):
/// the loop returns rather than spin, and the guest's next kick starts it again.
pub fn serve_with_kicks_off<'a, E>(
    queue: &mut Queue,
    mem: &'a Mem,
    queue_error: impl Fn(virtio_queue::Error) -> E,
    mut serve: impl FnMut(&mut Queue, Pass<'a>) -> Result<(), E>,
) -> Result<(), E> {
    let mut found_none = false;
    loop {
        queue.disable_notification(mem).map_err(&queue_error)?;
        let mut popped = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            popped = true;
            serve(queue, Pass::Chain(chain))?;
        }
        serve(queue, Pass::End)?;
        let more = queue.enable_notification(mem).map_err(&queue_error)?;
        if !more || (!popped && found_none) {
            return Ok(());
        }
        found_none = !popped;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use virtio_bindings::virtio_ring::VRING_USED_F_NO_NOTIFY;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    use super::*;
    use crate::vsock::test_utils::{add_raw_chain, test_memory};

    fn used_flags(mem: &Mem, used_ring: GuestAddress) -> u16 {
        mem.load(used_ring, Ordering::Acquire).expect("used flags")
    }

    /// Serves `queue` as a device that takes each chain; `after_pass` runs at each pass's end.
    /// Returns the heads served and the number of passes.
    fn serve_all(
        queue: &mut Queue,
        mem: &Mem,
        mut after_pass: impl FnMut(usize),
    ) -> (Vec<u16>, usize) {
        let mut served = Vec::new();
        let mut passes = 0;
        serve_with_kicks_off(
            queue,
            mem,
            |err| err,
            |_, pass| {
                match pass {
                    Pass::Chain(chain) => served.push(chain.head_index()),
                    Pass::End => {
                        passes += 1;
                        after_pass(passes);
                    }
                }
                Ok::<_, virtio_queue::Error>(())
            },
        )
        .expect("serving");
        (served, passes)
    }

    /// The race a guest that honours NO_NOTIFY runs into: a kick for a request an earlier
    /// pass took starts a pass that finds nothing; the guest publishes a new request just
    /// after that pass looked, sees kicks off and does not kick. The loop must serve it.
    #[test]
    fn a_request_published_after_an_empty_pass_is_served_without_a_kick() {
        let mem = test_memory();
        let mock = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let mut queue: Queue = mock.create_queue().expect("queue");
        let used_ring = mock.used_addr();
        let (served, passes) = serve_all(&mut queue, &mem, |pass| {
            if pass == 1 {
                // The guest, now: kicks are off, so it publishes without kicking.
                assert_eq!(
                    u32::from(used_flags(&mem, used_ring)) & VRING_USED_F_NO_NOTIFY,
                    VRING_USED_F_NO_NOTIFY,
                    "kicks are off during a pass"
                );
                add_raw_chain(&mock, 0, &[(0x8000, 16, 0, 0)]);
            }
        });
        assert_eq!(
            served.len(),
            1,
            "the request published without a kick was served"
        );
        assert_eq!(passes, 2);
        assert_eq!(
            u32::from(used_flags(&mem, used_ring)) & VRING_USED_F_NO_NOTIFY,
            0,
            "kicks are back on at the end"
        );
    }

    /// An index that claims more than the ring holds makes every pass find nothing while the
    /// look after re-enabling says there is more: the loop gives up after two such passes.
    #[test]
    fn a_lying_index_ends_the_loop_instead_of_spinning() {
        let mem = test_memory();
        let mock = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let mut queue: Queue = mock.create_queue().expect("queue");
        mem.write_obj(1000u16, mock.avail_addr().unchecked_add(2))
            .expect("avail idx");
        let (served, passes) = serve_all(&mut queue, &mem, |_| {});
        assert!(served.is_empty());
        assert_eq!(passes, 2);
    }

    /// Nothing new after the pass: one pass.
    #[test]
    fn a_quiet_queue_takes_one_pass() {
        let mem = test_memory();
        let mock = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let mut queue: Queue = mock.create_queue().expect("queue");
        add_raw_chain(&mock, 0, &[(0x8000, 16, 0, 0)]);
        let (served, passes) = serve_all(&mut queue, &mem, |_| {});
        assert_eq!(served, vec![0]);
        assert_eq!(passes, 1);
    }
}
