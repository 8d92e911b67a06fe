//! What the guest kernel offers containers: the file systems, namespaces, cgroup controllers
//! and system calls that hull's container service relies on. The agent reports it at start-up
//! so that a guest kernel built without one of them is found at boot, not at the first
//! container that needs it.

use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

/// File systems the container service mounts.
pub const REQUIRED_FILESYSTEMS: &[&str] = &[
    "proc", "sysfs", "devtmpfs", "tmpfs", "devpts", "cgroup2", "overlay", "ext4", "fuse",
    "virtiofs",
];
/// Namespaces a container is created in (names under /proc/self/ns).
pub const REQUIRED_NAMESPACES: &[&str] = &["mnt", "uts", "ipc", "pid", "net", "user", "cgroup"];
/// cgroup v2 controllers behind StatsContainer and UpdateContainer.
pub const REQUIRED_CONTROLLERS: &[&str] = &["cpu", "cpuset", "io", "memory", "pids"];

/// One thing checked, and whether the guest has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked, for example `filesystem overlay`.
    pub name: String,
    /// Whether the guest has it.
    pub ok: bool,
}

/// Facts about the guest, gathered once at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestReport {
    /// `uname -r` and `uname -m`.
    pub kernel: String,
    /// Online CPUs.
    pub cpus: usize,
    /// MemTotal, in KiB.
    pub mem_kib: u64,
    /// Seconds since the kernel started (from /proc/uptime), i.e. how long the boot took.
    pub uptime_secs: f64,
    checks: Vec<Check>,
}

impl GuestReport {
    /// The line the agent prints when the guest is up. Tests and `make demo` look for its
    /// prefix, `hull-agent <version> started as PID 1`.
    pub fn start_line(&self, version: &str) -> String {
        format!(
            "hull-agent {version} started as PID 1: {}, {} vCPU, {} MiB, up {:.2}s after kernel start",
            self.kernel,
            self.cpus,
            self.mem_kib / 1024,
            self.uptime_secs
        )
    }

    /// Every check, in the order made.
    pub fn checks(&self) -> &[Check] {
        &self.checks
    }

    /// Names of the checks that failed.
    pub fn failures(&self) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect()
    }

    /// One line per area: what the guest has, and what it lacks.
    pub fn check_lines(&self) -> Vec<String> {
        let mut areas: Vec<(&str, Vec<&Check>)> = Vec::new();
        for check in &self.checks {
            let area = check.name.split(' ').next().unwrap_or("");
            match areas.iter_mut().find(|(a, _)| *a == area) {
                Some((_, list)) => list.push(check),
                None => areas.push((area, vec![check])),
            }
        }
        areas
            .into_iter()
            .map(|(area, list)| {
                let items: Vec<String> = list
                    .iter()
                    .map(|c| {
                        let item = c.name.split_once(' ').map_or(c.name.as_str(), |(_, i)| i);
                        if c.ok {
                            item.to_owned()
                        } else {
                            format!("{item}(MISSING)")
                        }
                    })
                    .collect();
                format!("hull-agent: {area}: {}", items.join(" "))
            })
            .collect()
    }
}

/// Inspects the running guest. Needs /proc and /sys mounted.
pub fn inspect() -> GuestReport {
    let uts = nix::sys::utsname::uname().ok();
    let kernel = uts.map_or_else(
        || "unknown kernel".to_owned(),
        |u| {
            format!(
                "Linux {} {}",
                u.release().to_string_lossy(),
                u.machine().to_string_lossy()
            )
        },
    );
    let proc_filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let controllers = fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    let mut checks = Vec::new();
    for fs_name in REQUIRED_FILESYSTEMS {
        checks.push(Check {
            name: format!("filesystems {fs_name}"),
            ok: filesystem_listed(&proc_filesystems, fs_name),
        });
    }
    for ns in REQUIRED_NAMESPACES {
        checks.push(Check {
            name: format!("namespaces {ns}"),
            ok: Path::new("/proc/self/ns").join(ns).exists(),
        });
    }
    for ctl in REQUIRED_CONTROLLERS {
        checks.push(Check {
            name: format!("cgroup2 {ctl}"),
            ok: controllers.split_whitespace().any(|c| c == *ctl),
        });
    }
    checks.push(Check {
        name: "syscalls vsock".into(),
        ok: vsock_available(),
    });
    checks.push(Check {
        name: "syscalls io_uring".into(),
        ok: io_uring_available(),
    });
    checks.push(Check {
        name: "syscalls seccomp".into(),
        ok: seccomp_available(),
    });
    checks.push(Check {
        name: "syscalls pty".into(),
        ok: fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/pts/ptmx")
            .is_ok(),
    });
    GuestReport {
        kernel,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        mem_kib: mem_total_kib(&fs::read_to_string("/proc/meminfo").unwrap_or_default())
            .unwrap_or(0),
        uptime_secs: fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0),
        checks,
    }
}

