//! The built-in VMM in the shim's own process (`vm.builtin_process = "shim"`), as Kata's
//! Dragonball runs in its shim: a pod is the shim's event-loop thread plus one thread per
//! vCPU, nothing else (ARCHITECTURE.md: "1 + N vCPUs").
//!
//! The VM is assembled by [`hull_vmm::launch`], as hull-vmm does it. Its device loop (the
//! in-VMM vsock device's sockets and queue notifications) is not a thread: its io_uring's
//! descriptor is registered with the shim's tokio reactor, and a task turns the loop
//! ([`DeviceLoop::turn_nowait`]) whenever completions wait, on the shim's one thread. The
//! guest's serial console goes to `console.log` in the VM's run directory.
//!
//! The VM's stop (the guest powered off or reset, a vCPU failed, a stop was asked for) runs
//! the run state's stop hook on whichever thread stopped it: it writes an eventfd, which
//! [`InProcessVm::wait`] and the sandbox's watch ([`InProcessVm::watch`]) await on the event
//! loop, and wakes the device loop so its task ends.
//!
//! Trade-offs, against the child `hull-vmm` (`vm.builtin_process = "hull-vmm"`):
//! - confinement: the vCPU threads install hull-vmm's vCPU seccomp filter before their first
//!   KVM_RUN (a guest reaches the device code on them), but the shim's own thread gets no
//!   VMM filter and keeps its capabilities, which the shim needs (mounts, network namespaces,
//!   cgroups): a bug in the device loop's code runs with the shim's privileges.
//! - blocking: the set-up (connecting to the vhost-user backends, reading the kernel) and the
//!   stop (joining the vCPU threads, which leave KVM_RUN within milliseconds of their kick)
//!   run on the event loop's thread. Both are short and happen once per pod; a backend
//!   that accepts the frontend's connection and then stops answering holds the thread until
//!   the set-up's deadline (hull_vmm's `SETUP_DEADLINE`, 10 s), when a watchdog cuts the
//!   connection and the boot fails naming the backend.
//! - fate sharing: a VM outlives no shim: if the shim dies, its VMs die with it, so there is
//!   nothing to record for a later `shim delete` to kill (no pid).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hull_vmm::event_loop::{DeviceLoop, Registrar};
use hull_vmm::launch::{self, LaunchConfig};
use hull_vmm::lifecycle::{RunState, StopReason};
use hull_vmm::seccomp::ThreadKind;
use hull_vmm::vm::{RunningVm, VmControl};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::task::JoinHandle;
use vmm_sys_util::eventfd::EventFd;

use super::{create_run_dir, devices, run_file, Device, Error, Result};
use crate::run_dir::RunDir;
use crate::sandbox::watch::VmStatus;
use crate::vm_spec::VmSpec;

/// A VM run by the shim's own process. Dropping it stops the VM and joins its vCPUs;
/// [`InProcessVm::stop`] is the orderly way.
pub struct InProcessVm {
    /// Taken by the stop, which joins the vCPU threads.
    running: Option<RunningVm>,
    control: VmControl,
    state: Arc<RunState>,
    registrar: Registrar,
    /// Readable once the VM stops (never read: it stays readable).
    stopped: AsyncFd<EventFd>,
    /// The task turning the device loop; answers the loop when it ends (at the VM's stop).
    device_loop: Option<JoinHandle<DeviceLoop>>,
    thread_prefix: String,
    vcpus: u8,
    run_dir: RunDir,
}

impl std::fmt::Debug for InProcessVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessVm")
            .field("threads", &self.thread_prefix)
            .field("vcpus", &self.vcpus)
            .field("run_dir", &self.run_dir.path())
            .finish_non_exhaustive()
    }
}

/// The device loop, polled by the reactor through its ring's descriptor.
struct Ring(DeviceLoop);

impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        self.0.ring_fd()
    }
}

