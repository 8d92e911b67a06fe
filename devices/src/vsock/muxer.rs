//! The host side of the device: the hybrid-vsock unix socket, the host streams of all
//! connections, and which connection sends the next packet to the guest.
//!
//! Host-initiated: a host process connects to the unix socket at `uds_path`, writes
//! `CONNECT <port>\n` and, once the guest's listener on `<port>` accepts, reads
//! `OK <hostport>\n`; from then on the stream is spliced to the guest socket. Guest-initiated:
//! a connection to host port P is made to the unix socket `<uds_path>_P`. This is the
//! convention of Firecracker and cloud-hypervisor, so their host tools work unchanged.
//!
//! The muxer owns its own epoll set of host file descriptors (the listener, streams still
//! sending their `CONNECT` line, connection streams); the device's event loop polls that one
//! descriptor and calls [`Muxer::process_host_events`] when it is readable. It does not touch
//! the virtqueues: the device hands it parsed packets and rx buffers.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use virtio_queue::Reader;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{ConnKey, Connection, GuestEffect, Interest};
use super::metrics::Counters;
use super::packet::{Header, Op, RxBuffer, SocketType, HDR_LEN, HOST_CID};
use crate::{Error, Result};

/// Most connections at once; more are refused with a reset (guest) or a closed stream (host).
pub const MAX_CONNECTIONS: usize = 1024;

/// Most resets for unknown connections waiting for rx buffers; more are dropped.
const MAX_ORPHAN_RESETS: usize = 1024;

/// Longest `CONNECT <port>\n` line accepted, in bytes.
const MAX_CONNECT_LINE: usize = 32;

/// First host-side port handed out to host-initiated connections; the range above it is
/// ours, the range below is for guest-initiated connections to well-known host ports.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// How long the guest has to answer a host-initiated connection request (Firecracker's
/// figure); the host then sees its stream closed instead of `OK`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Host streams polled per call of [`Muxer::process_host_events`].
const EVENTS_PER_ROUND: usize = 64;

/// What a host file descriptor in the epoll set is.
enum Endpoint {
    Listener,
    /// Ticks while connection requests wait for the guest.
    Timer,
    /// A host stream that has not finished its `CONNECT` line.
    Handshake {
        stream: UnixStream,
        line: Vec<u8>,
    },
    Connection(ConnKey),
}

/// The host side of a vsock device.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    endpoints: HashMap<RawFd, Endpoint>,
    conns: HashMap<ConnKey, Connection>,
    interests: HashMap<ConnKey, Interest>,
    /// Connections that may have a packet for the guest, served round-robin.
    rxq: VecDeque<ConnKey>,
    /// Resets for packets that named no connection.
    orphan_resets: VecDeque<Header>,
    next_local_port: u32,
    counters: Counters,
    timer: TimerFd,
    timer_armed: bool,
    connect_timeout: Duration,
}

