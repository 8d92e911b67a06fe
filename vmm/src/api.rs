//! hull-vmm's control socket: a small HTTP/1.1 API on a unix socket, shaped like
//! cloud-hypervisor's (`curl --unix-socket PATH http://localhost/api/v1/vm.info`), served on
//! the device loop (see [`crate::event_loop`]):
//!
//! | request                   | answer                                                  |
//! |---------------------------|---------------------------------------------------------|
//! | `PUT /api/v1/vm.pause`    | 204; every vCPU is parked when it comes                 |
//! | `PUT /api/v1/vm.resume`   | 204                                                     |
//! | `PUT /api/v1/vm.shutdown` | 204; the VM stops and hull-vmm exits                    |
//! | `GET /api/v1/vm.info`     | 200 `{"state":"running"/"paused","vcpus":N,"memory_mib":M}` |
//! | `GET /api/v1/vmm.ping`    | 200 `{"version":"…","pid":N}`                           |
//!
//! Anything else is answered 400 (a malformed or oversized request), 404 (no such endpoint)
//! or 405 (wrong method), each with `{"error":"…"}` naming what was wrong, and every
//! connection is closed after its one answer.
//!
//! The peer is whoever can open the socket (mode 0600: hull-vmm's owner), still treated as
//! hostile input: a request is read without blocking, a piece at a time as it comes, capped at
//! [`MAX_REQUEST`] bytes head and body together; a client that never finishes its request
//! holds one of [`MAX_CONNECTIONS`] connections and nothing else, for [`IDLE_TIMEOUT`] at most
//! (a timerfd per connection, on the same loop), and the parser answers any bytes with a
//! request or a named error.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::timerfd::TimerFd;

use crate::event_loop::{EventSource, Next, Registrar};
use crate::vm::VmControl;

/// Largest request taken, head and body together.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Connections open at once; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a connection may stay open, its request and answer included (curl's take
/// milliseconds); then it is closed whatever it was doing.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method (`GET`, `PUT`, ...).
    pub method: String,
    /// The target's path, without its query.
    pub path: String,
    /// The body (`Content-Length` bytes).
    pub body: Vec<u8>,
}

/// Why bytes are not a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Head and body exceed [`MAX_REQUEST`].
    #[error("the request is larger than {MAX_REQUEST} bytes")]
    TooLarge,
    /// The head is not UTF-8.
    #[error("the request head is not UTF-8")]
    NotUtf8,
    /// The request line is not `METHOD /path HTTP/1.x`.
    #[error("malformed request line {0:?}: expected METHOD /path HTTP/1.1")]
    RequestLine(String),
    /// An HTTP version other than 1.0 and 1.1.
    #[error("unsupported HTTP version {0:?}: use HTTP/1.1")]
    Version(String),
    /// A header line without a name and a colon.
    #[error("malformed header line {0:?}")]
    Header(String),
    /// A `Content-Length` that is not a number, or two that differ.
    #[error("invalid Content-Length {0:?}")]
    ContentLength(String),
    /// Chunked bodies are not taken.
    #[error("Transfer-Encoding is not supported: send a Content-Length")]
    TransferEncoding,
}

/// Parses the request at the start of `buf`: `Ok(None)` while it is incomplete (read more),
/// else the request and how many bytes it took, or why it is no request.
pub fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>, RequestError> {
    let Some(head_len) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() >= MAX_REQUEST {
            Err(RequestError::TooLarge)
        } else {
            Ok(None)
        };
    };
    if head_len + 4 > MAX_REQUEST {
        return Err(RequestError::TooLarge);
    }
    let head = buf.get(..head_len).ok_or(RequestError::TooLarge)?;
    let head = std::str::from_utf8(head).map_err(|_| RequestError::NotUtf8)?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let bad_line = || RequestError::RequestLine(clip(line));
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad_line());
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad_line());
    }
    if !target.starts_with('/') {
        return Err(bad_line());
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(RequestError::Version(clip(version)));
    }
    let mut content_length: Option<usize> = None;
    for header in lines {
        let Some((name, value)) = header.split_once(':') else {
            return Err(RequestError::Header(clip(header)));
        };
        if name.is_empty()
            || name
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(RequestError::Header(clip(header)));
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("content-length") {
            let len = value
                .parse::<usize>()
                .ok()
                .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| RequestError::ContentLength(clip(value)))?;
            if content_length.is_some_and(|seen| seen != len) {
                return Err(RequestError::ContentLength(clip(value)));
            }
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(RequestError::TransferEncoding);
        }
    }
    let body_len = content_length.unwrap_or(0);
    let total = (head_len + 4)
        .checked_add(body_len)
        .filter(|total| *total <= MAX_REQUEST)
        .ok_or(RequestError::TooLarge)?;
    let Some(body) = buf.get(head_len + 4..total) else {
        return Ok(None);
    };
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    Ok(Some((
        Request {
            method: method.to_owned(),
            path: path.to_owned(),
            body: body.to_vec(),
        },
        total,
    )))
}

