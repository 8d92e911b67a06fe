//! The sandbox: one pod, one VM (or with the `none` hypervisor the agent on the host), its
//! device backends and host resources.
//!
//! [`boot`] brings a VM up until its agent answers; [`host_agent`] starts the agent on the
//! host instead (`none`); [`lifecycle`] is the running sandbox the Task service uses (start,
//! shutdown, the host mounts it owns); [`share`] is the pod's directory shared into the VM
//! through hull-fs; [`disk`] is a disk given to the VM through its own hull-blk; [`persist`] is the record of what a sandbox owns on the
//! host, kept on disk so that `shim delete` or a restarted shim can clean up after a crash;
//! [`watch`] notices when one of the sandbox's host processes dies; [`host_cgroups`] empties
//! and removes the host cgroups of `none` containers whose agent died.

pub mod boot;
pub mod disk;
pub mod host_agent;
pub mod host_cgroups;
pub mod lifecycle;
pub mod persist;
pub mod share;
pub mod watch;
