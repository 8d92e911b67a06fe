//! containerd's Task service for one hull shim.
//!
//! Every call is answered explicitly: the generated defaults answer NOT_FOUND for calls a
//! shim does not implement, which containerd misreads as "no such task", so each call here
//! either works, answers NOT_FOUND for a container that does not exist, or answers
//! UNIMPLEMENTED saying what is missing.
//!
//! Creating containers waits for the sandbox manager (VM, backends, agent): `Create` answers
//! UNIMPLEMENTED until then, so no container ever exists in this shim yet, and every call that
//! names one answers NOT_FOUND.

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::api::{self, Empty};
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{TtrpcContext, TtrpcResult};

use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::{get_status, Code, Error as TtrpcError};

/// The Task service.
pub struct TaskService {
    exit: Arc<ExitSignal>,
    // Kept for the events Create, Start and Exit will publish.
    _publisher: RemotePublisher,
    namespace: String,
}

impl TaskService {
    /// A service that signals `exit` when containerd shuts the shim down.
    pub fn new(exit: Arc<ExitSignal>, publisher: RemotePublisher, namespace: &str) -> Self {
        Self {
            exit,
            _publisher: publisher,
            namespace: namespace.to_owned(),
        }
    }

    fn not_found(&self, id: &str) -> TtrpcError {
        status(
            Code::NOT_FOUND,
            format!(
                "container {id} not found in namespace {} of this hull shim",
                self.namespace
            ),
        )
    }
}

fn status(code: Code, message: String) -> TtrpcError {
    TtrpcError::RpcStatus(get_status(code, message))
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        tracing::error!(id = %req.id, bundle = %req.bundle, "create refused: the sandbox manager is not built yet");
        Err(status(
            Code::UNIMPLEMENTED,
            format!(
                "hull cannot create container {} yet: this build of containerd-shim-hull-v2 has \
                 no sandbox manager (VM, device backends and agent are wired in a later release)",
                req.id
            ),
        ))
    }

    async fn state(
        &self,
        _: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        Err(self.not_found(&req.id))
    }

    async fn start(
        &self,
        _: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        Err(self.not_found(&req.id))
    }

    async fn delete(
        &self,
        _: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        Err(self.not_found(&req.id))
    }

    async fn pids(
        &self,
        _: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        Err(self.not_found(&req.id))
    }

    async fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<Empty> {
        Err(self.not_found(&req.id))
    }

    async fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<Empty> {
        Err(self.not_found(&req.id))
    }

    async fn checkpoint(
        &self,
        _: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        Err(status(
            Code::UNIMPLEMENTED,
            format!("hull does not checkpoint containers (asked for {})", req.id),
        ))
    }

    async fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<Empty> {
        Err(self.not_found(&req.id))
    }

    async fn exec(&self, _: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        Err(self.not_found(&req.id))
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<Empty> {
        Err(self.not_found(&req.id))
    }

    async fn close_io(&self, _: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<Empty> {
        Err(self.not_found(&req.id))
    }

    async fn update(&self, _: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<Empty> {
        Err(self.not_found(&req.id))
    }

    async fn wait(
        &self,
        _: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        Err(self.not_found(&req.id))
    }

    async fn stats(
        &self,
        _: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        Err(self.not_found(&req.id))
    }

    async fn connect(
        &self,
        _: &TtrpcContext,
        _: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _: &TtrpcContext, _: api::ShutdownRequest) -> TtrpcResult<Empty> {
        // No container can exist yet, so there is nothing to wait for.
        tracing::info!("shutdown requested: exiting");
        self.exit.signal();
        Ok(Empty::new())
    }
}
