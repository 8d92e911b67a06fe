//! A container's OCI spec mounts on their way into its sandbox: which of them name host files
//! (bind mounts and volumes: `ctr run --mount type=bind,...`, CRI's volumes and its
//! /etc/hosts, /etc/resolv.conf, /etc/hostname files), which the guest makes itself (proc,
//! sysfs, tmpfs, devpts, mqueue, cgroup ...), and which a VM cannot be given at all.
//!
//! A host bind reaches a VM through the pod's share ([`crate::sandbox::share`]): the source is
//! bound under the container's own directory of the share, and the spec mount is rewritten
//! to bind that path of the share in the guest, as Kata does. A read-only mount is made
//! read-only on the host side too, before it is attached to the share, so hull-fs itself
//! cannot write through it whatever the guest asks (see [`bind_into_share`]).
//!
//! This module classifies and binds; it does not decide where in the share a mount goes
//! (the share does) or record the mounts for cleanup (the sandbox does).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// File system types the guest (or, with `none`, the host agent) mounts itself: they name no
/// host file, so they pass through unchanged.
pub const GUEST_KINDS: &[&str] = &[
    "proc",
    "sysfs",
    "tmpfs",
    "ramfs",
    "devpts",
    "mqueue",
    "cgroup",
    "cgroup2",
    "hugetlbfs",
];

/// Host trees whose files cannot be shared into a VM: their contents describe the host's
/// kernel, and the guest has its own.
const HOST_KERNEL_TREES: &[&str] = &["/proc", "/sys"];

/// Errors of a container's spec mounts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec's `mounts` is not a list of mount objects.
    #[error("spec mounts: {reason}")]
    Malformed {
        /// What is wrong, naming the index.
        reason: String,
    },
    /// A bind mount's source does not exist (or cannot be looked at) on the host.
    #[error("mount of {destination}: bind source {source_path} does not exist on the host")]
    MissingSource {
        /// The mount's destination in the container.
        destination: String,
        /// The source, as resolved against the bundle.
        source_path: PathBuf,
        /// Why it could not be looked at.
        #[source]
        cause: std::io::Error,
    },
    /// A mount the sandbox cannot serve.
    #[error(
        "mount of {destination} (type {kind:?}, source {source_path:?}) cannot be served: {reason}"
    )]
    Unsupported {
        /// The mount's destination in the container.
        destination: String,
        /// Its type.
        kind: String,
        /// Its source.
        source_path: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// Binding a source into the pod's share failed.
    #[error("{what} {path}")]
    Bind {
        /// The step that failed.
        what: &'static str,
        /// The path it failed on.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A `Result` with this module's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// What a spec mount is, for the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// A file system the guest mounts itself ([`GUEST_KINDS`]).
    Guest,
    /// A bind of a host file or directory.
    HostBind(HostBind),
    /// Any other type (a block device's file system, overlay, nfs ...): the host agent of
    /// `none` may mount it; a VM cannot be given it.
    Other,
}

/// A bind mount of a host file or directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBind {
    /// The source on the host, absolute (a relative source is taken relative to the bundle,
    /// as runc does).
    pub source: PathBuf,
    /// Whether the source is a regular file (else a directory).
    pub file: bool,
    /// Whether the mount is read-only (the last of `ro`/`rw` in its options).
    pub readonly: bool,
    /// Whether submounts of the source come along (`rbind`).
    pub recursive: bool,
}

/// One mount of the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecMount {
    /// Its index in the spec's `mounts`.
    pub index: usize,
    /// Its destination in the container.
    pub destination: String,
    /// Its type as the spec gives it ("" when absent).
    pub fstype: String,
    /// Its source as the spec gives it.
    pub source: String,
    /// What it is.
    pub kind: MountKind,
}

impl SpecMount {
    /// The error refusing this mount for `reason`.
    fn unsupported(&self, reason: impl Into<String>) -> Error {
        Error::Unsupported {
            destination: self.destination.clone(),
            kind: self.fstype.clone(),
            source_path: self.source.clone(),
            reason: reason.into(),
        }
    }
}

