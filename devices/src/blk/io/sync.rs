//! The synchronous engine: the backing file, and `pread`/`pwrite` straight into and out of
//! guest memory (no bounce buffer), `fdatasync` for flushes, `fallocate` for discard and
//! write-zeroes, run on the queue's worker thread. It serves every request when io_uring is
//! not available, and the rarer requests (discard, write-zeroes, get-id) and the rest of a
//! short io_uring transfer otherwise.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{fallocate, FallocateFlags};
use vm_memory::{GuestMemoryBackend, VolatileSlice};

use crate::blk::request::{cut, GuestBuf, Request, RequestType, SECTOR_SIZE};
use crate::vsock::packet::Mem;
use crate::{Error, Result};

/// Largest zero buffer written when the file cannot zero a range by `fallocate`.
const ZERO_CHUNK: usize = 64 * 1024;

/// The backing file and how it was opened.
#[derive(Debug)]
pub struct SyncEngine {
    file: File,
    path: PathBuf,
    capacity: u64,
}

impl SyncEngine {
    /// Opens `path` read-write (or read-only), with `O_DIRECT` if `direct` (the guest's buffers
    /// must then be aligned to the disk's logical block size; misaligned ones fail with
    /// IOERR). The capacity is the size in whole sectors.
    pub fn open(path: &Path, readonly: bool, direct: bool) -> Result<Self> {
        let mut options = OpenOptions::new();
        options.read(true).write(!readonly);
        if direct {
            options.custom_flags(libc::O_DIRECT);
        }
        let disk_error = |source| Error::Disk {
            path: path.to_path_buf(),
            source,
        };
        let mut file = options.open(path).map_err(disk_error)?;
        // Seeking to the end sizes block devices as well as files.
        let size = file.seek(SeekFrom::End(0)).map_err(disk_error)?;
        if !size.is_multiple_of(u64::from(SECTOR_SIZE)) {
            tracing::warn!(path = %path.display(), size, "disk size is not a multiple of 512; the tail is not exposed");
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            capacity: size / u64::from(SECTOR_SIZE),
        })
    }

    /// The disk's size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The backing file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The backing file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Reads the disk from `sector` into `bufs`.
    pub fn read(&self, sector: u64, bufs: &[GuestBuf], mem: &Mem) -> io::Result<()> {
        self.each_slice_at(sector_offset(sector)?, bufs, mem, pread)
    }

    /// Writes `bufs` to the disk from `sector`.
    pub fn write(&self, sector: u64, bufs: &[GuestBuf], mem: &Mem) -> io::Result<()> {
        self.each_slice_at(sector_offset(sector)?, bufs, mem, pwrite)
    }

    /// Finishes an IN or OUT request of which io_uring moved only the first `done` bytes.
    pub fn finish_short(&self, request: &Request, done: usize, mem: &Mem) -> io::Result<()> {
        let rest = cut(&request.data, done, request.data_len.saturating_sub(done));
        let offset = sector_offset(request.sector)?
            .checked_add(done as u64)
            .ok_or_else(invalid)?;
        if request.kind == RequestType::In {
            self.each_slice_at(offset, &rest, mem, pread)
        } else {
            self.each_slice_at(offset, &rest, mem, pwrite)
        }
    }

    /// Makes every completed write durable.
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Tells the file that `sectors` from `sector` are unused (punches a hole).
    pub fn discard(&self, sector: u64, sectors: u32) -> io::Result<()> {
        let (offset, len) = byte_range(sector, sectors)?;
        self.fallocate(
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// Makes `sectors` from `sector` read as zeroes: by punching a hole if `unmap`, else by
    /// zeroing the range in place, else (filesystems without either) by writing zeroes.
    pub fn write_zeroes(&self, sector: u64, sectors: u32, unmap: bool) -> io::Result<()> {
        let (offset, len) = byte_range(sector, sectors)?;
        let mode = if unmap {
            FallocateFlags::FALLOC_FL_PUNCH_HOLE
        } else {
            FallocateFlags::FALLOC_FL_ZERO_RANGE
        };
        match self.fallocate(mode | FallocateFlags::FALLOC_FL_KEEP_SIZE, offset, len) {
            Err(err) if err.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                self.write_zeroes_by_hand(offset, len)
            }
            other => other,
        }
    }

    fn write_zeroes_by_hand(&self, offset: i64, len: i64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let zeroes = vec![0u8; ZERO_CHUNK];
        let mut at = u64::try_from(offset).map_err(|_| invalid())?;
        let end = at + u64::try_from(len).map_err(|_| invalid())?;
        while at < end {
            let n = usize::try_from(end - at)
                .unwrap_or(ZERO_CHUNK)
                .min(ZERO_CHUNK);
            self.file.write_all_at(&zeroes[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    fn fallocate(&self, mode: FallocateFlags, offset: i64, len: i64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        fallocate(self.file.as_raw_fd(), mode, offset, len).map_err(io::Error::from)
    }

    /// Runs `op` (a positional read or write) over every host slice of `bufs`, at the file
    /// offsets that follow each other from byte `offset`, until each slice is done.
    fn each_slice_at(
        &self,
        offset: u64,
        bufs: &[GuestBuf],
        mem: &Mem,
        op: impl Fn(i32, &VolatileSlice<'_, ()>, i64) -> isize,
    ) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        let mut offset = i64::try_from(offset).map_err(|_| invalid())?;
        for buf in bufs {
            for slice in mem.get_slices(buf.addr, buf.len) {
                let mut slice = slice.map_err(|_| invalid())?;
                while !slice.is_empty() {
                    let done = op(fd, &slice, offset);
                    let done = match usize::try_from(done) {
                        Err(_) => {
                            let err = io::Error::last_os_error();
                            if err.kind() == io::ErrorKind::Interrupted {
                                continue;
                            }
                            return Err(err);
                        }
                        Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                        Ok(n) => n,
                    };
                    slice = slice.offset(done).map_err(|_| invalid())?;
                    offset = offset
                        .checked_add(i64::try_from(done).map_err(|_| invalid())?)
                        .ok_or_else(invalid)?;
                }
            }
        }
        Ok(())
    }
}

/// `pread` into a slice of guest memory.
fn pread(fd: i32, slice: &VolatileSlice<'_, ()>, offset: i64) -> isize {
    let guard = slice.ptr_guard_mut();
    // SAFETY: the pointer and length describe `slice`, a mapped range of guest memory that
    // stays mapped while the caller's memory guard lives; the kernel writes at most
    // `slice.len()` bytes there. Guest memory is shared with the guest, which may race with
    // us; that is the virtio contract and harms only the guest.
    unsafe { libc::pread(fd, guard.as_ptr().cast(), slice.len(), offset) }
}

/// `pwrite` from a slice of guest memory.
fn pwrite(fd: i32, slice: &VolatileSlice<'_, ()>, offset: i64) -> isize {
    let guard = slice.ptr_guard();
    // SAFETY: the pointer and length describe `slice`, a mapped range of guest memory that
    // stays mapped while the caller's memory guard lives; the kernel only reads
    // `slice.len()` bytes from it.
    unsafe { libc::pwrite(fd, guard.as_ptr().cast(), slice.len(), offset) }
}

fn sector_offset(sector: u64) -> io::Result<u64> {
    sector
        .checked_mul(u64::from(SECTOR_SIZE))
        .ok_or_else(invalid)
}

fn byte_range(sector: u64, sectors: u32) -> io::Result<(i64, i64)> {
    let offset = sector
        .checked_mul(u64::from(SECTOR_SIZE))
        .and_then(|o| i64::try_from(o).ok())
        .ok_or_else(invalid)?;
    let len = i64::from(sectors) * i64::from(SECTOR_SIZE);
    Ok((offset, len))
}

fn invalid() -> io::Error {
    io::ErrorKind::InvalidInput.into()
}
