//! CopyFile: writing a chunk of a file the shim sends into the agent's shared directory.
//!
//! The path comes from the host and the directory may later be visible to containers, so
//! the walk from the shared root is done one component at a time with `O_NOFOLLOW`: no
//! `..`, no symbolic link (one planted by a container included) can lead a write outside the
//! root. The file is written in place; the chunk at offset 0 truncates it first.

use std::fs::{File, Permissions};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{fchown, FileExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use hull_agent_protocol::agent::CopyFileRequest;
use hull_agent_protocol::MAX_CHUNK_BYTES;
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{mkdirat, Mode};

/// Largest file CopyFile makes, in bytes: the shared directory is on the guest's tmpfs, and
/// the files the shim copies (resolv.conf, hosts, secrets, config maps) are small.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Why a chunk was not written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The path is not an absolute path under the shared directory.
    #[error("path {path:?} is not a file under {}", root.display())]
    OutsideRoot {
        /// The path asked for.
        path: String,
        /// The shared directory.
        root: PathBuf,
    },
    /// The chunk is bigger than one call may carry.
    #[error("data is {len} bytes, more than the {MAX_CHUNK_BYTES} of one chunk")]
    ChunkTooLarge {
        /// Its size in bytes.
        len: usize,
    },
    /// The chunk does not fit in the file size given.
    #[error("offset {offset} + {len} bytes of data exceeds file_size {file_size}")]
    BeyondFileSize {
        /// Where the chunk goes.
        offset: u64,
        /// Its size in bytes.
        len: usize,
        /// The file's size.
        file_size: u64,
    },
    /// The file would be too big.
    #[error("file_size {0} is more than the {MAX_FILE_BYTES} bytes CopyFile makes")]
    FileTooLarge(u64),
    /// A component of the path is a symbolic link or not a directory.
    #[error("{} is a symbolic link or not a directory; CopyFile follows neither", .0.display())]
    NotADirectory(PathBuf),
    /// The guest could not do it.
    #[error("{what} {}", path.display())]
    Io {
        /// What failed ("creating directory", "writing" ...).
        what: &'static str,
        /// The guest path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Whether the request itself is at fault (rather than the guest's state).
    pub fn is_invalid_request(&self) -> bool {
        matches!(
            self,
            Error::OutsideRoot { .. }
                | Error::ChunkTooLarge { .. }
                | Error::BeyondFileSize { .. }
                | Error::FileTooLarge(_)
        )
    }
}

/// Writes the chunk of `request` under `root`, making missing directories.
pub fn copy_chunk(root: &Path, request: &CopyFileRequest) -> Result<(), Error> {
    let names = components_under(root, &request.path)?;
    let len = request.data.len();
    if len > MAX_CHUNK_BYTES {
        return Err(Error::ChunkTooLarge { len });
    }
    if request.file_size > MAX_FILE_BYTES {
        return Err(Error::FileTooLarge(request.file_size));
    }
    let end = u64::try_from(len)
        .ok()
        .and_then(|len| request.offset.checked_add(len));
    if end.is_none_or(|end| end > request.file_size) {
        return Err(Error::BeyondFileSize {
            offset: request.offset,
            len,
            file_size: request.file_size,
        });
    }
    let (file_name, dirs) = names.split_last().ok_or_else(|| Error::OutsideRoot {
        path: request.path.clone(),
        root: root.to_owned(),
    })?;
    let dir_mode = Mode::from_bits_truncate(request.dir_mode & 0o7777);
    let file_mode = request.file_mode & 0o7777;

    std::fs::create_dir_all(root).map_err(|source| io_error("creating", root, source))?;
    let mut dir = open_dir(None, root, root)?;
    let mut walked = root.to_owned();
    for name in dirs {
        walked.push(name);
        let created = match mkdirat(Some(raw(&dir)), name.as_str(), dir_mode) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(err) => return Err(io_error("creating directory", &walked, err.into())),
        };
        dir = open_dir(Some(&dir), Path::new(name), &walked)?;
        if created {
            // mkdir applied the umask; the shim asked for exactly dir_mode.
            dir.set_permissions(Permissions::from_mode(dir_mode.bits()))
                .map_err(|source| io_error("setting the mode of", &walked, source))?;
        }
    }
    walked.push(file_name);
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(
        Some(raw(&dir)),
        file_name.as_str(),
        flags,
        Mode::from_bits_truncate(file_mode),
    )
    .map_err(|err| match err {
        Errno::ELOOP => Error::NotADirectory(walked.clone()),
        err => io_error("opening", &walked, err.into()),
    })?;
    let file = File::from(own(fd));
    if request.offset == 0 {
        file.set_len(0)
            .map_err(|source| io_error("truncating", &walked, source))?;
    }
    file.write_all_at(&request.data, request.offset)
        .map_err(|source| io_error("writing", &walked, source))?;
    file.set_permissions(Permissions::from_mode(file_mode))
        .map_err(|source| io_error("setting the mode of", &walked, source))?;
    fchown(&file, Some(request.uid), Some(request.gid))
        .map_err(|source| io_error("setting the owner of", &walked, source))?;
    Ok(())
}

