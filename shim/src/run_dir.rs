//! A VM's run directory (its console log, the hypervisor's own files, the backends' sockets),
//! removed with everything in it when dropped: the one guard the boot and each hypervisor
//! backend use, so a VM that fails or stops leaves no directory behind.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// A directory removed, with its contents, when dropped.
#[derive(Debug)]
pub struct RunDir(PathBuf);

impl RunDir {
    /// Creates `path` (0700, must not exist) and guards it.
    pub fn create(path: &Path) -> io::Result<Self> {
        fs::DirBuilder::new().mode(0o700).create(path)?;
        Ok(Self(path.to_owned()))
    }

    /// Guards `path`, made by the caller.
    pub fn adopt(path: &Path) -> Self {
        Self(path.to_owned())
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Creates (or truncates) the file `name` in it; an error says which file.
    pub fn file(&self, name: &str) -> Result<fs::File, (PathBuf, io::Error)> {
        let path = self.0.join(name);
        fs::File::create(&path).map_err(|source| (path, source))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.0) {
            if err.kind() != io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.0.display(), %err, "could not remove the VM's run directory");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_run_directory_is_private_and_goes_with_its_files() {
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().join("vm");
        let dir = RunDir::create(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o700
        );
        dir.file("console.log").unwrap();
        assert!(
            RunDir::create(&path).is_err(),
            "an existing directory is refused"
        );
        drop(dir);
        assert!(!path.exists());
    }
}