/// Registers `io` with the shim's reactor, for readability.
fn register<T: AsRawFd>(io: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: `io` owns its descriptor (an eventfd, a device loop's ring), which stays open
    // while the AsyncFd holds it, and its as_raw_fd always answers that same descriptor; the
    // AsyncFd deregisters it before dropping `io`.
    unsafe { AsyncFd::register_with_interest(io, Interest::READABLE) }.map_err(Into::into)
}

impl InProcessVm {
    /// Starts the VM of `spec` in this process, its vsock device getting guest context id
    /// `cid`, with its files in `run_dir` (created 0700, must not exist; the guest console
    /// in `console.log`). Must be called within the shim's tokio runtime, whose thread then
    /// serves the VM's devices. A VM that cannot start (a kernel it cannot load, a backend
    /// that is not there) is an error naming why, and leaves nothing: no thread, no
    /// descriptor, no run directory.
    pub fn start(spec: &VmSpec, cid: u32, run_dir: &Path) -> Result<Self> {
        let vcpus =
            u8::try_from(spec.vcpus).map_err(|_| Error::Unsupported("run over 255 vCPUs"))?;
        let mut vhost_user = Vec::new();
        let mut vsock = None;
        for device in devices(spec, cid)? {
            match device {
                Device::VhostUser(socket, kind) => vhost_user.push((socket, kind)),
                Device::InVmmVsock { uds, cid } => vsock = Some((uds, cid)),
            }
        }
        let run_dir = create_run_dir(run_dir)?;
        let console = run_file(&run_dir, "console.log")?;
        tracing::info!(vm = %spec.id, vcpus, "starting the VM in the shim's process");
        let mut prepared = launch::prepare(LaunchConfig {
            kernel: spec.kernel.clone(),
            // An empty path: no initrd (a guest that needs none, as the tests' small ones).
            initrd: (!spec.initrd.as_os_str().is_empty()).then(|| spec.initrd.clone()),
            cmdline: spec.kernel_params.join(" "),
            memory_mib: u64::from(spec.memory_mib),
            vcpus,
            hidden_cpu_features: Vec::new(),
            vhost_user,
            vsock,
            serial: Box::new(console),
        })?;
        let event = || EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC);
        let stop_event = event().map_err(Error::EventLoop)?;
        let hook_event = stop_event.try_clone().map_err(Error::EventLoop)?;
        let device_loop = prepared.device_loop(move || {
            let _ = hook_event.write(1);
        })?;
        let stopped = register(stop_event).map_err(Error::EventLoop)?;
        if hull_vmm::seccomp::enabled() {
            let pid = nix_pid();
            prepared
                .vm_mut()
                .confine_vcpus(hull_vmm::seccomp::filter(ThreadKind::Vcpu, pid)?);
        }
        // The VM's counters beside the backends', where the pod's metrics gather them (the
        // sandbox's run directory, this one's parent), as hull-vmm serves them.
        let metrics = match run_dir.path().parent() {
            Some(sandbox_dir) => {
                let path = crate::monitor::backend_metrics_socket(sandbox_dir, "hull-vmm");
                Some(hull_metrics::MetricsListener::bind(&path).map_err(Error::EventLoop)?)
            }
            None => None,
        };
        let state = prepared.run_state();
        let launched = prepared.start()?;
        if let Some(listener) = metrics {
            if let Err(err) = launched.serve_metrics(listener) {
                let err = anyhow::Error::from(err);
                tracing::warn!("the VM's counters are not served: {err:#}");
            }
        }
        let control = launched.running.control();
        let ring = match register(Ring(device_loop)) {
            Ok(ring) => ring,
            Err(err) => {
                // Dropping the running VM stops it and joins its vCPUs.
                drop(launched);
                return Err(Error::EventLoop(err));
            }
        };
        let task = tokio::spawn(drive(ring, Arc::clone(&state), control.clone()));
        Ok(Self {
            thread_prefix: launched.running.thread_prefix().to_owned(),
            running: Some(launched.running),
            control,
            state,
            registrar: launched.registrar,
            stopped,
            device_loop: Some(task),
            vcpus,
            run_dir,
        })
    }

    /// The file the guest's serial console is written to.
    pub fn console_log(&self) -> PathBuf {
        self.run_dir.path().join("console.log")
    }

    /// The names of the VM's vCPU threads start with this (`vm<N>-vcpu<M>`).
    pub fn thread_prefix(&self) -> &str {
        &self.thread_prefix
    }

    /// Why the VM stopped, once it has.
    pub fn stop_reason(&self) -> Option<StopReason> {
        // A stop asked for has its reason recorded, or about to be under the lock `wait`
        // takes: it returns at once.
        self.state.stop_requested().then(|| self.state.wait())
    }

    /// Waits until the VM stops by itself (the guest stopped, a vCPU failed) or is asked
    /// to, and says why. Cancel-safe; answers at once when called again after the stop.
    pub async fn wait(&self) -> Result<StopReason> {
        let guard = self.stopped.readable().await.map_err(Error::EventLoop)?;
        // The eventfd stays readable: nothing is cleared, so a later wait answers too.
        drop(guard);
        Ok(self.state.wait())
    }

    /// A watch of the VM's stop for the running sandbox ([`crate::sandbox::watch`]): a
    /// descriptor of its own that turns readable when the VM stops, and the VM's status.
    pub fn watch(&self) -> Result<(OwnedFd, Arc<dyn VmStatus>)> {
        let raw = self.stopped.get_ref().as_raw_fd();
        // SAFETY: the eventfd stays open while `self.stopped` lives, which outlasts this
        // borrow; the descriptor answered is a dup of it, owned by the caller.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) }
            .try_clone_to_owned()
            .map_err(Error::EventLoop)?;
        let status = Status {
            control: self.control.clone(),
            state: Arc::clone(&self.state),
        };
        Ok((fd, Arc::new(status)))
    }

    /// Stops the VM and joins its vCPU threads (they leave KVM_RUN within milliseconds of
    /// their kick: joining on the event loop's thread is acceptable), then ends the device
    /// loop (its sockets' files go with it). Returns why the VM stopped. Idempotent.
    async fn end(&mut self, grace: Duration) -> StopReason {
        self.control.stop();
        let reason = match self.running.take() {
            Some(running) => running.wait(),
            None => self.state.wait(),
        };
        if let Some(task) = self.device_loop.take() {
            let abort = task.abort_handle();
            match tokio::time::timeout(grace, task).await {
                Ok(Ok(device_loop)) => drop(device_loop),
                Ok(Err(err)) => tracing::warn!(%err, "the VM's device loop task failed"),
                Err(_) => {
                    tracing::warn!(?grace, "the VM's device loop did not end; aborted");
                    abort.abort();
                }
            }
        }
        // Sources added after the loop's last turn.
        drop(self.registrar.take());
        reason
    }

    /// Stops the VM (a failed boot's end): its vCPU threads are joined and its device loop
    /// ended when this returns.
    pub async fn kill(&mut self) {
        let reason = self.end(Duration::from_secs(5)).await;
        tracing::debug!(%reason, "VM in the shim stopped");
    }

    /// Stops the VM, waiting up to `grace` for its device loop, and removes its run
    /// directory. Returns why it stopped (the guest may have stopped first).
    pub async fn stop(mut self, grace: Duration) -> StopReason {
        self.end(grace).await
    }
}

