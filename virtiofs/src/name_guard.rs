//! A second wall behind the sandbox: every name a guest sends to be created, looked up,
//! moved or removed must be one path component. Wraps any upstream `FileSystem` and forwards
//! every call; the name-carrying ones are checked first. Since every request passes here, it
//! is also where they are counted for `--metrics-socket`: by kind, failed ones, bytes read
//! and written, and refused names.
//!
//! Why it is needed: upstream's LOOKUP resolves names with `openat2(RESOLVE_IN_ROOT)`, but
//! RENAME, MKDIR, MKNOD, SYMLINK, LINK, CREATE, UNLINK and RMDIR hand the guest's name to
//! `renameat`, `mkdirat` and the like as is, so `../x` or `a/b` there is resolved by the
//! kernel, and only the sandbox's root stops it (tests/escape.rs shows a RENAME escaping
//! without it). A Linux guest never sends such names: its VFS resolves `.`, `..` and `/`
//! itself, and LOOKUP of `..` comes only with FUSE_EXPORT_SUPPORT, which upstream does not
//! negotiate. Symlink *targets* are file content and stay unchecked: the guest resolves them.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;
use virtiofsd::filesystem::{
    Context, Entry, Extensions, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    SerializableFileSystem, SetattrValid, SetxattrFlags, ZeroCopyReader, ZeroCopyWriter,
};
use virtiofsd::fuse;

use crate::metrics::{RequestKind, SharedCounters};

/// A file system that refuses names that are not a single path component, and counts every
/// request it forwards (see [`crate::metrics`]).
pub struct NameGuard<F> {
    inner: F,
    counters: Arc<SharedCounters>,
}

impl<F> NameGuard<F> {
    /// Guards `inner`, counting its requests into `counters`.
    pub fn new(inner: F, counters: Arc<SharedCounters>) -> Self {
        Self { inner, counters }
    }

    /// Runs `request` and counts it as one of `kind`, failed if it returns an error.
    fn counted<T>(
        &self,
        kind: RequestKind,
        request: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        let result = request();
        self.counters.request(kind, result.is_err());
        result
    }

    /// Refuses (EINVAL, logged, counted) a name that is not one path component.
    fn check_name(&self, op: &'static str, name: &CStr) -> io::Result<()> {
        if is_single_component(name.to_bytes()) {
            Ok(())
        } else {
            self.counters.refused_name();
            warn!(op, name = %name.to_string_lossy(), "refused a guest name that is not one path component");
            Err(io::Error::from_raw_os_error(libc::EINVAL))
        }
    }
}

/// Whether `name` is one path component: not empty, not `.` or `..`, no `/`.
pub fn is_single_component(name: &[u8]) -> bool {
    !(name.is_empty() || name == b"." || name == b".." || name.contains(&b'/'))
}

