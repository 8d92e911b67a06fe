//! The agent's side of `hull.agent.v1.AgentService`: one [`Agent`] answers every call.
//!
//! Served for real: Check, GetGuestDetails, GetMetrics, SetGuestDateTime, CopyFile, the
//! container calls (CreateContainer to RemoveContainer, the process and stdio calls,
//! DestroySandbox, GetOOMEvent), which [`crate::container`] carries out, CreateSandbox
//! ([`crate::sandbox`]), and the network calls over rtnetlink ([`crate::network`]; an agent
//! on a host refuses to change the host's own network namespace). This module maps their
//! requests in and their failures to ttrpc codes; what is not supported (CreateContainer's
//! `devices`) answers UNIMPLEMENTED naming itself, and nothing fakes a success.
//!
//! Process model: youki's libcontainer runs in a helper process (see
//! [`crate::container::helper`] for why not on a thread of the agent), and the agent's one
//! [`Reaper`] owns every wait(2), so PID 1's reaping never races libcontainer's own waits
//! (see [`crate::reaper`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hull_agent_protocol::agent::*;
use hull_agent_protocol::ttrpc::r#async::TtrpcContext;
use hull_agent_protocol::ttrpc::{self};
use hull_agent_protocol::types::{Interface, Interfaces, Routes};
use hull_agent_protocol::{AgentService, Call, SERVICE_NAME};
use nix::sys::time::TimeSpec;
use nix::time::{clock_settime, ClockId};
use tokio::sync::Notify;

use crate::container::stdio::Stream;
use crate::container::{Containers, Failure, Layout};
use crate::container_request::ContainerRequest;
use crate::copy_file::{self, copy_chunk};
use crate::metrics::Snapshot;
use crate::network::{self, NetError};
use crate::reaper::Reaper;
use crate::rpc_error;
use crate::sandbox::Sandbox;
use crate::{guest_details, Mode};

/// Nanoseconds in a second.
const NANOS_PER_SEC: u32 = 1_000_000_000;

/// The agent's service state.
#[derive(Debug)]
pub struct Agent {
    mode: Mode,
    started: Instant,
    shared_dir: Option<PathBuf>,
    reaper: Arc<Reaper>,
    containers: Containers,
    sandbox: Sandbox,
    shutdown: Arc<Notify>,
    /// Where its container files are: on a host, removed by DestroySandbox (see there).
    state_dir: PathBuf,
}

impl Agent {
    /// An agent serving in `mode`, writing CopyFile's files under `shared_dir` and keeping
    /// its container files under `state_dir`; `no_pivot` as [`Containers::new`] says.
    pub fn new(
        mode: Mode,
        shared_dir: Option<PathBuf>,
        state_dir: PathBuf,
        no_pivot: bool,
    ) -> Self {
        let reaper = Reaper::new();
        Agent {
            mode,
            started: Instant::now(),
            shared_dir,
            containers: Containers::new(
                Arc::clone(&reaper),
                Layout::new(state_dir.clone()),
                no_pivot,
            ),
            reaper,
            sandbox: Sandbox::default(),
            shutdown: Arc::new(Notify::new()),
            state_dir,
        }
    }

    /// Where it serves.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Network calls change the namespace the agent runs in: in a guest that is the guest's;
    /// on a host it must be a namespace of its own, never the host's.
    fn network_allowed(&self, call: Call) -> ttrpc::Result<()> {
        if self.mode == Mode::Host {
            network::refuse_host_namespace().map_err(|e| network_error(call, e))?;
        }
        Ok(())
    }

    /// The reaper the event loop must run ([`Reaper::run`]).
    pub fn reaper(&self) -> Arc<Reaper> {
        Arc::clone(&self.reaper)
    }

    /// Notified when DestroySandbox has been handled: the agent stops serving (on a host it
    /// exits; in a guest the VM powers off).
    pub fn shutdown_signal(&self) -> Arc<Notify> {
        Arc::clone(&self.shutdown)
    }

