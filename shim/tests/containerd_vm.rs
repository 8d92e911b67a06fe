//! containerd-shim-hull-v2 with the `qemu` hypervisor (TCG here, KVM where it works) under a
//! real, private containerd, driven with `ctr` as a user would: the task API on containers in
//! a microVM. What containerd sees when part of a pod's VM dies is the fault matrix's
//! (`fault_matrix.rs`).
//!
//! A TCG boot costs seconds, so each test boots as few VMs as it can: one pod serves every
//! check of the task API (its containers share the VM). After each test nothing of hull may
//! be left: no shim, QEMU or backend process, no mount, run directory, shim socket or sandbox
//! record.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use containerd_shim_protos::api::UpdateTaskRequest;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::ttrpc::context;
use containerd_shim_protos::{Client, TaskClient};
use hull_tests::containerd::{BackgroundCtr, Containerd, NAMESPACE};
use hull_tests::leftovers::processes_with;
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
/// How long anything in a TCG guest may take (a boot, an exit, a teardown) on a loaded host.
const BOUND: Duration = Duration::from_secs(120);

/// A private containerd with the busybox image, and a configuration selecting `qemu` with the
/// guest image the harness found.
struct VmSetup {
    containerd: Containerd,
    image: &'static str,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl VmSetup {
    /// `None` when a prerequisite is missing (the skip is recorded).
    fn new(test: &str) -> Option<Self> {
        let busybox = need!(test, busybox());
        for helper in ["hull-vsock", "hull-fs"] {
            need!(test, hull_tests::artifacts::workspace_binary(helper));
        }
        let shim_dir = Path::new(SHIM)
            .parent()
            .expect("the shim is in a directory");
        let containerd =
            need!(test, Containerd::start(&[shim_dir.to_owned()])).expect("containerd starts");
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("busybox.tar");
        let image = build_busybox_archive(&busybox, &archive).unwrap();
        containerd.import(&archive).unwrap();
        let config = dir.path().join("configuration.toml");
        need!(test, hull_tests::artifacts::qemu_configuration(&config, ""));
        Some(Self {
            containerd,
            image,
            config,
            _dir: dir,
        })
    }

    /// `ctr run` arguments for container `id` running `args`, with `extra` ctr flags.
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

