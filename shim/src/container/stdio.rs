//! A process's stdio between containerd's FIFOs and the agent's stream calls.
//!
//! Each stream is a task on the shim's one event loop, not a thread: output is read from the
//! agent (ReadStdout/ReadStderr, which wait for data and answer empty at the end of the
//! stream) and written to containerd's FIFO; input is read from containerd's stdin FIFO and
//! written with WriteStdin, then CloseStdin at its end or when containerd's CloseIO says so.
//! The FIFOs are read and written through the shim's io_uring ([`crate::uring`]), whose
//! completions the same loop reaps. Only `fifo` paths are supported (what `ctr` and CRI
//! give); containerd's `binary://` and `file://` loggers are refused at Create.

use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::Arc;

use hull_agent_protocol::ttrpc::Code;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::agent_link::{AgentLink, OutputStream};
use crate::uring;

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
        // Write-only, once containerd's reader is there: the reader sees the end of file
        // when this end closes, and nothing written is lost before it came.
        match open_for_reader(&path, READER_WAIT)
            .await
            .and_then(|fd| Ok((uring::shim_ring()?, fd)))
        {
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
        if let Some((ring, fd)) = fifo.as_ref() {
            // Through the shim's io_uring: a full FIFO (containerd reading slowly) waits in
            // the kernel, and an abandoned copy's write is cancelled with it.
            if let (Err(err), _) = ring.write_all(fd, data).await {
                tracing::warn!(container = %process.container_id, %path, %err, "writing to the output FIFO; the rest is dropped");
                fifo = None;
            }
        }
    }
    if let Some((_, fd)) = fifo {
        wait_drained(&fd, DRAIN_WAIT).await;
    }
}

/// How long the end of an output waits for containerd's reader to take what is left.
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits (up to `bound`) until the reader has taken everything written to the FIFO `fd`.
/// The process's exit is reported once its outputs end, and a client may give up its reader
/// at the exit: `ctr`'s reader, opened in a goroutine, throws away a FIFO whose open(2)
/// returned just before the client was cancelled, with whatever was in it (`hull-bench soak`
/// lost 2 of 2,000 short outputs that way at load 17). Once the pipe is empty the reader
/// has the output in hand. A reader that never reads costs `bound`, then the FIFO closes as
/// before.
async fn wait_drained(fd: &OwnedFd, bound: std::time::Duration) {
    use std::os::fd::AsRawFd;
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let mut unread: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int into `unread`, which outlives the call; `fd` is a
        // FIFO this copy owns (either end of a pipe answers FIONREAD).
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut unread) };
        if rc != 0 || unread == 0 || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// How long an output copy waits for containerd's reader to open the FIFO.
