//! The shim process as containerd drives it: `start` forks the serving shim (one per pod:
//! containers of the same sandbox share it), `delete` cleans up after a shim that is gone,
//! and the serving shim runs until its Task service says to exit.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, Error, Flags, StartOpts};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;

use super::task::TaskService;
use crate::sandbox::persist::SandboxRecord;

/// The annotation CRI puts on every container of a pod, naming the pod's sandbox.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// The file in a bundle that records what the sandbox owns on the host.
pub const RECORD_FILE: &str = "hull-sandbox.json";

/// The shim process.
pub struct HullShim {
    id: String,
    namespace: String,
    bundle: PathBuf,
    /// containerd's address, as the shim was given it.
    containerd_address: String,
    /// The socket this shim serves on (`unix://...`); empty for `start` and `delete`.
    socket: String,
    exit: Arc<ExitSignal>,
}

#[async_trait]
impl Shim for HullShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        Self {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            bundle,
            containerd_address: args.address.clone(),
            socket: args.socket.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        start_daemon(opts, &self.bundle, Vec::new()).await
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let record_path = self.bundle.join(RECORD_FILE);
        match SandboxRecord::load(&record_path) {
            Ok(record) => {
                let report = record.cleanup();
                tracing::info!(id = %self.id, namespace = %self.namespace, ?report, "cleaned up after the shim");
                for error in &report.errors {
                    tracing::error!(id = %self.id, "cleanup: {error}");
                }
                if let Err(err) = std::fs::remove_file(&record_path) {
                    tracing::warn!(path = %record_path.display(), %err, "removing the sandbox record");
                }
            }
            Err(crate::sandbox::persist::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => tracing::error!(id = %self.id, %err, "reading the sandbox record"),
        }
        // The shim that served this container is gone: its socket must not outlive it.
        let grouping = sandbox_grouping(&self.bundle, &self.id);
        let address =
            containerd_shim::socket_address(&self.containerd_address, &self.namespace, &grouping);
        remove_dead_socket(socket_path(&address));
        let mut response = DeleteResponse::new();
        // As runc's shim: a task whose shim is gone was killed.
        response.set_exit_status(128 + libc::SIGKILL as u32);
        response.set_exited_at(Timestamp::now());
        Ok(response)
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
        // containerd 1.6 removes the bundle (where containerd-shim looks for the address
        // file) before the shim gets here, so the shim unlinks its own socket. The listener
        // stays open until the server shuts down; only its name goes.
        if let Err(err) = std::fs::remove_file(socket_path(&self.socket)) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(socket = %self.socket, %err, "removing the shim socket");
            }
        }
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        TaskService::new(Arc::clone(&self.exit), publisher, &self.namespace)
    }
}

/// Starts the serving shim of the pod that container `opts.id` (bundle `bundle`) belongs to,
/// with `env` added to its environment, or finds it serving already; returns its address.
pub async fn start_daemon(
    opts: StartOpts,
    bundle: &Path,
    env: Vec<(&str, &str)>,
) -> Result<String, Error> {
    let grouping = sandbox_grouping(bundle, &opts.id);
    tracing::info!(id = %opts.id, sandbox = %grouping, "starting the shim");
    let address = spawn(opts, &grouping, env).await?;
    write_address(bundle, &address)?;
    Ok(address)
}

/// The file in a bundle naming the address of the shim that serves it.
pub const ADDRESS_FILE: &str = "address";

/// Writes the shim's `address` into the bundle, where containerd 1.x looks when it restarts
/// and reconnects to the shims it had (containerd-shim writes it only when a pod's shim is
/// reused, as runc's shim writes it itself after spawning). Written whole or not at all.
fn write_address(bundle: &Path, address: &str) -> Result<(), Error> {
    let path = bundle.join(ADDRESS_FILE);
    let partial = bundle.join(format!(".{ADDRESS_FILE}.partial"));
    std::fs::write(&partial, address)
        .and_then(|()| std::fs::rename(&partial, &path))
        .map_err(|err| {
            let _ = std::fs::remove_file(&partial);
            Error::Other(format!("writing {}: {err}", path.display()))
        })
}

/// The file system path of a `unix://` shim address.
fn socket_path(address: &str) -> &Path {
    Path::new(address.strip_prefix("unix://").unwrap_or(address))
}

/// Removes a shim socket that nothing listens on any more (connecting is refused); leaves a
/// live one alone, since other containers of the pod may still use that shim.
fn remove_dead_socket(path: &Path) {
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => tracing::debug!(socket = %path.display(), "shim socket still served; kept"),
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
            if let Err(err) = std::fs::remove_file(path) {
                tracing::warn!(socket = %path.display(), %err, "removing a dead shim socket");
            }
        }
        Err(_) => {}
    }
}

/// The shim a container belongs to: its pod's sandbox id from the bundle's OCI spec when CRI
/// set one, else its own id (a container run alone is its own pod).
pub fn sandbox_grouping(bundle: &Path, id: &str) -> String {
    let spec = std::fs::read(bundle.join("config.json")).ok();
    spec.and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|spec| {
            spec.get("annotations")?
                .get(SANDBOX_ID_ANNOTATION)?
                .as_str()
                .map(str::to_owned)
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_of_a_pod_share_the_sandbox_shim() {
        let bundle = tempfile::tempdir().unwrap();
        std::fs::write(
            bundle.path().join("config.json"),
            r#"{"annotations": {"io.kubernetes.cri.sandbox-id": "pod-abc"}}"#,
        )
        .unwrap();
        assert_eq!(sandbox_grouping(bundle.path(), "container-1"), "pod-abc");
    }

    #[test]
    fn only_dead_sockets_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live");
        let _listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
        remove_dead_socket(&live);
        assert!(live.exists(), "a served socket must stay");
        let dead = dir.path().join("dead");
        drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
        remove_dead_socket(&dead);
        assert!(!dead.exists(), "a socket nobody serves must go");
        assert_eq!(
            socket_path("unix:///run/containerd/s/ab"),
            Path::new("/run/containerd/s/ab")
        );
    }

    #[test]
    fn a_container_without_a_pod_is_its_own_sandbox() {
        let bundle = tempfile::tempdir().unwrap();
        assert_eq!(
            sandbox_grouping(bundle.path(), "c1"),
            "c1",
            "no config.json"
        );
        std::fs::write(bundle.path().join("config.json"), "{not json").unwrap();
        assert_eq!(
            sandbox_grouping(bundle.path(), "c1"),
            "c1",
            "malformed spec"
        );
        std::fs::write(bundle.path().join("config.json"), r#"{"annotations": {}}"#).unwrap();
        assert_eq!(sandbox_grouping(bundle.path(), "c1"), "c1", "no annotation");
    }
}