impl Muxer {
    /// Binds the hybrid-vsock socket at `uds_path` (a stale socket there is replaced; any other
    /// file is an error) for a guest with context id `guest_cid`.
    pub fn new(uds_path: &Path, guest_cid: u64) -> Result<Self> {
        if let Ok(meta) = std::fs::symlink_metadata(uds_path) {
            if !meta.file_type().is_socket() {
                return Err(Error::UdsPathTaken {
                    path: uds_path.to_owned(),
                });
            }
            std::fs::remove_file(uds_path).map_err(|source| Error::Bind {
                path: uds_path.to_owned(),
                source,
            })?;
        }
        let listener = UnixListener::bind(uds_path).map_err(|source| Error::Bind {
            path: uds_path.to_owned(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| Error::Bind {
                path: uds_path.to_owned(),
                source,
            })?;
        let epoll = Epoll::new().map_err(Error::Epoll)?;
        let timer = TimerFd::new().map_err(|e| Error::Epoll(e.into()))?;
        // Non-blocking, so reading a tick that a re-arm already cleared cannot stall the loop.
        nix::fcntl::fcntl(
            timer.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| Error::Epoll(e.into()))?;
        let mut muxer = Self {
            guest_cid,
            uds_path: uds_path.to_owned(),
            listener,
            epoll,
            endpoints: HashMap::new(),
            conns: HashMap::new(),
            interests: HashMap::new(),
            rxq: VecDeque::new(),
            orphan_resets: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            counters: Counters::default(),
            timer,
            timer_armed: false,
            connect_timeout: CONNECT_TIMEOUT,
        };
        let fd = muxer.listener.as_raw_fd();
        muxer
            .epoll_ctl(ControlOperation::Add, fd, EventSet::IN)
            .map_err(Error::Epoll)?;
        muxer.endpoints.insert(fd, Endpoint::Listener);
        let fd = muxer.timer.as_raw_fd();
        muxer
            .epoll_ctl(ControlOperation::Add, fd, EventSet::IN)
            .map_err(Error::Epoll)?;
        muxer.endpoints.insert(fd, Endpoint::Timer);
        Ok(muxer)
    }

    /// Sets how long the guest has to answer a host-initiated request (default
    /// [`CONNECT_TIMEOUT`]).
    pub fn set_connect_timeout(&mut self, timeout: Duration) {
        self.connect_timeout = timeout;
    }

    /// Resets connection requests the guest left unanswered past their deadline.
    fn expire_requests(&mut self) {
        let now = Instant::now();
        let expired: Vec<ConnKey> = self
            .conns
            .iter_mut()
            .filter_map(|(key, conn)| conn.expire_if_due(now).then_some(*key))
            .collect();
        for key in expired {
            info!(
                ?key,
                "the guest did not answer a host connection request in time"
            );
            self.refresh(key);
        }
        self.arm_timer();
    }

    /// Keeps the timer ticking exactly while some request waits for the guest.
    fn arm_timer(&mut self) {
        let waiting = self.conns.values().any(Connection::awaits_response);
        let result = match (waiting, self.timer_armed) {
            (true, false) => {
                let tick = (self.connect_timeout / 2).max(Duration::from_millis(10));
                self.timer.reset(tick, Some(tick))
            }
            (false, true) => self.timer.clear(),
            _ => return,
        };
        match result {
            Ok(()) => self.timer_armed = waiting,
            Err(err) => warn!(%err, "cannot arm the connection request timer"),
        }
    }

    /// The epoll descriptor that is readable when a host stream needs attention.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// The counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Mutable counters, for the device's queue-level events.
    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    /// Connections currently open.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn epoll_ctl(&self, op: ControlOperation, fd: RawFd, events: EventSet) -> std::io::Result<()> {
        let token =
            u64::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
        self.epoll.ctl(op, fd, EpollEvent::new(events, token))
    }

    /// Handles a well-formed packet the guest sent, with its payload. `scratch` is a buffer of
    /// at least one packet's payload.
    pub fn send_pkt(&mut self, header: &Header, payload: &mut Reader<'_>, scratch: &mut [u8]) {
        if header.src_cid != self.guest_cid || header.dst_cid != HOST_CID {
            self.counters.tx_misaddressed += 1;
            debug!(
                src_cid = header.src_cid,
                dst_cid = header.dst_cid,
                "dropping misaddressed packet"
            );
            return;
        }
        self.counters.tx_packets += 1;
        self.counters.tx_bytes += u64::from(header.len);
        if let SocketType::Unsupported(t) = header.socket_type {
            debug!(
                socket_type = t,
                "resetting packet of unsupported socket type"
            );
            self.orphan_reset(header);
            return;
        }
        let key = ConnKey {
            local_port: header.dst_port,
            peer_port: header.src_port,
        };
        if let Some(conn) = self.conns.get_mut(&key) {
            if conn.on_guest_packet(header, payload, scratch) == GuestEffect::Reset {
                debug!(?key, op = ?header.op, "guest broke the protocol: resetting connection");
            }
            self.refresh(key);
            return;
        }
        match header.op {
            Op::Request => self.guest_connect(header, key),
            Op::Rst => {}
            _ => self.orphan_reset(header),
        }
    }

    fn orphan_reset(&mut self, header: &Header) {
        if header.op != Op::Rst && self.orphan_resets.len() < MAX_ORPHAN_RESETS {
            self.orphan_resets.push_back(header.reset_reply());
        }
    }

    /// The guest connects to host port `key.local_port`: connect to `<uds>_<port>`.
    fn guest_connect(&mut self, header: &Header, key: ConnKey) {
        if self.conns.len() >= MAX_CONNECTIONS {
            self.counters.conns_refused += 1;
            warn!(
                ?key,
                "refusing guest connection: {MAX_CONNECTIONS} connections open"
            );
            self.orphan_reset(header);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", key.local_port));
        let stream = connect_nonblocking(Path::new(&path));
        match stream {
            Ok(stream) => {
                debug!(?key, path = ?path, "guest connected to host listener");
                self.counters.conns_opened += 1;
                let conn = Connection::guest_initiated(stream, key, self.guest_cid, header);
                self.add_connection(conn);
            }
            Err(err) => {
                self.counters.conns_refused += 1;
                debug!(?key, path = ?path, %err, "no host listener for guest connection");
                self.orphan_reset(header);
            }
        }
    }

    fn add_connection(&mut self, conn: Connection) {
        let key = conn.key();
        let fd = conn.stream().as_raw_fd();
        self.endpoints.insert(fd, Endpoint::Connection(key));
        self.conns.insert(key, conn);
        self.interests.insert(key, Interest::default());
        self.refresh(key);
    }

    /// After anything happened to a connection: drop it if done, else bring its epoll
    /// interest up to date and queue it for rx if it has something to send.
    fn refresh(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        let fd = conn.stream().as_raw_fd();
        let old = self.interests.get(&key).copied().unwrap_or_default();
        if conn.is_done() {
            if old != Interest::default() {
                let _ = self.epoll_ctl(ControlOperation::Delete, fd, EventSet::empty());
            }
            self.endpoints.remove(&fd);
            self.interests.remove(&key);
            self.conns.remove(&key);
            debug!(?key, "connection closed");
            return;
        }
        let new = conn.interest();
        let pending = conn.has_pending_rx();
        if new != old {
            let mut events = EventSet::empty();
            if new.readable {
                events |= EventSet::IN | EventSet::READ_HANG_UP;
            }
            if new.writable {
                events |= EventSet::OUT;
            }
            // A stream nobody polls is removed from the set: a hung-up stream would
            // otherwise report EPOLLHUP forever.
            let result = match (old == Interest::default(), new == Interest::default()) {
                (true, false) => self.epoll_ctl(ControlOperation::Add, fd, events),
                (false, true) => self.epoll_ctl(ControlOperation::Delete, fd, events),
                _ => self.epoll_ctl(ControlOperation::Modify, fd, events),
            };
            if let Err(err) = result {
                warn!(?key, %err, "cannot poll host stream");
            }
            self.interests.insert(key, new);
        }
        if pending && !self.rxq.contains(&key) {
            self.rxq.push_back(key);
        }
    }

    /// Forgets every connection after the driver reset the device: their host streams and
    /// the streams still sending a `CONNECT` line are closed (the host sees EOF), and no
    /// packet waits for the guest any more. The hybrid socket keeps listening, for the next
    /// driver.
    pub fn reset(&mut self) {
        let streams: Vec<RawFd> = self
            .endpoints
            .iter()
            .filter(|(_, endpoint)| {
                matches!(
                    endpoint,
                    Endpoint::Handshake { .. } | Endpoint::Connection(_)
                )
            })
            .map(|(fd, _)| *fd)
            .collect();
        for fd in streams {
            // Streams nobody polled are not in the set: the error is expected then.
            let _ = self.epoll_ctl(ControlOperation::Delete, fd, EventSet::empty());
            self.endpoints.remove(&fd);
        }
        let closed = self.conns.len();
        // Dropping a connection closes its stream.
        self.conns.clear();
        self.interests.clear();
        self.rxq.clear();
        self.orphan_resets.clear();
        self.arm_timer();
        if closed > 0 {
            info!(closed, "device reset: host streams closed");
        }
    }

    /// Whether a packet waits for an rx buffer.
    pub fn has_pending_rx(&self) -> bool {
        !self.orphan_resets.is_empty() || !self.rxq.is_empty()
    }

    /// Fills `buf` with the next packet for the guest; returns the bytes written, or `None`
    /// when no connection had anything after all (the buffer is untouched then).
    pub fn recv_pkt(&mut self, buf: &mut RxBuffer<'_>, scratch: &mut [u8]) -> Option<u32> {
        if let Some(header) = self.orphan_resets.pop_front() {
            if buf.writer.write_all(&header.to_bytes()).is_ok() {
                self.counters.rst_sent += 1;
                self.counters.rx_packets += 1;
                return Some(HDR_LEN);
            }
            return None;
        }
        while let Some(key) = self.rxq.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let written = conn.to_guest(buf, scratch);
            self.refresh(key);
            if let Some((len, op)) = written {
                self.counters.rx_packets += 1;
                self.counters.rx_bytes += u64::from(len.saturating_sub(HDR_LEN));
                if op == Op::Rst {
                    self.counters.rst_sent += 1;
                }
                return Some(len);
            }
        }
        None
    }

    /// Handles what the host side has for us: new host connections, `CONNECT` lines, stream
    /// readiness. Returns after one round of at most [`EVENTS_PER_ROUND`] events; epoll is
    /// level-triggered, so the rest is reported again.
    pub fn process_host_events(&mut self) {
        let mut events = [EpollEvent::default(); EVENTS_PER_ROUND];
        let count = match self.epoll.wait(0, &mut events) {
            Ok(count) => count,
            Err(err) if err.kind() == ErrorKind::Interrupted => return,
            Err(err) => {
                warn!(%err, "polling host streams failed");
                return;
            }
        };
        for event in events.iter().take(count) {
            let Ok(fd) = RawFd::try_from(event.data()) else {
                continue;
            };
            let set = EventSet::from_bits_truncate(event.events());
            self.host_event(fd, set);
        }
    }

    fn host_event(&mut self, fd: RawFd, set: EventSet) {
        match self.endpoints.get_mut(&fd) {
            Some(Endpoint::Listener) => self.accept_host(),
            Some(Endpoint::Timer) => {
                let _ = self.timer.wait();
                self.expire_requests();
            }
            Some(Endpoint::Handshake { .. }) => self.read_connect_line(fd),
            Some(Endpoint::Connection(key)) => {
                let key = *key;
                let hangup =
                    set.intersects(EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR);
                if let Some(conn) = self.conns.get_mut(&key) {
                    conn.on_host_ready(
                        set.contains(EventSet::IN) || hangup,
                        set.contains(EventSet::OUT),
                    );
                }
                self.refresh(key);
            }
            None => {}
        }
    }

    fn accept_host(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    if let Err(err) = self.epoll_ctl(ControlOperation::Add, fd, EventSet::IN) {
                        warn!(%err, "cannot poll new host connection");
                        continue;
                    }
                    self.endpoints.insert(
                        fd,
                        Endpoint::Handshake {
                            stream,
                            line: Vec::new(),
                        },
                    );
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => {
                    warn!(%err, path = ?self.uds_path, "accepting host connection failed");
                    return;
                }
            }
        }
    }

    /// Reads a host stream's `CONNECT <port>\n` a byte at a time, so no byte after the line
    /// is taken before the connection exists.
    fn read_connect_line(&mut self, fd: RawFd) {
        let outcome = {
            let Some(Endpoint::Handshake { stream, line }) = self.endpoints.get_mut(&fd) else {
                return;
            };
            loop {
                let mut byte = [0u8; 1];
                match stream.read(&mut byte) {
                    Ok(0) => break Err("closed before its CONNECT line"),
                    Ok(_) if byte[0] == b'\n' => break Ok(parse_connect(line)),
                    Ok(_) if line.len() >= MAX_CONNECT_LINE => break Err("CONNECT line too long"),
                    Ok(_) => line.push(byte[0]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break Err("read error before its CONNECT line"),
                }
            }
        };
        let _ = self.epoll_ctl(ControlOperation::Delete, fd, EventSet::empty());
        let Some(Endpoint::Handshake { stream, line }) = self.endpoints.remove(&fd) else {
            return;
        };
        let port = match outcome {
            Ok(Some(port)) => port,
            Ok(None) | Err(_) => {
                self.counters.host_connects_rejected += 1;
                let why = outcome.err().unwrap_or("malformed CONNECT line");
                info!(line = %String::from_utf8_lossy(&line), "host connection dropped: {why}");
                return;
            }
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            self.counters.host_connects_rejected += 1;
            warn!(
                port,
                "refusing host connection: {MAX_CONNECTIONS} connections open"
            );
            return;
        }
        let Some(local_port) = self.allocate_local_port() else {
            self.counters.host_connects_rejected += 1;
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        debug!(?key, "host connects to guest port {port}");
        self.counters.conns_opened += 1;
        let conn = Connection::host_initiated(stream, key, self.guest_cid, self.connect_timeout);
        self.add_connection(conn);
        self.arm_timer();
    }

    fn allocate_local_port(&mut self) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|k| k.local_port == port) {
                return Some(port);
            }
        }
        None
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

/// Connects to a host listener without ever blocking the worker thread: a listener whose
/// backlog is full answers `EAGAIN`, which refuses the guest's connection like a missing one.
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let fd = socket(AddressFamily::Unix, SockType::Stream, flags, None)?;
    let addr = UnixAddr::new(path)?;
    connect(fd.as_raw_fd(), &addr)?;
    Ok(UnixStream::from(fd))
}

/// Parses `CONNECT <port>` (the newline already stripped).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let port = text.strip_prefix("CONNECT ")?.trim_end_matches('\r');
    port.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_line_parses_only_a_decimal_port() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect(b"connect 5"), None);
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(&[0xff, 0xfe]), None);
    }
}
