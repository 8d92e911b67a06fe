//! Prometheus metrics: each shim serves its pod's figures on a unix socket in the pod's run
//! directory ([`SOCKET_NAME`], HTTP `GET /metrics`, as Kata's `shim-monitor.sock`), and
//! `hull monitor` gathers every running shim's on one HTTP endpoint, with `sandbox_id` and
//! `namespace` labels on every series (as kata-monitor does).
//!
//! A shim reports, for itself and each process of its sandbox (QEMU, hull-vsock, hull-fs, or
//! the host agent of the `none` hypervisor): CPU seconds, resident memory, threads and open
//! file descriptors from /proc; and the agent's own GetMetrics text (guest memory, load, the
//! agent's figures), with `hull_agent_up` saying whether the agent answered.
//!
//! The HTTP side is written here rather than pulled in with hyper: it is one GET on a
//! root-only socket or a loopback port, answered with `Connection: close`, and the request
//! head it reads is bounded ([`MAX_HEAD`]) and parsed strictly ([`parse_request`], covered by
//! proptest). The shim's event loop serves it, like everything else of the shim.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::sandbox::lifecycle::Sandbox;

/// The socket's name in a sandbox's run directory.
pub const SOCKET_NAME: &str = "shim-monitor.sock";

/// The Prometheus text format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The largest request head (request line and headers) read, in bytes.
pub const MAX_HEAD: usize = 8192;

/// The largest metrics body `hull monitor` takes from one shim, in bytes.
const MAX_BODY: u64 = 16 << 20;

/// How long the agent may take to answer GetMetrics, and a client to send its request.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the metrics endpoints.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is not one HTTP/1.x request line.
    #[error("malformed HTTP request: {0}")]
    BadRequest(String),
    /// The request head did not end within [`MAX_HEAD`] bytes.
    #[error("the HTTP request head is longer than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// The client did not send its request in time.
    #[error("the client sent no complete request within {0:?}")]
    Timeout(Duration),
    /// Reading or writing a socket failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The socket or address.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A shim answered something other than 200 with metrics.
    #[error("the shim at {socket} answered {answer:?}")]
    Answer {
        /// Its socket.
        socket: PathBuf,
        /// Its status line, or what was wrong.
        answer: String,
    },
}

/// A parsed HTTP request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The path, without the query.
    pub path: String,
}

/// Parses the request line at the start of `head` (which holds at least that line and its
/// CRLF or LF). Strict: `METHOD SP /path SP HTTP/1.x`, method in capitals, path printable.
pub fn parse_request(head: &[u8]) -> Result<Request, Error> {
    let bad = |why: &str| Error::BadRequest(why.to_owned());
    let end = head
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| bad("no end of the request line"))?;
    let line = head[..end].strip_suffix(b"\r").unwrap_or(&head[..end]);
    let line = std::str::from_utf8(line).map_err(|_| bad("the request line is not UTF-8"))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("the request line is not 'METHOD PATH VERSION'"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad("the method is not a token of capitals"));
    }
    if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(
            "the path is not an absolute path of printable characters",
        ));
    }
    if version != "HTTP/1.0" && version != "HTTP/1.1" {
        return Err(bad("the version is not HTTP/1.0 or HTTP/1.1"));
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    Ok(Request {
        method: method.to_owned(),
        path: path.to_owned(),
    })
}

/// Reads a request head (up to the empty line) of at most [`MAX_HEAD`] bytes.
async fn read_head<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Vec<u8>, Error> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(head);
        }
        let n = reader.read(&mut buf).await.map_err(|source| Error::Io {
            what: "reading the request from",
            path: "the client".into(),
            source,
        })?;
        if n == 0 {
            // A client that sent its request line and closed is answered all the same.
            return Ok(head);
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return Err(Error::HeadTooLarge);
        }
    }
}

