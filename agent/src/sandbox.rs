//! CreateSandbox: what the whole sandbox shares, set up once before its containers: the
//! guest's host name and resolv.conf, and the sandbox's storages (unmounted by
//! DestroySandbox, after its containers are removed).
//!
//! On a host (`--listen`) the agent never changes the machine it runs on: the host name and
//! DNS lines are not applied there (the storages are mounted, as a container's are).

use std::path::PathBuf;

use hull_agent_protocol::agent::CreateSandboxRequest;
use tokio::sync::Mutex;

use crate::container::{storage, Failure};
use crate::container_request::storage_requests;
use crate::Mode;

/// The sandbox's state.
#[derive(Debug, Default)]
pub struct Sandbox {
    /// `None` until CreateSandbox; then the storages it mounted. Held while they are mounted
    /// (a BLOCK disk may take a while to appear), so two CreateSandbox cannot both mount.
    mounts: Mutex<Option<Vec<PathBuf>>>,
}

impl Sandbox {
    /// CreateSandbox.
    pub async fn create(&self, mode: Mode, request: &CreateSandboxRequest) -> Result<(), Failure> {
        if !request.kernel_modules.is_empty() {
            return Err(Failure::Unimplemented(
                "kernel_modules: loading kernel modules is not implemented by this agent".into(),
            ));
        }
        if request.sandbox_pidns {
            return Err(Failure::Unimplemented(
                "sandbox_pidns: a PID namespace shared by the containers is not implemented \
                 by this agent"
                    .into(),
            ));
        }
        if let Some(bad) = request.dns.iter().find(|line| line.contains('\n')) {
            return Err(Failure::InvalidArgument(format!(
                "dns: {bad:?} is more than one line"
            )));
        }
        let storages = storage_requests(&request.storages)
            .map_err(|err| Failure::InvalidArgument(err.to_string()))?;
        let mut mounts = self.mounts.lock().await;
        if mounts.is_some() {
            return Err(Failure::FailedPrecondition(
                "the sandbox exists already".into(),
            ));
        }
        let mounted = storage::mount_all(&storages).await.map_err(Failure::from)?;
        if mode == Mode::Guest {
            if let Err(err) = set_up_guest(request) {
                storage::unmount_all(&mounted);
                return Err(err);
            }
        } else {
            tracing::debug!("on a host the sandbox's host name and DNS are not applied");
        }
        *mounts = Some(mounted);
        tracing::info!(sandbox = %request.sandbox_id, "sandbox created");
        Ok(())
    }

    /// Unmounts the sandbox's storages (DestroySandbox, after the containers are removed).
    pub async fn destroy(&self) {
        let mounts = self.mounts.lock().await.take();
        if let Some(mounts) = mounts {
            storage::unmount_all(&mounts);
        }
    }
}

fn set_up_guest(request: &CreateSandboxRequest) -> Result<(), Failure> {
    if !request.hostname.is_empty() {
        nix::unistd::sethostname(&request.hostname).map_err(|err| {
            Failure::InvalidArgument(format!("hostname {:?}: {err}", request.hostname))
        })?;
    }
    if !request.dns.is_empty() {
        let mut text = request.dns.join("\n");
        text.push('\n');
        std::fs::write("/etc/resolv.conf", text)
            .map_err(|err| Failure::Internal(format!("writing /etc/resolv.conf: {err}")))?;
    }
    Ok(())
}