/// The normal components of `path` below `root`, or why there are none.
fn components_under(root: &Path, path: &str) -> Result<Vec<String>, Error> {
    let outside = || Error::OutsideRoot {
        path: path.to_owned(),
        root: root.to_owned(),
    };
    let relative = Path::new(path).strip_prefix(root).map_err(|_| outside())?;
    relative
        .components()
        .map(|component| match component {
            Component::Normal(name) => name.to_str().map(str::to_owned).ok_or_else(outside),
            _ => Err(outside()),
        })
        .collect()
}

fn open_dir(parent: Option<&File>, name: &Path, shown: &Path) -> Result<File, Error> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(parent.map(raw), name, flags, Mode::empty()).map_err(|err| match err {
        Errno::ELOOP | Errno::ENOTDIR => Error::NotADirectory(shown.to_owned()),
        err => io_error("opening directory", shown, err.into()),
    })?;
    Ok(File::from(own(fd)))
}

fn raw(file: &File) -> std::os::fd::RawFd {
    std::os::fd::AsRawFd::as_raw_fd(file)
}

fn own(fd: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: openat just returned this descriptor and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn io_error(what: &'static str, path: &Path, source: io::Error) -> Error {
    Error::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    struct TempRoot(PathBuf);
    impl TempRoot {
        fn new(test: &str) -> TempRoot {
            let dir =
                std::env::temp_dir().join(format!("hull-agent-copy-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            TempRoot(dir)
        }
    }
    impl Drop for TempRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn chunk(path: &Path, file_size: u64, offset: u64, data: &[u8]) -> CopyFileRequest {
        let mut request = CopyFileRequest::new();
        request.path = path.to_string_lossy().into_owned();
        request.file_size = file_size;
        request.offset = offset;
        request.data = data.to_vec();
        request.file_mode = 0o640;
        request.dir_mode = 0o750;
        request.uid = nix::unistd::getuid().as_raw();
        request.gid = nix::unistd::getgid().as_raw();
        request
    }

    #[test]
    fn writes_chunks_making_directories_with_the_modes_given() {
        let root = TempRoot::new("chunks");
        let path = root.0.join("c1/etc/resolv.conf");
        copy_chunk(&root.0, &chunk(&path, 11, 0, b"hello ")).expect("first chunk");
        copy_chunk(&root.0, &chunk(&path, 11, 6, b"world")).expect("second chunk");
        assert_eq!(std::fs::read(&path).expect("reading"), b"hello world");
        let file = std::fs::metadata(&path).expect("metadata");
        assert_eq!(file.mode() & 0o7777, 0o640);
        let dir = std::fs::metadata(root.0.join("c1/etc")).expect("metadata");
        assert_eq!(dir.mode() & 0o7777, 0o750);

        // A new copy (offset 0) replaces the old content entirely.
        copy_chunk(&root.0, &chunk(&path, 3, 0, b"new")).expect("a new copy");
        assert_eq!(std::fs::read(&path).expect("reading"), b"new");
    }

    #[test]
    fn refuses_paths_outside_the_root_and_chunks_beyond_the_size() {
        let root = TempRoot::new("outside");
        for path in [
            "relative/file".to_owned(),
            "/etc/passwd".to_owned(),
            format!("{}/a/../../escape", root.0.display()),
            root.0.display().to_string(),
        ] {
            let err = copy_chunk(&root.0, &chunk(Path::new(&path), 1, 0, b"x")).expect_err(&path);
            assert!(matches!(err, Error::OutsideRoot { .. }), "{path}: {err}");
            assert!(err.is_invalid_request());
        }
        let path = root.0.join("f");
        let err = copy_chunk(&root.0, &chunk(&path, 4, 2, b"xyz")).expect_err("beyond");
        assert!(matches!(err, Error::BeyondFileSize { .. }), "{err}");
        let err = copy_chunk(&root.0, &chunk(&path, u64::MAX, u64::MAX, b"x")).expect_err("huge");
        assert!(err.is_invalid_request(), "{err}");
        assert!(!path.exists(), "nothing was written");
    }

    #[test]
    fn never_follows_a_symbolic_link() {
        let root = TempRoot::new("symlink");
        let outside = TempRoot::new("symlink-target");
        std::fs::create_dir_all(&root.0).expect("root");
        std::fs::create_dir_all(&outside.0).expect("target");
        std::os::unix::fs::symlink(&outside.0, root.0.join("dir")).expect("dir link");
        std::os::unix::fs::symlink(outside.0.join("f"), root.0.join("file")).expect("file link");

        let err = copy_chunk(&root.0, &chunk(&root.0.join("dir/f"), 1, 0, b"x"))
            .expect_err("through a linked directory");
        assert!(matches!(err, Error::NotADirectory(_)), "{err}");
        let err = copy_chunk(&root.0, &chunk(&root.0.join("file"), 1, 0, b"x"))
            .expect_err("onto a linked file");
        assert!(matches!(err, Error::NotADirectory(_)), "{err}");
        assert!(!outside.0.join("f").exists(), "a write escaped the root");
    }
}
