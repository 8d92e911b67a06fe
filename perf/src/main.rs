//! `hull-bench`: parses the command line, runs the subcommand's benchmark from the
//! `hull_bench` library, writes its JSON (and chart) to the results directory and prints a
//! summary. See `hull-bench --help`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use hull_bench::measure::Plan;
use hull_bench::results::{self, Run};
use hull_bench::{all, blk, density, fs, net, report, rpc, soak, startup, vmm, vsock};

/// hull's components measured against peers in the same run (ratios, never bare figures).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Settings every benchmark shares.
#[derive(Debug, Clone, Args)]
struct Common {
    /// Smoke run: two very short rounds; checks the harness works, the figures mean nothing.
    #[arg(long)]
    quick: bool,
    /// Directory for the JSON results and charts [default: $HULL_CACHE_DIR/bench, else
    /// ~/.cache/hull/bench].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Interleaved rounds per workload (each contestant runs once per round).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds of one measured trial.
    #[arg(long, default_value_t = 2.0)]
    trial_secs: f64,
}

impl Common {
    fn plan(&self) -> Plan {
        if self.quick {
            Plan::quick()
        } else {
            Plan::full(
                Duration::from_secs_f64(self.trial_secs.max(0.01)),
                self.rounds,
            )
        }
    }

    fn out(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(results::default_dir)
    }
}

#[derive(Debug, Args)]
struct RpcArgs {
    #[command(flatten)]
    common: Common,
    /// The hull-agent binary [default: beside hull-bench, else on PATH].
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct BlkArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    blk: BlkOnly,
}

#[derive(Debug, Clone, Args)]
struct BlkOnly {
    /// The hull-blk binary [default: beside hull-bench, else on PATH].
    #[arg(long, value_name = "PATH")]
    hull_blk: Option<PathBuf>,
    /// The file both backends and fio use; the write workloads overwrite its contents
    /// [default: a new file filled with data in a temporary directory, removed afterwards].
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Size of the file created when --file is not given, in MiB [default: 1024, --quick 32].
    #[arg(long, value_name = "MIB")]
    size_mib: Option<u64>,
    /// Host page cache: `direct` (O_DIRECT everywhere) or `buffered`.
    #[arg(long, default_value = "direct")]
    cache: blk::Cache,
    /// qemu-storage-daemon's I/O engines: one peer per engine listed, comma-separated
    /// (threads is its default).
    #[arg(long, value_delimiter = ',', default_value = "threads")]
    qsd_aio: Vec<blk::QsdAio>,
    /// Only these workloads, comma-separated, named as the report names them with dashes
    /// for spaces (`4k-randread-qd32`) [default: all five].
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    workloads: Vec<String>,
}

#[derive(Debug, Args)]
struct NetArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    net: NetOnly,
}

#[derive(Debug, Clone, Args)]
struct NetOnly {
    /// The hull-net binary [default: beside hull-bench, else on PATH].
    #[arg(long, value_name = "PATH")]
    hull_net: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct VsockArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    vsock: VsockOnly,
}

#[derive(Debug, Clone, Args)]
struct VsockOnly {
    /// The hull-vsock binary [default: beside hull-bench, else on PATH].
    #[arg(long, value_name = "PATH")]
    hull_vsock: Option<PathBuf>,
    /// rust-vmm's vhost-device-vsock [default:
    /// $HULL_CACHE_DIR/vhost-device-vsock-<version>/bin/vhost-device-vsock, as `make
    /// bench-deps` installs it].
    #[arg(long, value_name = "PATH")]
    vhost_device_vsock: Option<PathBuf>,
}

/// Where the pods' shim is, for startup and density.
#[derive(Debug, Clone, Args)]
struct PodsOnly {
    /// Directory of containerd-shim-hull-v2 and its helpers (hull-agent, hull-vsock,
    /// hull-fs) [default: beside hull-bench, else on PATH].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct StartupArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    pods: PodsOnly,
    /// Pods started at once in the concurrent workload (1: sequential starts only)
    /// [default: 4, --quick 2].
    #[arg(long, value_name = "K")]
    parallel: Option<usize>,
}

#[derive(Debug, Args)]
struct DensityArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    pods: PodsOnly,
    /// Numbers of pods to run at once, comma-separated; those that do not fit in memory are
    /// skipped [default: 1,2,4,8, --quick 1,2].
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pods_at_once: Vec<usize>,
}

