//! The metrics socket of hull's processes: hull-blk, hull-net, hull-vsock, hull-fs and
//! hull-vmm each serve their counters on `--metrics-socket PATH`, in Prometheus' text format,
//! once per connection (so `socat - UNIX-CONNECT:PATH` reads them, and the shim merges them,
//! labelled by backend, into the pod's metrics).
//!
//! One crate for the three places that serve it, so that the socket's rules are one piece of
//! code: a stale socket left by a process that died is replaced, a live one or any other file
//! in the way is never touched, the file goes when its server ends (only while it is still
//! the file this process bound), and a reader that does not read cannot hold the server.
//! Processes wait for readers in their own way: on a poll with their other descriptors
//! ([`MetricsListener`] is [`AsFd`] and answers without blocking), or on a thread of its own
//! ([`MetricsListener::serve_on_thread`]).

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long answering one reader may take: a few hundred bytes fit any socket buffer, so only
/// a reader that does not read reaches it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// One counter or gauge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The series' name, `hull_<process>_...`.
    pub name: &'static str,
    /// Its help text.
    pub help: &'static str,
    /// `counter` or `gauge`.
    pub kind: &'static str,
    /// Labels, `key="value"` pairs joined by commas (empty for none); values are ours, not
    /// the guest's, so they need no escaping.
    pub labels: String,
    /// The value.
    pub value: u64,
}

impl Sample {
    /// A counter without labels.
    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Self {
        Self {
            name,
            help,
            kind: "counter",
            labels: String::new(),
            value,
        }
    }

    /// The same series with `labels`.
    pub fn with_labels(mut self, labels: String) -> Self {
        self.labels = labels;
        self
    }
}

/// Prometheus text for `samples`: HELP and TYPE once per name, in the order names first come,
/// each name's samples together whatever their order in `samples`.
pub fn render(samples: &[Sample]) -> String {
    let mut out = String::new();
    let mut described: Vec<&str> = Vec::new();
    for sample in samples {
        if described.contains(&sample.name) {
            continue;
        }
        described.push(sample.name);
        let _ = writeln!(
            out,
            "# HELP {} {}\n# TYPE {} {}",
            sample.name, sample.help, sample.name, sample.kind
        );
        for same in samples.iter().filter(|s| s.name == sample.name) {
            if same.labels.is_empty() {
                let _ = writeln!(out, "{} {}", same.name, same.value);
            } else {
                let _ = writeln!(out, "{}{{{}}} {}", same.name, same.labels, same.value);
            }
        }
    }
    out
}

/// A listening metrics socket. Accepting never blocks (the descriptor is non-blocking), so it
/// can sit on a poll beside a process's other descriptors. Its file is removed when dropped,
/// if it is still the file this process bound.
#[derive(Debug)]
pub struct MetricsListener {
    listener: UnixListener,
    /// The path and inode to remove on drop; `None` for a copy that must leave it.
    bound: Option<(PathBuf, u64)>,
}

impl MetricsListener {
    /// Binds `path`, replacing a socket nobody listens on, never any other file. The error
    /// names the path.
    pub fn bind(path: &Path) -> io::Result<Self> {
        let named = |err: io::Error| {
            io::Error::new(
                err.kind(),
                format!("metrics socket {}: {err}", path.display()),
            )
        };
        if let Ok(meta) = path.symlink_metadata() {
            if !meta.file_type().is_socket() {
                return Err(named(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "it exists and is not a socket: remove it or choose another --metrics-socket",
                )));
            }
            if UnixStream::connect(path).is_err() {
                let _ = std::fs::remove_file(path);
            }
        }
        let listener = UnixListener::bind(path).map_err(named)?;
        let listener = Self {
            bound: Some((
                path.to_owned(),
                path.symlink_metadata().map_err(named)?.ino(),
            )),
            listener,
        };
        listener.listener.set_nonblocking(true).map_err(named)?;
        Ok(listener)
    }

    /// Answers one waiting reader, if one is there, with `text()`; returns at once otherwise.
    pub fn answer(&self, text: impl FnOnce() -> String) {
        let Ok((mut stream, _)) = self.listener.accept() else {
            return;
        };
        if stream.set_nonblocking(false).is_ok()
            && stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_ok()
        {
            // A reader that goes before reading all is its own business.
            let _ = stream.write_all(text().as_bytes());
        }
    }

    /// Closes this descriptor and leaves the file (a forked child's copy, say).
    pub fn close_descriptor(mut self) {
        self.bound = None;
    }

    /// Answers every reader with `render()`'s text from a thread named `name`, for a process
    /// with no poll loop of its own. The file goes when the returned handle is dropped (the
    /// thread ends with the process).
    pub fn serve_on_thread(
        self,
        name: &str,
        render: impl Fn() -> String + Send + 'static,
    ) -> io::Result<ServedSocket> {
        let copy = Self {
            listener: self.listener.try_clone()?,
            bound: None,
        };
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || loop {
                let mut fds = [libc::pollfd {
                    fd: copy.as_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                }];
                // SAFETY: one pollfd of a descriptor `copy` keeps open, for the duration of
                // the call.
                let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, -1) };
                if ready > 0 {
                    copy.answer(&render);
                } else if ready < 0
                    && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted
                {
                    // Nothing to wait on any more: no reader can be answered, stop quietly.
                    return;
                }
            })?;
        Ok(ServedSocket { _listener: self })
    }
}

