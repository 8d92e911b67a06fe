//! Test helpers for the vsock device: a temporary directory that removes itself.

use std::path::{Path, PathBuf};

/// A fresh directory under the system temp dir, removed with its content on drop.
pub struct TestDir(PathBuf);

impl TestDir {
    /// Creates `hull-devices-<name>-<pid>-<n>`.
    pub fn new(name: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("hull-devices-{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).expect("creating a test directory");
        Self(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
