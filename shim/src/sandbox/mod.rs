//! The sandbox: one pod, one VM, its device backends and host resources.
//!
//! Built so far: [`boot`], bringing a VM up until its agent answers, and [`persist`], the
//! record of what a sandbox owns on the host, kept on disk so that `shim delete` or a restarted
//! shim can clean up after a crash. The sandbox manager (start, stop, cleanup, shutdown, agent
//! socket, metrics) is the shim issue's remaining work.

pub mod boot;
pub mod persist;
