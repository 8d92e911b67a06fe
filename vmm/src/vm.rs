//! A VM: KVM VM and memory slots, the buses with their legacy devices, the vCPU threads, and
//! a clean stop.
//!
//! [`Vm`] is the VM being put together (memory, devices); [`Vm::start`] configures the vCPUs
//! and starts one thread per vCPU, giving a [`RunningVm`]. Waiting on or dropping the running
//! VM stops every vCPU and joins its thread; dropping it then closes the vCPU fds, the VM fd
//! and guest memory, in that order.
//!
//! A [`VmControl`] (from [`RunningVm::control`]) is what other threads hold: the device
//! loop's control socket pauses, resumes and stops the VM through it and reads its counters.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::signal::Killable;

use crate::bus::{Bus, SharedDevice};
use crate::cpu::cpuid::{self, CpuFeature};
use crate::cpu::vcpu::{self, ExitCounters, ExitCounts, Vcpu, VcpuEnd};
use crate::cpu::{regs, EntryMode};
use crate::devices::i8042::{I8042, I8042_PORT, I8042_PORT_LEN};
use crate::devices::serial::{Serial, SerialOutput, COM1_IRQ, COM1_PORT, COM1_PORT_LEN};
use crate::lifecycle::{PauseGate, RunState, StopReason};
use crate::memory::GuestMemory;
use crate::mptable;
use crate::virtio::mmio::{MmioTransport, NOTIFY_OFFSET};
use crate::virtio::{self, Disconnector, VirtioDevice};
use crate::{Error, Result};

/// Most vCPUs a VM may have.
pub const MAX_VCPUS: u8 = 64;
/// Address of the TSS KVM needs on Intel hosts: three pages just below the BIOS area.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// What a VM is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Number of vCPUs, 1 to [`MAX_VCPUS`].
    pub vcpus: u8,
    /// Whether KVM emulates the interrupt controllers (PIC, IOAPIC, LAPIC) and the PIT, as a
    /// Linux guest needs. Without them HLT exits to the VMM and ends the vCPU (small test
    /// guests), and every vCPU starts at the entry point.
    pub interrupt_controller: bool,
    /// CPU features hidden from the guest.
    pub hidden_cpu_features: Vec<CpuFeature>,
}

fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::KvmIoctl { op, source }
}

/// A VM being assembled.
pub struct Vm {
    id: u64,
    config: VmConfig,
    kvm: Kvm,
    pio: Bus,
    mmio: Bus,
    state: Arc<RunState>,
    virtio: Vec<VirtioSlot>,
    disconnectors: Vec<Disconnector>,
    /// The seccomp filter each vCPU thread installs before its first KVM_RUN.
    vcpu_filter: Option<Arc<seccompiler::BpfProgram>>,
    // Declared before `memory`: KVM's slots point into it, so the VM goes first.
    vm_fd: VmFd,
    memory: GuestMemory,
}

/// How a virtio-mmio device's queue notifications reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickPath {
    /// KVM ioeventfds on QueueNotify, one per queue with the queue index as datamatch: a
    /// kick signals the queue's eventfd inside KVM, without an exit to the VMM.
    Kernel,
    /// Every QueueNotify write exits to the vCPU thread, and the transport signals the
    /// same eventfd (for tests of that path, and KVMs without ioeventfd).
    UserSpace,
}

/// Where a virtio-mmio device was placed.
#[derive(Debug, Clone)]
pub struct VirtioSlot {
    /// Guest physical base of its register window.
    pub base: u64,
    /// Its interrupt line (IOAPIC pin and ISA IRQ).
    pub irq: u32,
    /// The transport, shared with the MMIO bus (for inspection and tests).
    pub transport: Arc<Mutex<MmioTransport>>,
}

