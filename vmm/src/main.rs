//! `hull-vmm`: boots one microVM from a kernel (and initrd) with the serial console on
//! stdout, vhost-user devices and an in-VMM vsock device behind virtio-mmio, and exits when
//! the guest stops.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use hull_vmm::api::{ApiServer, ApiSocket};
use hull_vmm::boot::DEFAULT_CMDLINE;
use hull_vmm::cpu::cpuid::CpuFeature;
use hull_vmm::launch::{self, LaunchConfig, LaunchedVm};
use hull_vmm::lifecycle::StopReason;
use hull_vmm::seccomp::ThreadKind;
use hull_vmm::signals::SignalSource;
use hull_vmm::virtio::vhost_user::{VhostUserKind, FS_TAG_MAX, VSOCK_CID_MAX, VSOCK_CID_MIN};
use hull_vmm::vm::MAX_VCPUS;

/// Boot a Linux kernel in a KVM microVM; the guest's serial console (COM1) goes to stdout.
#[derive(Debug, Parser)]
#[command(name = "hull-vmm", version)]
struct Args {
    /// Kernel to boot: an ELF vmlinux (PVH entry if it has one) or a bzImage.
    #[arg(long, value_name = "FILE")]
    kernel: PathBuf,
    /// Initial ramdisk to load for the kernel.
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Guest RAM in MiB (at least 16).
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    memory: u64,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=i64::from(MAX_VCPUS)))]
    vcpus: u8,
    /// CPU features to hide from the guest, comma-separated (for KVMs whose instruction
    /// emulator cannot handle them).
    #[arg(long, value_name = "FEATURES", value_delimiter = ',')]
    hide_cpu_features: Vec<Feature>,
    /// A virtio-blk disk served by the vhost-user backend listening on SOCK (hull-blk,
    /// qemu-storage-daemon); repeatable. Each vhost-user device is a virtio-mmio device
    /// announced on the kernel command line (virtio_mmio.device=4K@ADDR:IRQ).
    #[arg(long, value_name = "SOCK")]
    vhost_user_blk: Vec<PathBuf>,
    /// A virtio-fs file system served by the vhost-user backend on SOCK (hull-fs,
    /// virtiofsd), mounted in the guest with `mount -t virtiofs TAG DIR`; repeatable.
    #[arg(long, value_name = "SOCK,tag=TAG", value_parser = parse_fs)]
    vhost_user_fs: Vec<(PathBuf, String)>,
    /// A virtio-net interface served by the vhost-user backend on SOCK (hull-net);
    /// repeatable.
    #[arg(long, value_name = "SOCK")]
    vhost_user_net: Vec<PathBuf>,
    /// A virtio-vsock device with guest context id N served by the vhost-user-vsock
    /// backend on SOCK (hull-vsock, started with the same --guest-cid); at most one.
    #[arg(long, value_name = "SOCK,cid=N", value_parser = parse_vsock)]
    vhost_user_vsock: Option<(PathBuf, u64)>,
    /// An in-VMM virtio-vsock device (no hull-vsock process) whose host side is the
    /// hybrid-vsock unix socket PATH: a host process connects to PATH and writes
    /// "CONNECT <port>\n" to reach the guest's port (answered "OK <hostport>\n"); a guest
    /// connection to host port P goes to the unix socket PATH_P. Needs --guest-cid.
    #[arg(
        long,
        value_name = "PATH",
        requires = "guest_cid",
        conflicts_with = "vhost_user_vsock"
    )]
    vsock_uds: Option<PathBuf>,
    /// The guest's vsock context id for --vsock-uds, 3 to 4294967294.
    #[arg(long, value_name = "N", requires = "vsock_uds",
          value_parser = clap::value_parser!(u64).range(VSOCK_CID_MIN..=VSOCK_CID_MAX))]
    guest_cid: Option<u64>,
    /// Serve the VM's counters (vCPU exits by kind, unclaimed guest accesses, the in-VMM
    /// vsock device's packets and connections) in Prometheus' text format on this unix
    /// socket, once per connection, while it runs.
    #[arg(long, value_name = "PATH")]
    metrics_socket: Option<PathBuf>,
    /// Serve the control API (HTTP/1.1, like cloud-hypervisor's) on this unix socket, mode
    /// 0600: `PUT /api/v1/vm.pause`, `vm.resume`, `vm.shutdown`; `GET /api/v1/vm.info`,
    /// `/api/v1/vmm.ping` (try `curl --unix-socket PATH http://localhost/api/v1/vm.info`).
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
}

/// Parses `SOCK,cid=N`.
fn parse_vsock(value: &str) -> Result<(PathBuf, u64), String> {
    let (socket, cid) = value
        .rsplit_once(",cid=")
        .ok_or_else(|| format!("{value:?} is not SOCK,cid=N"))?;
    if socket.is_empty() {
        return Err(format!("{value:?}: the socket must not be empty"));
    }
    let cid = cid
        .parse::<u64>()
        .ok()
        .filter(|cid| (VSOCK_CID_MIN..=VSOCK_CID_MAX).contains(cid))
        .ok_or_else(|| {
            format!(
                "{value:?}: cid {cid:?} is not a number from {VSOCK_CID_MIN} to {VSOCK_CID_MAX}"
            )
        })?;
    Ok((PathBuf::from(socket), cid))
}

