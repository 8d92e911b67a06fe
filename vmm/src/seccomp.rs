//! Seccomp filters for hull-vmm's threads, one per kind of thread as Firecracker has them:
//! the guest drives the vCPU threads (every exit is handled on them: port I/O, MMIO, the
//! virtio-mmio transport and its vhost-user messages), so a device bug a guest can reach
//! must find a thread that can do little besides KVM_RUN. A call outside a thread's list
//! kills the whole process (SIGSYS), which its parent sees as a signal exit.
//!
//! Each filter is installed by the thread it confines, once its set-up is done: a vCPU thread
//! before its first KVM_RUN ([`crate::vm::Vm::confine_vcpus`]), the main thread once the vCPUs
//! run (hull-vmm's `main`). What they were traced making (`strace -f` of the VMM's tests:
//! boots, a guest driving a vhost-user disk, SIGTERM, metrics readers), plus their error
//! and exit paths, is all they may make:
//! - both: memory (the allocator), futexes, signal returns, the thread's own exit, writes
//!   (the serial console, the log), and signals to this process only (the stop hook's
//!   SIGUSR1 to the main thread, the vCPU kick);
//! - vCPU threads: `ioctl` with KVM's vCPU and VM requests only (KVM_RUN, the register
//!   reads of error reports, interrupt lines); `sendmsg`/`recvmsg`/`read`/`poll` for the
//!   vhost-user frontend's messages, which a guest's driver writes set off;
//! - the main thread: the device loop (`io_uring_enter`; the ring is set up before the
//!   filter), its signalfd, the metrics and control sockets (`read`, `recvfrom`,
//!   `accept4`, `sendto`, timerfds, `FIONBIO`, socket options, `poll`), pausing vCPUs
//!   (`tgkill` with the kick, futexes), cutting vhost-user connections at the stop
//!   (`shutdown`), removing the sockets (`unlink`), and running the in-VMM vsock device's
//!   host side (`epoll_*`, `timerfd_settime`, accepting host streams, and `socket` for
//!   AF_UNIX only plus `connect` for guest connections to `<uds>_P`).
//!
//! Left out, which is the point: opening files, creating sockets other than unix ones (and
//! any socket or connection on a vCPU thread), execve,
//! fork and new threads, ptrace, mount and namespaces, bpf, module loading, keyctl,
//! process_vm_*, kexec, reboot. `HULL_SECCOMP=off` in the environment skips the filters
//! (with a warning), to find a call missing from a list; nothing else does.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A rule is malformed.
    #[error("building the {0} seccomp filter")]
    Build(&'static str, #[source] seccompiler::BackendError),
    /// The filter could not be compiled to BPF.
    #[error("compiling the {0} seccomp filter")]
    Compile(&'static str, #[source] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("installing the {0} seccomp filter")]
    Install(&'static str, #[source] seccompiler::Error),
}

/// The kinds of thread, each with its own list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread.
    Vcpu,
    /// hull-vmm's main thread, once the vCPUs run.
    Main,
}

impl ThreadKind {
    fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::Main => "main thread",
        }
    }
}