/// At most 64 bytes of `text`, for error messages (cut on a character boundary).
fn clip(text: &str) -> String {
    let mut end = text.len().min(64);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default().to_owned()
}

/// What the API can be asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `PUT /api/v1/vm.pause`.
    Pause,
    /// `PUT /api/v1/vm.resume`.
    Resume,
    /// `PUT /api/v1/vm.shutdown`.
    Shutdown,
    /// `GET /api/v1/vm.info`.
    Info,
    /// `GET /api/v1/vmm.ping`.
    Ping,
}

/// Every endpoint: path, method, action.
const ENDPOINTS: &[(&str, &str, Action)] = &[
    ("/api/v1/vm.pause", "PUT", Action::Pause),
    ("/api/v1/vm.resume", "PUT", Action::Resume),
    ("/api/v1/vm.shutdown", "PUT", Action::Shutdown),
    ("/api/v1/vm.info", "GET", Action::Info),
    ("/api/v1/vmm.ping", "GET", Action::Ping),
];

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// A JSON body, if any.
    pub body: Option<String>,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

impl Response {
    fn empty(status: u16) -> Self {
        Self {
            status,
            body: None,
            allow: None,
        }
    }

    fn json(status: u16, body: String) -> Self {
        Self {
            status,
            body: Some(body),
            allow: None,
        }
    }

    /// An error answer whose body is `{"error":"<message>"}`.
    pub fn error(status: u16, message: &str) -> Self {
        Self::json(status, format!("{{\"error\":{}}}", json_string(message)))
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            204 => "No Content",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            503 => "Service Unavailable",
            _ => "Internal Server Error",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nServer: hull-vmm\r\nConnection: close\r\n",
            self.status
        );
        if let Some(allow) = self.allow {
            out.push_str(&format!("Allow: {allow}\r\n"));
        }
        match &self.body {
            Some(body) => out.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )),
            None => out.push_str("\r\n"),
        }
        out.into_bytes()
    }
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The action `request` asks for, or the 404 or 405 that answers it.
pub fn route(request: &Request) -> Result<Action, Response> {
    let Some((path, method, action)) = ENDPOINTS.iter().find(|(path, _, _)| *path == request.path)
    else {
        let known: Vec<&str> = ENDPOINTS.iter().map(|(path, _, _)| *path).collect();
        return Err(Response::error(
            404,
            &format!(
                "no endpoint {}; there are {}",
                clip(&request.path),
                known.join(", ")
            ),
        ));
    };
    if request.method != *method {
        let mut response = Response::error(
            405,
            &format!(
                "method {} is not allowed on {path}: use {method}",
                clip(&request.method)
            ),
        );
        response.allow = Some(method);
        return Err(response);
    }
    Ok(*action)
}

/// Does `action` to the VM and answers.
pub fn handle(action: Action, vm: &VmControl) -> Response {
    match action {
        Action::Pause => {
            tracing::info!("pausing the VM (control socket)");
            vm.pause();
            Response::empty(204)
        }
        Action::Resume => {
            tracing::info!("resuming the VM (control socket)");
            vm.resume();
            Response::empty(204)
        }
        Action::Shutdown => {
            tracing::info!("stopping the VM (control socket)");
            vm.stop();
            Response::empty(204)
        }
        Action::Info => {
            let state = if vm.is_paused() { "paused" } else { "running" };
            Response::json(
                200,
                format!(
                    "{{\"state\":\"{state}\",\"vcpus\":{},\"memory_mib\":{}}}",
                    vm.vcpus(),
                    vm.memory_mib()
                ),
            )
        }
        Action::Ping => Response::json(
            200,
            format!(
                "{{\"version\":{},\"pid\":{}}}",
                json_string(env!("CARGO_PKG_VERSION")),
                std::process::id()
            ),
        ),
    }
}

