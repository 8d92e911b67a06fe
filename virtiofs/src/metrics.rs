//! hull-fs's counters for operators: what the guest asked of the share (requests by kind,
//! bytes read and written, errors, names the guard refused), counted by the confined server
//! and served by the unconfined supervisor on `--metrics-socket PATH` in Prometheus' text
//! format, one text per connection, as the other backends do (devices/src/metrics.rs).
//!
//! The counters live in one page mapped `MAP_SHARED | MAP_ANONYMOUS` by the supervisor
//! before it forks ([`SharedCounters`]): the worker and the server it forks into the sandbox
//! inherit the mapping, so both sides see the same memory whatever namespaces, seccomp
//! filter or capabilities the server ends up with, and no channel between them is needed.
//! This module does not serve requests or own the supervisor's wait; it owns the counters
//! and their text. The socket's rules and the text format are hull-metrics', shared with
//! the other backends and hull-vmm.

use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

pub use hull_metrics::MetricsListener;
use hull_metrics::Sample;

use crate::{Error, Result};

/// The kinds requests are counted by: a small fixed set, so the series stay few whatever the
/// guest does. Each FUSE operation the file system sees belongs to exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum RequestKind {
    /// LOOKUP.
    Lookup,
    /// GETATTR.
    Getattr,
    /// SETATTR (chmod, chown, truncate, utimes).
    Setattr,
    /// READ.
    Read,
    /// WRITE.
    Write,
    /// CREATE, MKNOD, MKDIR, SYMLINK, LINK: requests that make a name.
    Create,
    /// UNLINK, RMDIR.
    Remove,
    /// RENAME.
    Rename,
    /// OPENDIR, READDIR(PLUS), RELEASEDIR, FSYNCDIR.
    Readdir,
    /// OPEN, RELEASE, FLUSH of files.
    Open,
    /// SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR.
    Xattr,
    /// Everything else: INIT, DESTROY, FORGET, READLINK, FSYNC, FALLOCATE, STATFS, ACCESS,
    /// LSEEK, COPY_FILE_RANGE, SYNCFS, locks, IOCTL, TMPFILE and the like.
    Other,
}

impl RequestKind {
    /// Every kind, in the order they are rendered.
    pub const ALL: [Self; 12] = [
        Self::Lookup,
        Self::Getattr,
        Self::Setattr,
        Self::Read,
        Self::Write,
        Self::Create,
        Self::Remove,
        Self::Rename,
        Self::Readdir,
        Self::Open,
        Self::Xattr,
        Self::Other,
    ];

    /// The value of the `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Lookup => "lookup",
            Self::Getattr => "getattr",
            Self::Setattr => "setattr",
            Self::Read => "read",
            Self::Write => "write",
            Self::Create => "create",
            Self::Remove => "remove",
            Self::Rename => "rename",
            Self::Readdir => "readdir",
            Self::Open => "open",
            Self::Xattr => "xattr",
            Self::Other => "other",
        }
    }
}

/// The counters themselves: plain atomics in a `#[repr(C)]` layout, so the same bytes mean
/// the same counters in every process that maps them (all run the same binary). Updated
/// with relaxed atomics: each counter is independent, and readers want totals, not an order.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Counters {
    requests: [AtomicU64; RequestKind::ALL.len()],
    errors: AtomicU64,
    refused_names: AtomicU64,
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CounterValues {
    /// Requests by kind, indexed as [`RequestKind::ALL`].
    pub requests: [u64; RequestKind::ALL.len()],
    /// Requests answered with an error (refused names included).
    pub errors: u64,
    /// Names refused by the name guard (not one path component: escape attempts).
    pub refused_names: u64,
    /// Bytes READ returned to the guest.
    pub read_bytes: u64,
    /// Bytes WRITE took from the guest.
    pub written_bytes: u64,
}

impl CounterValues {
    /// Requests of `kind`.
    pub fn requests(&self, kind: RequestKind) -> u64 {
        self.requests[kind as usize]
    }
}

