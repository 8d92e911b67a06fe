//! `containerd-shim-hull-v2`: the containerd runtime v2 shim of hull (runtime type
//! `io.containerd.hull.v2`). containerd runs it; see `hull_shim::service`.

fn main() -> std::process::ExitCode {
    // Logging (containerd's log FIFO, journald) is set up by `service::run`, which knows
    // whether this process serves.
    // One thread for the whole shim, as the design requires.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // containerd-shim does a few file operations on tokio's blocking pool (at start and
        // exit); its thread then idles 10 s by default. A second is enough to reuse it for
        // the next, and the shim is back to its one thread soon after.
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("containerd-shim-hull-v2: error: starting the event loop: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(hull_shim::service::run());
    std::process::ExitCode::SUCCESS
}
