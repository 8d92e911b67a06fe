//! hull-agent serving the protocol on a host (`--listen unix:PATH`), driven by the generated
//! ttrpc client the shim uses: the calls answer for real, what the agent does not do (kernel
//! modules, unknown methods) says UNIMPLEMENTED, and bad requests get precise errors without
//! taking the agent down.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use hull_agent_protocol::agent::*;
use hull_agent_protocol::ttrpc::r#async::Client;
use hull_agent_protocol::ttrpc::{self, context, Code};
use hull_agent_protocol::{AgentServiceClient, Call, PROTOCOL_VERSION, SERVICE_NAME};
use hull_tests::host_agent::HostAgent;

/// A hull-agent child serving on a socket in its own temporary directory
/// ([`HostAgent`]), with the clients the tests use. Dropping it kills the agent and removes
/// the directory, whatever the test did.
struct AgentProcess(HostAgent);

impl AgentProcess {
    fn start(test: &str) -> AgentProcess {
        Self::start_with(test, &[])
    }

    /// Starts the agent with `extra` arguments; `{dir}` in one stands for its temp dir.
    fn start_with(test: &str, extra: &[&str]) -> AgentProcess {
        AgentProcess(HostAgent::start(
            Path::new(env!("CARGO_BIN_EXE_hull-agent")),
            test,
            &[],
            extra,
        ))
    }

    async fn client(&self) -> AgentServiceClient {
        AgentServiceClient::new(self.raw_client().await)
    }

    async fn raw_client(&self) -> Client {
        Client::connect(&self.0.address())
            .await
            .expect("connecting to the agent's socket")
    }
}

fn ctx() -> context::Context {
    context::with_timeout(
        Duration::from_secs(10)
            .as_nanos()
            .try_into()
            .unwrap_or(i64::MAX),
    )
}