impl<F: FileSystem> FileSystem for NameGuard<F> {
    type Inode = F::Inode;
    type Handle = F::Handle;
    type DirIter = F::DirIter;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.counted(RequestKind::Other, || self.inner.init(capable))
    }

    fn destroy(&self) {
        self.counters.request(RequestKind::Other, false);
        self.inner.destroy()
    }

    fn lookup(&self, ctx: Context, parent: Self::Inode, name: &CStr) -> io::Result<Entry> {
        self.counted(RequestKind::Lookup, || {
            self.check_name("lookup", name)?;
            self.inner.lookup(ctx, parent, name)
        })
    }

    fn forget(&self, ctx: Context, inode: Self::Inode, count: u64) {
        self.counters.request(RequestKind::Other, false);
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: Context, requests: Vec<(Self::Inode, u64)>) {
        self.counters.request(RequestKind::Other, false);
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: Context,
        inode: Self::Inode,
        handle: Option<Self::Handle>,
    ) -> io::Result<(fuse::Attr, Duration)> {
        self.counted(RequestKind::Getattr, || {
            self.inner.getattr(ctx, inode, handle)
        })
    }

    fn setattr(
        &self,
        ctx: Context,
        inode: Self::Inode,
        attr: fuse::SetattrIn,
        handle: Option<Self::Handle>,
        valid: SetattrValid,
    ) -> io::Result<(fuse::Attr, Duration)> {
        self.counted(RequestKind::Setattr, || {
            self.inner.setattr(ctx, inode, attr, handle, valid)
        })
    }

    fn readlink(&self, ctx: Context, inode: Self::Inode) -> io::Result<Vec<u8>> {
        self.counted(RequestKind::Other, || self.inner.readlink(ctx, inode))
    }

    fn symlink(
        &self,
        ctx: Context,
        linkname: &CStr,
        parent: Self::Inode,
        name: &CStr,
        extensions: Extensions,
    ) -> io::Result<Entry> {
        self.counted(RequestKind::Create, || {
            self.check_name("symlink", name)?;
            self.inner.symlink(ctx, linkname, parent, name, extensions)
        })
    }

    fn mknod(
        &self,
        ctx: Context,
        inode: Self::Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
        extensions: Extensions,
    ) -> io::Result<Entry> {
        self.counted(RequestKind::Create, || {
            self.check_name("mknod", name)?;
            self.inner
                .mknod(ctx, inode, name, mode, rdev, umask, extensions)
        })
    }

    fn mkdir(
        &self,
        ctx: Context,
        parent: Self::Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
        extensions: Extensions,
    ) -> io::Result<Entry> {
        self.counted(RequestKind::Create, || {
            self.check_name("mkdir", name)?;
            self.inner.mkdir(ctx, parent, name, mode, umask, extensions)
        })
    }

    fn unlink(&self, ctx: Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.counted(RequestKind::Remove, || {
            self.check_name("unlink", name)?;
            self.inner.unlink(ctx, parent, name)
        })
    }

    fn rmdir(&self, ctx: Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.counted(RequestKind::Remove, || {
            self.check_name("rmdir", name)?;
            self.inner.rmdir(ctx, parent, name)
        })
    }

    fn rename(
        &self,
        ctx: Context,
        olddir: Self::Inode,
        oldname: &CStr,
        newdir: Self::Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.counted(RequestKind::Rename, || {
            self.check_name("rename", oldname)?;
            self.check_name("rename", newname)?;
            self.inner
                .rename(ctx, olddir, oldname, newdir, newname, flags)
        })
    }

    fn link(
        &self,
        ctx: Context,
        inode: Self::Inode,
        newparent: Self::Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        self.counted(RequestKind::Create, || {
            self.check_name("link", newname)?;
            self.inner.link(ctx, inode, newparent, newname)
        })
    }

    fn open(
        &self,
        ctx: Context,
        inode: Self::Inode,
        kill_priv: bool,
        flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions)> {
        self.counted(RequestKind::Open, || {
            self.inner.open(ctx, inode, kill_priv, flags)
        })
    }

    fn create(
        &self,
        ctx: Context,
        parent: Self::Inode,
        name: &CStr,
        mode: u32,
        kill_priv: bool,
        flags: u32,
        umask: u32,
        extensions: Extensions,
    ) -> io::Result<(Entry, Option<Self::Handle>, OpenOptions)> {
        self.counted(RequestKind::Create, || {
            self.check_name("create", name)?;
            self.inner
                .create(ctx, parent, name, mode, kill_priv, flags, umask, extensions)
        })
    }

    fn read<W: ZeroCopyWriter>(
        &self,
        ctx: Context,
        inode: Self::Inode,
        handle: Self::Handle,
        w: W,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        self.counted(RequestKind::Read, || {
            let bytes = self
                .inner
                .read(ctx, inode, handle, w, size, offset, lock_owner, flags)?;
            self.counters.read(bytes);
            Ok(bytes)
        })
    }

    fn write<R: ZeroCopyReader>(
        &self,
        ctx: Context,
        inode: Self::Inode,
        handle: Self::Handle,
        r: R,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        kill_priv: bool,
        flags: u32,
    ) -> io::Result<usize> {
        self.counted(RequestKind::Write, || {
            let bytes = self.inner.write(
                ctx,
                inode,
                handle,
                r,
                size,
                offset,
                lock_owner,
                delayed_write,
                kill_priv,
                flags,
            )?;
            self.counters.written(bytes);
            Ok(bytes)
        })
    }

    fn flush(
        &self,
        ctx: Context,
        inode: Self::Inode,
        handle: Self::Handle,
        lock_owner: u64,
    ) -> io::Result<()> {
        self.counted(RequestKind::Open, || {
            self.inner.flush(ctx, inode, handle, lock_owner)
        })
    }

    fn fsync(
        &self,
        ctx: Context,
        inode: Self::Inode,
        datasync: bool,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.counted(RequestKind::Other, || {
            self.inner.fsync(ctx, inode, datasync, handle)
        })
    }

    fn fallocate(
        &self,
        ctx: Context,
        inode: Self::Inode,
        handle: Self::Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.counted(RequestKind::Other, || {
            self.inner
                .fallocate(ctx, inode, handle, mode, offset, length)
        })
    }

    fn release(
        &self,
        ctx: Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.counted(RequestKind::Open, || {
            self.inner
                .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
        })
    }

    fn statfs(&self, ctx: Context, inode: Self::Inode) -> io::Result<libc::statvfs64> {
        self.counted(RequestKind::Other, || self.inner.statfs(ctx, inode))
    }

    fn setxattr(
        &self,
        ctx: Context,
        inode: Self::Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
        extra_flags: SetxattrFlags,
    ) -> io::Result<()> {
        self.counted(RequestKind::Xattr, || {
            self.inner
                .setxattr(ctx, inode, name, value, flags, extra_flags)
        })
    }

    fn getxattr(
        &self,
        ctx: Context,
        inode: Self::Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.counted(RequestKind::Xattr, || {
            self.inner.getxattr(ctx, inode, name, size)
        })
    }

    fn listxattr(&self, ctx: Context, inode: Self::Inode, size: u32) -> io::Result<ListxattrReply> {
        self.counted(RequestKind::Xattr, || {
            self.inner.listxattr(ctx, inode, size)
        })
    }

    fn removexattr(&self, ctx: Context, inode: Self::Inode, name: &CStr) -> io::Result<()> {
        self.counted(RequestKind::Xattr, || {
            self.inner.removexattr(ctx, inode, name)
        })
    }

    fn opendir(
        &self,
        ctx: Context,
        inode: Self::Inode,
        flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions)> {
        self.counted(RequestKind::Readdir, || {
            self.inner.opendir(ctx, inode, flags)
        })
    }

    fn readdir(
        &self,
        ctx: Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
    ) -> io::Result<Self::DirIter> {
        self.counted(RequestKind::Readdir, || {
            self.inner.readdir(ctx, inode, handle, size, offset)
        })
    }

    fn fsyncdir(
        &self,
        ctx: Context,
        inode: Self::Inode,
        datasync: bool,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.counted(RequestKind::Readdir, || {
            self.inner.fsyncdir(ctx, inode, datasync, handle)
        })
    }

    fn releasedir(
        &self,
        ctx: Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.counted(RequestKind::Readdir, || {
            self.inner.releasedir(ctx, inode, flags, handle)
        })
    }

    fn access(&self, ctx: Context, inode: Self::Inode, mask: u32) -> io::Result<()> {
        self.counted(RequestKind::Other, || self.inner.access(ctx, inode, mask))
    }

    fn lseek(
        &self,
        ctx: Context,
        inode: Self::Inode,
        handle: Self::Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.counted(RequestKind::Other, || {
            self.inner.lseek(ctx, inode, handle, offset, whence)
        })
    }

    fn copyfilerange(
        &self,
        ctx: Context,
        inode_in: Self::Inode,
        handle_in: Self::Handle,
        offset_in: u64,
        inode_out: Self::Inode,
        handle_out: Self::Handle,
        offset_out: u64,
        len: u64,
        flags: u64,
    ) -> io::Result<usize> {
        self.counted(RequestKind::Other, || {
            self.inner.copyfilerange(
                ctx, inode_in, handle_in, offset_in, inode_out, handle_out, offset_out, len, flags,
            )
        })
    }

    fn syncfs(&self, ctx: Context, inode: Self::Inode) -> io::Result<()> {
        self.counted(RequestKind::Other, || self.inner.syncfs(ctx, inode))
    }

    fn getlk(&self) -> io::Result<()> {
        self.counted(RequestKind::Other, || self.inner.getlk())
    }

    fn setlk(&self) -> io::Result<()> {
        self.counted(RequestKind::Other, || self.inner.setlk())
    }

    fn setlkw(&self) -> io::Result<()> {
        self.counted(RequestKind::Other, || self.inner.setlkw())
    }

    fn ioctl(&self) -> io::Result<()> {
        self.counted(RequestKind::Other, || self.inner.ioctl())
    }

    fn bmap(&self) -> io::Result<()> {
        self.counted(RequestKind::Other, || self.inner.bmap())
    }

    fn poll(&self) -> io::Result<()> {
        self.counted(RequestKind::Other, || self.inner.poll())
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.counted(RequestKind::Other, || self.inner.notify_reply())
    }

    fn tmpfile(&self) -> io::Result<(Entry, Option<Self::Handle>, OpenOptions)> {
        self.counted(RequestKind::Other, || self.inner.tmpfile())
    }
}

impl<F: SerializableFileSystem> SerializableFileSystem for NameGuard<F> {
    fn prepare_serialization(&self, cancel: Arc<AtomicBool>) {
        self.inner.prepare_serialization(cancel)
    }

    fn serialize(&self, state_pipe: File) -> io::Result<()> {
        self.inner.serialize(state_pipe)
    }

    fn deserialize_and_apply(&self, state_pipe: File) -> io::Result<()> {
        self.inner.deserialize_and_apply(state_pipe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_components_pass() {
        for name in [
            &b"a"[..],
            b"file.txt",
            b"...",
            b".hidden",
            b"a b",
            b"\xff\xfe",
        ] {
            assert!(is_single_component(name), "{name:?}");
        }
    }

    #[test]
    fn paths_and_dot_names_are_refused() {
        for name in [
            &b""[..],
            b".",
            b"..",
            b"/",
            b"a/b",
            b"../x",
            b"/etc/passwd",
            b"x/",
        ] {
            assert!(!is_single_component(name), "{name:?}");
        }
    }
}
