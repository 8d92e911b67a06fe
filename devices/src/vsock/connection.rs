//! One stream connection between a guest socket and a host unix stream: its state machine and
//! its credit-based flow control in both directions (virtio 1.2, 5.10.6.3).
//!
//! Guest to host: the guest may have at most [`CONN_BUF_ALLOC`] bytes in flight that the host
//! stream has not taken yet; bytes the host stream cannot take at once wait in a buffer of that
//! size, and a guest that overruns it (ignores our credit) gets its connection reset.
//! Host to guest: data is read from the host stream only while the guest has credit and an rx
//! buffer is at hand, straight into that buffer, so nothing host-side is queued in memory.
//!
//! This module does not own epoll registrations, the queue of connections with packets to send,
//! or the host listener: that is the muxer's job. It owns what to send next and what to do with
//! what the guest sent.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use virtio_queue::Reader;

use super::packet::{
    Header, Op, RxBuffer, HDR_LEN, HDR_SIZE, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND,
};

/// Receive buffer this device advertises to the guest for each connection, in bytes: the most
/// guest data waiting for a slow host stream.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;

/// Forwarded bytes after which a credit update is sent unasked, so the guest never stalls for
/// want of one.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_ALLOC / 4;

/// A connection's address: `local_port` on the host side, `peer_port` on the guest side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// Port on the host (CID 2) side.
    pub local_port: u32,
    /// Port on the guest side.
    pub peer_port: u32,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The host asked (`CONNECT <port>`); a REQUEST is queued or sent, no RESPONSE yet.
    LocalInit,
    /// Both sides connected; data flows as credit and shutdowns allow.
    Established,
    /// Done: the remaining control packet (a RST) and buffered host-bound bytes go out, then
    /// the muxer drops it.
    Killed,
}

/// Control packets waiting for an rx buffer, sent in this order.
#[derive(Debug, Default, Clone, Copy)]
struct Pending {
    rst: bool,
    request: bool,
    response: bool,
    credit_update: bool,
    credit_request: bool,
    shutdown: u32,
}

impl Pending {
    fn any(&self) -> bool {
        self.rst
            || self.request
            || self.response
            || self.credit_update
            || self.credit_request
            || self.shutdown != 0
    }
}

/// Epoll interest of the host stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Interest {
    /// Wants to read (data for the guest).
    pub readable: bool,
    /// Wants to write (guest data is buffered).
    pub writable: bool,
}

/// What a packet the guest sent did to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestEffect {
    /// Nothing a counter needs to know.
    Handled,
    /// The guest broke the protocol (or the host stream failed) and the connection is reset.
    Reset,
}

/// One guest⇄host stream connection.
pub struct Connection {
    stream: UnixStream,
    key: ConnKey,
    guest_cid: u64,
    state: State,
    pending: Pending,
    /// Guest bytes the host stream has not taken yet; never more than [`CONN_BUF_ALLOC`].
    tx_buf: VecDeque<u8>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    /// The host stream reported readable (or hung up) and has not been read since.
    host_readable: bool,
    credit_requested: bool,
    host_eof: bool,
    peer_shut_send: bool,
    peer_shut_rcv: bool,
    host_write_shut: bool,
    /// How long the guest has to answer our REQUEST.
    connect_timeout: Duration,
    /// When the guest's RESPONSE is overdue (set once the REQUEST is delivered).
    connect_deadline: Option<Instant>,
}

impl Connection {
    /// A connection the host asked for with `CONNECT <peer_port>`: a REQUEST to the guest is
    /// queued. `stream` must be non-blocking.
    /// The guest must answer within `connect_timeout` of receiving the REQUEST.
    pub fn host_initiated(
        stream: UnixStream,
        key: ConnKey,
        guest_cid: u64,
        connect_timeout: Duration,
    ) -> Self {
        let mut conn = Self::new(stream, key, guest_cid, State::LocalInit);
        conn.pending.request = true;
        conn.connect_timeout = connect_timeout;
        conn
    }

