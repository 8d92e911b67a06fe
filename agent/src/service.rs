//! The agent's side of `hull.agent.v1.AgentService`: one [`Agent`] answers every call.
//!
//! Served for real: Check, GetGuestDetails, GetMetrics, SetGuestDateTime, CopyFile. CreateContainer checks its
//! request completely (id, OCI spec, storages), answering INVALID_ARGUMENT precisely, and then
//! UNIMPLEMENTED: running containers is the next step. Every other call answers UNIMPLEMENTED
//! naming itself; none fakes a success.
//!
//! Containers will run through youki's `libcontainer` (0.7) if the following holds up; what
//! was found so far:
//! - Dependencies: its default features pull libseccomp (a C library the static agent would
//!   have to link) and systemd's D-Bus client. With `default-features = false,
//!   features = ["v2"]` the set is pure Rust (about 90 crates, rust-criu and its protobuf
//!   included unconditionally), so the static link should hold; it is not measured yet.
//! - Process model: `build()` forks an intermediate process and waits for it with a blocking
//!   `waitpid(intermediate_pid)`. The agent's SIGCHLD reaper reaps with `waitpid(-1)` and
//!   could take that status first, failing the create with ECHILD. Kata's agent has the same
//!   race with its own reaper and serialises fork and reap behind one lock; hull must either
//!   do the same or make the reaper peek (`waitid(WNOWAIT)`) and leave PIDs that a
//!   synchronous waiter owns. `build()` also blocks, so it runs on a blocking thread.
//! - State: it keeps a state directory per container (runc's layout), which the agent would
//!   put on a tmpfs under /run.

use std::path::PathBuf;
use std::time::Instant;

use hull_agent_protocol::agent::*;
use hull_agent_protocol::ttrpc::r#async::TtrpcContext;
use hull_agent_protocol::ttrpc::{self};
use hull_agent_protocol::types::{Interface, Interfaces, Routes};
use hull_agent_protocol::{AgentService, Call, SERVICE_NAME};
use nix::sys::time::TimeSpec;
use nix::time::{clock_settime, ClockId};

use crate::container_request::ContainerRequest;
use crate::copy_file::{self, copy_chunk};
use crate::metrics::Snapshot;
use crate::network::{self, NetError};
use crate::rpc_error;
use crate::{guest_details, Mode};

/// Nanoseconds in a second.
const NANOS_PER_SEC: u32 = 1_000_000_000;

/// The agent's service state.
#[derive(Debug)]
pub struct Agent {
    mode: Mode,
    started: Instant,
    shared_dir: Option<PathBuf>,
}

impl Agent {
    /// An agent serving in `mode`, writing CopyFile's files under `shared_dir`.
    pub fn new(mode: Mode, shared_dir: Option<PathBuf>) -> Self {
        Agent {
            mode,
            started: Instant::now(),
            shared_dir,
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
        let request = ContainerRequest::try_from(req)
            .map_err(|err| rpc_error::invalid_argument(Call::CreateContainer, err))?;
        tracing::debug!(
            container = request.id.as_str(),
            "well-formed CreateContainer"
        );
        Err(rpc_error::unimplemented(Call::CreateContainer))
    }

    async fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        _req: CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        Err(rpc_error::unimplemented(Call::CreateSandbox))
    }

    async fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        _req: DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        Err(rpc_error::unimplemented(Call::DestroySandbox))
    }

    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        _req: StartContainerRequest,
    ) -> ttrpc::Result<Empty> {
        Err(rpc_error::unimplemented(Call::StartContainer))
    }

    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        _req: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        Err(rpc_error::unimplemented(Call::RemoveContainer))
    }

    async fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        _req: PauseContainerRequest,
    ) -> ttrpc::Result<Empty> {
        Err(rpc_error::unimplemented(Call::PauseContainer))
    }

    async fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        _req: ResumeContainerRequest,
    ) -> ttrpc::Result<Empty> {
        Err(rpc_error::unimplemented(Call::ResumeContainer))
    }

    async fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        _req: StatsContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        Err(rpc_error::unimplemented(Call::StatsContainer))
    }

    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        _req: UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        Err(rpc_error::unimplemented(Call::UpdateContainer))
    }

    async fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        _req: ListProcessesRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        Err(rpc_error::unimplemented(Call::ListProcesses))
    }

    async fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        _req: ExecProcessRequest,
    ) -> ttrpc::Result<Empty> {
        Err(rpc_error::unimplemented(Call::ExecProcess))
    }

    async fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        _req: SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        Err(rpc_error::unimplemented(Call::SignalProcess))
    }

    async fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        _req: WaitProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        Err(rpc_error::unimplemented(Call::WaitProcess))
    }

    async fn write_stdin(
        &self,
        _ctx: &TtrpcContext,
        _req: WriteStreamRequest,
    ) -> ttrpc::Result<WriteStreamResponse> {
        Err(rpc_error::unimplemented(Call::WriteStdin))
    }

    async fn read_stdout(
        &self,
        _ctx: &TtrpcContext,
        _req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        Err(rpc_error::unimplemented(Call::ReadStdout))
    }

    async fn read_stderr(
        &self,
        _ctx: &TtrpcContext,
        _req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        Err(rpc_error::unimplemented(Call::ReadStderr))
    }

    async fn close_stdin(
        &self,
        _ctx: &TtrpcContext,
        _req: CloseStdinRequest,
    ) -> ttrpc::Result<Empty> {
        Err(rpc_error::unimplemented(Call::CloseStdin))
    }

    async fn tty_win_resize(
        &self,
        _ctx: &TtrpcContext,
        _req: TtyWinResizeRequest,
    ) -> ttrpc::Result<Empty> {
        Err(rpc_error::unimplemented(Call::TtyWinResize))
    }

    async fn get_oom_event(
        &self,
        _ctx: &TtrpcContext,
        _req: GetOOMEventRequest,
    ) -> ttrpc::Result<OOMEvent> {
        Err(rpc_error::unimplemented(Call::GetOOMEvent))
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
