//! A container process's stdio on the agent's side: three pipes, or one pty master.
//!
//! The buffer between a process and the shim is the kernel's: a pipe (64 KiB) or the pty's
//! line buffer. Output written before anyone reads stays there, and a process that writes
//! more than is read blocks in write(2) until the shim reads: bounded memory, backpressure,
//! nothing lost. The agent copies nothing in between; a read call reads the pipe directly.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::Mutex;

/// Why a stdio call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Stdin was closed by CloseStdin.
    #[error("stdin is closed")]
    StdinClosed,
    /// The process has no terminal.
    #[error("the process has no terminal")]
    NoTerminal,
    /// The system failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_error(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// The ends the container process gets, handed to the container helper.
#[derive(Debug)]
pub enum ProcessEnds {
    /// stdin, stdout, stderr.
    Pipes(OwnedFd, OwnedFd, OwnedFd),
    /// The process gets a pty that its runtime creates and sends back.
    Terminal,
}

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// stdout (a tty's only output).
    Stdout,
    /// stderr.
    Stderr,
}

/// The agent's ends of a process's stdio.
#[derive(Debug)]
pub enum Stdio {
    /// Pipes; each `None` once closed (stdin) or at end of stream (outputs).
    Pipes {
        /// Write end of the process's stdin.
        stdin: Mutex<Option<pipe::Sender>>,
        /// Read end of its stdout.
        stdout: Mutex<Option<pipe::Receiver>>,
        /// Read end of its stderr.
        stderr: Mutex<Option<pipe::Receiver>>,
    },
    /// A pty master, for a process with `terminal`.
    Terminal(Terminal),
}

/// A pty master; the locks serialise readers and writers and hold whether the output ended
/// and whether stdin was closed.
#[derive(Debug)]
pub struct Terminal {
    master: AsyncFd<OwnedFd>,
    read_ended: Mutex<bool>,
    write_closed: Mutex<bool>,
}

/// Makes the pipes of a process without a terminal: the agent's ends, the process's ends.
pub fn pipes() -> Result<(Stdio, ProcessEnds), Error> {
    let (stdin_r, stdin_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| io_error("creating the stdin pipe")(e.into()))?;
    let (stdout_r, stdout_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| io_error("creating the stdout pipe")(e.into()))?;
    let (stderr_r, stderr_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| io_error("creating the stderr pipe")(e.into()))?;
    let stdio = Stdio::Pipes {
        stdin: Mutex::new(Some(
            pipe::Sender::from_owned_fd(stdin_w).map_err(io_error("registering stdin"))?,
        )),
        stdout: Mutex::new(Some(
            pipe::Receiver::from_owned_fd(stdout_r).map_err(io_error("registering stdout"))?,
        )),
        stderr: Mutex::new(Some(
            pipe::Receiver::from_owned_fd(stderr_r).map_err(io_error("registering stderr"))?,
        )),
    };
    Ok((stdio, ProcessEnds::Pipes(stdin_r, stdout_w, stderr_w)))
}

impl Terminal {
    /// Wraps a pty master received from the container's runtime.
    pub fn new(master: OwnedFd) -> Result<Self, Error> {
        let flags = fcntl(master.as_raw_fd(), FcntlArg::F_GETFL)
            .map_err(|e| io_error("reading the pty's flags")(e.into()))?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(master.as_raw_fd(), FcntlArg::F_SETFL(flags))
            .map_err(|e| io_error("making the pty non-blocking")(e.into()))?;
        fcntl(
            master.as_raw_fd(),
            FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(|e| io_error("setting FD_CLOEXEC on the pty")(e.into()))?;
        // SAFETY: an OwnedFd's descriptor is valid and open for as long as it lives, and
        // `as_raw_fd` always returns that same descriptor.
        let master = unsafe { AsyncFd::register(master) }
            .map_err(|err| io_error("registering the pty")(err.into()))?;
        Ok(Terminal {
            master,
            read_ended: Mutex::new(false),
            write_closed: Mutex::new(false),
        })
    }

    async fn read(&self, len: usize) -> Result<Vec<u8>, Error> {
        let mut ended = self.read_ended.lock().await;
        if *ended {
            return Ok(Vec::new());
        }
        let mut buf = vec![0; len];
        loop {
            let mut guard = self
                .master
                .readable()
                .await
                .map_err(io_error("waiting for the pty"))?;
            match guard
                .try_io(|fd| nix::unistd::read(fd.as_raw_fd(), &mut buf).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    if n == 0 {
                        *ended = true;
                    }
                    buf.truncate(n);
                    return Ok(buf);
                }
                // EIO: every slave end is closed, the pty's end of stream.
                Ok(Err(err)) if err.raw_os_error() == Some(libc::EIO) => {
                    *ended = true;
                    return Ok(Vec::new());
                }
                Ok(Err(err)) => return Err(io_error("reading the pty")(err)),
                Err(_would_block) => continue,
            }
        }
    }