/// Whether `name` is a line's last field in /proc/filesystems (`nodev\tproc` or `\text4`).
fn filesystem_listed(proc_filesystems: &str, name: &str) -> bool {
    proc_filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some(name))
}

/// MemTotal from /proc/meminfo, in KiB.
pub(crate) fn mem_total_kib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn vsock_available() -> bool {
    socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .is_ok()
}

fn io_uring_available() -> bool {
    let mut params = [0u8; 120]; // struct io_uring_params is 120 bytes since Linux 5.1
                                 // SAFETY: io_uring_setup reads and writes at most sizeof(struct io_uring_params) bytes
                                 // through the pointer, which points at a zeroed buffer of exactly that size that outlives
                                 // the call.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        return false;
    }
    let Ok(fd) = i32::try_from(fd) else {
        return false;
    };
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it; the
    // OwnedFd closes it when dropped.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    true
}

fn seccomp_available() -> bool {
    // PR_GET_SECCOMP answers EINVAL on a kernel built without CONFIG_SECCOMP.
    // SAFETY: PR_GET_SECCOMP takes no pointer arguments and only reads the calling thread's
    // seccomp mode.
    unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) >= 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(checks: Vec<Check>) -> GuestReport {
        GuestReport {
            kernel: "Linux 6.1.0 x86_64".into(),
            cpus: 2,
            mem_kib: 250_000,
            uptime_secs: 0.456,
            checks,
        }
    }

    #[test]
    fn finds_filesystems_with_and_without_nodev() {
        let listing = "nodev\tsysfs\nnodev\tproc\n\text4\nnodev\tvirtiofs\n";
        assert!(filesystem_listed(listing, "ext4"));
        assert!(filesystem_listed(listing, "virtiofs"));
        assert!(!filesystem_listed(listing, "overlay"));
        assert!(!filesystem_listed(listing, "nodev"));
    }

    #[test]
    fn reads_mem_total() {
        let meminfo = "MemTotal:         246436 kB\nMemFree:          200000 kB\n";
        assert_eq!(mem_total_kib(meminfo), Some(246_436));
        assert_eq!(mem_total_kib("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total_kib("MemTotal: lots kB\n"), None);
    }

    #[test]
    fn start_line_names_version_kernel_and_resources() {
        let line = report(vec![]).start_line("0.1.0");
        assert_eq!(
            line,
            "hull-agent 0.1.0 started as PID 1: Linux 6.1.0 x86_64, 2 vCPU, 244 MiB, \
             up 0.46s after kernel start"
        );
    }

    #[test]
    fn check_lines_group_by_area_and_flag_what_is_missing() {
        let r = report(vec![
            Check {
                name: "filesystems proc".into(),
                ok: true,
            },
            Check {
                name: "filesystems virtiofs".into(),
                ok: false,
            },
            Check {
                name: "syscalls vsock".into(),
                ok: true,
            },
        ]);
        assert_eq!(
            r.check_lines(),
            [
                "hull-agent: filesystems: proc virtiofs(MISSING)",
                "hull-agent: syscalls: vsock"
            ]
        );
        assert_eq!(r.failures(), ["filesystems virtiofs"]);
    }

    #[test]
    fn host_probes_do_not_fail_on_a_linux_host() {
        // The CI host is Linux with io_uring and seccomp; these probe real syscalls.
        assert!(io_uring_available(), "io_uring_setup failed on the host");
        assert!(
            seccomp_available(),
            "prctl(PR_GET_SECCOMP) failed on the host"
        );
    }
}