/// An HTTP/1.1 response with `body`, closing the connection.
fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Answers one connection: `GET /metrics` with what `metrics` gathers, anything else with
/// the status that says why not.
pub async fn answer<S, F, Fut>(stream: &mut S, metrics: F)
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let head = tokio::time::timeout(CALL_TIMEOUT, read_head(stream))
        .await
        .unwrap_or(Err(Error::Timeout(CALL_TIMEOUT)));
    let text = match head.and_then(|head| parse_request(&head)) {
        Ok(request) if request.method != "GET" && request.method != "HEAD" => response(
            "405 Method Not Allowed",
            "text/plain",
            "only GET /metrics is served\n",
        ),
        Ok(request) if request.path != "/metrics" => {
            response("404 Not Found", "text/plain", "only /metrics is served\n")
        }
        Ok(_) => response("200 OK", CONTENT_TYPE, &metrics().await),
        Err(err) => response("400 Bad Request", "text/plain", &format!("{err}\n")),
    };
    if let Err(err) = stream.write_all(text.as_bytes()).await {
        tracing::debug!(%err, "answering a metrics request");
    }
    let _ = stream.shutdown().await;
}

/// What /proc says about one process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    /// User and system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory, in bytes.
    pub resident_bytes: u64,
    /// Threads.
    pub threads: u64,
    /// Open file descriptors.
    pub open_fds: u64,
}

/// `(utime + stime in ticks, threads, resident pages)` from a `/proc/PID/stat` line. The
/// command name (field 2) may hold spaces and parentheses: fields are counted after its last
/// `)`.
pub fn parse_stat(stat: &str) -> Option<(u64, u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')' the first field is field 3 (state): field N is at index N - 3.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((field(14)?.checked_add(field(15)?)?, field(20)?, field(24)?))
}

impl ProcessStats {
    /// Reads process `pid`; `None` when it is gone or /proc cannot be read.
    pub fn read(pid: u32) -> Option<Self> {
        let dir = PathBuf::from(format!("/proc/{pid}"));
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        let (ticks, threads, pages) = parse_stat(&stat)?;
        let open_fds = std::fs::read_dir(dir.join("fd")).ok()?.count() as u64;
        // SAFETY: sysconf reads a system constant; no memory is passed.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Some(Self {
            cpu_seconds: ticks as f64 / hz.max(1) as f64,
            resident_bytes: pages.saturating_mul(u64::try_from(page.max(1)).unwrap_or(4096)),
            threads,
            open_fds,
        })
    }
}

/// A process metric family: name, type, help, and how its value is read.
type Family4 = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ProcessStats) -> String,
);

