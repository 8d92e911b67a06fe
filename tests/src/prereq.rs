//! Prerequisites of a test, and what happens when one is missing.
//!
//! A test never passes silently for want of something: it either fails, or records a skip
//! that names exactly what was missing and how to get it. Skips go to stderr and to the file
//! named by `HULL_SKIP_LOG`, which `make test` prints at the end of the run. Under
//! `HULL_TEST_STRICT=1` (set by `make test`, which installs everything it can) a missing
//! prerequisite fails the test, except those no command can install, such as hardware
//! virtualization.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A prerequisite the machine lacks.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Missing {
    what: String,
    fix: String,
    installable: bool,
}

impl Missing {
    /// Something `make deps`/`make image` can provide: strict runs fail without it.
    pub fn new(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            fix: fix.into(),
            installable: true,
        }
    }

    /// Something of the machine itself (hardware virtualization, a device): always a skip.
    pub fn hardware(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            fix: fix.into(),
            installable: false,
        }
    }
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "missing {} ({})", self.what, self.fix)
    }
}

/// Records that `test` is skipped because of `missing`, or panics in a strict run when the
/// prerequisite is one the build should have provided.
pub fn skip(test: &str, missing: &Missing) {
    let strict = std::env::var("HULL_TEST_STRICT").is_ok_and(|v| v == "1");
    if strict && missing.installable {
        panic!("{test}: {missing}; HULL_TEST_STRICT=1 does not allow skipping it");
    }
    let line = format!("SKIPPED {test}: {missing}");
    eprintln!("{line}");
    if let Some(log) = std::env::var_os("HULL_SKIP_LOG") {
        if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(log) {
            let _ = writeln!(file, "{line}");
        }
    }
}

/// Unwraps a prerequisite, or records the skip and returns from the calling test.
#[macro_export]
macro_rules! require {
    ($test:expr, $prereq:expr) => {
        match $prereq {
            Ok(value) => value,
            Err(missing) => {
                $crate::prereq::skip($test, &missing);
                return;
            }
        }
    };
}

/// Finds an executable on PATH.
pub fn find_program(name: &str, package: &str) -> Result<PathBuf, Missing> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            Missing::new(
                format!("program {name}"),
                format!("apt-get install {package}"),
            )
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether /dev/kvm opens read-write: small guests run under the builtin VMM, even without
/// hardware virtualization.
pub fn kvm() -> Result<(), Missing> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|err| {
            Missing::hardware(
                format!("usable /dev/kvm ({err})"),
                "load kvm_intel or kvm_amd, or run on a host with hardware virtualization",
            )
        })
}

/// Whether this host can run full Linux guests on KVM: /dev/kvm opens and the CPU reports
/// VMX or SVM. A /dev/kvm without them (this project's test machine: kvm_pvm, shadow paging)
/// runs small guests only.
pub fn hardware_virtualization() -> Result<(), Missing> {
    kvm()?;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_flag = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if has_flag {
        Ok(())
    } else {
        Err(Missing::hardware(
            "hardware virtualization (no vmx or svm flag in /proc/cpuinfo)",
            "run on bare metal or a VM with nested virtualization",
        ))
    }
}

/// Whether the test runs as root (network namespaces, taps, mounts and cgroups need it).
pub fn root() -> Result<(), Missing> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        Ok(())
    } else {
        Err(Missing::hardware(
            "root privileges",
            "run the tests as root (make test does)",
        ))
    }
}

/// Whether tap devices can be created: /dev/net/tun opens.
pub fn tun() -> Result<(), Missing> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map(drop)
        .map_err(|err| {
            Missing::hardware(
                format!("/dev/net/tun ({err})"),
                "modprobe tun, or give the container the tun device",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_names_what_and_how() {
        let m = Missing::new(
            "program qemu-system-x86_64",
            "apt-get install qemu-system-x86",
        );
        assert_eq!(
            m.to_string(),
            "missing program qemu-system-x86_64 (apt-get install qemu-system-x86)"
        );
    }

    #[test]
    fn find_program_reports_the_package() {
        let err = find_program("hull-no-such-program", "hull-no-such-package").unwrap_err();
        assert!(err
            .to_string()
            .contains("apt-get install hull-no-such-package"));
        assert!(find_program("sh", "dash").is_ok());
    }
}