/// The ttrpc status code and message of a failed call.
fn status_of<T: std::fmt::Debug>(result: ttrpc::Result<T>) -> (Code, String) {
    match result {
        Err(ttrpc::Error::RpcStatus(status)) => (status.code(), status.message().to_owned()),
        other => panic!("expected an error status, got {other:?}"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn check_answers_serving() {
    let agent = AgentProcess::start("check");
    let client = agent.client().await;
    let response = client
        .check(ctx(), &CheckRequest::new())
        .await
        .expect("Check");
    assert_eq!(
        response.status.enum_value(),
        Ok(ServingStatus::SERVING_STATUS_SERVING)
    );

    let mut named = CheckRequest::new();
    named.service = SERVICE_NAME.into();
    let response = client
        .check(ctx(), &named)
        .await
        .expect("Check of the agent service");
    assert_eq!(
        response.status.enum_value(),
        Ok(ServingStatus::SERVING_STATUS_SERVING)
    );

    let mut other = CheckRequest::new();
    other.service = "grpc.health.v1.Nothing".into();
    let (code, message) = status_of(client.check(ctx(), &other).await);
    assert_eq!(code, Code::NOT_FOUND);
    assert!(message.contains("grpc.health.v1.Nothing"), "{message}");
}

#[tokio::test(flavor = "current_thread")]
async fn guest_details_describe_this_hosts_kernel_and_the_agent() {
    let agent = AgentProcess::start("details");
    let client = agent.client().await;
    let details = client
        .get_guest_details(ctx(), &GuestDetailsRequest::new())
        .await
        .expect("GetGuestDetails");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert_eq!(details.kernel_release, release.trim());
    assert_eq!(details.machine, std::env::consts::ARCH);
    assert_eq!(details.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(details.protocol_version, PROTOCOL_VERSION);
    assert!(details.cpus >= 1, "{details:?}");
    assert!(details.memory_bytes >= 64 << 20, "{details:?}");
    for served in [
        "Check",
        "GetGuestDetails",
        "GetMetrics",
        "SetGuestDateTime",
        "CopyFile",
        "CreateContainer",
        "StartContainer",
        "WaitProcess",
        "CreateSandbox",
        "DestroySandbox",
        "UpdateInterface",
        "UpdateRoutes",
        "ListInterfaces",
    ] {
        assert!(
            details.supported_calls.iter().any(|c| c == served),
            "{details:?}"
        );
    }
    // Every call of the protocol is served.
    assert_eq!(
        details.supported_calls.len(),
        Call::ALL.len(),
        "{details:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_call_about_a_container_that_does_not_exist_says_so() {
    let agent = AgentProcess::start("unknown");
    let client = agent.client().await;
    // A container call about a container that does not exist says so.
    let mut start = StartContainerRequest::new();
    start.container_id = "web".into();
    let (code, message) = status_of(client.start_container(ctx(), &start).await);
    assert_eq!(code, Code::NOT_FOUND);
    assert!(
        message.contains("StartContainer") && message.contains("web"),
        "{message}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn create_sandbox_once_and_never_renaming_the_host() {
    let agent = AgentProcess::start("sandbox");
    let client = agent.client().await;
    let host_name = nix::unistd::gethostname().expect("the host name");
    let mut modules = CreateSandboxRequest::new();
    modules.kernel_modules = vec!["vsock".into()];
    let (code, message) = status_of(client.create_sandbox(ctx(), &modules).await);
    assert_eq!(code, Code::UNIMPLEMENTED);
    assert!(message.contains("kernel_modules"), "{message}");

    let mut sandbox = CreateSandboxRequest::new();
    sandbox.sandbox_id = "pod".into();
    sandbox.hostname = "hull-sandbox-test".into();
    sandbox.dns = vec!["nameserver 10.0.0.1".into()];
    client
        .create_sandbox(ctx(), &sandbox)
        .await
        .expect("CreateSandbox");
    // On a host the agent never changes the machine it runs on.
    assert_eq!(
        nix::unistd::gethostname().expect("the host name"),
        host_name
    );
    let (code, message) = status_of(client.create_sandbox(ctx(), &sandbox).await);
    assert_eq!(code, Code::FAILED_PRECONDITION);
    assert!(message.contains("exists already"), "{message}");
}

#[tokio::test(flavor = "current_thread")]
async fn malformed_requests_get_invalid_argument_naming_the_field() {
    let agent = AgentProcess::start("malformed");
    let client = agent.client().await;

    let mut create = CreateContainerRequest::new();
    create.container_id = "web".into();
    create.oci_spec_json = b"{\"ociVersion\": \"1.1.0\", \"root\": ".to_vec();
    let (code, message) = status_of(client.create_container(ctx(), &create).await);
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert!(message.contains("oci_spec_json"), "{message}");

    create.container_id = "../escape".into();
    let (code, message) = status_of(client.create_container(ctx(), &create).await);
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert!(message.contains("container id"), "{message}");

    let mut time = SetGuestDateTimeRequest::new();
    time.seconds = 1_700_000_000;
    time.nanos = 1_000_000_000;
    let (code, message) = status_of(client.set_guest_date_time(ctx(), &time).await);
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert!(message.contains("nanos"), "{message}");

    // The agent is still serving.
    client
        .check(ctx(), &CheckRequest::new())
        .await
        .expect("Check after bad requests");
}

#[tokio::test(flavor = "current_thread")]
async fn metrics_are_prometheus_text_about_the_agent_and_guest() {
    let agent = AgentProcess::start("metrics");
    let client = agent.client().await;
    let metrics = client
        .get_metrics(ctx(), &GetMetricsRequest::new())
        .await
        .expect("GetMetrics");
    let text = metrics.metrics;
    let build_info = format!(
        "hull_agent_build_info{{version=\"{}\",protocol=\"{PROTOCOL_VERSION}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.lines().any(|line| line == build_info), "{text}");
    for name in [
        "hull_agent_resident_memory_bytes",
        "hull_guest_memory_total_bytes",
    ] {
        let value = text
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in {text}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("{name} {value} is no number"));
        assert!(value > 0.0, "{name} {value}");
    }
    // Every line is a comment or `name[{labels}] value`.
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let (_, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn copy_file_writes_chunks_under_the_shared_dir_only() {
    let agent = AgentProcess::start_with("copy", &["--shared-dir", "{dir}/shared"]);
    let client = agent.client().await;
    let shared = agent.0.dir().join("shared");
    let path = shared.join("web/etc/hosts");
    let chunk = |path: &Path, offset: u64, data: &[u8]| {
        let mut request = CopyFileRequest::new();
        request.path = path.to_string_lossy().into_owned();
        request.file_size = 21;
        request.offset = offset;
        request.data = data.to_vec();
        request.file_mode = 0o644;
        request.dir_mode = 0o755;
        request.uid = nix::unistd::getuid().as_raw();
        request.gid = nix::unistd::getgid().as_raw();
        request
    };
    client
        .copy_file(ctx(), &chunk(&path, 0, b"127.0.0.1 "))
        .await
        .expect("first chunk");
    client
        .copy_file(ctx(), &chunk(&path, 10, b"localhost\n"))
        .await
        .expect("second chunk");
    assert_eq!(
        std::fs::read(&path).expect("reading the copy"),
        b"127.0.0.1 localhost\n"
    );

    let outside = agent.0.dir().join("escaped");
    let (code, message) = status_of(client.copy_file(ctx(), &chunk(&outside, 0, b"x")).await);
    assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");
    assert!(!outside.exists());

    let plain = AgentProcess::start("copy-no-dir");
    let client = plain.client().await;
    let (code, message) = status_of(client.copy_file(ctx(), &chunk(&path, 0, b"x")).await);
    assert_eq!(code, Code::FAILED_PRECONDITION, "{message}");
    assert!(message.contains("--shared-dir"), "{message}");
}

#[tokio::test(flavor = "current_thread")]
async fn setting_the_clock_is_refused_on_a_host() {
    let agent = AgentProcess::start("clock");
    let client = agent.client().await;
    let mut time = SetGuestDateTimeRequest::new();
    time.seconds = 1_700_000_000;
    let (code, message) = status_of(client.set_guest_date_time(ctx(), &time).await);
    assert_eq!(code, Code::FAILED_PRECONDITION);
    assert!(message.contains("host"), "{message}");
}

#[tokio::test(flavor = "current_thread")]
async fn undecodable_payloads_and_unknown_methods_do_not_take_the_agent_down() {
    let agent = AgentProcess::start("garbage");
    let raw = agent.raw_client().await;
    let request = |method: &str, payload: &[u8]| {
        let mut request = ttrpc::Request::new();
        request.service = SERVICE_NAME.into();
        request.method = method.into();
        request.payload = payload.to_vec();
        request.timeout_nano = ctx().timeout_nano;
        request
    };
    // A truncated length-delimited field: no CreateContainerRequest decodes from it. ttrpc
    // itself decodes the payload before the agent sees the call and answers UNKNOWN.
    let garbage = [0x0a, 0xff, 0xff, 0x7f, b'x'];
    let (code, message) = status_of(
        raw.request(request(Call::CreateContainer.name(), &garbage))
            .await,
    );
    assert_ne!(code, Code::OK, "{message}");

    let (code, message) = status_of(raw.request(request("Frobnicate", b"")).await);
    assert_eq!(code, Code::UNIMPLEMENTED, "{message}");

    let client = AgentServiceClient::new(raw);
    client
        .check(ctx(), &CheckRequest::new())
        .await
        .expect("Check after garbage");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Whatever bytes arrive as the payload of any call, the agent answers (a result or an
    /// error status) and keeps serving: a request never panics it or hangs a connection.
    #[test]
    fn every_call_answers_arbitrary_payloads(
        payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        FUZZED_AGENT.with(|agent| {
            runtime.block_on(async {
                let raw = agent.raw_client().await;
                // DestroySandbox stops the agent and GetOOMEvent waits for an OOM kill, both
                // by design; CreateSandbox would mount whatever storages the bytes happen to
                // describe, on the host running the test. Every other call must answer at
                // once.
                for call in Call::ALL.iter().filter(|c| {
                    !matches!(
                        c,
                        Call::DestroySandbox | Call::GetOOMEvent | Call::CreateSandbox
                    )
                }) {
                    let mut request = ttrpc::Request::new();
                    request.service = SERVICE_NAME.into();
                    request.method = call.name().into();
                    request.payload = payload.clone();
                    request.timeout_nano = ctx().timeout_nano;
                    match raw.request(request).await {
                        Ok(_) | Err(ttrpc::Error::RpcStatus(_)) => {}
                        Err(other) => panic!("{call} with payload {payload:02x?}: {other:?}"),
                    }
                }
            })
        });
    }
}

thread_local! {
    /// One agent for all the cases of the property test, stopped when its thread ends.
    static FUZZED_AGENT: AgentProcess = AgentProcess::start("fuzz");
}

#[test]
fn sigterm_stops_the_agent_and_removes_its_socket() {
    let mut agent = AgentProcess::start("sigterm");
    let pid =
        nix::unistd::Pid::from_raw(i32::try_from(agent.0.child_mut().id()).expect("a pid fits"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signalling the agent");
    let status = wait_with_timeout(agent.0.child_mut(), Duration::from_secs(30));
    assert!(status.success(), "hull-agent exited with {status}");
    assert!(!agent.0.socket().exists(), "the socket was left behind");
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for hull-agent") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "hull-agent did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A shim keeps a GetOOMEvent call pending for the sandbox's whole life; DestroySandbox must
/// still end the agent (on a host it exits; in a guest the VM powers off) rather than wait
/// for that call forever.
#[test]
fn destroy_sandbox_ends_the_agent_despite_a_pending_get_oom_event() {
    let mut agent = AgentProcess::start("destroy-pending");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let client = agent.client().await;
        let waiting = client.clone();
        let pending = tokio::spawn(async move {
            let no_timeout = context::Context::default();
            waiting
                .get_oom_event(no_timeout, &GetOOMEventRequest::new())
                .await
        });
        // Let the GetOOMEvent call reach the agent before the sandbox goes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        client
            .destroy_sandbox(ctx(), &DestroySandboxRequest::new())
            .await
            .expect("DestroySandbox answers");
        pending.abort();
    });
    let status = wait_with_timeout(agent.0.child_mut(), Duration::from_secs(30));
    assert!(status.success(), "hull-agent exited with {status}");
}
