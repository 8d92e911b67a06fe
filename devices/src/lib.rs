//! Standalone vhost-user device backends, each its own process: `hull-vsock`, `hull-blk` and
//! `hull-net`, and what they share.
//!
//! - [`chain`], validating guest descriptor chains before a device acts on them.
//! - [`config_space`], reading a config space window the guest chose, clipped.
//! - [`notify`], serving a virtqueue with the guest's kicks off, and the last look after.
//! - [`vsock`], the virtio-vsock device with a hybrid-vsock host side.
//! - [`blk`], the virtio-blk device over a file or block device.
//! - [`net`], the virtio-net device on a tap.
//! - [`serve`], serving vhost-user frontends on a socket, until a signal or disconnect.
//! - [`seccomp`], the system calls a backend may make.
//! - [`privileges`], the capabilities a backend keeps once set up.

#![warn(clippy::cast_possible_truncation)]

use std::path::PathBuf;

pub mod blk;
pub mod chain;
pub mod config_space;
pub mod exit_events;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod privileges;
pub mod restricted_ring;
pub mod seccomp;
pub mod serve;
pub mod vsock;

/// Errors of the device backends.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The hybrid-vsock socket path holds something that is not a socket.
    #[error("{path} exists and is not a socket: remove it or choose another --uds path")]
    UdsPathTaken {
        /// The path.
        path: PathBuf,
    },
    /// Binding a unix socket failed.
    #[error("cannot listen on {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Setting up epoll failed.
    #[error("epoll")]
    Epoll(#[source] std::io::Error),
    /// A virtqueue's rings are not usable (outside guest memory).
    #[error("virtqueue")]
    Queue(#[source] virtio_queue::Error),
    /// The guest context id is reserved or too large.
    #[error("guest CID {cid} is invalid: use a value from 3 to 4294967294")]
    InvalidGuestCid {
        /// The CID given.
        cid: u64,
    },
    /// Listening on the vhost-user socket failed.
    #[error("cannot listen for vhost-user frontends on {path}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: vhost::vhost_user::Error,
    },
    /// The vhost-user daemon failed (its error type carries no source chain).
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
    /// The disk (backing file or block device) cannot be opened or sized.
    #[error("cannot use {path} as a disk")]
    Disk {
        /// The path given with --path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The number of queues is outside what the device supports.
    #[error("{queues} queues requested: use 1 to {max}")]
    InvalidQueues {
        /// The number asked for.
        queues: u16,
        /// The most supported.
        max: u16,
    },
    /// The tap cannot be opened or set up.
    #[error("tap")]
    Tap(#[from] net::tap::TapError),
    /// The number of inherited tap descriptors does not match the queue pairs.
    #[error("{given} tap descriptors given for {queues} queue pairs: give one --tap-fd per queue pair (at most 64)")]
    TapFdCount {
        /// Descriptors given.
        given: u16,
        /// Queue pairs asked for.
        queues: u16,
    },
    /// Setting up signal handling or waiting failed.
    #[error("{what}")]
    Os {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The capabilities the backend gives up once set up could not be dropped.
    #[error(transparent)]
    Privileges(#[from] privileges::Error),
}

/// Result of the device backends.
pub type Result<T> = std::result::Result<T, Error>;