/// The Prometheus text of processes by role (`shim`, `qemu`, `hull-vsock`, ...).
pub fn render_processes(processes: &[(String, ProcessStats)]) -> String {
    let mut out = String::new();
    let families: [Family4; 4] = [
        (
            "hull_process_cpu_seconds_total",
            "counter",
            "User and system CPU time of the pod's host process, in seconds.",
            |s| format!("{:.3}", s.cpu_seconds),
        ),
        (
            "hull_process_resident_memory_bytes",
            "gauge",
            "Resident memory of the pod's host process, in bytes.",
            |s| s.resident_bytes.to_string(),
        ),
        (
            "hull_process_threads",
            "gauge",
            "Threads of the pod's host process.",
            |s| s.threads.to_string(),
        ),
        (
            "hull_process_open_fds",
            "gauge",
            "Open file descriptors of the pod's host process.",
            |s| s.open_fds.to_string(),
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (role, stats) in processes {
            let _ = writeln!(out, "{name}{{role=\"{}\"}} {}", escape(role), value(stats));
        }
    }
    out
}

/// A label value escaped for the text format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Everything one shim reports about its sandbox (or only itself before the sandbox runs or
/// after it stopped).
pub async fn gather(sandbox: &Weak<Sandbox>) -> String {
    // The sandbox is held only here, without an await: Shutdown must be able to take it.
    let (processes, agent, run_dir) = match sandbox.upgrade() {
        Some(sandbox) => (
            sandbox.processes(),
            Some(sandbox.agent().clone()),
            Some(sandbox.run_dir().to_owned()),
        ),
        None => (Vec::new(), None, None),
    };
    let mut stats = vec![(
        "shim".to_owned(),
        ProcessStats::read(std::process::id()).unwrap_or_default(),
    )];
    stats.extend(processes.into_iter().filter_map(|(role, pid)| {
        let pid = u32::try_from(pid).ok()?;
        Some((role, ProcessStats::read(pid)?))
    }));
    let mut out = render_processes(&stats);
    out.push_str(&backend_metrics(run_dir.as_deref()).await);
    let agent_text = match agent {
        Some(agent) => tokio::time::timeout(CALL_TIMEOUT, agent.get_metrics())
            .await
            .map_err(|_| "timed out".to_owned())
            .and_then(|r| r.map_err(|e| e.agent_message())),
        None => Err("no sandbox".to_owned()),
    };
    let _ = writeln!(
        out,
        "# HELP hull_agent_up Whether the pod's agent answered GetMetrics.\n\
         # TYPE hull_agent_up gauge\nhull_agent_up {}",
        u8::from(agent_text.is_ok())
    );
    match agent_text {
        Ok(text) => {
            out.push_str(&text);
            if !text.is_empty() && !text.ends_with('\n') {
                out.push('\n');
            }
        }
        Err(err) => tracing::debug!("the agent's metrics: {err}"),
    }
    out
}

/// What ends the name of a backend's metrics socket in a sandbox's run directory: the
/// backend (`hull-vsock`, `hull-net0`, ...) comes before it, and labels its series.
pub const BACKEND_METRICS_SUFFIX: &str = ".metrics.sock";

/// The metrics socket of backend `role` in `run_dir`, for its `--metrics-socket`.
pub fn backend_metrics_socket(run_dir: &Path, role: &str) -> PathBuf {
    run_dir.join(format!("{role}{BACKEND_METRICS_SUFFIX}"))
}

/// The backends' own counters (virtqueue packets, bytes, drops, malformed chains; hull-fs's
/// requests, bytes and refused names; hull-vmm's vCPU exits), read from
/// their metrics sockets in `run_dir`, labelled `backend="<role>"` and merged. A backend that
/// does not answer in time is left out (its process series still say it is there).
async fn backend_metrics(run_dir: Option<&Path>) -> String {
    let Some(run_dir) = run_dir else {
        return String::new();
    };
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return String::new();
    };
    let mut sockets: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let role = name.strip_suffix(BACKEND_METRICS_SUFFIX)?.to_owned();
            Some((role, entry.path()))
        })
        .collect();
    sockets.sort();
    let mut texts = Vec::new();
    for (role, path) in sockets {
        let read = async {
            let mut stream = tokio::net::UnixStream::connect(&path).await?;
            let mut text = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut text).await?;
            Ok::<_, std::io::Error>(text)
        };
        match tokio::time::timeout(CALL_TIMEOUT, read).await {
            Ok(Ok(text)) => texts.push((format!("backend=\"{}\"", escape(&role)), text)),
            Ok(Err(err)) => tracing::debug!(%role, %err, "a backend's metrics"),
            Err(_) => tracing::debug!(%role, "a backend's metrics: timed out"),
        }
    }
    let texts: Vec<(String, &str)> = texts.iter().map(|(l, t)| (l.clone(), t.as_str())).collect();
    merge_labelled(&texts)
}

/// Serves `GET /metrics` on `listener` (the shim's [`SOCKET_NAME`]) until the task is
/// aborted; each connection in a task of its own.
pub async fn serve_shim(listener: tokio::net::UnixListener, sandbox: Weak<Sandbox>) {
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(%err, "accepting on the metrics socket");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let sandbox = sandbox.clone();
        tokio::spawn(async move {
            answer(&mut stream, || async { gather(&sandbox).await }).await;
        });
    }
}