#[derive(Debug, Args)]
struct SoakArgs {
    /// Smoke run: 64 cycles unless --cycles says otherwise.
    #[arg(long)]
    quick: bool,
    /// Directory for the JSON result and chart [default: $HULL_CACHE_DIR/bench, else
    /// ~/.cache/hull/bench].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Create/start/delete cycles [default: 1000, --quick 64].
    #[arg(long, value_name = "N")]
    cycles: Option<usize>,
    /// Cycles run at once.
    #[arg(long, value_name = "K", default_value_t = 4)]
    parallel: usize,
    /// The pods' hypervisor: `none` (hull-agent on the host: the runtime's own leaks) or
    /// `qemu` (a microVM per pod; slow under TCG).
    #[arg(long, default_value = "none")]
    hypervisor: soak::Hypervisor,
    #[command(flatten)]
    pods: PodsOnly,
}

#[derive(Debug, Args)]
struct FsArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    fs: FsOnly,
}

#[derive(Debug, Clone, Args)]
struct FsOnly {
    /// The hull-fs binary [default: beside hull-bench, else on PATH].
    #[arg(long, value_name = "PATH")]
    hull_fs: Option<PathBuf>,
    /// Upstream virtiofsd [default: $HULL_CACHE_DIR/virtiofsd-<version>/bin/virtiofsd, as
    /// `make bench-deps` installs it].
    #[arg(long, value_name = "PATH")]
    virtiofsd: Option<PathBuf>,
    /// Size of the file the read and write workloads go through, in MiB [default: 256,
    /// --quick 8].
    #[arg(long, value_name = "MIB")]
    data_mib: Option<u64>,
    /// Files created, stat'ed and unlinked per trial [default: 10000, --quick 200].
    #[arg(long, value_name = "N")]
    files: Option<u64>,
    /// Entries of the directory listed [default: 10000, --quick 500].
    #[arg(long, value_name = "N")]
    dir_entries: Option<u64>,
}

#[derive(Debug, Args)]
struct VmmArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    vmm: VmmOnly,
}

#[derive(Debug, Clone, Args)]
struct VmmOnly {
    /// The hull-vmm binary [default: beside hull-bench, else on PATH].
    #[arg(long, value_name = "PATH")]
    hull_vmm: Option<PathBuf>,
    /// Exits per guest run of vmm-exits [default: 100000, --quick 2000].
    #[arg(long, value_name = "N")]
    exits: Option<u32>,
}

#[derive(Debug, Args)]
struct AllArgs {
    #[command(flatten)]
    common: Common,
    /// The hull-agent binary [default: beside hull-bench, else on PATH].
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    #[command(flatten)]
    blk: BlkOnly,
    #[command(flatten)]
    fs: FsOnly,
    #[command(flatten)]
    net: NetOnly,
    #[command(flatten)]
    vsock: VsockOnly,
    #[command(flatten)]
    pods: PodsOnly,
    #[command(flatten)]
    vmm: VmmOnly,
}

