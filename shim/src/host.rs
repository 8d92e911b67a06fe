//! What this host offers hull, and whether it can run hull at all (`hull check`).
//!
//! Facts are gathered once ([`HostFacts::probe`]) and judged by a pure function
//! ([`check`]), so the verdicts are tested on any host by giving them facts. The same facts
//! decide what `hypervisor = "auto"` means ([`HostFacts::auto_hypervisor`]).

use std::fmt;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::{Config, HypervisorKind};
use crate::paths;

/// The helper binaries a pod may start, found next to the running binary or on PATH.
pub const HELPERS: &[&str] = &["hull-fs", "hull-vsock", "hull-blk", "hull-net"];

/// What this host offers for running guests: cheap to probe (no process is started), so a
/// pod's boot asks this alone rather than all of [`HostFacts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Virtualization {
    /// Whether /dev/kvm opens read-write, or why not.
    pub kvm: Result<(), String>,
    /// Whether the CPU reports VMX or SVM (hardware virtualization for full guests).
    pub hw_virt: bool,
}

impl Virtualization {
    /// Opens /dev/kvm and reads the CPU flags.
    pub fn probe() -> Self {
        let kvm = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map(drop)
            .map_err(|e| e.to_string());
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self {
            kvm,
            hw_virt: cpu_has_hw_virt(&cpuinfo),
        }
    }

    /// Whether full Linux guests can run on KVM here.
    pub fn full_guests_on_kvm(&self) -> bool {
        self.kvm.is_ok() && self.hw_virt
    }

    /// What `hypervisor = "auto"` selects: `builtin` where full guests run on KVM, else
    /// `qemu` (which then uses TCG).
    pub fn auto_hypervisor(&self) -> HypervisorKind {
        if self.full_guests_on_kvm() {
            HypervisorKind::Builtin
        } else {
            HypervisorKind::Qemu
        }
    }
}

/// Facts about the host, as gathered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// KVM and hardware virtualization.
    pub virt: Virtualization,
    /// The QEMU binary the configuration names, if found, with its `--version` first line.
    pub qemu: Option<(PathBuf, String)>,
    /// Whether the configured kernel and initrd exist.
    pub kernel: (PathBuf, bool),
    /// See `kernel`.
    pub initrd: (PathBuf, bool),
    /// Each helper binary and where it was found.
    pub helpers: Vec<(&'static str, Option<PathBuf>)>,
    /// `containerd --version`, if containerd is installed.
    pub containerd: Option<String>,
    /// Whether this process can set up an io_uring (the shim's stdio and every backend's
    /// data path need one), or why not.
    pub io_uring: Result<(), String>,
}

impl HostFacts {
    /// Looks at this host, with `config` saying which QEMU, kernel and initrd to look for.
    pub fn probe(config: &Config) -> Self {
        let exe = std::env::current_exe().ok();
        let path = std::env::var_os("PATH");
        let qemu = find_program(&config.qemu.path, path.as_deref())
            .map(|p| (first_line_of(&p, "--version").unwrap_or_default(), p))
            .map(|(version, p)| (p, version));
        let kernel = config.kernel();
        let initrd = config.initrd();
        Self {
            virt: Virtualization::probe(),
            qemu,
            kernel: (kernel.clone(), kernel.is_file()),
            initrd: (initrd.clone(), initrd.is_file()),
            helpers: HELPERS
                .iter()
                .map(|&h| (h, paths::find_helper(h, exe.as_deref(), path.as_deref())))
                .collect(),
            containerd: find_program(Path::new("containerd"), path.as_deref())
                .and_then(|p| first_line_of(&p, "--version")),
            io_uring: probe_io_uring(),
        }
    }

    /// See [`Virtualization::full_guests_on_kvm`].
    pub fn full_guests_on_kvm(&self) -> bool {
        self.virt.full_guests_on_kvm()
    }

    /// See [`Virtualization::auto_hypervisor`].
    pub fn auto_hypervisor(&self) -> HypervisorKind {
        self.virt.auto_hypervisor()
    }
}