    /// Removes every container and unmounts the sandbox's storages, as DestroySandbox does
    /// (for an agent told to stop).
    pub async fn remove_all_containers(&self) -> Result<(), Failure> {
        let result = self.containers.remove_all().await;
        self.sandbox.destroy().await;
        // On a host, the state directory goes here, before DestroySandbox answers: the shim
        // kills the agent 50 ms after the answer (a pending GetOOMEvent may hold the agent's
        // exit for longer), too early for the removal on exit, which left one /run/hull-agent-<pid> per pod (found by
        // `hull-bench soak`). Kept when a container could not be removed: its files are there.
        if self.mode == Mode::Host && result.is_ok() {
            if let Err(err) = std::fs::remove_dir_all(&self.state_dir) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("removing {}: {err}", self.state_dir.display());
                }
            }
        }
        result
    }

    async fn read(
        &self,
        call: Call,
        stream: Stream,
        req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        let data = self
            .containers
            .read(&req.container_id, &req.exec_id, stream, req.len)
            .await
            .map_err(|err| failure(call, err))?;
        let mut response = ReadStreamResponse::new();
        response.data = data;
        Ok(response)
    }
}

/// The ttrpc status of a failed container call.
fn failure(call: Call, failure: Failure) -> ttrpc::Error {
    match failure {
        Failure::InvalidArgument(m) => rpc_error::invalid_argument(call, m),
        Failure::NotFound(m) => rpc_error::not_found(call, m),
        Failure::AlreadyExists(m) => rpc_error::already_exists(call, m),
        Failure::FailedPrecondition(m) => rpc_error::failed_precondition(call, m),
        Failure::Unimplemented(m) => rpc_error::unimplemented_feature(call, m),
        Failure::DeadlineExceeded(m) => rpc_error::deadline_exceeded(call, m),
        Failure::Internal(m) => rpc_error::internal(call, m),
    }
}

#[async_trait::async_trait]
impl AgentService for Agent {
    async fn check(&self, _ctx: &TtrpcContext, req: CheckRequest) -> ttrpc::Result<CheckResponse> {
        if !req.service.is_empty() && req.service != SERVICE_NAME {
            return Err(rpc_error::not_found(
                Call::Check,
                format!(
                    "no service {:?} here; this agent serves {SERVICE_NAME}",
                    req.service
                ),
            ));
        }
        let mut response = CheckResponse::new();
        response.status = ServingStatus::SERVING_STATUS_SERVING.into();
        Ok(response)
    }

    async fn get_guest_details(
        &self,
        _ctx: &TtrpcContext,
        _req: GuestDetailsRequest,
    ) -> ttrpc::Result<GuestDetailsResponse> {
        Ok(guest_details::gather())
    }

