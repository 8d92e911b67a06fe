//! The container manager's stdio copies and exit waiter against an agent double on a unix
//! socket: what containerd writes to the stdin FIFO reaches the process, its end closes
//! stdin, the process's output reaches the stdout and stderr FIFOs complete, and the exit is
//! reported only after it, with the agent's status.
//!
//! The double plays `sh -c 'cat; echo bye >&2; exit 7'`: stdin comes back on stdout; once
//! stdin is closed it writes one line to stderr and exits 7. It is a test double for the
//! agent's protocol, not a second agent: the real one is exercised by the containerd tests.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hull_agent_protocol::agent::{
    CheckRequest, CheckResponse, CloseStdinRequest, Empty, ReadStreamRequest, ReadStreamResponse,
    ServingStatus, WaitProcessRequest, WaitProcessResponse, WriteStreamRequest,
    WriteStreamResponse,
};
use hull_agent_protocol::ttrpc::r#async::{Server, TtrpcContext};
use hull_agent_protocol::{create_agent_service, AgentService};
use hull_shim::agent_link::AgentLink;
use hull_shim::container::stdio::{ProcessRef, StdioPaths};
use hull_shim::container::{Container, Containers, Exit, ExitHook, Process, Status};
use tokio::sync::Notify;

#[derive(Default)]
struct CatState {
    stdout: Vec<u8>,
    stdin_closed: bool,
    stderr_sent: bool,
}

/// The agent double: one process that echoes stdin, then exits 7.
#[derive(Default)]
struct CatAgent {
    state: Mutex<CatState>,
    changed: Notify,
}

impl CatAgent {
    fn lock(&self) -> std::sync::MutexGuard<'_, CatState> {
        self.state.lock().unwrap()
    }
}

#[async_trait::async_trait]
impl AgentService for CatAgent {
    async fn check(
        &self,
        _: &TtrpcContext,
        _: CheckRequest,
    ) -> hull_agent_protocol::ttrpc::Result<CheckResponse> {
        let mut response = CheckResponse::new();
        response.status = ServingStatus::SERVING_STATUS_SERVING.into();
        Ok(response)
    }

    async fn write_stdin(
        &self,
        _: &TtrpcContext,
        req: WriteStreamRequest,
    ) -> hull_agent_protocol::ttrpc::Result<WriteStreamResponse> {
        let len = req.data.len() as u32;
        self.lock().stdout.extend_from_slice(&req.data);
        self.changed.notify_waiters();
        Ok(WriteStreamResponse {
            len,
            ..Default::default()
        })
    }

    async fn close_stdin(
        &self,
        _: &TtrpcContext,
        _: CloseStdinRequest,
    ) -> hull_agent_protocol::ttrpc::Result<Empty> {
        self.lock().stdin_closed = true;
        self.changed.notify_waiters();
        Ok(Empty::new())
    }

    async fn read_stdout(
        &self,
        _: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> hull_agent_protocol::ttrpc::Result<ReadStreamResponse> {
        loop {
            let changed = self.changed.notified();
            {
                let mut state = self.lock();
                if !state.stdout.is_empty() || state.stdin_closed {
                    let n = state.stdout.len().min(req.len as usize);
                    let data: Vec<u8> = state.stdout.drain(..n).collect();
                    return Ok(ReadStreamResponse {
                        data,
                        ..Default::default()
                    });
                }
            }
            changed.await;
        }
    }

    async fn read_stderr(
        &self,
        _: &TtrpcContext,
        _: ReadStreamRequest,
    ) -> hull_agent_protocol::ttrpc::Result<ReadStreamResponse> {
        loop {
            let changed = self.changed.notified();
            {
                let mut state = self.lock();
                if state.stdin_closed {
                    let data = if state.stderr_sent {
                        Vec::new()
                    } else {
                        state.stderr_sent = true;
                        b"bye\n".to_vec()
                    };
                    return Ok(ReadStreamResponse {
                        data,
                        ..Default::default()
                    });
                }
            }
            changed.await;
        }
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        _: WaitProcessRequest,
    ) -> hull_agent_protocol::ttrpc::Result<WaitProcessResponse> {
        loop {
            let changed = self.changed.notified();
            if self.lock().stdin_closed {
                return Ok(WaitProcessResponse {
                    exit_status: 7,
                    exit_code: 7,
                    ..Default::default()
                });
            }
            changed.await;
        }
    }
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// Reads a FIFO to its end (waiting for a writer first, as containerd's reader does).
async fn read_to_end(path: PathBuf) -> Vec<u8> {
    let fifo = tokio::net::unix::pipe::OpenOptions::new()
        .open_receiver(&path)
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        fifo.readable().await.unwrap();
        match fifo.try_read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("reading {}: {e}", path.display()),
        }
    }
}

