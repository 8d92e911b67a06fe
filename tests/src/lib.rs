//! Helpers shared by hull's end-to-end tests: where the guest image is, how a missing
//! prerequisite is reported, and a QEMU guest that is always cleaned up.
//!
//! The tests themselves live in `tests/tests/`. They use real QEMU, real guests and (later)
//! a real containerd; nothing here fakes them.

pub mod artifacts;
pub mod containerd;
pub mod forbidden;
pub mod guest_program;
pub mod host_agent;
pub mod leftovers;
pub mod netns;
pub mod oci_image;
pub mod prereq;
pub mod qemu;
pub mod stale;
pub mod tiny_guest;
