//! Pod networking, the host side: the pod's network namespace (created by containerd's CNI
//! set-up, named in the OCI spec) is scanned over netlink, and each interface in it gets an
//! *endpoint*: a tap device in the same namespace that the VM's NIC is backed by, joined to the
//! interface by tc redirect filters in both directions (Kata's default "tcfilter" model). The
//! guest's NIC takes the interface's MAC, MTU, addresses and routes, so the pod looks to the
//! rest of the network exactly as the CNI plugin made it.
//!
//! ```text
//!   pod netns:  eth0 (veth from CNI) ──ingress: mirred redirect──▶ hull_tap0 ──▶ VM NIC
//!                    ◀──mirred redirect: ingress── hull_tap0 ◀── VM NIC
//! ```
//!
//! A macvtap interface (as the macvtap CNI plugin puts in a pod) is a tap already: its own
//! queues serve the NIC, and nothing is added to the namespace (see [`macvtap`]).
//!
//! Everything here runs on a short-lived thread that has entered the pod's namespace
//! ([`netns::run_in`]): a thread's network namespace is its own, so the shim's event loop never
//! changes namespace, and netlink sockets opened on that thread talk to the pod's namespace.
//!
//! What is left on the host: the taps disappear when their last file descriptor closes (they
//! are not persistent), and [`PodNetwork::detach`] removes the ingress qdiscs (and with them
//! the filters) it added to the pod's interfaces. A failed [`PodNetwork::attach`] undoes what
//! it had done before returning the error.

mod endpoint;
mod guest;
mod macvtap;
pub mod netns;
mod scan;
pub mod spec;
mod tap;

use std::path::PathBuf;

pub use endpoint::{
    release, Endpoint, EndpointModel, KnownInterfaces, PodNetwork, RecordedInterface,
    RecordedNetwork,
};
pub(crate) use guest::mac_text;
pub use guest::Nic;
pub use scan::{Interface, IpNetwork, LinkKind, NetnsScan, Route};

/// Errors setting up or tearing down a pod's network.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The network namespace file could not be opened.
    #[error("opening the pod's network namespace {path}")]
    OpenNetns {
        /// The namespace path from the OCI spec.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// setns(2) into the namespace failed.
    #[error("entering the pod's network namespace {path} (is it a network namespace?)")]
    EnterNetns {
        /// The namespace path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The thread working in the namespace could not be started or panicked.
    #[error("the thread working in network namespace {path} {what}")]
    NetnsThread {
        /// The namespace path.
        path: PathBuf,
        /// What went wrong with it.
        what: &'static str,
    },
    /// A netlink request failed.
    #[error("netlink: {what}")]
    Netlink {
        /// The request, with the interface it was about.
        what: String,
        /// The kernel's or the library's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// Opening or configuring the netlink socket failed.
    #[error("opening a netlink socket in the pod's network namespace")]
    NetlinkSocket(#[source] std::io::Error),
    /// An interface of a kind hull cannot connect to a VM.
    #[error(
        "interface {name} in the pod's network namespace is of kind {kind}, which hull does not \
         support (supported: veth, macvlan, ipvlan, macvtap)"
    )]
    UnsupportedKind {
        /// The interface name.
        name: String,
        /// Its kind as the kernel names it.
        kind: String,
    },
    /// A macvtap interface's queues could not be opened.
    #[error("opening the queues of macvtap {name}: {what}")]
    Macvtap {
        /// The interface's name.
        name: String,
        /// The step that failed.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A tap device could not be created.
    #[error("creating tap device {name}")]
    Tap {
        /// The tap's name.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Interfaces appeared in the pod's namespace after its VM started, and the VM cannot
    /// take a new NIC.
    #[error(
        "interface(s) {} were added to the pod's network namespace {} after its VM started; \
         {hypervisor} cannot hot-plug a NIC into a running VM, so the pod would not see them: \
         recreate the pod to carry them into its VM",
        names.join(", "),
        netns.display()
    )]
    HotplugUnsupported {
        /// The new interfaces.
        names: Vec<String>,
        /// The namespace.
        netns: PathBuf,
        /// What runs the VM (`QEMU microvm`).
        hypervisor: &'static str,
    },
    /// An interface vanished while it was being set up.
    #[error("interface {0} disappeared from the pod's network namespace during set-up")]
    Vanished(String),
}

/// Results of this module.
pub type Result<T> = std::result::Result<T, Error>;