/// The answer to the bytes received so far, if they make a request or cannot.
fn answer(buf: &[u8], vm: &VmControl) -> Option<Response> {
    match parse(buf) {
        Ok(None) => None,
        Ok(Some((request, _))) => Some(match route(&request) {
            Ok(action) => handle(action, vm),
            Err(response) => response,
        }),
        Err(err) => Some(Response::error(400, &err.to_string())),
    }
}

/// The control socket's listener, bound before the VM starts (so a client can connect as
/// soon as hull-vmm runs). Its file is removed when it is dropped, if it is still the one it
/// bound.
#[derive(Debug)]
pub struct ApiSocket {
    listener: UnixListener,
    path: PathBuf,
    ino: u64,
}

impl ApiSocket {
    /// Binds `path` with mode 0600, replacing a socket nobody listens on and never any other
    /// file (as hull-metrics' listener does). The error names the path.
    pub fn bind(path: &Path) -> io::Result<Self> {
        let named = |err: io::Error| {
            io::Error::new(err.kind(), format!("api socket {}: {err}", path.display()))
        };
        if let Ok(meta) = path.symlink_metadata() {
            if !meta.file_type().is_socket() {
                return Err(named(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "it exists and is not a socket: remove it or choose another --api-socket",
                )));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(named(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process serves it: choose another --api-socket",
                )));
            }
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path).map_err(named)?;
        let socket = Self {
            ino: path.symlink_metadata().map_err(named)?.ino(),
            path: path.to_owned(),
            listener,
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(named)?;
        socket.listener.set_nonblocking(true).map_err(named)?;
        Ok(socket)
    }
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        let ours = self
            .path
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_socket() && m.ino() == self.ino);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The control socket on the device loop, an [`EventSource`]: each connection it accepts
/// becomes a source of its own, added through the loop's [`Registrar`].
pub struct ApiServer {
    socket: ApiSocket,
    vm: VmControl,
    registrar: Registrar,
    open: Arc<AtomicUsize>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("path", &self.socket.path)
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish()
    }
}