    /// A connection the guest asked for (its REQUEST is `request`), already connected to the
    /// host listener: a RESPONSE is queued. `stream` must be non-blocking.
    pub fn guest_initiated(
        stream: UnixStream,
        key: ConnKey,
        guest_cid: u64,
        request: &Header,
    ) -> Self {
        let mut conn = Self::new(stream, key, guest_cid, State::Established);
        conn.update_peer_credit(request);
        conn.pending.response = true;
        conn
    }

    fn new(stream: UnixStream, key: ConnKey, guest_cid: u64, state: State) -> Self {
        Self {
            stream,
            key,
            guest_cid,
            state,
            pending: Pending::default(),
            tx_buf: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            host_readable: false,
            credit_requested: false,
            host_eof: false,
            peer_shut_send: false,
            peer_shut_rcv: false,
            host_write_shut: false,
            connect_timeout: Duration::ZERO,
            connect_deadline: None,
        }
    }

    /// Whether the connection waits for the guest to answer its REQUEST.
    pub fn awaits_response(&self) -> bool {
        self.state == State::LocalInit
    }

    /// Gives up on a REQUEST the guest has not answered by its deadline: the host stream is
    /// closed at once (the host sees EOF instead of `OK`) and the guest gets a RST. Returns
    /// whether it expired.
    pub fn expire_if_due(&mut self, now: Instant) -> bool {
        let due = self.state == State::LocalInit && self.connect_deadline.is_some_and(|d| d <= now);
        if due {
            let _ = self.stream.shutdown(Shutdown::Both);
            self.reset();
        }
        due
    }

    /// The connection's address.
    pub fn key(&self) -> ConnKey {
        self.key
    }

