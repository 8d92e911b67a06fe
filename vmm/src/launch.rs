//! Assembling a microVM from a [`LaunchConfig`]: the VM, its serial console, its vhost-user
//! frontends and its in-VMM vsock device behind virtio-mmio, and the kernel loaded. Used by
//! the `hull-vmm` binary and by the shim, which runs the VMM in its own process
//! (`hypervisor = "builtin"`): one assembly, two owners.
//!
//! The launch has two steps, because its owner has work to do in between: [`prepare`]
//! builds a [`PreparedVm`] (nothing runs yet: hull-vmm then blocks its signals, binds its
//! sockets, builds its seccomp filters and drops its capabilities), and
//! [`PreparedVm::start`] starts the vCPU threads. The device loop that serves the in-VMM
//! devices is the owner's to run ([`PreparedVm::device_loop`]): on hull-vmm's main thread,
//! or on the shim's event loop through [`DeviceLoop::ring_fd`].

use std::path::PathBuf;
use std::sync::Arc;

use crate::boot::{self, BootConfig};
use crate::cpu::cpuid::CpuFeature;
use crate::cpu::EntryMode;
use crate::devices::serial::SerialOutput;
use crate::event_loop::{DeviceLoop, Registrar};
use crate::lifecycle::RunState;
use crate::metrics::MetricsSource;
use crate::virtio::vhost_user::{VhostUserDevice, VhostUserKind};
use crate::virtio::vsock::{Vsock, VsockCounters};
use crate::vm::{KickPath, RunningVm, Vm, VmConfig};

/// Errors of a launch, each naming the step that failed (hull-vmm prints them as they are).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM or guest memory refused the VM.
    #[error("cannot create the VM")]
    Create(#[source] crate::Error),
    /// The serial console could not be added.
    #[error("cannot add the serial console")]
    Serial(#[source] crate::Error),
    /// A vhost-user backend did not answer the frontend's set-up.
    #[error("cannot connect to vhost-user backend {}", socket.display())]
    VhostUser {
        /// The backend's socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: crate::Error,
    },
    /// The in-VMM vsock device could not be made.
    #[error("cannot add the vsock device on {}", path.display())]
    Vsock {
        /// Its hybrid unix socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: crate::Error,
    },
    /// A device found no place on the virtio-mmio bus.
    #[error("cannot add the device of {}", socket.display())]
    Device {
        /// The device's socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: crate::Error,
    },
    /// The device loop (its registrar's eventfd or its ring) could not be set up.
    #[error("cannot set up the device loop")]
    DeviceLoop(#[source] crate::Error),
    /// The kernel (or the initrd, or the command line) could not be loaded.
    #[error("cannot load the kernel")]
    Load(#[source] crate::Error),
    /// The vCPUs could not be configured or their threads started.
    #[error("cannot start the vCPUs")]
    Start(#[source] crate::Error),
}

/// What a VM is launched from.
pub struct LaunchConfig {
    /// The kernel: an ELF vmlinux (PVH entry if it has one) or a bzImage.
    pub kernel: PathBuf,
    /// The initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// The kernel command line, without the virtio-mmio devices (appended here).
    pub cmdline: String,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// CPU features hidden from the guest.
    pub hidden_cpu_features: Vec<CpuFeature>,
    /// vhost-user frontends, in the order of their virtio-mmio slots: each backend's socket
    /// and what it serves.
    pub vhost_user: Vec<(PathBuf, VhostUserKind)>,
    /// The in-VMM vsock device: its hybrid unix socket and the guest's context id.
    pub vsock: Option<(PathBuf, u64)>,
    /// Where the serial console (COM1) goes.
    pub serial: SerialOutput,
}

impl std::fmt::Debug for LaunchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchConfig")
            .field("kernel", &self.kernel)
            .field("initrd", &self.initrd)
            .field("cmdline", &self.cmdline)
            .field("memory_mib", &self.memory_mib)
            .field("vcpus", &self.vcpus)
            .field("vhost_user", &self.vhost_user.len())
            .field("vsock", &self.vsock)
            .finish_non_exhaustive()
    }
}

/// A VM with its devices and its kernel, whose vCPUs do not run yet.
pub struct PreparedVm {
    vm: Vm,
    entry: EntryMode,
    registrar: Registrar,
    vsock_counters: Option<VsockCounters>,
}

impl std::fmt::Debug for PreparedVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedVm").finish_non_exhaustive()
    }
}