/// Parses `SOCK,tag=TAG`.
fn parse_fs(value: &str) -> Result<(PathBuf, String), String> {
    let (socket, tag) = value
        .rsplit_once(",tag=")
        .ok_or_else(|| format!("{value:?} is not SOCK,tag=TAG"))?;
    if socket.is_empty() || tag.is_empty() || tag.len() > FS_TAG_MAX {
        return Err(format!(
            "{value:?}: the socket must not be empty and the tag must be 1 to {FS_TAG_MAX} bytes"
        ));
    }
    Ok((PathBuf::from(socket), tag.to_owned()))
}

/// CPU features that can be hidden.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Feature {
    /// CMPXCHG16B.
    Cx16,
    /// POPCNT.
    Popcnt,
    /// XSAVE and the AVX family that depends on it.
    Xsave,
}

impl From<Feature> for CpuFeature {
    fn from(feature: Feature) -> Self {
        match feature {
            Feature::Cx16 => CpuFeature::Cx16,
            Feature::Popcnt => CpuFeature::Popcnt,
            Feature::Xsave => CpuFeature::Xsave,
        }
    }
}

fn run(args: Args) -> anyhow::Result<StopReason> {
    let vhost_user = args
        .vhost_user_blk
        .into_iter()
        .map(|socket| (socket, VhostUserKind::Block))
        .chain(
            args.vhost_user_fs
                .into_iter()
                .map(|(socket, tag)| (socket, VhostUserKind::Fs { tag })),
        )
        .chain(
            args.vhost_user_net
                .into_iter()
                .map(|socket| (socket, VhostUserKind::Net)),
        )
        .chain(
            args.vhost_user_vsock
                .map(|(socket, cid)| (socket, VhostUserKind::Vsock { cid })),
        )
        .collect();
    let mut prepared = launch::prepare(LaunchConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        memory_mib: args.memory,
        vcpus: args.vcpus,
        hidden_cpu_features: args.hide_cpu_features.into_iter().map(Into::into).collect(),
        vhost_user,
        vsock: args.vsock_uds.zip(args.guest_cid),
        serial: Box::new(std::io::stdout()),
    })?;
    // SIGINT and SIGTERM stop the VM cleanly. The main thread takes them itself, so the
    // process has one thread besides its vCPUs (issue 7: threads = vCPUs + 1): they are
    // blocked here, before the vCPU threads inherit the mask, and read from a signalfd on the
    // device loop, which this thread runs until the VM stops (a stop the guest makes wakes
    // it through the VM's stop hook).
    let signals = hull_vmm::signals::stop_signals();
    signals
        .thread_block()
        .context("cannot block SIGINT, SIGTERM and SIGUSR1")?;
    let mut device_loop = prepared.device_loop(|| {})?;
    let state = prepared.run_state();
    let metrics = args
        .metrics_socket
        .map(|path| hull_metrics::MetricsListener::bind(&path))
        .transpose()
        .context("cannot serve the metrics socket")?;
    let api = args
        .api_socket
        .map(|path| ApiSocket::bind(&path))
        .transpose()
        .context("cannot serve the api socket")?;
    // Each thread confines itself once its set-up is done: the vCPUs before their first
    // KVM_RUN, this thread once they run (see hull_vmm::seccomp).
    let main_filter = if hull_vmm::seccomp::enabled() {
        let pid = nix::unistd::getpid().as_raw();
        prepared
            .vm_mut()
            .confine_vcpus(hull_vmm::seccomp::filter(ThreadKind::Vcpu, pid)?);
        Some(hull_vmm::seccomp::filter(ThreadKind::Main, pid)?)
    } else {
        None
    };
    // Everything privileged is open: no thread needs a capability from here on.
    hull_vmm::seccomp::drop_capabilities().context("cannot drop capabilities")?;
    let launched = prepared.start()?;
    serve(&launched, &signals, metrics, api)?;
    let LaunchedVm {
        running, registrar, ..
    } = launched;
    if let Some(program) = main_filter {
        hull_vmm::seccomp::apply(ThreadKind::Main, &program)?;
    }
    if let Err(err) = device_loop.run(|| state.stop_requested()) {
        // The VM cannot be served any more: stop it rather than leave it unreachable.
        let err = anyhow::Error::from(err);
        tracing::error!("the device loop failed, stopping the VM: {err:#}");
        running.stop();
    }
    let reason = running.wait();
    // The sockets' files go with their sources (the vsock device's once no vCPU runs).
    drop(device_loop);
    drop(registrar.take());
    Ok(reason)
}

