//! `hull monitor` as an operator (or Prometheus) uses it: a pod runs under a private
//! containerd (the `none` hypervisor: the agent on the host, so in seconds), `hull monitor`
//! listens on a loopback port, an HTTP GET of /metrics answers Prometheus text that parses
//! strictly and holds the pod's series, labelled with its sandbox id; once the pod is gone,
//! its series are too, and so is its shim's socket.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hull_tests::containerd::{Containerd, NAMESPACE};
use hull_tests::oci_image::{build_busybox_archive, busybox};
use hull_tests::require;

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-hull-v2");
const HULL: &str = env!("CARGO_BIN_EXE_hull");

/// One sample of the text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict parser of the Prometheus text format (0.0.4) as far as hull uses it: comments are
/// `# HELP name text` or `# TYPE name counter|gauge|untyped` (TYPE at most once per name,
/// before its samples); samples are `name{label="value",...} number`. Anything else panics
/// naming the line.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let is_name = |s: &str| {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            let keyword = words.next().unwrap();
            let name = words
                .next()
                .unwrap_or_else(|| panic!("bare comment {line:?}"));
            assert!(is_name(name), "bad metric name in {line:?}");
            match keyword {
                "HELP" => {}
                "TYPE" => {
                    let kind = words.next().unwrap_or_default();
                    assert!(
                        ["counter", "gauge", "untyped"].contains(&kind),
                        "bad type in {line:?}"
                    );
                    assert!(
                        typed.insert(name.to_owned(), kind.to_owned()).is_none(),
                        "TYPE twice for {name}"
                    );
                    assert!(
                        !samples.iter().any(|s: &Sample| s.name == name),
                        "TYPE of {name} after its samples"
                    );
                }
                other => panic!("unknown comment {other:?} in {line:?}"),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                let mut labels = BTreeMap::new();
                let mut rest = inner;
                while !rest.is_empty() {
                    let (key, after) = rest
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label in {line:?}"));
                    assert!(is_name(key), "bad label name in {line:?}");
                    // Values here hold no escaped quotes; a quote ends the value.
                    let (value, after) = after
                        .split_once('"')
                        .unwrap_or_else(|| panic!("unterminated label value in {line:?}"));
                    assert!(
                        labels.insert(key.to_owned(), value.to_owned()).is_none(),
                        "label {key} twice in {line:?}"
                    );
                    rest = if after.is_empty() {
                        after
                    } else {
                        after
                            .strip_prefix(',')
                            .unwrap_or_else(|| panic!("labels not separated by commas in {line:?}"))
                    };
                }
                (name, labels)
            }
        };
        assert!(is_name(name), "bad metric name in {line:?}");
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

/// `hull monitor` on a free loopback port; killed (and reaped) when dropped.
struct Monitor {
    child: Child,
    address: String,
}

impl Monitor {
    fn start() -> Self {
        let mut child = Command::new(HULL)
            .args(["monitor", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("hull monitor starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("hull monitor prints its address");
        let address = line
            .trim()
            .strip_prefix("hull monitor: serving http://")
            .and_then(|rest| rest.strip_suffix("/metrics"))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        assert!(address.starts_with("127.0.0.1:"), "{address}");
        Self { child, address }
    }

    /// GET /metrics: the status line, the head, and the body.
    fn get(&self, path: &str) -> (String, String, String) {
        let mut stream = std::net::TcpStream::connect(&self.address).expect("connecting");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.address
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("reading");
        let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
        let status = head.lines().next().unwrap_or_default().to_owned();
        (status, head.to_owned(), body.to_owned())
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn hull_monitor_serves_prometheus_text_with_each_pods_series() {
    let test = "hull_monitor_serves_prometheus_text_with_each_pods_series";
    let busybox = require!(test, busybox());
    require!(test, hull_tests::artifacts::workspace_binary("hull-agent"));
    let shim_dir = Path::new(SHIM).parent().expect("a directory").to_owned();
    let containerd = require!(test, Containerd::start(&[shim_dir])).expect("containerd starts");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("busybox.tar");
    let image = build_busybox_archive(&busybox, &archive).unwrap();
    containerd.import(&archive).unwrap();
    let config = dir.path().join("configuration.toml");
    std::fs::write(
        &config,
        "hypervisor = \"none\"\n[runtime]\nenable_none_hypervisor = true\n",
    )
    .unwrap();
    let id = "hull-monitor-pod";
    containerd
        .ctr(&[
            "run",
            "-d",
            "--runtime",
            "io.containerd.hull.v2",
            "--runtime-config-path",
            config.to_str().expect("UTF-8"),
            image,
            id,
            "sleep",
            "1000",
        ])
        .expect("ctr run -d");
    let socket = hull_shim::paths::sandbox_run_dir(NAMESPACE, id).join("shim-monitor.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let monitor = Monitor::start();
    let (status, head, body) = monitor.get("/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{head}\n{body}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let samples = parse_prometheus(&body);
    let of_pod = |name: &str, role: Option<&str>| {
        samples
            .iter()
            .filter(|s| {
                s.name == name
                    && s.labels.get("sandbox_id").map(String::as_str) == Some(id)
                    && s.labels.get("namespace").map(String::as_str) == Some(NAMESPACE)
                    && role.is_none_or(|r| s.labels.get("role").map(String::as_str) == Some(r))
            })
            .map(|s| s.value)
            .collect::<Vec<f64>>()
    };
    for role in ["shim", "hull-agent"] {
        for name in [
            "hull_process_cpu_seconds_total",
            "hull_process_threads",
            "hull_process_open_fds",
        ] {
            assert_eq!(of_pod(name, Some(role)).len(), 1, "{name} {role}:\n{body}");
        }
        let rss = of_pod("hull_process_resident_memory_bytes", Some(role));
        assert!(
            rss.len() == 1 && rss[0] > 0.0,
            "{role} RSS: {rss:?}\n{body}"
        );
    }
    assert_eq!(of_pod("hull_agent_up", None), vec![1.0], "{body}");
    assert_eq!(of_pod("hull_monitor_shim_up", None), vec![1.0], "{body}");
    // The agent's own figures, from GetMetrics.
    assert_eq!(of_pod("hull_agent_uptime_seconds", None).len(), 1, "{body}");
    assert!(
        samples
            .iter()
            .all(|s| s.labels.contains_key("sandbox_id") && s.labels.contains_key("namespace")),
        "a series without its pod's labels:\n{body}"
    );
    let (status, _, _) = monitor.get("/other");
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");

    containerd
        .ctr(&["tasks", "kill", "--signal", "SIGKILL", id])
        .expect("ctr task kill");
    let deadline = Instant::now() + Duration::from_secs(30);
    while containerd.ctr(&["tasks", "delete", id]).is_err() {
        assert!(Instant::now() < deadline, "the task never stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
    containerd
        .ctr(&["containers", "delete", id])
        .expect("ctr containers delete");
    let deadline = Instant::now() + Duration::from_secs(30);
    while socket.exists() {
        assert!(Instant::now() < deadline, "{} was left", socket.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _, body) = monitor.get("/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        !parse_prometheus(&body)
            .iter()
            .any(|s| s.labels.get("sandbox_id").map(String::as_str) == Some(id)),
        "the removed pod's series are still served:\n{body}"
    );
}
