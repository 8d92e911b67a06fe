//! Where `make image` leaves the guest kernel and initrd: `$HULL_CACHE_DIR` (default
//! `~/.cache/hull`), as `vmlinux`, `bzImage` and `initrd.img`. `HULL_KERNEL` and `HULL_INITRD`
//! name other files instead.

use std::env;
use std::path::PathBuf;

use crate::prereq::Missing;

/// The cache directory hull's build uses.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = env::var_os("HULL_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let home = env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/hull")
}

fn artifact(env_var: &str, name: &str) -> Result<PathBuf, Missing> {
    let path = env::var_os(env_var).map_or_else(|| cache_dir().join(name), PathBuf::from);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Missing::new(
            format!("guest {name} at {}", path.display()),
            "run 'make image' (or set ".to_owned() + env_var + ")",
        ))
    }
}

/// The guest kernel as an ELF vmlinux (PVH entry).
pub fn vmlinux() -> Result<PathBuf, Missing> {
    artifact("HULL_KERNEL", "vmlinux")
}

/// The guest kernel as a bzImage.
pub fn bzimage() -> Result<PathBuf, Missing> {
    artifact("HULL_BZIMAGE", "bzImage")
}

/// The guest initrd with hull-agent as /init.
pub fn initrd() -> Result<PathBuf, Missing> {
    artifact("HULL_INITRD", "initrd.img")
}

/// A binary of this workspace (`hull-vsock`, `hull-fs`, ...) from the cargo target directory
/// the running test was built in: `cargo test --workspace` (so `make test`) builds them all.
pub fn workspace_binary(name: &str) -> Result<PathBuf, Missing> {
    let exe = env::current_exe().map_err(|e| {
        Missing::new(
            format!("the test's own path ({e})"),
            "run it with cargo test",
        )
    })?;
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join(name));
    match path {
        Some(path) if path.is_file() => Ok(path),
        _ => Err(Missing::new(
            format!("{name} built beside this test"),
            "run 'cargo test --workspace' (make test), or build it first with cargo build -p its package",
        )),
    }
}

/// Writes `path`, a shim configuration selecting `qemu` with the guest image found here
/// ([`vmlinux`], [`initrd`]) and the debug log, then `extra` (more TOML tables, which must
/// not repeat `[vm]` or `[runtime]`).
pub fn qemu_configuration(path: &std::path::Path, extra: &str) -> Result<(), Missing> {
    let (kernel, initrd) = (vmlinux()?, initrd()?);
    let text = format!(
        "hypervisor = \"qemu\"\n[vm]\nkernel = {:?}\ninitrd = {:?}\n\
         [runtime]\nlog_level = \"debug\"\n{extra}",
        kernel.display().to_string(),
        initrd.display().to_string()
    );
    std::fs::write(path, text).map_err(|err| {
        Missing::new(
            format!("a writable {} ({err})", path.display()),
            "check the temp directory",
        )
    })
}
