//! A minimal client of QEMU's machine protocol (QMP): newline-delimited JSON on a unix
//! socket. It negotiates capabilities, runs one command at a time and matches each answer to
//! its request by id, passing over the asynchronous events QEMU interleaves.
//!
//! Written here rather than taken from the `qapi` crate: hull needs four commands (status,
//! stop, cont, quit), and this is a hundred lines with no generated schema behind it.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Longest QMP line accepted from QEMU, in bytes; a longer one is an error, not an allocation.
const MAX_LINE: usize = 1 << 20;

/// Errors of a QMP session.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be reached or broke.
    #[error("QMP socket {path}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// QEMU closed the connection.
    #[error("QMP socket {path}: QEMU closed the connection")]
    Closed {
        /// The socket.
        path: PathBuf,
    },
    /// QEMU sent something that is not a QMP message.
    #[error("QMP socket {path}: unexpected message: {message}")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What arrived, or why it was refused.
        message: String,
    },
    /// QEMU answered the command with an error.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's error class.
        class: String,
        /// QEMU's description.
        desc: String,
    },
}

/// A negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    path: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
}

impl Qmp {
    /// Connects and leaves capability negotiation mode.
    pub async fn connect(path: &Path) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Io {
                path: path.to_owned(),
                source,
            })?;
        let (read, writer) = stream.into_split();
        let mut qmp = Self {
            path: path.to_owned(),
            reader: BufReader::new(read),
            writer,
            next_id: 0,
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(qmp.protocol(format!("expected the QMP greeting, got {greeting}")));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs `command` with `arguments` and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut request = json!({ "execute": command, "id": id });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        loop {
            let message = self.read_message().await?;
            if message.get("event").is_some() {
                tracing::debug!(event = %message, "QMP event");
                continue;
            }
            if message.get("id").and_then(Value::as_u64) != Some(id) {
                return Err(self.protocol(format!("answer to another request: {message}")));
            }
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                let field = |k| {
                    error
                        .get(k)
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_owned()
                };
                return Err(QmpError::Command {
                    command: command.to_owned(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(self.protocol(format!("neither return nor error: {message}")));
        }
    }

    /// The VM's run state (`running`, `paused`, `prelaunch`, ...).
    pub async fn status(&mut self) -> Result<String, QmpError> {
        let status = self.execute("query-status", None).await?;
        match status.get("status").and_then(Value::as_str) {
            Some(s) => Ok(s.to_owned()),
            None => Err(self.protocol(format!("query-status without a status: {status}"))),
        }
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .await
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Err(QmpError::Closed {
                path: self.path.clone(),
            });
        }
        if !line.ends_with('\n') {
            return Err(self.protocol(format!("a message longer than {MAX_LINE} bytes")));
        }
        serde_json::from_str(&line)
            .map_err(|e| self.protocol(format!("not JSON ({e}): {}", line.trim_end())))
    }

    fn protocol(&self, message: String) -> QmpError {
        QmpError::Protocol {
            path: self.path.clone(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::UnixListener;

    use super::*;

    /// A fake QEMU that sends `script` lines, one after each line it reads (the first
    /// before reading anything).
    async fn fake_qemu(script: Vec<&'static str>) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            for (i, line) in script.into_iter().enumerate() {
                if i > 0 {
                    let _ = stream.read(&mut buf).await;
                }
                stream.write_all(line.as_bytes()).await.unwrap();
            }
        });
        (dir, path)
    }

    const GREETING: &str = "{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n";

    #[tokio::test]
    async fn passes_over_events_and_matches_the_answer() {
        let (_dir, path) = fake_qemu(vec![
            GREETING,
            "{\"return\": {}, \"id\": 1}\n",
            "{\"event\": \"RESUME\", \"timestamp\": {}}\n{\"return\": {\"status\": \"running\", \"running\": true}, \"id\": 2}\n",
        ])
        .await;
        let mut qmp = Qmp::connect(&path).await.unwrap();
        assert_eq!(qmp.status().await.unwrap(), "running");
    }

    #[tokio::test]
    async fn command_errors_carry_qemus_class_and_description() {
        let (_dir, path) = fake_qemu(vec![
            GREETING,
            "{\"return\": {}, \"id\": 1}\n",
            "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command frob has not been found\"}, \"id\": 2}\n",
        ])
        .await;
        let mut qmp = Qmp::connect(&path).await.unwrap();
        let err = qmp.execute("frob", None).await.unwrap_err().to_string();
        assert_eq!(
            err,
            "QMP command frob failed: CommandNotFound: The command frob has not been found"
        );
    }

    #[tokio::test]
    async fn garbage_and_hangups_are_errors_not_panics() {
        let (_dir, path) = fake_qemu(vec!["this is not json\n"]).await;
        assert!(matches!(
            Qmp::connect(&path).await,
            Err(QmpError::Protocol { .. })
        ));
        let (_dir, path) = fake_qemu(vec![GREETING, "{\"return\": {}, \"id\": 99}\n"]).await;
        assert!(matches!(
            Qmp::connect(&path).await,
            Err(QmpError::Protocol { .. })
        ));
        // A hang-up is seen as EOF, or as EPIPE when it beats our write.
        let (_dir, path) = fake_qemu(vec![GREETING]).await;
        let result = Qmp::connect(&path).await;
        assert!(
            matches!(result, Err(QmpError::Closed { .. } | QmpError::Io { .. })),
            "{result:?}"
        );
    }
}
