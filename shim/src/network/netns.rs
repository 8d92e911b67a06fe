//! Doing work inside a network namespace without moving the shim there.
//!
//! A network namespace belongs to a thread, not a process, so [`run_in`] starts a thread,
//! enters the namespace on it, runs the work and ends the thread: the shim's own threads never
//! change namespace, and nothing can leak the namespace into later work. Netlink sockets and
//! tap devices opened on that thread belong to the namespace and keep belonging to it after
//! the thread ends.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::{Error, Result};

/// Runs `work` on a fresh thread that has entered the network namespace at `path` (a
/// `/proc/PID/ns/net` file or a bind mount of one, such as `/var/run/netns/NAME`), and returns
/// its result. Blocks the caller until the work is done: call it from a blocking context.
pub fn run_in<T, F>(path: &Path, work: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send,
    T: Send,
{
    let netns = File::open(path).map_err(|source| Error::OpenNetns {
        path: path.to_owned(),
        source,
    })?;
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("hull-netns".into())
            .spawn_scoped(scope, move || {
                // SAFETY: setns(2) on a valid open fd only changes this thread's network
                // namespace; CLONE_NEWNET makes the kernel check that the fd is one.
                let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(Error::EnterNetns {
                        path: path.to_owned(),
                        source: std::io::Error::last_os_error(),
                    });
                }
                work()
            })
            .map_err(|_| Error::NetnsThread {
                path: path.to_owned(),
                what: "could not be started",
            })?;
        worker.join().map_err(|_| Error::NetnsThread {
            path: path.to_owned(),
            what: "panicked",
        })?
    })
}

/// Runs `work` with a netlink handle to the calling thread's network namespace, on a
/// current-thread runtime of its own (rtnetlink is asynchronous; the work is a handful of
/// requests, so a small runtime on the namespace's thread is simpler than shipping requests to
/// the shim's event loop).
pub(crate) fn with_netlink<T>(work: impl AsyncFnOnce(rtnetlink::Handle) -> Result<T>) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(Error::NetlinkSocket)?;
    runtime.block_on(async {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(Error::NetlinkSocket)?;
        let connection = tokio::spawn(connection);
        let result = work(handle).await;
        connection.abort();
        result
    })
}
