//! Pods through a real containerd, for `startup` and `density`: the end-to-end tests' private
//! containerd (`hull_tests::containerd`, its own root, state and sockets, so the host's
//! containerd is untouched) with the busybox image built on this machine, and a configuration
//! file per hull variant, handed to the shim as containerd's runtime options.
//!
//! Every container a run creates is named `hb-<pid>-<n>`; [`Pods::remove`] stops and removes
//! one, and dropping [`Pods`] removes whatever is still there (the harness's Drop kills and
//! deletes every task and container, stops containerd and unmounts what it left).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use hull_tests::containerd::Containerd;
use hull_tests::oci_image::{build_busybox_archive, busybox};
use hull_tests::prereq::find_program as find_on_path;

use crate::child::{find_program, RunDir};
use crate::{Error, Result};

/// hull's runtime type in containerd.
pub const HULL_RUNTIME: &str = "io.containerd.hull.v2";
/// runc's.
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
/// The shim binary; its helpers (hull-agent, hull-vsock, hull-fs) are found beside it.
pub const SHIM: &str = "containerd-shim-hull-v2";

/// A way to run a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Runtime {
    /// hull with the `qemu` hypervisor: a QEMU microVM per pod (TCG without hardware
    /// virtualization), hull-vsock and hull-fs beside it.
    HullQemu,
    /// hull with the `builtin` hypervisor: the VMM inside the shim's own process, hull-fs
    /// beside it. Where a Linux guest cannot boot under it (no hardware virtualization), its
    /// pods get a guest that only halts and never get past their boot (see
    /// [`Pods::builtin_boots_linux`]).
    HullBuiltin,
    /// hull with the `none` hypervisor: hull-agent on the host, no VM (the runtime's own
    /// overhead, for measurement only).
    HullNone,
    /// runc, containerd's default runtime: no VM, no agent.
    Runc,
}

impl Runtime {
    /// Its name in results. `tcg`: QEMU runs without hardware virtualization.
    pub fn label(self, tcg: bool) -> String {
        match self {
            Runtime::HullQemu if tcg => "hull-qemu (TCG)".into(),
            Runtime::HullQemu => "hull-qemu (KVM)".into(),
            Runtime::HullBuiltin if tcg => "hull-builtin (boot only)".into(),
            Runtime::HullBuiltin => "hull-builtin".into(),
            Runtime::HullNone => "hull-none".into(),
            Runtime::Runc => "runc".into(),
        }
    }

    /// Its runtime type in containerd.
    pub fn runtime_type(self) -> &'static str {
        match self {
            Runtime::HullQemu | Runtime::HullBuiltin | Runtime::HullNone => HULL_RUNTIME,
            Runtime::Runc => RUNC_RUNTIME,
        }
    }

    /// The helpers the shim needs beside it for this runtime.
    fn helpers(self) -> &'static [&'static str] {
        match self {
            Runtime::HullQemu => &["hull-vsock", "hull-fs"],
            Runtime::HullBuiltin => &["hull-fs"],
            Runtime::HullNone => &["hull-agent"],
            Runtime::Runc => &[],
        }
    }
}

/// The agent's start timeout of builtin pods that cannot boot Linux here, seconds: long
/// enough for a batch of pods to start and be measured, short enough not to keep the run
/// waiting (each such pod's boot fails when it expires, as it must).
pub const BUILTIN_BOOT_TIMEOUT_SECS: u64 = 30;

/// The configuration of the `builtin` hypervisor's pods, with `phase_key` (the shim's phase
/// file): the guest image `make image` built where Linux boots under the builtin VMM, else a
/// guest that writes a line and halts (its vCPU sleeps in KVM) with the agent's start
/// timeout cut to [`BUILTIN_BOOT_TIMEOUT_SECS`].
fn builtin_config(dir: &Path, phase_key: &str) -> Result<String> {
    let initrd = hull_tests::artifacts::initrd()?;
    let (kernel, agent) = if Pods::builtin_boots_linux() {
        (hull_tests::artifacts::vmlinux()?, String::new())
    } else {
        use hull_tests::tiny_guest::{print, tiny_kernel, HALT};
        let mut code = print(b"hull-bench: a guest that halts\n");
        code.extend_from_slice(&HALT);
        let kernel = dir.join("halting-guest");
        std::fs::write(&kernel, tiny_kernel(&code)).map_err(|source| Error::Io {
            what: format!("writing {}", kernel.display()),
            source,
        })?;
        (
            kernel,
            format!("[agent]\nstart_timeout_secs = {BUILTIN_BOOT_TIMEOUT_SECS}\n"),
        )
    };
    Ok(format!(
        "hypervisor = \"builtin\"\n[vm]\nkernel = {:?}\ninitrd = {:?}\n{agent}[runtime]\n{phase_key}",
        kernel.display().to_string(),
        initrd.display().to_string()
    ))
}