    async fn write(&self, data: &[u8]) -> Result<(), Error> {
        let closed = self.write_closed.lock().await;
        if *closed {
            return Err(Error::StdinClosed);
        }
        let mut written = 0;
        while written < data.len() {
            let mut guard = self
                .master
                .writable()
                .await
                .map_err(io_error("waiting for the pty"))?;
            let rest = data.get(written..).unwrap_or_default();
            match guard.try_io(|fd| nix::unistd::write(fd, rest).map_err(io::Error::from)) {
                Ok(Ok(n)) => written += n,
                Ok(Err(err)) => return Err(io_error("writing the pty")(err)),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Sets the window size.
    pub fn resize(&self, rows: u16, columns: u16) -> Result<(), Error> {
        let size = libc::winsize {
            ws_row: rows,
            ws_col: columns,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call; the
        // descriptor is a pty master this value owns.
        let rc = unsafe {
            libc::ioctl(
                self.master.get_ref().as_raw_fd(),
                libc::TIOCSWINSZ,
                &size as *const libc::winsize,
            )
        };
        if rc < 0 {
            return Err(io_error("setting the window size")(
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}

impl Stdio {
    /// Reads at most `len` (> 0) bytes of `stream`, waiting for at least one; empty at end of
    /// stream.
    pub async fn read(&self, stream: Stream, len: usize) -> Result<Vec<u8>, Error> {
        match (self, stream) {
            (Stdio::Pipes { stdout, .. }, Stream::Stdout) => read_pipe(stdout, len).await,
            (Stdio::Pipes { stderr, .. }, Stream::Stderr) => read_pipe(stderr, len).await,
            (Stdio::Terminal(tty), Stream::Stdout) => tty.read(len).await,
            // A terminal's output all goes to stdout.
            (Stdio::Terminal(_), Stream::Stderr) => Ok(Vec::new()),
        }
    }

    /// Writes all of `data` to stdin, waiting while the process does not read.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), Error> {
        match self {
            Stdio::Pipes { stdin, .. } => {
                let mut stdin = stdin.lock().await;
                let pipe = stdin.as_mut().ok_or(Error::StdinClosed)?;
                pipe.write_all(data)
                    .await
                    .map_err(io_error("writing stdin"))
            }
            Stdio::Terminal(tty) => tty.write(data).await,
        }
    }

    /// Closes stdin: the process reads end of file. For a terminal the EOF character (^D)
    /// is written, which the line discipline turns into end of file for the reader.
    pub async fn close_stdin(&self) -> Result<(), Error> {
        match self {
            Stdio::Pipes { stdin, .. } => {
                stdin.lock().await.take();
                Ok(())
            }
            Stdio::Terminal(tty) => {
                tty.write(&[4]).await?;
                *tty.write_closed.lock().await = true;
                Ok(())
            }
        }
    }

    /// The terminal, if the process has one.
    pub fn terminal(&self) -> Result<&Terminal, Error> {
        match self {
            Stdio::Terminal(tty) => Ok(tty),
            Stdio::Pipes { .. } => Err(Error::NoTerminal),
        }
    }
}

async fn read_pipe(pipe: &Mutex<Option<pipe::Receiver>>, len: usize) -> Result<Vec<u8>, Error> {
    let mut pipe = pipe.lock().await;
    let Some(receiver) = pipe.as_mut() else {
        return Ok(Vec::new());
    };
    let mut buf = vec![0; len];
    let n = receiver
        .read(&mut buf)
        .await
        .map_err(io_error("reading output"))?;
    if n == 0 {
        // End of stream: every writer closed. Drop our end; later reads answer empty at once.
        pipe.take();
    }
    buf.truncate(n);
    Ok(buf)
}
