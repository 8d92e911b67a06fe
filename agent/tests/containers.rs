//! Real containers through a host-mode hull-agent (`--listen unix:PATH`, as root, no VM),
//! driven by the generated ttrpc client the shim uses: a busybox rootfs in a temp dir, OCI
//! specs as the shim sends them, and every container call from CreateContainer to
//! DestroySandbox. Each test ends with DestroySandbox and checks that nothing of it is left:
//! no process, no mount, no cgroup, no agent state.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hull_agent_protocol::agent::*;
use hull_agent_protocol::ttrpc::{self, context, Code};
use hull_agent_protocol::AgentServiceClient;
use hull_tests::prereq::Missing;
use hull_tests::require;
use serde_json::json;

/// Everything a test needs: an agent, a busybox rootfs, and what must be gone at the end.
struct Fixture {
    name: String,
    agent: Child,
    dir: PathBuf,
    socket: PathBuf,
    rootfs: PathBuf,
    /// Every PID the agent reported for a container of this test, with its start time.
    pids: Vec<(u32, String)>,
    /// The cgroups paths given to containers.
    cgroups: Vec<String>,
}

fn root() -> Result<(), Missing> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Missing::new(
            "root (containers need namespaces, mounts and cgroups)",
            "run the tests as root",
        ))
    }
}

impl Fixture {
    fn start(name: &str, busybox: &Path) -> Fixture {
        Self::start_with(name, busybox, &[])
    }

    /// Starts the agent with `extra` arguments.
    fn start_with(name: &str, busybox: &Path, extra: &[&str]) -> Fixture {
        // What earlier runs killed before their cleanup left: their agents, containers, mounts.
        hull_tests::stale::sweep(&std::env::temp_dir(), "hull-ct-");
        let dir = std::env::temp_dir().join(format!("hull-ct-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let rootfs = dir.join("rootfs");
        for sub in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
            std::fs::create_dir_all(rootfs.join(sub)).expect("creating the rootfs");
        }
        hull_tests::stale::claim(&dir).expect("claiming the fixture's directory");
        std::fs::copy(busybox, rootfs.join("bin/busybox")).expect("copying busybox");
        for applet in ["sh", "cat", "echo", "sleep", "stty", "true", "ls", "dd"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                .expect("linking an applet");
        }
        let socket = dir.join("agent.sock");
        let agent = Command::new(env!("CARGO_BIN_EXE_hull-agent"))
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--log-level=debug")
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting hull-agent");
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "hull-agent did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Fixture {
            name: name.to_owned(),
            agent,
            dir,
            socket,
            rootfs,
            pids: Vec::new(),
            cgroups: Vec::new(),
        }
    }

    async fn client(&self) -> AgentServiceClient {
        AgentServiceClient::new(
            ttrpc::r#async::Client::connect(&format!("unix://{}", self.socket.display()))
                .await
                .expect("connecting to the agent"),
        )
    }