impl Vm {
    /// Creates the KVM VM with its memory, interrupt controllers (if configured) and the
    /// i8042 reset line.
    pub fn new(config: VmConfig) -> Result<Self> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
            return Err(Error::VcpuCount {
                count: config.vcpus,
                max: MAX_VCPUS,
            });
        }
        let memory = GuestMemory::new(config.memory_mib)?;
        let kvm = Kvm::new().map_err(Error::Kvm)?;
        let vm_fd = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
        for (slot, region) in memory.mmap().iter().enumerate() {
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| Error::GuestMemoryAccess {
                    addr: region.start_addr().0,
                    len: 0,
                })?;
            let slot = kvm_userspace_memory_region {
                slot: u32::try_from(slot).expect("at most two RAM regions"),
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the range [host, host + len) is a live shared mapping owned by `memory`,
            // which this struct keeps until after `vm_fd` (declared before it) is closed, so
            // KVM never sees the slot's memory unmapped while the VM exists.
            unsafe { vm_fd.set_user_memory_region(slot) }
                .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        }
        if config.interrupt_controller {
            vm_fd
                .set_tss_address(KVM_TSS_ADDRESS)
                .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
            vm_fd
                .create_irq_chip()
                .map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            vm_fd.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;
        }
        let state = Arc::new(RunState::new());
        let mut pio = Bus::new("pio");
        let i8042: SharedDevice = Arc::new(Mutex::new(I8042::new(Arc::clone(&state))));
        pio.insert(I8042_PORT, I8042_PORT_LEN, i8042)?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            vm = id,
            memory_mib = config.memory_mib,
            vcpus = config.vcpus,
            "VM created"
        );
        Ok(Self {
            id,
            config,
            kvm,
            pio,
            mmio: Bus::new("mmio"),
            state,
            virtio: Vec::new(),
            disconnectors: Vec::new(),
            vcpu_filter: None,
            vm_fd,
            memory,
        })
    }

    /// Guest memory, to load a kernel or test code into.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// The VM's run state, to request a stop from a device or another thread.
    pub fn run_state(&self) -> Arc<RunState> {
        Arc::clone(&self.state)
    }

    /// Adds COM1, writing the guest's output to `out`.
    pub fn add_serial(&mut self, out: SerialOutput) -> Result<()> {
        let serial = Serial::new(out)?;
        if self.config.interrupt_controller {
            self.vm_fd
                .register_irqfd(serial.irq_eventfd(), COM1_IRQ)
                .map_err(ioctl("KVM_IRQFD"))?;
        }
        self.pio
            .insert(COM1_PORT, COM1_PORT_LEN, Arc::new(Mutex::new(serial)))
    }

    /// Maps a device at ports `[base, base + len)`.
    pub fn add_pio_device(&mut self, base: u16, len: u16, device: SharedDevice) -> Result<()> {
        self.pio.insert(u64::from(base), u64::from(len), device)
    }

    /// Maps a device at guest physical addresses `[base, base + len)`.
    pub fn add_mmio_device(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<()> {
        self.mmio.insert(base, len, device)
    }

    /// Puts `device` behind a virtio-mmio transport in the next free window of the MMIO
    /// hole ([`virtio::MMIO_BASE`] upwards) with the next free interrupt line, and wires
    /// its queue notifications (`kicks`) and its interrupt (a KVM irqfd, when the VM has
    /// interrupt controllers) so that neither goes through a vCPU's exit to the VMM.
    /// The device is announced to the guest by [`Self::virtio_cmdline`].
    pub fn add_virtio_mmio(
        &mut self,
        device: Box<dyn VirtioDevice>,
        kicks: KickPath,
    ) -> Result<VirtioSlot> {
        let index =
            u32::try_from(self.virtio.len()).map_err(|_| Error::VirtioSlots("too many devices"))?;
        let irq = virtio::FIRST_IRQ + index;
        if irq > virtio::LAST_IRQ {
            return Err(Error::VirtioSlots("every interrupt line 5-15 is taken"));
        }
        let base = virtio::MMIO_BASE + u64::from(index) * virtio::MMIO_SIZE;
        let transport = MmioTransport::new(device, self.memory.mmap().clone())?;
        if kicks == KickPath::Kernel {
            let notify = IoEventAddress::Mmio(base + NOTIFY_OFFSET);
            for (queue, kick) in (0u32..).zip(transport.kicks()) {
                self.vm_fd
                    .register_ioevent(kick, &notify, queue)
                    .map_err(ioctl("KVM_IOEVENTFD"))?;
            }
        }
        if self.config.interrupt_controller {
            self.vm_fd
                .register_irqfd(transport.interrupt().eventfd(), irq)
                .map_err(ioctl("KVM_IRQFD"))?;
        }
        self.disconnectors.extend(transport.disconnector());
        let transport = Arc::new(Mutex::new(transport));
        let shared: SharedDevice = transport.clone();
        self.mmio.insert(base, virtio::MMIO_SIZE, shared)?;
        let slot = VirtioSlot {
            base,
            irq,
            transport,
        };
        self.virtio.push(slot.clone());
        tracing::info!(vm = self.id, base, irq, ?kicks, "virtio-mmio device added");
        Ok(slot)
    }

    /// The kernel command-line entries announcing every virtio-mmio device added so far
    /// (`virtio_mmio.device=4K@0xd0000000:5 ...`), to append to the command line.
    pub fn virtio_cmdline(&self) -> String {
        self.virtio
            .iter()
            .map(|slot| virtio::cmdline_entry(virtio::MMIO_SIZE, slot.base, slot.irq))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Has every vCPU thread install `program` (the [`crate::seccomp::ThreadKind::Vcpu`]
    /// filter) on itself before its first KVM_RUN. A thread that cannot install it stops the
    /// VM with a vCPU error instead of running the guest unconfined.
    pub fn confine_vcpus(&mut self, program: seccompiler::BpfProgram) {
        self.vcpu_filter = Some(Arc::new(program));
    }

    /// Configures every vCPU (CPUID, MSRs, FPU, LAPIC, and the entry state of the boot vCPU),
    /// writes the MP table when the guest has interrupt controllers, and starts the vCPU
    /// threads.
    pub fn start(self, entry: EntryMode) -> Result<RunningVm> {
        vcpu::install_kick_handler()?;
        let supported = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        if self.config.interrupt_controller {
            mptable::write(self.memory.mmap(), self.config.vcpus)?;
        }
        let mut fds = Vec::with_capacity(usize::from(self.config.vcpus));
        for id in 0..self.config.vcpus {
            let fd = self
                .vm_fd
                .create_vcpu(u64::from(id))
                .map_err(ioctl("KVM_CREATE_VCPU"))?;
            let mut cpuid = supported.clone();
            cpuid::filter(
                &mut cpuid,
                id,
                self.config.vcpus,
                &self.config.hidden_cpu_features,
            );
            fd.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
            regs::setup_msrs(&fd)?;
            regs::setup_fpu(&fd)?;
            if self.config.interrupt_controller {
                regs::setup_lapic(&fd)?;
            }
            // With an in-kernel LAPIC the other vCPUs wait for INIT/SIPI from the boot vCPU.
            if id == 0 || !self.config.interrupt_controller {
                regs::setup_entry(&fd, self.memory.mmap(), entry)?;
            }
            fds.push(fd);
        }
        let pio = Arc::new(self.pio);
        let mmio = Arc::new(self.mmio);
        let exits: Vec<Arc<ExitCounters>> = (0..self.config.vcpus)
            .map(|_| Arc::new(ExitCounters::default()))
            .collect();
        let pause = Arc::new(PauseGate::new());
        let control = VmControl(Arc::new(Control {
            state: Arc::clone(&self.state),
            pause: Arc::clone(&pause),
            exits: exits.clone(),
            pio: Arc::clone(&pio),
            mmio: Arc::clone(&mmio),
            vcpus: Mutex::new(Vec::with_capacity(fds.len())),
            memory_mib: self.config.memory_mib,
            vcpu_count: self.config.vcpus,
        }));
        let mut running = RunningVm {
            thread_prefix: format!("vm{}-", self.id),
            threads: Vec::with_capacity(fds.len()),
            control,
            state: self.state,
            disconnectors: self.disconnectors,
            vm_fd: self.vm_fd,
            memory: self.memory,
        };
        let alive = Arc::new(AtomicU8::new(self.config.vcpus));
        for ((id, fd), exits) in (0..).zip(fds).zip(exits) {
            let vcpu = Vcpu {
                id,
                fd,
                pio: Arc::clone(&pio),
                mmio: Arc::clone(&mmio),
                state: Arc::clone(&running.state),
                pause: Arc::clone(&pause),
                running: Arc::clone(&alive),
                exits,
            };
            let ended = Arc::new(AtomicBool::new(false));
            let ended_guard = Ended(Arc::clone(&ended));
            let name = format!("{}vcpu{id}", running.thread_prefix);
            let guard = PanicStops(Arc::clone(&running.state), id);
            let filter = self.vcpu_filter.clone();
            let state = Arc::clone(&running.state);
            let thread = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    if let Some(program) = filter {
                        let kind = crate::seccomp::ThreadKind::Vcpu;
                        if let Err(err) = crate::seccomp::apply(kind, &program) {
                            let detail = format!("{err}: {}", error_chain(&err));
                            state.request_stop(StopReason::VcpuError { vcpu: id, detail });
                            drop(guard);
                            return VcpuEnd::Stopped;
                        }
                    }
                    let end = vcpu.run();
                    drop(guard);
                    drop(ended_guard);
                    end
                })
                .map_err(|source| Error::Spawn { name, source });
            match thread {
                Ok(thread) => {
                    running.control.lock_vcpus().push(VcpuThread {
                        pthread: thread.as_pthread_t(),
                        ended,
                    });
                    running.threads.push(thread);
                }
                // Dropping `running` stops and joins the vCPUs already started.
                Err(err) => return Err(err),
            }
        }
        Ok(running)
    }
}