/// Calls every thread may make with any arguments.
const COMMON: &[libc::c_long] = &[
    // Memory (the allocator, thread stacks at exit).
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    // Output (the serial console, the log) and descriptors the thread owns.
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_read,
    libc::SYS_close,
    libc::SYS_fcntl,
    // Locks, signals, time, identity.
    libc::SYS_futex,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// What only vCPU threads may call (vhost-user messages), with any arguments.
const VCPU: &[libc::c_long] = &[
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_eventfd2,
];

/// What only the main thread may call, with any arguments.
const MAIN: &[libc::c_long] = &[
    // The device loop (its ring is set up before the filter).
    libc::SYS_io_uring_enter,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_accept4,
    // A control connection's request (std's UnixStream reads with recv).
    libc::SYS_recvfrom,
    // A control connection's time limit.
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_setsockopt,
    libc::SYS_shutdown,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    // The in-VMM vsock device's host side: its epoll set of host streams, its timer for
    // unanswered connection requests, and guest connections to `<uds>_P` (socket(2) is
    // allowed for AF_UNIX only, below).
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_timerfd_settime,
    libc::SYS_connect,
    // std reads sockets with recv(2).
    libc::SYS_recvfrom,
];

/// KVM's ioctl requests a vCPU thread makes: running, the register reads of error reports,
/// and what devices on the exit path may ask of the VM (interrupt lines, MSIs, kicks and
/// interrupts wired on activation). Computed as the kernel's _IO/_IOR/_IOW macros do.
fn vcpu_ioctls() -> Vec<u64> {
    use kvm_bindings::KVMIO;
    use vmm_sys_util::ioctl::{ioctl_expr, _IOC_NONE, _IOC_READ, _IOC_WRITE};
    // The structures are a few hundred bytes at most: they fit _IOC_SIZEBITS.
    let size = |bytes: usize| u32::try_from(bytes).unwrap_or(u32::MAX);
    let ior = |nr: u32, bytes: usize| ioctl_expr(_IOC_READ, KVMIO, nr, size(bytes));
    let iow = |nr: u32, bytes: usize| ioctl_expr(_IOC_WRITE, KVMIO, nr, size(bytes));
    vec![
        // KVM_RUN
        ioctl_expr(_IOC_NONE, KVMIO, 0x80, 0),
        // KVM_GET_REGS, KVM_GET_SREGS
        ior(0x81, std::mem::size_of::<kvm_bindings::kvm_regs>()),
        ior(0x83, std::mem::size_of::<kvm_bindings::kvm_sregs>()),
        // KVM_IRQ_LINE
        iow(0x61, std::mem::size_of::<kvm_bindings::kvm_irq_level>()),
        // KVM_SIGNAL_MSI
        iow(0xa5, std::mem::size_of::<kvm_bindings::kvm_msi>()),
        // KVM_IRQFD, KVM_IOEVENTFD
        iow(0x76, std::mem::size_of::<kvm_bindings::kvm_irqfd>()),
        iow(0x79, std::mem::size_of::<kvm_bindings::kvm_ioeventfd>()),
    ]
}

fn rule(kind: ThreadKind, conditions: Vec<SeccompCondition>) -> Result<SeccompRule, Error> {
    SeccompRule::new(conditions).map_err(|e| Error::Build(kind.name(), e))
}

fn condition(
    kind: ThreadKind,
    index: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, Error> {
    SeccompCondition::new(index, len, op, value).map_err(|e| Error::Build(kind.name(), e))
}

/// The filter for threads of `kind` of process `pid` (signals may go to it only), as BPF.
pub fn filter(kind: ThreadKind, pid: libc::pid_t) -> Result<BpfProgram, Error> {
    use SeccompCmpArgLen::{Dword, Qword};
    use SeccompCmpOp::Eq;
    let extra = match kind {
        ThreadKind::Vcpu => VCPU,
        ThreadKind::Main => MAIN,
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON
        .iter()
        .chain(extra)
        .map(|call| (*call, Vec::new()))
        .collect();
    let pid = u64::from(pid.unsigned_abs());
    // Signals to this process only: kill(pid, ...) from the stop hook, tgkill(pid, tid, ...)
    // kicking a vCPU.
    rules.insert(
        libc::SYS_kill,
        vec![rule(kind, vec![condition(kind, 0, Dword, Eq, pid)?])?],
    );
    rules.insert(
        libc::SYS_tgkill,
        vec![rule(kind, vec![condition(kind, 0, Dword, Eq, pid)?])?],
    );
    if kind == ThreadKind::Main {
        rules.insert(
            libc::SYS_socket,
            vec![rule(
                kind,
                vec![condition(kind, 0, Dword, Eq, libc::AF_UNIX as u64)?],
            )?],
        );
    }
    let ioctls: Vec<u64> = match kind {
        ThreadKind::Vcpu => vcpu_ioctls(),
        // Making an accepted metrics connection blocking.
        ThreadKind::Main => vec![libc::FIONBIO],
    };
    let ioctl_rules = ioctls
        .into_iter()
        .map(|request| rule(kind, vec![condition(kind, 1, Qword, Eq, request)?]))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctl_rules);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| Error::Build(kind.name(), e))?;
    filter
        .try_into()
        .map_err(|e| Error::Compile(kind.name(), e))
}

/// Drops every capability of the calling thread, and of the threads it starts from now on,
/// from every set (the bounding set too, so nothing could regain them): hull-vmm calls it
/// once /dev/kvm, guest memory and the backends' sockets are open, before the vCPUs start.
/// Its uid stays 0.
pub fn drop_capabilities() -> Result<(), caps::errors::CapsError> {
    use caps::CapSet;
    // Bounding first: dropping from it needs CAP_SETPCAP, which the clears below take away.
    for cap in caps::runtime::thread_all_supported() {
        caps::drop(None, CapSet::Bounding, cap)?;
    }
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set)?;
    }
    Ok(())
}