    /// Starts `ctr args` in the background with its output piped.
    fn spawn_ctr(&self, args: &[&str]) -> BackgroundCtr {
        BackgroundCtr(
            self.containerd
                .ctr_command(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("ctr starts"),
        )
    }

    fn explain(&self, output: &Output) -> String {
        format!(
            "status {}\nstdout: {}\nstderr: {}\ncontainerd log (errors and hull):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log_excerpt()
        )
    }

    fn log_excerpt(&self) -> String {
        self.containerd.log_excerpt()
    }

    /// `ctr task ls`'s status column for `id` (empty if containerd lists no such task).
    fn task_status(&self, id: &str) -> String {
        let tasks = self.containerd.ctr(&["tasks", "ls"]).expect("ctr tasks ls");
        String::from_utf8_lossy(&tasks.stdout)
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or_default()
            .to_owned()
    }

    /// `ctr task metrics id`'s output; fails the test with containerd's log if ctr fails.
    fn metrics(&self, id: &str) -> String {
        let output = self
            .containerd
            .ctr_command(&["tasks", "metrics", id])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", self.explain(&output));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// containerd's Task.Update of container `id` with the OCI LinuxResources `resources`
    /// (JSON), sent to pod `pod`'s shim as containerd sends it. ctr 1.6 has no `task update`;
    /// CRI's UpdateContainerResources (and ctr 1.7's `task update`) end in this request.
    fn update(&self, pod: &str, id: &str, resources: &str) {
        let address = self.containerd.address().display().to_string();
        let socket = containerd_shim::socket_address(&address, NAMESPACE, pod);
        let client = TaskClient::new(Client::connect(&socket).expect("the pod's shim serves"));
        let request = UpdateTaskRequest {
            id: id.to_owned(),
            resources: MessageField::some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
                    .to_owned(),
                value: resources.as_bytes().to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let timeout = i64::try_from(BOUND.as_nanos()).unwrap();
        client
            .update(context::with_timeout(timeout), &request)
            .unwrap_or_else(|e| {
                panic!(
                    "Task.Update of {id} with {resources}: {e}\ncontainerd log:\n{}",
                    self.log_excerpt()
                )
            });
    }

    /// The contents (trimmed) of `files` of container `id`'s cgroup in the guest, read by
    /// an exec `exec_id` in the container (its /sys/fs/cgroup is the guest's cgroup2 mount;
    /// the exec is in the container's cgroup, which /proc/self/cgroup names). Each call
    /// needs an exec id of its own: the agent keeps a finished exec's id taken.
    fn cgroup_files(&self, id: &str, exec_id: &str, files: &[&str]) -> Vec<String> {
        let script = files
            .iter()
            .map(|f| format!("cat \"/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)/{f}\""))
            .collect::<Vec<_>>()
            .join(" && ");
        let output = self
            .containerd
            .ctr_command(&[
                "tasks",
                "exec",
                "--exec-id",
                exec_id,
                id,
                "sh",
                "-c",
                &script,
            ])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", self.explain(&output));
        let text = String::from_utf8_lossy(&output.stdout);
        let lines: Vec<String> = text.lines().map(|l| l.trim().to_owned()).collect();
        assert_eq!(lines.len(), files.len(), "one line per file: {text}");
        lines
    }

    /// The body of `GET /metrics` on pod `pod`'s monitor socket (in its run directory).
    fn monitor(&self, pod: &str) -> String {
        let socket =
            hull_shim::paths::sandbox_run_dir(NAMESPACE, pod).join(hull_shim::monitor::SOCKET_NAME);
        let mut stream = std::os::unix::net::UnixStream::connect(&socket)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()));
        stream.set_read_timeout(Some(BOUND)).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
        assert!(head.starts_with("HTTP/1.1 200 "), "{answer}");
        body.to_owned()
    }

    /// Waits until `ctr task ls` shows `id` RUNNING.
    fn wait_running(&self, id: &str) {
        let deadline = Instant::now() + BOUND;
        while self.task_status(id) != "RUNNING" {
            assert!(
                Instant::now() < deadline,
                "{id} never ran (status {:?}); containerd log:\n{}",
                self.task_status(id),
                self.log_excerpt()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until nothing of pod `pod` is left (its shim exits after containerd's Shutdown,
    /// asynchronously to ctr), then asserts it.
    fn assert_nothing_left(&self, pod: &str, containers: &[&str]) {
        let deadline = Instant::now() + BOUND;
        while !self.leftovers(pod, containers).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            self.leftovers(pod, containers).is_empty(),
            "left behind: {:#?}\ncontainerd log:\n{}",
            self.leftovers(pod, containers),
            self.log_excerpt()
        );
    }

    /// What is left of pod `pod` and its `containers`: processes naming the pod's run
    /// directory or a container, mounts naming one, the run directory, the pod shim's socket,
    /// sandbox records, and the tasks and containers containerd still lists.
    fn leftovers(&self, pod: &str, containers: &[&str]) -> Vec<String> {
        let run_dir = hull_shim::paths::sandbox_run_dir(NAMESPACE, pod);
        let run_dir_text = run_dir.display().to_string();
        // Trailing slash and spaces: one pod's id may be a prefix of another's.
        let mut left = processes_with(&[&format!("{run_dir_text}/")]);
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for id in std::iter::once(pod).chain(containers.iter().copied()) {
            left.extend(processes_with(&[
                "containerd-shim-hull-v2",
                &format!(" -id {id} "),
            ]));
            left.extend(
                mounts
                    .lines()
                    .filter(|l| l.contains(id))
                    .map(|l| format!("mount: {l}")),
            );
        }
        if run_dir.exists() {
            left.push(format!("run directory {run_dir_text}"));
        }
        let address = self.containerd.address().display().to_string();
        let socket = containerd_shim::socket_address(&address, NAMESPACE, pod);
        let socket = socket.strip_prefix("unix://").unwrap_or(&socket);
        if Path::new(socket).exists() {
            left.push(format!("shim socket {socket}"));
        }
        left.extend(
            hull_tests::leftovers::files_below(&self.containerd.address().with_file_name("state"))
                .into_iter()
                .filter(|p| p.ends_with(hull_shim::service::shim::RECORD_FILE))
                .map(|p| format!("sandbox record {}", p.display())),
        );
        let (listed_containers, tasks) = self.containerd.leftovers();
        for id in std::iter::once(pod).chain(containers.iter().copied()) {
            if tasks.iter().any(|t| t == id) {
                left.push(format!("task {id}"));
            }
            if listed_containers.iter().any(|c| c == id) {
                left.push(format!("container {id}"));
            }
        }
        left
    }
}

/// The value of `name` in `ctr task metrics`' table ("NAME  VALUE" lines).
fn metric(table: &str, name: &str) -> Option<u64> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// The value of the sample `name` in Prometheus text, of the process with `role` if given.
fn sample(text: &str, name: &str, role: Option<&str>) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .find(|l| role.is_none_or(|r| l.contains(&format!("role=\"{r}\""))))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
}

/// QEMU processes of pod `pod`.
fn qemu_processes(pod: &str) -> Vec<String> {
    let run_dir = hull_shim::paths::sandbox_run_dir(NAMESPACE, pod);
    // With the trailing slash: pod `hull-vm-pod`'s directory is a prefix of `hull-vm-pod2`'s,
    // whose test runs at the same time.
    processes_with(&["qemu-system", &format!("{}/", run_dir.display())])
}

/// One pod, one VM: exit codes, signals, exec, ps, metrics, update, pause and resume, all
/// through `ctr`; and the guest's figures on the pod's monitor socket.
#[test]
fn a_pods_vm_serves_the_task_api_through_ctr_and_leaves_nothing() {
    let test = "a_pods_vm_serves_the_task_api_through_ctr_and_leaves_nothing";
    let Some(setup) = VmSetup::new(test) else {
        return;
    };
    let pod = "hull-vm-pod";
    let annotation = format!("io.kubernetes.cri.sandbox-id={pod}");

    // The pod's first container, ended by SIGKILL at the end of the test. It sees the
    // guest's cgroup file system (read-only), so the test can read its cgroup's files.
    let init = setup.spawn_ctr(&setup.run_args(
        &[
            "--rm",
            "--annotation",
            &annotation,
            "--mount",
            "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro:nosuid:nodev:noexec",
        ],
        pod,
        &["sleep", "100000"],
    ));
    setup.wait_running(pod);
    assert_eq!(qemu_processes(pod).len(), 1, "the pod runs in one VM");

    // ctr task exec: a second process, its output and exit code.
    let output = setup
        .containerd
        .ctr_command(&[
            "tasks",
            "exec",
            "--exec-id",
            "exit-3",
            pod,
            "sh",
            "-c",
            "echo from exec; exit 3",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", setup.explain(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "from exec\n");

    // SIGTERM to a process without a handler ends it with containerd's 128 + 15.
    let sleeper = setup.spawn_ctr(&["tasks", "exec", "--exec-id", "term", pod, "sleep", "100001"]);
    let deadline = Instant::now() + BOUND;
    loop {
        let ps = setup
            .containerd
            .ctr(&["tasks", "ps", pod])
            .expect("ctr task ps");
        let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
        // ps names each process; an exec by its id (as runc's ProcessDetails).
        if ps.contains("term") {
            let pids = ps
                .lines()
                .skip(1)
                .filter(|l| {
                    l.split_whitespace()
                        .next()
                        .is_some_and(|p| p.parse::<u32>().is_ok())
                })
                .count();
            assert!(pids >= 2, "ps lists the init and the exec:\n{ps}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the exec never showed in ps:\n{ps}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    setup
        .containerd
        .ctr(&[
            "tasks",
            "kill",
            "--signal",
            "SIGTERM",
            "--exec-id",
            "term",
            pod,
        ])
        .expect("ctr task kill --exec-id");
    let output = sleeper.finish("the exec killed with SIGTERM", BOUND, || {
        setup.log_excerpt()
    });
    assert_eq!(
        output.status.code(),
        Some(143),
        "{}",
        setup.explain(&output)
    );

    // ctr task metrics: the guest's cgroup v2 figures of the container; then a memory
    // and a pids limit set with Task.Update, visible in the next metrics.
    let metrics = setup.metrics(pod);
    assert!(
        metric(&metrics, "pids.current").is_some_and(|n| n >= 1),
        "pids.current missing or zero:\n{metrics}"
    );
    assert!(
        metric(&metrics, "memory.usage").is_some_and(|n| n > 0),
        "memory.usage missing or zero:\n{metrics}"
    );
    assert!(
        metric(&metrics, "cpu.usage_usec").is_some_and(|n| n > 0),
        "cpu.usage_usec missing or zero:\n{metrics}"
    );
    // The container's cgroup has the cpu, io, memory and pids controllers (the guest
    // kernel's configuration, agent/image/kernel.fragment, has all four).
    let controllers = setup.cgroup_files(pod, "cgroup-1", &["cgroup.controllers"]);
    let has: Vec<&str> = controllers[0]
        .split_whitespace()
        .filter(|c| ["cpu", "io", "memory", "pids"].contains(c))
        .collect();
    assert_eq!(
        has,
        ["cpu", "io", "memory", "pids"],
        "the container's cgroup lacks controllers: {controllers:?}"
    );

    let limit = 64u64 << 20;
    setup.update(
        pod,
        pod,
        &format!(
            r#"{{"memory":{{"limit":{limit}}},"pids":{{"limit":64}},"cpu":{{"quota":50000,"period":100000}}}}"#
        ),
    );
    assert_eq!(
        setup.cgroup_files(pod, "cgroup-2", &["cpu.max"]),
        ["50000 100000"],
        "the CPU quota was not applied"
    );
    let metrics = setup.metrics(pod);
    assert_eq!(
        metric(&metrics, "memory.usage_limit"),
        Some(limit),
        "the updated memory limit is not in the metrics:\n{metrics}"
    );
    assert_eq!(
        metric(&metrics, "pids.limit"),
        Some(64),
        "the updated pids limit is not in the metrics:\n{metrics}"
    );

    // The pod's monitor socket (what `hull monitor` gathers): the VM's host processes, and
    // the guest agent's own figures, asked for over vsock (GetMetrics).
    let monitor = setup.monitor(pod);
    assert_eq!(
        sample(&monitor, "hull_agent_up", None),
        Some(1.0),
        "the agent did not answer GetMetrics:\n{monitor}"
    );
    for name in [
        "hull_guest_memory_total_bytes",
        "hull_guest_memory_available_bytes",
        "hull_agent_resident_memory_bytes",
    ] {
        assert!(
            sample(&monitor, name, None).is_some_and(|v| v > 0.0),
            "{name} missing or zero:\n{monitor}"
        );
    }
    assert!(
        sample(&monitor, "hull_process_resident_memory_bytes", Some("qemu"))
            .is_some_and(|v| v > 0.0),
        "QEMU's resident memory missing or zero:\n{monitor}"
    );
    // The vsock backend's own counters: every call above crossed it, both ways.
    let vsock = |name: &str| {
        monitor
            .lines()
            .filter(|l| l.starts_with(name) && l.contains("backend=\"hull-vsock\""))
            .find_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
    };
    for name in [
        "hull_vsock_tx_packets_total",
        "hull_vsock_rx_packets_total",
        "hull_vsock_tx_bytes_total",
        "hull_vsock_connections_total",
    ] {
        assert!(
            vsock(name).is_some_and(|v| v > 0.0),
            "{name} of hull-vsock missing or zero:\n{monitor}"
        );
    }
    // Its queues: the guest kicked tx to send, and was notified of what came on rx.
    for (name, queue) in [
        ("hull_vsock_queue_kicks_total{", "queue=\"tx\""),
        ("hull_vsock_queue_interrupts_total{", "queue=\"rx\""),
    ] {
        let value = monitor
            .lines()
            .filter(|l| {
                l.starts_with(name) && l.contains(queue) && l.contains("backend=\"hull-vsock\"")
            })
            .find_map(|l| l.split_whitespace().last()?.parse::<f64>().ok());
        assert!(
            value.is_some_and(|v| v > 0.0),
            "{name}{queue}}} of hull-vsock missing or zero:\n{monitor}"
        );
    }
    // hull-fs's request counters: the guest mounted the share and looked names up in it.
    let fs_requests = monitor
        .lines()
        .filter(|l| {
            l.starts_with("hull_fs_requests_total{")
                && l.contains("kind=\"lookup\"")
                && l.contains("backend=\"hull-fs\"")
        })
        .find_map(|l| l.split_whitespace().last()?.parse::<f64>().ok());
    assert!(
        fs_requests.is_some_and(|v| v > 0.0),
        "hull_fs_requests_total{{kind=\"lookup\"}} of hull-fs missing or zero:\n{monitor}"
    );

    // Pause and resume (the cgroup freezer in the guest), as containerd reports them.
    setup
        .containerd
        .ctr(&["tasks", "pause", pod])
        .expect("ctr task pause");
    assert_eq!(setup.task_status(pod), "PAUSED");
    setup
        .containerd
        .ctr(&["tasks", "resume", pod])
        .expect("ctr task resume");
    assert_eq!(setup.task_status(pod), "RUNNING");

    // SIGKILL ends the pod's first container with containerd's 128 + 9, and with it the pod.
    setup
        .containerd
        .ctr(&["tasks", "kill", "--signal", "SIGKILL", pod])
        .expect("ctr task kill");
    let output = init.finish("the pod's first container", BOUND, || setup.log_excerpt());
    assert_eq!(
        output.status.code(),
        Some(137),
        "{}",
        setup.explain(&output)
    );
    setup.assert_nothing_left(pod, &[]);
}

/// A second and a third container of a pod, in the pod's VM: stdin and its end, the exit
/// code, and a terminal, all through `ctr`.
#[test]
fn a_pods_vm_runs_a_second_container_with_stdin_and_a_terminal() {
    let test = "a_pods_vm_runs_a_second_container_with_stdin_and_a_terminal";
    let Some(setup) = VmSetup::new(test) else {
        return;
    };
    let script = hull_tests::require!(test, hull_tests::prereq::find_program("script", "bsdutils"));
    let pod = "hull-vm-pod2";
    let second = "hull-vm-pod2-exit";
    let tty = "hull-vm-pod2-tty";
    let annotation = format!("io.kubernetes.cri.sandbox-id={pod}");
    let init = setup.spawn_ctr(&setup.run_args(
        &["--rm", "--annotation", &annotation],
        pod,
        &["sleep", "100000"],
    ));
    setup.wait_running(pod);

    // A second container of the pod, in the same VM: stdin reaches it, its end too (cat
    // ends), and its exit code comes back exactly.
    let mut child = setup
        .containerd
        .ctr_command(&setup.run_args(
            &["--rm", "--annotation", &annotation],
            second,
            &["sh", "-c", "cat; exit 7"],
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctr starts");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(b"line one\nline two\n").unwrap();
    drop(stdin);
    let output =
        BackgroundCtr(child).finish("the pod's second container", BOUND, || setup.log_excerpt());
    assert_eq!(output.status.code(), Some(7), "{}", setup.explain(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "line one\nline two\n",
        "{}",
        setup.explain(&output)
    );
    assert_eq!(
        qemu_processes(pod).len(),
        1,
        "the second container ran in the pod's VM"
    );
    assert!(
        processes_with(&["containerd-shim-hull-v2", second]).is_empty(),
        "the second container got a shim of its own"
    );

    // ctr run -t: the program's stdin is a terminal in the guest. ctr needs a terminal of its
    // own: script(1) gives it one.
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
            .ctr_command(&setup.run_args(
                &["--rm", "-t", "--annotation", &annotation],
                tty,
                &["sh", "-c", "tty; exit 5"],
            ))
            .get_args()
            .map(|a| format!("'{}'", a.to_string_lossy())),
    )
    .collect();
    let output = std::process::Command::new(script)
        .args(["-qec", &command.join(" "), "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script runs");
    assert_eq!(output.status.code(), Some(5), "{}", setup.explain(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("/dev/pts/"),
        "the program's stdin is not a terminal: {}",
        setup.explain(&output)
    );
    assert_eq!(qemu_processes(pod).len(), 1, "still one VM");

    setup
        .containerd
        .ctr(&["tasks", "kill", "--signal", "SIGKILL", pod])
        .expect("ctr task kill");
    let output = init.finish("the pod's first container", BOUND, || setup.log_excerpt());
    assert_eq!(
        output.status.code(),
        Some(137),
        "{}",
        setup.explain(&output)
    );
    setup.assert_nothing_left(pod, &[second, tty]);
}
