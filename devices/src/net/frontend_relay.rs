//! A relay between a vhost-user-net frontend and the `vhost-user-backend` daemon that puts
//! QEMU's messages in the order the `vhost` crate accepts.
//!
//! QEMU's vhost-user-net sends `SET_VRING_ENABLE` when the guest acknowledges its features,
//! and `SET_FEATURES` only when the guest driver is ready; it also refuses to start without
//! `VHOST_USER_F_PROTOCOL_FEATURES`. The `vhost` crate (0.18) refuses `SET_VRING_ENABLE`
//! before `SET_FEATURES` has acknowledged that feature, and its daemon drops the connection on
//! the first refused message. Neither can be configured, so this relay holds the early
//! `SET_VRING_ENABLE` messages (QEMU wants no reply to them: we do not offer `REPLY_ACK`) and
//! passes them on right after `SET_FEATURES`, which is what the frontend meant. Every other
//! message, with its descriptors, passes through unchanged; replies go back byte for byte
//! (the protocol features offered give the backend no reason to send descriptors).

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use tracing::debug;

/// Bytes of a vhost-user message header: request, flags, payload size (u32 each).
const HEADER: usize = 12;
/// Largest payload a frontend message carries (the `vhost` crate's `MAX_MSG_SIZE`).
const MAX_PAYLOAD: usize = 0x1000;
/// Most descriptors one message carries (the `vhost` crate's `MAX_ATTACHED_FD_ENTRIES`).
const MAX_FDS: usize = 32;
const SET_FEATURES: u32 = 2;
const SET_VRING_ENABLE: u32 = 18;

/// One frontend message: header, payload, attached descriptors.
struct Message {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Message {
    fn request(&self) -> u32 {
        let mut raw = [0u8; 4];
        raw.copy_from_slice(&self.bytes[..4]);
        u32::from_le_bytes(raw)
    }
}

/// Relays between `frontend` and `backend` until either side closes, then shuts both down.
/// Runs on two threads of the caller's scope.
pub fn relay<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    frontend: UnixStream,
    backend: UnixStream,
) -> std::io::Result<()> {
    let (frontend_r, backend_w) = (frontend.try_clone()?, backend.try_clone()?);
    scope.spawn(move || {
        if let Err(err) = forward_requests(&frontend_r, &backend_w) {
            debug!(%err, "vhost-user relay: frontend side ended");
        }
        let _ = frontend_r.shutdown(Shutdown::Both);
        let _ = backend_w.shutdown(Shutdown::Both);
    });
    scope.spawn(move || {
        let (mut from, mut to) = (&backend, &frontend);
        let _ = std::io::copy(&mut from, &mut to);
        let _ = frontend.shutdown(Shutdown::Both);
        let _ = backend.shutdown(Shutdown::Both);
    });
    Ok(())
}

/// Frontend to backend, message by message, holding early `SET_VRING_ENABLE`s.
fn forward_requests(frontend: &UnixStream, backend: &UnixStream) -> std::io::Result<()> {
    let mut features_seen = false;
    let mut held = Vec::new();
    while let Some(message) = read_message(frontend)? {
        let request = message.request();
        if request == SET_VRING_ENABLE && !features_seen {
            debug!("holding SET_VRING_ENABLE until SET_FEATURES");
            held.push(message);
            continue;
        }
        write_message(backend, &message)?;
        if request == SET_FEATURES {
            features_seen = true;
            for early in held.drain(..) {
                write_message(backend, &early)?;
            }
        }
    }
    Ok(())
}

/// Reads one message; `None` at the end of the stream.
fn read_message(stream: &UnixStream) -> std::io::Result<Option<Message>> {
    let mut header = [0u8; HEADER];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (got, mut fds) = {
        let mut iov = [IoSliceMut::new(&mut header)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(std::io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    // SAFETY: SCM_RIGHTS gave this process a new descriptor that nothing
                    // else owns.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        (msg.bytes, fds)
    };
    if got == 0 {
        return Ok(None);
    }
    let mut reader = stream;
    if got < HEADER {
        reader.read_exact(&mut header[got..])?;
    }
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&header[8..12]);
    let size = usize::try_from(u32::from_le_bytes(raw)).unwrap_or(usize::MAX);
    if size > MAX_PAYLOAD {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("vhost-user message of {size} bytes"),
        ));
    }
    let mut bytes = header.to_vec();
    bytes.resize(HEADER + size, 0);
    reader.read_exact(&mut bytes[HEADER..])?;
    fds.truncate(MAX_FDS);
    Ok(Some(Message { bytes, fds }))
}

