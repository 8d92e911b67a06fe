//! A private containerd for tests: its own root, state and sockets under a temp directory,
//! driven with `ctr`. Dropping it kills and removes every task and container it ran, stops
//! containerd, and unmounts whatever it left mounted, so a failing test leaves nothing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::prereq::{find_program, Missing};

/// How the temp directories of test containerds are named.
pub const TEMP_PREFIX: &str = "hull-containerd-";

/// The namespace tests run in.
pub const NAMESPACE: &str = "hull-test";

/// The namespace containerd's CRI plugin keeps its pods, containers and images in.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// containerd's CRI plugin, enabled for a test (it is disabled otherwise): a runtime handler
/// for hull, the pod sandbox image (no registry is reachable: it must be imported), CNI.
#[derive(Debug, Clone)]
pub struct CriOptions {
    /// The runtime handler's name (`RunPodSandboxRequest.runtime_handler`).
    pub handler: String,
    /// Its `runtime_type`, e.g. `io.containerd.hull.v2`.
    pub runtime_type: String,
    /// The configuration file handed to the shim as `runtimeoptions.v1.Options.ConfigPath`.
    pub config_path: Option<PathBuf>,
    /// Pod annotations (globs) the handler passes on to the runtime.
    pub pod_annotations: Vec<String>,
    /// The image the pod sandbox ("pause") container runs; it must be imported into
    /// [`CRI_NAMESPACE`] before a pod starts.
    pub sandbox_image: String,
    /// Where the CNI plugins are (`/usr/lib/cni` with Debian's containernetworking-plugins).
    pub cni_bin_dir: PathBuf,
    /// Where the CNI network configuration is.
    pub cni_conf_dir: PathBuf,
    /// CRI's `restrict_oom_score_adj`: clamp the OOM score adjustments it puts in specs (the
    /// pod sandbox's is -998) to containerd's own. Needed where containers are made on a host
    /// whose root lacks CAP_SYS_RESOURCE (a lower value than the current one is refused
    /// then), as with the `none` hypervisor in a container.
    pub restrict_oom_score_adj: bool,
}

impl CriOptions {
    /// The CRI plugin's section of containerd's configuration. runc stays configured: CRI
    /// refuses to load when its default runtime (`runc`) is not among the runtimes.
    fn config(&self) -> String {
        let handler = &self.handler;
        let runtime =
            format!("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{handler}]");
        let mut text = format!(
            "[plugins.\"io.containerd.grpc.v1.cri\"]\n\
             \x20 sandbox_image = {:?}\n\
             \x20 disable_apparmor = true\n\
             \x20 restrict_oom_score_adj = {}\n\
             \x20 stream_server_address = \"127.0.0.1\"\n\
             \x20 stream_server_port = \"0\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
             \x20 bin_dir = {:?}\n\
             \x20 conf_dir = {:?}\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n\
             \x20 runtime_type = \"io.containerd.runc.v2\"\n\
             {runtime}\n\
             \x20 runtime_type = {:?}\n\
             \x20 pod_annotations = {:?}\n",
            self.sandbox_image,
            self.restrict_oom_score_adj,
            self.cni_bin_dir.display().to_string(),
            self.cni_conf_dir.display().to_string(),
            self.runtime_type,
            self.pod_annotations,
        );
        if let Some(path) = &self.config_path {
            text.push_str(&format!(
                "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{handler}.options]\n\
                 \x20 ConfigPath = {:?}\n",
                path.display().to_string()
            ));
        }
        text
    }
}

/// Errors of the test containerd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or process operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// containerd did not come up.
    #[error("containerd did not answer within {0:?}; its log:\n{1}")]
    NotReady(Duration, String),
    /// A ctr command failed.
    #[error("ctr {args} failed ({status}):\n{output}")]
    Ctr {
        /// The arguments.
        args: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed.
        output: String,
    },
}

/// A running private containerd.
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
    ctr: PathBuf,
    path_env: std::ffi::OsString,
    /// The containerd binary and the environment it runs with, for [`Self::restart`].
    binary: PathBuf,
    env: Vec<(String, String)>,
    /// Whether the CRI plugin runs (and [`CRI_NAMESPACE`] needs cleaning up too).
    cri: bool,
}

impl Containerd {
    /// Starts containerd with `extra_path` ahead of PATH (where it finds runtime shims).
    pub fn start(extra_path: &[PathBuf]) -> Result<Result<Self, Error>, Missing> {
        let containerd = find_program("containerd", "containerd")?;
        let ctr = find_program("ctr", "containerd")?;
        find_program("runc", "runc")?;
        Ok(Self::spawn(&containerd, ctr, extra_path, None, &[]))
    }

