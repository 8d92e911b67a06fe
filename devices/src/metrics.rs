//! A backend's counters for operators, in Prometheus' text format, on a unix socket
//! (`--metrics-socket PATH`): each connection gets the text once, then the socket closes, so
//! `socat - UNIX-CONNECT:PATH` (or the shim's `hull monitor`, which labels and merges them with
//! the pod's other series) reads them. The socket is served by one small thread that sleeps in
//! accept(2): the worker threads never wait for a reader.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// One counter or gauge of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The series' name, `hull_<backend>_...`.
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

/// Prometheus text for `samples`: HELP and TYPE once per name, in the order names first come.
pub fn render(samples: &[Sample]) -> String {
    let mut out = String::new();
    let mut described: Vec<&str> = Vec::new();
    for sample in samples {
        if !described.contains(&sample.name) {
            described.push(sample.name);
            let _ = writeln!(
                out,
                "# HELP {} {}\n# TYPE {} {}",
                sample.name, sample.help, sample.name, sample.kind
            );
            // The other samples of this name follow it, whatever their order in `samples`.
            for same in samples.iter().filter(|s| s.name == sample.name) {
                if same.labels.is_empty() {
                    let _ = writeln!(out, "{} {}", same.name, same.value);
                } else {
                    let _ = writeln!(out, "{}{{{}}} {}", same.name, same.labels, same.value);
                }
            }
        }
    }
    out
}

/// hull-net's series.
pub fn net_samples(c: &crate::net::device::CounterValues) -> Vec<Sample> {
    let mut samples = vec![
        Sample::counter(
            "hull_net_tx_frames_total",
            "Frames the guest sent to the tap.",
            c.tx_frames,
        ),
        Sample::counter(
            "hull_net_tx_bytes_total",
            "Bytes of the frames the guest sent, without the virtio-net header.",
            c.tx_bytes,
        ),
        Sample::counter(
            "hull_net_rx_frames_total",
            "Frames from the tap delivered to the guest.",
            c.rx_frames,
        ),
        Sample::counter(
            "hull_net_rx_bytes_total",
            "Bytes of the frames delivered to the guest, without the virtio-net header.",
            c.rx_bytes,
        ),
        Sample::counter(
            "hull_net_dropped_frames_total",
            "Frames lost, by direction.",
            c.tx_dropped,
        )
        .with_labels("direction=\"tx\"".into()),
        Sample::counter(
            "hull_net_dropped_frames_total",
            "Frames lost, by direction.",
            c.rx_dropped,
        )
        .with_labels("direction=\"rx\"".into()),
        Sample::counter(
            "hull_net_malformed_chains_total",
            "Descriptor chains refused as malformed.",
            c.malformed,
        ),
    ];
    for (pair, (tx, rx)) in c
        .tx_frames_per_pair
        .iter()
        .zip(&c.rx_frames_per_pair)
        .enumerate()
    {
        samples.push(
            Sample::counter(
                "hull_net_queue_frames_total",
                "Frames by queue pair and direction.",
                *tx,
            )
            .with_labels(format!("pair=\"{pair}\",direction=\"tx\"")),
        );
        samples.push(
            Sample::counter(
                "hull_net_queue_frames_total",
                "Frames by queue pair and direction.",
                *rx,
            )
            .with_labels(format!("pair=\"{pair}\",direction=\"rx\"")),
        );
    }
    samples
}

/// hull-blk's series.
pub fn blk_samples(c: &crate::blk::device::CounterValues) -> Vec<Sample> {
    let help = "Requests answered, by status.";
    let mut samples = vec![
        Sample::counter("hull_blk_requests_total", help, c.ok).with_labels("status=\"ok\"".into()),
        Sample::counter("hull_blk_requests_total", help, c.io_errors)
            .with_labels("status=\"io_error\"".into()),
        Sample::counter("hull_blk_requests_total", help, c.unsupported)
            .with_labels("status=\"unsupported\"".into()),
        Sample::counter("hull_blk_requests_total", help, c.malformed)
            .with_labels("status=\"malformed\"".into()),
    ];
    for (queue, n) in c.per_queue.iter().enumerate() {
        samples.push(
            Sample::counter(
                "hull_blk_queue_requests_total",
                "Requests served, by queue.",
                *n,
            )
            .with_labels(format!("queue=\"{queue}\"")),
        );
    }
    samples
}

