//! The `hull-vmm` command line: every flag documented, and bad input refused with a message
//! that names the problem. None of these needs KVM except where a VM must be created.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::kvm;

fn hull_vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
        .args(args)
        .output()
        .expect("run hull-vmm")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A file removed on drop, even when the test fails.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, bytes: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!("hull-vmm-cli-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn help_documents_every_flag() {
    let output = hull_vmm(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--kernel <FILE>",
        "--initrd <FILE>",
        "--cmdline <STR>",
        "--memory <MIB>",
        "--vcpus <N>",
        "--hide-cpu-features",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn unknown_flag_is_refused() {
    let output = hull_vmm(&["--kernel", "k", "--frobnicate"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("--frobnicate"));
}

#[test]
fn kernel_is_required() {
    let output = hull_vmm(&[]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("--kernel"));
}

#[test]
fn zero_vcpus_is_refused() {
    let output = hull_vmm(&["--kernel", "k", "--vcpus", "0"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("--vcpus"));
}

#[test]
fn too_little_memory_names_the_minimum() {
    let output = hull_vmm(&["--kernel", "k", "--memory", "4"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("4 MiB is too small: at least 16 MiB"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn missing_kernel_names_the_path() {
    hull_tests::require!("missing_kernel_names_the_path", kvm());
    let output = hull_vmm(&["--kernel", "/nonexistent/vmlinux", "--memory", "16"]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("cannot read kernel /nonexistent/vmlinux"),
        "{err}"
    );
}

#[test]
fn malformed_kernel_names_the_path_and_the_problem() {
    hull_tests::require!("malformed_kernel_names_the_path_and_the_problem", kvm());
    let kernel = TempFile::new("not-a-kernel", &[0x42; 4096]);
    let output = hull_vmm(&["--kernel", kernel.0.to_str().unwrap(), "--memory", "16"]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains(&format!(
            "kernel {} is not a loadable ELF vmlinux or bzImage",
            kernel.0.display()
        )),
        "{err}"
    );
}