const READER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens the output FIFO at `path` for writing once a reader has it open, waiting up to
/// `bound` (and not blocking the loop: a non-blocking write-only open fails with ENXIO until
/// then), as containerd's own shims wait for theirs. A write end opened without a reader
/// (read-write, say) loses what it wrote if it is closed before the reader comes: a short
/// process's whole output could vanish when `ctr`'s reader, opened in its own goroutine, came
/// late (`hull-bench soak` lost 3 of 2,000 outputs that way on a loaded machine). The end is
/// made blocking again for the io_uring writes.
async fn open_for_reader(path: &str, bound: std::time::Duration) -> std::io::Result<Arc<OwnedFd>> {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        match open_fifo(path, libc::O_WRONLY | libc::O_NONBLOCK) {
            Ok(fd) => {
                use std::os::fd::AsRawFd;
                // SAFETY: fcntl on a descriptor `fd` owns, with integer arguments only.
                let cleared = unsafe {
                    let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
                    flags >= 0
                        && libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK)
                            == 0
                };
                if !cleared {
                    return Err(std::io::Error::last_os_error());
                }
                return Ok(fd);
            }
            Err(err) if err.raw_os_error() == Some(libc::ENXIO) => {}
            Err(err) => return Err(err),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(std::io::Error::new(
                ErrorKind::TimedOut,
                format!("nobody opened it for reading within {bound:?}"),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Opens the FIFO at `path` with `flags` (and close-on-exec), refusing anything else.
fn open_fifo(path: &str, flags: libc::c_int) -> std::io::Result<Arc<OwnedFd>> {
    let file = std::fs::OpenOptions::new()
        .read(flags & libc::O_ACCMODE != libc::O_WRONLY)
        .write(flags & libc::O_ACCMODE != libc::O_RDONLY)
        .custom_flags(flags & !libc::O_ACCMODE)
        .open(path)?;
    if !file.metadata()?.file_type().is_fifo() {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            "not a FIFO (containerd gives FIFOs for a process's stdio)",
        ));
    }
    Ok(Arc::new(OwnedFd::from(file)))
}

/// Copies stdin until its end (or CloseIO), then closes the process's stdin.
async fn copy_input(agent: AgentLink, process: ProcessRef, path: String, close: Arc<Notify>) {
    // Read-only, so the end of file comes when containerd closes its end; opened without
    // waiting for a writer.
    let fifo = open_fifo(&path, libc::O_RDONLY | libc::O_NONBLOCK)
        .and_then(|fd| Ok((uring::shim_ring()?, fd)));
    match fifo {
        Ok((ring, fd)) => copy_input_from(&agent, &process, ring, &fd, &close).await,
        Err(err) => {
            tracing::error!(container = %process.container_id, exec = %process.exec_id, %path, %err, "opening the stdin FIFO; stdin is closed");
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

/// The input copy's reads, through the shim's io_uring, until the end of the FIFO or, after
/// CloseIO (or the process's end), until what containerd already wrote is sent (that last
/// drain by plain non-blocking reads).
async fn copy_input_from(
    agent: &AgentLink,
    process: &ProcessRef,
    ring: &uring::Ring,
    fd: &Arc<OwnedFd>,
    close: &Notify,
) {
    let mut buf = vec![0u8; CHUNK as usize];
    let mut closing = false;
    // A read before containerd's writer has come answers end of file, so the copy first
    // waits for readiness: a FIFO that never had a writer is not readable until one writes
    // or goes away. Later reads wait in the kernel (a kernel that answers EAGAIN for a
    // non-blocking FIFO instead gets another readiness wait).
    let mut wait_ready = true;
    loop {
        if wait_ready && !closing {
            let mut ready = ring.poll(fd, libc::POLLIN);
            tokio::select! {
                (result, _) = &mut ready => {
                    if let Err(err) = result {
                        tracing::warn!(container = %process.container_id, %err, "polling the stdin FIFO");
                        return;
                    }
                    wait_ready = false;
                }
                // CloseIO: send what containerd already wrote, then close.
                () = close.notified() => closing = true,
            }
        }
        let (result, back) = if closing {
            // Only what is there now: the FIFO is non-blocking, so read(2) answers at once.
            // Not a RWF_NOWAIT read through the ring: the kernel refuses those on a named
            // FIFO (EOPNOTSUPP: fifo_open does not mark the file FMODE_NOWAIT).
            read_now(fd, buf)
        } else {
            let mut read = ring.read(fd, buf, false);
            tokio::select! {
                outcome = &mut read => outcome,
                () = close.notified() => {
                    closing = true;
                    // A read that completed meanwhile keeps its data.
                    read.cancel();
                    read.await
                }
            }
        };
        buf = back;
        match result {
            Ok(0) => break,
            Ok(n) => {
                if !write_all(agent, process, &buf[..n]).await {
                    return;
                }
            }
            Err(err) if err.raw_os_error() == Some(libc::ECANCELED) => {}
            Err(err) if err.kind() == ErrorKind::WouldBlock && closing => break,
            Err(err) if err.kind() == ErrorKind::WouldBlock => wait_ready = true,
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => {
                tracing::warn!(container = %process.container_id, %err, "reading the stdin FIFO");
                break;
            }
        }
    }
}

/// One read(2) of the non-blocking `fd` into `buf`, as the ring's reads answer.
fn read_now(fd: &OwnedFd, mut buf: Vec<u8>) -> (std::io::Result<usize>, Vec<u8>) {
    use std::os::fd::AsRawFd;
    // SAFETY: reads at most buf.len() bytes into `buf`, which outlives the call, from a
    // descriptor this copy owns.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    let result = usize::try_from(n).map_err(|_| std::io::Error::last_os_error());
    (result, buf)
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

    /// A FIFO in a fresh directory (kept alive by the returned guard).
    fn fifo() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path that lives across the call.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        (dir, path.to_str().unwrap().to_owned())
    }

    #[tokio::test]
    async fn output_waits_for_its_reader_and_reaches_one_that_comes_late() {
        let (_dir, path) = fifo();
        // The reader comes a while later, as ctr's goroutine may.
        let reader = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(200));
                std::fs::read(&path).unwrap()
            })
        };
        let writer = open_for_reader(&path, std::time::Duration::from_secs(10))
            .await
            .unwrap();
        let ring = uring::Ring::new().unwrap();
        let (written, _) = ring.write_all(&writer, b"late reader\n".to_vec()).await;
        assert_eq!(written.unwrap(), 12);
        drop(writer);
        assert_eq!(reader.join().unwrap(), b"late reader\n");
    }

    #[tokio::test]
    async fn a_fifo_nobody_opens_is_given_up_after_the_bound() {
        let (_dir, path) = fifo();
        let err = open_for_reader(&path, std::time::Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut);
    }

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
