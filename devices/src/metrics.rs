//! A backend's counters for operators, in Prometheus' text format, on a unix socket
//! (`--metrics-socket PATH`): each connection gets the text once, then the socket closes, so
//! `socat - UNIX-CONNECT:PATH` (or the shim's `hull monitor`, which labels and merges them with
//! the pod's other series) reads them. The socket and the text format are hull-metrics',
//! shared with hull-fs and hull-vmm; the socket is served by one small thread of its own:
//! the worker threads never wait for a reader.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

pub use hull_metrics::{render, Sample};

/// Per queue: the guest's notifications (kicks) the backend woke up for, and the used-buffer
/// notifications (interrupts) it sent back. Their ratio to the requests served shows how well
/// notification suppression (EVENT_IDX) batches work.
#[derive(Debug, Default)]
pub struct QueueEvents {
    kicks: Vec<AtomicU64>,
    interrupts: Vec<AtomicU64>,
}

impl QueueEvents {
    /// Counters for `queues` queues.
    pub fn new(queues: usize) -> Self {
        Self {
            kicks: (0..queues).map(|_| AtomicU64::new(0)).collect(),
            interrupts: (0..queues).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The backend woke up for a kick of `queue` (one wake-up may stand for several kicks the
    /// eventfd merged). A queue out of range is not counted.
    pub fn kick(&self, queue: usize) {
        count(&self.kicks, queue);
    }

    /// The backend notified the guest of used buffers on `queue`.
    pub fn interrupt(&self, queue: usize) {
        count(&self.interrupts, queue);
    }

    /// The series `hull_<backend>_queue_kicks_total` and `..._queue_interrupts_total`, one
    /// per queue, labelled with `names[queue]` (or the queue's index where `names` has none).
    pub fn samples(
        &self,
        kicks: &'static str,
        interrupts: &'static str,
        names: &[&str],
    ) -> Vec<Sample> {
        let label = |queue: usize| match names.get(queue) {
            Some(name) => format!("queue=\"{name}\""),
            None => format!("queue=\"{queue}\""),
        };
        let mut samples = Vec::new();
        for (name, help, counters) in [
            (
                kicks,
                "Wake-ups for the guest's queue notifications (kicks).",
                &self.kicks,
            ),
            (
                interrupts,
                "Used-buffer notifications sent to the guest.",
                &self.interrupts,
            ),
        ] {
            for (queue, n) in counters.iter().enumerate() {
                samples.push(
                    Sample::counter(name, help, n.load(Ordering::Relaxed))
                        .with_labels(label(queue)),
                );
            }
        }
        samples
    }
}

/// Adds one to `counters[queue]`, if there is such a queue.
fn count(counters: &[AtomicU64], queue: usize) {
    if let Some(n) = counters.get(queue) {
        n.fetch_add(1, Ordering::Relaxed);
    }
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

/// Serves `render()`'s text on the metrics socket `path` from a thread of its own, so the
/// worker threads never wait for a reader; the socket file goes when the handle is dropped.
pub fn serve(
    path: &Path,
    render: impl Fn() -> String + Send + 'static,
) -> Result<hull_metrics::ServedSocket> {
    hull_metrics::MetricsListener::bind(path)
        .and_then(|listener| listener.serve_on_thread("hull-metrics", render))
        .map_err(|source| Error::Bind {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_events_are_counted_per_queue_and_named() {
        let events = QueueEvents::new(2);
        events.kick(0);
        events.kick(0);
        events.kick(1);
        events.interrupt(1);
        events.kick(7); // no such queue: not counted, no panic
        let text = render(&events.samples("hull_x_kicks_total", "hull_x_irqs_total", &["rx"]));
        assert!(
            text.contains("hull_x_kicks_total{queue=\"rx\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("hull_x_kicks_total{queue=\"1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("hull_x_irqs_total{queue=\"rx\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("hull_x_irqs_total{queue=\"1\"} 1\n"),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE hull_x_kicks_total counter").count(), 1);
    }

    #[test]
    fn a_file_in_the_way_is_refused_and_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("metrics.sock");
        std::fs::write(&path, "keep").expect("write");
        let err = serve(&path, String::new).expect_err("a file is in the way");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&path).ok().as_deref(), Some("keep"));
    }
}
