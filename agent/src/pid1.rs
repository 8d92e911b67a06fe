//! The agent's duties as the guest's init before it serves the protocol: mount the guest's own
//! file systems, set the host name, report that the guest is up, and run the self-test when
//! asked. Reaping orphans is the event loop's job once serving starts (see [`crate::reaper`]).
//!
//! This module owns nothing container-specific: containers' mounts and cgroups are made per
//! request by the container service.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use anyhow::Context;
use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::unistd::sethostname;

use crate::cmdline::{self, AgentOptions};
use crate::guest_check::{self, GuestReport};

/// One file system PID 1 mounts before anything else runs.
#[derive(Debug, Clone, Copy)]
pub struct GuestMount {
    /// What to mount (for pseudo file systems, the type again).
    pub source: &'static str,
    /// Where, as an absolute path in the guest.
    pub target: &'static str,
    /// File system type.
    pub fstype: &'static str,
    /// Mount flags.
    pub flags: MsFlags,
    /// File-system-specific options.
    pub data: Option<&'static str>,
}

const SECURE: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// The guest's own mounts, in order (parents before children).
pub const GUEST_MOUNTS: &[GuestMount] = &[
    GuestMount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: SECURE,
        data: None,
    },
    GuestMount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: SECURE,
        data: None,
    },
    GuestMount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    GuestMount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620"),
    },
    GuestMount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    GuestMount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    GuestMount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: SECURE,
        data: None,
    },
];

/// What PID 1 does once the guest is set up.
#[derive(Debug)]
pub enum Next {
    /// Serve the protocol.
    Serve,
    /// `agent.selftest`: the self-test ran and the VM is stopping; nothing more to do.
    Stopped,
}

/// Sets the guest up as its init and prints the start-up line. An error leaves the guest
/// unusable; the caller reports it, and the kernel stops the VM when PID 1 exits.
pub fn set_up(cmdline: std::io::Result<String>) -> anyhow::Result<Next> {
    // /proc is not mounted yet on the first read attempt: mount first, then read it.
    mount_guest_filesystems().context("mounting the guest's file systems")?;
    let cmdline = match cmdline {
        Ok(line) => line,
        Err(_) => fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?,
    };
    let (options, warnings) = cmdline::parse(&cmdline);
    for warning in &warnings {
        println!("hull-agent: warning: {warning}");
    }
    apply_options(&options)?;

    let report = guest_check::inspect();
    println!("{}", report.start_line(crate::VERSION));
    if options.selftest {
        selftest(&report)?;
        return Ok(Next::Stopped);
    }
    Ok(Next::Serve)
}

fn apply_options(options: &AgentOptions) -> anyhow::Result<()> {
    if let Some(name) = &options.hostname {
        sethostname(name).with_context(|| format!("setting the host name to {name:?}"))?;
    }
    Ok(())
}

/// Mounts [`GUEST_MOUNTS`]; a target that is already mounted (EBUSY) is left as it is.
fn mount_guest_filesystems() -> anyhow::Result<()> {
    for m in GUEST_MOUNTS {
        fs::create_dir_all(m.target).with_context(|| format!("creating {}", m.target))?;
        match mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(err) => {
                return Err(err).with_context(|| format!("mounting {} on {}", m.fstype, m.target))
            }
        }
    }
    // The links every Linux user space expects in /dev.
    for (link, to) in [
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        if Path::new(link).symlink_metadata().is_ok() {
            if link != "/dev/ptmx" {
                continue;
            }
            // devtmpfs makes a /dev/ptmx node for the initial devpts instance; containers
            // and our ptys use the newinstance mount above, reached through the link.
            fs::remove_file(link).context("replacing /dev/ptmx")?;
        }
        symlink(to, link).with_context(|| format!("linking {link} to {to}"))?;
    }
    Ok(())
}

/// Prints the self-test verdict and stops the VM.
fn selftest(report: &GuestReport) -> anyhow::Result<()> {
    for line in report.check_lines() {
        println!("{line}");
    }
    let failed = report.failures();
    if failed.is_empty() {
        println!(
            "hull-agent: self-test passed ({} checks)",
            report.checks().len()
        );
    } else {
        println!("hull-agent: self-test FAILED: {}", failed.join(", "));
    }
    stop_vm()
}

/// Stops the VM by restarting the guest: with `reboot=t` a triple fault, which every VMM hull
/// runs under (QEMU with `-no-reboot`, the built-in VMM) treats as the end of the VM.
pub fn stop_vm() -> anyhow::Result<()> {
    nix::unistd::sync();
    reboot(RebootMode::RB_AUTOBOOT).context("stopping the VM")?;
    unreachable!("reboot(2) returned without an error")
}
