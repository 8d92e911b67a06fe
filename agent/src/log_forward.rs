//! The agent's log, forwarded to the shim (as Kata's agent serves its log on vsock port 1025):
//! every line the agent logs is kept in a bounded buffer and written to whoever is connected
//! to the log address ([`hull_agent_protocol::AGENT_LOG_VSOCK_PORT`] in a guest,
//! `--log-listen` on a host), so the agent's words reach the shim's log (and containerd's)
//! instead of only a guest console nobody reads.
//!
//! Lines logged before the shim connects wait in the buffer; when it is full the oldest go,
//! and the next reader is told how many were lost. One reader at a time: a new connection
//! replaces the old one. Writing never blocks the agent's work: the buffer is filled by the
//! logging call and emptied by a task of the event loop that waits for the socket to be
//! writable.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;

use crate::listen::ListenAddr;

/// AF_VSOCK (40) as sockaddr_vm's family field holds it.
const VSOCK_FAMILY: libc::sa_family_t = 40;
/// sizeof(struct sockaddr_vm): 16 bytes.
const SOCKADDR_VM_LEN: libc::socklen_t = 16;

/// Bytes of log kept for a reader that is not there (or slow).
pub const BUFFER_BYTES: usize = 256 * 1024;

/// The agent's log lines on their way to the shim. Cheap to clone: the clones share it.
#[derive(Clone, Debug)]
pub struct LogBuffer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    lines: Mutex<Lines>,
    ready: Notify,
    limit: usize,
}

#[derive(Debug, Default)]
struct Lines {
    queue: VecDeque<Vec<u8>>,
    bytes: usize,
    dropped: u64,
}

impl Default for LogBuffer {
    fn default() -> Self {
        Self::with_limit(BUFFER_BYTES)
    }
}

impl LogBuffer {
    /// A buffer keeping at most `limit` bytes of lines.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                lines: Mutex::new(Lines::default()),
                ready: Notify::new(),
                limit,
            }),
        }
    }

    fn lines(&self) -> MutexGuard<'_, Lines> {
        // A panic while holding the lock left whole lines behind: keep using them.
        self.shared
            .lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `bytes` (one or more whole lines, as the formatter writes an event), dropping
    /// the oldest lines beyond the limit. A single chunk larger than the limit is cut.
    pub fn push(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut chunk = bytes[..bytes.len().min(self.shared.limit)].to_vec();
        if chunk.last() != Some(&b'\n') {
            chunk.push(b'\n');
        }
        {
            let mut lines = self.lines();
            lines.bytes += chunk.len();
            lines.queue.push_back(chunk);
            while lines.bytes > self.shared.limit {
                match lines.queue.pop_front() {
                    Some(old) => {
                        lines.bytes -= old.len();
                        lines.dropped += 1;
                    }
                    None => break,
                }
            }
        }
        self.shared.ready.notify_one();
    }

    /// Takes everything buffered, led by a line saying how many were dropped (if any).
    pub fn take(&self) -> Vec<u8> {
        let mut lines = self.lines();
        let mut out = Vec::with_capacity(lines.bytes + 64);
        if lines.dropped > 0 {
            out.extend_from_slice(
                format!(
                    " WARN {} log line(s) of the agent were dropped: nobody read them in time\n",
                    lines.dropped
                )
                .as_bytes(),
            );
            lines.dropped = 0;
        }
        for line in lines.queue.drain(..) {
            out.extend_from_slice(&line);
        }
        lines.bytes = 0;
        out
    }

    /// Waits until a line is pushed after the last [`LogBuffer::take`] (or was already).
    pub async fn wait(&self) {
        self.shared.ready.notified().await;
    }

    /// Serves the buffer on `addr` until the event loop ends: accepts a reader, writes it
    /// what is buffered and every new line; a new reader replaces the current one.
    pub async fn serve(self, addr: ListenAddr) -> io::Result<()> {
        let listener = register(bind(&addr)?, Interest::READABLE)?;
        let mut reader: Option<AsyncFd<OwnedFd>> = None;
        let mut pending: Vec<u8> = Vec::new();
        loop {
            if reader.is_some() && pending.is_empty() {
                pending = self.take();
            }
            tokio::select! {
                accepted = accept(&listener) => {
                    let stream = accepted?;
                    // The new reader gets everything not yet written to the old one.
                    reader = Some(register(stream, Interest::WRITABLE)?);
                }
                written = write_some(reader.as_ref(), &pending), if !pending.is_empty() => {
                    match written {
                        Ok(n) => {
                            pending.drain(..n);
                        }
                        // The reader went: what it did not take waits for the next one.
                        Err(_) => {
                            reader = None;
                            let rest = std::mem::take(&mut pending);
                            let newer = self.take();
                            self.requeue(rest, newer);
                        }
                    }
                }
                () = self.wait(), if pending.is_empty() => {}
            }
        }
    }

    /// Puts `rest` (not written) back before `newer` (taken since).
    fn requeue(&self, rest: Vec<u8>, newer: Vec<u8>) {
        for chunk in [rest, newer] {
            if !chunk.is_empty() {
                self.push(&chunk);
            }
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter {
            buffer: self.clone(),
            line: Vec::new(),
        }
    }
}