#[derive(Debug, Args)]
struct ReportArgs {
    /// Directory of the JSON results [default: $HULL_CACHE_DIR/bench].
    #[arg(long, value_name = "DIR")]
    results: Option<PathBuf>,
    /// The markdown file whose generated section is rewritten.
    #[arg(long, value_name = "FILE", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/RESULTS.md"))]
    output: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Agent round trip (Check over ttrpc on a unix socket) against an in-process ttrpc echo
    /// and a bare unix-socket ping-pong of the same bytes.
    Rpc(RpcArgs),
    /// vhost-user-blk: hull-blk against qemu-storage-daemon through a fake guest, with host
    /// fio (io_uring) as the limit, on the same file.
    Blk(BlkArgs),
    /// Renders the tables of perf/RESULTS.md from the latest results, and their charts.
    Report(ReportArgs),
    /// Every subcommand in turn (with --quick: the smoke run `make test` uses).
    All(Box<AllArgs>),
    /// vhost-user-fs: hull-fs against upstream virtiofsd, each serving a QEMU guest that runs
    /// the workloads on the share.
    Fs(FsArgs),
    /// vhost-user-net: hull-net against QEMU's built-in virtio-net on a tap, each serving a
    /// QEMU guest that streams TCP and echoes UDP with the host, with host veth as the limit.
    Net(NetArgs),
    /// vhost-user-vsock: hull-vsock against rust-vmm's vhost-device-vsock, each serving a
    /// QEMU guest: stream throughput and connection set-up both ways, with a bare unix socket
    /// pair as the limit.
    Vsock(VsockArgs),
    /// hull-vmm against QEMU microvm booting the same small PVH guest: exec to the guest's
    /// first output and to the VMM's exit on the guest's reset, with KVM_CREATE_VM + KVM_RUN
    /// in this process as the limit; and each VMM's PSS and threads with the guest parked.
    VmmStart(VmmArgs),
    /// hull-vmm against QEMU microvm: port I/O and MMIO exits per second of the same small
    /// guest, with a bare KVM_RUN loop as the limit (kick-to-interrupt latency: not yet).
    VmmExits(VmmArgs),
    /// Memory (PSS, guest RAM apart), threads and descriptors per pod with hull (qemu) and
    /// runc, for growing numbers of pods, through a private containerd.
    Density(DensityArgs),
    /// `ctr run --rm` to first output with hull (qemu and none) and runc, sequential and
    /// concurrent, split by phase from the shim's marks, through a private containerd.
    Startup(StartupArgs),
    /// Many pod life cycles (`ctr run --rm` and an exec in a long-lived pod), in parallel:
    /// containerd's, the long-lived shim's and its agent's descriptors, threads and RSS must
    /// stay flat, and nothing of the pods may be left; fails otherwise.
    Soak(SoakArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hull-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Rpc(args) => {
            let run = rpc::run(&rpc_options(&args.common, args.agent)).context("hull-bench rpc")?;
            finish(&run, &args.common.out())
        }
        Command::Blk(args) => {
            let run = blk::run(&blk_options(&args.common, &args.blk)).context("hull-bench blk")?;
            finish(&run, &args.common.out())
        }
        Command::Report(args) => {
            let dir = args.results.unwrap_or_else(results::default_dir);
            let written = report::render(&dir, &args.output)
                .with_context(|| format!("rendering {}", args.output.display()))?;
            println!("{}: {}", args.output.display(), written.join(", "));
            Ok(())
        }
        Command::All(args) => run_all(&args),
        Command::Fs(args) => {
            let run = fs::run(&fs_options(&args.common, &args.fs)).context("hull-bench fs")?;
            finish(&run, &args.common.out())
        }
        Command::Net(args) => {
            let run = net::run(&net_options(&args.common, &args.net)).context("hull-bench net")?;
            finish(&run, &args.common.out())
        }
        Command::Vsock(args) => {
            let run = vsock::run(&vsock_options(&args.common, &args.vsock))
                .context("hull-bench vsock")?;
            finish(&run, &args.common.out())
        }
        Command::VmmStart(args) => {
            let run = vmm::run_start(&vmm_options(&args.common, &args.vmm))
                .context("hull-bench vmm-start")?;
            finish(&run, &args.common.out())
        }
        Command::VmmExits(args) => {
            let run = vmm::run_exits(&vmm_options(&args.common, &args.vmm))
                .context("hull-bench vmm-exits")?;
            finish(&run, &args.common.out())
        }
        Command::Density(args) => {
            let options = density_options(&args.common, &args.pods, &args.pods_at_once);
            let run = density::run(&options).context("hull-bench density")?;
            finish(&run, &args.common.out())
        }
        Command::Soak(args) => run_soak(&args),
        Command::Startup(args) => {
            let options = startup_options(&args.common, &args.pods, args.parallel);
            let run = startup::run(&options).context("hull-bench startup")?;
            finish(&run, &args.common.out())
        }
    }
}

fn rpc_options(common: &Common, agent: Option<PathBuf>) -> rpc::Options {
    rpc::Options {
        plan: common.plan(),
        quick: common.quick,
        agent,
    }
}

fn blk_options(common: &Common, blk: &BlkOnly) -> blk::Options {
    blk::Options {
        plan: common.plan(),
        quick: common.quick,
        hull_blk: blk.hull_blk.clone(),
        file: blk.file.clone(),
        size_mib: blk.size_mib.unwrap_or(if common.quick { 32 } else { 1024 }),
        cache: blk.cache,
        qsd_aio: if blk.qsd_aio.is_empty() {
            vec![blk::QsdAio::Threads]
        } else {
            blk.qsd_aio.clone()
        },
        workloads: blk.workloads.clone(),
    }
}

fn fs_options(common: &Common, fs: &FsOnly) -> fs::Options {
    let quick = common.quick;
    fs::Options {
        plan: common.plan(),
        quick,
        hull_fs: fs.hull_fs.clone(),
        virtiofsd: fs.virtiofsd.clone(),
        data_mib: fs.data_mib.unwrap_or(if quick { 8 } else { 256 }),
        files: fs.files.unwrap_or(if quick { 200 } else { 10_000 }),
        dir_entries: fs.dir_entries.unwrap_or(if quick { 500 } else { 10_000 }),
    }
}

