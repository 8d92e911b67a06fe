//! The built-in KVM VMM: vCPUs, guest memory, kernel loading, legacy devices, virtio-mmio and
//! vhost-user frontends.
//!
//! Not built yet: see the vmm issue.
