//! The containerd shim v2 for hull (`containerd-shim-hull-v2`) and the `hull` CLI.
//!
//! Owns the shim's task service, the sandbox and container managers, host-side resources and
//! the `Hypervisor` seam with its `builtin`, `qemu` and `none` backends. It does not own the
//! guest side (the agent) or the data plane of devices (the vhost-user backends).
//!
//! Built so far: [`config`] (configuration files, drop-ins, annotation overrides), [`paths`]
//! (where hull finds its files), [`host`] (`hull check`), [`hybrid_vsock`] (the shim side of
//! the agent link), [`agent_link`] (ttrpc to the agent), [`backend`] (device backend
//! processes), [`vm_spec`], the [`qemu`] backend's VM process management, [`sandbox`] (a VM
//! booted to a serving agent, or the `none` hypervisor's agent on the host; the persisted
//! record), [`rootfs`] (containerd's rootfs mounts), [`mounts`] (the spec's bind mounts and
//! volumes on their way into a sandbox), [`container`] (the container manager and
//! stdio copies), [`logging`] (the log FIFO, and journald where present) and [`service`]
//! (containerd's side). Still to come: the rootfs shared into a
//! VM through hull-fs, and the built-in VMM backend.

pub mod agent_link;
pub mod agent_log;
pub mod backend;
pub mod config;
pub mod container;
pub mod host;
pub mod hybrid_vsock;
pub mod logging;
pub mod monitor;
pub mod mounts;
pub mod network;
pub mod parent_death;
pub mod paths;
pub mod phase;
pub mod qemu;
pub mod rootfs;
pub mod run_dir;
pub mod sandbox;
pub mod service;
pub mod uring;
pub mod vm_spec;
pub mod vmm;
