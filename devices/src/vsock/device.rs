//! The vsock device model: moving packets between the virtqueues and the muxer.
//!
//! The tx queue carries guest packets: each chain is parsed and checked
//! ([`TxPacket::from_chain`]); malformed ones are counted and returned unused, never acted on.
//! The rx queue carries guest buffers that the muxer fills. Notification suppression follows
//! virtio's pattern (disable, drain, re-enable, look again), which with `EVENT_IDX` keeps the
//! guest from kicking while we already work. The event queue (transport resets, for live
//! migration) is never used.
//!
//! This module knows nothing of vhost-user: it works on a `virtio_queue::Queue` and guest
//! memory, so unit tests drive it with `virtio-queue`'s mock queue. The vhost-user wiring is in
//! `backend`.

use tracing::debug;
use virtio_queue::{Queue, QueueOwnedT, QueueT};

use super::metrics::Counters;
use super::muxer::Muxer;
use super::packet::{Mem, RxBuffer, TxPacket, MAX_PKT_DATA};
use crate::{Error, Result};

/// Index of the rx queue (device to guest).
pub const RX_QUEUE: usize = 0;
/// Index of the tx queue (guest to device).
pub const TX_QUEUE: usize = 1;
/// Index of the event queue.
pub const EVENT_QUEUE: usize = 2;
/// Number of virtqueues of a vsock device.
pub const NUM_QUEUES: usize = 3;

/// A vsock device: the muxer and the scratch buffer packets pass through.
pub struct VsockDevice {
    muxer: Muxer,
    /// One packet's payload: guest data on its way to a host stream and back.
    scratch: Vec<u8>,
}

impl VsockDevice {
    /// A device whose host side is `muxer`.
    pub fn new(muxer: Muxer) -> Self {
        Self {
            muxer,
            scratch: vec![0; MAX_PKT_DATA],
        }
    }

    /// The host side.
    pub fn muxer(&mut self) -> &mut Muxer {
        &mut self.muxer
    }

    /// The counters so far.
    pub fn counters(&self) -> Counters {
        self.muxer.counters()
    }

    /// Takes every packet the guest put on the tx queue. Returns whether used buffers were
    /// added (the caller decides whether to notify).
    pub fn process_tx(&mut self, queue: &mut Queue, mem: &Mem) -> Result<bool> {
        let mut used = false;
        if !queue.ready() {
            return Ok(false);
        }
        loop {
            queue.disable_notification(mem).map_err(Error::Queue)?;
            let mut popped = false;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                popped = true;
                let head = chain.head_index();
                match TxPacket::from_chain(chain, mem) {
                    Ok(mut packet) => {
                        self.muxer
                            .send_pkt(&packet.header, &mut packet.payload, &mut self.scratch)
                    }
                    Err(err) => {
                        self.muxer.counters_mut().tx_malformed += 1;
                        debug!(head, %err, "dropping malformed tx packet");
                    }
                }
                queue.add_used(mem, head, 0).map_err(Error::Queue)?;
                used = true;
            }
            // More work after re-enabling means the guest added packets meanwhile; if this
            // round found none, the ring's index lies and looking again would spin.
            if !queue.enable_notification(mem).map_err(Error::Queue)? || !popped {
                return Ok(used);
            }
        }
    }

    /// Fills rx buffers with the packets the muxer has for the guest, while both last.
    pub fn process_rx(&mut self, queue: &mut Queue, mem: &Mem) -> Result<bool> {
        let mut used = false;
        if !queue.ready() {
            return Ok(false);
        }
        let mut rearmed = false;
        while self.muxer.has_pending_rx() {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                // Out of buffers: ask for a kick when the guest adds some, and look once more
                // in case it added some meanwhile. Only once: a ring whose index lies must not
                // keep this thread spinning.
                if !rearmed && queue.enable_notification(mem).map_err(Error::Queue)? {
                    rearmed = true;
                    continue;
                }
                break;
            };
            let head = chain.head_index();
            match RxBuffer::from_chain(chain, mem) {
                Ok(mut buf) => match self.muxer.recv_pkt(&mut buf, &mut self.scratch) {
                    Some(len) => {
                        queue.add_used(mem, head, len).map_err(Error::Queue)?;
                        used = true;
                    }
                    None => {
                        // Nothing to send after all: the buffer goes back for the next packet.
                        queue.go_to_previous_position();
                        break;
                    }
                },
                Err(err) => {
                    self.muxer.counters_mut().rx_malformed += 1;
                    debug!(head, %err, "returning malformed rx buffer unused");
                    queue.add_used(mem, head, 0).map_err(Error::Queue)?;
                    used = true;
                }
            }
        }
        Ok(used)
    }
}