impl Counters {
    /// Counts one request of `kind` and, if it failed, one error.
    pub fn request(&self, kind: RequestKind, failed: bool) {
        self.requests[kind as usize].fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a name the guard refused.
    pub fn refused_name(&self) {
        self.refused_names.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `bytes` read for the guest.
    pub fn read(&self, bytes: usize) {
        self.read_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts `bytes` written by the guest.
    pub fn written(&self, bytes: usize) {
        self.written_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The current values.
    pub fn values(&self) -> CounterValues {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterValues {
            requests: std::array::from_fn(|i| load(&self.requests[i])),
            errors: load(&self.errors),
            refused_names: load(&self.refused_names),
            read_bytes: load(&self.read_bytes),
            written_bytes: load(&self.written_bytes),
        }
    }
}

/// [`Counters`] in an anonymous shared mapping: a process that forks after creating it
/// shares the counters with its children (and theirs), whatever sandbox they enter later.
/// Unmapped when dropped (in each process separately).
#[derive(Debug)]
pub struct SharedCounters {
    counters: NonNull<Counters>,
}

// SAFETY: the pointee is only atomics, accessed through `&Counters`, which is Send + Sync;
// the pointer stays valid until drop, which needs the value itself.
unsafe impl Send for SharedCounters {}
// SAFETY: as above: shared access is to atomics only.
unsafe impl Sync for SharedCounters {}

impl SharedCounters {
    /// Maps a zeroed page of counters, shared with the children forked from now on.
    pub fn new() -> Result<Self> {
        // SAFETY: an anonymous mapping at an address the kernel picks touches no existing
        // memory; the arguments are constants, the length non-zero.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                std::mem::size_of::<Counters>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(Error::Sys {
                what: "mapping the shared counters",
                source: nix::Error::last(),
            });
        }
        // The cast: the mapping is page-aligned (more than AtomicU64's 8 bytes), at least
        // size_of::<Counters>() long, and zero-filled by the kernel, and all-zero bytes are a
        // valid `Counters` (every field is an AtomicU64, zero is 0).
        let counters = NonNull::new(addr.cast::<Counters>()).ok_or(Error::Sys {
            what: "mapping the shared counters",
            source: nix::Error::EINVAL,
        })?;
        Ok(Self { counters })
    }
}

impl std::ops::Deref for SharedCounters {
    type Target = Counters;

    fn deref(&self) -> &Counters {
        // SAFETY: `counters` points at a live, aligned, initialised `Counters` (see `new`)
        // until `drop`, which cannot run while this borrow lives; only shared references
        // are ever made, and all mutation goes through atomics.
        unsafe { self.counters.as_ref() }
    }
}

impl Drop for SharedCounters {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `new` with this length and is unmapped once, here;
        // no reference into it outlives `self`.
        unsafe {
            libc::munmap(
                self.counters.as_ptr().cast(),
                std::mem::size_of::<Counters>(),
            );
        }
    }
}

/// Prometheus text of `values`.
pub fn render(values: &CounterValues) -> String {
    let mut samples: Vec<Sample> = RequestKind::ALL
        .into_iter()
        .map(|kind| {
            Sample::counter(
                "hull_fs_requests_total",
                "Requests the guest made of the share, by kind.",
                values.requests(kind),
            )
            .with_labels(format!("kind=\"{}\"", kind.label()))
        })
        .collect();
    samples.extend([
        Sample::counter(
            "hull_fs_request_errors_total",
            "Requests answered with an error, refused names included.",
            values.errors,
        ),
        Sample::counter(
            "hull_fs_refused_names_total",
            "Names refused as not one path component (empty, ., .., or with a slash).",
            values.refused_names,
        ),
        Sample::counter(
            "hull_fs_read_bytes_total",
            "Bytes read from the share for the guest.",
            values.read_bytes,
        ),
        Sample::counter(
            "hull_fs_written_bytes_total",
            "Bytes the guest wrote to the share.",
            values.written_bytes,
        ),
    ]);
    hull_metrics::render(&samples)
}