    /// The connection's state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The host stream (for epoll registration).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Bytes the guest can still send before it must wait for a credit update.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn update_peer_credit(&mut self, header: &Header) {
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = Wrapping(header.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// Tears the connection down with a RST to the guest; guest data not yet written to the
    /// host is dropped.
    fn reset(&mut self) -> GuestEffect {
        self.state = State::Killed;
        self.pending = Pending {
            rst: true,
            ..Pending::default()
        };
        self.tx_buf.clear();
        GuestEffect::Reset
    }

    /// Handles a packet the guest sent to this connection, with its payload.
    pub fn on_guest_packet(
        &mut self,
        header: &Header,
        payload: &mut Reader<'_>,
        scratch: &mut [u8],
    ) -> GuestEffect {
        if self.state == State::Killed {
            return GuestEffect::Handled;
        }
        self.update_peer_credit(header);
        match (self.state, header.op) {
            (_, Op::Rst) => {
                // The guest is gone: nothing to acknowledge, nothing more to forward.
                self.state = State::Killed;
                self.pending = Pending::default();
                self.tx_buf.clear();
                GuestEffect::Handled
            }
            (State::LocalInit, Op::Response) => {
                self.state = State::Established;
                // The stream is fresh and empty, so these few bytes fit its socket buffer; a
                // short write means the host side is broken.
                let reply = format!("OK {}\n", self.key.local_port);
                match self.stream.write(reply.as_bytes()) {
                    Ok(n) if n == reply.len() => GuestEffect::Handled,
                    _ => self.reset(),
                }
            }
            (State::Established, Op::Rw) if !self.peer_shut_send => {
                self.forward_to_host(payload, scratch)
            }
            (State::Established, Op::CreditUpdate) => GuestEffect::Handled,
            (State::Established, Op::CreditRequest) => {
                self.pending.credit_update = true;
                GuestEffect::Handled
            }
            (State::Established, Op::Shutdown) => {
                self.peer_shut_rcv |= header.flags & SHUTDOWN_RCV != 0;
                self.peer_shut_send |= header.flags & SHUTDOWN_SEND != 0;
                if self.peer_shut_rcv && self.peer_shut_send {
                    // Full close: acknowledge with a RST, but still deliver what the guest
                    // sent before closing.
                    self.state = State::Killed;
                    self.pending = Pending {
                        rst: true,
                        ..Pending::default()
                    };
                }
                self.flush_to_host()
            }
            _ => self.reset(),
        }
    }

    /// Guest data for the host stream: written at once where the stream takes it, buffered
    /// otherwise.
    fn forward_to_host(&mut self, payload: &mut Reader<'_>, scratch: &mut [u8]) -> GuestEffect {
        let len = payload.available_bytes().min(scratch.len());
        let Some(buf) = scratch.get_mut(..len) else {
            return self.reset();
        };
        if payload.read_exact(buf).is_err() {
            return self.reset();
        }
        let buffered = self.tx_buf.len().saturating_add(len);
        if buffered > CONN_BUF_ALLOC as usize {
            // The guest sent more than the credit we gave it.
            return self.reset();
        }
        let mut written = 0;
        if self.tx_buf.is_empty() {
            match self.stream.write(buf) {
                Ok(n) => written = n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return self.reset(),
            }
        }
        if let Some(rest) = buf.get(written..) {
            self.tx_buf.extend(rest);
        }
        self.forwarded(written);
        GuestEffect::Handled
    }

    fn forwarded(&mut self, bytes: usize) {
        self.fwd_cnt += Wrapping(u32::try_from(bytes).unwrap_or(u32::MAX));
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD
            && self.state != State::Killed
        {
            self.pending.credit_update = true;
        }
    }

    /// Writes buffered guest data to the host stream as far as it takes it, and closes the
    /// host stream's write side once the guest has shut down sending and all is written.
    fn flush_to_host(&mut self) -> GuestEffect {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.write(front) {
                Ok(0) => return self.reset(),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.forwarded(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.reset(),
            }
        }
        if self.tx_buf.is_empty() && self.peer_shut_send && !self.host_write_shut {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        GuestEffect::Handled
    }

    /// The host stream is ready: `readable` (or hung up) and/or `writable`.
    pub fn on_host_ready(&mut self, readable: bool, writable: bool) {
        if writable {
            let _ = self.flush_to_host();
        }
        if readable && self.state == State::Established {
            self.host_readable = true;
            if self.peer_credit() == 0 && !self.credit_requested {
                self.credit_requested = true;
                self.pending.credit_request = true;
            }
        }
    }

    /// Whether reading from the host stream can produce a packet now.
    fn can_send_data(&self) -> bool {
        self.state == State::Established
            && self.host_readable
            && !self.host_eof
            && !self.peer_shut_rcv
            && self.peer_credit() > 0
    }

    /// Whether the connection has a packet for the guest.
    pub fn has_pending_rx(&self) -> bool {
        self.pending.any() || self.can_send_data()
    }

    /// What the host stream should be polled for.
    pub fn interest(&self) -> Interest {
        Interest {
            readable: self.state == State::Established
                && !self.host_readable
                && !self.host_eof
                && !self.peer_shut_rcv
                && self.peer_credit() > 0,
            writable: !self.tx_buf.is_empty(),
        }
    }

    /// Whether the muxer can drop the connection: killed, its RST sent, its buffer written.
    pub fn is_done(&self) -> bool {
        self.state == State::Killed && !self.pending.any() && self.tx_buf.is_empty()
    }

    /// Fills `buf` with the next packet for the guest, if any; returns the bytes written
    /// (header and payload) and the packet's operation.
    pub fn to_guest(&mut self, buf: &mut RxBuffer<'_>, scratch: &mut [u8]) -> Option<(u32, Op)> {
        let op = if self.pending.rst {
            self.pending = Pending::default();
            Op::Rst
        } else if std::mem::take(&mut self.pending.request) {
            Op::Request
        } else if std::mem::take(&mut self.pending.response) {
            Op::Response
        } else if std::mem::take(&mut self.pending.credit_update) {
            Op::CreditUpdate
        } else if std::mem::take(&mut self.pending.credit_request) {
            Op::CreditRequest
        } else if self.pending.shutdown != 0 {
            Op::Shutdown
        } else if self.can_send_data() {
            return self.data_to_guest(buf, scratch);
        } else {
            return None;
        };
        let mut header = self.header(op);
        if op == Op::Request {
            self.connect_deadline = Some(Instant::now() + self.connect_timeout);
        }
        if op == Op::Shutdown {
            header.flags = std::mem::take(&mut self.pending.shutdown);
        }
        self.write_header(buf, &header).then_some((HDR_LEN, op))
    }

    fn data_to_guest(&mut self, buf: &mut RxBuffer<'_>, scratch: &mut [u8]) -> Option<(u32, Op)> {
        let room = buf
            .payload_room()
            .min(self.peer_credit() as usize)
            .min(scratch.len());
        let chunk = scratch.get_mut(..room)?;
        let read = loop {
            match self.stream.read(chunk) {
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        match read {
            Ok(0) => {
                // The host closed its write side: tell the guest it gets no more data. If the
                // guest had already done the same, the connection is over.
                self.host_eof = true;
                self.host_readable = false;
                if self.peer_shut_send {
                    self.state = State::Killed;
                    let header = self.header(Op::Rst);
                    return self
                        .write_header(buf, &header)
                        .then_some((HDR_LEN, Op::Rst));
                }
                let mut header = self.header(Op::Shutdown);
                header.flags = SHUTDOWN_SEND;
                self.write_header(buf, &header)
                    .then_some((HDR_LEN, Op::Shutdown))
            }
            Ok(n) => {
                let data = chunk.get(..n)?;
                let mut header = self.header(Op::Rw);
                header.len = u32::try_from(n).ok()?;
                let mut data_writer = buf.writer.split_at(HDR_SIZE).ok()?;
                data_writer.write_all(data).ok()?;
                self.rx_cnt += Wrapping(header.len);
                // A full read suggests more is waiting; otherwise let epoll say when.
                self.host_readable = n == room;
                if self.host_readable && self.peer_credit() == 0 && !self.credit_requested {
                    // More to send but the guest's buffer is full: ask where it stands.
                    self.credit_requested = true;
                    self.pending.credit_request = true;
                }
                self.write_header(buf, &header)
                    .then(|| (HDR_LEN + header.len, Op::Rw))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.host_readable = false;
                None
            }
            Err(_) => {
                self.reset();
                self.pending = Pending::default();
                let header = self.header(Op::Rst);
                self.write_header(buf, &header)
                    .then_some((HDR_LEN, Op::Rst))
            }
        }
    }

    fn header(&mut self, op: Op) -> Header {
        let mut header = Header::control(
            (HOST_CID, self.key.local_port),
            (self.guest_cid, self.key.peer_port),
            op,
        );
        header.buf_alloc = CONN_BUF_ALLOC;
        header.fwd_cnt = self.fwd_cnt.0;
        self.last_fwd_cnt_sent = self.fwd_cnt;
        header
    }

    fn write_header(&self, buf: &mut RxBuffer<'_>, header: &Header) -> bool {
        buf.writer.write_all(&header.to_bytes()).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_credit_is_buffer_minus_bytes_in_flight_and_never_negative() {
        let (a, _b) = UnixStream::pair().expect("socketpair");
        let key = ConnKey {
            local_port: 1,
            peer_port: 2,
        };
        let mut conn = Connection::host_initiated(a, key, 3, Duration::from_secs(1));
        conn.peer_buf_alloc = 100;
        conn.rx_cnt = Wrapping(u32::MAX - 10);
        conn.peer_fwd_cnt = Wrapping(u32::MAX - 40);
        assert_eq!(conn.peer_credit(), 70, "counters wrap modulo 2^32");
        conn.rx_cnt = Wrapping(500);
        conn.peer_fwd_cnt = Wrapping(0);
        assert_eq!(
            conn.peer_credit(),
            0,
            "a guest that shrank its buffer gets no data"
        );
    }
}
