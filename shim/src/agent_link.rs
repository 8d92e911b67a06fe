//! The shim's connection to the guest agent: ttrpc over a hybrid-vsock stream to the agent's
//! vsock port (or over a unix socket to an agent on the host, the `none` backend), with a
//! health check that says whether the agent serves, and one typed method per call the shim
//! makes. Calls that block until something happens in the container (WaitProcess, ReadStdout,
//! ReadStderr, WriteStdin) carry no deadline; every other call has the link's call timeout.

use std::path::Path;
use std::time::Duration;

use hull_agent_protocol::agent::{
    CheckRequest, CloseStdinRequest, CreateContainerRequest, CreateSandboxRequest,
    DestroySandboxRequest, ExecProcessRequest, GetMetricsRequest, GetOOMEventRequest,
    GuestDetailsRequest, GuestDetailsResponse, ListProcessesRequest, PauseContainerRequest,
    ProcessInfo, ReadStreamRequest, RemoveContainerRequest, RemoveProcessRequest,
    ResumeContainerRequest, ServingStatus, SignalProcessRequest, StartContainerRequest,
    StatsContainerRequest, StatsContainerResponse, TtyWinResizeRequest, UpdateContainerRequest,
    UpdateInterfaceRequest, UpdateRoutesRequest, WaitProcessRequest, WaitProcessResponse,
    WriteStreamRequest,
};
use hull_agent_protocol::ttrpc::context;
use hull_agent_protocol::ttrpc::r#async::transport::Socket;
use hull_agent_protocol::ttrpc::r#async::Client;
use hull_agent_protocol::ttrpc::{Code, Error as TtrpcError};
use hull_agent_protocol::types::Storage;
use hull_agent_protocol::{AgentServiceClient, AGENT_VSOCK_PORT};

use crate::hybrid_vsock;

/// Errors of the agent link.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The agent's port could not be reached.
    #[error("reaching the agent")]
    Connect(#[from] hybrid_vsock::Error),
    /// A call failed.
    #[error("agent call {call}")]
    Call {
        /// The call.
        call: &'static str,
        /// Why.
        #[source]
        source: hull_agent_protocol::ttrpc::Error,
    },
    /// The agent answers but does not serve.
    #[error("the agent answered Check with {0:?}")]
    NotServing(ServingStatus),
    /// The agent's unix socket could not be reached within the deadline.
    #[error("the agent's socket {path} did not accept a connection within {deadline:?}")]
    UnixTimeout {
        /// The socket.
        path: std::path::PathBuf,
        /// The bound.
        deadline: Duration,
        /// The last attempt's error.
        #[source]
        last: std::io::Error,
    },
}

impl Error {
    /// The ttrpc status code the agent answered with, if the call reached it and it refused.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Call {
                source: TtrpcError::RpcStatus(status),
                ..
            } => status.code.enum_value().ok(),
            _ => None,
        }
    }

    /// The agent's own message, if it refused the call; else this error's description.
    pub fn agent_message(&self) -> String {
        match self {
            Error::Call {
                call,
                source: TtrpcError::RpcStatus(status),
            } => format!("agent call {call}: {}", status.message),
            other => {
                let mut text = other.to_string();
                let mut source = std::error::Error::source(other);
                while let Some(cause) = source {
                    text.push_str(": ");
                    text.push_str(&cause.to_string());
                    source = cause.source();
                }
                text
            }
        }
    }
}

/// A `Result` with this module's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Which output stream of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    /// Standard output (the only one of a process with a terminal).
    Stdout,
    /// Standard error.
    Stderr,
}

/// A call whose answer carries nothing but its status.
fn call<T>(name: &'static str, answer: std::result::Result<T, TtrpcError>) -> Result<()> {
    answer
        .map(drop)
        .map_err(|source| Error::Call { call: name, source })
}

/// A connected agent. Clones share one connection (ttrpc multiplexes calls on it).
#[derive(Clone)]
pub struct AgentLink {
    client: AgentServiceClient,
    call_timeout: Duration,
}