/// hull-vsock's series (of the device serving the current frontend).
pub fn vsock_samples(c: &crate::vsock::metrics::Counters) -> Vec<Sample> {
    vec![
        Sample::counter(
            "hull_vsock_tx_packets_total",
            "Well-formed packets the guest sent.",
            c.tx_packets,
        ),
        Sample::counter(
            "hull_vsock_tx_bytes_total",
            "Payload bytes the guest sent.",
            c.tx_bytes,
        ),
        Sample::counter(
            "hull_vsock_rx_packets_total",
            "Packets put on the guest's rx queue.",
            c.rx_packets,
        ),
        Sample::counter(
            "hull_vsock_rx_bytes_total",
            "Payload bytes sent to the guest.",
            c.rx_bytes,
        ),
        Sample::counter(
            "hull_vsock_malformed_total",
            "Chains dropped as malformed, by queue.",
            c.tx_malformed,
        )
        .with_labels("queue=\"tx\"".into()),
        Sample::counter(
            "hull_vsock_malformed_total",
            "Chains dropped as malformed, by queue.",
            c.rx_malformed,
        )
        .with_labels("queue=\"rx\"".into()),
        Sample::counter(
            "hull_vsock_misaddressed_total",
            "Guest packets dropped for a wrong CID.",
            c.tx_misaddressed,
        ),
        Sample::counter(
            "hull_vsock_resets_sent_total",
            "Resets sent to the guest.",
            c.rst_sent,
        ),
        Sample::counter(
            "hull_vsock_connections_total",
            "Connections opened or requested, either direction.",
            c.conns_opened,
        ),
        Sample::counter(
            "hull_vsock_refused_total",
            "Guest connection requests refused, and host CONNECT lines rejected.",
            c.conns_refused,
        )
        .with_labels("side=\"guest\"".into()),
        Sample::counter(
            "hull_vsock_refused_total",
            "Guest connection requests refused, and host CONNECT lines rejected.",
            c.host_connects_rejected,
        )
        .with_labels("side=\"host\"".into()),
    ]
}

/// The metrics socket of a backend; removed when dropped (the serving thread ends with the
/// process).
#[derive(Debug)]
pub struct MetricsSocket {
    path: PathBuf,
}

impl MetricsSocket {
    /// Binds `path` (replacing a stale socket, never another file) and answers each
    /// connection with `render()`'s text from a thread of its own.
    pub fn serve(path: &Path, render: impl Fn() -> String + Send + 'static) -> Result<Self> {
        let listen_error = |source| Error::Bind {
            path: path.to_owned(),
            source,
        };
        if let Ok(meta) = path.symlink_metadata() {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(listen_error(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "it exists and is not a socket: remove it or choose another --metrics-socket",
                )));
            }
            if std::os::unix::net::UnixStream::connect(path).is_err() {
                let _ = std::fs::remove_file(path);
            }
        }
        let listener = UnixListener::bind(path).map_err(listen_error)?;
        std::thread::Builder::new()
            .name("hull-metrics".into())
            .spawn(move || {
                loop {
                    match listener.accept() {
                        // A reader that goes before reading all is its own business.
                        Ok((mut stream, _)) => {
                            let _ = stream.write_all(render().as_bytes());
                        }
                        // Out of descriptors or the like: try again later, without spinning.
                        Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
                    }
                }
            })
            .map_err(|source| Error::Os {
                what: "starting the metrics thread",
                source,
            })?;
        Ok(Self {
            path: path.to_owned(),
        })
    }
}

impl Drop for MetricsSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

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
    fn each_reader_gets_the_current_text_and_the_socket_goes_on_drop() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("metrics.sock");
        let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = std::sync::Arc::clone(&count);
        let socket = MetricsSocket::serve(&path, move || {
            let n = seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            render(&[Sample::counter("hull_reads_total", "Reads.", n)])
        })
        .expect("serving");
        for expected in 1..=2 {
            let mut text = String::new();
            std::os::unix::net::UnixStream::connect(&path)
                .expect("connect")
                .read_to_string(&mut text)
                .expect("read");
            assert!(
                text.ends_with(&format!("hull_reads_total {expected}\n")),
                "{text}"
            );
        }
        drop(socket);
        assert!(!path.exists());
    }

    #[test]
    fn a_file_in_the_way_is_refused_and_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("metrics.sock");
        std::fs::write(&path, "keep").expect("write");
        let err = MetricsSocket::serve(&path, String::new).expect_err("a file is in the way");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&path).ok().as_deref(), Some("keep"));
    }
}