fn net_options(common: &Common, net: &NetOnly) -> net::Options {
    net::Options {
        plan: common.plan(),
        quick: common.quick,
        hull_net: net.hull_net.clone(),
    }
}

fn vsock_options(common: &Common, vsock: &VsockOnly) -> vsock::Options {
    vsock::Options {
        plan: common.plan(),
        quick: common.quick,
        hull_vsock: vsock.hull_vsock.clone(),
        vhost_device_vsock: vsock.vhost_device_vsock.clone(),
    }
}

fn vmm_options(common: &Common, vmm: &VmmOnly) -> vmm::Options {
    vmm::Options {
        plan: common.plan(),
        quick: common.quick,
        hull_vmm: vmm.hull_vmm.clone(),
        exits: vmm
            .exits
            .unwrap_or(if common.quick { 2_000 } else { 100_000 }),
    }
}

fn startup_options(common: &Common, pods: &PodsOnly, parallel: Option<usize>) -> startup::Options {
    startup::Options {
        plan: common.plan(),
        quick: common.quick,
        parallel: parallel.unwrap_or(if common.quick { 2 } else { 4 }).max(1),
        bin_dir: pods.bin_dir.clone(),
    }
}

fn density_options(common: &Common, pods: &PodsOnly, at_once: &[usize]) -> density::Options {
    let default: &[usize] = if common.quick { &[1, 2] } else { &[1, 2, 4, 8] };
    density::Options {
        plan: common.plan(),
        quick: common.quick,
        pods: if at_once.is_empty() {
            default.to_vec()
        } else {
            at_once.to_vec()
        },
        bin_dir: pods.bin_dir.clone(),
    }
}

/// Runs the soak, saves its result and chart, prints its table; fails when its verdict does.
fn run_soak(args: &SoakArgs) -> anyhow::Result<()> {
    let options = soak::Options {
        cycles: args
            .cycles
            .unwrap_or(if args.quick { soak::QUICK_CYCLES } else { 1000 }),
        parallel: args.parallel.max(1),
        hypervisor: args.hypervisor,
        quick: args.quick,
        bin_dir: args.pods.bin_dir.clone(),
    };
    let run = soak::run(&options).context("hull-bench soak")?;
    let out = args.out.clone().unwrap_or_else(results::default_dir);
    let (json, svg) = all::publish(&run, &out).context("saving the results")?;
    print!("{}", soak::summary(&run));
    println!("results: {}\nchart:   {}", json.display(), svg.display());
    soak::outcome(&run).map_err(|reasons| anyhow::anyhow!("the soak failed:\n{reasons}"))
}

fn print_run(run: &Run, json: &Path, svg: &Path) {
    print!("{}", report::summary(run));
    println!("results: {}\nchart:   {}", json.display(), svg.display());
}

/// Saves `run` and its chart in `out` and prints the summary.
fn finish(run: &Run, out: &Path) -> anyhow::Result<()> {
    let (json, svg) = all::publish(run, out).context("saving the results")?;
    print_run(run, &json, &svg);
    Ok(())
}

/// Runs every subcommand; fails when an implemented one failed.
fn run_all(args: &AllArgs) -> anyhow::Result<()> {
    let out = args.common.out();
    let options = all::Options {
        rpc: rpc_options(&args.common, args.agent.clone()),
        blk: blk_options(&args.common, &args.blk),
        fs: fs_options(&args.common, &args.fs),
        net: net_options(&args.common, &args.net),
        vsock: vsock_options(&args.common, &args.vsock),
        startup: startup_options(&args.common, &args.pods, None),
        density: density_options(&args.common, &args.pods, &[]),
        vmm: vmm_options(&args.common, &args.vmm),
    };
    let (listed, path) = all::run(&options, &out, print_run, |entry| match &entry.status {
        all::Status::Ok { .. } => {}
        all::Status::NotImplemented { message } => println!("{}: {message}", entry.subcommand),
        all::Status::Failed { message } => {
            eprintln!("{}: failed: {message}", entry.subcommand)
        }
    })?;
    println!("summary: {}", path.display());
    let failed: Vec<&str> = listed
        .iter()
        .filter(|l| matches!(l.status, all::Status::Failed { .. }))
        .map(|l| l.subcommand)
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("failed: {}", failed.join(", "))
    }
}