/// Sets up (and drops) a small io_uring; the error says why it failed, with the
/// `kernel.io_uring_disabled` sysctl when it is what refuses.
fn probe_io_uring() -> Result<(), String> {
    match io_uring::IoUring::new(2) {
        Ok(_) => Ok(()),
        Err(err) => {
            let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .map(|v| v.trim().to_owned())
                .unwrap_or_default();
            Err(match disabled.as_str() {
                "" | "0" => err.to_string(),
                value => format!("{err} (kernel.io_uring_disabled = {value})"),
            })
        }
    }
}

/// Whether a /proc/cpuinfo lists VMX (Intel) or SVM (AMD).
pub fn cpu_has_hw_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// Finds a program named by the configuration: an absolute path as is, a bare name on `path`.
pub fn find_program(name: &Path, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    if name.is_absolute() {
        return name.is_file().then(|| name.to_owned());
    }
    let name = name.to_str()?;
    paths::find_helper(name, None, path)
}

fn first_line_of(program: &Path, arg: &str) -> Option<String> {
    let output = Command::new(program).arg(arg).output().ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .map(str::to_owned)
}

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Works.
    Pass,
    /// Works, degraded.
    Warn,
    /// hull cannot run pods until this is fixed.
    Fail,
}

/// One line of `hull check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    /// How it came out.
    pub verdict: Verdict,
    /// What was checked.
    pub what: &'static str,
    /// What was found.
    pub found: String,
    /// How to fix it (for Warn and Fail).
    pub fix: Option<String>,
}

impl fmt::Display for CheckLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.verdict {
            Verdict::Pass => "pass",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        write!(f, "{tag}  {}: {}", self.what, self.found)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n      fix: {fix}")?;
        }
        Ok(())
    }
}

/// Judges whether this host can run pods with `config`.
pub fn check(facts: &HostFacts, config: &Config) -> Vec<CheckLine> {
    let line = |verdict, what, found: String, fix: Option<&str>| CheckLine {
        verdict,
        what,
        found,
        fix: fix.map(str::to_owned),
    };
    let mut lines = Vec::new();
    let hypervisor = match config.hypervisor {
        HypervisorKind::Auto => facts.auto_hypervisor(),
        other => other,
    };
    lines.push(match (&facts.virt.kvm, facts.virt.hw_virt) {
        (Ok(()), true) => line(Verdict::Pass, "kvm", "/dev/kvm with hardware virtualization".into(), None),
        (Ok(()), false) => line(
            Verdict::Warn,
            "kvm",
            "/dev/kvm opens, but the CPU has no vmx/svm: full guests run only under QEMU TCG (slow)".into(),
            Some("run on bare metal or enable nested virtualization"),
        ),
        (Err(err), _) => line(
            Verdict::Warn,
            "kvm",
            format!("/dev/kvm unusable ({err}): guests run only under QEMU TCG (slow)"),
            Some("load kvm_intel or kvm_amd and give this user access to /dev/kvm"),
        ),
    });
    let hypervisor_line = match hypervisor {
        HypervisorKind::Builtin if !facts.full_guests_on_kvm() => line(
            Verdict::Fail,
            "hypervisor",
            "builtin needs KVM with hardware virtualization, which this host lacks".into(),
            Some("set hypervisor = \"qemu\" or \"auto\" in the configuration"),
        ),
        HypervisorKind::None => line(
            Verdict::Warn,
            "hypervisor",
            "none: containers run on the host WITHOUT a VM (no isolation)".into(),
            Some("use only for development and measurement"),
        ),
        kind => line(
            Verdict::Pass,
            "hypervisor",
            format!("{kind:?}").to_lowercase(),
            None,
        ),
    };
    lines.push(hypervisor_line);
    if hypervisor == HypervisorKind::Qemu {
        lines.push(match &facts.qemu {
            Some((path, version)) => line(
                Verdict::Pass,
                "qemu",
                format!("{} ({version})", path.display()),
                None,
            ),
            None => line(
                Verdict::Fail,
                "qemu",
                format!("{} not found", config.qemu.path.display()),
                Some("apt-get install qemu-system-x86, or set qemu.path"),
            ),
        });
    }
    if hypervisor != HypervisorKind::None {
        for (what, (path, exists)) in [("kernel", &facts.kernel), ("initrd", &facts.initrd)] {
            lines.push(if *exists {
                line(Verdict::Pass, what, path.display().to_string(), None)
            } else {
                line(
                    Verdict::Fail,
                    what,
                    format!("{} does not exist", path.display()),
                    Some("run 'make image' in the hull tree, or set vm.kernel / vm.initrd"),
                )
            });
        }
    }
    for (name, found) in &facts.helpers {
        lines.push(match found {
            Some(path) => line(Verdict::Pass, name, path.display().to_string(), None),
            None => line(
                Verdict::Warn,
                name,
                "not found next to this binary or on PATH".into(),
                Some("run 'make build' and put target/release on PATH, or 'make install'"),
            ),
        });
    }
    lines.push(match &facts.io_uring {
        Ok(()) => line(Verdict::Pass, "io_uring", "usable".into(), None),
        Err(err) => line(
            Verdict::Fail,
            "io_uring",
            format!("cannot be set up: {err}"),
            Some("sysctl kernel.io_uring_disabled=0, and allow io_uring_setup in any seccomp profile containerd runs under"),
        ),
    });
    lines.push(match &facts.containerd {
        Some(version) => line(Verdict::Pass, "containerd", version.clone(), None),
        None => line(
            Verdict::Warn,
            "containerd",
            "not installed".into(),
            Some("apt-get install containerd"),
        ),
    });
    lines
}

