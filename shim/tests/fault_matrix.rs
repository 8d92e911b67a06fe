//! The fault matrix (issue #11): every process a pod depends on is SIGKILLed at every step of
//! a container's life, through a real, private containerd driven with `ctr` as a user would.
//!
//! Victims: the shim; the agent (with the `none` hypervisor the host agent process; in a VM
//! the guest's PID 1, whose death powers the guest off, which is what killing QEMU does, so
//! QEMU stands for it); QEMU; each device backend of a pod without a network (hull-vsock,
//! hull-fs). Steps: creating (killed while `ctr run` is in flight, at the moment the victim
//! and the processes it depends on exist: the host agent, or QEMU, has been started but the
//! agent does not serve yet), running, exec (an exec'd process runs), paused, deleting (killed
//! while `ctr task delete` of the stopped task runs, once the shim has deleted the container:
//! the sandbox is stopping).
//!
//! After each cell: a create fails naming what died (not a hang, not a timeout); otherwise
//! containerd reports the task stopped with a nonzero status, the shim's log names the
//! process killed as the cause of the loss, `ctr task delete` and
//! `ctr container rm` succeed; and nothing is left: no hull process (shim, agent, QEMU,
//! backend), no container process on the host, no mount naming the pod, no run directory,
//! shim socket, sandbox record, agent state directory, cgroup or network interface.
//!
//! One `#[test]` per victim and hypervisor, walking the steps in order with one pod per step,
//! so that a failure names its row. The `none` rows take seconds; each QEMU row boots five
//! TCG guests (a few seconds each here).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use hull_tests::containerd::{BackgroundCtr, Containerd, NAMESPACE};
use hull_tests::leftovers::{pids_with, processes_with};
use hull_tests::oci_image::{build_busybox_archive, busybox};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-hull-v2");
const RUNTIME: &str = "io.containerd.hull.v2";
/// How long anything may take (a TCG boot, an exit, a teardown) on a loaded host: a bound
/// that tells a hang from slowness, never a performance assertion.
const BOUND: Duration = Duration::from_secs(90);
/// The exit status containerd reports for a task lost with its sandbox.
const LOST: i32 = 255;

/// What runs the pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hypervisor {
    /// The agent on the host: seconds per cell.
    None,
    /// QEMU (TCG here) with hull-vsock and hull-fs.
    Qemu,
}

/// What is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    Shim,
    /// The host agent of `none` (in a VM, killing QEMU stands for the guest agent's death).
    Agent,
    Qemu,
    Vsock,
    Fs,
}

impl Victim {
    /// Its name in the shim's messages.
    fn role(self) -> &'static str {
        match self {
            Victim::Shim => "containerd-shim-hull-v2",
            Victim::Agent => "hull-agent",
            Victim::Qemu => "qemu",
            Victim::Vsock => "hull-vsock",
            Victim::Fs => "hull-fs",
        }
    }

    /// Its pid for pod `pod`, if it runs.
    fn pid(self, pod: &str) -> Option<i32> {
        let run_dir = format!("{}/", run_dir(pod).display());
        let pids = match self {
            // The serving shim: not the `start` that forks it, nor a `delete`.
            Victim::Shim => pids_with(&["containerd-shim-hull-v2", &format!(" -id {pod} ")])
                .into_iter()
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| !c.ends_with(b"start\0") && !c.ends_with(b"delete\0"))
                })
                .collect(),
            Victim::Agent => pids_with(&["hull-agent", "--listen", &run_dir]),
            Victim::Qemu => pids_with(&["qemu-system", &run_dir]),
            Victim::Vsock => pids_with(&["--guest-cid", &run_dir]),
            Victim::Fs => pids_with(&["--shared-dir", &run_dir]),
        };
        // hull-fs confines itself by forking into new namespaces (the process the shim
        // started waits for its confined children): the victim is the one the shim started.
        let roots: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|pid| {
                hull_tests::leftovers::parent_of(*pid).is_none_or(|parent| !pids.contains(&parent))
            })
            .collect();
        assert!(roots.len() <= 1, "several {self:?} serve {pod}: {roots:?}");
        roots.first().copied()
    }

    /// The process whose appearance marks the creating step: the victim itself, once the
    /// processes it depends on exist (in a VM: QEMU, started after its backends).
    fn creating_marker(self, hypervisor: Hypervisor) -> Victim {
        match hypervisor {
            Hypervisor::None => Victim::Agent,
            Hypervisor::Qemu => Victim::Qemu,
        }
    }
}

