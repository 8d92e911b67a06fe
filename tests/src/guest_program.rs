//! Test guests whose /init is a small std-only Rust program: compiled here with one `rustc`
//! call into a static binary and packed into an initrd with the image's own builder
//! (`agent/image/build-initrd.sh`), so a device test can run real guest code without the agent.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::prereq::{find_program, Missing};

/// Errors building a test guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rustc or the initrd builder could not run or failed.
    #[error("{step} failed:\n{output}")]
    Build {
        /// What was being done.
        step: String,
        /// What it printed.
        output: String,
    },
}

/// The repository's root (this crate is `tests/` in it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}

fn rustc() -> Result<PathBuf, Missing> {
    if let Some(rustc) = std::env::var_os("RUSTC") {
        return Ok(PathBuf::from(rustc));
    }
    find_program("rustc", "rustc")
        .map_err(|_| Missing::new("program rustc", "install the Rust toolchain (rustup.rs)"))
}

fn run(step: String, command: &mut Command) -> Result<(), Error> {
    let output = command.output().map_err(|e| Error::Build {
        step: step.clone(),
        output: e.to_string(),
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Build {
            step,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        })
    }
}

/// Compiles `source` (a std-only program) into a static binary in `dir` and packs it as the
/// /init of `dir/initrd.img`, which it returns.
pub fn build_initrd(source: &Path, dir: &Path) -> Result<Result<PathBuf, Error>, Missing> {
    build_initrd_with_programs(source, dir, &[])
}

/// [`build_initrd`], with host `programs` under /bin of the initrd, each with the shared
/// libraries it loads (the guest runs them as they are on the host: e2fsprogs' mke2fs, say).
pub fn build_initrd_with_programs(
    source: &Path,
    dir: &Path,
    programs: &[&Path],
) -> Result<Result<PathBuf, Error>, Missing> {
    if let Some(spaced) = programs
        .iter()
        .find(|p| p.to_string_lossy().contains(char::is_whitespace))
    {
        return Ok(Err(Error::Build {
            step: "listing the programs of the initrd".into(),
            output: format!(
                "{}: the initrd builder takes no path with spaces",
                spaced.display()
            ),
        }));
    }
    let rustc = rustc()?;
    let script = repo_root().join("agent/image/build-initrd.sh");
    if !script.is_file() {
        return Err(Missing::new(
            format!("initrd builder {}", script.display()),
            "check out the whole hull tree",
        ));
    }
    let name = source
        .file_stem()
        .map_or_else(|| "guest".into(), |s| s.to_string_lossy().into_owned());
    let binary = dir.join(name);
    let initrd = dir.join("initrd.img");
    let built = run(
        format!("compiling the guest program {}", source.display()),
        Command::new(rustc)
            .args([
                "--edition",
                "2021",
                "-O",
                "-C",
                "target-feature=+crt-static",
            ])
            .args([
                "-C",
                "debuginfo=0",
                "-C",
                "strip=symbols",
                "--target",
                "x86_64-unknown-linux-gnu",
            ])
            .arg("-o")
            .arg(&binary)
            .arg(source),
    )
    .and_then(|()| {
        run(
            format!("packing {} into an initrd", binary.display()),
            Command::new(&script)
                .arg(&binary)
                .arg(&initrd)
                .env("HULL_INITRD_PROGRAMS", programs_list(programs)),
        )
    });
    Ok(built.map(|()| initrd))
}

/// `programs` as `HULL_INITRD_PROGRAMS` takes them: paths separated by spaces.
fn programs_list(programs: &[&Path]) -> std::ffi::OsString {
    let mut list = std::ffi::OsString::new();
    for (i, program) in programs.iter().enumerate() {
        if i > 0 {
            list.push(" ");
        }
        list.push(program.as_os_str());
    }
    list
}