/// The causes under `err`, joined, for a one-line report.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut causes = Vec::new();
    let mut next = err.source();
    while let Some(cause) = next {
        causes.push(cause.to_string());
        next = cause.source();
    }
    causes.join(": ")
}

/// Stops the VM if a vCPU thread unwinds, so that nobody waits forever on it.
struct PanicStops(Arc<RunState>, u8);

impl Drop for PanicStops {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let detail = "vCPU thread panicked".to_owned();
            self.0.request_stop(StopReason::VcpuError {
                vcpu: self.1,
                detail,
            });
        }
    }
}

/// Marks a vCPU thread as ended when its closure returns or unwinds.
struct Ended(Arc<AtomicBool>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A vCPU thread as a [`VmControl`] kicks it: listed only until it is joined, so a kick
/// never reaches a joined (freed) thread.
struct VcpuThread {
    pthread: libc::pthread_t,
    ended: Arc<AtomicBool>,
}

/// What a [`VmControl`] shares with its [`RunningVm`].
struct Control {
    state: Arc<RunState>,
    pause: Arc<PauseGate>,
    exits: Vec<Arc<ExitCounters>>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    /// The vCPU threads not yet joined; emptied, under this lock, before they are.
    vcpus: Mutex<Vec<VcpuThread>>,
    memory_mib: u64,
    vcpu_count: u8,
}

/// A handle on a running VM for other threads (the device loop's control and metrics
/// sockets): pause, resume, stop, and what it reports. Cheap to clone; it outlives the VM
/// harmlessly (a pause after the vCPUs are joined returns at once).
#[derive(Clone)]
pub struct VmControl(Arc<Control>);

impl std::fmt::Debug for VmControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmControl")
            .field("paused", &self.is_paused())
            .field("stopping", &self.0.state.stop_requested())
            .finish()
    }
}