    async fn set_guest_date_time(
        &self,
        _ctx: &TtrpcContext,
        req: SetGuestDateTimeRequest,
    ) -> ttrpc::Result<Empty> {
        let call = Call::SetGuestDateTime;
        if req.seconds < 0 {
            return Err(rpc_error::invalid_argument(
                call,
                format!("seconds {} is before the Unix epoch", req.seconds),
            ));
        }
        if req.nanos >= NANOS_PER_SEC {
            return Err(rpc_error::invalid_argument(
                call,
                format!("nanos {} is not below 1000000000", req.nanos),
            ));
        }
        if self.mode == Mode::Host {
            return Err(rpc_error::failed_precondition(
                call,
                "refused on a host: the agent sets the clock of a guest, never of the host it \
                 runs on for tests",
            ));
        }
        let time = TimeSpec::new(req.seconds, i64::from(req.nanos));
        clock_settime(ClockId::CLOCK_REALTIME, time)
            .map_err(|err| rpc_error::internal(call, format!("clock_settime: {err}")))?;
        tracing::info!(seconds = req.seconds, "guest clock set");
        Ok(Empty::new())
    }

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let call = Call::CreateContainer;
        if !req.devices.is_empty() {
            return Err(rpc_error::unimplemented_feature(
                call,
                "devices are not implemented by this agent",
            ));
        }
        let request = ContainerRequest::try_from(req)
            .map_err(|err| rpc_error::invalid_argument(call, err))?;
        self.containers
            .create(request)
            .await
            .map_err(|err| failure(call, err))?;
        Ok(Empty::new())
    }

    async fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        self.sandbox
            .create(self.mode, &req)
            .await
            .map_err(|err| failure(Call::CreateSandbox, err))?;
        Ok(Empty::new())
    }

    async fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        _req: DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        let result = self.remove_all_containers().await;
        // Stop after answering, even if a container could not be removed: the sandbox is
        // going away, and as PID 1 the VM's end cleans up the rest.
        self.shutdown.notify_one();
        result.map_err(|err| failure(Call::DestroySandbox, err))?;
        Ok(Empty::new())
    }

    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: StartContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.containers
            .start(&req.container_id)
            .await
            .map_err(|err| failure(Call::StartContainer, err))?;
        Ok(Empty::new())
    }

    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let timeout =
            (req.timeout_secs > 0).then(|| Duration::from_secs(u64::from(req.timeout_secs)));
        self.containers
            .remove(&req.container_id, timeout)
            .await
            .map_err(|err| failure(Call::RemoveContainer, err))?;
        Ok(Empty::new())
    }

    async fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        req: PauseContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.containers
            .pause(&req.container_id, true)
            .await
            .map_err(|err| failure(Call::PauseContainer, err))?;
        Ok(Empty::new())
    }

    async fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        req: ResumeContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.containers
            .pause(&req.container_id, false)
            .await
            .map_err(|err| failure(Call::ResumeContainer, err))?;
        Ok(Empty::new())
    }

    async fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: StatsContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        let stats = self
            .containers
            .stats(&req.container_id)
            .await
            .map_err(|err| failure(Call::StatsContainer, err))?;
        let mut response = StatsContainerResponse::new();
        response.cgroup_stats = Some(stats).into();
        Ok(response)
    }

    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.containers
            .update(&req.container_id, &req.resources_json)
            .await
            .map_err(|err| failure(Call::UpdateContainer, err))?;
        Ok(Empty::new())
    }

    async fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: ListProcessesRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        let processes = self
            .containers
            .list(&req.container_id)
            .await
            .map_err(|err| failure(Call::ListProcesses, err))?;
        let mut response = ListProcessesResponse::new();
        response.processes = processes
            .into_iter()
            .map(|(pid, exec_id)| {
                let mut info = ProcessInfo::new();
                info.pid = pid;
                info.exec_id = exec_id;
                info
            })
            .collect();
        Ok(response)
    }

    async fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> ttrpc::Result<Empty> {
        self.containers
            .exec(&req.container_id, &req.exec_id, &req.process_json)
            .await
            .map_err(|err| failure(Call::ExecProcess, err))?;
        Ok(Empty::new())
    }

    async fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        self.containers
            .signal(&req.container_id, &req.exec_id, req.signal, req.all)
            .await
            .map_err(|err| failure(Call::SignalProcess, err))?;
        Ok(Empty::new())
    }

    async fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: WaitProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        let exit = self
            .containers
            .wait(&req.container_id, &req.exec_id)
            .await
            .map_err(|err| failure(Call::WaitProcess, err))?;
        let mut response = WaitProcessResponse::new();
        response.exit_status = exit.status;
        response.exit_code = exit.code;
        response.signal = exit.signal;
        response.core_dumped = exit.core_dumped;
        Ok(response)
    }

    async fn remove_process(
        &self,
        _ctx: &TtrpcContext,
        req: RemoveProcessRequest,
    ) -> ttrpc::Result<Empty> {
        self.containers
            .remove_process(&req.container_id, &req.exec_id)
            .map_err(|err| failure(Call::RemoveProcess, err))?;
        Ok(Empty::new())
    }

    async fn write_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: WriteStreamRequest,
    ) -> ttrpc::Result<WriteStreamResponse> {
        let call = Call::WriteStdin;
        let len = u32::try_from(req.data.len())
            .map_err(|_| rpc_error::invalid_argument(call, "data is too long"))?;
        self.containers
            .write(&req.container_id, &req.exec_id, &req.data)
            .await
            .map_err(|err| failure(call, err))?;
        let mut response = WriteStreamResponse::new();
        response.len = len;
        Ok(response)
    }

    async fn read_stdout(
        &self,
        _ctx: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        self.read(Call::ReadStdout, Stream::Stdout, req).await
    }

    async fn read_stderr(
        &self,
        _ctx: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        self.read(Call::ReadStderr, Stream::Stderr, req).await
    }

    async fn close_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: CloseStdinRequest,
    ) -> ttrpc::Result<Empty> {
        self.containers
            .close_stdin(&req.container_id, &req.exec_id)
            .await
            .map_err(|err| failure(Call::CloseStdin, err))?;
        Ok(Empty::new())
    }

    async fn tty_win_resize(
        &self,
        _ctx: &TtrpcContext,
        req: TtyWinResizeRequest,
    ) -> ttrpc::Result<Empty> {
        self.containers
            .resize(&req.container_id, &req.exec_id, req.rows, req.columns)
            .map_err(|err| failure(Call::TtyWinResize, err))?;
        Ok(Empty::new())
    }

    async fn get_oom_event(
        &self,
        _ctx: &TtrpcContext,
        _req: GetOOMEventRequest,
    ) -> ttrpc::Result<OOMEvent> {
        let mut event = OOMEvent::new();
        event.container_id = self.containers.next_oom().await;
        Ok(event)
    }

    async fn update_interface(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateInterfaceRequest,
    ) -> ttrpc::Result<Interface> {
        let call = Call::UpdateInterface;
        self.network_allowed(call)?;
        let interface = req.interface.into_option().unwrap_or_default();
        network::update_interface(interface)
            .await
            .map_err(|e| network_error(call, e))
    }

    async fn update_routes(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateRoutesRequest,
    ) -> ttrpc::Result<Routes> {
        let call = Call::UpdateRoutes;
        self.network_allowed(call)?;
        let routes = req.routes.into_option().unwrap_or_default();
        network::update_routes(routes)
            .await
            .map_err(|e| network_error(call, e))
    }

    async fn list_interfaces(
        &self,
        _ctx: &TtrpcContext,
        _req: ListInterfacesRequest,
    ) -> ttrpc::Result<Interfaces> {
        let call = Call::ListInterfaces;
        network::list_interfaces()
            .await
            .map_err(|e| network_error(call, e))
    }

    async fn get_metrics(
        &self,
        _ctx: &TtrpcContext,
        _req: GetMetricsRequest,
    ) -> ttrpc::Result<Metrics> {
        let mut metrics = Metrics::new();
        metrics.metrics = Snapshot::read(self.started).to_prometheus();
        Ok(metrics)
    }

    async fn copy_file(&self, _ctx: &TtrpcContext, req: CopyFileRequest) -> ttrpc::Result<Empty> {
        let call = Call::CopyFile;
        let Some(root) = self.shared_dir.clone() else {
            return Err(rpc_error::failed_precondition(
                call,
                "this agent has no shared directory (on a host, start it with --shared-dir)",
            ));
        };
        let written = tokio::task::spawn_blocking(move || copy_chunk(&root, &req))
            .await
            .map_err(|err| rpc_error::internal(call, format!("the copy task failed: {err}")))?;
        match written {
            Ok(()) => Ok(Empty::new()),
            Err(err) if err.is_invalid_request() => Err(rpc_error::invalid_argument(call, err)),
            Err(err @ copy_file::Error::NotADirectory(_)) => {
                Err(rpc_error::failed_precondition(call, err))
            }
            Err(err) => Err(rpc_error::internal(
                call,
                format!("{:#}", anyhow::Error::new(err)),
            )),
        }
    }
}

/// The ttrpc status of a failed network call.
fn network_error(call: Call, error: NetError) -> ttrpc::Error {
    match error {
        NetError::Invalid { .. } => rpc_error::invalid_argument(call, error),
        NetError::NotFound(_) => rpc_error::not_found(call, error),
        NetError::HostNamespace => rpc_error::failed_precondition(call, error),
        NetError::Netlink { .. } | NetError::Socket(_) => rpc_error::internal(call, error),
    }
}
