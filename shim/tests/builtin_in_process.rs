//! The built-in VMM in the shim's own process (`vm.builtin_process = "shim"`) with small
//! guests, which run under KVM without hardware virtualization: the guest's console reaches
//! the VM's console file, the process has one more thread per vCPU while the VM runs (the
//! shim's own thread, here the test's runtime thread, drives the device loop), and after the
//! stop no thread and no descriptor is left. A guest that stops by itself is seen by `wait`
//! and by the running sandbox's watch.
//!
//! One test in this binary: it counts the threads and descriptors of its whole process, so
//! no other test may run beside it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_shim::sandbox::watch::{ProcessWatch, BUILTIN_VMM_ROLE};
use hull_shim::vm_spec::{VmDevice, VmSpec};
use hull_shim::vmm::in_process::InProcessVm;
use hull_tests::prereq::kvm;
use hull_tests::require;
use hull_tests::tiny_guest::{print, tiny_kernel, HALT, RESET};
use hull_vmm::lifecycle::StopReason;

fn entries(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

/// The process's threads, without the kernel's own worker KVM attaches to a process with a
/// VM (`kvm-nx-lpage-recovery`, Linux 6.x): every VMM has it, hull-vmm and QEMU too.
fn threads() -> usize {
    thread_names()
        .iter()
        .filter(|name| !name.starts_with("kvm-"))
        .count()
}

/// The names of the process's threads, for a failure's message.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

/// A pod's VM spec for `kernel`, with the VMM's own vsock device on `uds`.
fn spec(kernel: PathBuf, vcpus: u32, uds: &Path) -> VmSpec {
    VmSpec {
        id: "tiny".into(),
        kernel,
        initrd: PathBuf::new(),
        kernel_params: vec!["console=ttyS0".into()],
        vcpus,
        memory_mib: 32,
        devices: vec![VmDevice::HybridVsock {
            uds: uds.to_owned(),
        }],
    }
}

/// Waits (bounded) until `file` holds `text`.
async fn console_shows(file: &Path, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let console = std::fs::read_to_string(file).unwrap_or_default();
        if console.contains(text) || Instant::now() > deadline {
            return console;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_vmm_in_the_shim_runs_a_guest_on_one_thread_per_vcpu_and_leaves_nothing() {
    let test = "the_vmm_in_the_shim_runs_a_guest_on_one_thread_per_vcpu_and_leaves_nothing";
    require!(test, kvm());
    let dir = tempfile::tempdir().unwrap();
    let before = threads();
    let fds = entries("/proc/self/fd");

    // A guest that prints and halts: it runs until stopped.
    let halting = dir.path().join("halting");
    let mut code = print(b"hello from the guest\n");
    code.extend_from_slice(&HALT);
    std::fs::write(&halting, tiny_kernel(&code)).unwrap();
    let uds = dir.path().join("agent.vsock");
    let run_dir = dir.path().join("vm");
    let vm = InProcessVm::start(&spec(halting, 2, &uds), 3, &run_dir).expect("the VM starts");
    let console = console_shows(&vm.console_log(), "hello from the guest\n").await;
    assert_eq!(console, "hello from the guest\n");
    assert_eq!(
        threads(),
        before + 2,
        "one thread per vCPU, nothing else (the device loop runs on this thread): {:?}",
        thread_names()
    );
    assert!(uds.exists(), "the vsock device's hybrid socket is served");
    // The device loop runs on this thread's event loop: it answers the VM's metrics socket
    // (beside the backends', in the sandbox's directory), the guest's console writes and
    // the vsock device's counters among them.
    let metrics = hull_shim::monitor::backend_metrics_socket(dir.path(), "hull-vmm");
    let mut stream = tokio::net::UnixStream::connect(&metrics).await.unwrap();
    let mut text = String::new();
    tokio::time::timeout(
        Duration::from_secs(60),
        tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut text),
    )
    .await
    .expect("the device loop answers")
    .unwrap();
    assert!(
        text.contains("hull_vmm_vcpu_exits_total{vcpu=\"0\",kind=\"pio_out\"} 21"),
        "{text}"
    );
    assert!(text.contains("hull_vsock_"), "{text}");
    drop(stream);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), vm.wait())
            .await
            .is_err(),
        "a halted guest is not a stopped VM"
    );
    let reason = vm.stop(Duration::from_secs(10)).await;
    assert_eq!(reason, StopReason::Requested);
    assert_eq!(threads(), before, "the vCPU threads are joined");
    assert!(!run_dir.exists(), "the VM's run directory is removed");
    assert!(!uds.exists(), "the hybrid socket goes with the device");
    assert!(!metrics.exists(), "the metrics socket goes with the loop");
    assert_eq!(entries("/proc/self/fd"), fds, "no descriptor is left");

    // A guest that resets the machine: its VM stops by itself, and wait sees why.
    let resetting = dir.path().join("resetting");
    let mut code = print(b"bye\n");
    code.extend_from_slice(&RESET);
    std::fs::write(&resetting, tiny_kernel(&code)).unwrap();
    let vm = InProcessVm::start(&spec(resetting, 1, &uds), 3, &run_dir).expect("the VM starts");
    // The running sandbox's watch of it: the VM has no pid, its stop is the VMM's death.
    let (stopped, status) = vm.watch().unwrap();
    let watch = ProcessWatch::vm(BUILTIN_VMM_ROLE, stopped, status).unwrap();
    let death = tokio::time::timeout(Duration::from_secs(60), watch.exited())
        .await
        .expect("the watch sees the VM stop");
    assert_eq!(
        death.to_string(),
        "hull-vmm in the shim stopped: the guest reset the machine (i8042)"
    );
    drop(watch);
    let reason = tokio::time::timeout(Duration::from_secs(60), vm.wait())
        .await
        .expect("the guest's reset stops the VM")
        .unwrap();
    assert_eq!(reason, StopReason::I8042Reset);
    assert_eq!(vm.stop_reason(), Some(StopReason::I8042Reset));
    let console = std::fs::read_to_string(vm.console_log()).unwrap();
    assert_eq!(console, "bye\n");
    assert_eq!(
        vm.stop(Duration::from_secs(10)).await,
        StopReason::I8042Reset
    );
    assert_eq!(threads(), before, "the vCPU thread is joined");
    assert_eq!(entries("/proc/self/fd"), fds, "no descriptor is left");
}
