//! Where the shim's log goes: containerd's log FIFO always, and journald too where systemd's
//! journal runs (its socket exists), as Kata's shim does.
//!
//! The shim logs with `tracing`. The serving shim opens containerd's log FIFO itself
//! ([`init_serving`], instead of containerd-shim's logger, which has one fixed format) and
//! writes each line in the configured [`LogFormat`]:
//! - `text`, containerd's own form (`time="…" level=info msg="message key=value …"`): events
//!   reach the `log` logger through tracing's `log` bridge, or through [`ToLog`] when a
//!   subscriber is set (for journald), in the form the bridge gives them (which hull-bench's
//!   phase reader expects);
//! - `json`, one object per line (`{"time":…,"level":"info","msg":…,"sandbox":…}`), the event's
//!   fields as members: a subscriber with [`ToJson`] writes them; records of the `log` crate
//!   (containerd-shim's own) are written as objects by the same logger.
//!
//! `tracing-journald` sends each event to the journal where it runs.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// systemd's journal socket.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// The identifier the shim's journal entries carry (`SYSLOG_IDENTIFIER`).
pub const JOURNAL_IDENTIFIER: &str = "containerd-shim-hull-v2";

/// The environment variable that chooses the [`LogFormat`] over the configuration
/// (containerd's environment reaches its shims).
pub const LOG_FORMAT_ENV: &str = "HULL_LOG_FORMAT";

/// How the shim's log lines are written for containerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// containerd's `time="…" level=… msg="…"`.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("log format {other:?} is neither text nor json")),
        }
    }
}

/// The serving shim's log format: `HULL_LOG_FORMAT` if set, else `runtime.log_format` of the
/// configuration the default search finds (a pod's own configuration path is only known at
/// Create, after logging started), else text. A bad value is reported on stderr (containerd's
/// log of the shim's start) and text is used.
pub fn log_format_from_env_or_config() -> LogFormat {
    if let Ok(value) = std::env::var(LOG_FORMAT_ENV) {
        return value.parse().unwrap_or_else(|err| {
            eprintln!("containerd-shim-hull-v2: {LOG_FORMAT_ENV}: {err}; logging as text");
            LogFormat::Text
        });
    }
    match crate::config::load(&crate::config::ConfigSearch::from_env(None)) {
        Ok(loaded) => loaded.config.runtime.log_format,
        // The error comes again, logged, when a pod is created with this configuration.
        Err(_) => LogFormat::Text,
    }
}

/// Whether the shim also logs to journald: `socket` (the journal's) exists and is a socket.
pub fn journald_wanted(socket: &Path) -> bool {
    std::fs::metadata(socket).is_ok_and(|meta| meta.file_type().is_socket())
}

/// Sets up logging for a shim that does not serve (`start`, `delete`: containerd reads their
/// stderr): journald where present; otherwise nothing to do. Call once, first.
pub fn init() {
    if let Some(journald) = journald_layer() {
        let subscriber = tracing_subscriber::registry().with(ToLog).with(journald);
        if tracing::subscriber::set_global_default(subscriber).is_err() {
            tracing::warn!("a tracing subscriber was set already; not logging to journald");
        }
    }
}

/// Sets up the serving shim's logging: containerd's log FIFO `fifo` (`log` in the shim's
/// working directory) in `format`, at info (debug with containerd's `debug`, or `RUST_LOG`),
/// and journald where present. Call once, before anything logs.
pub fn init_serving(fifo: &Path, debug: bool, format: LogFormat) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new().write(true).open(fifo)?;
    let writer = Arc::new(Mutex::new(file));
    log::set_max_level(max_level(debug, std::env::var("RUST_LOG").ok().as_deref()));
    log::set_boxed_logger(Box::new(FifoLog {
        file: Arc::clone(&writer),
        format,
    }))
    .map_err(|_| std::io::Error::other("a log logger was set already"))?;
    let journald = journald_wanted(Path::new(JOURNAL_SOCKET));
    let set = match (format, journald) {
        (LogFormat::Json, _) => tracing::subscriber::set_global_default(
            tracing_subscriber::registry()
                .with(ToJson { file: writer })
                .with(journald_layer()),
        ),
        (LogFormat::Text, true) => tracing::subscriber::set_global_default(
            tracing_subscriber::registry()
                .with(ToLog)
                .with(journald_layer()),
        ),
        // tracing's `log` bridge reaches the FIFO by itself.
        (LogFormat::Text, false) => Ok(()),
    };
    if set.is_err() {
        tracing::warn!("a tracing subscriber was set already");
    }
    Ok(())
}

/// The level containerd-shim's logger would take: `RUST_LOG`'s (info if absent or not a
/// level), raised to debug when containerd runs with debug.
fn max_level(debug: bool, rust_log: Option<&str>) -> log::LevelFilter {
    let level = rust_log
        .and_then(|l| l.parse::<log::LevelFilter>().ok())
        .unwrap_or(log::LevelFilter::Info);
    if debug {
        level.max(log::LevelFilter::Debug)
    } else {
        level
    }
}

fn journald_layer<S>() -> Option<impl Layer<S>>
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    if !journald_wanted(Path::new(JOURNAL_SOCKET)) {
        return None;
    }
    match tracing_journald::layer() {
        Ok(layer) => Some(
            layer
                .with_syslog_identifier(JOURNAL_IDENTIFIER.to_owned())
                .with_filter(tracing_subscriber::filter::filter_fn(enabled_by_log)),
        ),
        Err(err) => {
            tracing::warn!(%err, "journald's socket exists but cannot be used; logging to containerd only");
            None
        }
    }
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The `log` logger writing to containerd's FIFO.
struct FifoLog {
    file: Arc<Mutex<File>>,
    format: LogFormat,
}

