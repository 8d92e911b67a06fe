//! The host side of hybrid vsock, the convention of Firecracker, cloud-hypervisor and
//! hull-vsock: connect to the backend's unix socket, write `CONNECT <port>\n`, read
//! `OK <host port>\n`, and the socket is then a byte stream to the guest's listener on that
//! vsock port. This is how the shim reaches the agent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Longest handshake answer accepted (`OK 4294967295\n` is 14 bytes).
const MAX_ANSWER: usize = 32;

/// Errors of a hybrid vsock connection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The unix socket could not be reached or broke during the handshake.
    #[error("hybrid vsock {uds}: connecting to guest port {port}")]
    Io {
        /// The backend's unix socket.
        uds: PathBuf,
        /// The guest port.
        port: u32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The backend answered, but not `OK`: typically nothing listens on the port yet.
    #[error("hybrid vsock {uds}: guest port {port} refused the connection (answer {answer:?})")]
    Refused {
        /// The backend's unix socket.
        uds: PathBuf,
        /// The guest port.
        port: u32,
        /// What came back, as far as it was read.
        answer: String,
    },
    /// The guest did not accept within the deadline; the last attempt's error is the source.
    #[error("guest port {port} did not accept a connection within {deadline:?}")]
    Timeout {
        /// The guest port.
        port: u32,
        /// The bound.
        deadline: Duration,
        /// The last attempt's error.
        #[source]
        last: Box<Error>,
    },
}

/// A `Result` with this module's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Connects to guest vsock `port` through the hybrid vsock socket `uds`, once.
pub async fn connect(uds: &Path, port: u32) -> Result<UnixStream> {
    let io = |source| Error::Io {
        uds: uds.to_owned(),
        port,
        source,
    };
    let mut stream = UnixStream::connect(uds).await.map_err(io)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(io)?;
    // Byte by byte: what follows the newline is the guest's stream, not ours to read.
    let mut answer = Vec::with_capacity(MAX_ANSWER);
    loop {
        let mut byte = [0u8; 1];
        let n = stream.read(&mut byte).await.map_err(io)?;
        if n == 0 || answer.len() == MAX_ANSWER {
            break;
        }
        if byte[0] == b'\n' {
            let text = String::from_utf8_lossy(&answer);
            let host_port = text.strip_prefix("OK ").and_then(|p| p.parse::<u32>().ok());
            if host_port.is_some() {
                return Ok(stream);
            }
            break;
        }
        answer.push(byte[0]);
    }
    Err(Error::Refused {
        uds: uds.to_owned(),
        port,
        answer: String::from_utf8_lossy(&answer).into_owned(),
    })
}

/// Connects like [`connect`], retrying every `interval` until `deadline` passes: while the
/// guest boots, the socket may not exist yet and the port may have no listener. An attempt
/// whose `CONNECT` the guest never answers (a guest that hung in its boot, or whose vsock
/// driver never takes the request off its queue) is cut at the deadline too: the deadline
/// bounds the whole wait, not only the number of attempts.
pub async fn connect_until(
    uds: &Path,
    port: u32,
    deadline: Duration,
    interval: Duration,
) -> Result<UnixStream> {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        let attempt = match tokio::time::timeout_at(end, connect(uds, port)).await {
            Ok(attempt) => attempt,
            Err(_) => Err(Error::Io {
                uds: uds.to_owned(),
                port,
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer to CONNECT: the guest did not take the request",
                ),
            }),
        };
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(err) => {
                if tokio::time::Instant::now() + interval >= end {
                    return Err(Error::Timeout {
                        port,
                        deadline,
                        last: Box::new(err),
                    });
                }
                tracing::trace!(%err, "guest not accepting yet");
                tokio::time::sleep(interval).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::UnixListener;

    use super::*;

    /// A fake backend: answers each connection's handshake with `answer`, then echoes.
    fn fake_backend(listener: UnixListener, answer: &'static str) {
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0u8; 64];
                    let n = stream.read(&mut request).await.unwrap_or(0);
                    assert!(request[..n].starts_with(b"CONNECT 1024\n"));
                    // Send the answer and the guest's first bytes in one write, as a real
                    // backend may: the connector must not eat them.
                    let mut first = answer.as_bytes().to_vec();
                    first.extend_from_slice(b"guest-first|");
                    if stream.write_all(&first).await.is_err() {
                        return;
                    }
                    let mut buf = [0u8; 64];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }

    #[tokio::test]
    async fn handshake_then_the_stream_belongs_to_the_guest() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        fake_backend(UnixListener::bind(&uds).unwrap(), "OK 1073741824\n");
        let mut stream = connect(&uds, 1024).await.unwrap();
        stream.write_all(b"ping").await.unwrap();
        let mut got = vec![0u8; "guest-first|ping".len()];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"guest-first|ping");
    }

    #[tokio::test]
    async fn a_refusal_names_the_port_and_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        fake_backend(UnixListener::bind(&uds).unwrap(), "ERR no listener\n");
        let err = connect(&uds, 1024).await.unwrap_err();
        assert!(matches!(err, Error::Refused { port: 1024, .. }), "{err:?}");
        assert!(err.to_string().contains("ERR no listener"), "{err}");
    }

    #[tokio::test]
    async fn an_endless_answer_is_cut_off_not_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        fake_backend(
            UnixListener::bind(&uds).unwrap(),
            "OKOKOKOKOKOKOKOKOKOKOKOKOKOKOKOKOKOKOKOKOKOK",
        );
        let err = connect(&uds, 1024).await.unwrap_err();
        assert!(
            matches!(err, Error::Refused { ref answer, .. } if answer.len() == MAX_ANSWER),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn retries_until_the_guest_listens() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let late = uds.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            fake_backend(UnixListener::bind(&late).unwrap(), "OK 5\n");
        });
        let stream = connect_until(
            &uds,
            1024,
            Duration::from_secs(30),
            Duration::from_millis(20),
        )
        .await;
        assert!(stream.is_ok(), "{stream:?}");
    }

    #[tokio::test]
    async fn a_connect_the_guest_never_answers_ends_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("silent.sock");
        // A backend that takes the connection and the CONNECT line and never answers, as
        // one does for a guest that never takes the request off its queue.
        let listener = UnixListener::bind(&uds).unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let waited = tokio::time::timeout(
            Duration::from_secs(30),
            connect_until(
                &uds,
                1024,
                Duration::from_millis(300),
                Duration::from_millis(20),
            ),
        )
        .await
        .expect("connect_until returns although the guest never answers");
        let err = waited.unwrap_err();
        assert!(matches!(err, Error::Timeout { port: 1024, .. }), "{err:?}");
        let chain = format!("{:?}", anyhow::Error::from(err));
        assert!(chain.contains("no answer to CONNECT"), "{chain}");
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline_with_the_last_error() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("never.sock");
        let err = connect_until(
            &uds,
            1024,
            Duration::from_millis(100),
            Duration::from_millis(20),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Timeout { port: 1024, .. }), "{err:?}");
        let chain = format!("{:?}", anyhow::Error::from(err));
        assert!(chain.contains("never.sock"), "{chain}");
    }
}