/// One event's text on its way into the [`LogBuffer`], pushed whole when dropped.
#[derive(Debug)]
pub struct LogWriter {
    buffer: LogBuffer,
    line: Vec<u8>,
}

impl io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.buffer.push(&self.line);
    }
}

/// Puts `fd` on the event loop's reactor.
fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd stays open, and its as_raw_fd is the same descriptor, for as long
    // as the AsyncFd owns it.
    Ok(unsafe { AsyncFd::register_with_interest(fd, interest) }?)
}

/// A non-blocking listening socket for `addr`.
fn bind(addr: &ListenAddr) -> io::Result<OwnedFd> {
    match addr {
        ListenAddr::Unix(path) => {
            // A socket left by an agent that died is replaced; one in use, or a file that is
            // not a socket, is not.
            crate::listen::remove_stale_socket(path).map_err(io::Error::other)?;
            let listener = std::os::unix::net::UnixListener::bind(path)?;
            listener.set_nonblocking(true)?;
            Ok(OwnedFd::from(listener))
        }
        ListenAddr::Vsock(port) => {
            // SAFETY: socket(2) with constant arguments; the result is checked.
            let fd = unsafe {
                libc::socket(
                    libc::AF_VSOCK,
                    libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    0,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a new descriptor nothing else owns.
            let socket = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: sockaddr_vm is plain data; all zeroes is a valid value.
            let mut address: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
            address.svm_family = VSOCK_FAMILY;
            address.svm_cid = libc::VMADDR_CID_ANY;
            address.svm_port = *port;
            // SAFETY: binds to a fully initialised sockaddr_vm of the size given.
            let rc = unsafe {
                libc::bind(
                    socket.as_raw_fd(),
                    (&address as *const libc::sockaddr_vm).cast(),
                    SOCKADDR_VM_LEN,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: listen(2) on a bound socket we own.
            if unsafe { libc::listen(socket.as_raw_fd(), 4) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(socket)
        }
    }
}

async fn accept(listener: &AsyncFd<OwnedFd>) -> io::Result<OwnedFd> {
    loop {
        let mut ready = listener.readable().await?;
        // SAFETY: accept4(2) on a listening socket we own, without an address buffer.
        let fd = unsafe {
            libc::accept4(
                listener.get_ref().as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: a new descriptor nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::WouldBlock => ready.clear_ready(),
            // The connection went before it was taken: wait for the next.
            io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => {}
            _ => return Err(err),
        }
    }
}

/// Writes some of `bytes` to `reader` when it is writable; pends forever without a reader.
async fn write_some(reader: Option<&AsyncFd<OwnedFd>>, bytes: &[u8]) -> io::Result<usize> {
    let Some(reader) = reader else {
        return std::future::pending().await;
    };
    loop {
        let mut ready = reader.writable().await?;
        // SAFETY: send(2) from a live buffer of the given length, on a socket we own;
        // MSG_NOSIGNAL: a reader that went is an error, not a SIGPIPE.
        let n = unsafe {
            libc::send(
                reader.get_ref().as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if let Ok(n) = usize::try_from(n) {
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            return Ok(n);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::WouldBlock => ready.clear_ready(),
            io::ErrorKind::Interrupted => {}
            _ => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, Write};

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn vsock_constants_match_libc() {
        assert_eq!(i32::from(VSOCK_FAMILY), libc::AF_VSOCK);
        assert_eq!(
            usize::try_from(SOCKADDR_VM_LEN).ok(),
            Some(std::mem::size_of::<libc::sockaddr_vm>())
        );
    }

    #[test]
    fn lines_wait_for_a_reader_and_the_oldest_go_first() {
        let buffer = LogBuffer::with_limit(16);
        buffer.push(b"one\n");
        buffer.push(b"two\n");
        assert_eq!(buffer.take(), b"one\ntwo\n");
        assert_eq!(buffer.take(), b"");
        for line in [&b"aaaaa\n"[..], b"bbbbb\n", b"ccccc\n"] {
            buffer.push(line);
        }
        let taken = String::from_utf8(buffer.take()).expect("text");
        assert!(
            taken.starts_with(" WARN 1 log line(s) of the agent were dropped"),
            "{taken}"
        );
        assert!(taken.ends_with("bbbbb\nccccc\n"), "{taken}");
    }

    #[test]
    fn an_events_text_is_one_line_pushed_when_written() {
        let buffer = LogBuffer::default();
        {
            use tracing_subscriber::fmt::MakeWriter;
            let mut writer = buffer.make_writer();
            writer.write_all(b" INFO hello").expect("write");
            writer.write_all(b" world").expect("write");
        }
        assert_eq!(buffer.take(), b" INFO hello world\n");
    }

    proptest! {
        #[test]
        fn the_buffer_never_holds_more_than_its_limit(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..50),
            limit in 1usize..100,
        ) {
            let buffer = LogBuffer::with_limit(limit);
            for chunk in &chunks {
                buffer.push(chunk);
                prop_assert!(buffer.lines().bytes <= limit);
            }
        }
    }

    #[test]
    fn a_reader_gets_what_was_logged_before_and_after_it_came_and_a_new_one_replaces_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("log.sock");
        let buffer = LogBuffer::default();
        buffer.push(b" INFO before anyone listened\n");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let served = buffer.clone();
        let addr = ListenAddr::Unix(path.clone());
        runtime.block_on(async move {
            tokio::spawn(served.serve(addr));
            tokio::task::yield_now().await;
            let read_line = |path: std::path::PathBuf| {
                tokio::task::spawn_blocking(move || {
                    let stream = std::os::unix::net::UnixStream::connect(&path).expect("connect");
                    let mut reader = std::io::BufReader::new(stream);
                    let mut lines = Vec::new();
                    for _ in 0..2 {
                        let mut line = String::new();
                        reader.read_line(&mut line).expect("a line");
                        lines.push(line);
                    }
                    lines
                })
            };
            let first = read_line(path.clone());
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            buffer.push(b" INFO while it listened\n");
            assert_eq!(
                first.await.expect("reader"),
                [
                    " INFO before anyone listened\n",
                    " INFO while it listened\n"
                ]
            );
            let second = read_line(path.clone());
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            buffer.push(b" INFO for the second reader\n");
            buffer.push(b" INFO and more\n");
            assert_eq!(
                second.await.expect("reader"),
                [" INFO for the second reader\n", " INFO and more\n"]
            );
        });
    }
}
