//! The containerd runtime v2 side of the shim: the process model containerd drives
//! (`start`, `delete`, serve) in [`shim`], and the Task service in [`task`].
//!
//! Built on the `containerd-shim` crate, which owns the command line containerd 1.x and 2.x
//! use, daemonizing, the ttrpc server and event publishing. hull supplies what happens in each
//! call: [`task`] the Task service, [`options`] containerd's runtime options, [`metrics`]
//! containerd's view of a container's cgroup statistics.

pub mod metrics;
pub mod options;
pub mod shim;
pub mod task;

/// The runtime name containerd knows hull by.
pub const RUNTIME_ID: &str = "io.containerd.hull.v2";

/// Entry point of `containerd-shim-hull-v2`: runs the action containerd asked for.
pub async fn run() {
    let config = containerd_shim::Config {
        // hull's host children (QEMU, device backends) are tokio::process children that their
        // owners reap; a blanket waitpid(-1) reaper would steal their exit statuses. Container
        // processes live in the guest, so nothing re-parents to the shim: no sub-reaper.
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    containerd_shim::asynchronous::run::<shim::HullShim>(RUNTIME_ID, Some(config)).await;
}