/// Whether full guests run on KVM here (/dev/kvm opens and the CPU has VMX or SVM); the
/// shim's qemu backend uses TCG otherwise.
pub fn tcg() -> bool {
    hull_tests::prereq::hardware_virtualization().is_err()
}

/// A private containerd ready to run busybox pods with the runtimes asked for.
pub struct Pods {
    containerd: Containerd,
    image: &'static str,
    configs: BTreeMap<Runtime, PathBuf>,
    prefix: String,
    next: Cell<usize>,
    shim: PathBuf,
    /// The file hull's shims append their start-up marks to (`runtime.phase_file`).
    phase_file: PathBuf,
    // Dropped after containerd, which may still read the configuration files.
    _dir: RunDir,
}

impl Pods {
    /// Starts containerd for `runtimes`, with the shim from `bin_dir` (default: beside
    /// hull-bench, else on PATH); `purpose` names the run's temporary directory.
    pub fn start(purpose: &str, bin_dir: Option<&Path>, runtimes: &[Runtime]) -> Result<Self> {
        let explicit = bin_dir.map(|dir| dir.join(SHIM));
        let shim = find_program(
            SHIM,
            explicit.as_deref(),
            "build it with 'cargo build -p hull-shim' or pass --bin-dir DIR",
        )?;
        let shim_dir = shim
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_owned);
        for runtime in runtimes {
            for helper in runtime.helpers() {
                if !shim_dir.join(helper).is_file() {
                    return Err(Error::MissingProgram {
                        name: shim_dir.join(helper).display().to_string(),
                        fix: "build it beside the shim ('cargo build' of the workspace)".into(),
                    });
                }
            }
        }
        find_on_path("runc", "runc")?;
        let dir = RunDir::new(&std::env::temp_dir(), purpose)?;
        let phase_file = dir.path().join("phases");
        // The shims append their marks there: containerd may drop a shim's last log lines.
        let phase_key = format!("phase_file = {:?}\n", phase_file.display().to_string());
        let mut configs = BTreeMap::new();
        for &runtime in runtimes {
            let text = match runtime {
                Runtime::HullQemu => {
                    let kernel = hull_tests::artifacts::vmlinux()?;
                    let initrd = hull_tests::artifacts::initrd()?;
                    format!(
                        "hypervisor = \"qemu\"\n[vm]\nkernel = {:?}\ninitrd = {:?}\n\
                         [runtime]\n{phase_key}",
                        kernel.display().to_string(),
                        initrd.display().to_string()
                    )
                }
                Runtime::HullBuiltin => builtin_config(dir.path(), &phase_key)?,
                Runtime::HullNone => format!(
                    "hypervisor = \"none\"\n[runtime]\nenable_none_hypervisor = true\n{phase_key}"
                ),
                Runtime::Runc => continue,
            };
            let path = dir.path().join(format!("{runtime:?}.toml"));
            std::fs::write(&path, text).map_err(|source| Error::Io {
                what: format!("writing {}", path.display()),
                source,
            })?;
            configs.insert(runtime, path);
        }
        let busybox = busybox()?;
        let containerd = Containerd::start(&[shim_dir])?.map_err(|source| Error::Containerd {
            what: "starting a private containerd".into(),
            source,
        })?;
        let archive = dir.path().join("busybox.tar");
        let image = build_busybox_archive(&busybox, &archive)?;
        containerd
            .import(&archive)
            .map_err(|source| Error::Containerd {
                what: "importing the busybox image".into(),
                source,
            })?;
        Ok(Self {
            containerd,
            image,
            configs,
            prefix: format!("hb-{}", std::process::id()),
            next: Cell::new(0),
            shim,
            phase_file,
            _dir: dir,
        })
    }

    /// Whether a builtin pod boots the Linux guest here (hardware virtualization): where it
    /// does not, its VM runs a guest that only halts, and the pod stays in its boot until
    /// the agent's start timeout ([`BUILTIN_BOOT_TIMEOUT_SECS`]) fails it.
    pub fn builtin_boots_linux() -> bool {
        !tcg()
    }

    /// The pid of the shim process of pod `id`, found by its command line (`-id ID`), for
    /// a pod whose task does not exist yet.
    pub fn shim_pid(&self, id: &str) -> Option<u32> {
        let wanted = format!("\0-id\0{id}\0");
        std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .find_map(|entry| {
                let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
                let program = cmdline.split(|b| *b == 0).next()?;
                let is_shim = program.ends_with(SHIM.as_bytes());
                // /proc/PID/cmdline ends every argument, the last one too, with a NUL.
                (is_shim && String::from_utf8_lossy(&cmdline).contains(&wanted)).then_some(pid)
            })
    }

    /// The shim binary the pods use.
    pub fn shim(&self) -> &Path {
        &self.shim
    }

    /// A container id not used before in this run.
    pub fn new_id(&self) -> String {
        let n = self.next.get();
        self.next.set(n + 1);
        format!("{}-{n}", self.prefix)
    }

    /// `ctr run` of container `id` with `runtime`, `flags` (`--rm`, `-d`) and `args` as the
    /// container's command.
    pub fn run_command(
        &self,
        runtime: Runtime,
        flags: &[&str],
        id: &str,
        args: &[&str],
    ) -> Command {
        let mut all: Vec<&str> = vec!["run", "--runtime", runtime.runtime_type()];
        if let Some(config) = self.configs.get(&runtime).and_then(|p| p.to_str()) {
            all.extend(["--runtime-config-path", config]);
        }
        all.extend_from_slice(flags);
        all.push(self.image);
        all.push(id);
        all.extend_from_slice(args);
        self.containerd.ctr_command(&all)
    }

    /// A `ctr` command with `args` against this run's containerd, to spawn (for work done in
    /// other threads: [`Pods`] itself stays on the thread that made it).
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        self.containerd.ctr_command(args)
    }

    /// The pid of this run's containerd (found by its configuration file, beside its socket).
    pub fn containerd_pid(&self) -> Option<u32> {
        let dir = self.containerd.address().parent()?.to_owned();
        let config = dir.join("config.toml");
        let config = config.to_str()?;
        hull_tests::leftovers::pids_with(&["--config", config])
            .into_iter()
            .find_map(|pid| u32::try_from(pid).ok())
    }

    /// The prefix of every container id of this run (`hb-<pid>-`).
    pub fn id_prefix(&self) -> String {
        format!("{}-", self.prefix)
    }

    /// Runs `ctr` with `args`, failing with everything it printed.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        self.containerd
            .ctr(args)
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .map_err(|source| Error::Containerd {
                what: format!("ctr {}", args.join(" ")),
                source,
            })
    }

    /// Kills container `id`'s task, then deletes the task and the container; what is not
    /// there is skipped.
    pub fn remove(&self, id: &str) {
        let _ = self.containerd.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
        // The task must have exited before it can be deleted.
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.containerd.ctr(&["tasks", "delete", id]).is_err()
            && self.task_pid(id).is_some()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.containerd.ctr(&["containers", "delete", id]);
    }

    /// The pid `ctr tasks ls` shows for container `id` (for hull the shim's, for runc the
    /// container's first process), when its task exists.
    pub fn task_pid(&self, id: &str) -> Option<u32> {
        let listing = self.ctr(&["tasks", "ls"]).ok()?;
        listing.lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next() == Some(id))
                .then(|| fields.next()?.parse().ok())
                .flatten()
        })
    }

    /// The state `ctr tasks ls` shows for container `id` ("RUNNING", "STOPPED", ...).
    pub fn task_status(&self, id: &str) -> Option<String> {
        let listing = self.ctr(&["tasks", "ls"]).ok()?;
        listing.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.first() == Some(&id))
                .then(|| fields.get(2).map(|s| (*s).to_owned()))
                .flatten()
        })
    }

    /// Containers and tasks this run left in containerd.
    pub fn leftovers(&self) -> Vec<String> {
        let (containers, tasks) = self.containerd.leftovers();
        containers
            .into_iter()
            .map(|c| format!("container {c}"))
            .chain(tasks.into_iter().map(|t| format!("task {t}")))
            .filter(|what| what.contains(&self.prefix))
            .collect()
    }

    /// The start-up marks the shim recorded for pod `id`: those of the phase file (see
    /// [`phase_file_marks`]), and any it lacks from containerd's log (see [`phase_marks`]).
    pub fn marks(&self, id: &str) -> BTreeMap<String, SystemTime> {
        let recorded = std::fs::read_to_string(&self.phase_file).unwrap_or_default();
        let mut marks = phase_file_marks(&recorded, id);
        for (phase, at) in phase_marks(&self.containerd.log(), id) {
            marks.entry(phase).or_insert(at);
        }
        marks
    }

    /// containerd's log lines (the shim's among them) that mention `needle`, the last `most`,
    /// for an error message.
    pub fn log_mentioning(&self, needle: &str, most: usize) -> String {
        let log = self.containerd.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
        lines[lines.len().saturating_sub(most)..].join("\n")
    }

    /// containerd's log lines that report errors, for an error message.
    pub fn log_errors(&self) -> String {
        let log = self.containerd.log();
        let errors: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("level=error") || l.contains("level=fatal"))
            .collect();
        errors[errors.len().saturating_sub(10)..].join("\n")
    }
}