/// What `hull env` prints: where the configuration came from, what hull will run, and the
/// versions involved, as `key = value` lines an operator can paste into a bug report.
pub fn environment_report(loaded: &crate::config::LoadedConfig) -> String {
    let config = &loaded.config;
    let facts = HostFacts::probe(config);
    let mut out = String::new();
    let mut line = |key: &str, value: String| out.push_str(&format!("{key} = {value}\n"));
    line("hull.version", env!("CARGO_PKG_VERSION").to_owned());
    line(
        "config.files",
        if loaded.sources.is_empty() {
            "(none: built-in defaults)".to_owned()
        } else {
            loaded
                .sources
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    line(
        "config.search",
        paths::system_config_files()
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    );
    let chosen = match config.hypervisor {
        HypervisorKind::Auto => format!("auto -> {:?}", facts.auto_hypervisor()).to_lowercase(),
        kind => format!("{kind:?}").to_lowercase(),
    };
    line("hypervisor", chosen);
    line(
        "host.kvm",
        match &facts.virt.kvm {
            Ok(()) => "usable".to_owned(),
            Err(err) => format!("unusable ({err})"),
        },
    );
    line(
        "host.hardware_virtualization",
        facts.virt.hw_virt.to_string(),
    );
    for (key, (path, exists)) in [("vm.kernel", &facts.kernel), ("vm.initrd", &facts.initrd)] {
        line(
            key,
            format!(
                "{}{}",
                path.display(),
                if *exists { "" } else { " (missing)" }
            ),
        );
    }
    line("vm.vcpus", config.vm.vcpus.to_string());
    line("vm.memory_mib", config.vm.memory_mib.to_string());
    line(
        "qemu",
        facts.qemu.as_ref().map_or_else(
            || format!("{} (not found)", config.qemu.path.display()),
            |(path, version)| format!("{} ({version})", path.display()),
        ),
    );
    for (name, found) in &facts.helpers {
        line(
            &format!("helper.{name}"),
            found
                .as_ref()
                .map_or_else(|| "(not found)".to_owned(), |p| p.display().to_string()),
        );
    }
    line(
        "containerd",
        facts
            .containerd
            .clone()
            .unwrap_or_else(|| "(not installed)".to_owned()),
    );
    line("cache_dir", paths::cache_dir().display().to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> HostFacts {
        HostFacts {
            virt: Virtualization {
                kvm: Ok(()),
                hw_virt: true,
            },
            qemu: Some((
                "/usr/bin/qemu-system-x86_64".into(),
                "QEMU emulator version 7.2".into(),
            )),
            kernel: ("/k/vmlinux".into(), true),
            initrd: ("/k/initrd.img".into(), true),
            helpers: HELPERS
                .iter()
                .map(|&h| (h, Some(PathBuf::from("/bin").join(h))))
                .collect(),
            containerd: Some("containerd 1.6.20".into()),
            io_uring: Ok(()),
        }
    }

    /// This project's test machine: /dev/kvm opens, but no VMX/SVM.
    const NO_HW_VIRT: Virtualization = Virtualization {
        kvm: Ok(()),
        hw_virt: false,
    };

    fn verdict_of(lines: &[CheckLine], what: &str) -> Verdict {
        lines
            .iter()
            .find(|l| l.what == what)
            .map(|l| l.verdict)
            .expect(what)
    }

    #[test]
    fn healthy_host_passes_everything_with_builtin() {
        let facts = healthy();
        assert_eq!(facts.auto_hypervisor(), HypervisorKind::Builtin);
        let lines = check(&facts, &Config::default());
        assert!(
            lines.iter().all(|l| l.verdict == Verdict::Pass),
            "{lines:#?}"
        );
        assert!(
            lines.iter().all(|l| l.what != "qemu"),
            "builtin needs no qemu"
        );
    }

    #[test]
    fn no_hardware_virtualization_means_qemu_and_a_warning() {
        let facts = HostFacts {
            virt: NO_HW_VIRT,
            ..healthy()
        };
        assert_eq!(facts.auto_hypervisor(), HypervisorKind::Qemu);
        let lines = check(&facts, &Config::default());
        assert_eq!(verdict_of(&lines, "kvm"), Verdict::Warn);
        assert_eq!(verdict_of(&lines, "qemu"), Verdict::Pass);
        let config = Config {
            hypervisor: HypervisorKind::Builtin,
            ..Config::default()
        };
        let lines = check(&facts, &config);
        assert_eq!(verdict_of(&lines, "hypervisor"), Verdict::Fail);
    }

    #[test]
    fn missing_pieces_fail_with_their_fix() {
        let facts = HostFacts {
            virt: NO_HW_VIRT,
            qemu: None,
            kernel: ("/nowhere/vmlinux".into(), false),
            io_uring: Err(
                "Operation not permitted (os error 1) (kernel.io_uring_disabled = 2)".into(),
            ),
            ..healthy()
        };
        let lines = check(&facts, &Config::default());
        let text: Vec<String> = lines.iter().map(ToString::to_string).collect();
        let text = text.join("\n");
        assert_eq!(verdict_of(&lines, "qemu"), Verdict::Fail);
        assert_eq!(verdict_of(&lines, "kernel"), Verdict::Fail);
        assert!(text.contains("apt-get install qemu-system-x86"), "{text}");
        assert!(text.contains("/nowhere/vmlinux does not exist"), "{text}");
        assert!(text.contains("make image"), "{text}");
        assert_eq!(verdict_of(&lines, "io_uring"), Verdict::Fail);
        assert!(text.contains("kernel.io_uring_disabled=0"), "{text}");
    }

    #[test]
    fn reads_hw_virt_flags() {
        assert!(cpu_has_hw_virt(
            "processor: 0\nflags\t\t: fpu vme vmx sse\n"
        ));
        assert!(cpu_has_hw_virt("flags : svm lm\n"));
        assert!(!cpu_has_hw_virt("flags : fpu hypervisor lm\n"));
        assert!(!cpu_has_hw_virt("model name : vmx-like cpu\n"));
    }
}
