//! The system calls a backend may make, enforced by a seccomp filter every backend binary
//! installs (on all its threads) before it serves a frontend: the guest drives the backend,
//! so a backend subverted through a device bug must not reach the rest of the host. A call
//! outside the list kills the process (SIGSYS), which its parent sees as a signal exit.
//!
//! One list for the three backends (what hull-blk, hull-vsock and hull-net were traced making
//! through their test suites, QEMU guests included, plus what their error and exit paths
//! call): what it leaves out is the point: execve, ptrace, mount, module loading, bpf,
//! keyctl, namespace creation, process_vm_*, kexec, reboot and the rest. `setns` is allowed
//! for network namespaces only (hull-net reads its tap's MTU in the tap's namespace).
//!
//! io_uring operations submitted through `io_uring_enter` are not seen by seccomp, so
//! hull-blk's rings are restricted to the READV/WRITEV/FSYNC it submits (see
//! crate::restricted_ring): an open or connect through them fails with EACCES.
//!
//! `HULL_SECCOMP=off` in the environment skips the filter (with a warning), to find a call
//! missing from the list; nothing else does.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Errors building or installing the filter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The filter could not be built (a rule is malformed).
    #[error("building the seccomp filter")]
    Build(#[source] seccompiler::BackendError),
    /// The filter could not be compiled to BPF.
    #[error("compiling the seccomp filter")]
    Compile(#[source] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("installing the seccomp filter")]
    Install(#[source] seccompiler::Error),
}

/// Calls allowed with any arguments.
const ALLOWED: &[libc::c_long] = &[
    // Memory.
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    // Descriptors and files (the disk, the tap, sockets, /proc and /sys reads).
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_lseek,
    libc::SYS_openat,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_ioctl,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_access,
    libc::SYS_readlink,
    libc::SYS_getdents64,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_ftruncate,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_rmdir,
    libc::SYS_pipe2,
    // Event loops and wake-ups.
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_eventfd2,
    libc::SYS_signalfd4,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    // Sockets (the vhost-user socket, hybrid vsock, hull-net's relay).
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_shutdown,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    // Threads (one per queue), signals and time.
    libc::SYS_clone3,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
    libc::SYS_restart_syscall,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_getrandom,
    libc::SYS_prlimit64,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // Dropping capabilities after set-up (crate::privileges).
    libc::SYS_capget,
    libc::SYS_capset,
];

/// The filter as BPF: [`ALLOWED`], `clone` for threads only, `setns` for network namespaces
/// only, `kcmp` for comparing files only, `prctl` for thread names and dropping capabilities only; everything else kills the
/// process.
pub fn filter() -> Result<BpfProgram, Error> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|call| (*call, Vec::new())).collect();
    let arg_is = |index: u8, value: u64| {
        SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
            .and_then(|condition| SeccompRule::new(vec![condition]))
            .map_err(Error::Build)
    };
    let arg_has = |index: u8, mask: u64| {
        SeccompCondition::new(
            index,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(mask),
            mask,
        )
        .and_then(|condition| SeccompRule::new(vec![condition]))
        .map_err(Error::Build)
    };
    // Old-style clone: only to make a thread (glibc uses clone3, but may fall back).
    rules.insert(
        libc::SYS_clone,
        vec![arg_has(0, libc::CLONE_THREAD as u64)?],
    );
    rules.insert(libc::SYS_setns, vec![arg_is(1, libc::CLONE_NEWNET as u64)?]);
    // Comparing two open files (KCMP_FILE), before closing an exit event vhost-user-backend
    // leaked (see crate::exit_events).
    rules.insert(libc::SYS_kcmp, vec![arg_is(2, 0)?]);
    // Thread names, and the capability calls of dropping privileges after set-up (see
    // crate::privileges): they can only take capabilities away.
    rules.insert(
        libc::SYS_prctl,
        vec![
            arg_is(0, libc::PR_SET_NAME as u64)?,
            arg_is(0, libc::PR_GET_NAME as u64)?,
            arg_is(0, libc::PR_CAPBSET_READ as u64)?,
            arg_is(0, libc::PR_CAPBSET_DROP as u64)?,
            arg_is(0, libc::PR_CAP_AMBIENT as u64)?,
        ],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(Error::Build)?;
    filter.try_into().map_err(Error::Compile)
}

/// Installs the filter on every thread of the process, unless `HULL_SECCOMP=off`.
pub fn install(name: &str) -> Result<(), Error> {
    if std::env::var("HULL_SECCOMP").is_ok_and(|v| v == "off") {
        tracing::warn!("{name}: HULL_SECCOMP=off: running without the seccomp filter");
        return Ok(());
    }
    let program = filter()?;
    seccompiler::apply_filter_all_threads(&program).map_err(Error::Install)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `call` in a forked child under the filter; answers how the child ended.
    fn in_filtered_child(call: fn() -> libc::c_long) -> libc::c_int {
        let program = filter().expect("the filter builds");
        // SAFETY: the child only installs the filter (prctl/seccomp calls on a prebuilt
        // program), makes one raw system call and exits; it touches no lock the parent's
        // other threads could hold.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            if seccompiler::apply_filter(&program).is_err() {
                // SAFETY: _exit ends the child at once.
                unsafe { libc::_exit(2) };
            }
            let rc = call();
            // SAFETY: as above.
            unsafe { libc::_exit(if rc < 0 { 1 } else { 0 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked, writing into a local.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid);
        status
    }

    #[test]
    fn a_call_outside_the_list_kills_the_process_with_sigsys() {
        // unshare(CLONE_NEWNS): what an attacker would need to remount anything.
        let status = in_filtered_child(|| {
            // SAFETY: a raw unshare with a flag; the child exits right after.
            unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_NEWNS) }
        });
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }

    #[test]
    fn execve_kills_the_process() {
        let status = in_filtered_child(hull_tests::forbidden::execve_bin_true);
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }

    #[test]
    fn setns_is_refused_for_a_mount_namespace_but_allowed_calls_run() {
        let status = in_filtered_child(|| {
            // SAFETY: setns on fd -1 with CLONE_NEWNS; the filter acts before the kernel
            // would answer EBADF.
            unsafe { libc::syscall(libc::SYS_setns, -1, libc::CLONE_NEWNS) }
        });
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS);
        let status = in_filtered_child(|| {
            // SAFETY: getpid has no preconditions.
            unsafe { libc::syscall(libc::SYS_getpid) }
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{status:#x}"
        );
        let status = in_filtered_child(|| {
            // SAFETY: setns on fd -1 with CLONE_NEWNET passes the filter and fails with EBADF.
            unsafe { libc::syscall(libc::SYS_setns, -1, libc::CLONE_NEWNET) }
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 1,
            "{status:#x}"
        );
    }
}
