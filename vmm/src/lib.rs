//! The built-in KVM VMM of hull: one microVM, its guest memory, its vCPU threads and its
//! legacy devices, usable in-process by the shim and from the standalone `hull-vmm`.
//!
//! What is here (first slice of the vmm issue):
//! - [`memory`]: guest RAM in one memfd (so vhost-user backends can map it), the x86 guest
//!   physical layout and the e820 map.
//! - [`bus`]: address ranges → devices, for port I/O and MMIO exits.
//! - [`cpu`]: CPUID filtering, MSRs, FPU, LAPIC, GDT and page tables for each entry mode, and
//!   the vCPU thread that blocks in `KVM_RUN`, handles PIO/MMIO exits on itself and counts
//!   them.
//! - [`boot`]: ELF vmlinux (PVH entry or 64-bit entry) and bzImage loading with linux-loader,
//!   boot parameters, kernel command line, initrd.
//! - [`mptable`]: the MP table announcing the vCPUs and the IOAPIC to the kernel.
//! - [`devices`]: the 16550 serial port (vm-superio) and the i8042 reset line.
//! - [`lifecycle`]: whether the VM runs, is paused, and why it stopped (HLT, triple fault, i8042 reset,
//!   system event, request, vCPU failure).
//! - [`virtio`]: the virtio-mmio transport (version 2 register layout) with queue kicks as
//!   KVM ioeventfds and interrupts as KVM irqfds, devices announced on the kernel command
//!   line, the generic vhost-user frontend for blk, net and fs backends
//!   ([`virtio::vhost_user`]), and the in-VMM vsock device with a hybrid unix socket
//!   ([`virtio::vsock`], on hull-devices' vsock model).
//! - [`seccomp`]: a filter per kind of thread (vCPU, main), installed by each thread once
//!   its set-up is done.
//! - [`event_loop`]: the device loop on io_uring, the one thread besides the vCPUs, driving
//!   event sources (signals, sockets, in-VMM devices' eventfds) added from any thread through
//!   a [`event_loop::Registrar`].
//! - [`signals`], [`metrics`], [`api`]: what hull-vmm's main thread serves on the device
//!   loop besides devices: SIGINT/SIGTERM, the metrics socket, and the control socket (an
//!   HTTP/1.1 API like cloud-hypervisor's: pause, resume, shutdown, info, ping).
//! - [`launch`]: the VM assembled from a [`launch::LaunchConfig`] (kernel, devices, serial
//!   console), shared by hull-vmm's `main` and the shim, which runs the VMM in its own
//!   process and drives the device loop from its event loop ([`event_loop::DeviceLoop::ring_fd`]).
//! - [`vm`]: the VM that ties them together, and its clean stop (every vCPU thread joined,
//!   every fd closed when the [`vm::RunningVm`] is dropped).
//!
//! Not there yet (later slices of the issue): in-VMM virtio devices other than vsock
//! (console), vhost-user reconnection, the in-process API for the shim beyond
//! create/start/stop/wait, serial input, ACPI tables, an RTC, hugepages.

#![warn(clippy::cast_possible_truncation)]

pub mod api;
pub mod boot;
pub mod bus;
pub mod cpu;
pub mod devices;
mod error;
pub mod event_loop;
pub mod launch;
pub mod lifecycle;
pub mod memory;
pub mod metrics;
pub mod mptable;
pub mod seccomp;
pub mod signals;
pub mod virtio;
pub mod vm;

pub use error::{Error, Result};
