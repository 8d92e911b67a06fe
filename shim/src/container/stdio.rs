//! A process's stdio between containerd's FIFOs and the agent's stream calls.
//!
//! Each stream is a task on the shim's one event loop, not a thread: output is read from the
//! agent (ReadStdout/ReadStderr, which wait for data and answer empty at the end of the
//! stream) and written to containerd's FIFO; input is read from containerd's stdin FIFO (a
//! non-blocking pipe the loop polls) and written with WriteStdin, then CloseStdin at its end
//! or when containerd's CloseIO says so. Only `fifo` paths are supported (what `ctr` and CRI
//! give); containerd's `binary://` and `file://` loggers are refused at Create.

use std::io::ErrorKind;
use std::sync::Arc;

use hull_agent_protocol::ttrpc::Code;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::agent_link::{AgentLink, OutputStream};

/// Bytes asked of the agent per read, and read from the stdin FIFO at once.
const CHUNK: u32 = 64 * 1024;

/// The stdio containerd gave a process (FIFO paths; empty for a stream it does not want).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    /// Where the process's input comes from.
    pub stdin: String,
    /// Where its output goes.
    pub stdout: String,
    /// Where its errors go (unused with a terminal).
    pub stderr: String,
    /// Whether the process has a terminal (then stdout carries both outputs).
    pub terminal: bool,
}

impl StdioPaths {
    /// The first path that is not a plain FIFO path, with its scheme, if any.
    pub fn unsupported(&self) -> Option<&str> {
        [&self.stdin, &self.stdout, &self.stderr]
            .into_iter()
            .map(String::as_str)
            .find(|p| p.contains("://"))
    }
}

/// Which process of which container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRef {
    /// The container.
    pub container_id: String,
    /// The exec id, empty for the init process.
    pub exec_id: String,
}

/// The copy tasks of one process.
#[derive(Debug, Default)]
pub struct StdioCopy {
    /// Output copies; they end at the end of the process's streams.
    pub outputs: Vec<JoinHandle<()>>,
    /// Set by CloseIO: the input copy sends what is buffered, then closes stdin.
    pub close_stdin: Option<Arc<Notify>>,
}

/// Starts copying the process's output and input.
pub fn start(agent: &AgentLink, process: &ProcessRef, paths: &StdioPaths) -> StdioCopy {
    let mut streams = vec![(OutputStream::Stdout, paths.stdout.clone())];
    if !paths.terminal {
        streams.push((OutputStream::Stderr, paths.stderr.clone()));
    }
    let outputs = streams
        .into_iter()
        .map(|(stream, path)| {
            tokio::spawn(copy_output(agent.clone(), process.clone(), stream, path))
        })
        .collect();
    let close_stdin = (!paths.stdin.is_empty()).then(|| {
        let notify = Arc::new(Notify::new());
        tokio::spawn(copy_input(
            agent.clone(),
            process.clone(),
            paths.stdin.clone(),
            Arc::clone(&notify),
        ));
        notify
    });
    StdioCopy {
        outputs,
        close_stdin,
    }
}

/// Copies one output stream until its end. With no FIFO (an empty path) the output is still
/// read and dropped, so the process never blocks on a full pipe.
async fn copy_output(agent: AgentLink, process: ProcessRef, stream: OutputStream, path: String) {
    let mut fifo = if path.is_empty() {
        None
    } else {
        // Read-write, so opening never fails for want of a reader (containerd's reader may
        // come later); only this end writes, so the reader still sees the end of file when
        // it is closed.
        match pipe::OpenOptions::new().read_write(true).open_sender(&path) {
            Ok(fifo) => Some(fifo),
            Err(err) => {
                tracing::error!(container = %process.container_id, exec = %process.exec_id, %path, %err, "opening the output FIFO; output is dropped");
                None
            }
        }
    };
    loop {
        let data = match agent
            .read_stream(stream, &process.container_id, &process.exec_id, CHUNK)
            .await
        {
            Ok(data) if data.is_empty() => break,
            Ok(data) => data,
            Err(err) => {
                // NOT_FOUND: the process was removed before its output ended.
                if err.code() != Some(Code::NOT_FOUND) {
                    tracing::warn!(container = %process.container_id, exec = %process.exec_id, ?stream, "reading output: {}", err.agent_message());
                }
                break;
            }
        };
        if let Some(writer) = fifo.as_mut() {
            if let Err(err) = writer.write_all(&data).await {
                tracing::warn!(container = %process.container_id, %path, %err, "writing to the output FIFO; the rest is dropped");
                fifo = None;
            }
        }
    }
}

/// Copies stdin until its end (or CloseIO), then closes the process's stdin.
async fn copy_input(agent: AgentLink, process: ProcessRef, path: String, close: Arc<Notify>) {
    // Read-only, so the end of file comes when containerd closes its end. The reader is
    // opened without waiting for a writer; a read before containerd's writer is there would
    // answer end of file, so reads wait for readiness first: a FIFO that never had a writer
    // is not readable until one writes or goes away.
    let fifo = match pipe::OpenOptions::new().open_receiver(&path) {
        Ok(fifo) => Some(fifo),
        Err(err) => {
            tracing::error!(container = %process.container_id, exec = %process.exec_id, %path, %err, "opening the stdin FIFO; stdin is closed");
            None
        }
    };
    if let Some(fifo) = fifo {
        let mut buf = vec![0u8; CHUNK as usize];
        let mut closing = false;
        loop {
            if !closing {
                tokio::select! {
                    ready = fifo.readable() => {
                        if let Err(err) = ready {
                            tracing::warn!(container = %process.container_id, %err, "polling the stdin FIFO");
                            break;
                        }
                    }
                    // CloseIO: send what containerd already wrote, then close.
                    () = close.notified() => closing = true,
                }
            }
            match fifo.try_read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if !write_all(&agent, &process, &buf[..n]).await {
                        return;
                    }
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock && closing => break,
                Err(err)
                    if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(err) => {
                    tracing::warn!(container = %process.container_id, %err, "reading the stdin FIFO");
                    break;
                }
            }
        }
    }
    if let Err(err) = agent
        .close_stdin(&process.container_id, &process.exec_id)
        .await
    {
        if err.code() != Some(Code::NOT_FOUND) {
            tracing::warn!(container = %process.container_id, exec = %process.exec_id, "closing stdin: {}", err.agent_message());
        }
    }
}

/// Writes all of `data` to the process's stdin; false if the process no longer takes input.
async fn write_all(agent: &AgentLink, process: &ProcessRef, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        match agent
            .write_stdin(&process.container_id, &process.exec_id, data.to_vec())
            .await
        {
            Ok(0) => {
                // The agent took nothing (a full pipe): yield, then offer the rest again.
                tokio::task::yield_now().await;
            }
            Ok(n) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX).min(data.len());
                data = &data[n..];
            }
            Err(err) => {
                if err.code() != Some(Code::NOT_FOUND) {
                    tracing::warn!(container = %process.container_id, exec = %process.exec_id, "writing stdin: {}", err.agent_message());
                }
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logger_uris_are_named_as_unsupported() {
        let paths = StdioPaths {
            stdout: "binary:///usr/bin/logger?x=y".into(),
            ..Default::default()
        };
        assert_eq!(paths.unsupported(), Some("binary:///usr/bin/logger?x=y"));
        let fifos = StdioPaths {
            stdin: "/run/fifo/0-stdin".into(),
            stdout: "/run/fifo/0-stdout".into(),
            ..Default::default()
        };
        assert_eq!(fifos.unsupported(), None);
    }
}
