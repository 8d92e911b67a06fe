//! A busybox OCI image built on this machine from Debian's busybox-static, as an OCI archive
//! that `ctr images import` takes. No registry is reachable here, and none is needed.
//!
//! The archive is deterministic (fixed times and owners), so the same busybox gives the same
//! image digest on every run.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::prereq::Missing;

/// The name the image is imported under.
pub const BUSYBOX_IMAGE: &str = "docker.io/hull/busybox:latest";

/// The name of the pod sandbox image (CRI's "pause" image): the same busybox, whose default
/// command sleeps until it is killed, as pause does.
pub const PAUSE_IMAGE: &str = "docker.io/hull/pause:latest";

/// Errors building an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Running busybox or writing the archive failed.
    #[error("building the busybox image at {path}")]
    Io {
        /// The file being written or read.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The busybox binary the image is made from.
pub fn busybox() -> Result<PathBuf, Missing> {
    let path = PathBuf::from("/bin/busybox");
    if path.is_file() {
        Ok(path)
    } else {
        Err(Missing::new(
            "/bin/busybox",
            "apt-get install busybox-static",
        ))
    }
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

/// The root file system layer: busybox, a link per applet in /bin, and the usual top-level
/// directories and /etc files.
fn layer(busybox: &Path) -> std::io::Result<Vec<u8>> {
    let binary = std::fs::read(busybox)?;
    let list = std::process::Command::new(busybox).arg("--list").output()?;
    let applets = String::from_utf8_lossy(&list.stdout).into_owned();
    let mut tar = tar::Builder::new(Vec::new());
    for dir in [
        "bin", "dev", "etc", "proc", "root", "sys", "tmp", "usr", "var",
    ] {
        let mode = if dir == "tmp" { 0o1777 } else { 0o755 };
        let mut h = header(tar::EntryType::Directory, mode, 0);
        tar.append_data(&mut h, format!("{dir}/"), std::io::empty())?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, binary.len() as u64);
    tar.append_data(&mut h, "bin/busybox", binary.as_slice())?;
    for applet in applets.split_whitespace().filter(|a| *a != "busybox") {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    for (path, text) in [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ("etc/hostname", "busybox\n"),
    ] {
        let mut h = header(tar::EntryType::Regular, 0o644, text.len() as u64);
        tar.append_data(&mut h, path, text.as_bytes())?;
    }
    tar.into_inner()
}

/// Writes the busybox image as an OCI archive at `out` and returns the name it imports as.
pub fn build_busybox_archive(busybox: &Path, out: &Path) -> Result<&'static str, Error> {
    build_archive(busybox, out, BUSYBOX_IMAGE, &[], &["sh"])
}

/// Writes the pod sandbox image ([`PAUSE_IMAGE`]) as an OCI archive at `out` and returns the
/// name it imports as. No pause image can be pulled here; this one sleeps instead.
pub fn build_pause_archive(busybox: &Path, out: &Path) -> Result<&'static str, Error> {
    build_archive(busybox, out, PAUSE_IMAGE, &["/bin/sleep"], &["2147483647"])
}

/// Writes a busybox image named `name` with `entrypoint` and `cmd` as an OCI archive at
/// `out`.
fn build_archive(
    busybox: &Path,
    out: &Path,
    name: &'static str,
    entrypoint: &[&str],
    cmd: &[&str],
) -> Result<&'static str, Error> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    let layer = layer(busybox).map_err(io(busybox))?;
    let layer_digest = sha256(&layer);
    let mut config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": cmd,
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
    });
    if !entrypoint.is_empty() {
        config["config"]["Entrypoint"] = json!(entrypoint);
    }
    let config = config.to_string().into_bytes();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{}", sha256(&config)),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer.len(),
        }],
    })
    .to_string()
    .into_bytes();
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", sha256(&manifest)),
            "size": manifest.len(),
            "annotations": { "io.containerd.image.name": name },
        }],
    })
    .to_string()
    .into_bytes();

    let mut archive = tar::Builder::new(Vec::new());
    let mut add = |name: String, bytes: &[u8]| {
        let mut h = header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
        archive.append_data(&mut h, name, bytes)
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io(out))?;
    add("index.json".into(), &index).map_err(io(out))?;
    for blob in [&layer, &config, &manifest] {
        add(format!("blobs/sha256/{}", sha256(blob)), blob).map_err(io(out))?;
    }
    let bytes = archive.into_inner().map_err(io(out))?;
    let mut file = std::fs::File::create(out).map_err(io(out))?;
    file.write_all(&bytes).map_err(io(out))?;
    Ok(name)
}