/// Puts the signals, the metrics socket and the control socket on the device loop.
fn serve(
    launched: &LaunchedVm,
    signals: &nix::sys::signal::SigSet,
    metrics: Option<hull_metrics::MetricsListener>,
    api: Option<ApiSocket>,
) -> anyhow::Result<()> {
    let control = launched.running.control();
    let registrar = &launched.registrar;
    let signal_source =
        SignalSource::new(signals, control.clone()).context("cannot open a signalfd")?;
    registrar.add(Box::new(signal_source))?;
    if let Some(listener) = metrics {
        launched.serve_metrics(listener)?;
    }
    if let Some(socket) = api {
        registrar.add(Box::new(ApiServer::new(socket, control, registrar.clone())))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    // The metrics socket (and anything else hull-vmm makes) is its owner's alone: 0600.
    // SAFETY: umask(2) only sets the process's file mode creation mask.
    unsafe { libc::umask(0o077) };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(StopReason::VcpuError { vcpu, detail }) => {
            eprintln!("hull-vmm: {}", StopReason::VcpuError { vcpu, detail });
            ExitCode::FAILURE
        }
        Ok(reason) => {
            tracing::info!(?reason, "guest stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("hull-vmm: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_argument_is_socket_and_cid() {
        assert_eq!(
            parse_vsock("/run/a,b.sock,cid=3").unwrap(),
            (PathBuf::from("/run/a,b.sock"), 3)
        );
        assert_eq!(
            parse_vsock(&format!("v.sock,cid={VSOCK_CID_MAX}"))
                .unwrap()
                .1,
            VSOCK_CID_MAX
        );
    }

    #[test]
    fn malformed_vsock_arguments_are_named() {
        for (value, named) in [
            ("v.sock", "\"v.sock\" is not SOCK,cid=N"),
            (",cid=3", "the socket must not be empty"),
            ("v.sock,cid=2", "cid \"2\""),
            ("v.sock,cid=", "cid \"\""),
            ("v.sock,cid=x3", "cid \"x3\""),
            ("v.sock,cid=4294967295", "cid \"4294967295\""),
        ] {
            let err = parse_vsock(value).unwrap_err();
            assert!(err.contains(named), "{value}: {err}");
        }
    }

    proptest::proptest! {
        /// Any text either parses to its socket and an in-range CID,
        /// or is refused with a message quoting it; nothing panics.
        #[test]
        fn vsock_argument_parses_exactly_or_is_refused_quoting_it(value in "\\PC{0,24}(,cid=[0-9x-]{0,12})?") {
            match parse_vsock(&value) {
                Ok((socket, cid)) => {
                    proptest::prop_assert!((VSOCK_CID_MIN..=VSOCK_CID_MAX).contains(&cid));
                    let (text_socket, text_cid) = value.rsplit_once(",cid=").unwrap();
                    proptest::prop_assert_eq!(socket, PathBuf::from(text_socket));
                    proptest::prop_assert_eq!(text_cid.parse::<u64>(), Ok(cid));
                }
                Err(err) => proptest::prop_assert!(err.contains(&format!("{value:?}")), "{}", err),
            }
        }
    }

    #[test]
    fn vsock_flag_parses_on_the_command_line() {
        let args =
            Args::try_parse_from(["hull-vmm", "--kernel", "k", "--vhost-user-vsock", "s,cid=9"])
                .unwrap();
        assert_eq!(args.vhost_user_vsock, Some((PathBuf::from("s"), 9)));
        let err = Args::try_parse_from(["hull-vmm", "--kernel", "k", "--vhost-user-vsock", "s"])
            .unwrap_err();
        assert!(err.to_string().contains("is not SOCK,cid=N"), "{err}");
    }

    #[test]
    fn in_vmm_vsock_takes_a_socket_and_a_guest_cid_together() {
        let args = Args::try_parse_from([
            "hull-vmm",
            "--kernel",
            "k",
            "--vsock-uds",
            "/run/v.sock",
            "--guest-cid",
            "3",
        ])
        .unwrap();
        assert_eq!(args.vsock_uds, Some(PathBuf::from("/run/v.sock")));
        assert_eq!(args.guest_cid, Some(3));
        let refused = |extra: &[&str]| {
            let mut argv = vec!["hull-vmm", "--kernel", "k"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv).unwrap_err().to_string()
        };
        let err = refused(&["--vsock-uds", "v.sock"]);
        assert!(err.contains("--guest-cid"), "{err}");
        let err = refused(&["--guest-cid", "3"]);
        assert!(err.contains("--vsock-uds"), "{err}");
        for cid in ["2", "4294967295", "x"] {
            let err = refused(&["--vsock-uds", "v.sock", "--guest-cid", cid]);
            assert!(err.contains("--guest-cid") && err.contains(cid), "{err}");
        }
        let err = refused(&[
            "--vsock-uds",
            "v.sock",
            "--guest-cid",
            "3",
            "--vhost-user-vsock",
            "s,cid=3",
        ]);
        assert!(
            err.contains("--vsock-uds") && err.contains("--vhost-user-vsock"),
            "{err}"
        );
    }
}