/// A running shim's metrics socket, as `hull monitor` finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimEndpoint {
    /// The containerd namespace.
    pub namespace: String,
    /// The sandbox (pod) id.
    pub sandbox_id: String,
    /// Its socket.
    pub socket: PathBuf,
}

/// The shims' sockets under `run_root` (`RUN_ROOT/NAMESPACE/SANDBOX/shim-monitor.sock`), in
/// name order.
pub fn discover(run_root: &Path) -> Vec<ShimEndpoint> {
    let names = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|n| crate::paths::is_safe_id(n))
            .collect();
        names.sort();
        names
    };
    let mut found = Vec::new();
    for namespace in names(run_root) {
        for sandbox_id in names(&run_root.join(&namespace)) {
            let socket = run_root
                .join(&namespace)
                .join(&sandbox_id)
                .join(SOCKET_NAME);
            if socket.exists() {
                found.push(ShimEndpoint {
                    namespace: namespace.clone(),
                    sandbox_id,
                    socket,
                });
            }
        }
    }
    found
}

/// `GET /metrics` from a shim's socket; the body of its 200 answer.
pub async fn fetch(socket: &Path) -> Result<String, Error> {
    let io = |what: &'static str| {
        let path = socket.display().to_string();
        move |source| Error::Io { what, path, source }
    };
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(io("connecting to"))?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: hull-shim\r\nConnection: close\r\n\r\n")
            .await
            .map_err(io("writing to"))?;
        let mut answer = Vec::new();
        (&mut stream)
            .take(MAX_BODY)
            .read_to_end(&mut answer)
            .await
            .map_err(io("reading from"))?;
        Ok::<_, Error>(answer)
    };
    // The agent's part is bounded by CALL_TIMEOUT in the shim: twice that is a stuck shim.
    let answer = tokio::time::timeout(2 * CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| Error::Timeout(2 * CALL_TIMEOUT))??;
    let wrong = |answer: &str| Error::Answer {
        socket: socket.to_owned(),
        answer: answer.to_owned(),
    };
    let text = String::from_utf8(answer).map_err(|_| wrong("a body that is not UTF-8"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| wrong("no end of the response head"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200 ") && !status.starts_with("HTTP/1.0 200 ") {
        return Err(wrong(status));
    }
    Ok(body.to_owned())
}

/// `line` (a sample) with `labels` (`a="x",b="y"`) added first to its label set; `None` if it
/// is not a sample line.
pub fn add_labels(line: &str, labels: &str) -> Option<String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let (name, rest) = line.split_at(name_end);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    if let Some(inner) = rest.strip_prefix('{') {
        let sep = if inner.starts_with('}') { "" } else { "," };
        Some(format!("{name}{{{labels}{sep}{inner}"))
    } else if rest.starts_with(' ') {
        Some(format!("{name}{{{labels}}}{rest}"))
    } else {
        None
    }
}

/// One metric family while merging.
#[derive(Debug, Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    samples: Vec<String>,
}

/// Merges the shims' texts into one exposition: each family once (its HELP and TYPE from the
/// first shim that gave them), its samples from every shim with that shim's `sandbox_id` and
/// `namespace` labels. Lines that are neither comments nor samples are dropped.
pub fn merge(texts: &[(ShimEndpoint, String)]) -> String {
    let labelled: Vec<(String, &str)> = texts
        .iter()
        .map(|(shim, text)| {
            (
                format!(
                    "sandbox_id=\"{}\",namespace=\"{}\"",
                    escape(&shim.sandbox_id),
                    escape(&shim.namespace)
                ),
                text.as_str(),
            )
        })
        .collect();
    merge_labelled(&labelled)
}

