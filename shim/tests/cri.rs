//! hull under containerd's CRI plugin, driven through the CRI gRPC API (v1, what containerd
//! 1.6 serves) as the kubelet drives it: a pod sandbox on the `hull` runtime handler with a
//! CNI bridge network, two containers in it, exec, logs, stop and removal. crictl is not
//! packaged in Debian 12, so the client is the `k8s-cri` crate's, over containerd's socket.
//!
//! The pod sandbox image is a local busybox that sleeps (no registry, so no pause image); the
//! network is Debian's CNI plugins (bridge + host-local) on a link-local /24 with its IPAM
//! state in the test's temp dir. After the pod is removed nothing may be left: no shim, agent
//! or QEMU process, no run directory, mount or sandbox record, no veth on the bridge, no
//! network namespace, no IP allocation. The bridge itself (CNI never deletes it) is removed
//! by the test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_tests::containerd::{Containerd, CriOptions, CRI_NAMESPACE};
use hull_tests::oci_image::{build_busybox_archive, build_pause_archive, busybox};
use hull_tests::prereq::Missing;
use hull_tests::require;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ExecSyncRequest, ImageSpec,
    LinuxPodSandboxConfig, ListContainersRequest, ListPodSandboxRequest, PodSandboxConfig,
    PodSandboxMetadata, PodSandboxStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StatusRequest, StopContainerRequest,
    StopPodSandboxRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-hull-v2");
const HANDLER: &str = "hull";
const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// The pod network: the bridge's name, its subnet and gateway (link-local, so nothing of the
/// host's is in the way).
struct Net {
    bridge: &'static str,
    subnet: &'static str,
    gateway: &'static str,
}

/// Network namespaces that exist now (CRI puts a pod's under /var/run/netns).
fn netns_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn ip(args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("ip runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A private containerd with CRI, its images, the CNI configuration, and clean-up of what
/// CNI leaves by design (the bridge) or a failed test would (namespaces it created).
struct CriSetup {
    containerd: Containerd,
    dir: tempfile::TempDir,
    net: Net,
    netns_before: Vec<String>,
}

impl CriSetup {
    /// `hull_config` is the shim's configuration file's text; `restrict_oom_score_adj` is
    /// CRI's option of that name (see [`CriOptions`]).
    fn new(hull_config: &str, net: Net, restrict_oom_score_adj: bool) -> Result<Self, Missing> {
        let busybox = busybox()?;
        hull_tests::prereq::root()?;
        hull_tests::prereq::find_program("ip", "iproute2")?;
        let dir = tempfile::Builder::new()
            .prefix("hull-cri-")
            .tempdir()
            .expect("a temp dir");
        let config = dir.path().join("configuration.toml");
        std::fs::write(&config, hull_config).unwrap();
        let cni_conf_dir = dir.path().join("net.d");
        std::fs::create_dir(&cni_conf_dir).unwrap();
        let ipam = dir.path().join("ipam");
        let conflist = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "hull-cri-test",
            "plugins": [{
                "type": "bridge",
                "bridge": net.bridge,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "dataDir": ipam,
                    "ranges": [[{ "subnet": net.subnet, "gateway": net.gateway }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                },
            }],
        });
        std::fs::write(
            cni_conf_dir.join("10-hull-test.conflist"),
            conflist.to_string(),
        )
        .unwrap();
        let shim_dir = Path::new(SHIM)
            .parent()
            .expect("the shim is in a directory")
            .to_owned();
        let options = CriOptions {
            handler: HANDLER.to_owned(),
            runtime_type: hull_shim::service::RUNTIME_ID.to_owned(),
            config_path: Some(config),
            pod_annotations: vec!["io.hull.config.*".to_owned()],
            sandbox_image: hull_tests::oci_image::PAUSE_IMAGE.to_owned(),
            cni_bin_dir: PathBuf::from(CNI_BIN_DIR),
            cni_conf_dir,
            restrict_oom_score_adj,
        };
        let netns_before = netns_names();
        let containerd =
            Containerd::start_with_cri(&[shim_dir], &options)?.expect("containerd starts");
        let archive = dir.path().join("busybox.tar");
        build_busybox_archive(&busybox, &archive).unwrap();
        containerd.import_in(CRI_NAMESPACE, &archive).unwrap();
        let archive = dir.path().join("pause.tar");
        build_pause_archive(&busybox, &archive).unwrap();
        containerd.import_in(CRI_NAMESPACE, &archive).unwrap();
        Ok(Self {
            containerd,
            dir,
            net,
            netns_before,
        })
    }

    fn log_dir(&self) -> PathBuf {
        self.dir.path().join("pod-logs")
    }

    fn ipam_allocations(&self) -> Vec<String> {
        let network = self.dir.path().join("ipam").join("hull-cri-test");
        std::fs::read_dir(network)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn veths_on_bridge(&self) -> String {
        ip(&["-o", "link", "show", "master", self.net.bridge])
    }

    /// containerd's log, the errors and hull's lines, for failure messages.
    fn log(&self) -> String {
        self.containerd.log_excerpt()
    }
}

impl Drop for CriSetup {
    fn drop(&mut self) {
        for name in netns_names() {
            if !self.netns_before.contains(&name) && name.starts_with("cni-") {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "delete", &name])
                    .status();
            }
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "delete", self.net.bridge])
            .status();
    }
}

