//! The guest's side of virtio-vsock for tests that play the guest driver: packet headers as
//! the guest kernel writes them, the packets the device puts in receive buffers, and the
//! host listener that guest connections reach.

use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::backend::BOUND;

pub const GUEST_CID: u64 = 3;
pub const HOST_CID: u64 = 2;
pub const HDR_LEN: usize = 44;
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RW: u16 = 5;
pub const TYPE_STREAM: u16 = 1;
/// Bytes of each receive buffer.
pub const RX_BUF: u32 = 4096;

/// A stream packet header from the guest's `guest_port` to the host's `host_port`,
/// carrying `len` bytes.
pub fn guest_header(op: u16, guest_port: u32, host_port: u32, len: u32) -> Vec<u8> {
    let mut hdr = Vec::with_capacity(HDR_LEN);
    hdr.extend_from_slice(&GUEST_CID.to_le_bytes());
    hdr.extend_from_slice(&HOST_CID.to_le_bytes());
    hdr.extend_from_slice(&guest_port.to_le_bytes());
    hdr.extend_from_slice(&host_port.to_le_bytes());
    hdr.extend_from_slice(&len.to_le_bytes());
    hdr.extend_from_slice(&TYPE_STREAM.to_le_bytes());
    hdr.extend_from_slice(&op.to_le_bytes());
    hdr.extend_from_slice(&0u32.to_le_bytes()); // flags
    hdr.extend_from_slice(&(256 * 1024u32).to_le_bytes()); // buf_alloc
    hdr.extend_from_slice(&0u32.to_le_bytes()); // fwd_cnt
    assert_eq!(hdr.len(), HDR_LEN);
    hdr
}

/// A packet the device put in a receive buffer.
#[derive(Debug)]
pub struct RxPacket {
    pub src_cid: u64,
    pub src_port: u32,
    pub dst_cid: u64,
    pub dst_port: u32,
    pub op: u16,
    pub payload: Vec<u8>,
}

/// The packet of `written` bytes the device put in the receive buffer at `addr`.
pub fn rx_packet(mem: &GuestMemoryMmap, addr: u64, written: u32) -> RxPacket {
    let mut bytes = vec![0u8; written as usize];
    mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
    assert!(bytes.len() >= HDR_LEN, "a packet of {} bytes", bytes.len());
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let len = u32_at(24) as usize;
    RxPacket {
        src_cid: u64::from_le_bytes(bytes[0..8].try_into().unwrap()),
        dst_cid: u64::from_le_bytes(bytes[8..16].try_into().unwrap()),
        src_port: u32_at(16),
        dst_port: u32_at(20),
        op: u16::from_le_bytes(bytes[30..32].try_into().unwrap()),
        payload: bytes[HDR_LEN..HDR_LEN + len].to_vec(),
    }
}

/// Accepts one connection, waiting (bounded) for it.
pub fn accept(listener: &UnixListener) -> UnixStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + BOUND;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                stream.set_read_timeout(Some(BOUND)).unwrap();
                return stream;
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "the device never connected the guest's stream to the host listener"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(err) => panic!("accept: {err}"),
        }
    }
}
