//! Dropping the capabilities a backend no longer needs once its set-up is done (the disk or
//! tap open, the sockets bound): the rest of its life it serves a guest, and a device bug a
//! guest reaches should find a process that root's file and network powers have left.
//! hull-blk and hull-vsock keep none; hull-net keeps `CAP_NET_ADMIN` (enabling and disabling
//! tap queues, TUNSETQUEUE, is refused without it on a tap its creator did not hand to a
//! user). Every set goes (effective, permitted, inheritable, ambient, and the bounding set,
//! so nothing the process might exec could regain them); the uid stays 0, so what it opens
//! afterwards (its own sockets in root's 0700 run directory) it opens as that directory's
//! owner. Uses the `caps` crate (as youki does) rather than raw capset(2).
//!
//! The seccomp filter ([`crate::seccomp`]) is installed before and allows these calls:
//! capset and the capability prctls can only take away.

use std::collections::HashSet;

use caps::{CapSet, Capability};

/// Why the capabilities could not be dropped.
#[derive(Debug, thiserror::Error)]
#[error("dropping the {set} capabilities")]
pub struct Error {
    set: &'static str,
    #[source]
    source: caps::errors::CapsError,
}

/// Leaves the process (every thread started from now on, and the calling one) with `keep`
/// only, in every set. Threads started before keep theirs: call this before starting any.
pub fn keep_only(keep: &[Capability]) -> Result<(), Error> {
    let keep: HashSet<Capability> = keep.iter().copied().collect();
    let err = |set| move |source| Error { set, source };
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes next. Only what
    // this kernel knows (dropping a newer capability than it has fails).
    for cap in caps::runtime::thread_all_supported().difference(&keep) {
        caps::drop(None, CapSet::Bounding, *cap).map_err(err("bounding"))?;
    }
    caps::clear(None, CapSet::Ambient).map_err(err("ambient"))?;
    caps::set(None, CapSet::Inheritable, &keep).map_err(err("inheritable"))?;
    // Effective before permitted: the kernel refuses an effective set larger than the
    // permitted one.
    caps::set(None, CapSet::Effective, &keep).map_err(err("effective"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(err("permitted"))?;
    Ok(())
}

/// The capability mask `CapEff:` in /proc/PID/status shows for `caps`, for tests.
pub fn mask(caps: &[Capability]) -> u64 {
    caps.iter().fold(0, |mask, cap| mask | cap.bitmask())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `keep_only(keep)` in a forked child and answers the child's CapEff, CapPrm,
    /// CapBnd and CapInh masks (from its /proc status), or the failure.
    fn child_masks(keep: &'static [Capability]) -> [u64; 4] {
        let mut pipe = [0; 2];
        // SAFETY: pipe writes two descriptors into the array.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        // SAFETY: the child drops its capabilities, reads its own status file, writes one
        // line to the pipe and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let line = match keep_only(keep) {
                Ok(()) => std::fs::read_to_string("/proc/self/status").unwrap_or_default(),
                Err(err) => format!("error {err}"),
            };
            // SAFETY: writes a buffer we own to the pipe's write end, then exits.
            unsafe {
                libc::write(pipe[1], line.as_ptr().cast(), line.len());
                libc::_exit(0)
            };
        }
        // SAFETY: closes our copy of the write end.
        unsafe { libc::close(pipe[1]) };
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads into a buffer we own.
            let n = unsafe { libc::read(pipe[0], buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            text.extend_from_slice(&buf[..usize::try_from(n).unwrap()]);
        }
        // SAFETY: closes the read end and reaps the child.
        unsafe {
            libc::close(pipe[0]);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        let text = String::from_utf8_lossy(&text).into_owned();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or_else(|| panic!("no {name} in the child's status: {text}"))
        };
        ["CapEff:", "CapPrm:", "CapBnd:", "CapInh:"].map(field)
    }

    #[test]
    fn a_backend_keeps_only_what_it_asks_for_in_every_set() {
        if !caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
            let missing =
                hull_tests::prereq::Missing::hardware("CAP_SETPCAP", "run the tests as root");
            hull_tests::prereq::skip(
                "a_backend_keeps_only_what_it_asks_for_in_every_set",
                &missing,
            );
            return;
        }
        assert_eq!(child_masks(&[]), [0; 4]);
        let net = mask(&[Capability::CAP_NET_ADMIN]);
        assert_eq!(net, 1 << 12);
        let [eff, prm, bnd, inh] = child_masks(&[Capability::CAP_NET_ADMIN]);
        assert_eq!([eff, prm, bnd], [net; 3]);
        assert_eq!(inh & !net, 0);
    }
}