async fn cri_client(socket: PathBuf) -> RuntimeServiceClient<Channel> {
    let channel = Endpoint::try_from("http://[::]:50051")
        .expect("a valid endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("containerd's CRI endpoint answers");
    RuntimeServiceClient::new(channel)
}

/// Waits until CRI reports its runtime and network ready (the CNI configuration loaded).
async fn wait_ready(client: &mut RuntimeServiceClient<Channel>, setup: &CriSetup) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = client
            .status(StatusRequest { verbose: false })
            .await
            .map(|r| r.into_inner());
        let ready = status.as_ref().is_ok_and(|s| {
            s.status
                .as_ref()
                .is_some_and(|s| s.conditions.iter().all(|c| c.status))
        });
        if ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "CRI never became ready: {status:?}\n{}",
            setup.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn pod_config(setup: &CriSetup, name: &str, annotations: &[(&str, &str)]) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_owned(),
            uid: format!("{name}-uid"),
            namespace: "default".to_owned(),
            attempt: 0,
        }),
        hostname: name.to_owned(),
        log_directory: setup.log_dir().display().to_string(),
        annotations: annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<HashMap<_, _>>(),
        linux: Some(LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

fn container_config(name: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_owned(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: hull_tests::oci_image::BUSYBOX_IMAGE.to_owned(),
            ..Default::default()
        }),
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

/// What identifies one pod's hull processes: the shim (by the pod id it was started for) and
/// whatever names the pod's run directory (agent, QEMU, backends).
fn pod_processes(pod_id: &str) -> Vec<String> {
    let run_dir = hull_shim::paths::sandbox_run_dir(CRI_NAMESPACE, pod_id);
    let mut left = hull_tests::leftovers::processes_with(&["containerd-shim-hull-v2", pod_id]);
    left.extend(hull_tests::leftovers::processes_with(&[&run_dir
        .display()
        .to_string()]));
    left
}

/// Whether this process may lower its OOM score adjustment (CAP_SYS_RESOURCE). Root in a
/// container often may not; then the host agent of the `none` hypervisor cannot apply the
/// -998 CRI gives the pod sandbox, and CRI is told to clamp it (a guest's agent has every
/// capability of its VM, so the VM test needs no clamp).
fn has_cap_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// What the pod's VM (or host agent) check counts: the processes holding its guest.
enum Runner {
    /// The `none` hypervisor: one hull-agent on the host.
    HostAgent,
    /// A QEMU VM.
    Qemu,
}

/// The whole pod life cycle through CRI. `annotation` is a pod annotation the shim honours
/// and `check_annotation` what a container sees of it (from `/proc/meminfo`).
async fn pod_life_cycle(
    setup: &CriSetup,
    runner: Runner,
    annotations: &[(&str, &str)],
    check_meminfo: impl Fn(&str),
) {
    let mut client = cri_client(setup.containerd.address()).await;
    wait_ready(&mut client, setup).await;

    // The pod.
    let config = pod_config(setup, "hull-cri-pod", annotations);
    let pod_id = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: HANDLER.to_owned(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", setup.log()))
        .into_inner()
        .pod_sandbox_id;
    let status = client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: false,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .expect("a status");
    let pod_ip = status
        .network
        .as_ref()
        .map(|n| n.ip.clone())
        .unwrap_or_default();
    assert!(
        pod_ip.starts_with(setup.net.gateway.rsplit_once('.').unwrap().0),
        "the pod's IP {pod_ip:?} is not from the CNI bridge's subnet {}",
        setup.net.subnet
    );

    // The first container: its output goes to the CRI log.
    let first = client
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(container_config(
                "first",
                &[
                    "sh",
                    "-c",
                    "echo hello from the first container; exec sleep 1000",
                ],
            )),
            sandbox_config: Some(config.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", setup.log()))
        .into_inner()
        .container_id;
    client
        .start_container(StartContainerRequest {
            container_id: first.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", setup.log()));

    // ExecSync: output and exit code come back; the pod's address is the container's, and
    // the bridge's gateway answers it.
    let script = format!(
        "head -n 1 /proc/meminfo; echo \"hostname=$(hostname)\"; ip -o -4 addr show eth0; \
         ping -c 1 -W 10 {} >/dev/null && echo PING-OK; exit 3",
        setup.net.gateway
    );
    let exec = client
        .exec_sync(ExecSyncRequest {
            container_id: first.clone(),
            cmd: vec!["sh".into(), "-c".into(), script],
            timeout: 60,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync: {e}\n{}", setup.log()))
        .into_inner();
    let stdout = String::from_utf8_lossy(&exec.stdout).into_owned();
    assert_eq!(
        exec.exit_code,
        3,
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&exec.stderr)
    );
    assert!(
        stdout.contains(&format!("inet {pod_ip}/24")),
        "the container does not have the pod's IP {pod_ip}: {stdout}"
    );
    assert!(
        stdout.contains("PING-OK"),
        "the container could not reach the bridge's gateway: {stdout}"
    );
    // The container is in the pod's UTS namespace: the pod's hostname.
    assert!(
        stdout.lines().any(|l| l == "hostname=hull-cri-pod"),
        "the container does not have the pod's hostname: {stdout}"
    );
    check_meminfo(&stdout);
    // CRI's /etc/hosts and /etc/resolv.conf (files of the pod's sandbox directory, bound into
    // each container; copies of the host's, as no DNS config was given) reach the container,
    // and a change to the pod's hosts file on the host is seen there (as the kubelet's edits).
    let sandbox_dir = setup
        .containerd
        .root_dir()
        .join("io.containerd.grpc.v1.cri/sandboxes")
        .join(&pod_id);
    let hosts_file = sandbox_dir.join("hosts");
    let hosts = std::fs::read_to_string(&hosts_file)
        .unwrap_or_else(|e| panic!("{}: {e}", hosts_file.display()));
    let resolv = std::fs::read_to_string(sandbox_dir.join("resolv.conf")).expect("resolv.conf");
    let cat = |cmd: &str| ExecSyncRequest {
        container_id: first.clone(),
        cmd: vec!["sh".into(), "-c".into(), cmd.into()],
        timeout: 60,
    };
    let exec = client
        .exec_sync(cat("cat /etc/hosts"))
        .await
        .expect("ExecSync cat /etc/hosts")
        .into_inner();
    assert_eq!(String::from_utf8_lossy(&exec.stdout), hosts, "/etc/hosts");
    let exec = client
        .exec_sync(cat("cat /etc/resolv.conf"))
        .await
        .expect("ExecSync cat /etc/resolv.conf")
        .into_inner();
    assert_eq!(
        String::from_utf8_lossy(&exec.stdout),
        resolv,
        "/etc/resolv.conf"
    );
    let updated = format!("{hosts}169.254.1.1 hull-cri-added\n");
    std::fs::write(&hosts_file, &updated).expect("updating the pod's hosts file");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = String::new();
    while seen != updated && Instant::now() < deadline {
        let exec = client
            .exec_sync(cat("cat /etc/hosts"))
            .await
            .expect("ExecSync cat /etc/hosts")
            .into_inner();
        seen = String::from_utf8_lossy(&exec.stdout).into_owned();
        if seen != updated {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(
        seen, updated,
        "the update of the pod's hosts file is not seen in the container"
    );

    // And the host reaches the pod's address.
    let ping = std::process::Command::new("ping")
        .args(["-c", "1", "-W", "10", &pod_ip])
        .output()
        .or_else(|_| {
            std::process::Command::new("busybox")
                .args(["ping", "-c", "1", "-W", "10", &pod_ip])
                .output()
        })
        .expect("ping runs");
    assert!(
        ping.status.success(),
        "the host could not ping the pod at {pod_ip}: {}",
        String::from_utf8_lossy(&ping.stdout)
    );

    // The CRI log has the container's output, in CRI's format.
    let log_path = setup.log_dir().join("first.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut log = String::new();
    while !log.contains("hello from the first container") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        log = std::fs::read_to_string(&log_path).unwrap_or_default();
    }
    assert!(
        log.lines()
            .any(|l| l.contains(" stdout F hello from the first container")),
        "{}: {log:?}",
        log_path.display()
    );

    // A second container in the same pod: same VM (or host agent), same shim.
    let second = client
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(container_config(
                "second",
                &["sh", "-c", "echo the second one; exec sleep 1000"],
            )),
            sandbox_config: Some(config.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer (second): {e}\n{}", setup.log()))
        .into_inner()
        .container_id;
    client
        .start_container(StartContainerRequest {
            container_id: second.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StartContainer (second): {e}\n{}", setup.log()));
    let exec = client
        .exec_sync(ExecSyncRequest {
            container_id: second.clone(),
            cmd: vec!["sh".into(), "-c".into(), "echo exec in the second".into()],
            timeout: 60,
        })
        .await
        .expect("ExecSync (second)")
        .into_inner();
    assert_eq!(exec.exit_code, 0);
    assert_eq!(
        String::from_utf8_lossy(&exec.stdout),
        "exec in the second\n"
    );
    let run_dir = hull_shim::paths::sandbox_run_dir(CRI_NAMESPACE, &pod_id);
    let run_dir = run_dir.display().to_string();
    let (what, holders) = match runner {
        Runner::HostAgent => (
            "hull-agent",
            hull_tests::leftovers::processes_with(&["hull-agent", &run_dir]),
        ),
        Runner::Qemu => (
            "QEMU",
            hull_tests::leftovers::processes_with(&["qemu-system", &run_dir]),
        ),
    };
    assert_eq!(holders.len(), 1, "one {what} for the pod: {holders:?}");
    let shims = hull_tests::leftovers::processes_with(&["containerd-shim-hull-v2"])
        .into_iter()
        .filter(|p| p.contains(&first) || p.contains(&second))
        .collect::<Vec<_>>();
    assert!(
        shims.is_empty(),
        "a container got a shim of its own: {shims:?}"
    );

    // Stop and remove, as the kubelet does.
    for id in [&second, &first] {
        client
            .stop_container(StopContainerRequest {
                container_id: id.clone(),
                timeout: 5,
            })
            .await
            .unwrap_or_else(|e| panic!("StopContainer: {e}\n{}", setup.log()));
        client
            .remove_container(RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("RemoveContainer: {e}\n{}", setup.log()));
    }
    client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", setup.log()));
    client
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", setup.log()));

    // Nothing left.
    let pods = client
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    assert!(pods.is_empty(), "pods left: {pods:?}");
    let containers = client
        .list_containers(ListContainersRequest { filter: None })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    assert!(containers.is_empty(), "containers left: {containers:?}");
    assert_nothing_left(setup, &pod_id).await;
}

async fn assert_nothing_left(setup: &CriSetup, pod_id: &str) {
    // The shim exits after containerd's Shutdown, asynchronously to the CRI answer.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pod_processes(pod_id).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        pod_processes(pod_id).is_empty(),
        "processes left: {:?}\n{}",
        pod_processes(pod_id),
        setup.log()
    );
    let (containers, tasks) = setup.containerd.leftovers_in(CRI_NAMESPACE);
    assert!(
        containers.is_empty() && tasks.is_empty(),
        "containerd still has {containers:?} {tasks:?}"
    );
    let run_dir = hull_shim::paths::sandbox_run_dir(CRI_NAMESPACE, pod_id);
    assert!(!run_dir.exists(), "{} left", run_dir.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let leaked: Vec<&str> = mounts.lines().filter(|l| l.contains(pod_id)).collect();
    assert!(leaked.is_empty(), "mounts left: {leaked:?}");
    assert_eq!(
        netns_names(),
        setup.netns_before,
        "a network namespace was left"
    );
    assert_eq!(setup.veths_on_bridge(), "", "a veth was left on the bridge");
    assert!(
        setup.ipam_allocations().is_empty(),
        "IP allocations left: {:?}",
        setup.ipam_allocations()
    );
    let records: Vec<String> = hull_tests::leftovers::files_below(&setup.containerd.state_dir())
        .into_iter()
        .filter(|p| p.ends_with(hull_shim::service::shim::RECORD_FILE))
        .map(|p| p.display().to_string())
        .collect();
    assert!(records.is_empty(), "sandbox records left: {records:?}");
}

/// The tests of this file run one at a time: each snapshots the host's network namespaces
/// and removes the `cni-` ones it did not see before, which would be the other test's pod's.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The whole CRI life cycle on the `none` hypervisor (no VM: the agent runs on the host, in
/// the pod's network namespace), in seconds; and a pod annotation that the configuration
/// does not allow is refused through CRI, naming it, with nothing left.
#[test]
fn a_cri_pod_on_the_none_hypervisor_runs_two_containers_and_leaves_nothing() {
    let test = "a_cri_pod_on_the_none_hypervisor_runs_two_containers_and_leaves_nothing";
    let _serial = serial();
    require!(
        test,
        hull_tests::artifacts::workspace_binary("hull-agent").map(drop)
    );
    let setup = require!(
        test,
        CriSetup::new(
            "hypervisor = \"none\"\n[runtime]\nenable_none_hypervisor = true\nlog_level = \"debug\"\n",
            Net {
                bridge: "hullcri0",
                subnet: "169.254.78.0/24",
                gateway: "169.254.78.1",
            },
            !has_cap_sys_resource(),
        )
    );
    runtime().block_on(async {
        let mut client = cri_client(setup.containerd.address()).await;
        wait_ready(&mut client, &setup).await;
        let refused = client
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod_config(
                    &setup,
                    "hull-cri-refused",
                    &[("io.hull.config.vm.kernel_params", "init=/bin/sh")],
                )),
                runtime_handler: HANDLER.to_owned(),
            })
            .await
            .expect_err("a pod annotation outside runtime.allowed_annotations is refused");
        assert!(
            refused
                .message()
                .contains("io.hull.config.vm.kernel_params"),
            "the error does not name the annotation: {refused}"
        );
        let pods = client
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .expect("ListPodSandbox")
            .into_inner()
            .items;
        assert!(pods.is_empty(), "a refused pod was kept: {pods:?}");

        pod_life_cycle(
            &setup,
            Runner::HostAgent,
            &[("io.hull.config.vm.vcpus", "1")],
            |_| {},
        )
        .await;
    });
}

/// The whole CRI life cycle with each pod in a QEMU VM (TCG here): both containers in one
/// VM, the pod's CNI address on the guest's NIC, and the `io.hull.config.vm.memory_mib` pod
/// annotation sizing the guest.
#[test]
fn a_cri_pod_runs_two_containers_in_one_vm_and_leaves_nothing() {
    let test = "a_cri_pod_runs_two_containers_in_one_vm_and_leaves_nothing";
    let _serial = serial();
    let kernel = require!(test, hull_tests::artifacts::vmlinux());
    let initrd = require!(test, hull_tests::artifacts::initrd());
    require!(test, hull_tests::prereq::tun());
    for helper in ["hull-vsock", "hull-fs"] {
        require!(test, hull_tests::artifacts::workspace_binary(helper));
    }
    let setup = require!(
        test,
        CriSetup::new(
            &format!(
                "hypervisor = \"qemu\"\n[vm]\nkernel = {:?}\ninitrd = {:?}\n",
                kernel.display().to_string(),
                initrd.display().to_string()
            ),
            Net {
                bridge: "hullcri1",
                subnet: "169.254.79.0/24",
                gateway: "169.254.79.1",
            },
            false,
        )
    );
    runtime().block_on(pod_life_cycle(
        &setup,
        Runner::Qemu,
        &[("io.hull.config.vm.memory_mib", "448")],
        |stdout| {
            // MemTotal is what the guest kernel has of its 448 MiB (the default is 256).
            let kib: u64 = stdout
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("no MemTotal in {stdout}"));
            assert!(
                (300 * 1024..=448 * 1024).contains(&kib),
                "the guest has {kib} KiB, not the annotation's 448 MiB"
            );
        },
    ));
}