fn write_message(stream: &UnixStream, message: &Message) -> std::io::Result<()> {
    let raw: Vec<RawFd> = message.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsgs = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsgs };
    let sent = sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(&message.bytes)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(std::io::Error::from)?;
    if sent < message.bytes.len() {
        let mut writer = stream;
        writer.write_all(&message.bytes[sent..])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Writes `input` as the frontend, closes, and returns what reached the daemon.
    fn through_relay(input: &[u8]) -> Vec<u8> {
        let (mut qemu, frontend) = UnixStream::pair().expect("pair");
        let (backend, mut daemon) = UnixStream::pair().expect("pair");
        std::thread::scope(|scope| {
            relay(scope, frontend, backend).expect("relay");
            // The relay may stop reading (a malformed message): writing then fails.
            let _ = qemu.write_all(input);
            let _ = qemu.shutdown(Shutdown::Write);
            let mut got = Vec::new();
            let _ = daemon.read_to_end(&mut got);
            drop(daemon);
            got
        })
    }

    fn message(request: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = request.to_le_bytes().to_vec();
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_le_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn early_vring_enables_follow_set_features_and_the_rest_keeps_its_order() {
        let (mut qemu, frontend) = UnixStream::pair().expect("pair");
        let (backend, mut daemon) = UnixStream::pair().expect("pair");
        let sent = [
            message(1, &[]),                    // GET_FEATURES
            message(SET_VRING_ENABLE, &[0; 8]), // early
            message(5, &[9; 40]),               // SET_MEM_TABLE-sized payload
            message(SET_FEATURES, &[7; 8]),
            message(SET_VRING_ENABLE, &[1; 8]), // in order
        ];
        std::thread::scope(|scope| {
            relay(scope, frontend, backend).expect("relay");
            for m in &sent {
                qemu.write_all(m).expect("write");
            }
            qemu.shutdown(Shutdown::Write).expect("shutdown");
            let mut got = Vec::new();
            daemon.read_to_end(&mut got).expect("read");
            let expected = [&sent[0][..], &sent[2], &sent[3], &sent[1], &sent[4]].concat();
            assert_eq!(got, expected);
            drop(daemon);
        });
    }

    #[test]
    fn descriptors_pass_through_and_oversized_messages_end_the_relay() {
        let (qemu, frontend) = UnixStream::pair().expect("pair");
        let (backend, daemon) = UnixStream::pair().expect("pair");
        std::thread::scope(|scope| {
            relay(scope, frontend, backend).expect("relay");
            let file = std::fs::File::open("/dev/null").expect("/dev/null");
            let m = Message {
                bytes: message(12, &8u64.to_le_bytes()),
                fds: vec![OwnedFd::from(file)],
            };
            write_message(&qemu, &m).expect("send");
            let got = read_message(&daemon).expect("read").expect("a message");
            assert_eq!(got.bytes, m.bytes);
            assert_eq!(got.fds.len(), 1, "the descriptor came along");
            let mut header = 1u32.to_le_bytes().to_vec();
            header.extend_from_slice(&0u32.to_le_bytes());
            header.extend_from_slice(&0x10_0000u32.to_le_bytes());
            (&qemu).write_all(&header).expect("write");
            assert!(
                read_message(&daemon).expect("read").is_none(),
                "relay closed"
            );
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(100))]

        /// Any sequence of well-formed messages comes out whole and in order, except that
        /// SET_VRING_ENABLEs before the first SET_FEATURES come right after it (and never
        /// without one).
        #[test]
        fn well_formed_messages_pass_in_order_with_early_enables_moved(
            messages in proptest::collection::vec(
                (prop_oneof![Just(SET_FEATURES), Just(SET_VRING_ENABLE), 0u32..40], 0usize..64),
                0..12,
            ),
        ) {
            let encoded: Vec<Vec<u8>> = messages
                .iter()
                .map(|&(request, len)| message(request, &vec![0x5a; len]))
                .collect();
            let first_features = messages.iter().position(|&(r, _)| r == SET_FEATURES);
            let mut expected = Vec::new();
            let mut held = Vec::new();
            for (i, (&(request, _), bytes)) in messages.iter().zip(&encoded).enumerate() {
                let early = first_features.is_none_or(|f| i < f);
                if request == SET_VRING_ENABLE && early {
                    held.push(bytes.clone());
                    continue;
                }
                expected.extend_from_slice(bytes);
                if Some(i) == first_features {
                    for h in held.drain(..) {
                        expected.extend(h);
                    }
                }
            }
            prop_assert_eq!(through_relay(&encoded.concat()), expected);
        }

        /// Arbitrary bytes from the frontend never panic the relay, and it always ends.
        #[test]
        fn arbitrary_bytes_never_panic_the_relay(input in proptest::collection::vec(any::<u8>(), 0..600)) {
            let out = through_relay(&input);
            prop_assert!(out.len() <= input.len());
        }
    }
}
