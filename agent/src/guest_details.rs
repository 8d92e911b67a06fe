//! GetGuestDetails: what the guest is (kernel, CPUs, memory) and what this agent speaks
//! (version, protocol version, the calls it serves). On a host it describes the host.

use std::fs;

use hull_agent_protocol::agent::GuestDetailsResponse;
use hull_agent_protocol::{Call, PROTOCOL_VERSION};
use nix::unistd::{sysconf, SysconfVar};

use crate::guest_check::mem_total_kib;

/// The calls this agent serves; every other call answers UNIMPLEMENTED.
pub const SERVED_CALLS: &[Call] = &[
    Call::Check,
    Call::GetGuestDetails,
    Call::GetMetrics,
    Call::SetGuestDateTime,
    Call::CopyFile,
    Call::UpdateInterface,
    Call::UpdateRoutes,
    Call::ListInterfaces,
    Call::CreateContainer,
    Call::StartContainer,
    Call::RemoveContainer,
    Call::PauseContainer,
    Call::ResumeContainer,
    Call::StatsContainer,
    Call::UpdateContainer,
    Call::ListProcesses,
    Call::ExecProcess,
    Call::SignalProcess,
    Call::WaitProcess,
    Call::RemoveProcess,
    Call::WriteStdin,
    Call::ReadStdout,
    Call::ReadStderr,
    Call::CloseStdin,
    Call::TtyWinResize,
    Call::GetOOMEvent,
    Call::CreateSandbox,
    Call::DestroySandbox,
];

/// Gathers the details from the running kernel.
pub fn gather() -> GuestDetailsResponse {
    let uts = nix::sys::utsname::uname().ok();
    let mut details = GuestDetailsResponse::new();
    details.agent_version = crate::VERSION.to_owned();
    details.protocol_version = PROTOCOL_VERSION;
    if let Some(uts) = uts {
        details.kernel_release = uts.release().to_string_lossy().into_owned();
        details.machine = uts.machine().to_string_lossy().into_owned();
    }
    details.cpus = sysconf(SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0);
    details.memory_bytes = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|meminfo| mem_total_kib(&meminfo))
        .map_or(0, |kib| kib.saturating_mul(1024));
    details.memory_block_size_bytes =
        fs::read_to_string("/sys/devices/system/memory/block_size_bytes")
            .ok()
            .and_then(|hex| parse_block_size(&hex))
            .unwrap_or(0);
    details.supported_calls = SERVED_CALLS
        .iter()
        .map(|call| call.name().to_owned())
        .collect();
    details
}

/// Parses memory_block_size_bytes, which the kernel writes in hexadecimal without a prefix.
fn parse_block_size(hex: &str) -> Option<u64> {
    u64::from_str_radix(hex.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_block_size_in_hexadecimal() {
        assert_eq!(parse_block_size("8000000\n"), Some(128 << 20));
        assert_eq!(parse_block_size("zz"), None);
    }

    #[test]
    fn describes_this_kernel_and_agent() {
        let details = gather();
        let release = nix::sys::utsname::uname().expect("uname");
        assert_eq!(details.kernel_release, release.release().to_string_lossy());
        assert_eq!(details.protocol_version, PROTOCOL_VERSION);
        assert!(details.cpus >= 1);
        assert!(details.memory_bytes > 0);
        assert!(details.supported_calls.iter().any(|c| c == "Check"));
    }
}
