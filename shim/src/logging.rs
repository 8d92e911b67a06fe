//! Where the shim's log goes: containerd's log FIFO always, and journald too where systemd's
//! journal runs (its socket exists), as Kata's shim does.
//!
//! The shim logs with `tracing`. containerd-shim owns the FIFO through a `log` logger, and
//! with no tracing subscriber set tracing's `log` feature forwards each event to it. Where
//! journald is present, a subscriber is set: then [`ToLog`] forwards each event to the same
//! `log` logger, in the form tracing's own bridge gives it (`message key=value ...`, which
//! hull-bench's phase reader expects), and `tracing-journald` sends it to the journal.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// systemd's journal socket.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// The identifier the shim's journal entries carry (`SYSLOG_IDENTIFIER`).
pub const JOURNAL_IDENTIFIER: &str = "containerd-shim-hull-v2";

/// Whether the shim also logs to journald: `socket` (the journal's) exists and is a socket.
pub fn journald_wanted(socket: &Path) -> bool {
    std::fs::metadata(socket).is_ok_and(|meta| meta.file_type().is_socket())
}

/// Sets up the shim's logging: with journald present ([`journald_wanted`] of
/// [`JOURNAL_SOCKET`]), a subscriber sending each event to the journal and to containerd's
/// FIFO; otherwise nothing to do (tracing's `log` bridge reaches the FIFO). Call once, first.
pub fn init() {
    if !journald_wanted(Path::new(JOURNAL_SOCKET)) {
        return;
    }
    let journald = match tracing_journald::layer() {
        Ok(layer) => layer.with_syslog_identifier(JOURNAL_IDENTIFIER.to_owned()),
        Err(err) => {
            tracing::warn!(%err, "journald's socket exists but cannot be used; logging to containerd only");
            return;
        }
    };
    let journald = journald.with_filter(tracing_subscriber::filter::filter_fn(enabled_by_log));
    let subscriber = tracing_subscriber::registry().with(ToLog).with(journald);
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        tracing::warn!("a tracing subscriber was set already; not logging to journald");
    }
}

/// Whether an event of `meta` passes the level the shim logs at (containerd-shim sets it as
/// `log`'s maximum level from the debug flag and RUST_LOG).
fn enabled_by_log(meta: &Metadata<'_>) -> bool {
    log_level(*meta.level()) <= log::max_level()
}

fn log_level(level: Level) -> log::Level {
    match level {
        Level::ERROR => log::Level::Error,
        Level::WARN => log::Level::Warn,
        Level::INFO => log::Level::Info,
        Level::DEBUG => log::Level::Debug,
        Level::TRACE => log::Level::Trace,
    }
}

/// A tracing layer forwarding each event to the `log` logger (containerd's FIFO).
pub struct ToLog;

impl<S: Subscriber> Layer<S> for ToLog {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let level = log_level(*meta.level());
        if level > log::max_level() {
            return;
        }
        let mut line = Line::default();
        event.record(&mut line);
        let text = line.text();
        log::logger().log(
            &log::Record::builder()
                .args(format_args!("{text}"))
                .level(level)
                .target(meta.target())
                .module_path(meta.module_path())
                .file(meta.file())
                .line(meta.line())
                .build(),
        );
    }
}

/// An event's text as tracing's `log` bridge writes it: the message, then ` key=value` for
/// each other field (values in their Debug form; `%`-fields show their Display form).
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Line {
    fn text(&self) -> String {
        format!("{}{}", self.message, self.fields)
    }
}

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A `log` logger keeping what it gets, set once for this test binary.
    struct Keep(Mutex<Vec<(log::Level, String)>>);

    impl log::Log for Keep {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &log::Record<'_>) {
            self.0
                .lock()
                .unwrap()
                .push((record.level(), record.args().to_string()));
        }
        fn flush(&self) {}
    }

    static KEPT: Keep = Keep(Mutex::new(Vec::new()));

    #[test]
    fn journald_is_used_only_where_its_socket_is() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("socket");
        assert!(!journald_wanted(&socket), "no socket");
        let _listener = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
        assert!(journald_wanted(&socket));
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(!journald_wanted(&file), "a plain file is not the journal");
    }

    #[test]
    fn events_reach_the_log_logger_as_trace_s_own_bridge_writes_them() {
        let _ = log::set_logger(&KEPT);
        log::set_max_level(log::LevelFilter::Info);
        let subscriber = tracing_subscriber::registry().with(ToLog);
        tracing::subscriber::with_default(subscriber, || {
            let id = "logging-test-pod";
            tracing::info!(sandbox = %id, phase = %"agent-ready", "hull phase");
            tracing::warn!(role = "hull-fs", pid = 7, "logging-test: a backend exited");
            tracing::debug!("logging-test: below the level, not forwarded");
        });
        let kept = KEPT.0.lock().unwrap();
        let ours: Vec<&(log::Level, String)> = kept
            .iter()
            .filter(|(_, text)| text.contains("logging-test"))
            .collect();
        assert_eq!(
            ours,
            [
                &(
                    log::Level::Info,
                    "hull phase sandbox=logging-test-pod phase=agent-ready".to_owned()
                ),
                &(
                    log::Level::Warn,
                    "logging-test: a backend exited role=\"hull-fs\" pid=7".to_owned()
                ),
            ]
        );
    }
}