/// A VM whose vCPUs run, with what its owner serves beside it.
pub struct LaunchedVm {
    /// The VM.
    pub running: RunningVm,
    /// The registrar through which the in-VMM devices reach the device loop.
    pub registrar: Registrar,
    /// The in-VMM vsock device's counters, if it has one.
    pub vsock_counters: Option<VsockCounters>,
}

impl LaunchedVm {
    /// Serves the VM's counters (vCPU exits, unclaimed accesses, and the in-VMM vsock
    /// device's series as hull-vsock serves them) on `listener` from the device loop.
    pub fn serve_metrics(&self, listener: hull_metrics::MetricsListener) -> crate::Result<()> {
        let mut source = MetricsSource::new(listener, self.running.control());
        if let Some(counters) = self.vsock_counters.clone() {
            source = source.with_extra(move || {
                counters.snapshot().map_or_else(String::new, |counters| {
                    hull_metrics::render(&hull_devices::metrics::vsock_samples(&counters))
                })
            });
        }
        self.registrar.add(Box::new(source))
    }
}

impl std::fmt::Debug for LaunchedVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchedVm")
            .field("thread_prefix", &self.running.thread_prefix())
            .finish_non_exhaustive()
    }
}

/// Builds the VM `config` describes and loads its kernel. Nothing runs yet; a failure
/// leaves nothing behind (the VM's descriptors close with it).
pub fn prepare(config: LaunchConfig) -> Result<PreparedVm, Error> {
    let vm_config = VmConfig {
        memory_mib: config.memory_mib,
        vcpus: config.vcpus,
        interrupt_controller: true,
        hidden_cpu_features: config.hidden_cpu_features,
    };
    let mut vm = Vm::new(vm_config).map_err(Error::Create)?;
    vm.add_serial(config.serial).map_err(Error::Serial)?;
    for (socket, kind) in config.vhost_user {
        let device =
            VhostUserDevice::connect(&socket, kind).map_err(|source| Error::VhostUser {
                socket: socket.clone(),
                source,
            })?;
        vm.add_virtio_mmio(Box::new(device), KickPath::Kernel)
            .map_err(|source| Error::Device { socket, source })?;
    }
    // In-VMM devices hand their descriptors to the device loop through this registrar.
    let registrar = Registrar::new().map_err(Error::DeviceLoop)?;
    let mut vsock_counters = None;
    if let Some((path, cid)) = config.vsock {
        let device = Vsock::new(&path, cid, registrar.clone()).map_err(|source| Error::Vsock {
            path: path.clone(),
            source,
        })?;
        vsock_counters = Some(device.counters());
        vm.add_virtio_mmio(Box::new(device), KickPath::Kernel)
            .map_err(|source| Error::Device {
                socket: path,
                source,
            })?;
    }
    let virtio = vm.virtio_cmdline();
    let cmdline = if virtio.is_empty() {
        config.cmdline
    } else {
        format!("{} {virtio}", config.cmdline)
    };
    let boot = BootConfig {
        kernel: config.kernel,
        initrd: config.initrd,
        cmdline,
    };
    let entry = boot::load(vm.memory(), &boot).map_err(Error::Load)?;
    Ok(PreparedVm {
        vm,
        entry,
        registrar,
        vsock_counters,
    })
}

impl PreparedVm {
    /// The VM, for what its owner sets before the start ([`Vm::confine_vcpus`]).
    pub fn vm_mut(&mut self) -> &mut Vm {
        &mut self.vm
    }

    /// The VM's run state (why it stopped, once it did).
    pub fn run_state(&self) -> Arc<RunState> {
        self.vm.run_state()
    }

    /// The registrar of the in-VMM devices.
    pub fn registrar(&self) -> &Registrar {
        &self.registrar
    }

    /// The device loop serving the in-VMM devices, woken when the VM stops (a stop the guest
    /// makes, or a vCPU's failure) so that its owner sees the stop; `on_stop` also runs then,
    /// on the stopping thread (it must not block).
    pub fn device_loop(
        &self,
        on_stop: impl Fn() + Send + Sync + 'static,
    ) -> Result<DeviceLoop, Error> {
        let device_loop = DeviceLoop::new(self.registrar.clone()).map_err(Error::DeviceLoop)?;
        let waker = self.registrar.clone();
        self.vm.run_state().on_stop(move || {
            let _ = waker.wake();
            on_stop();
        });
        Ok(device_loop)
    }

    /// Starts the vCPU threads.
    pub fn start(self) -> Result<LaunchedVm, Error> {
        let running = self.vm.start(self.entry).map_err(Error::Start)?;
        Ok(LaunchedVm {
            running,
            registrar: self.registrar,
            vsock_counters: self.vsock_counters,
        })
    }
}