/// Merges expositions into one: each family once (its HELP and TYPE from the first text that
/// gave them), the samples of each text with its labels (`a="x",b="y"`, not empty) added.
/// Lines that are neither comments nor samples are dropped.
pub fn merge_labelled(texts: &[(String, &str)]) -> String {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for (labels, text) in texts {
        let labels = labels.as_str();
        let mut current = String::new();
        for line in text.lines() {
            let line = line.trim_end();
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.trim_start().splitn(3, ' ');
                let (Some(keyword @ ("HELP" | "TYPE")), Some(name)) = (words.next(), words.next())
                else {
                    continue;
                };
                let rest = words.next().unwrap_or_default().to_owned();
                current = name.to_owned();
                let family = families.entry(current.clone()).or_default();
                let slot = if keyword == "HELP" {
                    &mut family.help
                } else {
                    &mut family.kind
                };
                slot.get_or_insert(rest);
                continue;
            }
            if line.is_empty() {
                continue;
            }
            let Some(sample) = add_labels(line, labels) else {
                continue;
            };
            // A sample belongs to the family announced last when its name extends that
            // family's (`_total`, `_bucket`, ...), else to a family of its own name.
            let name = &sample[..sample.find('{').unwrap_or(sample.len())];
            let key = if !current.is_empty() && name.starts_with(current.as_str()) {
                current.clone()
            } else {
                name.to_owned()
            };
            families.entry(key).or_default().samples.push(sample);
        }
    }
    let mut out = String::new();
    for (name, family) in families {
        if family.samples.is_empty() {
            continue;
        }
        if let Some(help) = family.help {
            let _ = writeln!(out, "# HELP {name} {help}");
        }
        if let Some(kind) = family.kind {
            let _ = writeln!(out, "# TYPE {name} {kind}");
        }
        for sample in family.samples {
            out.push_str(&sample);
            out.push('\n');
        }
    }
    out
}

/// What `hull monitor` serves for one scrape: every shim's metrics, merged, and its own
/// `hull_monitor_shim_up` per shim found.
pub async fn gather_all(run_root: &Path) -> String {
    let shims = discover(run_root);
    let mut texts = Vec::with_capacity(shims.len());
    let mut up = String::new();
    for shim in shims {
        let answer = fetch(&shim.socket).await;
        let _ = writeln!(
            up,
            "hull_monitor_shim_up{{sandbox_id=\"{}\",namespace=\"{}\"}} {}",
            escape(&shim.sandbox_id),
            escape(&shim.namespace),
            u8::from(answer.is_ok())
        );
        match answer {
            Ok(text) => texts.push((shim, text)),
            Err(err) => tracing::warn!(sandbox = %shim.sandbox_id, "{err}"),
        }
    }
    let mut out = merge(&texts);
    let _ = write!(
        out,
        "# HELP hull_monitor_shim_up Whether the pod's shim answered this scrape.\n\
         # TYPE hull_monitor_shim_up gauge\n{up}"
    );
    out
}