impl ApiServer {
    /// Serves `socket` for `vm`; connections are added to the loop through `registrar`.
    pub fn new(socket: ApiSocket, vm: VmControl, registrar: Registrar) -> Self {
        Self {
            socket,
            vm,
            registrar,
            open: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl EventSource for ApiServer {
    fn name(&self) -> &str {
        "api-socket"
    }

    fn fds(&self) -> Vec<RawFd> {
        vec![self.socket.listener.as_raw_fd()]
    }

    fn ready(&mut self, _fd: RawFd) -> Next {
        // One at a time: the loop calls again while more wait (level-triggered).
        let mut stream = match self.socket.listener.accept() {
            Ok((stream, _)) => stream,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Next::Continue,
            Err(err) => {
                // EMFILE and the like: the client is refused, the socket stays.
                tracing::warn!(%err, path = %self.socket.path.display(), "cannot accept on the api socket");
                return Next::Continue;
            }
        };
        if stream.set_nonblocking(true).is_err() {
            return Next::Continue;
        }
        if self.open.load(Ordering::Acquire) >= MAX_CONNECTIONS {
            let busy = Response::error(
                503,
                &format!("{MAX_CONNECTIONS} connections are open already: finish one first"),
            );
            // What the client sent already is read first: closing a unix socket with unread
            // data resets it, and the client would not see the answer.
            let mut sent = [0u8; 4096];
            let mut taken = 0;
            while taken < MAX_REQUEST {
                match stream.read(&mut sent) {
                    Ok(read) if read > 0 => taken += read,
                    _ => break,
                }
            }
            let _ = stream.write_all(&busy.to_bytes());
            let _ = stream.shutdown(std::net::Shutdown::Write);
            return Next::Continue;
        }
        let mut timer = match TimerFd::new() {
            Ok(timer) => timer,
            Err(err) => {
                tracing::warn!(%err, "cannot time an api connection: refused");
                return Next::Continue;
            }
        };
        if let Err(err) = timer.reset(IDLE_TIMEOUT, None) {
            tracing::warn!(%err, "cannot time an api connection: refused");
            return Next::Continue;
        }
        self.open.fetch_add(1, Ordering::AcqRel);
        let connection = Connection::new(stream, timer, self.vm.clone(), Arc::clone(&self.open));
        if let Err(err) = self.registrar.add(Box::new(connection)) {
            tracing::warn!(%err, "cannot serve an api connection");
        }
        Next::Continue
    }
}

/// One client's connection: its request, read as it comes, then its answer; then whatever
/// else the client sends is read and dropped until it closes (closing a unix socket with
/// unread data resets it, and the client would lose the answer), a bounded amount per call.
struct Connection {
    stream: UnixStream,
    /// Fires [`IDLE_TIMEOUT`] after the connection was accepted.
    timer: TimerFd,
    buf: Vec<u8>,
    vm: VmControl,
    open: Arc<AtomicUsize>,
    answered: bool,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Bytes dropped per call from a client that goes on sending after its answer.
const DRAIN_PER_CALL: usize = 64 * 1024;

impl Connection {
    fn new(stream: UnixStream, timer: TimerFd, vm: VmControl, open: Arc<AtomicUsize>) -> Self {
        Self {
            stream,
            timer,
            buf: Vec::new(),
            vm,
            open,
            answered: false,
        }
    }

    /// Reads what is there into `chunk`: `Some(n)` bytes (0 at the end), `None` if nothing
    /// is there now; `Err` if the connection is broken.
    fn read(&mut self, chunk: &mut [u8]) -> Result<Option<usize>, ()> {
        loop {
            match self.stream.read(chunk) {
                Ok(read) => return Ok(Some(read)),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(()),
            }
        }
    }

    fn drain(&mut self) -> Next {
        let mut chunk = [0u8; 4096];
        let mut dropped = 0;
        while dropped < DRAIN_PER_CALL {
            match self.read(&mut chunk) {
                Ok(Some(0)) | Err(()) => return Next::Remove,
                Ok(Some(read)) => dropped += read,
                Ok(None) => return Next::Continue,
            }
        }
        Next::Continue
    }
}

impl EventSource for Connection {
    fn name(&self) -> &str {
        "api-connection"
    }

    fn fds(&self) -> Vec<RawFd> {
        vec![self.stream.as_raw_fd(), self.timer.as_raw_fd()]
    }

    fn ready(&mut self, fd: RawFd) -> Next {
        if fd == self.timer.as_raw_fd() {
            tracing::debug!(
                answered = self.answered,
                "api connection closed: open for {IDLE_TIMEOUT:?}"
            );
            return Next::Remove;
        }
        if self.answered {
            return self.drain();
        }
        let mut chunk = [0u8; 2048];
        loop {
            // One byte past the cap is enough to tell a request is too large.
            let room = (MAX_REQUEST + 1)
                .saturating_sub(self.buf.len())
                .min(chunk.len());
            let read = match self.read(chunk.get_mut(..room).unwrap_or_default()) {
                Ok(Some(read)) => read,
                Ok(None) => return Next::Continue,
                Err(()) => return Next::Remove,
            };
            self.buf
                .extend_from_slice(chunk.get(..read).unwrap_or_default());
            if let Some(response) = answer(&self.buf, &self.vm) {
                // A few hundred bytes into an empty socket buffer; a client that does not
                // read them loses them. Then the end of the answer, for the client to see.
                let _ = self.stream.write_all(&response.to_bytes());
                let _ = self.stream.shutdown(std::net::Shutdown::Write);
                self.answered = true;
                self.buf = Vec::new();
                return self.drain();
            }
            if read == 0 {
                // The client went before finishing its request.
                return Next::Remove;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Request {
        parse(text.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn parses_a_request_a_piece_at_a_time() {
        let text =
            b"PUT /api/v1/vm.pause?x=1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}";
        for end in 0..text.len() {
            assert_eq!(parse(&text[..end]), Ok(None), "complete at {end}");
        }
        let (request, used) = parse(text).unwrap().unwrap();
        assert_eq!(used, text.len());
        assert_eq!(request.method, "PUT");
        assert_eq!(request.path, "/api/v1/vm.pause");
        assert_eq!(request.body, b"{}");
    }

    #[test]
    fn what_curl_sends_is_routed() {
        let info = request("GET /api/v1/vm.info HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n");
        assert_eq!(route(&info), Ok(Action::Info));
        let pause = request("PUT /api/v1/vm.pause HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert_eq!(route(&pause), Ok(Action::Pause));
    }

    #[test]
    fn unknown_paths_and_wrong_methods_are_named() {
        let err = route(&request("GET /api/v1/vm.boot HTTP/1.1\r\n\r\n")).unwrap_err();
        assert_eq!(err.status, 404);
        assert!(err.body.unwrap().contains("no endpoint /api/v1/vm.boot"));
        let err = route(&request("GET /api/v1/vm.pause HTTP/1.1\r\n\r\n")).unwrap_err();
        assert_eq!(err.status, 405);
        assert_eq!(err.allow, Some("PUT"));
        assert!(err
            .body
            .unwrap()
            .contains("method GET is not allowed on /api/v1/vm.pause"));
    }

    #[test]
    fn malformed_requests_are_named() {
        for (text, error) in [
            ("GET\r\n\r\n", "malformed request line"),
            ("get /x HTTP/1.1\r\n\r\n", "malformed request line"),
            ("GET x HTTP/1.1\r\n\r\n", "malformed request line"),
            ("GET /x HTTP/2\r\n\r\n", "unsupported HTTP version"),
            (
                "GET /x HTTP/1.1\r\nnocolon\r\n\r\n",
                "malformed header line",
            ),
            (
                "GET /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                "GET /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                "GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                "Transfer-Encoding",
            ),
            (
                "GET /x HTTP/1.1\r\nContent-Length: 9000\r\n\r\n",
                "larger than 8192",
            ),
        ] {
            let err = parse(text.as_bytes()).unwrap_err();
            assert!(err.to_string().contains(error), "{text:?}: {err}");
        }
        let endless = vec![b'a'; MAX_REQUEST];
        assert_eq!(parse(&endless), Err(RequestError::TooLarge));
        assert_eq!(parse(&endless[..MAX_REQUEST - 1]), Ok(None));
    }

    #[test]
    fn answers_are_http_with_a_json_body() {
        let text =
            String::from_utf8(Response::error(400, "a \"quoted\"\nline").to_bytes()).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        let body = "{\"error\":\"a \\\"quoted\\\"\\u000aline\"}";
        assert!(
            text.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{text}"
        );
        assert!(text.ends_with(&format!("\r\n\r\n{body}")), "{text}");
        let text = String::from_utf8(Response::empty(204).to_bytes()).unwrap();
        assert!(text.starts_with("HTTP/1.1 204 No Content\r\n") && text.ends_with("\r\n\r\n"));
        assert!(!text.contains("Content-Length"));
    }

    #[test]
    fn a_stale_socket_is_replaced_a_live_one_or_a_file_kept_and_ours_removed_on_drop() {
        let dir = std::env::temp_dir().join(format!("hull-vmm-api-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("api.sock");
        // Stale: bound by a listener that is gone.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let socket = ApiSocket::bind(&path).expect("a stale socket is replaced");
        let mode = path.symlink_metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Live: refused, and left to its owner.
        let err = ApiSocket::bind(&path).unwrap_err();
        assert!(
            err.to_string().contains("another process serves it"),
            "{err}"
        );
        assert!(UnixStream::connect(&path).is_ok());
        drop(socket);
        assert!(!path.exists(), "the socket file is left behind");
        // Not a socket: refused, kept.
        std::fs::write(&path, b"data").unwrap();
        let err = ApiSocket::bind(&path).unwrap_err();
        assert!(err.to_string().contains("is not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest::proptest! {
        /// Any bytes: incomplete, a request within the cap, or a named error; never a panic.
        #[test]
        fn any_bytes_are_a_request_or_a_named_error(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..10_000)) {
            match parse(&bytes) {
                Ok(Some((request, used))) => {
                    proptest::prop_assert!(used <= bytes.len() && used <= MAX_REQUEST);
                    proptest::prop_assert!(request.path.starts_with('/'));
                }
                Ok(None) => proptest::prop_assert!(bytes.len() < MAX_REQUEST),
                Err(err) => proptest::prop_assert!(!err.to_string().is_empty()),
            }
        }

        /// Request-like text with random methods, paths, headers and lengths: the same.
        #[test]
        fn request_like_text_is_a_request_or_a_named_error(
            method in "[A-Za-z]{0,8}",
            path in "/?[a-z./?=]{0,20}",
            version in "HTTP/1\\.[01]|HTTP/[0-9.]{0,4}",
            headers in proptest::collection::vec("[A-Za-z-]{0,12}: ?[0-9a-z -]{0,12}", 0..6),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let mut text = format!("{method} {path} {version}\r\n").into_bytes();
            for header in &headers {
                text.extend_from_slice(header.as_bytes());
                text.extend_from_slice(b"\r\n");
            }
            text.extend_from_slice(b"\r\n");
            text.extend_from_slice(&body);
            if let Ok(Some((request, _))) = parse(&text) {
                proptest::prop_assert_eq!(&request.method, &method);
                // Routing any request answers, whatever it is.
                let _ = route(&request);
            }
        }
    }
}
