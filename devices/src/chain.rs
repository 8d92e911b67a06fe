//! Validation of a guest descriptor chain before a device acts on it.
//!
//! The guest owns the descriptor table and may write anything into it: chains that loop, that
//! point outside guest memory, that mix directions or that claim gigabytes. `virtio-queue`'s
//! chain iterator stops at such chains rather than reporting them, so a device that simply
//! iterates could act on a truncated request. [`validate`] walks the whole chain once and
//! accepts it only if every descriptor is in guest memory, has the direction the device
//! expects, and the chain ends properly within the bounds the device sets. Devices then read or
//! write it through `virtio-queue`'s `Reader`/`Writer`.
//!
//! This module owns that check only; what a valid chain means is the device's business.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddress, GuestMemory, Permissions};

/// Which way the device expects the buffers of a chain to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Every descriptor is device-readable (the driver sends data to the device).
    DeviceReadable,
    /// Every descriptor is device-writable (the device fills buffers for the driver).
    DeviceWritable,
    /// Device-readable descriptors first, then device-writable ones (a request and room for
    /// its answer, as virtio-blk uses; the spec forbids a readable descriptor after a writable
    /// one). Either part may be empty.
    ReadableThenWritable,
}

/// Why a chain was refused. Each variant names the chain by its head index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The chain has no descriptor the device can use (for example a lone indirect descriptor
    /// whose table could not be read).
    #[error("descriptor chain {head} is empty")]
    Empty {
        /// Head index of the chain.
        head: u16,
    },
    /// The chain did not end: it loops, its `next` index is outside the table, it nests
    /// indirect tables, or it has more descriptors than the queue has entries.
    #[error("descriptor chain {head} does not end after {descriptors} descriptors (a loop, a bad next index or a bad indirect table)")]
    Unterminated {
        /// Head index of the chain.
        head: u16,
        /// Descriptors seen before the walk stopped.
        descriptors: usize,
    },
    /// A descriptor has the wrong direction flag for this queue.
    #[error(
        "descriptor {position} of chain {head} has the wrong direction (expected {expected:?})"
    )]
    WrongDirection {
        /// Head index of the chain.
        head: u16,
        /// Position of the descriptor in the chain, from 0.
        position: usize,
        /// The direction the device wanted.
        expected: Direction,
    },
    /// A descriptor points (partly) outside guest memory.
    #[error("descriptor {position} of chain {head} points outside guest memory ({addr:#x}, {len} bytes)")]
    OutsideMemory {
        /// Head index of the chain.
        head: u16,
        /// Position of the descriptor in the chain, from 0.
        position: usize,
        /// Guest physical address of the buffer.
        addr: u64,
        /// Length of the buffer in bytes.
        len: u32,
    },
    /// The buffers add up to more than the device accepts.
    #[error("descriptor chain {head} holds more than {max} bytes")]
    TooLong {
        /// Head index of the chain.
        head: u16,
        /// The device's limit in bytes.
        max: usize,
    },
}

/// A chain that passed [`validate`]: its total length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidChain {
    /// Sum of the lengths of all descriptors, in bytes, at most the `max_len` given.
    pub len: usize,
    /// Bytes in device-readable descriptors (the rest of `len` is device-writable).
    pub readable: usize,
}

/// Walks `chain` (a clone; the caller keeps the original for reading or writing) and checks
/// every descriptor against `mem`, `direction` and `max_len` (bytes).
pub fn validate<M>(
    chain: &DescriptorChain<M>,
    mem: &M::Target,
    direction: Direction,
    max_len: usize,
) -> Result<ValidChain, ChainError>
where
    M: Deref + Clone,
    M::Target: GuestMemory,
{
    walk(chain, mem, direction, max_len, |_, _| {})
}

/// A buffer of a chain: its guest address and length in bytes.
pub type Buffer = (GuestAddress, usize);

/// Like [`validate`], and also returns every buffer of the chain as the same walk read it,
/// so that a guest rewriting its descriptor table meanwhile cannot make the device use a
/// buffer that was not checked (a device that acts on the buffers itself, rather than through
/// `virtio-queue`'s `Reader`/`Writer`, uses this).
pub fn validate_buffers<M>(
    chain: &DescriptorChain<M>,
    mem: &M::Target,
    direction: Direction,
    max_len: usize,
) -> Result<(ValidChain, Vec<Buffer>), ChainError>
where
    M: Deref + Clone,
    M::Target: GuestMemory,
{
    let mut buffers = Vec::new();
    let valid = walk(chain, mem, direction, max_len, |addr, len| {
        if len > 0 {
            buffers.push((addr, len));
        }
    })?;
    Ok((valid, buffers))
}

fn walk<M>(
    chain: &DescriptorChain<M>,
    mem: &M::Target,
    direction: Direction,
    max_len: usize,
    mut buffer: impl FnMut(GuestAddress, usize),
) -> Result<ValidChain, ChainError>
where
    M: Deref + Clone,
    M::Target: GuestMemory,
{
    let head = chain.head_index();
    let mut total: usize = 0;
    let mut readable: usize = 0;
    let mut seen_writable = false;
    let mut descriptors = 0;
    let mut ended = false;
    for (position, desc) in chain.clone().enumerate() {
        descriptors = position + 1;
        let writable = desc.is_write_only();
        let expected = match direction {
            Direction::DeviceReadable if writable => Some(Direction::DeviceReadable),
            Direction::DeviceWritable if !writable => Some(Direction::DeviceWritable),
            Direction::ReadableThenWritable if seen_writable && !writable => {
                Some(Direction::DeviceWritable)
            }
            _ => None,
        };
        if let Some(expected) = expected {
            return Err(ChainError::WrongDirection {
                head,
                position,
                expected,
            });
        }
        seen_writable |= writable;
        let len = desc.len();
        let len_bytes =
            usize::try_from(len).map_err(|_| ChainError::TooLong { head, max: max_len })?;
        total = total
            .checked_add(len_bytes)
            .filter(|t| *t <= max_len)
            .ok_or(ChainError::TooLong { head, max: max_len })?;
        if !writable {
            readable = total;
        }
        let permissions = if writable {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if len_bytes > 0 && !mem.check_range(desc.addr(), len_bytes, permissions) {
            return Err(outside(head, position, desc.addr(), len));
        }
        buffer(desc.addr(), len_bytes);
        ended = !desc.has_next();
    }
    if descriptors == 0 {
        return Err(ChainError::Empty { head });
    }
    if !ended {
        return Err(ChainError::Unterminated { head, descriptors });
    }
    Ok(ValidChain {
        len: total,
        readable,
    })
}

fn outside(head: u16, position: usize, addr: GuestAddress, len: u32) -> ChainError {
    ChainError::OutsideMemory {
        head,
        position,
        addr: addr.0,
        len,
    }
}