    /// An OCI spec running `args`, as a shim would send it.
    fn spec(&mut self, id: &str, args: &[&str], terminal: bool, pid_ns: bool) -> Vec<u8> {
        let cgroup = format!("/hull-test-{}-{}-{id}", self.name, std::process::id());
        self.cgroups.push(cgroup.clone());
        let mut namespaces = vec![
            json!({"type": "mount"}),
            json!({"type": "uts"}),
            json!({"type": "ipc"}),
        ];
        if pid_ns {
            namespaces.push(json!({"type": "pid"}));
        }
        let caps = [
            "CAP_CHOWN",
            "CAP_KILL",
            "CAP_SETUID",
            "CAP_SETGID",
            "CAP_DAC_OVERRIDE",
        ];
        serde_json::to_vec(&json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": terminal,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/bin", "TERM=xterm"],
                "cwd": "/",
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
                "noNewPrivileges": true
            },
            "root": {"path": self.rootfs, "readonly": false},
            "hostname": "hull-test",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}
            ],
            "linux": {"namespaces": namespaces, "cgroupsPath": cgroup}
        }))
        .expect("a spec encodes")
    }

    async fn create(
        &mut self,
        client: &AgentServiceClient,
        id: &str,
        args: &[&str],
        terminal: bool,
    ) {
        let spec = self.spec(id, args, terminal, true);
        create_with(client, id, spec)
            .await
            .expect("CreateContainer");
        self.track(client, id).await;
    }

    /// Remembers the PIDs of `id`, to check at the end that they are gone.
    async fn track(&mut self, client: &AgentServiceClient, id: &str) {
        let mut list = ListProcessesRequest::new();
        list.container_id = id.into();
        let listed = client
            .list_processes(ctx(), &list)
            .await
            .expect("ListProcesses");
        for process in &listed.processes {
            if let Some(started) = start_time(process.pid) {
                self.pids.push((process.pid, started));
            }
        }
    }

    /// DestroySandbox, then the agent exits and nothing of the test is left.
    async fn destroy_and_check_nothing_left(self, client: &AgentServiceClient) {
        client
            .destroy_sandbox(ctx(), &DestroySandboxRequest::new())
            .await
            .expect("DestroySandbox");
        self.check_agent_exits_leaving_nothing();
    }

    /// The agent exits successfully (it was told to stop), and nothing of the test is left.
    fn check_agent_exits_leaving_nothing(mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.agent.try_wait().expect("waiting for the agent") {
                break status;
            }
            assert!(Instant::now() < deadline, "the agent did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "hull-agent exited with {status}");
        let agent_pid = self.agent.id();
        for (pid, started) in &self.pids {
            assert_ne!(
                start_time(*pid).as_ref(),
                Some(started),
                "container process {pid} is still there"
            );
        }
        let state_dir = format!("/run/hull-agent-{agent_pid}");
        assert!(
            !Path::new(&state_dir).exists(),
            "{state_dir} was left behind"
        );
        assert!(
            hull_tests::leftovers::processes_with(&[&state_dir]).is_empty(),
            "a helper process was left"
        );
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let dir = self.dir.to_string_lossy().into_owned();
        assert!(
            !mountinfo.contains(&dir) && !mountinfo.contains(&state_dir),
            "a mount was left: {mountinfo}"
        );
        for cgroup in &self.cgroups {
            for dir in cgroup_dirs(cgroup) {
                assert!(!dir.exists(), "cgroup {} was left", dir.display());
            }
        }
        std::fs::remove_dir_all(&self.dir).expect("removing the test's directory");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Only reached with the agent still running when a test failed half-way.
        let _ = self.agent.kill();
        let _ = self.agent.wait();
        // Its containers outlive a killed agent (one in a PID namespace of its own, as its
        // PID 1): kill those still there, then remove their cgroups.
        for (pid, started) in &self.pids {
            if start_time(*pid).as_ref() == Some(started) {
                if let Ok(pid) = i32::try_from(*pid) {
                    // SAFETY: kill(2) takes plain integers; the start time just read says
                    // the PID is still the container's process.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for cgroup in &self.cgroups {
            for dir in cgroup_dirs(cgroup) {
                // A killed process leaves its cgroup a moment after the signal.
                while dir.exists()
                    && std::fs::remove_dir(&dir).is_err()
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        // The directory is left to the next run's stale::sweep, which unmounts before it
        // removes.
    }
}

/// When process `pid` started (field 22 of /proc/PID/stat), which tells it from a later
/// process that reuses the PID.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    after_name.split_whitespace().nth(19).map(str::to_owned)
}

/// Every directory the cgroup `path` can have: one per v1 hierarchy, or the v2 one.
fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let relative = path.trim_start_matches('/');
    let mut dirs = vec![Path::new("/sys/fs/cgroup").join(relative)];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        for entry in entries.flatten() {
            dirs.push(entry.path().join(relative));
        }
    }
    dirs
}

/// The freezer state file of the cgroup `path` and the value it reads when frozen.
fn freezer(path: &str) -> (PathBuf, &'static str) {
    let relative = path.trim_start_matches('/');
    let v1 = Path::new("/sys/fs/cgroup/freezer");
    if v1.exists() {
        (v1.join(relative).join("freezer.state"), "FROZEN")
    } else {
        (
            Path::new("/sys/fs/cgroup")
                .join(relative)
                .join("cgroup.freeze"),
            "1",
        )
    }
}

fn ctx() -> context::Context {
    context::with_timeout(
        Duration::from_secs(60)
            .as_nanos()
            .try_into()
            .unwrap_or(i64::MAX),
    )
}

fn status_of<T: std::fmt::Debug>(result: ttrpc::Result<T>) -> (Code, String) {
    match result {
        Err(ttrpc::Error::RpcStatus(status)) => (status.code(), status.message().to_owned()),
        other => panic!("expected an error status, got {other:?}"),
    }
}

async fn create_with(client: &AgentServiceClient, id: &str, spec: Vec<u8>) -> ttrpc::Result<Empty> {
    let mut create = CreateContainerRequest::new();
    create.container_id = id.into();
    create.oci_spec_json = spec;
    client.create_container(ctx(), &create).await
}

async fn start(client: &AgentServiceClient, id: &str) -> ttrpc::Result<Empty> {
    let mut start = StartContainerRequest::new();
    start.container_id = id.into();
    client.start_container(ctx(), &start).await
}

async fn wait(client: &AgentServiceClient, id: &str, exec_id: &str) -> WaitProcessResponse {
    let mut wait = WaitProcessRequest::new();
    wait.container_id = id.into();
    wait.exec_id = exec_id.into();
    client
        .wait_process(ctx(), &wait)
        .await
        .expect("WaitProcess")
}

async fn signal(client: &AgentServiceClient, id: &str, exec_id: &str, signal: i32, all: bool) {
    let mut request = SignalProcessRequest::new();
    request.container_id = id.into();
    request.exec_id = exec_id.into();
    request.signal = u32::try_from(signal).expect("a signal number");
    request.all = all;
    client
        .signal_process(ctx(), &request)
        .await
        .expect("SignalProcess");
}

async fn read_once(client: &AgentServiceClient, id: &str, exec_id: &str, stderr: bool) -> Vec<u8> {
    let mut read = ReadStreamRequest::new();
    read.container_id = id.into();
    read.exec_id = exec_id.into();
    read.len = 4096;
    let response = if stderr {
        client.read_stderr(ctx(), &read).await
    } else {
        client.read_stdout(ctx(), &read).await
    };
    response.expect("reading output").data
}

/// Reads a stream to its end.
async fn read_all(client: &AgentServiceClient, id: &str, exec_id: &str, stderr: bool) -> String {
    let mut out = Vec::new();
    loop {
        let data = read_once(client, id, exec_id, stderr).await;
        if data.is_empty() {
            return String::from_utf8_lossy(&out).into_owned();
        }
        out.extend(data);
    }
}

/// Reads until the output contains `needle`.
async fn read_until(client: &AgentServiceClient, id: &str, exec_id: &str, needle: &str) -> String {
    let mut out = Vec::new();
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if text.contains(needle) {
            return text;
        }
        let data = read_once(client, id, exec_id, false).await;
        assert!(
            !data.is_empty(),
            "end of output before {needle:?}: {text:?}"
        );
        out.extend(data);
    }
}

async fn write_stdin(
    client: &AgentServiceClient,
    id: &str,
    exec_id: &str,
    data: &[u8],
) -> ttrpc::Result<WriteStreamResponse> {
    let mut write = WriteStreamRequest::new();
    write.container_id = id.into();
    write.exec_id = exec_id.into();
    write.data = data.to_vec();
    client.write_stdin(ctx(), &write).await
}

async fn close_stdin(client: &AgentServiceClient, id: &str, exec_id: &str) {
    let mut close = CloseStdinRequest::new();
    close.container_id = id.into();
    close.exec_id = exec_id.into();
    client.close_stdin(ctx(), &close).await.expect("CloseStdin");
}

async fn remove(client: &AgentServiceClient, id: &str) {
    let mut remove = RemoveContainerRequest::new();
    remove.container_id = id.into();
    client
        .remove_container(ctx(), &remove)
        .await
        .expect("RemoveContainer");
}

async fn exec(
    client: &AgentServiceClient,
    id: &str,
    exec_id: &str,
    process: serde_json::Value,
) -> ttrpc::Result<Empty> {
    let mut request = ExecProcessRequest::new();
    request.container_id = id.into();
    request.exec_id = exec_id.into();
    request.process_json = serde_json::to_vec(&process).expect("encodes");
    client.exec_process(ctx(), &request).await
}

async fn remove_process(
    client: &AgentServiceClient,
    id: &str,
    exec_id: &str,
) -> ttrpc::Result<Empty> {
    let mut request = RemoveProcessRequest::new();
    request.container_id = id.into();
    request.exec_id = exec_id.into();
    client.remove_process(ctx(), &request).await
}

/// How many descriptors process `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("listing the agent's descriptors")
        .count()
}

fn process(args: &[&str], terminal: bool) -> serde_json::Value {
    json!({"terminal": terminal, "user": {"uid": 0, "gid": 0}, "args": args,
           "env": ["PATH=/bin", "TERM=xterm"], "cwd": "/"})
}