/// A step of a container's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Creating,
    Running,
    Exec,
    Paused,
    Deleting,
}

const STEPS: [Step; 5] = [
    Step::Creating,
    Step::Running,
    Step::Exec,
    Step::Paused,
    Step::Deleting,
];

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Creating => "creating",
            Step::Running => "running",
            Step::Exec => "exec",
            Step::Paused => "paused",
            Step::Deleting => "deleting",
        }
    }
}

/// The pod's run directory on the host.
fn run_dir(pod: &str) -> PathBuf {
    hull_shim::paths::sandbox_run_dir(NAMESPACE, pod)
}

/// SIGKILLs `pid`; false if it is gone already.
fn sigkill(pid: i32) -> bool {
    // SAFETY: kill(2) takes plain integers; the pid was read from /proc just now and names a
    // process of this test's pod (at worst one gone since: ESRCH).
    unsafe { libc::kill(pid, libc::SIGKILL) == 0 }
}

/// The host's network interfaces.
fn interfaces() -> BTreeSet<String> {
    std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// One row's private containerd, busybox image and hull configuration.
struct Matrix {
    containerd: Containerd,
    hypervisor: Hypervisor,
    image: &'static str,
    config: PathBuf,
    /// The host's interfaces before the row: none may be added by it.
    interfaces: BTreeSet<String>,
    _dir: tempfile::TempDir,
}

impl Matrix {
    /// `None` when a prerequisite is missing (the skip is recorded).
    fn new(test: &str, hypervisor: Hypervisor) -> Option<Self> {
        macro_rules! need {
            ($prereq:expr) => {
                match $prereq {
                    Ok(value) => value,
                    Err(missing) => {
                        hull_tests::prereq::skip(test, &missing);
                        return None;
                    }
                }
            };
        }
        let busybox = need!(busybox());
        let config_text = match hypervisor {
            Hypervisor::None => {
                need!(hull_tests::artifacts::workspace_binary("hull-agent"));
                "hypervisor = \"none\"\n[runtime]\nenable_none_hypervisor = true\n\
                 log_level = \"debug\"\n"
                    .to_owned()
            }
            Hypervisor::Qemu => {
                let kernel = need!(hull_tests::artifacts::vmlinux());
                let initrd = need!(hull_tests::artifacts::initrd());
                for helper in ["hull-vsock", "hull-fs"] {
                    need!(hull_tests::artifacts::workspace_binary(helper));
                }
                need!(hull_tests::prereq::find_program(
                    "qemu-system-x86_64",
                    "qemu-system-x86"
                ));
                format!(
                    "hypervisor = \"qemu\"\n[vm]\nkernel = {:?}\ninitrd = {:?}\n\
                     [runtime]\nlog_level = \"debug\"\n",
                    kernel.display().to_string(),
                    initrd.display().to_string()
                )
            }
        };
        let shim_dir = Path::new(SHIM)
            .parent()
            .expect("the shim is in a directory");
        let interfaces = interfaces();
        let containerd =
            need!(Containerd::start(&[shim_dir.to_owned()])).expect("containerd starts");
        let dir = tempfile::tempdir().expect("a temp dir");
        let archive = dir.path().join("busybox.tar");
        let image = build_busybox_archive(&busybox, &archive).expect("the busybox image");
        containerd.import(&archive).expect("ctr images import");
        let config = dir.path().join("configuration.toml");
        std::fs::write(&config, config_text).expect("writing the configuration");
        Some(Self {
            containerd,
            hypervisor,
            image,
            config,
            interfaces,
            _dir: dir,
        })
    }

    /// containerd's log lines that concern hull or errors.
    fn log(&self) -> String {
        self.containerd.log_excerpt()
    }

    fn explain(&self, output: &Output) -> String {
        format!(
            "status {}\nstdout: {}\nstderr: {}\ncontainerd log:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log()
        )
    }

    /// Starts `ctr args` in the background.
    fn spawn(&self, args: &[&str]) -> BackgroundCtr {
        BackgroundCtr(
            self.containerd
                .ctr_command(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("ctr starts"),
        )
    }

    /// Runs `ctr args` to its end.
    fn ctr(&self, args: &[&str]) -> Output {
        self.spawn(args)
            .finish(&args.join(" "), BOUND, || self.log())
    }

    /// `ctr run -d` arguments for container `id` running `sleep seconds`.
    fn run_args<'a>(&'a self, id: &'a str, seconds: &'a str) -> Vec<&'a str> {
        vec![
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--runtime-config-path",
            self.config.to_str().expect("UTF-8 temp path"),
            self.image,
            id,
            "sleep",
            seconds,
        ]
    }

    /// `ctr task ls`'s status column for `id` (empty if containerd lists no such task).
    fn task_status(&self, id: &str) -> String {
        let output = self.ctr(&["tasks", "ls"]);
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until `id`'s task status is one of `statuses`.
    fn wait_status(&self, id: &str, statuses: &[&str], what: &str) -> String {
        let deadline = Instant::now() + BOUND;
        loop {
            let status = self.task_status(id);
            if statuses.contains(&status.as_str()) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: task {id} is {status:?}, never one of {statuses:?}; containerd log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `victim` of `pod` runs, and answers its pid.
    fn wait_pid(&self, victim: Victim, pod: &str, what: &str) -> i32 {
        let deadline = Instant::now() + BOUND;
        loop {
            if let Some(pid) = victim.pid(pod) {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: no {victim:?} for {pod}; containerd log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Kills `victim` of pod `id` at `step`, checks what containerd and ctr report, deletes
    /// the task and the container, and checks that nothing is left.
    fn cell(&self, victim: Victim, step: Step, seconds: &str) {
        let prefix = match self.hypervisor {
            Hypervisor::None => "fm-none",
            Hypervisor::Qemu => "fm-vm",
        };
        let id = format!("{prefix}-{}-{}", victim.role(), step.name());
        let id = id.as_str();
        let cell = format!("{victim:?} killed while {}", step.name());
        // The host agents seen, whose state directories must go too.
        let mut agents = Vec::new();
        let remember_agent = |agents: &mut Vec<i32>| agents.extend(Victim::Agent.pid(id));
        if step == Step::Creating {
            let run = self.spawn(&self.run_args(id, seconds));
            // The victim and what it needs have started; the agent does not serve yet.
            let marker = self.wait_pid(victim.creating_marker(self.hypervisor), id, &cell);
            remember_agent(&mut agents);
            let pid = if victim.creating_marker(self.hypervisor) == victim {
                marker
            } else {
                self.wait_pid(victim, id, &cell)
            };
            assert!(sigkill(pid), "{cell}: {victim:?} (pid {pid}) was gone");
            let output = run.finish(&cell, BOUND, || self.log());
            assert!(
                !output.status.success(),
                "{cell}: the create succeeded: {}",
                self.explain(&output)
            );
            println!(
                "{cell}: ctr said: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
            if victim != Victim::Shim {
                // The shim names what died; a dead shim cannot, containerd says it went.
                let stderr = String::from_utf8_lossy(&output.stderr).to_lowercase();
                assert!(
                    stderr.contains(victim.role())
                        && (stderr.contains("signal 9") || stderr.contains("sigkill")),
                    "{cell}: the create's error does not name {} (pid {pid}) killed: {}",
                    victim.role(),
                    self.explain(&output)
                );
            }
            // containerd forgets a task whose create failed.
            let _ = self.ctr(&["tasks", "delete", id]);
        } else {
            // In the foreground but for the deleting step, whose task must outlive its exit:
            // `ctr run`'s status is what containerd reports for the task (its Wait).
            let mut args = self.run_args(id, seconds);
            if step != Step::Deleting {
                args.retain(|a| *a != "-d");
            }
            let mut run = Some(self.spawn(&args));
            if step == Step::Deleting {
                let output = run
                    .take()
                    .expect("ctr run -d")
                    .finish(&cell, BOUND, || self.log());
                assert!(output.status.success(), "{cell}: {}", self.explain(&output));
            }
            self.wait_status(id, &["RUNNING"], &cell);
            remember_agent(&mut agents);
            let mut exec = None;
            match step {
                Step::Exec => {
                    let ctr = self.spawn(&[
                        "tasks",
                        "exec",
                        "--exec-id",
                        "fm-exec",
                        id,
                        "sleep",
                        seconds,
                    ]);
                    self.wait_processes(id, 2, &cell);
                    exec = Some(ctr);
                }
                Step::Paused => {
                    let output = self.ctr(&["tasks", "pause", id]);
                    assert!(output.status.success(), "{cell}: {}", self.explain(&output));
                    self.wait_status(id, &["PAUSED"], &cell);
                }
                Step::Deleting => {
                    let output = self.ctr(&["tasks", "kill", "--signal", "SIGKILL", id]);
                    assert!(output.status.success(), "{cell}: {}", self.explain(&output));
                    self.wait_status(id, &["STOPPED"], &cell);
                }
                Step::Creating | Step::Running => {}
            }
            let pid = victim
                .pid(id)
                .unwrap_or_else(|| panic!("{cell}: no {victim:?} runs for {id}"));
            if step == Step::Deleting {
                let mut delete = self.spawn(&["tasks", "delete", id]);
                // Once the shim has deleted the container, the sandbox stops: the victim
                // dies in the middle of that (or, if the stop was quicker, is gone already).
                let deleted = format!("container={id}");
                let deadline = Instant::now() + BOUND;
                while !self
                    .containerd
                    .log()
                    .lines()
                    .any(|l| l.contains("container deleted") && l.contains(&deleted))
                    && !delete.done()
                {
                    assert!(Instant::now() < deadline, "{cell}: the delete never came");
                    std::thread::sleep(Duration::from_millis(2));
                }
                let hit = sigkill(pid);
                println!(
                    "{cell}: the victim was {}",
                    if hit { "killed" } else { "gone already" }
                );
                // The delete itself may fail with its shim; the task must be gone all the
                // same, or go with a second delete.
                let _ = delete.finish(&cell, BOUND, || self.log());
            } else {
                assert!(sigkill(pid), "{cell}: {victim:?} (pid {pid}) was gone");
                if let Some(exec) = exec {
                    let output = exec.finish(&cell, BOUND, || self.log());
                    assert!(
                        !output.status.success(),
                        "{cell}: the exec succeeded: {}",
                        self.explain(&output)
                    );
                }
                let output = run
                    .take()
                    .expect("ctr run")
                    .finish(&cell, BOUND, || self.log());
                if victim == Victim::Shim {
                    // ctr's Wait fails with the shim's connection; containerd reports the
                    // task killed (128 + 9, from `shim delete`) to those who wait later.
                    assert!(
                        !output.status.success(),
                        "{cell}: {}",
                        self.explain(&output)
                    );
                } else {
                    assert_eq!(
                        output.status.code(),
                        Some(LOST),
                        "{cell}: {}",
                        self.explain(&output)
                    );
                }
                if victim != Victim::Shim {
                    // The process killed is named as the cause, first (QEMU's backends may
                    // exit cleanly before QEMU's own death is seen). The log reaches
                    // containerd through a FIFO, asynchronously to the exit.
                    let reason = format!(
                        "the sandbox is lost: {} (pid {pid}) was killed by signal 9",
                        victim.role()
                    );
                    let deadline = Instant::now() + BOUND;
                    while !self.containerd.log().contains(&reason) {
                        assert!(
                            Instant::now() < deadline,
                            "{cell}: the shim's log does not say {reason:?}:\n{}",
                            self.log()
                        );
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                // ctr run deletes the task once it has its exit; containerd may also forget
                // a task whose shim died once it cleaned up after it.
                self.wait_status(id, &["STOPPED", ""], &cell);
            }
            // A delete may race containerd's own cleanup after a dead shim (it answers
            // 'unexpected EOF' until containerd has seen the shim go): tried until it works
            // or the task is gone.
            let deadline = Instant::now() + BOUND;
            while !self.task_status(id).is_empty() {
                let output = self.ctr(&["tasks", "delete", id]);
                if output.status.success() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{cell}: the task cannot be deleted: {}",
                    self.explain(&output)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let output = self.ctr(&["containers", "delete", id]);
        assert!(output.status.success(), "{cell}: {}", self.explain(&output));
        self.assert_nothing_left(id, seconds, &agents, &cell);
    }

    /// Waits until `ctr task ps id` lists at least `n` processes.
    fn wait_processes(&self, id: &str, n: usize, what: &str) {
        let deadline = Instant::now() + BOUND;
        loop {
            let output = self.ctr(&["tasks", "ps", id]);
            let listed = String::from_utf8_lossy(&output.stdout)
                .lines()
                .skip(1)
                .filter(|l| !l.trim().is_empty())
                .count();
            if listed >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {id} never had {n} processes; containerd log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until nothing of pod `id` is left (shims, agents and backends exit a little
    /// after containerd deleted their task), then asserts it.
    fn assert_nothing_left(&self, id: &str, seconds: &str, agents: &[i32], cell: &str) {
        let deadline = Instant::now() + BOUND;
        while !self.leftovers(id, seconds, agents).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            self.leftovers(id, seconds, agents).is_empty(),
            "{cell}: left behind: {:#?}\ncontainerd log:\n{}",
            self.leftovers(id, seconds, agents),
            self.log()
        );
    }

    /// What is left of pod `id`: hull processes (naming its run directory or its id), its
    /// container's processes on the host (`sleep seconds`), mounts naming it, its run
    /// directory, shim socket, sandbox records, its agents' state directories, cgroups
    /// naming it, interfaces the host did not have, and what containerd still lists.
    fn leftovers(&self, id: &str, seconds: &str, agents: &[i32]) -> Vec<String> {
        let run_dir = run_dir(id);
        let mut left = processes_with(&[&format!("{}/", run_dir.display())]);
        left.extend(processes_with(&[
            "containerd-shim-hull-v2",
            &format!(" -id {id} "),
        ]));
        left.extend(processes_with(&[&format!("sleep {seconds}")]));
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        left.extend(
            mounts
                .lines()
                .filter(|l| l.contains(id))
                .map(|l| format!("mount: {l}")),
        );
        if run_dir.exists() {
            left.push(format!("run directory {}", run_dir.display()));
        }
        let address = self.containerd.address().display().to_string();
        let socket = containerd_shim::socket_address(&address, NAMESPACE, id);
        let socket = socket.strip_prefix("unix://").unwrap_or(&socket);
        if Path::new(socket).exists() {
            left.push(format!("shim socket {socket}"));
        }
        left.extend(
            hull_tests::leftovers::dirs_below(&self.containerd.state_dir(), 6)
                .into_iter()
                .map(|d| d.join(hull_shim::service::shim::RECORD_FILE))
                .filter(|p| p.exists())
                .map(|p| format!("sandbox record {}", p.display())),
        );
        for agent in agents {
            let state = PathBuf::from(format!("/run/hull-agent-{agent}"));
            if state.exists() {
                left.push(format!("agent state directory {}", state.display()));
            }
        }
        left.extend(
            hull_tests::leftovers::dirs_below(Path::new("/sys/fs/cgroup"), 4)
                .into_iter()
                .filter(|p| p.to_string_lossy().contains(id))
                .map(|p| format!("cgroup {}", p.display())),
        );
        left.extend(
            interfaces()
                .difference(&self.interfaces)
                .map(|i| format!("interface {i}")),
        );
        let (containers, tasks) = self.containerd.leftovers();
        if tasks.iter().any(|t| t == id) {
            left.push(format!("task {id}"));
        }
        if containers.iter().any(|c| c == id) {
            left.push(format!("container {id}"));
        }
        left
    }

    /// Every step of `victim`'s row, one pod each; fails naming every cell that failed
    /// (each cell's pod is its own, so one failing does not spoil the next).
    fn row(&self, victim: Victim, base: u32) {
        let mut failed = Vec::new();
        for (n, step) in (base..).zip(STEPS) {
            let cell = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.cell(victim, step, &n.to_string())
            }));
            if let Err(panic) = cell {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                failed.push(format!(
                    "{victim:?} killed while {}: {message}",
                    step.name()
                ));
            }
        }
        assert!(
            failed.is_empty(),
            "{} of {} cells failed:\n{}",
            failed.len(),
            STEPS.len(),
            failed.join("\n\n")
        );
    }
}

#[test]
fn the_shim_killed_at_any_step_of_a_none_pod_leaves_a_stopped_task_and_nothing_else() {
    let test = "the_shim_killed_at_any_step_of_a_none_pod_leaves_a_stopped_task_and_nothing_else";
    let Some(matrix) = Matrix::new(test, Hypervisor::None) else {
        return;
    };
    matrix.row(Victim::Shim, 51010);
}

#[test]
fn the_host_agent_killed_at_any_step_of_a_none_pod_leaves_a_stopped_task_and_nothing_else() {
    let test =
        "the_host_agent_killed_at_any_step_of_a_none_pod_leaves_a_stopped_task_and_nothing_else";
    let Some(matrix) = Matrix::new(test, Hypervisor::None) else {
        return;
    };
    matrix.row(Victim::Agent, 51020);
}

#[test]
fn the_shim_killed_at_any_step_of_a_vm_pod_leaves_a_stopped_task_and_nothing_else() {
    let test = "the_shim_killed_at_any_step_of_a_vm_pod_leaves_a_stopped_task_and_nothing_else";
    let Some(matrix) = Matrix::new(test, Hypervisor::Qemu) else {
        return;
    };
    matrix.row(Victim::Shim, 51030);
}

/// QEMU's death is also the guest agent's (PID 1 of the guest dies with its VM, and its
/// death powers the VM off): this row covers both.
#[test]
fn qemu_killed_at_any_step_leaves_a_stopped_task_and_nothing_else() {
    let test = "qemu_killed_at_any_step_leaves_a_stopped_task_and_nothing_else";
    let Some(matrix) = Matrix::new(test, Hypervisor::Qemu) else {
        return;
    };
    matrix.row(Victim::Qemu, 51040);
}

#[test]
fn hull_vsock_killed_at_any_step_leaves_a_stopped_task_and_nothing_else() {
    let test = "hull_vsock_killed_at_any_step_leaves_a_stopped_task_and_nothing_else";
    let Some(matrix) = Matrix::new(test, Hypervisor::Qemu) else {
        return;
    };
    matrix.row(Victim::Vsock, 51050);
}

#[test]
fn hull_fs_killed_at_any_step_leaves_a_stopped_task_and_nothing_else() {
    let test = "hull_fs_killed_at_any_step_leaves_a_stopped_task_and_nothing_else";
    let Some(matrix) = Matrix::new(test, Hypervisor::Qemu) else {
        return;
    };
    matrix.row(Victim::Fs, 51060);
}