/// Reads and classifies the mounts of `spec` (a bundle's config.json as JSON), looking at
/// each bind source on the host: a source that does not exist is an error naming it. Relative
/// sources are resolved against `bundle`.
pub fn classify(spec: &serde_json::Value, bundle: &Path) -> Result<Vec<SpecMount>> {
    let Some(mounts) = spec.get("mounts").filter(|m| !m.is_null()) else {
        return Ok(Vec::new());
    };
    let mounts = mounts.as_array().ok_or_else(|| Error::Malformed {
        reason: "not a list".to_owned(),
    })?;
    mounts
        .iter()
        .enumerate()
        .map(|(index, mount)| classify_one(index, mount, bundle))
        .collect()
}

fn classify_one(index: usize, mount: &serde_json::Value, bundle: &Path) -> Result<SpecMount> {
    let malformed = |reason: &str| Error::Malformed {
        reason: format!("mounts[{index}]: {reason}"),
    };
    let object = mount
        .as_object()
        .ok_or_else(|| malformed("not an object"))?;
    let text = |key: &str| -> Result<String> {
        match object.get(key) {
            None | Some(serde_json::Value::Null) => Ok(String::new()),
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(malformed(&format!("{key} is not a string"))),
        }
    };
    let destination = text("destination")?;
    if destination.is_empty() {
        return Err(malformed("destination is missing"));
    }
    let fstype = text("type")?;
    let source = text("source")?;
    let options: Vec<&str> = match object.get("options") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(options)) => options
            .iter()
            .map(|o| {
                o.as_str()
                    .ok_or_else(|| malformed("an option is not a string"))
            })
            .collect::<Result<_>>()?,
        Some(_) => return Err(malformed("options is not a list")),
    };
    let mut mount = SpecMount {
        index,
        destination,
        fstype,
        source,
        kind: MountKind::Other,
    };
    // As runc: a bind is type "bind", or any type with "bind"/"rbind" among the options.
    let bind = mount.fstype == "bind" || options.iter().any(|o| matches!(*o, "bind" | "rbind"));
    if !bind {
        if GUEST_KINDS.contains(&mount.fstype.as_str()) {
            mount.kind = MountKind::Guest;
        }
        return Ok(mount);
    }
    if mount.source.is_empty() {
        return Err(mount.unsupported("a bind mount needs a source"));
    }
    let source = bundle.join(&mount.source);
    let meta = std::fs::metadata(&source).map_err(|cause| Error::MissingSource {
        destination: mount.destination.clone(),
        source_path: source.clone(),
        cause,
    })?;
    let file = if meta.is_dir() {
        false
    } else if meta.is_file() {
        true
    } else {
        return Err(mount.unsupported(
            "only directories and regular files can be bound (devices, sockets and FIFOs need \
             the sandbox's own devices)",
        ));
    };
    let readonly = options
        .iter()
        .rev()
        .find_map(|o| match *o {
            "ro" => Some(true),
            "rw" => Some(false),
            _ => None,
        })
        .unwrap_or(false);
    mount.kind = MountKind::HostBind(HostBind {
        source,
        file,
        readonly,
        recursive: options.contains(&"rbind"),
    });
    Ok(mount)
}

/// The host binds among `mounts` that a VM gets through its share, refusing what a VM cannot
/// be given: a mount of another type than [`GUEST_KINDS`] and binds, or a bind of the host's
/// /proc or /sys.
pub fn for_vm(mounts: &[SpecMount]) -> Result<Vec<(usize, HostBind)>> {
    let mut binds = Vec::new();
    for mount in mounts {
        match &mount.kind {
            MountKind::Guest => {}
            MountKind::Other => {
                return Err(mount.unsupported(format!(
                    "a VM mounts only binds of host files and directories and the file systems \
                     it makes itself ({})",
                    GUEST_KINDS.join(", ")
                )))
            }
            MountKind::HostBind(bind) => {
                let real =
                    std::fs::canonicalize(&bind.source).map_err(|cause| Error::MissingSource {
                        destination: mount.destination.clone(),
                        source_path: bind.source.clone(),
                        cause,
                    })?;
                if HOST_KERNEL_TREES.iter().any(|tree| real.starts_with(tree)) {
                    return Err(mount.unsupported(format!(
                        "{} is the host kernel's; the VM has its own (use a proc or sysfs mount)",
                        real.display()
                    )));
                }
                binds.push((mount.index, bind.clone()));
            }
        }
    }
    Ok(binds)
}