impl VmControl {
    fn lock_vcpus(&self) -> std::sync::MutexGuard<'_, Vec<VcpuThread>> {
        self.0.vcpus.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pauses the VM: every vCPU thread leaves KVM_RUN (kicked) and waits; returns once all
    /// that still run are parked, or the VM stops meanwhile. Pausing a paused VM does
    /// nothing more.
    pub fn pause(&self) {
        self.0.pause.set(true);
        loop {
            {
                let vcpus = self.lock_vcpus();
                let live: Vec<&VcpuThread> = vcpus
                    .iter()
                    .filter(|t| !t.ended.load(Ordering::Acquire))
                    .collect();
                if self.0.state.stop_requested() || self.0.pause.parked() >= live.len() {
                    return;
                }
                // Re-kicked until parked: one signal may land just before KVM_RUN.
                for thread in live {
                    // SAFETY: the thread is listed, so it has not been joined: its pthread_t
                    // is valid (an ended, unjoined thread answers ESRCH or nothing). The
                    // kick's handler does nothing but interrupt KVM_RUN.
                    unsafe { libc::pthread_kill(thread.pthread, vcpu::kick_signal()) };
                }
            }
            self.0.pause.wait_for_change(Duration::from_millis(1));
        }
    }

    /// Lets a paused VM's vCPUs run again; nothing if it is not paused.
    pub fn resume(&self) {
        self.0.pause.set(false);
    }

    /// Whether the VM is paused (or being paused).
    pub fn is_paused(&self) -> bool {
        self.0.pause.requested()
    }