impl AsFd for MetricsListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

impl Drop for MetricsListener {
    fn drop(&mut self) {
        if let Some((path, ino)) = self.bound.take() {
            let ours = path
                .symlink_metadata()
                .is_ok_and(|m| m.file_type().is_socket() && m.ino() == ino);
            if ours {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// A metrics socket answered by a thread; its file is removed when this is dropped.
#[derive(Debug)]
pub struct ServedSocket {
    _listener: MetricsListener,
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn read(path: &Path) -> String {
        let mut text = String::new();
        UnixStream::connect(path)
            .expect("connect")
            .read_to_string(&mut text)
            .expect("read");
        text
    }

    #[test]
    fn samples_of_one_name_share_their_help_and_type() {
        let text = render(&[
            Sample::counter("hull_x_total", "Xs.", 1).with_labels("queue=\"0\"".into()),
            Sample::counter("hull_y_total", "Ys.", 2),
            Sample::counter("hull_x_total", "Xs.", 3).with_labels("queue=\"1\"".into()),
        ]);
        assert_eq!(
            text,
            "# HELP hull_x_total Xs.\n# TYPE hull_x_total counter\n\
             hull_x_total{queue=\"0\"} 1\nhull_x_total{queue=\"1\"} 3\n\
             # HELP hull_y_total Ys.\n# TYPE hull_y_total counter\nhull_y_total 2\n"
        );
    }

    #[test]
    fn each_reader_gets_the_text_and_the_file_goes_on_drop() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("metrics.sock");
        let listener = MetricsListener::bind(&path).expect("bind");
        // Nobody waiting: no answer, no block.
        listener.answer(|| unreachable!("no reader connected"));
        for n in 1..=2 {
            let mut reader = UnixStream::connect(&path).expect("connect");
            listener.answer(|| format!("text {n}\n"));
            let mut text = String::new();
            reader.read_to_string(&mut text).expect("read");
            assert_eq!(text, format!("text {n}\n"));
        }
        drop(listener);
        assert!(!path.exists(), "socket file left behind");
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_live_one_or_a_file_is_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("metrics.sock");
        drop(UnixListener::bind(&path).expect("a socket nobody will serve"));
        let first = MetricsListener::bind(&path).expect("the stale socket is replaced");
        let err = MetricsListener::bind(&path).expect_err("a live socket is kept");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        drop(first);

        std::fs::write(&path, "keep").expect("write");
        let err = MetricsListener::bind(&path).expect_err("a file is in the way");
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).ok().as_deref(), Some("keep"));
    }

    #[test]
    fn a_copy_closes_without_removing_the_file_and_a_replaced_file_is_left() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("metrics.sock");
        let listener = MetricsListener::bind(&path).expect("bind");
        let copy = MetricsListener {
            listener: listener.listener.try_clone().expect("dup"),
            bound: listener.bound.clone(),
        };
        copy.close_descriptor();
        assert!(path.exists(), "the copy removed the file");
        // Someone else's file at the path now: not ours to remove.
        std::fs::remove_file(&path).expect("remove");
        std::fs::write(&path, "theirs").expect("write");
        drop(listener);
        assert_eq!(
            std::fs::read_to_string(&path).ok().as_deref(),
            Some("theirs")
        );
    }

    #[test]
    fn a_thread_answers_every_reader_with_the_current_text_until_dropped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("metrics.sock");
        let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let served = {
            let count = std::sync::Arc::clone(&count);
            MetricsListener::bind(&path)
                .expect("bind")
                .serve_on_thread("test-metrics", move || {
                    let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    render(&[Sample::counter("hull_t_total", "T.", n)])
                })
                .expect("serve")
        };
        assert!(read(&path).ends_with("hull_t_total 0\n"));
        assert!(read(&path).ends_with("hull_t_total 1\n"));
        drop(served);
        assert!(!path.exists(), "socket file left behind");
    }
}