impl log::Log for FifoLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = record.level().as_str().to_lowercase();
        let line = match self.format {
            LogFormat::Text => text_line(&now(), &level, &record.args().to_string()),
            LogFormat::Json => {
                let mut object = serde_json::Map::new();
                object.insert("time".into(), now().into());
                object.insert("level".into(), level.into());
                object.insert("msg".into(), record.args().to_string().into());
                object.insert("target".into(), record.target().into());
                json_line(object)
            }
        };
        write_line(&self.file, &line);
    }

    fn flush(&self) {
        let _ = self
            .file
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flush();
    }
}

/// containerd's own line form, as containerd-shim's logger writes it.
fn text_line(time: &str, level: &str, message: &str) -> String {
    format!("time=\"{time}\" level={level} msg=\"{message}\"\n")
}

fn json_line(object: serde_json::Map<String, serde_json::Value>) -> String {
    let mut line = serde_json::Value::Object(object).to_string();
    line.push('\n');
    line
}

/// One write per line, so lines of concurrent writers never interleave; a FIFO nobody reads
/// any more (containerd restarting) loses the line rather than failing the shim.
fn write_line(file: &Mutex<File>, line: &str) {
    let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
    let _ = file.write_all(line.as_bytes());
}

/// A tracing layer writing each event as a JSON object line to containerd's FIFO: `time`,
/// `level`, `msg`, `target`, then the event's fields as members.
pub struct ToJson {
    file: Arc<Mutex<File>>,
}

impl<S: Subscriber> Layer<S> for ToJson {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if log_level(*meta.level()) > log::max_level() {
            return;
        }
        write_line(&self.file, &json_event(event, &now()));
    }
}

fn json_event(event: &Event<'_>, time: &str) -> String {
    let meta = event.metadata();
    let mut fields = JsonFields::default();
    event.record(&mut fields);
    let mut object = serde_json::Map::new();
    object.insert("time".into(), time.into());
    object.insert(
        "level".into(),
        log_level(*meta.level()).as_str().to_lowercase().into(),
    );
    object.insert("msg".into(), fields.message.into());
    object.insert("target".into(), meta.target().into());
    for (name, value) in fields.fields {
        object.entry(name).or_insert(value);
    }
    json_line(object)
}

/// An event's fields as JSON values: numbers and booleans as such, the rest as text (the
/// Display form of `%`-fields, the Debug form of others).
#[derive(Default)]
struct JsonFields {
    message: String,
    fields: Vec<(String, serde_json::Value)>,
}

impl Visit for JsonFields {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.push((field.name().into(), value.into()));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.push((field.name().into(), value.into()));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.push((field.name().into(), value.into()));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields.push((field.name().into(), value.into()));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.fields.push((field.name().into(), text.into()));
        }
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
    fn log_formats_parse_from_the_environment_and_the_configuration() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!("xml".parse::<LogFormat>().unwrap_err().contains("xml"));
        #[derive(serde::Deserialize)]
        struct Runtime {
            log_format: LogFormat,
        }
        let runtime: Runtime = toml::from_str("log_format = \"json\"").unwrap();
        assert_eq!(runtime.log_format, LogFormat::Json);
        assert!(toml::from_str::<Runtime>("log_format = \"xml\"").is_err());
    }

    #[test]
    fn the_level_is_containerd_shims() {
        assert_eq!(max_level(false, None), log::LevelFilter::Info);
        assert_eq!(max_level(true, None), log::LevelFilter::Debug);
        assert_eq!(max_level(true, Some("trace")), log::LevelFilter::Trace);
        assert_eq!(max_level(false, Some("warn")), log::LevelFilter::Warn);
        assert_eq!(max_level(false, Some("nonsense")), log::LevelFilter::Info);
    }

    #[test]
    fn text_lines_are_containerds_form() {
        assert_eq!(
            text_line("2026-11-24T03:00:00Z", "info", "hull phase sandbox=p phase=agent-ready"),
            "time=\"2026-11-24T03:00:00Z\" level=info msg=\"hull phase sandbox=p phase=agent-ready\"\n"
        );
    }

    /// A layer keeping what [`json_event`] makes of each event.
    struct KeepJson(Mutex<Vec<String>>);

    impl<S: Subscriber> Layer<S> for &'static KeepJson {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            self.0.lock().unwrap().push(json_event(event, "T"));
        }
    }

    #[test]
    fn json_events_carry_their_fields_as_members() {
        static KEPT_JSON: KeepJson = KeepJson(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(&KEPT_JSON);
        tracing::subscriber::with_default(subscriber, || {
            let id = "pod \"1\"";
            tracing::warn!(sandbox = %id, pid = 7, lost = true, role = "hull-fs", "a backend exited");
        });
        let kept = KEPT_JSON.0.lock().unwrap();
        assert_eq!(kept.len(), 1);
        assert!(kept[0].ends_with('\n'));
        let object: serde_json::Value = serde_json::from_str(&kept[0]).unwrap();
        assert_eq!(
            object,
            serde_json::json!({
                "time": "T", "level": "warn", "msg": "a backend exited",
                "target": module_path!(), "sandbox": "pod \"1\"", "pid": 7, "lost": true,
                "role": "hull-fs"
            })
        );
    }

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