/// Points spec mount `index` at `guest_source` (where the agent finds the bound source in the
/// guest), keeping its type and options.
pub fn rewrite_source(spec: &mut serde_json::Value, index: usize, guest_source: &str) {
    if let Some(mount) = spec
        .get_mut("mounts")
        .and_then(|m| m.get_mut(index))
        .and_then(serde_json::Value::as_object_mut)
    {
        mount.insert(
            "source".to_owned(),
            serde_json::Value::String(guest_source.to_owned()),
        );
    }
}

fn c_path(path: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

/// `struct mount_attr` of mount_setattr(2) (linux/mount.h), written out here with the
/// kernel's layout rather than taken from libc, whose definition is not exported on every
/// target.
#[repr(C)]
#[allow(dead_code)] // Its fields are read by the kernel, not by Rust.
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// Binds `bind`'s source on `target` (an existing file or directory inside the pod's share).
///
/// The bind is made as a detached copy of the source (open_tree), given its attributes while
/// it is still detached (mount_setattr), then attached (move_mount). The order matters: the
/// share is a shared mount, and a mount attached under it propagates at once into hull-fs's
/// mount namespace, with the flags it has *at that moment*; a read-only remount made
/// afterwards would not propagate, leaving hull-fs's copy writable. With `rbind`, every
/// submount is made read-only too (runc's `ro` leaves submounts writable).
///
/// Host-side, the copy is also nosuid and nodev: hull-fs neither runs programs nor opens
/// devices for the guest (the guest's kernel opens its own device nodes), so the flags cost
/// nothing and take two ways of misusing the share away.
pub fn bind_into_share(bind: &HostBind, target: &Path) -> Result<()> {
    let error = |what, path: &Path| {
        let path = path.to_owned();
        move |source| Error::Bind { what, path, source }
    };
    let source = c_path(&bind.source).map_err(error("bind source", &bind.source))?;
    let target_c = c_path(target).map_err(error("bind target", target))?;
    let mut flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC;
    if bind.recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: open_tree reads a NUL-terminated path that outlives the call; the descriptor it
    // returns is owned by the OwnedFd below and nothing else.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, source.as_ptr(), flags) };
    if fd < 0 {
        return Err(error("cloning the bind source", &bind.source)(
            std::io::Error::last_os_error(),
        ));
    }
    let fd = libc::c_int::try_from(fd).map_err(|_| {
        error("cloning the bind source", &bind.source)(std::io::Error::from(
            std::io::ErrorKind::InvalidData,
        ))
    })?;
    // SAFETY: `fd` was just returned by open_tree and is owned by no one else.
    let tree = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut attr = MountAttr {
        attr_set: MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    if bind.readonly {
        attr.attr_set |= MOUNT_ATTR_RDONLY;
    }
    let mut at_flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if bind.recursive {
        at_flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: the path is an empty NUL-terminated string (AT_EMPTY_PATH: the descriptor
    // itself), `attr` is a live mount_attr of the size passed, and both outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            at_flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(
            error("setting the attributes of the bind of", &bind.source)(
                std::io::Error::last_os_error(),
            ),
        );
    }
    // SAFETY: the source path is empty (MOVE_MOUNT_F_EMPTY_PATH: the descriptor itself), the
    // target a NUL-terminated path; both outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(error("attaching the bind on", target)(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Unmounts a bind made by [`bind_into_share`] (lazily: a busy mount still leaves the
/// namespace) and removes its mount point. Never removes anything that is still a mount
/// point, so the source's files are never touched. Failures are logged.
pub fn unbind(target: &Path) {
    if let Ok(c) = c_path(target) {
        // SAFETY: umount2 reads a NUL-terminated path that outlives the call.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            let err = std::io::Error::last_os_error();
            if !matches!(err.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
                tracing::warn!(target = %target.display(), %err, "unmounting a volume");
                return;
            }
        }
    }
    // rmdir and unlink fail with EBUSY on a mount point, rather than descending into it.
    let removed = match std::fs::symlink_metadata(target) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir(target),
        Ok(_) => std::fs::remove_file(target),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    };
    if let Err(err) = removed {
        tracing::warn!(target = %target.display(), %err, "removing a volume's mount point");
    }
}

/// Creates the mount point for `bind` at `target`: a directory, or an empty file for a file.
pub fn make_mount_point(bind: &HostBind, target: &Path) -> Result<()> {
    let error = |source| Error::Bind {
        what: "creating the mount point",
        path: target.to_owned(),
        source,
    };
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(error)?;
    }
    if bind.file {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(target)
            .map(drop)
            .map_err(error)
    } else {
        std::fs::create_dir(target).map_err(error)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn ctr_default_mounts() -> serde_json::Value {
        json!([
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nosuid", "noexec", "nodev"]}
        ])
    }

    #[test]
    fn the_file_systems_of_ctrs_default_spec_pass_through_to_the_guest() {
        let bundle = tempfile::tempdir().unwrap();
        let spec = json!({ "mounts": ctr_default_mounts() });
        let mounts = classify(&spec, bundle.path()).unwrap();
        assert_eq!(mounts.len(), 7);
        assert!(
            mounts.iter().all(|m| m.kind == MountKind::Guest),
            "{mounts:?}"
        );
        assert!(for_vm(&mounts).unwrap().is_empty());
        assert!(classify(&json!({}), bundle.path()).unwrap().is_empty());
    }

    #[test]
    fn binds_of_directories_and_files_are_host_binds_with_their_mode() {
        let host = tempfile::tempdir().unwrap();
        let file = host.path().join("hosts");
        std::fs::write(&file, "127.0.0.1 localhost\n").unwrap();
        let spec = json!({ "mounts": [
            // ctr run --mount type=bind,src=...,dst=/data,options=rbind:ro
            {"destination": "/data", "type": "bind", "source": host.path(), "options": ["rbind", "ro"]},
            // CRI's /etc/hosts: no type, bind among the options.
            {"destination": "/etc/hosts", "source": file, "options": ["rbind", "rprivate", "rw"]},
            {"destination": "/last-wins", "type": "none", "source": host.path(), "options": ["bind", "ro", "rw"]},
        ]});
        let mounts = classify(&spec, Path::new("/bundle")).unwrap();
        let binds = for_vm(&mounts).unwrap();
        assert_eq!(
            binds,
            [
                (
                    0,
                    HostBind {
                        source: host.path().to_owned(),
                        file: false,
                        readonly: true,
                        recursive: true
                    }
                ),
                (
                    1,
                    HostBind {
                        source: file.clone(),
                        file: true,
                        readonly: false,
                        recursive: true
                    }
                ),
                (
                    2,
                    HostBind {
                        source: host.path().to_owned(),
                        file: false,
                        readonly: false,
                        recursive: false
                    }
                ),
            ]
        );
    }

    #[test]
    fn a_relative_bind_source_is_the_bundles() {
        let bundle = tempfile::tempdir().unwrap();
        std::fs::create_dir(bundle.path().join("data")).unwrap();
        let spec = json!({ "mounts": [
            {"destination": "/data", "type": "bind", "source": "data", "options": ["bind"]}
        ]});
        let mounts = classify(&spec, bundle.path()).unwrap();
        let MountKind::HostBind(bind) = &mounts[0].kind else {
            panic!("{mounts:?}");
        };
        assert_eq!(bind.source, bundle.path().join("data"));
    }

    #[test]
    fn a_missing_bind_source_is_named() {
        let spec = json!({ "mounts": [
            {"destination": "/data", "type": "bind", "source": "/nonexistent/hull-volume", "options": ["rbind"]}
        ]});
        let err = classify(&spec, Path::new("/")).unwrap_err().to_string();
        assert!(
            err.contains("/nonexistent/hull-volume") && err.contains("/data"),
            "{err}"
        );
    }

    #[test]
    fn a_vm_refuses_what_it_cannot_serve_naming_the_mount() {
        let spec = json!({ "mounts": [
            {"destination": "/mnt/disk", "type": "ext4", "source": "/dev/sdb1", "options": []}
        ]});
        let mounts = classify(&spec, Path::new("/")).unwrap();
        assert_eq!(
            mounts[0].kind,
            MountKind::Other,
            "the none hypervisor may mount it"
        );
        let err = for_vm(&mounts).unwrap_err().to_string();
        assert!(
            err.contains("/mnt/disk") && err.contains("ext4") && err.contains("/dev/sdb1"),
            "{err}"
        );

        let spec = json!({ "mounts": [
            {"destination": "/host-sys", "type": "bind", "source": "/sys/kernel", "options": ["rbind"]}
        ]});
        let err = for_vm(&classify(&spec, Path::new("/")).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/host-sys") && err.contains("host kernel"),
            "{err}"
        );

        let spec = json!({ "mounts": [
            {"destination": "/dev/null2", "type": "bind", "source": "/dev/null", "options": ["bind"]}
        ]});
        let err = classify(&spec, Path::new("/")).unwrap_err().to_string();
        assert!(
            err.contains("/dev/null2") && err.contains("regular files"),
            "{err}"
        );
    }

    #[test]
    fn malformed_mounts_are_named_by_index() {
        let bundle = Path::new("/");
        for (mounts, expected) in [
            (json!({"x": 1}), "spec mounts: not a list"),
            (json!([7]), "mounts[0]: not an object"),
            (
                json!([{"type": "proc"}]),
                "mounts[0]: destination is missing",
            ),
            (
                json!([{"destination": "/a", "type": "tmpfs"}, {"destination": 3}]),
                "mounts[1]: destination is not a string",
            ),
            (
                json!([{"destination": "/a", "options": "ro"}]),
                "mounts[0]: options is not a list",
            ),
            (
                json!([{"destination": "/a", "options": [1]}]),
                "mounts[0]: an option is not a string",
            ),
        ] {
            let err = classify(&json!({ "mounts": mounts }), bundle)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{err} does not say {expected}");
        }
        let err = classify(
            &json!({"mounts": [{"destination": "/a", "type": "bind"}]}),
            bundle,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("needs a source"), "{err}");
    }

    #[test]
    fn the_rewritten_source_keeps_type_and_options() {
        let mut spec = json!({ "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ro"]}
        ]});
        rewrite_source(&mut spec, 1, "/run/hull/shared/c1/volumes/1");
        assert_eq!(
            spec["mounts"][1],
            json!({"destination": "/data", "type": "bind", "source": "/run/hull/shared/c1/volumes/1", "options": ["rbind", "ro"]})
        );
        assert_eq!(spec["mounts"][0]["source"], "proc");
        rewrite_source(&mut spec, 9, "/nowhere");
        assert_eq!(spec["mounts"].as_array().unwrap().len(), 2);
    }

    /// Runs `script` with sh in a new mount namespace whose mounts are slaves of this one's
    /// (as hull-fs's are), after `before` ran in this namespace; the namespace is made before
    /// `before` runs, so what `before` mounts reaches it by propagation only.
    fn in_slave_namespace(script: &str, before: impl FnOnce()) -> std::process::Output {
        use std::io::{BufRead, Write};
        let mut child = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "slave", "sh", "-c"])
            .arg(format!("echo ready; read _; {script}"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("unshare runs");
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n");
        before();
        writeln!(child.stdin.take().unwrap()).unwrap();
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut rest).unwrap();
        let mut output = child.wait_with_output().unwrap();
        output.stdout = rest;
        output
    }

    #[test]
    fn a_read_only_bind_is_read_only_in_the_namespaces_it_propagates_to() {
        // The pod's share, as the sandbox makes it: a shared mount of itself.
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("volume");
        std::fs::create_dir(&source).unwrap();
        std::fs::write(source.join("data"), "host data").unwrap();
        let share = crate::sandbox::share::SharedDir::create(&dir.path().join("shared")).unwrap();
        let target = share.host().join("c1").join("volumes").join("0");
        let bind = HostBind {
            source: source.clone(),
            file: false,
            readonly: true,
            recursive: true,
        };
        let output = in_slave_namespace(
            &format!(
                "cat {0}/data; echo; echo x > {0}/written && echo WROTE",
                target.display()
            ),
            || {
                make_mount_point(&bind, &target).unwrap();
                bind_into_share(&bind, &target).unwrap();
            },
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stdout.starts_with("host data"), "{stdout} {stderr}");
        assert!(
            !stdout.contains("WROTE"),
            "written through a ro bind: {stdout}"
        );
        assert!(stderr.contains("Read-only file system"), "{stderr}");
        assert!(!source.join("written").exists());
        // Here too.
        let err = std::fs::write(target.join("written"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));

        unbind(&target);
        assert!(!target.exists(), "the mount point goes");
        assert_eq!(
            std::fs::read_to_string(source.join("data")).unwrap(),
            "host data",
            "the source is untouched"
        );
        let host = share.host().to_owned();
        drop(share);
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(host.to_str().unwrap()),
            "no mount left: {mounts}"
        );
    }

    #[test]
    fn a_writable_file_bind_writes_through_to_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("hostname");
        std::fs::write(&source, "before").unwrap();
        let share = crate::sandbox::share::SharedDir::create(&dir.path().join("shared")).unwrap();
        let target = share.host().join("c1").join("volumes").join("3");
        let bind = HostBind {
            source: source.clone(),
            file: true,
            readonly: false,
            recursive: false,
        };
        make_mount_point(&bind, &target).unwrap();
        bind_into_share(&bind, &target).unwrap();
        std::fs::write(&target, "after").unwrap();
        assert_eq!(std::fs::read_to_string(&source).unwrap(), "after");
        unbind(&target);
        assert!(!target.exists());
        assert_eq!(std::fs::read_to_string(&source).unwrap(), "after");
    }

    #[test]
    fn unbinding_a_mount_point_that_stays_mounted_leaves_the_source_alone() {
        // A second mount stacked on the target survives one unbind: the remaining mount
        // point is not removed, and nothing below it is deleted.
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("volume");
        std::fs::create_dir(&source).unwrap();
        std::fs::write(source.join("keep"), "k").unwrap();
        let target = dir.path().join("target");
        let bind = HostBind {
            source: source.clone(),
            file: false,
            readonly: false,
            recursive: false,
        };
        make_mount_point(&bind, &target).unwrap();
        bind_into_share(&bind, &target).unwrap();
        bind_into_share(&bind, &target).unwrap();
        unbind(&target);
        assert!(source.join("keep").exists());
        assert!(target.join("keep").exists(), "still mounted once");
        unbind(&target);
        assert!(!target.exists());
        assert!(source.join("keep").exists());
    }

    proptest! {
        #[test]
        fn arbitrary_mount_lists_never_panic(
            entries in proptest::collection::vec(
                (
                    proptest::option::of("[a-z/]{0,12}"),
                    proptest::option::of(prop_oneof![
                        Just("bind".to_owned()), Just("proc".to_owned()), "[a-z0-9]{0,8}"
                    ]),
                    proptest::option::of("[a-z/.]{0,16}"),
                    proptest::collection::vec(prop_oneof![
                        Just("rbind".to_owned()), Just("ro".to_owned()), Just("rw".to_owned()), "[a-z=0-9]{0,8}"
                    ], 0..4),
                ),
                0..6,
            )
        ) {
            let mounts: Vec<serde_json::Value> = entries
                .into_iter()
                .map(|(destination, kind, source, options)| json!({
                    "destination": destination, "type": kind, "source": source, "options": options,
                }))
                .collect();
            if let Ok(classified) = classify(&json!({ "mounts": mounts }), Path::new("/nonexistent-bundle")) {
                let _ = for_vm(&classified);
            }
        }
    }
}
