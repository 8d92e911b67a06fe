//! Fuzz targets for every parser of guest- and peer-controlled input in hull (issue #11),
//! one plain function per target so that libFuzzer (through cargo-fuzz) and a stable smoke
//! test (`tests/smoke.rs`) run the same code:
//!
//! | target | hostile side | code reached |
//! | --- | --- | --- |
//! | [`virtq_chain`] | guest | descriptor chain validation, virtio-blk request parsing |
//! | [`blk_request`] | guest | hull-blk's queue processing over a disk (io_uring batch) |
//! | [`net_rx_tx`] | guest | hull-net's tx and rx queue processing against a tap |
//! | [`vsock_packet`] | guest, host peers | hull-vsock's device and muxer |
//! | [`vhost_user_msg`] | frontend | hull-vsock's and hull-blk's vhost-user serving, hull-net's relay |
//! | [`virtio_mmio`] | guest | the VMM's MMIO bus and virtio-mmio transport |
//! | [`fuse_request`] | guest | virtiofsd's FUSE decoding behind hull-fs's name guard |
//! | [`agent_request`] | shim side | the agent's request decoding and checks |
//! | [`oci_spec`] | bundle | the shim's handling of a bundle's config.json for a VM |
//! | [`config_toml`] | host admin | the shim's configuration loader and pod annotations |
//!
//! Every target takes any bytes. A panic, anywhere in the process (threads included), is a
//! finding: the assertions in the targets check what the code promises beyond not
//! panicking (validated buffers inside guest memory, used lengths within it, queues handed
//! to a device inside guest RAM, a loaded configuration that validates).

pub mod agent;
pub mod fuse;
pub mod guest;
pub mod input;
pub mod mmio;
pub mod net;
pub mod shim;
pub mod vhost_user;
pub mod virtq;
pub mod vsock;

pub use agent::agent_request;
pub use fuse::fuse_request;
pub use mmio::virtio_mmio;
pub use net::net_rx_tx;
pub use shim::{config_toml, oci_spec};
pub use vhost_user::vhost_user_msg;
pub use virtq::{blk_request, virtq_chain};
pub use vsock::vsock_packet;

/// A target: a name (as cargo-fuzz knows it), its function, and the longest input worth
/// giving it (libFuzzer's `-max_len`), in bytes.
pub struct Target {
    /// The target's name, also its corpus directory under `corpus/`.
    pub name: &'static str,
    /// The function.
    pub run: fn(&[u8]),
    /// Longest useful input in bytes.
    pub max_len: usize,
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "virtq_chain",
        run: virtq_chain,
        max_len: 4096,
    },
    Target {
        name: "blk_request",
        run: blk_request,
        max_len: 4096,
    },
    Target {
        name: "net_rx_tx",
        run: net_rx_tx,
        max_len: 4096,
    },
    Target {
        name: "vsock_packet",
        run: vsock_packet,
        max_len: 4096,
    },
    Target {
        name: "vhost_user_msg",
        run: vhost_user_msg,
        max_len: 4096,
    },
    Target {
        name: "virtio_mmio",
        run: virtio_mmio,
        max_len: 2048,
    },
    Target {
        name: "fuse_request",
        run: fuse_request,
        max_len: 8192,
    },
    Target {
        name: "agent_request",
        run: agent_request,
        max_len: 4096,
    },
    Target {
        name: "oci_spec",
        run: oci_spec,
        max_len: 4096,
    },
    Target {
        name: "config_toml",
        run: config_toml,
        max_len: 2048,
    },
];
