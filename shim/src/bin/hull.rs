//! `hull`: the command line for operators. Parses arguments and calls the shim library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// hull, a VM-isolated container runtime for containerd.
#[derive(Parser)]
#[command(name = "hull", version)]
struct Cli {
    /// Configuration file to use instead of the search order.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Checks whether this host can run hull pods, and how to fix what is missing.
    Check,
    /// Prints the effective environment: configuration files, resolved paths, versions.
    Env,
    /// Configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Prints the configuration files hull searches, in order.
    ShowDefaultPaths,
    /// Prints the effective configuration as TOML, with the files it came from.
    Show,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hull: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    use anyhow::Context;
    use hull_shim::config::{load, ConfigSearch};
    use hull_shim::paths;

    match cli.command {
        Command::Check => {
            use hull_shim::host::{check, HostFacts, Verdict};
            let loaded =
                load(&ConfigSearch::from_env(cli.config)).context("loading the configuration")?;
            println!("pass  configuration: {}", loaded.origin());
            let lines = check(&HostFacts::probe(&loaded.config), &loaded.config);
            for line in &lines {
                println!("{line}");
            }
            let failed = lines.iter().filter(|l| l.verdict == Verdict::Fail).count();
            if failed > 0 {
                anyhow::bail!("{failed} check(s) failed: this host lacks what hull needs");
            }
            println!("this host has what hull needs");
        }
        Command::Env => {
            let loaded =
                load(&ConfigSearch::from_env(cli.config)).context("loading the configuration")?;
            print!("{}", hull_shim::host::environment_report(&loaded));
        }
        Command::Config {
            command: ConfigCommand::ShowDefaultPaths,
        } => {
            if let Some(path) = &cli.config {
                println!("{}", path.display());
            }
            if let Some(path) = std::env::var_os(paths::CONF_FILE_ENV).filter(|v| !v.is_empty()) {
                println!("{}", PathBuf::from(path).display());
            }
            for path in paths::system_config_files() {
                println!("{}", path.display());
            }
        }
        Command::Config {
            command: ConfigCommand::Show,
        } => {
            let loaded =
                load(&ConfigSearch::from_env(cli.config)).context("loading the configuration")?;
            println!("# from: {}", loaded.origin());
            print!(
                "{}",
                toml::to_string(&loaded.config).context("printing the configuration")?
            );
        }
    }
    Ok(())
}
