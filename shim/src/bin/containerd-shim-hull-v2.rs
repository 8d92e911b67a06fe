//! `containerd-shim-hull-v2`: the containerd runtime v2 shim of hull (runtime type
//! `io.containerd.hull.v2`). containerd runs it; see `hull_shim::service`.

fn main() -> std::process::ExitCode {
    // Logging (containerd's log FIFO, journald) is set up by `service::run`, which knows
    // whether this process serves.
    // One thread for the whole shim, as the design requires.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
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
