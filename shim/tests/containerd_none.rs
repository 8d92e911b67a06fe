//! containerd-shim-hull-v2 with the `none` hypervisor under a real, private containerd,
//! driven with `ctr` as a user would: the agent runs on the host, so the shim's whole path
//! (Task service, stdio, exit statuses, events, cleanup) is exercised in seconds.
//!
//! The configuration reaches the shim as containerd's runtime options
//! (`ctr run --runtime-config-path`). After every test nothing of hull may be left: no shim or
//! agent process, no run directory or socket, no rootfs mount, no sandbox record. A shim or
//! agent killed at each step of a container's life is the fault matrix's
//! (`fault_matrix.rs`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use hull_tests::containerd::Containerd;
use hull_tests::oci_image::{build_busybox_archive, busybox};

/// `require!` for a function returning `Option`: records the skip and answers `None`.
macro_rules! need {
    ($test:expr, $prereq:expr) => {
        match $prereq {
            Ok(value) => value,
            Err(missing) => {
                hull_tests::prereq::skip($test, &missing);
                return None;
            }
        }
    };
}

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-hull-v2");
const RUNTIME: &str = "io.containerd.hull.v2";

/// A private containerd with the busybox image, and a configuration selecting `none`.
struct Setup {
    containerd: Containerd,
    image: &'static str,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Setup {
    /// `None` when a prerequisite is missing (the skip is recorded).
    fn new(test: &str) -> Option<Self> {
        Self::with_config(
            test,
            "hypervisor = \"none\"\n[runtime]\nenable_none_hypervisor = true\nlog_level = \"debug\"\n",
            true,
        )
    }

    /// A setup whose configuration file holds `config`; `containers` says whether the test
    /// needs an agent that runs containers.
    fn with_config(test: &str, config_text: &str, containers: bool) -> Option<Self> {
        Self::with_shim_dirs(test, config_text, containers, &[], &[])
    }

    /// [`Setup::with_config`] with `dirs` searched for shims ahead of this build's.
    fn with_shim_dirs(
        test: &str,
        config_text: &str,
        containers: bool,
        dirs: &[PathBuf],
        env: &[(&str, &str)],
    ) -> Option<Self> {
        let busybox = need!(test, busybox());
        let agent = need!(test, hull_tests::artifacts::workspace_binary("hull-agent"));
        if containers {
            need!(test, agent_serves_containers(&agent));
        }
        let shim_dir = Path::new(SHIM)
            .parent()
            .expect("the shim is in a directory");
        assert_eq!(
            agent.parent(),
            Some(shim_dir),
            "hull-agent is found beside the shim"
        );
        let mut path = dirs.to_vec();
        path.push(shim_dir.to_owned());
        let containerd =
            need!(test, Containerd::start_with_env(&path, env)).expect("containerd starts");
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("busybox.tar");
        let image = build_busybox_archive(&busybox, &archive).unwrap();
        containerd.import(&archive).unwrap();
        let config = dir.path().join("configuration.toml");
        std::fs::write(&config, config_text).unwrap();
        Some(Self {
            containerd,
            image,
            config,
            _dir: dir,
        })
    }

    /// `ctr run --rm` arguments for container `id` running `args`, with `extra` ctr flags.
    fn run_args<'a>(&'a self, extra: &[&'a str], id: &'a str, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec![
            "run",
            "--runtime",
            RUNTIME,
            "--runtime-config-path",
            self.config.to_str().expect("UTF-8 temp path"),
        ];
        all.extend_from_slice(extra);
        all.push(self.image);
        all.push(id);
        all.extend_from_slice(args);
        all
    }

    fn ctr_run(&self, id: &str, args: &[&str]) -> Output {
        self.containerd
            .ctr_command(&self.run_args(&["--rm"], id, args))
            .output()
            .expect("ctr runs")
    }

    fn explain(&self, output: &Output) -> String {
        format!(
            "status {}\nstdout: {}\nstderr: {}\ncontainerd log (errors):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.containerd.log_excerpt()
        )
    }

    /// `ctr run -d` of container `id` running `args`, waiting until it runs.
    fn run_detached(&self, id: &str, args: &[&str]) {
        self.containerd
            .ctr(&self.run_args(&["-d"], id, args))
            .expect("ctr run -d");
        self.wait_running(id);
    }