    /// [`Containerd::start`] with `env` in containerd's environment (its shims inherit it).
    pub fn start_with_env(
        extra_path: &[PathBuf],
        env: &[(&str, &str)],
    ) -> Result<Result<Self, Error>, Missing> {
        let containerd = find_program("containerd", "containerd")?;
        let ctr = find_program("ctr", "containerd")?;
        find_program("runc", "runc")?;
        Ok(Self::spawn(&containerd, ctr, extra_path, None, env))
    }

    /// Starts containerd with its CRI plugin enabled as `cri` says; its CRI endpoint is
    /// [`Self::address`], as with a system containerd.
    pub fn start_with_cri(
        extra_path: &[PathBuf],
        cri: &CriOptions,
    ) -> Result<Result<Self, Error>, Missing> {
        let containerd = find_program("containerd", "containerd")?;
        let ctr = find_program("ctr", "containerd")?;
        find_program("runc", "runc")?;
        for plugin in ["bridge", "host-local", "loopback"] {
            if !cri.cni_bin_dir.join(plugin).is_file() {
                return Err(Missing::new(
                    format!("the CNI plugin {plugin} in {}", cri.cni_bin_dir.display()),
                    "apt-get install containernetworking-plugins",
                ));
            }
        }
        Ok(Self::spawn(&containerd, ctr, extra_path, Some(cri), &[]))
    }

