//! The shim's connection to the guest agent: ttrpc over a hybrid-vsock stream to the agent's
//! vsock port, with a health check that says whether the agent serves.

use std::path::Path;
use std::time::Duration;

use hull_agent_protocol::agent::{
    CheckRequest, GuestDetailsRequest, GuestDetailsResponse, ServingStatus,
};
use hull_agent_protocol::ttrpc::context;
use hull_agent_protocol::ttrpc::r#async::transport::Socket;
use hull_agent_protocol::ttrpc::r#async::Client;
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
}

/// A `Result` with this module's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// A connected agent.
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

    fn ctx(&self) -> context::Context {
        context::with_timeout(i64::try_from(self.call_timeout.as_nanos()).unwrap_or(i64::MAX))
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

    /// The generated client, for calls this type does not wrap yet.
    pub fn client(&self) -> &AgentServiceClient {
        &self.client
    }
}
