//! The containerd runtime v2 side of the shim: the process model containerd drives
//! (`start`, `delete`, serve) in [`shim`], and the Task service in [`task`].
//!
//! Built on the `containerd-shim` crate, which owns the command line, daemonizing, the ttrpc
//! server and event publishing. hull supplies what happens in each call: [`task`] the Task
//! service, [`options`] containerd's runtime options, [`metrics`] containerd's view of a
//! container's cgroup statistics; and `start` itself ([`bootstrap`]), because the crate
//! version that speaks containerd 1.x's Task API answers `start` only in 1.x's form.

pub mod bootstrap;
pub mod metrics;
pub mod options;
pub mod shim;
pub mod task;

/// The runtime name containerd knows hull by.
pub const RUNTIME_ID: &str = "io.containerd.hull.v2";

/// Entry point of `containerd-shim-hull-v2`: runs the action containerd asked for.
pub async fn run() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let mut own_logger = false;
    if let Ok(flags) = containerd_shim::parse(&args) {
        // The serving shim (no action, a socket) writes containerd's log FIFO itself, in the
        // configured format; `start` and `delete` log to stderr as containerd-shim does.
        if flags.action.is_empty() && !flags.socket.is_empty() && !flags.version && !flags.info {
            let format = crate::logging::log_format_from_env_or_config();
            match crate::logging::init_serving(std::path::Path::new("log"), flags.debug, format) {
                Ok(()) => own_logger = true,
                Err(err) => {
                    eprintln!("{RUNTIME_ID}: opening containerd's log FIFO: {err}; using containerd-shim's logger");
                    crate::logging::init();
                }
            }
            // Set up now, so a host whose io_uring is unavailable (disabled by
            // kernel.io_uring_disabled or a seccomp profile) fails the pod with the reason
            // rather than losing its containers' output later.
            if let Err(err) = crate::uring::shim_ring() {
                tracing::error!(%err, "setting up the shim's io_uring (is io_uring disabled on this host? see kernel.io_uring_disabled)");
                eprintln!("{RUNTIME_ID}: setting up the shim's io_uring: {err}");
                std::process::exit(1);
            }
        } else {
            crate::logging::init();
        }
        if flags.action == "start" && !flags.version && !flags.info {
            match start(flags).await {
                Ok(()) => std::process::exit(0),
                Err(err) => {
                    eprintln!("{RUNTIME_ID}: start: {err:#}");
                    std::process::exit(1);
                }
            }
        }
    }
    let config = containerd_shim::Config {
        // hull's host children (QEMU, device backends) are tokio::process children that their
        // owners reap; a blanket waitpid(-1) reaper would steal their exit statuses. Container
        // processes live in the guest, so nothing re-parents to the shim: no sub-reaper.
        no_reaper: true,
        no_sub_reaper: true,
        no_setup_logger: own_logger,
        ..Default::default()
    };
    containerd_shim::asynchronous::run::<shim::HullShim>(RUNTIME_ID, Some(config)).await;
}

/// `start`: reads what containerd sent (see [`bootstrap`]), starts (or finds) the pod's
/// serving shim, and answers with its address in the caller's form.
async fn start(flags: containerd_shim::Flags) -> anyhow::Result<()> {
    use std::io::Read;

    use anyhow::Context;
    use tokio::io::AsyncWriteExt;

    let mut input = Vec::new();
    std::io::stdin()
        .take(bootstrap::MAX_INPUT)
        .read_to_end(&mut input)
        .context("reading containerd's start parameters from stdin")?;
    let max_version = std::env::var(bootstrap::MAX_SHIM_VERSION_ENV).ok();
    let caller =
        bootstrap::Caller::detect(&input, &flags.id, &flags.namespace, max_version.as_deref());
    let mut ttrpc_address = std::env::var(bootstrap::TTRPC_ADDRESS_ENV).unwrap_or_default();
    let mut opts = containerd_shim::StartOpts {
        id: flags.id.clone(),
        publish_binary: flags.publish_binary.clone(),
        address: flags.address.clone(),
        ttrpc_address: String::new(),
        namespace: flags.namespace.clone(),
        debug: flags.debug,
    };
    // The bootstrap protocol's values fill what the command line and environment no longer
    // carry.
    if let Some(params) = caller.params() {
        let fill = |slot: &mut String, value: &str| {
            if slot.is_empty() {
                *slot = value.to_owned();
            }
        };
        fill(&mut opts.address, &params.containerd_grpc_address);
        fill(&mut opts.publish_binary, &params.containerd_binary);
        fill(&mut ttrpc_address, &params.containerd_ttrpc_address);
        opts.debug |= params.debug();
        if let Some(dir) = &params.socket_dir {
            tracing::debug!(socket_dir = %dir, "containerd's socket directory is not used: the shim socket goes where containerd-shim puts it");
        }
    }
    anyhow::ensure!(
        !ttrpc_address.is_empty(),
        "containerd's ttrpc address is in neither {} nor the bootstrap parameters",
        bootstrap::TTRPC_ADDRESS_ENV
    );
    anyhow::ensure!(
        !opts.id.is_empty() && !opts.namespace.is_empty(),
        "start needs -id and -namespace"
    );
    opts.ttrpc_address = ttrpc_address.clone();
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().context("the bundle (the working directory)")?
    } else {
        std::path::PathBuf::from(&flags.bundle)
    };
    // The serving shim reads containerd's ttrpc address from its environment.
    let address = shim::start_daemon(
        opts,
        &bundle,
        vec![(bootstrap::TTRPC_ADDRESS_ENV, ttrpc_address.as_str())],
    )
    .await
    .context("starting the serving shim")?;
    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(&caller.answer(&address))
        .await
        .context("writing the answer")?;
    stdout.flush().await.context("writing the answer")?;
    Ok(())
}
