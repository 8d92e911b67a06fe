//! `hull-agent`: PID 1 of a hull guest. Parses nothing itself; see the `hull_agent` library.

use std::process::ExitCode;

fn main() -> ExitCode {
    match hull_agent::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hull-agent: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
