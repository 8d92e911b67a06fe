//! `containerd-shim-hull-v2 start` called the way each containerd generation calls it: 1.x
//! (flags and `TTRPC_ADDRESS`, answer the bare address), 2.0 to 2.2 (`MAX_SHIM_VERSION` set,
//! answer JSON) and 2.3 on (BootstrapParams protobuf on stdin, no `-address` flag and no
//! `TTRPC_ADDRESS`, answer a BootstrapResult). Each time the serving shim must answer on the
//! address given, and go away with its socket on Shutdown.
//!
//! containerd's ttrpc endpoint is stood in for by a listening socket nobody serves: the shim
//! connects to it for events, and these tests publish none.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use containerd_shim_protos::api::{ConnectRequest, ShutdownRequest};
use containerd_shim_protos::ttrpc::context;
use containerd_shim_protos::{Client, TaskClient};
use hull_tests::require;

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-hull-v2");
const NAMESPACE: &str = "hull-test-start";

/// A bundle directory (with the `log` file the serving shim writes to) and a stand-in for
/// containerd's ttrpc endpoint.
struct Bench {
    dir: tempfile::TempDir,
    _ttrpc: UnixListener,
}

impl Bench {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bundle")).unwrap();
        std::fs::write(dir.path().join("bundle/config.json"), "{}").unwrap();
        std::fs::write(dir.path().join("bundle/log"), "").unwrap();
        let ttrpc = UnixListener::bind(dir.path().join("ttrpc.sock")).unwrap();
        Self { dir, _ttrpc: ttrpc }
    }

    fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    /// containerd's addresses: gRPC (only named, it makes the shim's socket name) and ttrpc.
    fn grpc_address(&self) -> String {
        self.dir
            .path()
            .join("containerd.sock")
            .display()
            .to_string()
    }

    /// As containerd sets it: a path, no scheme.
    fn ttrpc_address(&self) -> String {
        self.dir.path().join("ttrpc.sock").display().to_string()
    }

    /// Runs `start` with `args`, only `env` of containerd's variables, and `stdin`.
    fn start(&self, args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Output {
        let mut child = Command::new(SHIM)
            .args(args)
            .current_dir(self.bundle())
            .env_remove("TTRPC_ADDRESS")
            .env_remove("GRPC_ADDRESS")
            .env_remove("MAX_SHIM_VERSION")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the shim runs");
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }
}

/// Connects to the serving shim at `address`, checks it answers, shuts it down and waits
/// for it and its socket to go.
fn shut_down(address: &str) {
    let path = Path::new(address.strip_prefix("unix://").expect("a unix:// address"));
    assert!(path.exists(), "no socket at {address}");
    let client = TaskClient::new(Client::connect(address).expect("the shim serves"));
    let pid = client
        .connect(context::with_timeout(0), &ConnectRequest::default())
        .expect("Connect")
        .shim_pid;
    assert!(pid > 0);
    client
        .shutdown(context::with_timeout(0), &ShutdownRequest::default())
        .expect("Shutdown");
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    let alive = || Path::new(&format!("/proc/{pid}")).exists();
    while (alive() || path.exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive() {
        // SAFETY: kill(2) takes plain integers; the pid is the shim this test started.
        unsafe { libc::kill(i32::try_from(pid).unwrap(), libc::SIGKILL) };
        panic!("the shim (pid {pid}) did not exit after Shutdown");
    }
    assert!(!path.exists(), "socket {address} left");
}

fn string_field(number: u8, value: &str) -> Vec<u8> {
    let mut bytes = vec![(number << 3) | 2, u8::try_from(value.len()).unwrap()];
    bytes.extend_from_slice(value.as_bytes());
    bytes
}

#[test]
fn start_answers_containerd_1_with_the_bare_address() {
    let test = "start_answers_containerd_1_with_the_bare_address";
    require!(test, hull_tests::prereq::root());
    let bench = Bench::new();
    let grpc = bench.grpc_address();
    // containerd 1.x writes the runtime options on stdin.
    let mut options = string_field(1, "runtimeoptions.v1.Options");
    options.extend(string_field(2, "\u{12}\u{4}/x.t"));
    let output = bench.start(
        &[
            "-namespace",
            NAMESPACE,
            "-id",
            "start-v1",
            "-address",
            &grpc,
            "-publish-binary",
            "/usr/bin/containerd",
            "start",
        ],
        &[("TTRPC_ADDRESS", &bench.ttrpc_address())],
        &options,
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.starts_with("unix:///") && !stdout.contains('{'),
        "not a bare address: {stdout:?}"
    );
    shut_down(&stdout);
}

#[test]
fn start_answers_containerd_2_with_json_naming_task_api_2() {
    let test = "start_answers_containerd_2_with_json_naming_task_api_2";
    require!(test, hull_tests::prereq::root());
    let bench = Bench::new();
    let grpc = bench.grpc_address();
    let output = bench.start(
        &[
            "-namespace",
            NAMESPACE,
            "-id",
            "start-v2",
            "-address",
            &grpc,
            "-publish-binary",
            "/usr/bin/containerd",
            "start",
        ],
        &[
            ("TTRPC_ADDRESS", &bench.ttrpc_address()),
            ("GRPC_ADDRESS", &grpc),
            ("MAX_SHIM_VERSION", "2"),
        ],
        b"",
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {:?}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    assert_eq!(answer["version"], 2, "{answer}");
    assert_eq!(answer["protocol"], "ttrpc", "{answer}");
    let address = answer["address"].as_str().expect("an address");
    shut_down(address);
}

#[test]
fn start_reads_bootstrap_params_and_answers_a_bootstrap_result() {
    let test = "start_reads_bootstrap_params_and_answers_a_bootstrap_result";
    require!(test, hull_tests::prereq::root());
    let bench = Bench::new();
    // containerd 2.3's BootstrapParams: what the flags and environment no longer say.
    let mut params = string_field(1, "start-v3");
    params.extend(string_field(2, NAMESPACE));
    params.extend(string_field(4, "2.3.0"));
    params.extend(string_field(5, &bench.ttrpc_address()));
    params.extend(string_field(6, &bench.grpc_address()));
    params.extend(string_field(7, "/usr/bin/containerd"));
    let output = bench.start(
        &["-namespace", NAMESPACE, "-id", "start-v3", "start"],
        &[],
        &params,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // BootstrapResult: version (1) = 2, address (2), protocol (3) = "ttrpc".
    let bytes = output.stdout;
    assert_eq!(bytes.get(..2), Some(&[1 << 3, 2][..]), "{bytes:?}");
    assert_eq!(bytes.get(2), Some(&((2 << 3) | 2)), "{bytes:?}");
    let len = usize::from(bytes[3]);
    let address = std::str::from_utf8(&bytes[4..4 + len]).expect("a UTF-8 address");
    assert_eq!(
        &bytes[4 + len..],
        &string_field(3, "ttrpc")[..],
        "{bytes:?}"
    );
    shut_down(address);
}

#[test]
fn start_without_containerds_ttrpc_address_says_what_is_missing() {
    let bench = Bench::new();
    let grpc = bench.grpc_address();
    let output = bench.start(
        &[
            "-namespace",
            NAMESPACE,
            "-id",
            "start-none",
            "-address",
            &grpc,
            "start",
        ],
        &[],
        b"",
    );
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "no address may be printed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("TTRPC_ADDRESS"), "{stderr}");
}
