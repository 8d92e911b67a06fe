//! The agent's log in the shim's log: the agent serves its log lines (see hull-agent's
//! `log_forward`) on guest vsock port [`AGENT_LOG_VSOCK_PORT`] (a unix socket for the `none`
//! hypervisor's host agent); the shim reads them and logs each again, at the agent's level,
//! with `source = "agent"` and the sandbox id, so they reach containerd's log (and journald)
//! beside the shim's own lines, as Kata's shim does with its agent's.
//!
//! Forwarding is best effort: an agent that does not serve its log (an older guest image) only
//! costs a debug line, and the task ends when the agent's side closes (the VM stopped).

use std::path::PathBuf;

use hull_agent_protocol::AGENT_LOG_VSOCK_PORT;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::task::JoinHandle;

/// Longest line logged again; the rest of a longer one is cut.
const MAX_LINE: usize = 16 * 1024;

/// Where the agent serves its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogSource {
    /// The guest's port through the hybrid vsock socket of hull-vsock (or hull-vmm).
    HybridVsock(PathBuf),
    /// A host agent's unix socket (`hull-agent --log-listen unix:PATH`).
    Unix(PathBuf),
}

/// A forwarding task, stopped when dropped (it also ends by itself at the end of the log).
#[derive(Debug)]
pub struct Forwarding(JoinHandle<()>);

impl Forwarding {
    /// Starts forwarding, see [`forward`].
    pub fn start(source: LogSource, sandbox: String) -> Self {
        Self(forward(source, sandbox))
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts forwarding the log of the agent of sandbox `sandbox` from `source`; the task ends
/// at the end of the agent's log. Abort it to stop earlier.
pub fn forward(source: LogSource, sandbox: String) -> JoinHandle<()> {
    tokio::spawn(async move {
        let stream = match &source {
            LogSource::HybridVsock(uds) => crate::hybrid_vsock::connect(uds, AGENT_LOG_VSOCK_PORT)
                .await
                .map_err(|e| e.to_string()),
            LogSource::Unix(path) => tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| format!("{}: {e}", path.display())),
        };
        match stream {
            Ok(stream) => relay(stream, &sandbox).await,
            Err(err) => {
                tracing::debug!(%sandbox, %err, "the agent's log is not forwarded (an agent that does not serve it?)")
            }
        }
    })
}

/// Logs every line of `stream` again, until its end.
async fn relay(stream: impl AsyncRead + Unpin, sandbox: &str) {
    relay_lines(stream, |line| emit(line, sandbox)).await;
}

/// Calls `each` with every line of `stream` (lines longer than [`MAX_LINE`] in pieces), until
/// its end or an error.
async fn relay_lines(stream: impl AsyncRead + Unpin, mut each: impl FnMut(&str)) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) => break,
            Ok(_) => each(&String::from_utf8_lossy(&line)),
            Err(err) => {
                tracing::debug!(%err, "reading the agent's log");
                break;
            }
        }
    }
}

/// The agent's level and message of one of its log lines (` INFO message key=value`), or
/// INFO and the whole line when it does not start with a level.
pub fn parse_line(line: &str) -> (tracing::Level, &str) {
    let line = line.trim_end_matches(['\n', '\r']);
    let trimmed = line.trim_start();
    let (word, rest) = trimmed.split_once(' ').unwrap_or((trimmed, ""));
    let level = match word {
        "ERROR" => tracing::Level::ERROR,
        "WARN" => tracing::Level::WARN,
        "INFO" => tracing::Level::INFO,
        "DEBUG" => tracing::Level::DEBUG,
        "TRACE" => tracing::Level::TRACE,
        _ => return (tracing::Level::INFO, line),
    };
    (level, rest.trim_start())
}

fn emit(line: &str, sandbox: &str) {
    let (level, message) = parse_line(line);
    if message.is_empty() {
        return;
    }
    // tracing needs the level at compile time: one call per level.
    match level {
        tracing::Level::ERROR => {
            tracing::error!(source = "agent", %sandbox, "{message}")
        }
        tracing::Level::WARN => tracing::warn!(source = "agent", %sandbox, "{message}"),
        tracing::Level::INFO => tracing::info!(source = "agent", %sandbox, "{message}"),
        tracing::Level::DEBUG => {
            tracing::debug!(source = "agent", %sandbox, "{message}")
        }
        tracing::Level::TRACE => {
            tracing::trace!(source = "agent", %sandbox, "{message}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_agents_level_leads_its_lines() {
        assert_eq!(
            parse_line(" INFO serving hull.agent.v1 addr=vsock:1024\n"),
            (
                tracing::Level::INFO,
                "serving hull.agent.v1 addr=vsock:1024"
            )
        );
        assert_eq!(
            parse_line("ERROR container x failed\n"),
            (tracing::Level::ERROR, "container x failed")
        );
        assert_eq!(
            parse_line(" WARN 3 log line(s) of the agent were dropped\n"),
            (
                tracing::Level::WARN,
                "3 log line(s) of the agent were dropped"
            )
        );
        assert_eq!(
            parse_line("kernel: something else\n"),
            (tracing::Level::INFO, "kernel: something else")
        );
        assert_eq!(parse_line("\n"), (tracing::Level::INFO, ""));
    }

    proptest! {
        #[test]
        fn any_line_parses_without_panic(line in "\\PC{0,80}") {
            let (_, message) = parse_line(&line);
            prop_assert!(line.contains(message));
        }
    }

    #[tokio::test]
    async fn a_stream_of_lines_is_relayed_to_its_end_and_long_lines_in_pieces() {
        let long = "x".repeat(MAX_LINE + 10);
        let text = format!(" INFO one\nWARN two\n{long}\n DEBUG last");
        let mut seen = Vec::new();
        relay_lines(text.as_bytes(), |line| {
            let (level, message) = parse_line(line);
            seen.push((level, message.to_owned()));
        })
        .await;
        let expected = [
            (tracing::Level::INFO, "one".to_owned()),
            (tracing::Level::WARN, "two".to_owned()),
            (tracing::Level::INFO, long[..MAX_LINE].to_owned()),
            (tracing::Level::INFO, "x".repeat(10)),
            (tracing::Level::DEBUG, "last".to_owned()),
        ];
        assert_eq!(seen, expected);
    }
}
