//! Where the agent serves the protocol: vsock in the guest, a unix socket on a host (tests and
//! benchmarks, no VM). Owns parsing `--listen` and binding the listener; a unix socket left by
//! an agent that died is replaced, one in use is not.

use std::fmt;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use hull_agent_protocol::ttrpc::r#async::transport::Listener;

/// An address the agent listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `unix:PATH`: a unix socket on a host.
    Unix(PathBuf),
    /// `vsock:PORT`: a vsock port of the guest, for any CID.
    Vsock(u32),
}

/// Why an address could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address has neither form.
    #[error("listen address {0:?} is neither unix:PATH nor vsock:PORT")]
    Malformed(String),
    /// Another process serves on the socket.
    #[error("{} is in use by a running process; stop it or choose another path", .0.display())]
    InUse(PathBuf),
    /// The path exists and is not a socket: never removed.
    #[error("{} exists and is not a socket", .0.display())]
    NotASocket(PathBuf),
    /// Binding failed.
    #[error("binding {addr}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl FromStr for ListenAddr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let malformed = || Error::Malformed(s.to_owned());
        match s.split_once(':') {
            Some(("unix", path)) if !path.is_empty() => Ok(ListenAddr::Unix(PathBuf::from(path))),
            Some(("vsock", port)) => port.parse().map(ListenAddr::Vsock).map_err(|_| malformed()),
            _ => Err(malformed()),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            ListenAddr::Vsock(port) => write!(f, "vsock:{port}"),
        }
    }
}

impl ListenAddr {
    /// Binds the address, for the ttrpc server.
    pub fn bind(&self) -> Result<Listener, Error> {
        let bind_error = |source| Error::Bind {
            addr: self.to_string(),
            source,
        };
        match self {
            ListenAddr::Unix(path) => {
                remove_stale_socket(path)?;
                let listener = UnixListener::bind(path).map_err(bind_error)?;
                Listener::try_from(listener).map_err(bind_error)
            }
            ListenAddr::Vsock(port) => {
                let addr = format!("vsock://{}:{port}", libc::VMADDR_CID_ANY);
                Listener::bind(addr).map_err(bind_error)
            }
        }
    }
}

/// Removes a socket at `path` that nobody serves on any more.
pub(crate) fn remove_stale_socket(path: &Path) -> Result<(), Error> {
    let Ok(metadata) = path.symlink_metadata() else {
        return Ok(());
    };
    if !metadata.file_type().is_socket() {
        return Err(Error::NotASocket(path.to_owned()));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(Error::InUse(path.to_owned()));
    }
    std::fs::remove_file(path).map_err(|source| Error::Bind {
        addr: format!("unix:{}", path.display()),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unix_and_vsock_addresses() {
        assert_eq!(
            "unix:/run/hull/agent.sock".parse::<ListenAddr>().ok(),
            Some(ListenAddr::Unix("/run/hull/agent.sock".into()))
        );
        assert_eq!(
            "vsock:1024".parse::<ListenAddr>().ok(),
            Some(ListenAddr::Vsock(1024))
        );
        for bad in [
            "",
            "unix:",
            "vsock:",
            "vsock:-1",
            "vsock:99999999999",
            "tcp:1.2.3.4:5",
            "/x",
        ] {
            assert!(
                matches!(bad.parse::<ListenAddr>(), Err(Error::Malformed(_))),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn replaces_a_dead_socket_but_not_a_live_one_or_a_file() {
        let dir = std::env::temp_dir().join(format!("hull-agent-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating a temp dir");
        struct RemoveDir(PathBuf);
        impl Drop for RemoveDir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _cleanup = RemoveDir(dir.clone());

        let sock = dir.join("agent.sock");
        let live = UnixListener::bind(&sock).expect("binding a socket");
        assert!(matches!(remove_stale_socket(&sock), Err(Error::InUse(_))));
        drop(live); // the file stays, nobody listens: stale
        remove_stale_socket(&sock).expect("a dead socket is removed");
        assert!(!sock.exists());

        let file = dir.join("file");
        std::fs::write(&file, b"keep me").expect("writing a file");
        assert!(matches!(
            remove_stale_socket(&file),
            Err(Error::NotASocket(_))
        ));
        assert!(file.exists());
    }
}