/// The shim's start-up marks for pod `id` in containerd's log `log`: lines whose message is
/// `hull phase sandbox=ID phase=NAME` (or `container=ID`), logged by `hull_shim::phase`, with
/// their RFC 3339 `time`. A phase marked twice keeps its first time.
pub fn phase_marks(log: &str, id: &str) -> BTreeMap<String, SystemTime> {
    let mut marks = BTreeMap::new();
    for line in log.lines() {
        let Some(message) = line.split_once("msg=\"hull phase ").map(|(_, m)| m) else {
            continue;
        };
        let mut phase = None;
        let mut ours = false;
        for token in message.split_whitespace() {
            let token = token.trim_end_matches('"');
            match token.split_once('=') {
                Some(("sandbox" | "container", value)) => ours |= value == id,
                Some(("phase", value)) => phase = Some(value),
                _ => {}
            }
        }
        let time = line
            .split_once("time=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .and_then(|(time, _)| chrono::DateTime::parse_from_rfc3339(time).ok());
        if let (true, Some(phase), Some(time)) = (ours, phase, time) {
            marks
                .entry(phase.to_owned())
                .or_insert_with(|| SystemTime::from(time));
        }
    }
    marks
}

/// The start-up marks for pod `id` in the shims' phase file `text`: lines
/// `<unix seconds>.<nanoseconds> sandbox=ID phase=NAME` (or `container=ID`), appended by
/// `hull_shim::phase` when `runtime.phase_file` is set. A phase marked twice keeps its first
/// time; lines that do not parse are skipped.
pub fn phase_file_marks(text: &str, id: &str) -> BTreeMap<String, SystemTime> {
    let mut marks = BTreeMap::new();
    for line in text.lines() {
        let mut fields = line.split(' ');
        let (Some(time), Some(what), Some(phase), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let ours =
            matches!(what.split_once('='), Some(("sandbox" | "container", value)) if value == id);
        let Some(("phase", phase)) = phase.split_once('=') else {
            continue;
        };
        let Some((secs, nanos)) = time.split_once('.') else {
            continue;
        };
        let (Ok(secs), Ok(nanos)) = (secs.parse::<u64>(), nanos.parse::<u32>()) else {
            continue;
        };
        if !ours || nanos >= 1_000_000_000 || phase.is_empty() {
            continue;
        }
        let Some(at) = SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos)) else {
            continue;
        };
        marks.entry(phase.to_owned()).or_insert(at);
    }
    marks
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LOG: &str = concat!(
        "time=\"2026-11-23T19:40:01.5Z\" level=info msg=\"hull phase sandbox=hb-1-0 phase=sandbox-start\"\n",
        "\n",
        "time=\"2026-11-23T19:40:01.25Z\" level=info msg=\"hull phase sandbox=hb-1-10 phase=sandbox-start\"\n",
        "time=\"2026-11-23T19:40:03.75Z\" level=info msg=\"hull phase sandbox=hb-1-0 phase=agent-ready\"\n",
        "time=\"2026-11-23T19:40:04Z\" level=info msg=\"hull phase container=hb-1-0 phase=container-created\"\n",
        "time=\"2026-11-23T19:40:05Z\" level=info msg=\"hull phase sandbox=hb-1-0 phase=sandbox-start\"\n",
        "time=\"2026-11-23T19:40:05Z\" level=info msg=\"sandbox started sandbox=hb-1-0\"\n",
        "time=\"garbage\" level=info msg=\"hull phase sandbox=hb-1-0 phase=vm-started\"\n",
    );

    fn at(secs: f64) -> SystemTime {
        let base = chrono::DateTime::parse_from_rfc3339("2026-11-23T19:40:00Z").expect("time");
        SystemTime::from(base) + Duration::from_secs_f64(secs)
    }

    #[test]
    fn marks_are_the_pods_own_with_their_first_time() {
        let marks = phase_marks(LOG, "hb-1-0");
        let expected: BTreeMap<String, SystemTime> = [
            ("sandbox-start".to_owned(), at(1.5)),
            ("agent-ready".to_owned(), at(3.75)),
            ("container-created".to_owned(), at(4.0)),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            marks, expected,
            "hb-1-10's and unparsable lines are not hb-1-0's"
        );
        assert!(phase_marks(LOG, "hb-1").is_empty());
    }

    #[test]
    fn phase_file_marks_are_the_pods_own_with_their_first_time() {
        let text = concat!(
            "1795462801.500000000 sandbox=hb-1-0 phase=sandbox-start\n",
            "1795462801.250000000 sandbox=hb-1-10 phase=sandbox-start\n",
            "1795462803.750000000 sandbox=hb-1-0 phase=agent-ready\n",
            "1795462804.000000000 container=hb-1-0 phase=container-created\n",
            "1795462805.000000000 sandbox=hb-1-0 phase=sandbox-start\n",
            "1795462805.2 sandbox=hb-1-0 phase=container-started extra\n",
            "x.1 sandbox=hb-1-0 phase=container-started\n",
            "1795462805.5000000000 sandbox=hb-1-0 phase=container-started\n",
            "1795462806.0 sandbox=hb-1-0\n",
        );
        // 2026-11-23T19:40:00Z is 1795462800.
        let expected: BTreeMap<String, SystemTime> = [
            ("sandbox-start".to_owned(), at(1.5)),
            ("agent-ready".to_owned(), at(3.75)),
            ("container-created".to_owned(), at(4.0)),
        ]
        .into_iter()
        .collect();
        assert_eq!(phase_file_marks(text, "hb-1-0"), expected);
        assert!(phase_file_marks(text, "hb-1").is_empty());
    }

    proptest! {
        #[test]
        fn any_log_text_parses_without_panicking(log in ".{0,400}", id in "[a-z0-9-]{1,8}") {
            let _ = phase_marks(&log, &id);
        }

        #[test]
        fn any_phase_file_text_parses_without_panicking(
            text in "[0-9. a-z=\n-]{0,400}",
            id in "[a-z0-9-]{1,8}",
        ) {
            let _ = phase_file_marks(&text, &id);
        }

        #[test]
        fn a_phase_file_line_reads_back_as_written(
            secs in 0u64..4_000_000_000,
            nanos in 0u32..1_000_000_000,
            phase in "[a-z-]{1,20}",
        ) {
            let text = format!("{secs}.{nanos:09} container=pod phase={phase}\n");
            let marks = phase_file_marks(&text, "pod");
            prop_assert_eq!(
                marks.get(&phase).copied(),
                Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
            );
        }
    }
}
