//! The virtio-vsock packet header (virtio 1.2, section 5.10.6) and the typed view of it that
//! the rest of the device works with.
//!
//! The header is 44 little-endian bytes that the guest fully controls. [`Header::parse`] turns
//! them into typed values: operations and socket types the device does not know become
//! `Unknown`/`Unsupported` variants rather than errors, so the muxer can answer them (with a
//! reset) instead of failing. Parsing a whole packet out of a descriptor chain, with its length
//! checks, is [`TxPacket::from_chain`]; this module does not decide what a packet means for a
//! connection.

use std::io::Read;

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use crate::chain::{self, ChainError, Direction};

/// Guest memory as the vhost-user daemon maps it.
pub type Mem = GuestMemoryMmap<()>;

/// Size of the packet header in bytes.
pub const HDR_LEN: u32 = 44;

/// [`HDR_LEN`] as a buffer size.
pub const HDR_SIZE: usize = HDR_LEN as usize;

/// Largest payload of one packet, in bytes (Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`). Longer
/// packets from the guest are dropped; packets to the guest are cut to this size.
pub const MAX_PKT_DATA: usize = 64 * 1024;

/// The host's context id, fixed by the virtio spec.
pub const HOST_CID: u64 = 2;

/// `flags` bit of a `SHUTDOWN`: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `flags` bit of a `SHUTDOWN`: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// The operation of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Connection request.
    Request,
    /// Connection accepted.
    Response,
    /// Connection refused or torn down.
    Rst,
    /// Half or full close; see [`SHUTDOWN_RCV`] and [`SHUTDOWN_SEND`].
    Shutdown,
    /// Stream data.
    Rw,
    /// The sender's receive credit changed.
    CreditUpdate,
    /// The sender asks for a credit update.
    CreditRequest,
    /// An operation this device does not know.
    Unknown(u16),
}

impl Op {
    fn from_raw(raw: u16) -> Self {
        match raw {
            1 => Self::Request,
            2 => Self::Response,
            3 => Self::Rst,
            4 => Self::Shutdown,
            5 => Self::Rw,
            6 => Self::CreditUpdate,
            7 => Self::CreditRequest,
            other => Self::Unknown(other),
        }
    }

    fn raw(self) -> u16 {
        match self {
            Self::Request => 1,
            Self::Response => 2,
            Self::Rst => 3,
            Self::Shutdown => 4,
            Self::Rw => 5,
            Self::CreditUpdate => 6,
            Self::CreditRequest => 7,
            Self::Unknown(other) => other,
        }
    }
}

/// The socket type of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketType {
    /// `VIRTIO_VSOCK_TYPE_STREAM`, the only type this device carries.
    Stream,
    /// Any other type (SEQPACKET, or garbage): answered with a reset.
    Unsupported(u16),
}

impl SocketType {
    fn from_raw(raw: u16) -> Self {
        if raw == 1 {
            Self::Stream
        } else {
            Self::Unsupported(raw)
        }
    }

    fn raw(self) -> u16 {
        match self {
            Self::Stream => 1,
            Self::Unsupported(other) => other,
        }
    }
}

/// A packet header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length in bytes, as the sender claims it.
    pub len: u32,
    /// Socket type.
    pub socket_type: SocketType,
    /// Operation.
    pub op: Op,
    /// Operation flags (shutdown bits).
    pub flags: u32,
    /// The sender's receive buffer size in bytes.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer, modulo 2^32.
    pub fwd_cnt: u32,
}

