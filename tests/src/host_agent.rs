//! hull-agent serving on a host (`--listen unix:PATH`), as the agent's tests and benchmarks
//! run it: in its own temporary directory, optionally behind a wrapper command (such as
//! `ip netns exec NAME`), killed and cleaned up on drop whatever the test did.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running host-mode agent.
pub struct HostAgent {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl HostAgent {
    /// Starts `agent` (the hull-agent binary) for the test `name`, prefixed by `wrapper`
    /// (empty for none), with `extra` arguments (`{dir}` in one stands for the agent's temp
    /// dir), and waits until it listens. Panics if it
    /// exits first or does not listen within 30 seconds: a test cannot go on without it.
    pub fn start(agent: &Path, name: &str, wrapper: &[&str], extra: &[&str]) -> HostAgent {
        let dir = std::env::temp_dir().join(format!("hull-agent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the agent's temp dir");
        let socket = dir.join("agent.sock");
        let (program, wrapper_args) = match wrapper.split_first() {
            Some((program, args)) => (PathBuf::from(program), args.to_vec()),
            None => (agent.to_owned(), Vec::new()),
        };
        let mut command = Command::new(program);
        command.args(wrapper_args);
        if !wrapper.is_empty() {
            command.arg(agent);
        }
        let child = command
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--log-level=debug")
            .args(
                extra
                    .iter()
                    .map(|arg| arg.replace("{dir}", &dir.to_string_lossy())),
            )
            .stdin(Stdio::null())
            .spawn()
            .expect("starting hull-agent");
        let mut host_agent = HostAgent { child, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&host_agent.socket).is_err() {
            if let Ok(Some(status)) = host_agent.child.try_wait() {
                panic!("hull-agent exited before listening: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "hull-agent did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        host_agent
    }

    /// The ttrpc address to connect to (`unix://PATH`).
    pub fn address(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The socket it serves on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The agent process (or its wrapper, which execs it), to signal or wait for.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The agent's temporary directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