/// Binds the metrics socket `path` (hull-metrics' rules: a stale socket is replaced, never
/// another file; the file goes when the listener is dropped).
pub fn bind(path: &Path) -> Result<MetricsListener> {
    MetricsListener::bind(path).map_err(|source| Error::MetricsSocket {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn renders_every_kind_and_counter_with_help_and_type_once() {
        let mut values = CounterValues::default();
        values.requests[RequestKind::Lookup as usize] = 3;
        values.requests[RequestKind::Other as usize] = 1;
        values.errors = 2;
        values.refused_names = 1;
        values.read_bytes = 4096;
        values.written_bytes = 7;
        let text = render(&values);
        let expected_kinds = [
            ("lookup", 3),
            ("getattr", 0),
            ("setattr", 0),
            ("read", 0),
            ("write", 0),
            ("create", 0),
            ("remove", 0),
            ("rename", 0),
            ("readdir", 0),
            ("open", 0),
            ("xattr", 0),
            ("other", 1),
        ];
        let mut expected = String::from(
            "# HELP hull_fs_requests_total Requests the guest made of the share, by kind.\n\
             # TYPE hull_fs_requests_total counter\n",
        );
        for (kind, n) in expected_kinds {
            expected.push_str(&format!("hull_fs_requests_total{{kind=\"{kind}\"}} {n}\n"));
        }
        assert!(text.starts_with(&expected), "{text}");
        for line in [
            "# TYPE hull_fs_request_errors_total counter\nhull_fs_request_errors_total 2\n",
            "# TYPE hull_fs_refused_names_total counter\nhull_fs_refused_names_total 1\n",
            "# TYPE hull_fs_read_bytes_total counter\nhull_fs_read_bytes_total 4096\n",
            "# TYPE hull_fs_written_bytes_total counter\nhull_fs_written_bytes_total 7\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert_eq!(text.matches("# HELP ").count(), 5, "{text}");
        assert_eq!(text.matches("# TYPE ").count(), 5, "{text}");
    }

    #[test]
    fn every_kind_is_listed_once_at_its_own_index_with_its_own_label() {
        for (i, kind) in RequestKind::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, i, "{kind:?}");
        }
        let mut labels: Vec<&str> = RequestKind::ALL.iter().map(|k| k.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), RequestKind::ALL.len(), "{labels:?}");
    }

    #[test]
    fn counts_land_in_their_kind_and_errors_are_counted_once() {
        let counters = SharedCounters::new().expect("mapping");
        counters.request(RequestKind::Read, false);
        counters.request(RequestKind::Read, true);
        counters.request(RequestKind::Rename, true);
        counters.read(10);
        counters.read(5);
        counters.written(3);
        counters.refused_name();
        let values = counters.values();
        assert_eq!(values.requests(RequestKind::Read), 2);
        assert_eq!(values.requests(RequestKind::Rename), 1);
        assert_eq!(values.requests(RequestKind::Lookup), 0);
        assert_eq!(values.errors, 2);
        assert_eq!((values.read_bytes, values.written_bytes), (15, 3));
        assert_eq!(values.refused_names, 1);
    }

    #[test]
    fn a_forked_child_counts_into_the_parents_page() {
        let counters = SharedCounters::new().expect("mapping");
        // SAFETY: the child only does atomic adds on memory mapped before the fork and
        // calls _exit: nothing that needs a lock another thread of the test harness holds.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            counters.request(RequestKind::Write, false);
            counters.written(42);
            // SAFETY: _exit ends the child at once, without running the harness's code.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: our own child; `status` outlives the call.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        let values = counters.values();
        assert_eq!(values.requests(RequestKind::Write), 1);
        assert_eq!(values.written_bytes, 42);
    }
}
