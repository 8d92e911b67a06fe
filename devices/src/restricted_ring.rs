//! io_uring rings that can only do what their owner needs.
//!
//! seccomp does not see what a ring does: an operation submitted through `io_uring_enter` runs
//! in the kernel without the system call it stands for, so a process whose filter forbids
//! `openat` or `connect` could still open or connect through a ring (IORING_OP_OPENAT,
//! IORING_OP_CONNECT) if its filter allows `io_uring_enter`, as hull-blk's and hull-vmm's do.
//! A ring built here is created disabled, given an allow-list of operations and submission
//! flags (IORING_REGISTER_RESTRICTIONS, Linux 5.10), then enabled: any other operation
//! completes with `-EACCES`, and no `io_uring_register` call is allowed on it afterwards, so the
//! list cannot be changed or files and buffers registered behind it.

use std::io;

use io_uring::register::Restriction;
use io_uring::IoUring;

/// A ring of `entries` submission entries (and `cq_entries` completion entries, if given)
/// that accepts only the operations `ops` (`io_uring::opcode::*::CODE`) with no submission
/// flags but `flags` (`io_uring::squeue::Flags` bits).
pub fn restricted_ring(
    entries: u32,
    cq_entries: Option<u32>,
    ops: &[u8],
    flags: u8,
) -> io::Result<IoUring> {
    let mut builder = IoUring::builder();
    builder.setup_r_disabled();
    if let Some(cq_entries) = cq_entries {
        builder.setup_cqsize(cq_entries);
    }
    let ring = builder.build(entries)?;
    let mut restrictions: Vec<Restriction> =
        ops.iter().map(|op| Restriction::sqe_op(*op)).collect();
    restrictions.push(Restriction::sqe_flags_allowed(flags));
    ring.submitter().register_restrictions(&mut restrictions)?;
    ring.submitter().register_enable_rings()?;
    Ok(ring)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use io_uring::{opcode, squeue, types};

    use super::*;

    fn submit_one(ring: &mut IoUring, entry: &squeue::Entry) -> i32 {
        // SAFETY: the entries of these tests point at buffers and paths that outlive the
        // wait below, which reaps their completion.
        unsafe { ring.submission().push(entry).expect("room") };
        ring.submit_and_wait(1).expect("io_uring_enter");
        ring.completion().next().expect("a completion").result()
    }

    #[test]
    fn an_allowed_operation_runs_and_any_other_is_refused() {
        let file = tempfile::tempfile().unwrap();
        let mut ring = restricted_ring(
            4,
            None,
            &[opcode::Fsync::CODE],
            squeue::Flags::IO_DRAIN.bits(),
        )
        .unwrap();
        let fsync = opcode::Fsync::new(types::Fd(file.as_raw_fd())).build();
        assert_eq!(submit_one(&mut ring, &fsync), 0, "fsync is allowed");
        let drained = fsync.clone().flags(squeue::Flags::IO_DRAIN);
        assert_eq!(submit_one(&mut ring, &drained), 0, "with IO_DRAIN too");

        // What an attacker would submit: an open, through the ring, past seccomp.
        let path = c"/etc/hostname";
        let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr()).build();
        assert_eq!(
            submit_one(&mut ring, &open),
            -libc::EACCES,
            "openat is refused"
        );
        let linked = fsync.flags(squeue::Flags::IO_LINK);
        assert_eq!(
            submit_one(&mut ring, &linked),
            -libc::EACCES,
            "a flag not allowed is refused"
        );
    }

    #[test]
    fn the_list_cannot_be_changed_once_enabled() {
        let ring = restricted_ring(4, Some(8), &[opcode::Nop::CODE], 0).unwrap();
        let mut more = [Restriction::sqe_op(opcode::OpenAt::CODE)];
        assert!(ring.submitter().register_restrictions(&mut more).is_err());
    }
}
