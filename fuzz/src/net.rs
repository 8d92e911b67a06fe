//! The `net_rx_tx` target: hull-net's queue pair between a guest whose rx and tx queues come
//! from the input and a tap, stood in for by a unix datagram socket pair (it keeps frame
//! boundaries and is non-blocking, as a tap queue is; the unit tests do the same).

use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;

use hull_devices::net::device::{Counters, FrameFormat, MAX_FRAME_LEN};
use hull_devices::net::queue_pair::QueuePair;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_MRG_RXBUF,
};

use crate::guest::{self, QUEUE_SIZE};
use crate::input::Input;

/// Most frames the tap hands over per input.
const MAX_FRAMES: u8 = 8;

/// `net_rx_tx`: the input is the features the guest accepted, the MTU, the frames the tap
/// has (lengths and a fill byte), then the rx queue, the tx queue and the buffer area. The
/// device sends the guest's tx chains and fills its rx buffers; every frame that reaches the
/// tap is at most a header and the largest frame, and the tx pass returns no more chains
/// than the ring holds.
pub fn net_rx_tx(data: &[u8]) {
    let mut input = Input::new(data);
    let sel = input.u8();
    let mut acked = 0u64;
    for (bit, feature) in [
        VIRTIO_F_VERSION_1,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
    ]
    .into_iter()
    .enumerate()
    {
        if sel & (1 << bit) != 0 {
            acked |= 1 << feature;
        }
    }
    let mtu = input.u16();
    let frames: Vec<(usize, u8)> = (0..input.u8() % (MAX_FRAMES + 1))
        .map(|_| (usize::from(input.u16() % 0x1000), input.u8()))
        .collect();
    let (mem, mut queues) = guest::guest(&mut input, 2);
    let [rx, tx] = &mut queues[..] else {
        return;
    };

    let (tap, host) = UnixDatagram::pair().expect("socket pair");
    tap.set_nonblocking(true).expect("non-blocking");
    host.set_nonblocking(true).expect("non-blocking");
    let format = FrameFormat::new(acked, mtu);
    let counters = Counters::new(1);
    let pair = QueuePair::new(0, tap.as_fd(), format, &counters);

    for &(len, fill) in &frames {
        let _ = host.send(&vec![fill; len]);
    }
    // The device writes nothing into tx buffers, so the tx pass returns at most the chains
    // the ring holds. (Rx frames may land in buffers that alias the guest's own rings: what
    // the rings hold after an rx pass is the guest's business.)
    if let Ok(sent) = pair.process_tx(tx, &mem) {
        assert!(
            sent <= usize::from(QUEUE_SIZE),
            "{sent} tx chains from a ring of 16"
        );
    }
    let _ = pair.process_rx(rx, &mem);
    let _ = pair.process_rx(rx, &mem);

    let mut frame = vec![0u8; 2 * MAX_FRAME_LEN];
    while let Ok(len) = host.recv(&mut frame) {
        assert!(
            len <= format.hdr_len + MAX_FRAME_LEN,
            "a {len}-byte frame reached the tap"
        );
    }
}
