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
    Check {
        /// Also boot a guest and ask its agent for a health check.
        #[arg(long)]
        boot: bool,
    },
    /// Prints the effective environment: configuration files, resolved paths, versions.
    Env,
    /// Configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Prints a shell completion script for hull (make install puts bash's, zsh's and fish's
    /// where those shells look).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Prints hull's manual page (roff), generated from these definitions.
    Man,
    /// Serves the Prometheus metrics of every running hull pod on one HTTP endpoint
    /// (GET /metrics), each series labelled with its sandbox_id and namespace.
    Monitor {
        /// Address to listen on; loopback by default. Port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
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
    use hull_shim::paths;

    match cli.command {
        Command::Check { boot } => {
            use hull_shim::host::{check, HostFacts, Verdict};
            let loaded = load_config(cli.config)?;
            println!("pass  configuration: {}", loaded.origin());
            let lines = check(&HostFacts::probe(&loaded.config), &loaded.config);
            for line in &lines {
                println!("{line}");
            }
            let failed = lines.iter().filter(|l| l.verdict == Verdict::Fail).count();
            if failed > 0 {
                anyhow::bail!("{failed} check(s) failed: this host lacks what hull needs");
            }
            if boot {
                boot_check(&loaded.config)?;
            }
            println!("this host has what hull needs");
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "hull", &mut std::io::stdout());
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .context("writing the manual page")?;
        }
        Command::Monitor { listen } => monitor(listen)?,
        Command::Env => {
            let loaded = load_config(cli.config)?;
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
            let loaded = load_config(cli.config)?;
            println!("# from: {}", loaded.origin());
            print!(
                "{}",
                toml::to_string(&loaded.config).context("printing the configuration")?
            );
        }
    }
    Ok(())
}

/// The configuration by the usual search, or from `--config`.
fn load_config(path: Option<PathBuf>) -> anyhow::Result<hull_shim::config::LoadedConfig> {
    use anyhow::Context;
    hull_shim::config::load(&hull_shim::config::ConfigSearch::from_env(path))
        .context("loading the configuration")
}

/// `hull monitor`: finds the shims under the run root at each scrape and serves their
/// metrics merged.
fn monitor(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let bound = listener.local_addr().context("the bound address")?;
        println!("hull monitor: serving http://{bound}/metrics");
        std::io::stdout().flush().context("writing to stdout")?;
        hull_shim::monitor::serve_monitor(
            listener,
            std::path::PathBuf::from(hull_shim::paths::RUN_ROOT),
        )
        .await;
        Ok(())
    })
}

/// `hull check --boot`: boots a guest as a pod would and asks its agent how it is.
fn boot_check(config: &hull_shim::config::Config) -> anyhow::Result<()> {
    use anyhow::Context;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let dir = std::env::temp_dir().join(format!("hull-check-{}", std::process::id()));
    let exe = std::env::current_exe().ok();
    runtime.block_on(async {
        println!("....  boot: starting hull-vsock and the VM, waiting for the agent");
        let vm = hull_shim::sandbox::boot::boot(config, "hull-check", &dir, exe.as_deref())
            .await
            .context("booting a guest")?;
        let details = vm.agent.guest_details().await.context("asking the agent for guest details")?;
        println!(
            "pass  boot: the agent answered Check SERVING after {:.1} s: hull-agent {} (protocol {}), \
             Linux {} {}, {} vCPU, {} MiB",
            vm.boot_time.as_secs_f64(),
            details.agent_version,
            details.protocol_version,
            details.kernel_release,
            details.machine,
            details.cpus,
            details.memory_bytes >> 20
        );
        vm.shutdown(std::time::Duration::from_secs(10)).await.context("stopping the guest")?;
        Ok(())
    })
}