#[tokio::test(flavor = "current_thread")]
async fn output_and_exit_codes_of_init_processes() {
    require!("output_and_exit_codes_of_init_processes", root());
    let busybox = require!(
        "output_and_exit_codes_of_init_processes",
        hull_tests::oci_image::busybox()
    );
    let mut fx = Fixture::start("exit", &busybox);
    let client = fx.client().await;

    // Output written before anyone reads is kept; the program runs only after Start.
    fx.create(
        &client,
        "hello",
        &["sh", "-c", "echo hello; echo oops >&2"],
        false,
    )
    .await;
    start(&client, "hello").await.expect("StartContainer");
    assert_eq!(read_all(&client, "hello", "", false).await, "hello\n");
    assert_eq!(read_all(&client, "hello", "", true).await, "oops\n");
    let exit = wait(&client, "hello", "").await;
    assert_eq!((exit.exit_status, exit.exit_code, exit.signal), (0, 0, 0));
    // After the exit WaitProcess answers at once, again.
    assert_eq!(wait(&client, "hello", "").await.exit_status, 0);
    let (code, message) = status_of(start(&client, "hello").await);
    assert_eq!(code, Code::FAILED_PRECONDITION, "{message}");
    remove(&client, "hello").await;

    fx.create(&client, "seven", &["sh", "-c", "exit 7"], false)
        .await;
    start(&client, "seven").await.expect("StartContainer");
    let exit = wait(&client, "seven", "").await;
    assert_eq!((exit.exit_status, exit.exit_code, exit.signal), (7, 7, 0));
    remove(&client, "seven").await;

    // SIGTERM to an init outside a PID namespace (inside one, init ignores it) → 128 + 15.
    let spec = fx.spec("term", &["sleep", "1000"], false, false);
    create_with(&client, "term", spec)
        .await
        .expect("CreateContainer");
    fx.track(&client, "term").await;
    start(&client, "term").await.expect("StartContainer");
    signal(&client, "term", "", libc::SIGTERM, false).await;
    let exit = wait(&client, "term", "").await;
    assert_eq!(
        (exit.exit_status, exit.exit_code, exit.signal),
        (143, 0, 15)
    );
    // Signalling an exited process is not an error.
    signal(&client, "term", "", libc::SIGTERM, false).await;
    remove(&client, "term").await;

    // SIGKILL to every process of the container → 128 + 9.
    fx.create(&client, "kill", &["sleep", "1000"], false).await;
    start(&client, "kill").await.expect("StartContainer");
    signal(&client, "kill", "", libc::SIGKILL, true).await;
    let exit = wait(&client, "kill", "").await;
    assert_eq!((exit.exit_status, exit.signal), (137, 9));

    // A container still running is killed by RemoveContainer (here: created, never started).
    fx.create(&client, "unstarted", &["sleep", "1000"], false)
        .await;
    fx.destroy_and_check_nothing_left(&client).await;
}