impl Drop for InProcessVm {
    fn drop(&mut self) {
        self.control.stop();
        // Joins the vCPU threads.
        drop(self.running.take());
        if let Some(task) = self.device_loop.take() {
            task.abort();
        }
    }
}

/// The shim's process id, for the vCPU filter (signals may go to this process only).
fn nix_pid() -> libc::pid_t {
    // SAFETY: getpid(2) cannot fail and touches no memory.
    unsafe { libc::getpid() }
}

/// Turns `device_loop` whenever its ring is readable, until the VM stops; answers the loop,
/// for its owner to drop once the vCPUs are joined. A loop that fails stops the VM rather
/// than leave it unreachable.
async fn drive(mut ring: AsyncFd<Ring>, state: Arc<RunState>, control: VmControl) -> DeviceLoop {
    loop {
        if let Err(err) = ring.get_mut().0.turn_nowait() {
            let err = anyhow::Error::from(err);
            tracing::error!("the VM's device loop failed, stopping the VM: {err:#}");
            control.stop();
            break;
        }
        // The stop hook woke the loop: the turn above was its last.
        if state.stop_requested() {
            break;
        }
        match ring.readable_mut().await {
            // Completions after this are seen by the next turn, or make it readable again.
            Ok(mut guard) => guard.clear_ready(),
            Err(err) => {
                tracing::error!(%err, "cannot poll the VM's device loop, stopping the VM");
                control.stop();
                break;
            }
        }
    }
    // Deregistered before the ring closes.
    ring.into_inner().0
}

/// What the sandbox's watch knows of an in-process VM.
#[derive(Debug)]
struct Status {
    control: VmControl,
    state: Arc<RunState>,
}

impl VmStatus for Status {
    fn stop_reason(&self) -> Option<String> {
        self.state
            .stop_requested()
            .then(|| self.state.wait().to_string())
    }

    fn stop(&self) {
        self.control.stop();
    }
}