    /// Kills container `id`'s task, deletes it once stopped and the container, and checks
    /// that nothing of it is left.
    fn kill_and_remove(&self, id: &str) {
        self.containerd
            .ctr(&["tasks", "kill", "--signal", "SIGKILL", id])
            .expect("ctr task kill");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.containerd.ctr(&["tasks", "delete", id]).is_err() {
            assert!(Instant::now() < deadline, "task never stopped");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.containerd
            .ctr(&["containers", "delete", id])
            .expect("ctr containers delete");
        self.assert_nothing_left(id);
    }

    /// Waits until `ctr task ls` shows `id` RUNNING.
    fn wait_running(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let tasks = self.containerd.ctr(&["tasks", "ls"]).expect("ctr tasks ls");
            let listing = String::from_utf8_lossy(&tasks.stdout).into_owned();
            if listing
                .lines()
                .any(|l| l.starts_with(id) && l.contains("RUNNING"))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never ran; tasks:\n{listing}\ncontainerd log:\n{}",
                self.containerd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asserts that nothing of container `id` (its own sandbox) is left.
    fn assert_nothing_left(&self, id: &str) {
        let (containers, tasks) = self.containerd.leftovers();
        assert!(!tasks.iter().any(|t| t == id), "task left: {tasks:?}");
        assert!(
            !containers.iter().any(|c| c == id),
            "container left: {containers:?}"
        );
        let run_dir = hull_shim::paths::sandbox_run_dir(hull_tests::containerd::NAMESPACE, id);
        // The shim exits after containerd's Shutdown, asynchronously to ctr: allow it time.
        let deadline = Instant::now() + Duration::from_secs(10);
        let left = || {
            let mut left = hull_tests::leftovers::processes_with(&["containerd-shim-hull-v2", id]);
            left.extend(hull_tests::leftovers::processes_with(&[
                "hull-agent",
                &run_dir.display().to_string(),
            ]));
            left
        };
        while !left().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            left().is_empty(),
            "processes left: {:?}\ncontainerd log:\n{}",
            left(),
            self.containerd.log()
        );
        assert!(
            !run_dir.exists(),
            "run directory {} left",
            run_dir.display()
        );
        let cgroups: Vec<PathBuf> = [
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup/pids",
        ]
        .iter()
        .flat_map(|root| hull_tests::leftovers::dirs_below(Path::new(root), 4))
        .filter(|p| p.to_string_lossy().contains(id))
        .collect();
        assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let leaked: Vec<&str> = mounts.lines().filter(|l| l.contains(id)).collect();
        assert!(leaked.is_empty(), "mounts left: {leaked:?}");
        let records: Vec<PathBuf> =
            hull_tests::leftovers::files_below(&self.containerd.address().with_file_name("state"))
                .into_iter()
                .filter(|p| p.ends_with(hull_shim::service::shim::RECORD_FILE))
                .collect();
        assert!(records.is_empty(), "sandbox records left: {records:?}");
    }
}

/// Whether the hull-agent built beside the shim serves the container calls: an agent built
/// before them answers UNIMPLEMENTED, which is a missing prerequisite of these tests, not a
/// failure of the shim. Asked the way the shim would: started with `--listen`, then
/// GetGuestDetails.
fn agent_serves_containers(agent: &Path) -> Result<(), hull_tests::prereq::Missing> {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let mut child = std::process::Command::new(agent)
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .stderr(Stdio::null())
        .spawn()
        .expect("hull-agent starts");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let calls = runtime.block_on(async {
        let link = hull_shim::agent_link::AgentLink::connect_unix(
            &socket,
            Duration::from_secs(10),
            Duration::from_secs(10),
        )
        .await
        .expect("hull-agent answers on its socket");
        link.guest_details()
            .await
            .expect("GetGuestDetails")
            .supported_calls
    });
    let _ = child.kill();
    let _ = child.wait();
    let needed = [
        "CreateContainer",
        "StartContainer",
        "WaitProcess",
        "ReadStdout",
    ];
    match needed.iter().find(|c| !calls.iter().any(|s| s == *c)) {
        None => Ok(()),
        Some(call) => Err(hull_tests::prereq::Missing::new(
            format!("{call} in the hull-agent beside the shim (it serves {calls:?})"),
            "build hull-agent with the container calls (branch agent-containers)",
        )),
    }
}

/// Kills a background `ctr` that a failed assertion left behind.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ctr_run_prints_the_containers_output() {
    let Some(setup) = Setup::new("ctr_run_prints_the_containers_output") else {
        return;
    };
    let id = "hull-none-echo";
    let output = setup.ctr_run(id, &["echo", "hello"]);
    assert!(output.status.success(), "{}", setup.explain(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "hello\n",
        "{}",
        setup.explain(&output)
    );
    setup.assert_nothing_left(id);
    // The agent's own log reached containerd's through the shim, marked as the agent's.
    let forwarded = |log: &str| {
        log.lines().any(|l| {
            l.contains("serving hull.agent.v1")
                && l.contains("agent")
                && l.contains(&format!("sandbox={id}"))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !forwarded(&setup.containerd.log()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        forwarded(&setup.containerd.log()),
        "the agent's log line is not in containerd's log:\n{}",
        setup.containerd.log()
    );
}

/// With `HULL_LOG_FORMAT=json` in containerd's environment, every line the shim writes to
/// containerd's log is a JSON object with time, level and msg, and an event's fields are
/// members of it (the phase marks' `sandbox` and `phase`, the agent's forwarded lines'
/// `source`).
#[test]
fn the_shims_log_is_json_lines_when_asked() {
    let test = "the_shims_log_is_json_lines_when_asked";
    let Some(setup) = Setup::with_shim_dirs(
        test,
        "hypervisor = \"none\"\n[runtime]\nenable_none_hypervisor = true\n",
        true,
        &[],
        &[("HULL_LOG_FORMAT", "json")],
    ) else {
        return;
    };
    let id = "hull-none-json";
    let output = setup.ctr_run(id, &["echo", "hello"]);
    assert!(output.status.success(), "{}", setup.explain(&output));
    setup.assert_nothing_left(id);
    // containerd copies the shim's lines into its own log as they are: the JSON objects are
    // the lines that start with '{'.
    let objects = |log: &str| -> Vec<serde_json::Value> {
        log.lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    };
    let has = |objects: &[serde_json::Value], key: &str, value: &str| {
        objects
            .iter()
            .any(|o| o.get(key).and_then(|v| v.as_str()) == Some(value))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut found = objects(&setup.containerd.log());
    while !(has(&found, "source", "agent") && has(&found, "sandbox", id))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
        found = objects(&setup.containerd.log());
    }
    assert!(
        has(&found, "sandbox", id) && has(&found, "source", "agent"),
        "no JSON line of the shim with sandbox={id} and one forwarded from the agent:\n{}",
        setup.containerd.log()
    );
    for object in &found {
        for key in ["time", "level", "msg"] {
            assert!(object.get(key).is_some(), "{key} missing in {object}");
        }
    }
    // And none of the shim's lines is in the text form any more.
    let text_lines: Vec<String> = setup
        .containerd
        .log()
        .lines()
        .filter(|l| l.contains("hull phase") && !l.starts_with('{'))
        .map(str::to_owned)
        .collect();
    assert!(text_lines.is_empty(), "text lines: {text_lines:?}");
}

#[test]
fn ctr_run_passes_on_the_exit_code_and_stderr() {
    let Some(setup) = Setup::new("ctr_run_passes_on_the_exit_code_and_stderr") else {
        return;
    };
    let id = "hull-none-exit";
    let output = setup.ctr_run(id, &["sh", "-c", "echo oops >&2; exit 7"]);
    assert_eq!(output.status.code(), Some(7), "{}", setup.explain(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("oops"),
        "{}",
        setup.explain(&output)
    );
    setup.assert_nothing_left(id);
}

#[test]
fn ctr_run_delivers_stdin_and_its_end() {
    let Some(setup) = Setup::new("ctr_run_delivers_stdin_and_its_end") else {
        return;
    };
    let id = "hull-none-stdin";
    let mut child = setup
        .containerd
        .ctr_command(&setup.run_args(&["--rm"], id, &["sh", "-c", "cat; echo done"]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctr starts");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(b"line one\nline two\n").unwrap();
    // The end of stdin must reach cat, or it never exits.
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", setup.explain(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "line one\nline two\ndone\n",
        "{}",
        setup.explain(&output)
    );
    setup.assert_nothing_left(id);
}

/// Runs `args` in the background with `ctr run --rm`, sends `signal` with `ctr task kill`
/// once it runs, and returns ctr's exit code.
fn killed_exit_code(setup: &Setup, id: &str, args: &[&str], signal: &str) -> Option<i32> {
    let child = setup
        .containerd
        .ctr_command(&setup.run_args(&["--rm"], id, args))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctr starts");
    let mut guard = ChildGuard(child);
    setup.wait_running(id);
    setup
        .containerd
        .ctr(&["tasks", "kill", "--signal", signal, id])
        .expect("ctr task kill");
    let status = guard.0.wait().expect("ctr ends");
    status.code()
}

#[test]
fn ctr_task_kill_ends_the_container_with_the_signals_status() {
    let Some(setup) = Setup::new("ctr_task_kill_ends_the_container_with_the_signals_status") else {
        return;
    };
    let id = "hull-none-kill";
    let code = killed_exit_code(&setup, id, &["sleep", "1000"], "SIGKILL");
    assert_eq!(code, Some(137), "SIGKILL: 128 + 9");
    setup.assert_nothing_left(id);

    let id = "hull-none-term";
    // A shell that turns SIGTERM into its conventional status, as a service would.
    let code = killed_exit_code(
        &setup,
        id,
        &[
            "sh",
            "-c",
            "trap 'exit 143' TERM; while :; do sleep 0.1; done",
        ],
        "SIGTERM",
    );
    assert_eq!(code, Some(143), "SIGTERM: 128 + 15");
    setup.assert_nothing_left(id);
}

#[test]
fn ctr_task_exec_runs_a_second_process() {
    let Some(setup) = Setup::new("ctr_task_exec_runs_a_second_process") else {
        return;
    };
    let id = "hull-none-exec";
    setup.run_detached(id, &["sleep", "1000"]);
    let output = setup
        .containerd
        .ctr_command(&[
            "tasks",
            "exec",
            "--exec-id",
            "second",
            id,
            "sh",
            "-c",
            "echo from exec; exit 3",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", setup.explain(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "from exec\n");

    // The output crossed containerd's FIFO through the shim's io_uring, on the shim's one
    // thread: no thread per stream, and no io_uring worker thread either.
    let shim = pids_with(&["containerd-shim-hull-v2", id], &["--listen"]);
    assert_eq!(shim.len(), 1, "one shim serves the pod: {shim:?}");
    let threads = || -> Vec<String> {
        std::fs::read_dir(format!("/proc/{}/task", shim[0]))
            .unwrap()
            .flatten()
            .map(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            })
            .collect()
    };
    // containerd-shim's file operations at start run on tokio's blocking pool, whose thread
    // lingers a second after its last use: wait for the steady state.
    let deadline = Instant::now() + Duration::from_secs(10);
    while threads().len() > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(threads().len(), 1, "the shim's threads: {:?}", threads());
    let rings = std::fs::read_dir(format!("/proc/{}/fd", shim[0]))
        .unwrap()
        .flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.to_string_lossy() == "anon_inode:[io_uring]")
        })
        .count();
    assert_eq!(rings, 1, "the shim has its one io_uring");

    setup.kill_and_remove(id);
}

/// The processes whose command line contains every one of `needles` and none of `not`.
fn pids_with(needles: &[&str], not: &[&str]) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                needles.iter().all(|n| c.contains(n)) && !not.iter().any(|n| c.contains(n))
            })
        })
        .collect()
}