    fn spawn(
        containerd: &Path,
        ctr: PathBuf,
        extra_path: &[PathBuf],
        cri: Option<&CriOptions>,
        env: &[(&str, &str)],
    ) -> Result<Self, Error> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| Error::Io { what, source }
        };
        // What earlier runs killed before their cleanup left (see crate::stale).
        for swept in crate::stale::sweep(&std::env::temp_dir(), TEMP_PREFIX) {
            eprintln!(
                "removed {} of a dead earlier run, with its processes and mounts",
                swept.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempdir()
            .map_err(io("creating a temp dir"))?;
        crate::stale::claim(dir.path()).map_err(io("claiming the temp dir"))?;
        let d = dir.path().display();
        let disabled = if cri.is_some() {
            ""
        } else {
            "\"io.containerd.grpc.v1.cri\""
        };
        let mut config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [{disabled}]\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
             [debug]\n  level = \"debug\"\n"
        );
        if let Some(cri) = cri {
            config.push_str(&cri.config());
        }
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).map_err(io("writing containerd's config"))?;
        let mut paths: Vec<PathBuf> = extra_path.to_vec();
        paths.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        let path_env = std::env::join_paths(paths).map_err(|e| Error::Io {
            what: "joining PATH".into(),
            source: std::io::Error::other(e),
        })?;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let child = launch(containerd, dir.path(), &path_env, &env)?;
        let containerd = Self {
            dir,
            child,
            ctr,
            path_env,
            binary: containerd.to_owned(),
            env,
            cri: cri.is_some(),
        };
        containerd.wait_ready()?;
        Ok(containerd)
    }

    fn wait_ready(&self) -> Result<(), Error> {
        let bound = Duration::from_secs(60);
        let deadline = Instant::now() + bound;
        while self.ctr(&["version"]).is_err() {
            if Instant::now() >= deadline {
                return Err(Error::NotReady(bound, self.log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Stops containerd with `signal` (SIGTERM as an upgrade does, SIGKILL as a crash), waits
    /// for it to end, and starts it again on the same root, state and sockets: running shims
    /// are left alone, and containerd must find them again. Its log goes on in the same file.
    pub fn restart(&mut self, signal: libc::c_int) -> Result<(), Error> {
        // SAFETY: kill(2) with the pid of our unreaped child; at worst ESRCH.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        self.child.wait().map_err(|source| Error::Io {
            what: "waiting for containerd to stop".into(),
            source,
        })?;
        self.child = launch(&self.binary, self.dir.path(), &self.path_env, &self.env)?;
        self.wait_ready()
    }

    /// containerd's gRPC socket.
    pub fn address(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// containerd's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The lines of containerd's log (the shims' among them) that report errors or concern
    /// hull and its sandboxes, for failure messages.
    pub fn log_excerpt(&self) -> String {
        self.log()
            .lines()
            .filter(|l| l.contains("level=error") || l.contains("hull") || l.contains("sandbox"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A `ctr` command against this containerd, in [`NAMESPACE`].
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        self.ctr_command_in(NAMESPACE, args)
    }

    /// A `ctr` command against this containerd, in `namespace`.
    pub fn ctr_command_in(&self, namespace: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg("--address")
            .arg(self.address())
            .args(["--namespace", namespace])
            .args(args);
        cmd.env("PATH", &self.path_env).stdin(Stdio::null());
        cmd
    }

    /// Runs `ctr` and returns its output, or an error with everything it printed.
    pub fn ctr(&self, args: &[&str]) -> Result<Output, Error> {
        self.ctr_in(NAMESPACE, args)
    }

    /// Runs `ctr` in `namespace`, as [`Self::ctr`].
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> Result<Output, Error> {
        let output = self
            .ctr_command_in(namespace, args)
            .output()
            .map_err(|source| Error::Io {
                what: format!("running ctr {}", args.join(" ")),
                source,
            })?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(Error::Ctr {
                args: args.join(" "),
                status: output.status,
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            })
        }
    }

    /// Imports an OCI archive.
    pub fn import(&self, archive: &Path) -> Result<(), Error> {
        let archive = archive.to_str().ok_or_else(|| Error::Io {
            what: format!("image archive path {archive:?}"),
            source: std::io::Error::other("not UTF-8"),
        })?;
        self.ctr(&["images", "import", archive]).map(drop)
    }

    /// Imports an OCI archive into `namespace` ([`CRI_NAMESPACE`] for CRI's pods).
    pub fn import_in(&self, namespace: &str, archive: &Path) -> Result<(), Error> {
        let archive = archive.to_str().ok_or_else(|| Error::Io {
            what: format!("image archive path {archive:?}"),
            source: std::io::Error::other("not UTF-8"),
        })?;
        self.ctr_in(namespace, &["images", "import", archive])
            .map(drop)
    }

    /// The directory containerd keeps its state in (`state` in its configuration).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The directory containerd keeps its data in (`root` in its configuration).
    pub fn root_dir(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Names of the containers and tasks that exist now, for leak checks.
    pub fn leftovers(&self) -> (Vec<String>, Vec<String>) {
        self.leftovers_in(NAMESPACE)
    }

    /// Names of the containers and tasks that exist now in `namespace`.
    pub fn leftovers_in(&self, namespace: &str) -> (Vec<String>, Vec<String>) {
        let names = |args: &[&str]| {
            self.ctr_in(namespace, args)
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        (
            names(&["containers", "ls", "-q"]),
            names(&["tasks", "ls", "-q"]),
        )
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let namespaces: &[&str] = if self.cri {
            &[NAMESPACE, CRI_NAMESPACE]
        } else {
            &[NAMESPACE]
        };
        for namespace in namespaces {
            let (containers, tasks) = self.leftovers_in(namespace);
            for task in &tasks {
                let _ = self.ctr_in(namespace, &["tasks", "kill", "-s", "SIGKILL", task]);
                let _ = self.ctr_in(namespace, &["tasks", "delete", "-f", task]);
            }
            for container in &containers {
                let _ = self.ctr_in(namespace, &["containers", "delete", container]);
            }
        }
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet; at worst ESRCH.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        unmount_below(self.dir.path());
    }
}

/// Starts containerd with the configuration in `dir`, its output appended to `dir`'s log.
fn launch(
    containerd: &Path,
    dir: &Path,
    path_env: &std::ffi::OsStr,
    env: &[(String, String)],
) -> Result<Child, Error> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| Error::Io { what, source }
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("containerd.log"))
        .map_err(io("opening the log"))?;
    let log_err = log.try_clone().map_err(io("duplicating the log"))?;
    Command::new(containerd)
        .arg("--config")
        .arg(dir.join("config.toml"))
        .env("PATH", path_env)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(io("starting containerd"))
}

/// Unmounts everything mounted at or below `dir`, deepest first.
fn unmount_below(dir: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut targets: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|t| Path::new(t).starts_with(dir))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for target in targets {
        let Ok(c) = std::ffi::CString::new(target) else {
            continue;
        };
        // SAFETY: umount2 reads a NUL-terminated path that outlives the call.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A `ctr` (or any child) running in the background, killed and reaped if a failed assertion
/// leaves it behind.
pub struct BackgroundCtr(pub Child);

impl BackgroundCtr {
    /// Whether it has ended.
    pub fn done(&mut self) -> bool {
        !matches!(self.0.try_wait(), Ok(None))
    }

    /// Waits for it to end, failing the test naming `what` (and `log()`, containerd's log)
    /// if it still runs after `bound`, and returns its output.
    pub fn finish(mut self, what: &str, bound: Duration, log: impl Fn() -> String) -> Output {
        use std::io::Read;
        let deadline = Instant::now() + bound;
        let status = loop {
            if let Some(status) = self.0.try_wait().expect("waiting for ctr") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: ctr still runs after {bound:?}; containerd log:\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        if let Some(mut out) = self.0.stdout.take() {
            out.read_to_end(&mut stdout).expect("reading ctr's stdout");
        }
        if let Some(mut err) = self.0.stderr.take() {
            err.read_to_end(&mut stderr).expect("reading ctr's stderr");
        }
        Output {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for BackgroundCtr {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