/// `hull monitor`: serves [`gather_all`] on `listener` until the process ends.
pub async fn serve_monitor(listener: tokio::net::TcpListener, run_root: PathBuf) {
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(%err, "accepting a scrape");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let run_root = run_root.clone();
        tokio::spawn(async move {
            answer(&mut stream, || async { gather_all(&run_root).await }).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_get_of_metrics_is_parsed_and_a_query_ignored() {
        let request = parse_request(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(
            request,
            Request {
                method: "GET".into(),
                path: "/metrics".into()
            }
        );
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET metrics HTTP/1.1\r\n",
            b"get /metrics HTTP/1.1\r\n",
            b"GET /metrics HTTP/2\r\n",
            b"GET  /metrics HTTP/1.1\r\n",
            b"GET /metrics HTTP/1.1",
        ] {
            assert!(
                parse_request(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with spaces and a parenthesis, as a process may choose.
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 \
                    1000 123456 789 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((300, 7, 789)));
        assert_eq!(parse_stat("42 (x) S 1"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn this_process_is_read_from_proc() {
        let stats = ProcessStats::read(std::process::id()).expect("/proc/self");
        assert!(stats.threads >= 1 && stats.open_fds >= 3 && stats.resident_bytes > 0);
    }

    #[test]
    fn labels_are_added_to_every_sample_and_families_merged() {
        let shim = |id: &str| ShimEndpoint {
            namespace: "k8s.io".into(),
            sandbox_id: id.into(),
            socket: PathBuf::new(),
        };
        let text = "# HELP up Up.\n# TYPE up gauge\nup 1\n\
                    # TYPE req counter\nreq_total{code=\"200\"} 5\nother{} 2\n";
        let merged = merge(&[(shim("a"), text.into()), (shim("b"), text.into())]);
        let expected = "\
            other{sandbox_id=\"a\",namespace=\"k8s.io\"} 2\n\
            other{sandbox_id=\"b\",namespace=\"k8s.io\"} 2\n\
            # TYPE req counter\n\
            req_total{sandbox_id=\"a\",namespace=\"k8s.io\",code=\"200\"} 5\n\
            req_total{sandbox_id=\"b\",namespace=\"k8s.io\",code=\"200\"} 5\n\
            # HELP up Up.\n\
            # TYPE up gauge\n\
            up{sandbox_id=\"a\",namespace=\"k8s.io\"} 1\n\
            up{sandbox_id=\"b\",namespace=\"k8s.io\"} 1\n";
        assert_eq!(merged, expected);
        assert_eq!(add_labels("# comment", "a=\"1\""), None);
        assert_eq!(add_labels("9bad 1", "a=\"1\""), None);
    }

    #[test]
    fn discovery_finds_sockets_by_namespace_and_sandbox() {
        let root = tempfile::tempdir().unwrap();
        let pod = root.path().join("k8s.io").join("pod-1");
        std::fs::create_dir_all(&pod).unwrap();
        std::fs::write(pod.join(SOCKET_NAME), "").unwrap();
        std::fs::create_dir_all(root.path().join("k8s.io").join("no-socket")).unwrap();
        assert_eq!(
            discover(root.path()),
            vec![ShimEndpoint {
                namespace: "k8s.io".into(),
                sandbox_id: "pod-1".into(),
                socket: pod.join(SOCKET_NAME),
            }]
        );
        assert!(discover(&root.path().join("absent")).is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn requests_are_answered_by_status() {
        async fn ask(request: &[u8]) -> String {
            let (mut client, mut server) = tokio::io::duplex(64 * 1024);
            client.write_all(request).await.unwrap();
            answer(&mut server, || async { "m 1\n".to_owned() }).await;
            drop(server);
            let mut text = String::new();
            client.read_to_string(&mut text).await.unwrap();
            text
        }
        let ok = ask(b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains(CONTENT_TYPE) && ok.ends_with("\r\n\r\nm 1\n"),
            "{ok}"
        );
        assert!(ask(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404"));
        assert!(ask(b"POST /metrics HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 405"));
        assert!(ask(b"nonsense\r\n\r\n").await.starts_with("HTTP/1.1 400"));
        let huge = vec![b'a'; MAX_HEAD + 2048];
        assert!(ask(&huge).await.starts_with("HTTP/1.1 400"));
    }

    proptest! {
        #[test]
        fn any_request_head_is_parsed_or_refused_without_panicking(
            head in proptest::collection::vec(any::<u8>(), 0..512)
        ) {
            if let Ok(request) = parse_request(&head) {
                prop_assert!(request.path.starts_with('/'));
                prop_assert!(!request.method.is_empty());
            }
        }

        #[test]
        fn any_line_gets_the_labels_or_is_dropped(line in "\\PC{0,80}") {
            if let Some(labelled) = add_labels(&line, "sandbox_id=\"p\"") {
                prop_assert!(labelled.contains("{sandbox_id=\"p\""), "{}", labelled);
            }
            let shim = ShimEndpoint {
                namespace: "n".into(),
                sandbox_id: "p".into(),
                socket: PathBuf::new(),
            };
            let merged = merge(&[(shim, line)]);
            for l in merged.lines().filter(|l| !l.starts_with('#')) {
                prop_assert!(l.contains("sandbox_id=\"p\""), "{}", l);
            }
        }
    }
}
