//! `make demo`'s container step: a private containerd (its own root, state and sockets under a
//! temp directory, so the host's containerd is untouched) runs a busybox container with
//! `ctr run --runtime io.containerd.hull.v2`, and the container prints from inside its VM.
//! Everything it started is stopped and removed when it ends, also on failure.
//!
//! Usage: `hull-demo [BIN_DIR]`; BIN_DIR holds containerd-shim-hull-v2 and its helpers
//! (default: the directory of this binary, `target/release` after `make build`).

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Instant;

use hull_tests::containerd::Containerd;
use hull_tests::oci_image::{build_busybox_archive, busybox};

const RUNTIME: &str = "io.containerd.hull.v2";
const CONTAINER: &str = "hull-demo";
const SCRIPT: &str = "echo \"hello from a busybox container in a hull microVM\"; \
                      echo \"  kernel inside:  $(uname -r) on $(grep -c ^processor /proc/cpuinfo) vCPU(s)\"; \
                      echo \"  memory inside:  $(grep MemTotal /proc/meminfo | tr -s ' ')\"; \
                      echo \"  hostname:       $(hostname)\"";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn step(message: &str) {
    println!("==> {message}");
}

fn run() -> Result<(), String> {
    let bin_dir = match std::env::args_os().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(PathBuf::from))
            .ok_or("cannot tell where this binary is: pass the directory of the shim")?,
    };
    let shim = bin_dir.join("containerd-shim-hull-v2");
    if !shim.is_file() {
        return Err(format!(
            "{} is missing: run 'make build' first",
            shim.display()
        ));
    }
    let busybox = busybox().map_err(|missing| missing.to_string())?;

    step("starting a private containerd (the host's containerd is not touched)");
    let containerd = Containerd::start(std::slice::from_ref(&bin_dir))
        .map_err(|missing| missing.to_string())?
        .map_err(|err| err.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| format!("creating a temp dir: {e}"))?;
    let archive = dir.path().join("busybox.tar");
    let image = build_busybox_archive(&busybox, &archive).map_err(|e| chain(&e))?;
    containerd.import(&archive).map_err(|e| chain(&e))?;
    step(&format!(
        "imported {image}, built locally from {}",
        busybox.display()
    ));

    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    step(&format!(
        "ctr run --rm --runtime {RUNTIME} {image} {CONTAINER} sh -c ...   (host kernel: {host_kernel})"
    ));
    let started = Instant::now();
    let status = containerd
        .ctr_command(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            image,
            CONTAINER,
            "sh",
            "-c",
            SCRIPT,
        ])
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| format!("running ctr: {e}"))?;
    let elapsed = started.elapsed();
    if !status.success() {
        let log = containerd.log();
        let errors: Vec<&str> = log
            .lines()
            .filter(|line| line.contains("level=error") || line.contains("level=fatal"))
            .collect();
        let tail = &errors[errors.len().saturating_sub(10)..];
        return Err(format!(
            "ctr run failed ({status}); containerd's last errors:\n{}",
            tail.join("\n")
        ));
    }
    step(&format!(
        "done: the pod's VM booted, ran the container and was torn down in {:.1} s \
         (one run, not a benchmark: hull-bench startup measures it)",
        elapsed.as_secs_f64()
    ));
    Ok(())
}

/// An error with its causes, "outer: inner: innermost".
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