/// Whether the filters are on: not when `HULL_SECCOMP=off` (logged).
pub fn enabled() -> bool {
    let off = std::env::var("HULL_SECCOMP").is_ok_and(|v| v == "off");
    if off {
        tracing::warn!("HULL_SECCOMP=off: hull-vmm's threads run without their seccomp filters");
    }
    !off
}

/// Installs `program` (a [`ThreadKind`]'s filter) on the calling thread.
pub fn apply(kind: ThreadKind, program: &BpfProgram) -> Result<(), Error> {
    seccompiler::apply_filter(program).map_err(|e| Error::Install(kind.name(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forks; the child installs `kind`'s filter (for its own pid), makes `call` and exits 0
    /// if the call returned at all (whatever it answered), 2 if the filter could not be
    /// installed. Returns the child's wait status.
    fn after_filter(kind: ThreadKind, call: fn() -> libc::c_long) -> libc::c_int {
        // SAFETY: the child builds the filter (glibc's malloc is safe to use after fork),
        // installs it, makes one raw system call and _exits, touching nothing else of the
        // parent's state.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // SAFETY: getpid has no preconditions.
            let me = unsafe { libc::getpid() };
            let code = match filter(kind, me).and_then(|program| apply(kind, &program)) {
                Ok(()) => {
                    call();
                    0
                }
                Err(_) => 2,
            };
            // SAFETY: _exit ends the child at once.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked, writing into a local.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid);
        status
    }

    fn killed_by_sigsys(status: libc::c_int) -> bool {
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS
    }

    fn exited_cleanly(status: libc::c_int) -> bool {
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
    }

    #[test]
    fn both_filters_build() {
        for kind in [ThreadKind::Vcpu, ThreadKind::Main] {
            let program = filter(kind, 1).unwrap();
            assert!(!program.is_empty(), "{kind:?}");
        }
    }

    #[test]
    fn opening_a_file_kills_either_kind_of_thread() {
        for kind in [ThreadKind::Vcpu, ThreadKind::Main] {
            let status = after_filter(kind, || {
                // SAFETY: a raw openat of a constant NUL-terminated path.
                unsafe {
                    libc::syscall(
                        libc::SYS_openat,
                        libc::AT_FDCWD,
                        c"/etc/hostname".as_ptr(),
                        libc::O_RDONLY,
                    )
                }
            });
            assert!(killed_by_sigsys(status), "{kind:?}: status {status:#x}");
        }
    }

    #[test]
    fn execve_socket_and_clone_kill_a_vcpu_thread() {
        let calls: [fn() -> libc::c_long; 3] = [
            hull_tests::forbidden::execve_bin_true,
            // SAFETY: a raw socket(2) with constant arguments.
            || unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) },
            // SAFETY: a raw clone without a new stack only makes a child that exits at once
            // (it is killed before then: the filter refuses the call).
            || unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) },
        ];
        for (index, call) in calls.into_iter().enumerate() {
            let status = after_filter(ThreadKind::Vcpu, call);
            assert!(killed_by_sigsys(status), "call {index}: status {status:#x}");
        }
    }

    #[test]
    fn a_vcpu_thread_may_run_kvm_but_not_make_other_ioctls() {
        // KVM_RUN on fd -1 passes the filter and fails with EBADF: the child exits cleanly.
        let status = after_filter(ThreadKind::Vcpu, || {
            let run = vcpu_ioctls()[0];
            // SAFETY: ioctl on an invalid fd; the kernel answers EBADF.
            unsafe { libc::syscall(libc::SYS_ioctl, -1, run, 0) }
        });
        assert!(exited_cleanly(status), "KVM_RUN: status {status:#x}");
        // KVM_CREATE_VM (another VM) and TIOCSTI (typing into a terminal) do not.
        let status = after_filter(ThreadKind::Vcpu, || {
            let create_vm = vmm_sys_util::ioctl::ioctl_expr(
                vmm_sys_util::ioctl::_IOC_NONE,
                kvm_bindings::KVMIO,
                0x01,
                0,
            );
            // SAFETY: ioctl on an invalid fd; the filter acts first.
            unsafe { libc::syscall(libc::SYS_ioctl, -1, create_vm, 0) }
        });
        assert!(
            killed_by_sigsys(status),
            "KVM_CREATE_VM: status {status:#x}"
        );
        let status = after_filter(ThreadKind::Vcpu, || {
            // SAFETY: ioctl on an invalid fd; the filter acts first.
            unsafe { libc::syscall(libc::SYS_ioctl, -1, libc::TIOCSTI, 0) }
        });
        assert!(killed_by_sigsys(status), "TIOCSTI: status {status:#x}");
    }

    #[test]
    fn the_main_thread_may_wait_on_its_ring_and_read_sockets_but_a_vcpu_may_not_use_a_ring() {
        // io_uring_enter on fd -1 passes the main thread's filter and fails with EBADF.
        let enter: fn() -> libc::c_long = || {
            // SAFETY: io_uring_enter on an invalid fd; the kernel answers EBADF.
            unsafe { libc::syscall(libc::SYS_io_uring_enter, -1, 0, 0, 0, 0, 0) }
        };
        assert!(exited_cleanly(after_filter(ThreadKind::Main, enter)));
        assert!(killed_by_sigsys(after_filter(ThreadKind::Vcpu, enter)));
        let recv: fn() -> libc::c_long = || {
            // SAFETY: recvfrom on an invalid fd with no buffer; the kernel answers EBADF.
            unsafe { libc::syscall(libc::SYS_recvfrom, -1, 0, 0, 0, 0, 0) }
        };
        assert!(exited_cleanly(after_filter(ThreadKind::Main, recv)));
        // Neither may set up a ring of its own.
        for kind in [ThreadKind::Main, ThreadKind::Vcpu] {
            let status = after_filter(kind, || {
                // SAFETY: io_uring_setup with no parameters; the filter acts first.
                unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, 0) }
            });
            assert!(killed_by_sigsys(status), "{kind:?}: status {status:#x}");
        }
    }

    #[test]
    fn signals_may_go_to_this_process_only() {
        // kill(getpid(), 0) passes; kill(1, 0) is refused.
        let status = after_filter(ThreadKind::Main, || {
            // SAFETY: signal 0 only checks that the process exists.
            unsafe { libc::syscall(libc::SYS_kill, libc::getpid(), 0) }
        });
        assert!(exited_cleanly(status), "own pid: status {status:#x}");
        let status = after_filter(ThreadKind::Main, || {
            // SAFETY: as above; the filter acts before the kernel.
            unsafe { libc::syscall(libc::SYS_kill, 1, 0) }
        });
        assert!(killed_by_sigsys(status), "pid 1: status {status:#x}");
    }

    #[test]
    fn the_main_thread_may_open_unix_sockets_only() {
        // SAFETY: a raw socket(2) with constant arguments; the child exits right after.
        let status = after_filter(ThreadKind::Main, || unsafe {
            libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM, 0)
        });
        assert!(exited_cleanly(status), "AF_UNIX: status {status:#x}");
        // SAFETY: as above; the filter acts before the kernel.
        let status = after_filter(ThreadKind::Main, || unsafe {
            libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0)
        });
        assert!(killed_by_sigsys(status), "AF_INET: status {status:#x}");
        let status = after_filter(ThreadKind::Vcpu, || {
            // SAFETY: as above.
            unsafe { libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM, 0) }
        });
        assert!(killed_by_sigsys(status), "vCPU AF_UNIX: status {status:#x}");
    }
}