#[tokio::test]
async fn stdin_reaches_the_process_and_output_is_complete_before_the_exit() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let mut server = Server::new()
        .bind(&format!("unix://{}", socket.display()))
        .unwrap()
        .register_service(create_agent_service(Arc::new(CatAgent::default())));
    server.start().await.unwrap();
    let agent = AgentLink::connect_unix(&socket, Duration::from_secs(10), Duration::from_secs(10))
        .await
        .unwrap();

    let paths = StdioPaths {
        stdin: dir.path().join("stdin").display().to_string(),
        stdout: dir.path().join("stdout").display().to_string(),
        stderr: dir.path().join("stderr").display().to_string(),
        terminal: false,
    };
    for p in [&paths.stdin, &paths.stdout, &paths.stderr] {
        mkfifo(Path::new(p));
    }
    let stdout = tokio::spawn(read_to_end(PathBuf::from(&paths.stdout)));
    let stderr = tokio::spawn(read_to_end(PathBuf::from(&paths.stderr)));

    let containers = Containers::default();
    containers.lock().insert(
        "c1".to_owned(),
        Container {
            bundle: dir.path().to_owned(),
            rootfs: None,
            shared_rootfs: false,
            volumes: Vec::new(),
            paused: false,
            init: Process::new(paths.clone(), None),
            execs: Default::default(),
        },
    );
    let process = ProcessRef {
        container_id: "c1".into(),
        exec_id: String::new(),
    };
    containers.start_stdio(&agent, &process);
    // The hook runs once the output copies ended: both FIFOs have been closed by then.
    let exits: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let seen = Arc::clone(&exits);
    let hook: ExitHook = Arc::new(move |p: ProcessRef, exit: Exit| {
        let seen = Arc::clone(&seen);
        Box::pin(async move {
            seen.lock().unwrap().push((p.container_id, exit.status));
        })
    });
    containers.watch_exit(&agent, process, hook);
    let mut exit = containers.lock()["c1"].init.exit_watch();
    assert_eq!(containers.lock()["c1"].init.status, Status::Running);

    // containerd's side of stdin: opened once the shim reads it, written, then closed.
    let stdin_path = PathBuf::from(&paths.stdin);
    let writer = loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&stdin_path)
        {
            Ok(file) => break file,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("opening stdin: {e}"),
        }
    };
    {
        use std::io::Write;
        let mut writer = writer;
        writer.write_all(b"hello\nworld\n").unwrap();
    }

    // Bounded only so that a broken copy fails the test instead of hanging it.
    let bound = Duration::from_secs(60);
    let out = tokio::time::timeout(bound, stdout)
        .await
        .expect("stdout reaches its end")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out), "hello\nworld\n");
    assert_eq!(String::from_utf8_lossy(&stderr.await.unwrap()), "bye\n");
    let status = exit
        .wait_for(Option::is_some)
        .await
        .unwrap()
        .unwrap()
        .status;
    assert_eq!(status, 7);
    assert_eq!(
        exits.lock().unwrap().as_slice(),
        &[("c1".to_owned(), 7)],
        "one exit"
    );
    assert_eq!(containers.lock()["c1"].init.status, Status::Stopped);
    server.shutdown().await.unwrap();
}
