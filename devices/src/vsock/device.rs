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
use crate::notify::Pass;
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
        crate::notify::serve_with_kicks_off(queue, mem, Error::Queue, |queue, pass| {
            let Pass::Chain(chain) = pass else {
                return Ok(());
            };
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
            Ok(())
        })?;
        Ok(used)
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

#[cfg(test)]
// Test values (descriptor flags, header sizes, small lengths) all fit their targets.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::time::Duration;

    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };

    use super::*;
    use crate::vsock::connection::CONN_BUF_ALLOC;
    use crate::vsock::packet::{Header, Op, HDR_SIZE, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND};
    use crate::vsock::test_utils::{
        guest_packet, test_device, test_memory, MockGuest, TestDir, GUEST_CID, MEM_SIZE,
    };

    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;

    /// Polls the host side until the device has something for the guest (bounded).
    fn pump_host(device: &mut VsockDevice) {
        for _ in 0..200 {
            device.muxer().process_host_events();
            if device.muxer().has_pending_rx() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A host process connects with `CONNECT <port>` and the guest accepts: returns the
    /// host stream and the host-side port.
    fn host_connect(
        dir: &TestDir,
        device: &mut VsockDevice,
        guest: &mut MockGuest<'_>,
        port: u32,
    ) -> (UnixStream, u32) {
        let mut host =
            UnixStream::connect(dir.path().join("v.sock")).expect("connect to the hybrid socket");
        host.write_all(format!("CONNECT {port}\n").as_bytes())
            .expect("CONNECT");
        pump_host(device);
        let packets = guest.receive(device);
        assert_eq!(packets.len(), 1, "one REQUEST: {packets:?}");
        let (request, _) = packets[0];
        assert_eq!(request.op, Op::Request);
        assert_eq!(
            (request.src_cid, request.dst_cid, request.dst_port),
            (HOST_CID, GUEST_CID, port)
        );
        assert_eq!(request.buf_alloc, CONN_BUF_ALLOC);
        guest.send(&guest_packet(Op::Response, port, request.src_port), &[]);
        guest.kick_tx(device);
        host.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut line = [0u8; 64];
        let n = host.read(&mut line).expect("OK line");
        assert_eq!(&line[..n], format!("OK {}\n", request.src_port).as_bytes());
        (host, request.src_port)
    }

    #[test]
    fn host_connect_is_requested_from_the_guest_and_answered_ok_on_response() {
        let dir = TestDir::new("connect");
        let mem = test_memory();
        let mut guest = MockGuest::new(&mem);
        let mut device = test_device(&dir);
        let (_host, local_port) = host_connect(&dir, &mut device, &mut guest, 1234);
        assert!(
            local_port >= 1 << 30,
            "host-side ports come from the upper range"
        );
        assert_eq!(device.muxer().connection_count(), 1);
        assert_eq!(device.counters().conns_opened, 1);
    }

    #[test]
    fn muxer_reset_closes_host_streams_forgets_pending_packets_and_keeps_listening() {
        let dir = TestDir::new("reset");
        let mem = test_memory();
        let mut guest = MockGuest::new(&mem);
        let mut device = test_device(&dir);
        let (mut host, _) = host_connect(&dir, &mut device, &mut guest, 5);
        // A host stream still in its CONNECT line, and a reset waiting for the guest.
        let mut half = UnixStream::connect(dir.path().join("v.sock")).expect("connect");
        half.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        half.write_all(b"CONN").expect("half a line");
        device.muxer().process_host_events();
        guest.send(&guest_packet(Op::Request, 4000, 7008), &[]); // no listener
        guest.kick_tx(&mut device);
        assert!(device.muxer().has_pending_rx());

        device.muxer().reset();
        assert_eq!(device.muxer().connection_count(), 0);
        assert!(
            !device.muxer().has_pending_rx(),
            "nothing waits for the guest"
        );
        // Closed: EOF, or a reset where the muxer had not read all the stream sent.
        let closed = |stream: &mut UnixStream| {
            let mut buf = [0u8; 8];
            match stream.read(&mut buf) {
                Ok(n) => n == 0,
                Err(err) => err.kind() == std::io::ErrorKind::ConnectionReset,
            }
        };
        assert!(closed(&mut host), "the host stream is closed");
        assert!(closed(&mut half), "the stream in its handshake is closed");
        // The next driver is served on the same socket.
        let (_host, _) = host_connect(&dir, &mut device, &mut guest, 6);
        assert_eq!(device.muxer().connection_count(), 1);
    }

    #[test]
    fn data_flows_both_ways_and_carries_credit() {
        let dir = TestDir::new("data");
        let mem = test_memory();
        let mut guest = MockGuest::new(&mem);
        let mut device = test_device(&dir);
        let (mut host, local_port) = host_connect(&dir, &mut device, &mut guest, 80);

        let mut rw = guest_packet(Op::Rw, 80, local_port);
        rw.len = 4;
        guest.send(&rw, b"ping");
        guest.kick_tx(&mut device);
        let mut buf = [0u8; 4];
        host.read_exact(&mut buf)
            .expect("guest data reaches the host");
        assert_eq!(&buf, b"ping");

        host.write_all(b"pong!").expect("host writes");
        pump_host(&mut device);
        let packets = guest.receive(&mut device);
        assert_eq!(packets.len(), 1, "{packets:?}");
        let (header, data) = &packets[0];
        assert_eq!(header.op, Op::Rw);
        assert_eq!(
            (header.src_port, header.dst_port, header.len),
            (local_port, 80, 5)
        );
        assert_eq!(data, b"pong!");
        assert_eq!(
            header.fwd_cnt, 4,
            "the guest learns the host took its 4 bytes"
        );
        let counters = device.counters();
        assert_eq!((counters.tx_bytes, counters.rx_bytes), (4, 5));
    }

    #[test]
    fn host_data_waits_for_guest_credit_and_asks_for_it() {
        let dir = TestDir::new("credit");
        let mem = test_memory();
        let mut guest = MockGuest::new(&mem);
        let mut device = test_device(&dir);
        let mut host = UnixStream::connect(dir.path().join("v.sock")).expect("connect");
        host.write_all(b"CONNECT 9\n").expect("CONNECT");
        pump_host(&mut device);
        let (request, _) = guest.receive(&mut device)[0];
        let mut response = guest_packet(Op::Response, 9, request.src_port);
        response.buf_alloc = 4;
        guest.send(&response, &[]);
        guest.kick_tx(&mut device);
        let mut ok = [0u8; 32];
        let _ = host.read(&mut ok).expect("OK");

        host.write_all(b"0123456789").expect("host writes");
        pump_host(&mut device);
        let packets = guest.receive(&mut device);
        let ops: Vec<Op> = packets.iter().map(|(h, _)| h.op).collect();
        assert_eq!(
            ops,
            [Op::Rw, Op::CreditRequest],
            "4 bytes of credit, then a request for more"
        );
        assert_eq!(packets[0].1, b"0123");

        let mut update = guest_packet(Op::CreditUpdate, 9, request.src_port);
        update.buf_alloc = 4;
        update.fwd_cnt = 4;
        guest.send(&update, &[]);
        guest.kick_tx(&mut device);
        pump_host(&mut device);
        let packets = guest.receive(&mut device);
        assert_eq!(
            packets.first().map(|(h, d)| (h.op, d.clone())),
            Some((Op::Rw, b"4567".to_vec()))
        );
    }

    #[test]
    fn credit_request_is_answered_with_credit_update() {
        let dir = TestDir::new("creditreq");
        let mem = test_memory();
        let mut guest = MockGuest::new(&mem);
        let mut device = test_device(&dir);
        let (_host, local_port) = host_connect(&dir, &mut device, &mut guest, 7);
        guest.send(&guest_packet(Op::CreditRequest, 7, local_port), &[]);
        guest.kick_tx(&mut device);
        let packets = guest.receive(&mut device);
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].0.op, Op::CreditUpdate);
        assert_eq!(packets[0].0.buf_alloc, CONN_BUF_ALLOC);
    }

    #[test]
    fn guest_connects_to_a_host_listener_on_uds_underscore_port() {
        let dir = TestDir::new("guestconn");
        let mem = test_memory();
        let mut guest = MockGuest::new(&mem);
        let mut device = test_device(&dir);
        let listener = UnixListener::bind(dir.path().join("v.sock_7000")).expect("host listener");
        guest.send(&guest_packet(Op::Request, 4000, 7000), &[]);
        guest.kick_tx(&mut device);
        let packets = guest.receive(&mut device);
        assert_eq!(packets.len(), 1);
        let (response, _) = packets[0];
        assert_eq!(response.op, Op::Response);
        assert_eq!(
            (response.src_port, response.dst_port, response.dst_cid),
            (7000, 4000, GUEST_CID)
        );
        let (mut host, _) = listener
            .accept()
            .expect("the host listener got the connection");

        let mut rw = guest_packet(Op::Rw, 4000, 7000);
        rw.len = 3;
        guest.send(&rw, b"abc");
        guest.kick_tx(&mut device);
        let mut buf = [0u8; 3];
        host.read_exact(&mut buf).expect("data");
        assert_eq!(&buf, b"abc");
    }

    #[test]
    fn guest_connect_without_host_listener_is_reset() {
        let dir = TestDir::new("refused");
        let mem = test_memory();
        let mut guest = MockGuest::new(&mem);
        let mut device = test_device(&dir);
        guest.send(&guest_packet(Op::Request, 4000, 7001), &[]);
        guest.kick_tx(&mut device);
        let packets = guest.receive(&mut device);
        assert_eq!(
            packets.iter().map(|(h, _)| h.op).collect::<Vec<_>>(),
            [Op::Rst]
        );
        assert_eq!((packets[0].0.src_port, packets[0].0.dst_port), (7001, 4000));
        assert_eq!(device.counters().conns_refused, 1);
        assert_eq!(device.muxer().connection_count(), 0);
    }

    #[test]
    fn guest_full_shutdown_is_acknowledged_with_reset_and_closes_the_host_stream() {
        let dir = TestDir::new("shutdown");
        let mem = test_memory();
        let mut guest = MockGuest::new(&mem);
        let mut device = test_device(&dir);
        let (mut host, local_port) = host_connect(&dir, &mut device, &mut guest, 5);
        let mut rw = guest_packet(Op::Rw, 5, local_port);
        rw.len = 3;
        guest.send(&rw, b"bye");
        let mut shutdown = guest_packet(Op::Shutdown, 5, local_port);
        shutdown.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        guest.send(&shutdown, &[]);
        guest.kick_tx(&mut device);
        let packets = guest.receive(&mut device);
        assert_eq!(
            packets.iter().map(|(h, _)| h.op).collect::<Vec<_>>(),
            [Op::Rst]
        );
        let mut rest = Vec::new();
        host.read_to_end(&mut rest).expect("host stream ends");
        assert_eq!(
            rest, b"bye",
            "data sent before the shutdown is delivered, then EOF"
        );
        assert_eq!(device.muxer().connection_count(), 0);
    }

    #[test]
    fn host_close_tells_the_guest_no_more_data_comes() {
        let dir = TestDir::new("hostclose");
        let mem = test_memory();
        let mut guest = MockGuest::new(&mem);
        let mut device = test_device(&dir);
        let (host, local_port) = host_connect(&dir, &mut device, &mut guest, 5);
        host.shutdown(std::net::Shutdown::Write)
            .expect("half-close");
        pump_host(&mut device);
        let packets = guest.receive(&mut device);
        assert_eq!(packets.len(), 1, "{packets:?}");
        assert_eq!(packets[0].0.op, Op::Shutdown);
        assert_eq!(packets[0].0.flags, SHUTDOWN_SEND);
        // The guest closes its side too: the connection ends with its reset.
        guest.send(&guest_packet(Op::Rst, 5, local_port), &[]);
        guest.kick_tx(&mut device);
        assert_eq!(device.muxer().connection_count(), 0);
    }

    #[test]
    fn guest_reset_closes_the_host_stream() {
        let dir = TestDir::new("rst");
        let mem = test_memory();
        let mut guest = MockGuest::new(&mem);
        let mut device = test_device(&dir);
        let (mut host, local_port) = host_connect(&dir, &mut device, &mut guest, 5);
        guest.send(&guest_packet(Op::Rst, 5, local_port), &[]);
        guest.kick_tx(&mut device);
        let mut rest = Vec::new();
        host.read_to_end(&mut rest).expect("EOF");
        assert!(rest.is_empty());
        assert_eq!(device.muxer().connection_count(), 0);
        assert!(
            guest.receive(&mut device).is_empty(),
            "a reset is not answered"
        );
    }

    #[test]
    fn malformed_connect_line_is_dropped_and_counted() {
        let dir = TestDir::new("badline");
        let mem = test_memory();
        let mut guest = MockGuest::new(&mem);
        let mut device = test_device(&dir);
        let mut host = UnixStream::connect(dir.path().join("v.sock")).expect("connect");
        host.write_all(b"CONNECT banana\n").expect("write");
        for _ in 0..20 {
            device.muxer().process_host_events();
        }
        host.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut rest = Vec::new();
        host.read_to_end(&mut rest).expect("the stream is closed");
        assert!(rest.is_empty());
        assert_eq!(device.counters().host_connects_rejected, 1);
        assert!(guest.receive(&mut device).is_empty());
    }

    #[test]
    fn unanswered_host_connect_closes_the_host_stream_and_resets_the_guest() {
        let dir = TestDir::new("timeout");
        let mem = test_memory();
        let mut guest = MockGuest::new(&mem);
        let mut device = test_device(&dir);
        device
            .muxer()
            .set_connect_timeout(Duration::from_millis(20));
        let mut host = UnixStream::connect(dir.path().join("v.sock")).expect("connect");
        host.write_all(b"CONNECT 4242\n").expect("CONNECT");
        pump_host(&mut device);
        let packets = guest.receive(&mut device);
        assert_eq!(
            packets.iter().map(|(h, _)| h.op).collect::<Vec<_>>(),
            [Op::Request]
        );
        // The guest never answers: after the deadline the host sees EOF, not OK.
        host.set_nonblocking(true).expect("nonblocking");
        let mut eof = false;
        for _ in 0..2000 {
            device.muxer().process_host_events();
            let mut buf = [0u8; 16];
            match host.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => panic!("unexpected {:?}", &buf[..n]),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        assert!(eof, "the host stream is closed once the request expired");
        let packets = guest.receive(&mut device);
        assert_eq!(
            packets
                .iter()
                .map(|(h, _)| (h.op, h.dst_port))
                .collect::<Vec<_>>(),
            [(Op::Rst, 4242)]
        );
        assert_eq!(device.muxer().connection_count(), 0);
    }

    #[test]
    fn guest_ignoring_credit_is_reset_and_buffering_stays_capped() {
        let dir = TestDir::new("overrun");
        let mem = test_memory();
        let mut guest = MockGuest::new(&mem);
        let mut device = test_device(&dir);
        // The host never reads: once its socket buffer is full, guest data is buffered, up
        // to the credit we gave; a guest that sends more is reset.
        let (_host, local_port) = host_connect(&dir, &mut device, &mut guest, 5);
        let chunk = vec![0x42u8; MAX_PKT_DATA];
        let mut rw = guest_packet(Op::Rw, 5, local_port);
        rw.len = MAX_PKT_DATA as u32;
        let mut reset = false;
        for _ in 0..64 {
            guest.send(&rw, &chunk);
            guest.kick_tx(&mut device);
            if guest
                .receive(&mut device)
                .iter()
                .any(|(h, _)| h.op == Op::Rst)
            {
                reset = true;
                break;
            }
        }
        assert!(
            reset,
            "4 MiB into a host that never reads must overrun a 256 KiB credit"
        );
        assert_eq!(device.muxer().connection_count(), 0);
    }

    #[test]
    fn tx_packet_in_an_indirect_table_is_accepted() {
        let dir = TestDir::new("indirect");
        let mem = test_memory();
        let mut guest = MockGuest::new(&mem);
        let mut device = test_device(&dir);
        let _listener = UnixListener::bind(dir.path().join("v.sock_7006")).expect("host listener");
        let hdr = guest.place(&guest_packet(Op::Request, 9, 7006).to_bytes());
        let mut table = Vec::new();
        for (addr, len, flags, next) in [(hdr, 20u32, NEXT, 1u16), (hdr + 20, 24, 0, 0)] {
            table.extend_from_slice(&addr.to_le_bytes());
            table.extend_from_slice(&len.to_le_bytes());
            table.extend_from_slice(&flags.to_le_bytes());
            table.extend_from_slice(&next.to_le_bytes());
        }
        let table_addr = guest.place(&table);
        let indirect = VRING_DESC_F_INDIRECT as u16;
        guest.tx_raw(&[(table_addr, 32, indirect, 0)]);
        guest.kick_tx(&mut device);
        assert_eq!(device.counters().tx_malformed, 0);
        let packets = guest.receive(&mut device);
        assert_eq!(
            packets.iter().map(|(h, _)| h.op).collect::<Vec<_>>(),
            [Op::Response],
            "a header split across an indirect table"
        );
    }

    /// Runs `descs` through the tx queue and checks the chain was returned, counted as
    /// malformed, and left the device working (a following request is still answered).
    fn assert_tx_dropped(descs: &[(u64, u32, u16, u16)], what: &str) {
        assert_tx_dropped_with(|_| descs.to_vec(), what);
    }

    /// As `assert_tx_dropped`, with descriptors that may point at bytes `build` places.
    fn assert_tx_dropped_with(
        build: impl FnOnce(&mut MockGuest<'_>) -> Vec<(u64, u32, u16, u16)>,
        what: &str,
    ) {
        let dir = TestDir::new("malformed");
        let mem = test_memory();
        let mut guest = MockGuest::new(&mem);
        let mut device = test_device(&dir);
        let descs = build(&mut guest);
        guest.tx_raw(&descs);
        guest.kick_tx(&mut device);
        assert_eq!(
            guest.tx_used(),
            1,
            "{what}: the chain is returned to the guest"
        );
        assert_eq!(
            device.counters().tx_malformed,
            1,
            "{what}: counted as malformed"
        );
        assert_eq!(device.counters().tx_packets, 0, "{what}: not acted on");
        assert!(
            guest.receive(&mut device).is_empty(),
            "{what}: nothing answered"
        );
        guest.send(&guest_packet(Op::Request, 1, 7002), &[]);
        guest.kick_tx(&mut device);
        let packets = guest.receive(&mut device);
        assert_eq!(packets.len(), 1, "{what}: the device still works");
    }

    #[test]
    fn tx_chain_that_loops_is_dropped() {
        // Two descriptors pointing at each other, around a valid request header.
        assert_tx_dropped_with(
            |guest| {
                let hdr = guest.place(&guest_packet(Op::Request, 1, 2).to_bytes());
                vec![(hdr, 44, NEXT, 1), (hdr, 44, NEXT, 0)]
            },
            "loop",
        );
    }

    #[test]
    fn tx_descriptor_outside_guest_memory_is_dropped() {
        assert_tx_dropped(&[(MEM_SIZE - 20, 44, 0, 0)], "straddles the end of memory");
        assert_tx_dropped(&[(u64::MAX - 10, 44, 0, 0)], "address wraps");
    }

    #[test]
    fn tx_descriptor_with_wrong_direction_is_dropped() {
        assert_tx_dropped(&[(0x10_0000, 44, WRITE, 0)], "device-writable tx buffer");
    }

    #[test]
    fn tx_chain_with_next_index_outside_the_table_is_dropped() {
        assert_tx_dropped(&[(0x10_0000, 44, NEXT, 1000)], "next beyond the queue size");
    }

    #[test]
    fn tx_chain_longer_than_a_packet_is_dropped() {
        assert_tx_dropped(
            &[(0x10_0000, (HDR_SIZE + MAX_PKT_DATA + 1) as u32, 0, 0)],
            "too long",
        );
    }

    #[test]
    fn tx_packet_shorter_than_a_header_is_dropped() {
        assert_tx_dropped(&[(0x10_0000, 20, 0, 0)], "short header");
    }

    fn assert_header_dropped(header: Header, payload_len: u32, what: &str) {
        let mut bytes = header.to_bytes().to_vec();
        bytes.resize(HDR_SIZE + payload_len as usize, 0xab);
        assert_tx_dropped_with(
            |guest| vec![(guest.place(&bytes), HDR_SIZE as u32 + payload_len, 0, 0)],
            what,
        );
    }

    #[test]
    fn tx_header_claiming_more_payload_than_carried_is_dropped() {
        let mut header = guest_packet(Op::Rw, 1, 2);
        header.len = 100;
        assert_header_dropped(header, 10, "len beyond the chain");
        header.len = u32::MAX;
        assert_header_dropped(header, 10, "len u32::MAX");
    }

    #[test]
    fn tx_control_packet_with_payload_is_dropped() {
        let mut header = guest_packet(Op::Request, 1, 2);
        header.len = 4;
        assert_header_dropped(header, 4, "request with payload");
    }

    #[test]
    fn misaddressed_packets_are_dropped_without_answer() {
        let dir = TestDir::new("misaddressed");
        let mem = test_memory();
        let mut guest = MockGuest::new(&mem);
        let mut device = test_device(&dir);
        let mut spoofed = guest_packet(Op::Request, 1, 2);
        spoofed.src_cid = 99;
        guest.send(&spoofed, &[]);
        let mut elsewhere = guest_packet(Op::Request, 1, 2);
        elsewhere.dst_cid = 7;
        guest.send(&elsewhere, &[]);
        guest.kick_tx(&mut device);
        assert_eq!(guest.tx_used(), 2);
        assert_eq!(device.counters().tx_misaddressed, 2);
        assert!(guest.receive(&mut device).is_empty());
    }

    #[test]
    fn unknown_operation_and_socket_type_are_answered_with_reset() {
        let dir = TestDir::new("unknown");
        let mem = test_memory();
        let mut guest = MockGuest::new(&mem);
        let mut device = test_device(&dir);
        let mut raw = guest_packet(Op::Request, 1, 2).to_bytes();
        raw[30..32].copy_from_slice(&99u16.to_le_bytes()); // op
        guest.send(&Header::parse(&raw), &[]);
        let mut raw = guest_packet(Op::Request, 3, 4).to_bytes();
        raw[28..30].copy_from_slice(&2u16.to_le_bytes()); // SEQPACKET
        guest.send(&Header::parse(&raw), &[]);
        guest.kick_tx(&mut device);
        let packets = guest.receive(&mut device);
        let resets: Vec<(Op, u32)> = packets.iter().map(|(h, _)| (h.op, h.dst_port)).collect();
        assert_eq!(resets, [(Op::Rst, 1), (Op::Rst, 3)]);
        assert_eq!(device.counters().rst_sent, 2);
    }

    #[test]
    fn malformed_rx_buffers_are_returned_empty_and_the_packet_waits_for_a_good_one() {
        let dir = TestDir::new("rxbad");
        let mem = test_memory();
        let mut guest = MockGuest::new(&mem);
        let mut device = test_device(&dir);
        guest.send(&guest_packet(Op::Request, 4000, 7003), &[]); // no listener: a RST is due
        guest.kick_tx(&mut device);
        guest.rx_raw(&[(0x20_0000, 4096, 0, 0)]); // device-readable: wrong direction
        guest.rx_raw(&[(0x20_0000, 20, WRITE, 0)]); // too small for a header
        guest.rx_raw(&[(MEM_SIZE - 10, 4096, WRITE, 0)]); // outside memory
        guest.rx_raw(&[
            (0x20_0000, 64, WRITE | NEXT, 1),
            (0x20_0000, 64, WRITE | NEXT, 0),
        ]); // loop
        device.process_rx(&mut guest.rxq, &mem).expect("rx");
        let used = guest.rx_used();
        assert_eq!(
            used.iter().map(|(_, len, _)| *len).collect::<Vec<_>>(),
            [0, 0, 0, 0]
        );
        assert_eq!(device.counters().rx_malformed, 4);
        let packets = guest.receive(&mut device);
        assert_eq!(
            packets.iter().map(|(h, _)| h.op).collect::<Vec<_>>(),
            [Op::Rst]
        );
    }

    #[test]
    fn queues_not_yet_ready_are_left_alone() {
        let dir = TestDir::new("notready");
        let mem = test_memory();
        let mut guest = MockGuest::new(&mem);
        let mut device = test_device(&dir);
        guest.send(&guest_packet(Op::Request, 4000, 7004), &[]);
        guest.rxq.set_ready(false);
        guest.txq.set_ready(false);
        assert!(!device.process_tx(&mut guest.txq, &mem).expect("tx"));
        assert!(!device.process_rx(&mut guest.rxq, &mem).expect("rx"));
        assert_eq!(guest.tx_used(), 0);
    }

    fn descriptor() -> impl proptest::strategy::Strategy<Value = (u64, u32, u16, u16)> {
        use proptest::prelude::*;
        let addr = prop_oneof![
            Just(0x10_0000u64),
            0x10_0000u64..0x10_2000,
            (MEM_SIZE - 64)..(MEM_SIZE + 64),
            any::<u64>(),
        ];
        let len = prop_oneof![0u32..200, Just(HDR_SIZE as u32), any::<u32>()];
        // NEXT, WRITE and INDIRECT in any combination, plus garbage bits.
        let flags = prop_oneof![0u16..8, any::<u16>()];
        let next = prop_oneof![0u16..12, any::<u16>()];
        (addr, len, flags, next)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Whatever the guest writes into its descriptor tables and packet bytes, the device
        /// neither panics nor loses track of its queues.
        #[test]
        fn arbitrary_descriptor_tables_and_headers_never_panic(
            tx in proptest::collection::vec(descriptor(), 1..10),
            rx in proptest::collection::vec(descriptor(), 1..10),
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
        ) {
            let dir = TestDir::new("fuzz");
            let mem = test_memory();
            let mut guest = MockGuest::new(&mem);
            let mut device = test_device(&dir);
            guest.place(&bytes);
            guest.tx_raw(&tx);
            guest.rx_raw(&rx);
            let _ = device.process_tx(&mut guest.txq, &mem);
            let _ = device.process_rx(&mut guest.rxq, &mem);
            // The device still answers a well-formed request afterwards.
            guest.send(&guest_packet(Op::Request, 1, 7005), &[]);
            let _ = device.process_tx(&mut guest.txq, &mem);
            proptest::prop_assert!(device.muxer().connection_count() <= 1);
        }

        /// Arbitrary packets on a live connection (any op, flags, credit fields, lengths that
        /// match their payload) never panic, and the connection table stays bounded.
        #[test]
        fn arbitrary_packets_on_a_live_connection_never_panic(
            packets in proptest::collection::vec(
                (0u16..10, 0u32..8, proptest::prelude::any::<u32>(), proptest::prelude::any::<u32>(), 0usize..300, proptest::prelude::any::<bool>()),
                1..24,
            ),
        ) {
            let dir = TestDir::new("fuzzconn");
            let mem = test_memory();
            let mut guest = MockGuest::new(&mem);
            let mut device = test_device(&dir);
            let (mut host, local_port) = host_connect(&dir, &mut device, &mut guest, 77);
            host.set_nonblocking(true).expect("nonblocking");
            for (op, flags, buf_alloc, fwd_cnt, len, to_conn) in packets {
                let mut raw = guest_packet(Op::Rw, 77, if to_conn { local_port } else { 77 }).to_bytes();
                raw[30..32].copy_from_slice(&op.to_le_bytes());
                let mut header = Header::parse(&raw);
                header.flags = flags;
                header.buf_alloc = buf_alloc;
                header.fwd_cnt = fwd_cnt;
                header.len = u32::try_from(len).expect("small");
                guest.send(&header, &vec![0x5a; len]);
                let _ = device.process_tx(&mut guest.txq, &mem);
                let _ = host.write(b"host data");
                let mut sink = [0u8; 1024];
                let _ = host.read(&mut sink);
                device.muxer().process_host_events();
                let _ = guest.receive(&mut device);
            }
            proptest::prop_assert!(device.muxer().connection_count() <= 1);
        }
    }
}