/// The shim kills a host agent 50 ms after DestroySandbox answers: by the answer the
/// agent's state directory must be gone (it used to be removed only on a clean exit, so
/// every pod left one /run/hull-agent-<pid>, as `hull-bench soak` found).
#[tokio::test(flavor = "current_thread")]
async fn destroy_sandbox_removes_the_state_directory_before_it_answers() {
    let test = "destroy_sandbox_removes_the_state_directory_before_it_answers";
    require!(test, root());
    let busybox = require!(test, hull_tests::oci_image::busybox());
    let mut fx = Fixture::start("state-dir", &busybox);
    let client = fx.client().await;
    let state_dir = PathBuf::from(format!("/run/hull-agent-{}", fx.agent.id()));
    fx.create(&client, "hello", &["echo", "hello"], false).await;
    start(&client, "hello").await.expect("StartContainer");
    assert_eq!(read_all(&client, "hello", "", false).await, "hello\n");
    wait(&client, "hello", "").await;
    assert!(
        state_dir.is_dir(),
        "{} holds the container's files",
        state_dir.display()
    );
    client
        .destroy_sandbox(ctx(), &DestroySandboxRequest::new())
        .await
        .expect("DestroySandbox");
    let left = state_dir.exists();
    // What the shim does next: SIGKILL, no time for the agent's own clean-up.
    let _ = fx.agent.kill();
    let _ = fx.agent.wait();
    let _ = std::fs::remove_dir_all(&state_dir);
    // The fixture's own directory goes too (the container's rootfs is unmounted by now);
    // only a test failing half-way leaves it to the next run's stale sweep.
    std::fs::remove_dir_all(&fx.dir).expect("removing the test's directory");
    assert!(
        !left,
        "{} is there when DestroySandbox answers",
        state_dir.display()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn stdin_reaches_the_program_and_closing_it_is_end_of_file() {
    require!(
        "stdin_reaches_the_program_and_closing_it_is_end_of_file",
        root()
    );
    let busybox = require!(
        "stdin_reaches_the_program_and_closing_it_is_end_of_file",
        hull_tests::oci_image::busybox()
    );
    let mut fx = Fixture::start("stdin", &busybox);
    let client = fx.client().await;
    fx.create(&client, "cat", &["cat"], false).await;
    start(&client, "cat").await.expect("StartContainer");
    let written = write_stdin(&client, "cat", "", b"ping\n")
        .await
        .expect("WriteStdin");
    assert_eq!(written.len, 5);
    assert_eq!(read_until(&client, "cat", "", "ping\n").await, "ping\n");
    close_stdin(&client, "cat", "").await;
    assert_eq!(read_all(&client, "cat", "", false).await, "");
    assert_eq!(wait(&client, "cat", "").await.exit_status, 0);
    let (code, message) = status_of(write_stdin(&client, "cat", "", b"late").await);
    assert_eq!(code, Code::FAILED_PRECONDITION, "{message}");
    fx.destroy_and_check_nothing_left(&client).await;
}

#[tokio::test(flavor = "current_thread")]
async fn exec_processes_with_pipes_and_a_terminal() {
    require!("exec_processes_with_pipes_and_a_terminal", root());
    let busybox = require!(
        "exec_processes_with_pipes_and_a_terminal",
        hull_tests::oci_image::busybox()
    );
    let mut fx = Fixture::start("exec", &busybox);
    let client = fx.client().await;
    fx.create(&client, "box", &["sleep", "1000"], false).await;
    // Exec needs a running container.
    let (code, message) = status_of(exec(&client, "box", "early", process(&["true"], false)).await);
    assert_eq!(code, Code::FAILED_PRECONDITION, "{message}");
    start(&client, "box").await.expect("StartContainer");

    exec(
        &client,
        "box",
        "second",
        process(&["sh", "-c", "echo from-exec; exit 5"], false),
    )
    .await
    .expect("ExecProcess");
    assert_eq!(
        read_all(&client, "box", "second", false).await,
        "from-exec\n"
    );
    let exit = wait(&client, "box", "second").await;
    assert_eq!((exit.exit_status, exit.exit_code), (5, 5));
    let (code, message) =
        status_of(exec(&client, "box", "second", process(&["true"], false)).await);
    assert_eq!(code, Code::ALREADY_EXISTS, "{message}");

    // An exec'd process is no PID 1: SIGTERM kills it.
    exec(
        &client,
        "box",
        "sleeper",
        process(&["sleep", "1000"], false),
    )
    .await
    .expect("ExecProcess");
    fx.track(&client, "box").await;
    let mut list = ListProcessesRequest::new();
    list.container_id = "box".into();
    let listed = client
        .list_processes(ctx(), &list)
        .await
        .expect("ListProcesses");
    let exec_ids: Vec<&str> = listed
        .processes
        .iter()
        .map(|p| p.exec_id.as_str())
        .collect();
    assert!(
        exec_ids.contains(&"") && exec_ids.contains(&"sleeper"),
        "{exec_ids:?}"
    );
    signal(&client, "box", "sleeper", libc::SIGTERM, false).await;
    let exit = wait(&client, "box", "sleeper").await;
    assert_eq!((exit.exit_status, exit.signal), (143, 15));

    // A terminal: output on stdout, none on stderr, and the size set by TtyWinResize.
    exec(
        &client,
        "box",
        "tty",
        process(&["sh", "-c", "read line; stty size; echo tty-$line"], true),
    )
    .await
    .expect("ExecProcess with a terminal");
    let mut resize = TtyWinResizeRequest::new();
    resize.container_id = "box".into();
    resize.exec_id = "tty".into();
    resize.rows = 31;
    resize.columns = 101;
    client
        .tty_win_resize(ctx(), &resize)
        .await
        .expect("TtyWinResize");
    write_stdin(&client, "box", "tty", b"ok\n")
        .await
        .expect("WriteStdin");
    let output = read_until(&client, "box", "tty", "tty-ok").await;
    assert!(output.contains("31 101"), "{output:?}");
    assert_eq!(read_once(&client, "box", "tty", true).await, b"");
    assert_eq!(wait(&client, "box", "tty").await.exit_status, 0);
    resize.exec_id = "second".into();
    let (code, message) = status_of(client.tty_win_resize(ctx(), &resize).await);
    assert_eq!(code, Code::FAILED_PRECONDITION, "{message}");
    fx.destroy_and_check_nothing_left(&client).await;
}

#[tokio::test(flavor = "current_thread")]
async fn pause_resume_stats_and_update() {
    require!("pause_resume_stats_and_update", root());
    let busybox = require!(
        "pause_resume_stats_and_update",
        hull_tests::oci_image::busybox()
    );
    let mut fx = Fixture::start("pause", &busybox);
    let client = fx.client().await;
    fx.create(&client, "busy", &["cat"], false).await;
    let cgroup = fx.cgroups.last().cloned().expect("a cgroup");
    start(&client, "busy").await.expect("StartContainer");
    write_stdin(&client, "busy", "", b"warm\n")
        .await
        .expect("WriteStdin");
    read_until(&client, "busy", "", "warm\n").await;

    let mut stats = StatsContainerRequest::new();
    stats.container_id = "busy".into();
    let response = client
        .stats_container(ctx(), &stats)
        .await
        .expect("StatsContainer");
    let figures = response.cgroup_stats.as_ref().expect("cgroup stats");
    assert!(figures.cpu.usage_usec > 0, "{figures:?}");
    assert!(figures.memory.usage_bytes > 0, "{figures:?}");
    assert!(figures.pids.current >= 1, "{figures:?}");

    let mut update = UpdateContainerRequest::new();
    update.container_id = "busy".into();
    update.resources_json = br#"{"pids": {"limit": 64}}"#.to_vec();
    client
        .update_container(ctx(), &update)
        .await
        .expect("UpdateContainer");
    let response = client
        .stats_container(ctx(), &stats)
        .await
        .expect("StatsContainer");
    assert_eq!(response.cgroup_stats.pids.limit, 64);
    update.resources_json = b"[1,2".to_vec();
    let (code, message) = status_of(client.update_container(ctx(), &update).await);
    assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");

    let mut pause = PauseContainerRequest::new();
    pause.container_id = "busy".into();
    client
        .pause_container(ctx(), &pause)
        .await
        .expect("PauseContainer");
    let (file, frozen) = freezer(&cgroup);
    assert_eq!(
        std::fs::read_to_string(&file)
            .expect("freezer state")
            .trim(),
        frozen
    );
    let (code, message) = status_of(client.pause_container(ctx(), &pause).await);
    assert_eq!(code, Code::FAILED_PRECONDITION, "{message}");
    // Input written while paused is handled after the resume.
    write_stdin(&client, "busy", "", b"after\n")
        .await
        .expect("WriteStdin");
    let mut resume = ResumeContainerRequest::new();
    resume.container_id = "busy".into();
    client
        .resume_container(ctx(), &resume)
        .await
        .expect("ResumeContainer");
    assert_ne!(
        std::fs::read_to_string(&file)
            .expect("freezer state")
            .trim(),
        frozen
    );
    read_until(&client, "busy", "", "after\n").await;
    fx.destroy_and_check_nothing_left(&client).await;
}

#[tokio::test(flavor = "current_thread")]
async fn bad_requests_get_precise_errors() {
    require!("bad_requests_get_precise_errors", root());
    let busybox = require!(
        "bad_requests_get_precise_errors",
        hull_tests::oci_image::busybox()
    );
    let mut fx = Fixture::start("bad", &busybox);
    let client = fx.client().await;
    fx.create(&client, "dup", &["sleep", "1000"], false).await;
    let spec = fx.spec("dup2", &["true"], false, true);
    let (code, message) = status_of(create_with(&client, "dup", spec).await);
    assert_eq!(code, Code::ALREADY_EXISTS, "{message}");

    let (code, message) = status_of(write_stdin(&client, "nope", "", b"x").await);
    assert_eq!(code, Code::NOT_FOUND, "{message}");
    let (code, message) = status_of(exec(&client, "nope", "e", process(&["true"], false)).await);
    assert_eq!(code, Code::NOT_FOUND, "{message}");
    let mut wait_request = WaitProcessRequest::new();
    wait_request.container_id = "nope".into();
    let (code, message) = status_of(client.wait_process(ctx(), &wait_request).await);
    assert_eq!(code, Code::NOT_FOUND, "{message}");
    wait_request.container_id = "dup".into();
    wait_request.exec_id = "nope".into();
    let (code, message) = status_of(client.wait_process(ctx(), &wait_request).await);
    assert_eq!(code, Code::NOT_FOUND, "{message}");
    let (code, message) = status_of(start(&client, "nope").await);
    assert_eq!(code, Code::NOT_FOUND, "{message}");

    // root.path escaping with "..", and one that is not there.
    let mut spec: serde_json::Value =
        serde_json::from_slice(&fx.spec("esc", &["true"], false, true)).expect("json");
    spec["root"]["path"] = json!(format!("{}/../../../etc", fx.rootfs.display()));
    let (code, message) =
        status_of(create_with(&client, "esc", serde_json::to_vec(&spec).expect("json")).await);
    assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");
    assert!(message.contains("root.path"), "{message}");
    spec["root"]["path"] = json!("/nonexistent/hull/rootfs");
    let (code, message) =
        status_of(create_with(&client, "esc", serde_json::to_vec(&spec).expect("json")).await);
    assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");
    // The failed creates left the id free.
    spec["root"]["path"] = json!(fx.rootfs);
    create_with(&client, "esc", serde_json::to_vec(&spec).expect("json"))
        .await
        .expect("CreateContainer after failures");
    fx.track(&client, "esc").await;

    // A program that is not there: the create fails with the cause, and the id stays free.
    let spec = fx.spec("missing", &["/bin/nonexistent"], false, true);
    let (code, message) = status_of(create_with(&client, "missing", spec).await);
    assert_eq!(code, Code::INTERNAL, "{message}");
    assert!(message.contains("/bin/nonexistent"), "{message}");
    // A failure inside the container's init, preparing its rootfs: the message carries what
    // libcontainer logged there (in a process cloned from the helper), naming the bind
    // source that is not there, not only "failed to prepare rootfs".
    let mut spec: serde_json::Value =
        serde_json::from_slice(&fx.spec("nobind", &["true"], false, true)).expect("a spec");
    let absent = fx.dir.join("absent-bind-source");
    spec["mounts"].as_array_mut().expect("mounts").push(
        json!({"destination": "/data", "type": "bind", "source": absent,
                     "options": ["rbind"]}),
    );
    let spec = serde_json::to_vec(&spec).expect("json");
    let (code, message) = status_of(create_with(&client, "nobind", spec).await);
    assert_eq!(code, Code::INTERNAL, "{message}");
    assert!(
        message.contains(&absent.display().to_string()),
        "the message does not name the missing bind source: {message}"
    );
    let spec = fx.spec("missing", &["true"], false, true);
    create_with(&client, "missing", spec)
        .await
        .expect("CreateContainer of the failed id");
    fx.track(&client, "missing").await;
    // The same for an exec, whose id stays free too.
    start(&client, "dup").await.expect("StartContainer");
    let (code, message) = status_of(
        exec(
            &client,
            "dup",
            "missing",
            process(&["/bin/nonexistent"], false),
        )
        .await,
    );
    assert_eq!(code, Code::INTERNAL, "{message}");
    assert!(message.contains("/bin/nonexistent"), "{message}");
    exec(&client, "dup", "missing", process(&["true"], false))
        .await
        .expect("ExecProcess of the failed id");
    assert_eq!(wait(&client, "dup", "missing").await.exit_status, 0);
    fx.track(&client, "dup").await;

    let mut bad_signal = SignalProcessRequest::new();
    bad_signal.container_id = "dup".into();
    bad_signal.signal = 999;
    let (code, message) = status_of(client.signal_process(ctx(), &bad_signal).await);
    assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");
    fx.destroy_and_check_nothing_left(&client).await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_oom_kill_is_reported_by_get_oom_event() {
    require!("an_oom_kill_is_reported_by_get_oom_event", root());
    let busybox = require!(
        "an_oom_kill_is_reported_by_get_oom_event",
        hull_tests::oci_image::busybox()
    );
    let mut fx = Fixture::start("oom", &busybox);
    let client = fx.client().await;
    // dd allocates its 256 MiB block and fills it from /dev/zero: far past a 16 MiB limit
    // (swap included), so the kernel's OOM killer ends it.
    let mut spec: serde_json::Value = serde_json::from_slice(&fx.spec(
        "hog",
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"],
        false,
        true,
    ))
    .expect("json");
    let limit = 16 << 20;
    spec["linux"]["resources"] = json!({"memory": {"limit": limit, "swap": limit}});
    create_with(&client, "hog", serde_json::to_vec(&spec).expect("json"))
        .await
        .expect("CreateContainer");
    fx.track(&client, "hog").await;
    let oom = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .get_oom_event(ctx(), &GetOOMEventRequest::new())
                .await
        }
    });
    start(&client, "hog").await.expect("StartContainer");
    let exit = wait(&client, "hog", "").await;
    assert_eq!((exit.exit_status, exit.signal), (137, 9), "{exit:?}");
    let event = oom.await.expect("the OOM task").expect("GetOOMEvent");
    assert_eq!(event.container_id, "hog");
    let mut stats = StatsContainerRequest::new();
    stats.container_id = "hog".into();
    let response = client
        .stats_container(ctx(), &stats)
        .await
        .expect("StatsContainer");
    assert!(response.cgroup_stats.memory.oom_kills >= 1, "{response:?}");
    assert_eq!(response.cgroup_stats.memory.limit_bytes, limit);

    // An OOM kill of a container removed before anyone asked is still reported, once.
    spec["linux"]["cgroupsPath"] = json!(format!("/hull-test-oom-{}-gone", std::process::id()));
    fx.cgroups.push(
        spec["linux"]["cgroupsPath"]
            .as_str()
            .expect("a path")
            .to_owned(),
    );
    create_with(&client, "gone", serde_json::to_vec(&spec).expect("json"))
        .await
        .expect("CreateContainer");
    fx.track(&client, "gone").await;
    start(&client, "gone").await.expect("StartContainer");
    assert_eq!(wait(&client, "gone", "").await.exit_status, 137);
    remove(&client, "gone").await;
    let event = client
        .get_oom_event(ctx(), &GetOOMEventRequest::new())
        .await
        .expect("GetOOMEvent");
    assert_eq!(event.container_id, "gone");
    fx.destroy_and_check_nothing_left(&client).await;
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_execs_each_get_their_exit_code_and_all_their_output() {
    require!(
        "concurrent_execs_each_get_their_exit_code_and_all_their_output",
        root()
    );
    let busybox = require!(
        "concurrent_execs_each_get_their_exit_code_and_all_their_output",
        hull_tests::oci_image::busybox()
    );
    let mut fx = Fixture::start("many", &busybox);
    let client = fx.client().await;
    fx.create(&client, "many", &["sleep", "1000"], false).await;
    start(&client, "many").await.expect("StartContainer");

    // Execs started side by side while others exit: the reaper must hand each status to
    // its own waiter, none lost to another waitpid.
    let mut runs = tokio::task::JoinSet::new();
    for n in 1..=12u32 {
        let client = client.clone();
        runs.spawn(async move {
            let id = format!("e{n}");
            let script = format!("echo out-{n}; exit {n}");
            exec(&client, "many", &id, process(&["sh", "-c", &script], false))
                .await
                .expect("ExecProcess");
            let exit = wait(&client, "many", &id).await;
            let out = read_all(&client, "many", &id, false).await;
            (n, exit.exit_status, out)
        });
    }
    let mut finished = 0;
    while let Some(run) = runs.join_next().await {
        let (n, status, out) = run.expect("an exec task");
        assert_eq!(status, n, "exec e{n}");
        assert_eq!(out, format!("out-{n}\n"));
        finished += 1;
    }
    assert_eq!(finished, 12);

    // 4 MiB through a 64 KiB pipe: the writer blocks until read, and every byte arrives.
    exec(
        &client,
        "many",
        "big",
        process(&["dd", "if=/dev/zero", "bs=65536", "count=64"], false),
    )
    .await
    .expect("ExecProcess");
    let mut total = 0;
    loop {
        let data = read_once(&client, "many", "big", false).await;
        if data.is_empty() {
            break;
        }
        assert!(data.iter().all(|b| *b == 0));
        total += data.len();
    }
    assert_eq!(total, 64 * 65536);
    assert_eq!(wait(&client, "many", "big").await.exit_status, 0);
    fx.destroy_and_check_nothing_left(&client).await;
}

#[tokio::test(flavor = "current_thread")]
async fn storages_are_mounted_for_the_container_and_unmounted_at_remove() {
    use hull_agent_protocol::types::{Storage, StorageKind};
    require!(
        "storages_are_mounted_for_the_container_and_unmounted_at_remove",
        root()
    );
    let busybox = require!(
        "storages_are_mounted_for_the_container_and_unmounted_at_remove",
        hull_tests::oci_image::busybox()
    );
    let mut fx = Fixture::start("storage", &busybox);
    let client = fx.client().await;
    let storage = |kind: StorageKind, source: &str, mount_point: &Path, options: &[&str]| {
        let mut s = Storage::new();
        s.kind = kind.into();
        s.source = source.into();
        s.mount_point = mount_point.to_string_lossy().into_owned();
        s.options = options.iter().map(|o| o.to_string()).collect();
        s
    };
    // The rootfs reaches the container through a storage mounted by this very request (as a
    // virtio-fs share does in a guest), and a tmpfs goes beside it.
    let shared_root = fx.dir.join("mnt/root");
    let scratch = fx.dir.join("mnt/scratch");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&fx.spec("mounted", &["ls", "/"], false, true)).expect("json");
    spec["root"]["path"] = json!(shared_root);
    let mut create = CreateContainerRequest::new();
    create.container_id = "mounted".into();
    create.oci_spec_json = serde_json::to_vec(&spec).expect("json");
    create.storages = vec![
        storage(
            StorageKind::STORAGE_KIND_BIND,
            &fx.rootfs.to_string_lossy(),
            &shared_root,
            &[],
        ),
        storage(
            StorageKind::STORAGE_KIND_TMPFS,
            "",
            &scratch,
            &["size=1m", "mode=0700"],
        ),
    ];
    client
        .create_container(ctx(), &create)
        .await
        .expect("CreateContainer with storages");
    fx.track(&client, "mounted").await;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        mountinfo.contains(&*scratch.to_string_lossy()),
        "the tmpfs storage is not mounted"
    );
    start(&client, "mounted").await.expect("StartContainer");
    let listing = read_all(&client, "mounted", "", false).await;
    assert!(listing.contains("bin"), "{listing:?}");
    assert_eq!(wait(&client, "mounted", "").await.exit_status, 0);
    remove(&client, "mounted").await;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mountinfo.contains(&*fx.dir.join("mnt").to_string_lossy()),
        "a storage is still mounted after RemoveContainer"
    );

    // A block storage names its disk by serial: the pci: form is refused by name, and a
    // serial no disk has ends the wait naming it; nothing stays mounted either way.
    create.container_id = "block".into();
    let block = |source: &str| {
        let mut disk = storage(
            StorageKind::STORAGE_KIND_BLOCK,
            source,
            &fx.dir.join("mnt/disk"),
            &[],
        );
        disk.fstype = "ext4".into();
        vec![
            storage(StorageKind::STORAGE_KIND_TMPFS, "", &scratch, &[]),
            disk,
        ]
    };
    create.storages = block("pci:02/00");
    let (code, message) = status_of(client.create_container(ctx(), &create).await);
    assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");
    assert!(
        message.contains("storages[1]") && message.contains("pci:<...> form is not supported"),
        "{message}"
    );
    create.storages = block("serial:hull-no-such-disk");
    let (code, message) = status_of(client.create_container(ctx(), &create).await);
    assert_eq!(code, Code::DEADLINE_EXCEEDED, "{message}");
    assert!(
        message.contains("storages[1]") && message.contains("\"hull-no-such-disk\""),
        "{message}"
    );
    fx.destroy_and_check_nothing_left(&client).await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_agent_stopped_by_sigterm_removes_its_containers() {
    require!("an_agent_stopped_by_sigterm_removes_its_containers", root());
    let busybox = require!(
        "an_agent_stopped_by_sigterm_removes_its_containers",
        hull_tests::oci_image::busybox()
    );
    let mut fx = Fixture::start("sigterm", &busybox);
    let client = fx.client().await;
    fx.create(&client, "running", &["sleep", "1000"], false)
        .await;
    start(&client, "running").await.expect("StartContainer");
    fx.create(&client, "created", &["sleep", "1000"], false)
        .await;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(fx.agent.id()).expect("a pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    fx.check_agent_exits_leaving_nothing();
}

#[tokio::test(flavor = "current_thread")]
async fn containers_enter_their_rootfs_without_pivot_root_as_in_an_initramfs() {
    let test = "containers_enter_their_rootfs_without_pivot_root_as_in_an_initramfs";
    require!(test, root());
    let busybox = require!(test, hull_tests::oci_image::busybox());
    // In a guest the agent's root is its initrd, where pivot_root(2) fails; there it moves
    // the rootfs onto / and chroots, which --no-pivot selects on a host.
    let mut fx = Fixture::start_with("nopivot", &busybox, &["--no-pivot"]);
    let client = fx.client().await;
    fx.create(&client, "moved", &["ls", "/"], false).await;
    start(&client, "moved").await.expect("StartContainer");
    let listing = read_all(&client, "moved", "", false).await;
    let entries: Vec<&str> = listing.split_whitespace().collect();
    assert!(entries.contains(&"bin"), "{listing:?}");
    assert!(
        !entries.contains(&"usr"),
        "the host's root shows: {listing:?}"
    );
    assert_eq!(wait(&client, "moved", "").await.exit_status, 0);
    fx.destroy_and_check_nothing_left(&client).await;
}

#[tokio::test(flavor = "current_thread")]
async fn containerds_default_spec_runs_as_the_shim_would_send_it() {
    let test = "containerds_default_spec_runs_as_the_shim_would_send_it";
    require!(test, root());
    let busybox = require!(test, hull_tests::oci_image::busybox());
    let ctr = require!(test, hull_tests::prereq::find_program("ctr", "containerd"));
    let output = Command::new(ctr)
        .args(["oci", "spec"])
        .output()
        .expect("running ctr oci spec");
    assert!(output.status.success(), "ctr oci spec: {output:?}");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("ctr's spec is JSON");
    let mut fx = Fixture::start("ctrspec", &busybox);
    let client = fx.client().await;
    // What a shim fills in: the rootfs as the agent sees it, the program, a cgroup per
    // container (containerd's default is the namespace's, /default).
    let cgroup = format!("/hull-test-ctrspec-{}-default/c1", std::process::id());
    fx.cgroups.push(cgroup.clone());
    spec["root"]["path"] = json!(fx.rootfs);
    spec["process"]["args"] = json!([
        "sh",
        "-c",
        "echo in-$(cat /proc/self/cgroup | wc -l)-lines; exit 3"
    ]);
    spec["process"]["env"] = json!(["PATH=/bin"]);
    spec["linux"]["cgroupsPath"] = json!(cgroup);
    create_with(&client, "c1", serde_json::to_vec(&spec).expect("json"))
        .await
        .expect("CreateContainer with containerd's default spec");
    fx.track(&client, "c1").await;
    start(&client, "c1").await.expect("StartContainer");
    let out = read_all(&client, "c1", "", false).await;
    assert!(
        out.starts_with("in-") && out.ends_with("-lines\n"),
        "{out:?}"
    );
    assert_eq!(wait(&client, "c1", "").await.exit_status, 3);
    remove(&client, "c1").await;
    // The parent cgroup the spec's path implies is containerd's business, not the agent's.
    for dir in cgroup_dirs(&format!(
        "/hull-test-ctrspec-{}-default",
        std::process::id()
    )) {
        let _ = std::fs::remove_dir(dir);
    }
    fx.destroy_and_check_nothing_left(&client).await;
}

/// Kubernetes exec probes run an exec every few seconds for the life of a pod: the agent must
/// forget each one at RemoveProcess (the shim's Delete of the exec), closing its pidfd and
/// pipes and freeing its id, or it runs out of descriptors.
#[tokio::test(flavor = "current_thread")]
async fn removed_execs_free_their_id_and_descriptors() {
    require!("removed_execs_free_their_id_and_descriptors", root());
    let busybox = require!(
        "removed_execs_free_their_id_and_descriptors",
        hull_tests::oci_image::busybox()
    );
    let mut fx = Fixture::start("probes", &busybox);
    let client = fx.client().await;
    fx.create(&client, "probed", &["sleep", "1000"], false)
        .await;
    start(&client, "probed").await.expect("StartContainer");
    let agent_pid = fx.agent.id();

    // What RemoveProcess refuses: the init process, a running exec, an unknown one.
    let (code, message) = status_of(remove_process(&client, "probed", "").await);
    assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");
    let (code, message) = status_of(remove_process(&client, "nope", "probe").await);
    assert_eq!(code, Code::NOT_FOUND, "{message}");
    let (code, message) = status_of(remove_process(&client, "probed", "probe").await);
    assert_eq!(code, Code::NOT_FOUND, "{message}");
    exec(
        &client,
        "probed",
        "long",
        process(&["sleep", "1000"], false),
    )
    .await
    .expect("ExecProcess");
    let (code, message) = status_of(remove_process(&client, "probed", "long").await);
    assert_eq!(code, Code::FAILED_PRECONDITION, "{message}");
    signal(&client, "probed", "long", libc::SIGKILL, false).await;
    assert_eq!(wait(&client, "probed", "long").await.exit_status, 137);
    remove_process(&client, "probed", "long")
        .await
        .expect("RemoveProcess of a killed exec");

    // One probe as the shim runs it: exec, wait, read the rest of the output, then remove.
    // Until then its id is taken; after, every call naming it answers NOT_FOUND.
    let probe = |n: u32| {
        process(
            &["sh", "-c", &format!("echo probe-{n}; exit {}", n % 3)],
            false,
        )
    };
    exec(&client, "probed", "probe", probe(0))
        .await
        .expect("ExecProcess");
    assert_eq!(wait(&client, "probed", "probe").await.exit_status, 0);
    let (code, message) = status_of(exec(&client, "probed", "probe", probe(0)).await);
    assert_eq!(code, Code::ALREADY_EXISTS, "{message}");
    assert_eq!(
        read_all(&client, "probed", "probe", false).await,
        "probe-0\n"
    );
    remove_process(&client, "probed", "probe")
        .await
        .expect("RemoveProcess");
    let mut request = ReadStreamRequest::new();
    request.container_id = "probed".into();
    request.exec_id = "probe".into();
    request.len = 4096;
    let (code, message) = status_of(client.read_stdout(ctx(), &request).await);
    assert_eq!(code, Code::NOT_FOUND, "{message}");
    let mut request = CloseStdinRequest::new();
    request.container_id = "probed".into();
    request.exec_id = "probe".into();
    let (code, message) = status_of(client.close_stdin(ctx(), &request).await);
    assert_eq!(code, Code::NOT_FOUND, "{message}");
    let mut request = WaitProcessRequest::new();
    request.container_id = "probed".into();
    request.exec_id = "probe".into();
    let (code, message) = status_of(client.wait_process(ctx(), &request).await);
    assert_eq!(code, Code::NOT_FOUND, "{message}");
    let (code, message) = status_of(remove_process(&client, "probed", "probe").await);
    assert_eq!(code, Code::NOT_FOUND, "removed once: {message}");

    // 200 probes with the one id, every tenth on a terminal: each runs with its own output
    // and exit, and the agent's descriptors do not grow with them.
    let before = open_fds(agent_pid);
    for n in 1..=200u32 {
        let terminal = n % 10 == 0;
        let mut args = probe(n);
        args["terminal"] = json!(terminal);
        exec(&client, "probed", "probe", args)
            .await
            .unwrap_or_else(|err| panic!("ExecProcess of probe {n}: {err:?}"));
        assert_eq!(wait(&client, "probed", "probe").await.exit_status, n % 3);
        let newline = if terminal { "\r\n" } else { "\n" };
        assert_eq!(
            read_all(&client, "probed", "probe", false).await,
            format!("probe-{n}{newline}")
        );
        remove_process(&client, "probed", "probe")
            .await
            .unwrap_or_else(|err| panic!("RemoveProcess of probe {n}: {err:?}"));
    }

    // An exec whose child outlives it and holds its stdout open: a read of it waits for an
    // end of stream that does not come, until RemoveProcess ends it with NOT_FOUND, and the
    // pipes are closed all the same.
    exec(
        &client,
        "probed",
        "parent",
        process(&["sh", "-c", "sleep 1000 & echo started"], false),
    )
    .await
    .expect("ExecProcess");
    assert_eq!(wait(&client, "probed", "parent").await.exit_status, 0);
    assert_eq!(
        read_until(&client, "probed", "parent", "started").await,
        "started\n"
    );
    let mut request = ReadStreamRequest::new();
    request.container_id = "probed".into();
    request.exec_id = "parent".into();
    request.len = 4096;
    let pending = {
        let client = client.clone();
        tokio::spawn(async move { client.read_stdout(ctx(), &request).await })
    };
    remove_process(&client, "probed", "parent")
        .await
        .expect("RemoveProcess with a read in flight");
    let (code, message) = status_of(pending.await.expect("the read task"));
    assert_eq!(code, Code::NOT_FOUND, "{message}");

    let after = open_fds(agent_pid);
    println!("agent descriptors: {before} before 200 execs, {after} after");
    // Slack of 2 for descriptors the agent opens lazily (none is per exec: without
    // RemoveProcess each exec keeps a pidfd and 3 pipe ends or a pty master).
    assert!(
        after <= before + 2,
        "the agent's descriptors grew from {before} to {after} over 201 removed execs"
    );
    fx.track(&client, "probed").await;
    fx.destroy_and_check_nothing_left(&client).await;
}

/// The host PID of container `id`'s init.
async fn init_pid(client: &AgentServiceClient, id: &str) -> u32 {
    let mut list = ListProcessesRequest::new();
    list.container_id = id.into();
    let listed = client
        .list_processes(ctx(), &list)
        .await
        .expect("ListProcesses");
    listed
        .processes
        .first()
        .map(|p| p.pid)
        .unwrap_or_else(|| panic!("container {id} has no process"))
}

/// A container that joins another's PID namespace (a CRI pod's second container, with the
/// pause container's) mounts its `cgroup` file system whatever PID it gets there. On a
/// cgroup v1 host, libcontainer 0.7.0 read the host's /proc/<that PID> on the way and failed
/// "to prepare rootfs" when no host process had it (issue 12, patched in
/// third_party/libcontainer): here the pod's next PID is set to one the host does not have.
/// On a cgroup v2 host that path is not taken and the test checks the v2 mount.
#[tokio::test(flavor = "current_thread")]
async fn a_container_joining_a_pid_namespace_mounts_cgroups_whatever_its_pid() {
    let test = "a_container_joining_a_pid_namespace_mounts_cgroups_whatever_its_pid";
    require!(test, root());
    let busybox = require!(test, hull_tests::oci_image::busybox());
    let nsenter = require!(
        test,
        hull_tests::prereq::find_program("nsenter", "util-linux")
    );
    let mut fx = Fixture::start("joinpid", &busybox);
    let client = fx.client().await;
    let cgroup_mounts = json!([
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
    ]);
    let with_cgroup_mounts = |spec: Vec<u8>, pid_ns: Option<String>| -> Vec<u8> {
        let mut spec: serde_json::Value = serde_json::from_slice(&spec).expect("a spec");
        let mounts = spec["mounts"].as_array_mut().expect("mounts");
        mounts.extend(cgroup_mounts.as_array().expect("a list").iter().cloned());
        if let Some(path) = pid_ns {
            spec["linux"]["namespaces"]
                .as_array_mut()
                .expect("namespaces")
                .push(json!({"type": "pid", "path": path}));
        }
        serde_json::to_vec(&spec).expect("a spec encodes")
    };

    // The "pause" container: a new PID namespace, where it is PID 1.
    let spec = fx.spec("pause", &["sleep", "1000"], false, true);
    create_with(&client, "pause", with_cgroup_mounts(spec, None))
        .await
        .expect("CreateContainer (pause)");
    fx.track(&client, "pause").await;
    start(&client, "pause")
        .await
        .expect("StartContainer (pause)");
    let pause = init_pid(&client, "pause").await;

    // The next PID of the pod's namespace: one no host process has (as PID 11 had not in the
    // failing CRI run), set through ns_last_pid from inside that namespace.
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .expect("pid_max")
        .trim()
        .parse()
        .expect("pid_max is a number");
    let next = (2..pid_max)
        .rev()
        .find(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        .expect("a PID the host does not use");
    let set = Command::new(&nsenter)
        .arg(format!("--target={pause}"))
        .arg("--pid")
        .args(["--", "sh", "-c"])
        .arg(format!("echo {} > /proc/sys/kernel/ns_last_pid", next - 1))
        .status()
        .expect("running nsenter");
    assert!(set.success(), "setting the pod's ns_last_pid: {set}");

    // The second container joins that namespace, gets PID `next`, and mounts its cgroups.
    let spec = fx.spec(
        "second",
        &["sh", "-c", "echo pid=$$; ls /sys/fs/cgroup"],
        false,
        false,
    );
    let spec = with_cgroup_mounts(spec, Some(format!("/proc/{pause}/ns/pid")));
    create_with(&client, "second", spec)
        .await
        .expect("CreateContainer (second, joining the pod's PID namespace)");
    fx.track(&client, "second").await;
    start(&client, "second")
        .await
        .expect("StartContainer (second)");
    let out = read_all(&client, "second", "", false).await;
    let exit = wait(&client, "second", "").await;
    assert_eq!(exit.exit_status, 0, "{out}");
    assert!(
        out.lines().next() == Some(&format!("pid={next}")),
        "the second container did not get PID {next} in the pod's namespace: {out}"
    );
    // Its own cgroup file system: v1 hierarchies (emulated by libcontainer), or v2's files.
    let listed: Vec<&str> = out.lines().skip(1).collect();
    assert!(
        listed.contains(&"memory") || listed.contains(&"cgroup.controllers"),
        "no cgroup file system at /sys/fs/cgroup: {out}"
    );
    remove(&client, "second").await;
    fx.destroy_and_check_nothing_left(&client).await;
}
