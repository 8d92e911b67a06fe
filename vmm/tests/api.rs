//! `hull-vmm --api-socket`: the control API on a running small guest, as a client such as
//! `curl --unix-socket` sees it. Skips loudly where /dev/kvm is unusable.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{kvm, tiny_kernel};
use hull_tests::require;

/// Kills and reaps the child if the test fails before it exits; removes its files.
struct Vmm {
    child: Child,
    files: Vec<PathBuf>,
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for file in &self.files {
            let _ = std::fs::remove_file(file);
        }
    }
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("hull-vmm-api-{}-{name}", std::process::id()))
}

/// Starts hull-vmm on a guest that prints "up" then spins, serving the API on `socket`, and
/// waits for "up".
fn start(name: &str, socket: &Path) -> Vmm {
    let code = [
        0x66, 0xba, 0xf8, 0x03, 0xb0, b'u', 0xee, 0xb0, b'p', 0xee, 0xeb, 0xfe,
    ];
    let kernel = temp(&format!("{name}-kernel"));
    std::fs::write(&kernel, tiny_kernel(&code)).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
        .args(["--kernel", kernel.to_str().unwrap(), "--memory", "32"])
        .args(["--vcpus", "2"])
        .arg("--api-socket")
        .arg(socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut vmm = Vmm {
        child,
        files: vec![kernel, socket.to_owned()],
    };
    let mut up = [0u8; 2];
    vmm.child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut up)
        .unwrap();
    assert_eq!(&up, b"up");
    vmm
}

/// Sends `raw` and reads the whole answer (the server closes after it): status and body.
fn exchange(socket: &Path, raw: &[u8]) -> (u16, String) {
    let mut stream = UnixStream::connect(socket).expect("hull-vmm serves its api socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // A server that answers before reading (503, busy) may have closed already: its answer
    // is still there to read.
    let _ = stream.write_all(raw);
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// What curl sends for `curl -X METHOD --unix-socket SOCKET http://localhost/PATH`.
fn call(socket: &Path, method: &str, path: &str) -> (u16, String) {
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
    );
    exchange(socket, raw.as_bytes())
}

#[test]
fn pause_resume_and_shutdown_through_the_api_socket() {
    require!("pause_resume_and_shutdown_through_the_api_socket", kvm());
    let socket = temp("pause.sock");
    let mut vmm = start("pause", &socket);
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "api socket mode");

    let (status, body) = call(&socket, "GET", "/api/v1/vmm.ping");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"version\":"), "{body}");
    let info = |socket: &Path| call(socket, "GET", "/api/v1/vm.info");
    assert_eq!(
        info(&socket),
        (
            200,
            "{\"state\":\"running\",\"vcpus\":2,\"memory_mib\":32}".to_owned()
        )
    );
    assert_eq!(call(&socket, "PUT", "/api/v1/vm.pause").0, 204);
    assert_eq!(
        info(&socket).1,
        "{\"state\":\"paused\",\"vcpus\":2,\"memory_mib\":32}"
    );
    assert_eq!(call(&socket, "PUT", "/api/v1/vm.resume").0, 204);
    assert!(info(&socket).1.contains("\"state\":\"running\""));
    // Paused again, then shut down from paused.
    assert_eq!(call(&socket, "PUT", "/api/v1/vm.pause").0, 204);
    assert_eq!(call(&socket, "PUT", "/api/v1/vm.shutdown").0, 204);
    let status = vmm.child.wait().unwrap();
    let mut stderr = String::new();
    let _ = vmm
        .child
        .stderr
        .as_mut()
        .unwrap()
        .read_to_string(&mut stderr);
    assert!(status.success(), "hull-vmm exited with {status}: {stderr}");
    assert!(!socket.exists(), "hull-vmm left its api socket behind");
}

#[test]
fn bad_requests_are_answered_with_what_was_wrong_and_a_stuck_client_blocks_nobody() {
    require!(
        "bad_requests_are_answered_with_what_was_wrong_and_a_stuck_client_blocks_nobody",
        kvm()
    );
    let socket = temp("errors.sock");
    let vmm = start("errors", &socket);
    // A client that sends half a request and never finishes.
    let mut stuck = UnixStream::connect(&socket).unwrap();
    stuck.write_all(b"PUT /api/v1/vm.pau").unwrap();

    let (status, body) = call(&socket, "GET", "/api/v1/vm.boot");
    assert_eq!(status, 404);
    assert!(body.contains("no endpoint /api/v1/vm.boot"), "{body}");
    let (status, body) = call(&socket, "GET", "/api/v1/vm.pause");
    assert_eq!(status, 405);
    assert!(
        body.contains("method GET is not allowed on /api/v1/vm.pause: use PUT"),
        "{body}"
    );
    let (status, body) = exchange(&socket, b"hello\r\n\r\n");
    assert_eq!(status, 400);
    assert!(body.contains("malformed request line"), "{body}");
    let mut huge = b"GET /api/v1/vm.info HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 9000));
    let (status, body) = exchange(&socket, &huge);
    assert_eq!(status, 400);
    assert!(body.contains("larger than 8192 bytes"), "{body}");
    // The stuck client is still there, and the VM still answers.
    assert_eq!(call(&socket, "GET", "/api/v1/vmm.ping").0, 200);
    // Until as many clients as it serves at once are stuck: then the next one is told so.
    let more: Vec<UnixStream> = (1..hull_vmm::api::MAX_CONNECTIONS)
        .map(|_| {
            let mut client = UnixStream::connect(&socket).unwrap();
            client.write_all(b"GET /").unwrap();
            client
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        let answer = call(&socket, "GET", "/api/v1/vmm.ping");
        // The loop may take the last stuck connections after this one.
        if answer.0 != 200 || Instant::now() > deadline {
            break answer;
        }
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("16 connections are open already"), "{body}");
    drop(more);
    let deadline = Instant::now() + Duration::from_secs(30);
    while call(&socket, "GET", "/api/v1/vmm.ping").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the stuck clients' places are never freed"
        );
    }
    // The first stuck client is closed by hull-vmm once its time is up (a few seconds).
    stuck
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut rest = Vec::new();
    match stuck.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "answered a half request: {rest:?}"),
        Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}"),
    }
    drop(stuck);
    // SIGTERM still stops it, and the socket goes.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vmm.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut vmm = vmm;
    assert!(vmm.child.wait().unwrap().success());
    assert!(!socket.exists());
}

#[test]
fn a_live_api_socket_is_not_taken_over() {
    require!("a_live_api_socket_is_not_taken_over", kvm());
    let socket = temp("live.sock");
    let _first = start("live", &socket);
    let kernel = temp("live-kernel");
    let output = Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
        .args(["--kernel", kernel.to_str().unwrap(), "--memory", "32"])
        .arg("--api-socket")
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("another process serves it"), "{stderr}");
    // The first one still answers on it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while call(&socket, "GET", "/api/v1/vmm.ping").0 != 200 {
        assert!(Instant::now() < deadline);
    }
}