impl Header {
    /// Decodes the 44 header bytes. Never fails: unknown values become typed unknowns.
    pub fn parse(raw: &[u8; HDR_SIZE]) -> Self {
        let (src_cid, rest) = split::<8>(raw);
        let (dst_cid, rest) = split::<8>(rest);
        let (src_port, rest) = split::<4>(rest);
        let (dst_port, rest) = split::<4>(rest);
        let (len, rest) = split::<4>(rest);
        let (socket_type, rest) = split::<2>(rest);
        let (op, rest) = split::<2>(rest);
        let (flags, rest) = split::<4>(rest);
        let (buf_alloc, rest) = split::<4>(rest);
        let (fwd_cnt, _) = split::<4>(rest);
        Self {
            src_cid: u64::from_le_bytes(src_cid),
            dst_cid: u64::from_le_bytes(dst_cid),
            src_port: u32::from_le_bytes(src_port),
            dst_port: u32::from_le_bytes(dst_port),
            len: u32::from_le_bytes(len),
            socket_type: SocketType::from_raw(u16::from_le_bytes(socket_type)),
            op: Op::from_raw(u16::from_le_bytes(op)),
            flags: u32::from_le_bytes(flags),
            buf_alloc: u32::from_le_bytes(buf_alloc),
            fwd_cnt: u32::from_le_bytes(fwd_cnt),
        }
    }

    /// Encodes the header into its 44 wire bytes.
    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut out = [0u8; HDR_SIZE];
        let fields: [&[u8]; 10] = [
            &self.src_cid.to_le_bytes(),
            &self.dst_cid.to_le_bytes(),
            &self.src_port.to_le_bytes(),
            &self.dst_port.to_le_bytes(),
            &self.len.to_le_bytes(),
            &self.socket_type.raw().to_le_bytes(),
            &self.op.raw().to_le_bytes(),
            &self.flags.to_le_bytes(),
            &self.buf_alloc.to_le_bytes(),
            &self.fwd_cnt.to_le_bytes(),
        ];
        let mut at = 0;
        for field in fields {
            let end = at + field.len();
            out[at..end].copy_from_slice(field);
            at = end;
        }
        out
    }

    /// A stream packet with no payload and zero credit fields, for the muxer to fill in.
    pub fn control(src: (u64, u32), dst: (u64, u32), op: Op) -> Self {
        Self {
            src_cid: src.0,
            dst_cid: dst.0,
            src_port: src.1,
            dst_port: dst.1,
            len: 0,
            socket_type: SocketType::Stream,
            op,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        }
    }

    /// The reset that answers this packet: addresses swapped.
    pub fn reset_reply(&self) -> Self {
        Self::control(
            (self.dst_cid, self.dst_port),
            (self.src_cid, self.src_port),
            Op::Rst,
        )
    }
}

fn split<const N: usize>(bytes: &[u8]) -> ([u8; N], &[u8]) {
    let mut head = [0u8; N];
    let (front, rest) = bytes.split_at(N);
    head.copy_from_slice(front);
    (head, rest)
}

/// Why a packet from the guest was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The descriptor chain itself is malformed.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The chain is shorter than a header.
    #[error("packet of {len} bytes is shorter than the {HDR_SIZE}-byte header")]
    ShortHeader {
        /// Bytes in the chain.
        len: usize,
    },
    /// The header claims more payload than the chain carries or the device accepts.
    #[error(
        "packet claims {claimed} payload bytes but carries {carried} (at most {MAX_PKT_DATA})"
    )]
    BadLength {
        /// `len` from the header.
        claimed: u32,
        /// Bytes after the header in the chain.
        carried: usize,
    },
    /// A control packet carries a payload.
    #[error("{op:?} packet carries {len} payload bytes")]
    ControlWithPayload {
        /// The operation.
        op: Op,
        /// `len` from the header.
        len: u32,
    },
    /// Guest memory could not be read although the chain was validated.
    #[error("reading the packet from guest memory")]
    Memory,
}

/// A packet the guest sent on the tx queue: its header and a reader over exactly its payload.
pub struct TxPacket<'a> {
    /// The decoded header.
    pub header: Header,
    /// The payload, `header.len` bytes (zero for control packets).
    pub payload: Reader<'a>,
}