    /// Asks the VM to stop, paused or not.
    pub fn stop(&self) {
        self.0.state.request_stop(StopReason::Requested);
        self.0.pause.wake();
    }

    /// The VM's run state.
    pub fn run_state(&self) -> Arc<RunState> {
        Arc::clone(&self.0.state)
    }

    /// Number of vCPUs.
    pub fn vcpus(&self) -> u8 {
        self.0.vcpu_count
    }

    /// Guest RAM in MiB.
    pub fn memory_mib(&self) -> u64 {
        self.0.memory_mib
    }

    /// Exits handled so far, per vCPU (index = vCPU ID).
    pub fn exit_counts(&self) -> Vec<ExitCounts> {
        self.0.exits.iter().map(|exits| exits.snapshot()).collect()
    }

    /// Guest accesses that hit no device so far: (port I/O, MMIO).
    pub fn unmapped_accesses(&self) -> (u64, u64) {
        (
            self.0.pio.unmapped_accesses(),
            self.0.mmio.unmapped_accesses(),
        )
    }
}

/// A VM whose vCPUs run.
pub struct RunningVm {
    thread_prefix: String,
    threads: Vec<JoinHandle<VcpuEnd>>,
    control: VmControl,
    state: Arc<RunState>,
    disconnectors: Vec<Disconnector>,
    // Dropped after the threads are joined (in `Drop`), and before `memory`.
    vm_fd: VmFd,
    memory: GuestMemory,
}

impl RunningVm {
    /// Asks the VM to stop; [`Self::wait`] then returns [`StopReason::Requested`] unless the
    /// guest stopped first.
    pub fn stop(&self) {
        self.control.stop();
    }

    /// Pauses the VM: returns once every vCPU is parked outside KVM_RUN (see
    /// [`VmControl::pause`]).
    pub fn pause(&self) {
        self.control.pause();
    }

    /// Lets a paused VM run again.
    pub fn resume(&self) {
        self.control.resume();
    }

    /// Whether the VM is paused.
    pub fn is_paused(&self) -> bool {
        self.control.is_paused()
    }

    /// A handle for other threads: pause, resume, stop, counters.
    pub fn control(&self) -> VmControl {
        self.control.clone()
    }

    /// Waits until the VM stops, joins every vCPU thread, and returns why it stopped.
    pub fn wait(self) -> StopReason {
        self.wait_with_counts().0
    }

    /// Like [`Self::wait`], also returning each vCPU's final exit counts.
    pub fn wait_with_counts(mut self) -> (StopReason, Vec<ExitCounts>) {
        let reason = self.state.wait();
        self.join_vcpus();
        (reason, self.exit_counts())
    }

    /// The VM's run state: whether a stop was asked for, and why.
    pub fn run_state(&self) -> Arc<RunState> {
        Arc::clone(&self.state)
    }

    /// Exits handled so far, per vCPU (index = vCPU ID).
    pub fn exit_counts(&self) -> Vec<ExitCounts> {
        self.control.exit_counts()
    }

    /// Guest accesses that hit no device so far: (port I/O, MMIO).
    pub fn unmapped_accesses(&self) -> (u64, u64) {
        self.control.unmapped_accesses()
    }

    /// Guest memory, for inspection by tests and tools.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// The KVM VM.
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm_fd
    }

    /// Prefix of this VM's vCPU thread names (`vm<N>-vcpu<M>`).
    pub fn thread_prefix(&self) -> &str {
        &self.thread_prefix
    }

    fn join_vcpus(&mut self) {
        // Parked vCPUs wake and see the stop.
        self.control.stop();
        // No kick from a VmControl reaches a thread from here on.
        self.control.lock_vcpus().clear();
        // A vCPU may be waiting on a vhost-user backend's reply: cut those connections so
        // it returns (the backends see the frontend go, as they would at the VM's end).
        for disconnector in self.disconnectors.drain(..) {
            disconnector.disconnect();
        }
        for thread in self.threads.drain(..) {
            // Re-kick until the thread is out: one signal may land before it enters KVM_RUN.
            while !thread.is_finished() {
                if let Err(err) = thread.kill(vcpu::kick_signal()) {
                    tracing::warn!(%err, "cannot kick a vCPU thread");
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            if thread.join().is_err() {
                tracing::error!("a vCPU thread panicked");
            }
        }
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        self.join_vcpus();
    }
}