/// How many descriptors process `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("listing a process's descriptors")
        .count()
}

/// Exec probes (as Kubernetes runs them) reuse one exec id after each Delete, for the life of
/// the pod: each works, and neither the shim nor the agent keeps descriptors per exec.
#[test]
fn an_exec_id_is_reusable_after_its_delete_and_execs_leak_no_descriptors() {
    let test = "an_exec_id_is_reusable_after_its_delete_and_execs_leak_no_descriptors";
    let Some(setup) = Setup::new(test) else {
        return;
    };
    let id = "hull-none-exec-reuse";
    setup.run_detached(id, &["sleep", "1000"]);
    // `ctr task exec` always attaches stdin (the test's /dev/null), so the shim's stdin copy
    // runs for each probe too.
    let probe = |n: u32| {
        let script = format!("echo probe-{n}; exit {}", n % 3);
        let output = setup
            .containerd
            .ctr_command(&[
                "tasks",
                "exec",
                "--exec-id",
                "probe",
                id,
                "sh",
                "-c",
                &script,
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(i32::try_from(n % 3).unwrap()),
            "probe {n}: {}",
            setup.explain(&output)
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!("probe-{n}\n")
        );
    };
    // `ctr task exec` deletes its exec when it ends: the same id works again at once.
    probe(1);
    probe(2);

    let shim = pids_with(&["containerd-shim-hull-v2", id], &["--listen"]);
    assert_eq!(shim.len(), 1, "one shim serves the container: {shim:?}");
    let agent = pids_with(&["hull-agent", "--listen", id], &[]);
    assert_eq!(agent.len(), 1, "one agent serves the container: {agent:?}");
    let before = (open_fds(shim[0]), open_fds(agent[0]));
    for n in 3..=32 {
        probe(n);
    }
    let after = (open_fds(shim[0]), open_fds(agent[0]));
    println!("descriptors (shim, agent): {before:?} before 30 execs, {after:?} after");
    // Slack of 2 for descriptors opened lazily; a leak per exec would be 30 or more.
    assert!(
        after.0 <= before.0 + 2,
        "the shim's descriptors grew from {} to {} over 30 execs",
        before.0,
        after.0
    );
    assert!(
        after.1 <= before.1 + 2,
        "the agent's descriptors grew from {} to {} over 30 execs",
        before.1,
        after.1
    );

    setup.kill_and_remove(id);
}

#[test]
fn a_failed_create_is_reported_and_leaves_nothing_behind() {
    let test = "a_failed_create_is_reported_and_leaves_nothing_behind";
    let Some(setup) = Setup::with_config(
        test,
        "hypervisor = \"none\"\n[runtime]\nenable_none_hypervisor = true\n",
        false,
    ) else {
        return;
    };
    let id = "hull-none-fail";
    // Fails in the agent: at CreateContainer with an agent that has no container calls, at
    // Create or Start with one that has them (no such program).
    let output = setup.ctr_run(id, &["/nonexistent/program"]);
    assert!(!output.status.success(), "{}", setup.explain(&output));
    // ctr run --rm does not remove a container whose task never started.
    let _ = setup.containerd.ctr(&["containers", "delete", id]);
    setup.assert_nothing_left(id);
}

#[test]
fn the_none_hypervisor_is_refused_without_consent_and_says_how() {
    let test = "the_none_hypervisor_is_refused_without_consent_and_says_how";
    let Some(setup) = Setup::with_config(test, "hypervisor = \"none\"\n", false) else {
        return;
    };
    let id = "hull-none-refused";
    let output = setup.ctr_run(id, &["echo", "hello"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", setup.explain(&output));
    assert!(
        stderr.contains("enable_none_hypervisor"),
        "{}",
        setup.explain(&output)
    );
    let _ = setup.containerd.ctr(&["containers", "delete", id]);
    setup.assert_nothing_left(id);
}

/// `ctr task ls`'s status column for `id`.
fn task_status(setup: &Setup, id: &str) -> String {
    let tasks = setup
        .containerd
        .ctr(&["tasks", "ls"])
        .expect("ctr tasks ls");
    String::from_utf8_lossy(&tasks.stdout)
        .lines()
        .find(|l| l.starts_with(id))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn ctr_task_ps_metrics_pause_and_resume_work_on_a_running_container() {
    let Some(setup) =
        Setup::new("ctr_task_ps_metrics_pause_and_resume_work_on_a_running_container")
    else {
        return;
    };
    let id = "hull-none-ops";
    setup.run_detached(id, &["sleep", "1000"]);

    let ps = setup
        .containerd
        .ctr(&["tasks", "ps", id])
        .expect("ctr task ps");
    let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
    let pids: Vec<u32> = ps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(!pids.is_empty(), "no process listed:\n{ps}");

    let metrics = setup
        .containerd
        .ctr(&["tasks", "metrics", id])
        .expect("ctr task metrics");
    let metrics = String::from_utf8_lossy(&metrics.stdout).into_owned();
    let current = metrics
        .lines()
        .find(|l| l.trim_start().starts_with("pids.current"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        current.is_some_and(|n| n >= 1),
        "pids.current missing or zero:\n{metrics}"
    );

    // Checkpoint is not supported, and says so (not "not found").
    let checkpoint = setup
        .containerd
        .ctr_command(&["tasks", "checkpoint", id])
        .output()
        .unwrap();
    assert!(!checkpoint.status.success());
    let stderr = String::from_utf8_lossy(&checkpoint.stderr);
    assert!(
        stderr.contains("hull does not checkpoint"),
        "checkpoint: {stderr}"
    );

    setup
        .containerd
        .ctr(&["tasks", "pause", id])
        .expect("ctr task pause");
    assert_eq!(task_status(&setup, id), "PAUSED");
    setup
        .containerd
        .ctr(&["tasks", "resume", id])
        .expect("ctr task resume");
    assert_eq!(task_status(&setup, id), "RUNNING");

    setup.kill_and_remove(id);
}

#[test]
fn ctr_run_with_a_terminal_runs_the_program_on_a_tty() {
    let Some(setup) = Setup::new("ctr_run_with_a_terminal_runs_the_program_on_a_tty") else {
        return;
    };
    let script = hull_tests::require!(
        "ctr_run_with_a_terminal_runs_the_program_on_a_tty",
        hull_tests::prereq::find_program("script", "bsdutils")
    );
    let id = "hull-none-tty";
    // ctr -t needs a terminal of its own: script(1) gives it one.
    let command: Vec<String> = std::iter::once(
        setup
            .containerd
            .ctr_command(&[])
            .get_program()
            .to_string_lossy()
            .into_owned(),
    )
    .chain(
        setup
            .containerd
            .ctr_command(&setup.run_args(&["--rm", "-t"], id, &["sh", "-c", "tty; exit 5"]))
            .get_args()
            .map(|a| format!("'{}'", a.to_string_lossy())),
    )
    .collect();
    let output = std::process::Command::new(script)
        .args(["-qec", &command.join(" "), "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(5), "{}", setup.explain(&output));
    assert!(
        stdout.contains("/dev/pts/") || stdout.contains("/dev/console"),
        "the program's stdin is not a terminal: {}",
        setup.explain(&output)
    );
    setup.assert_nothing_left(id);
}

#[test]
fn containers_of_one_pod_share_its_sandbox() {
    let Some(setup) = Setup::new("containers_of_one_pod_share_its_sandbox") else {
        return;
    };
    let pod = "hull-none-pod";
    let annotation = format!("io.kubernetes.cri.sandbox-id={pod}");
    setup
        .containerd
        .ctr(&setup.run_args(
            &["-d", "--annotation", &annotation],
            pod,
            &["sleep", "1000"],
        ))
        .expect("ctr run -d of the pod's first container");
    setup.wait_running(pod);
    let run_dir = hull_shim::paths::sandbox_run_dir(hull_tests::containerd::NAMESPACE, pod);
    let agents =
        || hull_tests::leftovers::processes_with(&["hull-agent", &run_dir.display().to_string()]);
    assert_eq!(agents().len(), 1, "the pod's agent runs");

    let second = "hull-none-pod-second";
    let output = setup
        .containerd
        .ctr_command(&setup.run_args(
            &["--rm", "--annotation", &annotation],
            second,
            &["sh", "-c", "echo second; exit 4"],
        ))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(4), "{}", setup.explain(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "second\n");
    assert_eq!(
        agents().len(),
        1,
        "the second container used the pod's agent"
    );
    assert!(
        hull_tests::leftovers::processes_with(&["containerd-shim-hull-v2", second]).is_empty(),
        "the second container got a shim of its own"
    );
    assert!(run_dir.exists(), "the pod outlives its second container");

    setup
        .containerd
        .ctr(&["tasks", "kill", "--signal", "SIGKILL", pod])
        .expect("ctr task kill");
    let deadline = Instant::now() + Duration::from_secs(30);
    while setup.containerd.ctr(&["tasks", "delete", pod]).is_err() {
        assert!(Instant::now() < deadline, "task never stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
    setup
        .containerd
        .ctr(&["containers", "delete", pod])
        .expect("ctr containers delete");
    setup.assert_nothing_left(pod);
    setup.assert_nothing_left(second);
}

/// The same binds as the VM test, on `none` (the agent binds the host paths itself): a
/// read-only directory, a writable one the host sees written, a single file.
#[test]
fn bind_mounts_and_volumes_reach_the_container() {
    let Some(setup) = Setup::new("bind_mounts_and_volumes_reach_the_container") else {
        return;
    };
    let id = "hull-none-volumes";
    let host = tempfile::tempdir().unwrap();
    let (ro, rw, file) = (
        host.path().join("ro"),
        host.path().join("rw"),
        host.path().join("file"),
    );
    std::fs::create_dir(&ro).unwrap();
    std::fs::create_dir(&rw).unwrap();
    std::fs::write(ro.join("greeting"), "read-only hello\n").unwrap();
    std::fs::write(&file, "one file\n").unwrap();
    let mount = |src: &Path, dst: &str, options: &str| {
        format!(
            "type=bind,src={},dst={dst},options={options}",
            src.display()
        )
    };
    let mounts = [
        mount(&ro, "/ro", "rbind:ro"),
        mount(&rw, "/rw", "rbind:rw"),
        mount(&file, "/hull-file", "bind:ro"),
    ];
    let extra: [&str; 7] = [
        "--rm", "--mount", &mounts[0], "--mount", &mounts[1], "--mount", &mounts[2],
    ];
    let script = "exec 2>&1; cat /ro/greeting; \
                  if echo x > /ro/new; then echo RO-WRITTEN; fi; \
                  echo from-the-container > /rw/out && echo RW-WRITTEN; \
                  cat /hull-file";
    let output = setup
        .containerd
        .ctr_command(&setup.run_args(&extra, id, &["sh", "-c", script]))
        .output()
        .expect("ctr runs");
    assert!(output.status.success(), "{}", setup.explain(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"read-only hello"), "{stdout}");
    assert!(
        lines
            .get(1)
            .is_some_and(|l| l.contains("Read-only file system")),
        "{stdout}"
    );
    assert_eq!(lines.get(2), Some(&"RW-WRITTEN"), "{stdout}");
    assert_eq!(lines.get(3), Some(&"one file"), "{stdout}");
    assert!(!ro.join("new").exists());
    assert_eq!(
        std::fs::read_to_string(rw.join("out")).unwrap(),
        "from-the-container\n"
    );
    setup.assert_nothing_left(id);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<&str> = mountinfo
        .lines()
        .filter(|l| l.contains(host.path().to_str().expect("UTF-8 temp path")))
        .collect();
    assert!(left.is_empty(), "volume mounts left: {left:?}");
}

/// A bind source that does not exist fails Create naming it, before any sandbox starts, and
/// leaves nothing behind.
#[test]
fn a_missing_bind_source_is_named_through_ctr_and_leaves_nothing() {
    let test = "a_missing_bind_source_is_named_through_ctr_and_leaves_nothing";
    let Some(setup) = Setup::with_config(
        test,
        "hypervisor = \"none\"\n[runtime]\nenable_none_hypervisor = true\n",
        false,
    ) else {
        return;
    };
    let id = "hull-none-nosource";
    let extra = [
        "--rm",
        "--mount",
        "type=bind,src=/nonexistent/hull-volume-source,dst=/data,options=rbind:ro",
    ];
    let output = setup
        .containerd
        .ctr_command(&setup.run_args(&extra, id, &["true"]))
        .output()
        .expect("ctr runs");
    assert!(!output.status.success(), "{}", setup.explain(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/hull-volume-source") && stderr.contains("/data"),
        "the error does not name the source: {}",
        setup.explain(&output)
    );
    let _ = setup.containerd.ctr(&["containers", "delete", id]);
    setup.assert_nothing_left(id);
}

/// A bundle whose spec has no process (`ctr run --config` with such a spec) is refused at
/// Create naming what is missing, before a sandbox starts; nothing is left.
#[test]
fn a_bundle_without_a_process_is_refused_through_ctr_and_leaves_nothing() {
    let test = "a_bundle_without_a_process_is_refused_through_ctr_and_leaves_nothing";
    let Some(setup) = Setup::with_config(
        test,
        "hypervisor = \"none\"\n[runtime]\nenable_none_hypervisor = true\n",
        false,
    ) else {
        return;
    };
    let id = "hull-none-noprocess";
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.json");
    std::fs::write(
        &spec,
        r#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "linux": {"namespaces": [{"type": "mount"}]}}"#,
    )
    .unwrap();
    let output = setup
        .containerd
        .ctr_command(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--runtime-config-path",
            setup.config.to_str().expect("UTF-8 temp path"),
            "--config",
            spec.to_str().expect("UTF-8 temp path"),
            id,
        ])
        .output()
        .expect("ctr runs");
    assert!(!output.status.success(), "{}", setup.explain(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("config.json") && stderr.contains("process is missing"),
        "the error does not name the bundle's problem: {}",
        setup.explain(&output)
    );
    let _ = setup.containerd.ctr(&["containers", "delete", id]);
    setup.assert_nothing_left(id);
}

/// Runtime options of a type hull does not read are refused naming their type. ctr sends
/// runc's options only to a runtime named `io.containerd.runc.v2`, so containerd is given
/// hull's shim under runc's binary name.
#[test]
fn foreign_runtime_options_are_refused_through_ctr_naming_their_type() {
    let test = "foreign_runtime_options_are_refused_through_ctr_naming_their_type";
    let links = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(SHIM, links.path().join("containerd-shim-runc-v2")).unwrap();
    let Some(setup) = Setup::with_shim_dirs(
        test,
        "hypervisor = \"none\"\n[runtime]\nenable_none_hypervisor = true\n",
        false,
        &[links.path().to_owned()],
        &[],
    ) else {
        return;
    };
    let id = "hull-none-runcoptions";
    let output = setup
        .containerd
        .ctr_command(&[
            "run",
            "--rm",
            "--runtime",
            "io.containerd.runc.v2",
            "--runc-binary",
            "/nonexistent/runc",
            setup.image,
            id,
            "true",
        ])
        .output()
        .expect("ctr runs");
    assert!(!output.status.success(), "{}", setup.explain(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("containerd.runc.v1.Options") && stderr.contains("not hull's"),
        "the error does not name the options' type: {}",
        setup.explain(&output)
    );
    let _ = setup.containerd.ctr(&["containers", "delete", id]);
    setup.assert_nothing_left(id);
}

/// A configuration file named by the runtime options that does not exist is named through
/// ctr; nothing is left.
#[test]
fn a_missing_configuration_file_is_named_through_ctr_and_leaves_nothing() {
    let test = "a_missing_configuration_file_is_named_through_ctr_and_leaves_nothing";
    let Some(setup) = Setup::with_config(test, "", false) else {
        return;
    };
    let id = "hull-none-noconfig";
    let output = setup
        .containerd
        .ctr_command(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--runtime-config-path",
            "/nonexistent/hull-configuration.toml",
            setup.image,
            id,
            "true",
        ])
        .output()
        .expect("ctr runs");
    assert!(!output.status.success(), "{}", setup.explain(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/hull-configuration.toml"),
        "the error does not name the file: {}",
        setup.explain(&output)
    );
    let _ = setup.containerd.ctr(&["containers", "delete", id]);
    setup.assert_nothing_left(id);
}

/// One journal entry in journald's native protocol (`KEY=value` lines, or `KEY`, a 64-bit
/// little-endian length and the value for values that may hold newlines), as a map.
fn journal_fields(datagram: &[u8]) -> std::collections::HashMap<String, String> {
    let mut fields = std::collections::HashMap::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let Some(end) = rest.iter().position(|&b| b == b'=' || b == b'\n') else {
            break;
        };
        let name = String::from_utf8_lossy(&rest[..end]).into_owned();
        let value;
        if rest[end] == b'=' {
            let line = &rest[end + 1..];
            let stop = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
            value = &line[..stop];
            rest = line.get(stop + 1..).unwrap_or_default();
        } else {
            let Some(len) = rest.get(end + 1..end + 9) else {
                break;
            };
            let len = u64::from_le_bytes(len.try_into().unwrap()) as usize;
            let Some(bytes) = rest.get(end + 9..end + 9 + len) else {
                break;
            };
            value = bytes;
            rest = rest.get(end + 10 + len..).unwrap_or_default();
        }
        fields.insert(name, String::from_utf8_lossy(value).into_owned());
    }
    fields
}

/// What listens on journald's socket for this test: journald itself where it runs (the test
/// then reads the entries back with journalctl), or, on a host without it, the test, which
/// binds the socket path for as long as it runs (removing it, and the directories it made,
/// after) and keeps every datagram sent to it.
enum Journal {
    Real,
    Stand {
        made: Vec<PathBuf>,
        entries: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
        reader: Option<std::thread::JoinHandle<()>>,
    },
}

impl Journal {
    fn open(test: &str) -> Option<Self> {
        let socket = Path::new(hull_shim::logging::JOURNAL_SOCKET);
        if std::os::unix::net::UnixDatagram::unbound()
            .and_then(|s| s.connect(socket))
            .is_ok()
        {
            if which("journalctl").is_none() {
                hull_tests::prereq::skip(
                    test,
                    &hull_tests::prereq::Missing::new(
                        "journalctl (journald runs here, and its entries are read back with it)",
                        "apt-get install systemd",
                    ),
                );
                return None;
            }
            return Some(Self::Real);
        }
        if socket.exists() {
            hull_tests::prereq::skip(
                test,
                &hull_tests::prereq::Missing::new(
                    "a free journald socket path: /run/systemd/journal/socket exists but nothing answers on it",
                    "start systemd-journald, or remove the stale socket",
                ),
            );
            return None;
        }
        let mut made = Vec::new();
        for dir in ["/run/systemd", "/run/systemd/journal"] {
            if !Path::new(dir).exists() {
                std::fs::create_dir(dir).unwrap();
                made.push(PathBuf::from(dir));
            }
        }
        let listener = std::os::unix::net::UnixDatagram::bind(socket).unwrap();
        made.push(socket.to_owned());
        listener
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let entries = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Read all along: a datagram socket's queue is short, and a full one would make the
        // shims' logging wait.
        let reader = {
            let (entries, stop) = (entries.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(n) = listener.recv(&mut buf) {
                        entries.lock().unwrap().push(buf[..n].to_vec());
                    }
                }
            })
        };
        Some(Self::Stand {
            made,
            entries,
            stop,
            reader: Some(reader),
        })
    }

    /// The entries logged by the shim since `since` (seconds since the epoch).
    fn shim_entries(&self, since: u64) -> Vec<std::collections::HashMap<String, String>> {
        match self {
            Self::Real => {
                let out = std::process::Command::new("journalctl")
                    .args(["-o", "export", "--no-pager", "-t"])
                    .arg(hull_shim::logging::JOURNAL_IDENTIFIER)
                    .arg(format!("--since=@{since}"))
                    .output()
                    .expect("journalctl runs");
                // The export format: entries separated by an empty line, fields as above.
                out.stdout
                    .split(|&b| b == b'\n')
                    .fold(vec![Vec::new()], |mut entries, line| {
                        if line.is_empty() {
                            entries.push(Vec::new());
                        } else if let Some(last) = entries.last_mut() {
                            last.extend_from_slice(line);
                            last.push(b'\n');
                        }
                        entries
                    })
                    .iter()
                    .map(|e| journal_fields(e))
                    .collect()
            }
            Self::Stand { entries, .. } => entries
                .lock()
                .unwrap()
                .iter()
                .map(|e| journal_fields(e))
                .filter(|f| {
                    f.get("SYSLOG_IDENTIFIER").map(String::as_str)
                        == Some(hull_shim::logging::JOURNAL_IDENTIFIER)
                })
                .collect(),
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        if let Self::Stand {
            made, stop, reader, ..
        } = self
        {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(reader) = reader.take() {
                let _ = reader.join();
            }
            for path in made.iter().rev() {
                let _ = std::fs::remove_file(path).or_else(|_| std::fs::remove_dir(path));
            }
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// Where systemd's journal runs, the shim logs there too (as Kata's shim does), beside
/// containerd's log: entries with the shim's identifier, a priority, and each event's fields
/// (the phase marks' sandbox id).
#[test]
fn the_shim_logs_to_journald_where_it_runs() {
    let test = "the_shim_logs_to_journald_where_it_runs";
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Before any shim starts: a shim decides at start whether journald is there.
    let Some(journal) = Journal::open(test) else {
        return;
    };
    let Some(setup) = Setup::with_config(
        test,
        "hypervisor = \"none\"\n[runtime]\nenable_none_hypervisor = true\n",
        true,
    ) else {
        return;
    };
    let id = "hull-none-journald";
    let output = setup.ctr_run(id, &["echo", "hello"]);
    assert!(output.status.success(), "{}", setup.explain(&output));
    setup.assert_nothing_left(id);
    let marked = |entries: &[std::collections::HashMap<String, String>]| {
        entries.iter().any(|e| {
            e.get("F_SANDBOX").map(String::as_str) == Some(id)
                && e.get("MESSAGE").is_some_and(|m| m.contains("hull phase"))
                && e.get("PRIORITY").map(String::as_str) == Some("5")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut entries = journal.shim_entries(since);
    while !marked(&entries) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        entries = journal.shim_entries(since);
    }
    assert!(
        marked(&entries),
        "no journal entry of the shim with its sandbox's phase mark among {} entries: {:?}",
        entries.len(),
        entries.iter().take(5).collect::<Vec<_>>()
    );
}

/// containerd restarts while a pod runs (stopped as an upgrade does, then killed as in a
/// crash): the shim keeps serving the pod, and each new containerd finds it again from its
/// state: the task still runs, exec works, and its kill, exit and cleanup are as usual.
#[test]
fn a_running_pod_survives_containerd_restarts() {
    let Some(mut setup) = Setup::new("a_running_pod_survives_containerd_restarts") else {
        return;
    };
    let id = "hull-none-restart";
    setup.run_detached(id, &["sleep", "1000"]);
    let shim = pids_with(&["containerd-shim-hull-v2", id], &["--listen"]);
    assert_eq!(shim.len(), 1, "one shim serves the pod: {shim:?}");

    for (signal, how) in [(libc::SIGTERM, "stopped"), (libc::SIGKILL, "killed")] {
        setup
            .containerd
            .restart(signal)
            .unwrap_or_else(|e| panic!("containerd restarts after being {how}: {e}"));
        assert_eq!(
            task_status(&setup, id),
            "RUNNING",
            "the task after containerd was {how}; log:\n{}",
            setup.containerd.log()
        );
        assert_eq!(
            pids_with(&["containerd-shim-hull-v2", id], &["--listen"]),
            shim,
            "the same shim serves the pod after containerd was {how}"
        );
        let exec_id = format!("after-{how}");
        let output = setup
            .containerd
            .ctr_command(&["tasks", "exec", "--exec-id", &exec_id, id, "echo", how])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", setup.explain(&output));
        assert_eq!(String::from_utf8_lossy(&output.stdout), format!("{how}\n"));
    }

    setup.kill_and_remove(id);
}

/// A pod whose shim a restarted containerd cannot find again (its address file lost) is
/// cleaned up whole by containerd's `shim delete`: the serving shim too, not only what it ran,
/// so no shim is left serving a pod containerd no longer knows.
#[test]
fn a_shim_containerd_cannot_find_again_is_stopped_by_its_cleanup() {
    let test = "a_shim_containerd_cannot_find_again_is_stopped_by_its_cleanup";
    let Some(mut setup) = Setup::new(test) else {
        return;
    };
    let id = "hull-none-lost-address";
    setup.run_detached(id, &["sleep", "1000"]);
    let bundle = setup
        .containerd
        .state_dir()
        .join("io.containerd.runtime.v2.task")
        .join(hull_tests::containerd::NAMESPACE)
        .join(id);
    std::fs::remove_file(bundle.join("address")).expect("the shim wrote its address");
    setup
        .containerd
        .restart(libc::SIGKILL)
        .expect("containerd restarts");
    // containerd runs `shim delete` for the task it cannot reach and forgets it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !task_status(&setup, id).is_empty() {
        assert!(
            Instant::now() < deadline,
            "task still listed: {}",
            task_status(&setup, id)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = setup.containerd.ctr(&["containers", "delete", id]);
    setup.assert_nothing_left(id);
}