impl<'a> TxPacket<'a> {
    /// Parses a tx chain: validated first (device-readable, in memory, terminated, at most a
    /// header plus [`MAX_PKT_DATA`]), then the header is read and its length checked against
    /// what the chain carries.
    pub fn from_chain(chain: DescriptorChain<&'a Mem>, mem: &'a Mem) -> Result<Self, PacketError> {
        let valid = chain::validate(
            &chain,
            mem,
            Direction::DeviceReadable,
            HDR_SIZE + MAX_PKT_DATA,
        )?;
        if valid.len < HDR_SIZE {
            return Err(PacketError::ShortHeader { len: valid.len });
        }
        let mut reader = Reader::new(mem, chain).map_err(|_| PacketError::Memory)?;
        let mut raw = [0u8; HDR_SIZE];
        reader
            .read_exact(&mut raw)
            .map_err(|_| PacketError::Memory)?;
        let header = Header::parse(&raw);
        let carried = reader.available_bytes();
        let claimed = usize::try_from(header.len).unwrap_or(usize::MAX);
        if header.op != Op::Rw && header.len != 0 {
            return Err(PacketError::ControlWithPayload {
                op: header.op,
                len: header.len,
            });
        }
        if claimed > carried || claimed > MAX_PKT_DATA {
            return Err(PacketError::BadLength {
                claimed: header.len,
                carried,
            });
        }
        let payload = if claimed < carried {
            let mut payload = reader;
            let _ = payload.split_at(claimed).map_err(|_| PacketError::Memory)?;
            payload
        } else {
            reader
        };
        Ok(Self { header, payload })
    }
}

/// An rx buffer the guest offered: a writer over its validated, device-writable chain.
pub struct RxBuffer<'a> {
    /// Where the packet goes: header, then payload.
    pub writer: Writer<'a>,
}

impl<'a> RxBuffer<'a> {
    /// Validates an rx chain (device-writable, in memory, terminated, room for a header).
    /// Chains longer than a header plus [`MAX_PKT_DATA`] are accepted and only that much used.
    pub fn from_chain(chain: DescriptorChain<&'a Mem>, mem: &'a Mem) -> Result<Self, PacketError> {
        let valid = chain::validate(&chain, mem, Direction::DeviceWritable, u32::MAX as usize)?;
        if valid.len < HDR_SIZE {
            return Err(PacketError::ShortHeader { len: valid.len });
        }
        let writer = Writer::new(mem, chain).map_err(|_| PacketError::Memory)?;
        Ok(Self { writer })
    }

    /// Payload bytes this buffer can take after the header, capped at [`MAX_PKT_DATA`].
    pub fn payload_room(&self) -> usize {
        self.writer
            .available_bytes()
            .saturating_sub(HDR_SIZE)
            .min(MAX_PKT_DATA)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any 44 bytes decode to typed values and encode back to the same bytes: unknown
        /// operations and socket types are kept, not rejected or altered.
        #[test]
        fn header_decoding_is_total_and_lossless(raw in proptest::collection::vec(proptest::prelude::any::<u8>(), HDR_SIZE)) {
            let mut bytes = [0u8; HDR_SIZE];
            bytes.copy_from_slice(&raw);
            proptest::prop_assert_eq!(Header::parse(&bytes).to_bytes(), bytes);
        }
    }

    #[test]
    fn header_fields_sit_where_the_virtio_spec_puts_them() {
        let mut header = Header::control((3, 1024), (2, 5000), Op::Shutdown);
        header.len = 0x11;
        header.flags = SHUTDOWN_SEND;
        header.buf_alloc = 0x2233;
        header.fwd_cnt = 0x4455;
        let bytes = header.to_bytes();
        assert_eq!(bytes[0..8], 3u64.to_le_bytes());
        assert_eq!(bytes[8..16], 2u64.to_le_bytes());
        assert_eq!(bytes[16..20], 1024u32.to_le_bytes());
        assert_eq!(bytes[20..24], 5000u32.to_le_bytes());
        assert_eq!(bytes[24..28], 0x11u32.to_le_bytes());
        assert_eq!(bytes[28..30], 1u16.to_le_bytes(), "type STREAM");
        assert_eq!(bytes[30..32], 4u16.to_le_bytes(), "op SHUTDOWN");
        assert_eq!(bytes[32..36], 2u32.to_le_bytes());
        assert_eq!(bytes[36..40], 0x2233u32.to_le_bytes());
        assert_eq!(bytes[40..44], 0x4455u32.to_le_bytes());
    }
}
