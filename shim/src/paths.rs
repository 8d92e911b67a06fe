//! Where hull finds its files: the configuration search order, the build cache that
//! `make image` fills, and the helper binaries (looked up next to the running binary first,
//! then on PATH, so a freshly built `target/release` works without `make install`).

use std::env;
use std::path::{Path, PathBuf};

/// Environment variable naming a configuration file, searched after the shim options' path.
pub const CONF_FILE_ENV: &str = "HULL_CONF_FILE";
/// Environment variable naming the build cache.
pub const CACHE_DIR_ENV: &str = "HULL_CACHE_DIR";
/// The administrator's configuration file.
pub const ETC_CONFIG: &str = "/etc/hull/configuration.toml";
/// The packaged default configuration file.
pub const DEFAULTS_CONFIG: &str = "/usr/share/defaults/hull/configuration.toml";
/// The directory of drop-ins beside a configuration file.
pub const DROP_IN_DIR: &str = "config.d";

/// Where running sandboxes keep their sockets and logs: one directory per namespace and
/// sandbox, removed when the sandbox stops.
pub const RUN_ROOT: &str = "/run/hull";

/// The run directory of sandbox `id` in containerd namespace `namespace`.
pub fn sandbox_run_dir(namespace: &str, id: &str) -> PathBuf {
    Path::new(RUN_ROOT).join(namespace).join(id)
}

/// Whether `id` (a sandbox id or containerd namespace) is safe as one path component:
/// 1 to 76 characters of letters, digits, '_', '-' and '.', not starting with '.'.
pub fn is_safe_id(id: &str) -> bool {
    (1..=76).contains(&id.len())
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The system configuration files, in the order they are searched.
pub fn system_config_files() -> Vec<PathBuf> {
    vec![PathBuf::from(ETC_CONFIG), PathBuf::from(DEFAULTS_CONFIG)]
}

/// The build cache (`$HULL_CACHE_DIR`, else `~/.cache/hull`).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = env::var_os(CACHE_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/hull")
}

/// The guest kernel `make image` built (ELF vmlinux, PVH entry).
pub fn default_kernel() -> PathBuf {
    cache_dir().join("vmlinux")
}

/// The guest initrd `make image` built.
pub fn default_initrd() -> PathBuf {
    cache_dir().join("initrd.img")
}

/// Finds a helper binary (`hull-fs`, `hull-vsock`, ...): next to `beside` (the running
/// binary's path), then on `path` (a PATH value). Returns `None` when neither has it.
pub fn find_helper(
    name: &str,
    beside: Option<&Path>,
    path: Option<&std::ffi::OsStr>,
) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = beside
        .and_then(Path::parent)
        .map(Path::to_owned)
        .into_iter()
        .collect();
    if let Some(path) = path {
        dirs.extend(env::split_paths(path));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn make_exe(path: &Path) {
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn only_plain_ids_become_run_directories() {
        assert!(is_safe_id("pod-1_a.b"));
        for bad in ["", "..", ".hidden", "a/b", "a b", &"x".repeat(77)] {
            assert!(!is_safe_id(bad), "{bad:?}");
        }
        assert_eq!(
            sandbox_run_dir("default", "c1"),
            Path::new("/run/hull/default/c1")
        );
    }

    #[test]
    fn helper_beside_the_binary_wins_over_path() {
        let beside = tempfile::tempdir().unwrap();
        let on_path = tempfile::tempdir().unwrap();
        make_exe(&beside.path().join("hull-fs"));
        make_exe(&on_path.path().join("hull-fs"));
        let shim = beside.path().join("containerd-shim-hull-v2");
        let found = find_helper("hull-fs", Some(&shim), Some(on_path.path().as_os_str()));
        assert_eq!(found, Some(beside.path().join("hull-fs")));
    }

    #[test]
    fn helper_falls_back_to_path_and_ignores_non_executables() {
        let beside = tempfile::tempdir().unwrap();
        let on_path = tempfile::tempdir().unwrap();
        std::fs::write(beside.path().join("hull-vsock"), "not executable").unwrap();
        make_exe(&on_path.path().join("hull-vsock"));
        let shim = beside.path().join("containerd-shim-hull-v2");
        let found = find_helper("hull-vsock", Some(&shim), Some(on_path.path().as_os_str()));
        assert_eq!(found, Some(on_path.path().join("hull-vsock")));
        assert_eq!(find_helper("hull-nothing", Some(&shim), None), None);
    }
}