impl AgentLink {
    /// Connects to the agent through the hybrid vsock socket `uds`, retrying until
    /// `deadline` while the guest boots, and returns once the agent answers Check SERVING.
    pub async fn connect(uds: &Path, deadline: Duration, call_timeout: Duration) -> Result<Self> {
        let stream = hybrid_vsock::connect_until(
            uds,
            AGENT_VSOCK_PORT,
            deadline,
            Duration::from_millis(100),
        )
        .await?;
        let link = Self {
            client: AgentServiceClient::new(Client::new(Socket::from(stream))),
            call_timeout,
        };
        link.check().await?;
        Ok(link)
    }

    /// Connects to an agent serving on the unix socket `path` (an agent on the host, run with
    /// `--listen unix:PATH`), retrying until `deadline` while it starts, and returns once it
    /// answers Check SERVING.
    pub async fn connect_unix(
        path: &Path,
        deadline: Duration,
        call_timeout: Duration,
    ) -> Result<Self> {
        let end = tokio::time::Instant::now() + deadline;
        let stream = loop {
            match tokio::net::UnixStream::connect(path).await {
                Ok(stream) => break stream,
                Err(last) if tokio::time::Instant::now() >= end => {
                    return Err(Error::UnixTimeout {
                        path: path.to_owned(),
                        deadline,
                        last,
                    })
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        let link = Self {
            client: AgentServiceClient::new(Client::new(Socket::from(stream))),
            call_timeout,
        };
        link.check().await?;
        Ok(link)
    }

    fn ctx(&self) -> context::Context {
        context::with_timeout(i64::try_from(self.call_timeout.as_nanos()).unwrap_or(i64::MAX))
    }

    /// A context without a deadline, for calls that wait for the container.
    fn unbounded() -> context::Context {
        context::Context::default()
    }

    /// The health check: `Ok` when the agent serves.
    pub async fn check(&self) -> Result<()> {
        let response = self
            .client
            .check(self.ctx(), &CheckRequest::new())
            .await
            .map_err(|source| Error::Call {
                call: "Check",
                source,
            })?;
        match response.status.enum_value() {
            Ok(ServingStatus::SERVING_STATUS_SERVING) => Ok(()),
            Ok(other) => Err(Error::NotServing(other)),
            Err(_) => Err(Error::NotServing(ServingStatus::SERVING_STATUS_UNSPECIFIED)),
        }
    }

    /// What the agent reports about the guest.
    pub async fn guest_details(&self) -> Result<GuestDetailsResponse> {
        self.client
            .get_guest_details(self.ctx(), &GuestDetailsRequest::new())
            .await
            .map_err(|source| Error::Call {
                call: "GetGuestDetails",
                source,
            })
    }

    /// CreateSandbox: what every container of the pod shares, set up once before the first
    /// of them: `storages` (the pod's virtio-fs share) are mounted before it returns.
    pub async fn create_sandbox(&self, sandbox_id: &str, storages: Vec<Storage>) -> Result<()> {
        let req = CreateSandboxRequest {
            sandbox_id: sandbox_id.to_owned(),
            storages,
            ..Default::default()
        };
        call(
            "CreateSandbox",
            self.client.create_sandbox(self.ctx(), &req).await,
        )
    }

    /// CreateContainer: `spec_json` is the OCI spec with paths as the agent sees them.
    pub async fn create_container(
        &self,
        container_id: &str,
        spec_json: Vec<u8>,
        storages: Vec<Storage>,
    ) -> Result<()> {
        let req = CreateContainerRequest {
            container_id: container_id.to_owned(),
            oci_spec_json: spec_json,
            storages,
            ..Default::default()
        };
        call(
            "CreateContainer",
            self.client.create_container(self.ctx(), &req).await,
        )
    }

    /// UpdateInterface: the guest interface with `interface.hw_addr` takes its name, MTU and
    /// addresses.
    pub async fn update_interface(
        &self,
        interface: hull_agent_protocol::types::Interface,
    ) -> Result<hull_agent_protocol::types::Interface> {
        let req = UpdateInterfaceRequest {
            interface: Some(interface).into(),
            ..Default::default()
        };
        self.client
            .update_interface(self.ctx(), &req)
            .await
            .map_err(|source| Error::Call {
                call: "UpdateInterface",
                source,
            })
    }

    /// UpdateRoutes: the guest's main routing table becomes `routes`.
    pub async fn update_routes(
        &self,
        routes: hull_agent_protocol::types::Routes,
    ) -> Result<hull_agent_protocol::types::Routes> {
        let req = UpdateRoutesRequest {
            routes: Some(routes).into(),
            ..Default::default()
        };
        self.client
            .update_routes(self.ctx(), &req)
            .await
            .map_err(|source| Error::Call {
                call: "UpdateRoutes",
                source,
            })
    }

    /// StartContainer: the init process runs the user's program.
    pub async fn start_container(&self, container_id: &str) -> Result<()> {
        let req = StartContainerRequest {
            container_id: container_id.to_owned(),
            ..Default::default()
        };
        call(
            "StartContainer",
            self.client.start_container(self.ctx(), &req).await,
        )
    }

    /// ExecProcess: creates and starts `process_json` (an OCI process) in the container.
    pub async fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        process_json: Vec<u8>,
    ) -> Result<()> {
        let req = ExecProcessRequest {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
            process_json,
            ..Default::default()
        };
        call(
            "ExecProcess",
            self.client.exec_process(self.ctx(), &req).await,
        )
    }

    /// SignalProcess; with `all`, every process of the container.
    pub async fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<()> {
        let req = SignalProcessRequest {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
            signal,
            all,
            ..Default::default()
        };
        call(
            "SignalProcess",
            self.client.signal_process(self.ctx(), &req).await,
        )
    }

    /// WaitProcess: blocks until the process exits.
    pub async fn wait_process(
        &self,
        container_id: &str,
        exec_id: &str,
    ) -> Result<WaitProcessResponse> {
        let req = WaitProcessRequest {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        self.client
            .wait_process(Self::unbounded(), &req)
            .await
            .map_err(|source| Error::Call {
                call: "WaitProcess",
                source,
            })
    }

    /// RemoveProcess: the agent forgets an exec that has exited (closes its pidfd and
    /// stdio, frees its id); its stream calls still in flight end with NOT_FOUND.
    pub async fn remove_process(&self, container_id: &str, exec_id: &str) -> Result<()> {
        let req = RemoveProcessRequest {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        call(
            "RemoveProcess",
            self.client.remove_process(self.ctx(), &req).await,
        )
    }

    /// ReadStdout or ReadStderr: at most `len` bytes, blocking until one is there; empty at
    /// the end of the stream.
    pub async fn read_stream(
        &self,
        stream: OutputStream,
        container_id: &str,
        exec_id: &str,
        len: u32,
    ) -> Result<Vec<u8>> {
        let req = ReadStreamRequest {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
            len,
            ..Default::default()
        };
        let (name, answer) = match stream {
            OutputStream::Stdout => (
                "ReadStdout",
                self.client.read_stdout(Self::unbounded(), &req).await,
            ),
            OutputStream::Stderr => (
                "ReadStderr",
                self.client.read_stderr(Self::unbounded(), &req).await,
            ),
        };
        answer
            .map(|r| r.data)
            .map_err(|source| Error::Call { call: name, source })
    }

    /// WriteStdin: writes all of `data`; answers how much the agent took.
    pub async fn write_stdin(
        &self,
        container_id: &str,
        exec_id: &str,
        data: Vec<u8>,
    ) -> Result<u32> {
        let req = WriteStreamRequest {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
            data,
            ..Default::default()
        };
        self.client
            .write_stdin(Self::unbounded(), &req)
            .await
            .map(|r| r.len)
            .map_err(|source| Error::Call {
                call: "WriteStdin",
                source,
            })
    }

    /// CloseStdin: the program reads end of file.
    pub async fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<()> {
        let req = CloseStdinRequest {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        call(
            "CloseStdin",
            self.client.close_stdin(self.ctx(), &req).await,
        )
    }

    /// TtyWinResize.
    pub async fn tty_win_resize(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u32,
        columns: u32,
    ) -> Result<()> {
        let req = TtyWinResizeRequest {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
            rows,
            columns,
            ..Default::default()
        };
        call(
            "TtyWinResize",
            self.client.tty_win_resize(self.ctx(), &req).await,
        )
    }

    /// PauseContainer (cgroup freezer).
    pub async fn pause_container(&self, container_id: &str) -> Result<()> {
        let req = PauseContainerRequest {
            container_id: container_id.to_owned(),
            ..Default::default()
        };
        call(
            "PauseContainer",
            self.client.pause_container(self.ctx(), &req).await,
        )
    }

    /// ResumeContainer.
    pub async fn resume_container(&self, container_id: &str) -> Result<()> {
        let req = ResumeContainerRequest {
            container_id: container_id.to_owned(),
            ..Default::default()
        };
        call(
            "ResumeContainer",
            self.client.resume_container(self.ctx(), &req).await,
        )
    }

    /// StatsContainer: the container's cgroup statistics.
    pub async fn stats_container(&self, container_id: &str) -> Result<StatsContainerResponse> {
        let req = StatsContainerRequest {
            container_id: container_id.to_owned(),
            ..Default::default()
        };
        self.client
            .stats_container(self.ctx(), &req)
            .await
            .map_err(|source| Error::Call {
                call: "StatsContainer",
                source,
            })
    }

    /// UpdateContainer: `resources_json` is an OCI LinuxResources.
    pub async fn update_container(
        &self,
        container_id: &str,
        resources_json: Vec<u8>,
    ) -> Result<()> {
        let req = UpdateContainerRequest {
            container_id: container_id.to_owned(),
            resources_json,
            ..Default::default()
        };
        call(
            "UpdateContainer",
            self.client.update_container(self.ctx(), &req).await,
        )
    }

    /// ListProcesses: every process of the container.
    pub async fn list_processes(&self, container_id: &str) -> Result<Vec<ProcessInfo>> {
        let req = ListProcessesRequest {
            container_id: container_id.to_owned(),
            ..Default::default()
        };
        self.client
            .list_processes(self.ctx(), &req)
            .await
            .map(|r| r.processes)
            .map_err(|source| Error::Call {
                call: "ListProcesses",
                source,
            })
    }

    /// RemoveContainer: kills what is left after `timeout_secs` and forgets the container.
    pub async fn remove_container(&self, container_id: &str, timeout_secs: u32) -> Result<()> {
        let req = RemoveContainerRequest {
            container_id: container_id.to_owned(),
            timeout_secs,
            ..Default::default()
        };
        call(
            "RemoveContainer",
            self.client.remove_container(self.ctx(), &req).await,
        )
    }

    /// GetOOMEvent: blocks until a container of the sandbox is OOM-killed; answers its id.
    pub async fn get_oom_event(&self) -> Result<String> {
        self.client
            .get_oom_event(Self::unbounded(), &GetOOMEventRequest::new())
            .await
            .map(|event| event.container_id)
            .map_err(|source| Error::Call {
                call: "GetOOMEvent",
                source,
            })
    }

    /// DestroySandbox: the agent removes every container and exits (or powers the VM off).
    pub async fn destroy_sandbox(&self) -> Result<()> {
        call(
            "DestroySandbox",
            self.client
                .destroy_sandbox(self.ctx(), &DestroySandboxRequest::new())
                .await,
        )
    }

    /// GetMetrics: the agent's and the guest's figures, in the Prometheus text format.
    pub async fn get_metrics(&self) -> Result<String> {
        self.client
            .get_metrics(self.ctx(), &GetMetricsRequest::new())
            .await
            .map(|metrics| metrics.metrics)
            .map_err(|source| Error::Call {
                call: "GetMetrics",
                source,
            })
    }

    /// The generated client, for calls this type does not wrap yet.
    pub fn client(&self) -> &AgentServiceClient {
        &self.client
    }
}
