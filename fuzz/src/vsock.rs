//! The `vsock_packet` target: hull-vsock's device between a guest whose tx and rx queues come
//! from the input and a host side with a listening service and a host-initiated connection.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use hull_devices::vsock::device::VsockDevice;
use hull_devices::vsock::muxer::Muxer;

use crate::guest;
use crate::input::Input;

/// The guest's context id.
pub const GUEST_CID: u64 = 3;
/// The host port a service listens on (`<uds>_1024`), as the agent's is.
pub const HOST_PORT: u32 = 1024;

/// A directory of this process for the hybrid-vsock sockets, removed on drop.
struct SocketDir(PathBuf);

impl SocketDir {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "hull-fuzz-vsock-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("creating the socket directory");
        Self(path)
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `vsock_packet`: the input is, in order, a selector (host connection, host data), a port
/// for a host-initiated connection, the host's bytes, then the rx queue, the tx queue and
/// the buffer area (packet headers and payloads). The device takes the guest's packets, the
/// host side's events, and fills the guest's rx buffers, whatever the rings and buffers
/// hold (they may alias each other: the guest's own business).
pub fn vsock_packet(data: &[u8]) {
    let mut input = Input::new(data);
    let sel = input.u8();
    let port = input.u32();
    let host_len = usize::from(input.u8());
    let host_bytes = input.bytes(host_len);
    let (mem, mut queues) = guest::guest(&mut input, 2);
    let [rx, tx] = &mut queues[..] else {
        return;
    };

    let dir = SocketDir::new();
    let uds = dir.0.join("v.sock");
    let service = UnixListener::bind(dir.0.join(format!("v.sock_{HOST_PORT}")))
        .expect("binding the host service");
    service
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let mut device = VsockDevice::new(Muxer::new(&uds, GUEST_CID).expect("muxer"));

    // A host process connecting to a guest port, as the shim does to the agent.
    let mut host_initiated = None;
    if sel & 1 != 0 {
        if let Ok(mut stream) = UnixStream::connect(&uds) {
            let _ = stream.set_nonblocking(true);
            let line = if sel & 2 != 0 {
                format!("CONNECT {port}\n").into_bytes()
            } else {
                host_bytes.to_vec()
            };
            let _ = stream.write_all(&line);
            host_initiated = Some(stream);
        }
    }
    for _ in 0..2 {
        device.muxer().process_host_events();
    }
    let _ = device.process_tx(tx, &mem);
    // Connections the guest opened to the service: the host answers with its bytes.
    let mut accepted = Vec::new();
    while let Ok((mut stream, _)) = service.accept() {
        let _ = stream.set_nonblocking(true);
        if sel & 4 != 0 {
            let _ = stream.write_all(host_bytes);
        }
        accepted.push(stream);
    }
    if let Some(stream) = host_initiated.as_mut() {
        if sel & 8 != 0 {
            let _ = stream.write_all(host_bytes);
        }
    }
    for _ in 0..2 {
        device.muxer().process_host_events();
        let _ = device.process_rx(rx, &mem);
    }
    let _ = device.process_tx(tx, &mem);

    drop(device);
    drop(accepted);
}
