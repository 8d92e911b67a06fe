//! The container helper: youki's libcontainer runs in a short-lived child process of the
//! agent, `hull-agent __container-helper ...`, never in the agent itself.
//!
//! Why a process and not tokio's blocking pool: libcontainer's create clones an intermediate
//! process with a raw clone3(2) and runs a great deal of Rust in it (allocations, logging,
//! channels) before exec. Cloned from a thread of a multi-threaded process, that child could
//! inherit a lock (the allocator's, stderr's) that another thread of the agent held at that
//! moment and deadlock; fork handlers do not run for clone3. The helper is single-threaded,
//! as youki's own CLI is, so libcontainer runs as it was written to run. It also keeps the
//! process-wide side effects of a create (it makes its caller non-dumpable and writes the
//! spec's oom_score_adj to `/proc/self`) off the agent.
//!
//! The helper's stdin, stdout and stderr are the container process's stdio (pipes made by the
//! agent; /dev/null with a terminal, whose pty libcontainer sends to the console socket). It
//! never logs: its stderr is the container's. It writes the created process's PID to the pid
//! file (libcontainer's `--pid-file`), a failure's message to the error file, and exits 0 or 1.
//!
//! A failure's message is the error's whole chain of causes plus what libcontainer logged at
//! the error level on the way, in the helper or in the processes libcontainer clones from it
//! (collected in the error file, see [`ErrorLog`]): libcontainer's `CreateContainerError`
//! keeps its cause out of `source()`, and the init reports its own failures to the helper by
//! their outermost message only, so a create that failed on, say, a bind mount's missing
//! source would otherwise read only "failed to prepare rootfs", while the init's log names
//! the mount and the errno.
//! The process it creates is cloned with CLONE_PARENT, a child of the helper; when the helper
//! exits it is re-parented to the agent (PID 1, or a child subreaper on a host), whose reaper
//! owns its exit status (see [`crate::reaper`]). The helper waits for libcontainer's
//! intermediate process itself, inside libcontainer, in its own process: the agent's reaper
//! cannot see it.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;

/// The first argument that makes hull-agent run as the container helper.
pub const HELPER_ARG: &str = "__container-helper";

/// What the helper is asked to do.
#[derive(Debug, Clone)]
pub struct HelperArgs {
    /// `create` or `exec`.
    pub op: HelperOp,
    /// libcontainer's state directory (its `--root`).
    pub state_root: PathBuf,
    /// The container id.
    pub id: String,
    /// create: the bundle directory (with config.json); exec: the process.json file.
    pub spec: PathBuf,
    /// The console socket for a terminal.
    pub console_socket: Option<PathBuf>,
    /// Where the new process's PID is written.
    pub pid_file: PathBuf,
    /// Where a failure's message is written.
    pub error_file: PathBuf,
    /// Enter the rootfs by moving it onto / and chroot'ing instead of pivot_root(2), which
    /// fails when the agent's own root is an initramfs (a hull guest's): runc's --no-pivot.
    pub no_pivot: bool,
}

/// An operation of the helper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelperOp {
    /// Create a container (runc create): its init waits for StartContainer.
    Create,
    /// Start a process in a running container (runc exec -d).
    Exec,
    /// Let a created container's init exec the user's program, running poststart hooks
    /// (runc start). libcontainer changes the working directory to reach its notify socket,
    /// one more reason not to run it in the agent.
    Start,
    /// Delete a stopped container: its cgroup and state, running poststop hooks (runc delete
    /// --force).
    Delete,
}

impl HelperArgs {
    /// The arguments after [`HELPER_ARG`].
    pub fn to_args(&self) -> Vec<OsString> {
        let op = match self.op {
            HelperOp::Create => "create",
            HelperOp::Exec => "exec",
            HelperOp::Start => "start",
            HelperOp::Delete => "delete",
        };
        let console = self
            .console_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from("-"));
        vec![
            op.into(),
            self.state_root.clone().into(),
            self.id.clone().into(),
            self.spec.clone().into(),
            console.into(),
            self.pid_file.clone().into(),
            self.error_file.clone().into(),
            if self.no_pivot { "no-pivot" } else { "pivot" }.into(),
        ]
    }

    fn parse(args: &[OsString]) -> Option<Self> {
        let [op, state_root, id, spec, console, pid_file, error_file, pivot] = args else {
            return None;
        };
        let op = match op.to_str()? {
            "create" => HelperOp::Create,
            "exec" => HelperOp::Exec,
            "start" => HelperOp::Start,
            "delete" => HelperOp::Delete,
            _ => return None,
        };
        Some(HelperArgs {
            op,
            state_root: state_root.into(),
            id: id.to_str()?.to_owned(),
            spec: spec.into(),
            console_socket: (console != "-").then(|| console.into()),
            pid_file: pid_file.into(),
            error_file: error_file.into(),
            no_pivot: match pivot.to_str()? {
                "no-pivot" => true,
                "pivot" => false,
                _ => return None,
            },
        })
    }
}

/// Runs the helper with the arguments after [`HELPER_ARG`].
pub fn main(args: &[OsString]) -> ExitCode {
    let Some(args) = HelperArgs::parse(args) else {
        eprintln!("hull-agent {HELPER_ARG}: internal use only (malformed arguments)");
        return ExitCode::from(2);
    };
    // The agent's Rust runtime ignores SIGPIPE; an ignored signal stays ignored across
    // execve, so reset it, or `yes | head` in a container would never end.
    // SAFETY: setting a signal's disposition to the default installs no handler.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // A log that cannot be opened loses detail, not the error.
    let log = ErrorLog::open(&args.error_file).ok();
    if let Some(log) = &log {
        // Only this single-threaded process (and its clones).
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::ERROR)
            .with_writer(log.clone())
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_level(false)
            .try_init();
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            let logged = log.as_ref().map(ErrorLog::lines).unwrap_or_default();
            let message = with_logged(message, &logged);
            // The agent reads this file; if even that fails, the exit code still says it.
            let _ = std::fs::write(&args.error_file, message);
            ExitCode::FAILURE
        }
    }
}

fn run(args: &HelperArgs) -> Result<(), String> {
    if matches!(args.op, HelperOp::Start | HelperOp::Delete) {
        let mut container = Container::load(args.state_root.join(&args.id))
            .map_err(|err| format!("loading the container's state: {}", chain(&err)))?;
        let result = if args.op == HelperOp::Start {
            container.start()
        } else {
            container.delete(true)
        };
        return result.map_err(|err| chain(&err));
    }
    let builder = ContainerBuilder::new(args.id.clone(), SyscallType::default())
        .with_root_path(&args.state_root)
        .map_err(|err| format!("libcontainer state directory: {err}"))?
        .with_pid_file(Some(&args.pid_file))
        .map_err(|err| format!("pid file: {err}"))?
        .with_console_socket(args.console_socket.as_ref());
    match args.op {
        HelperOp::Create => builder
            .as_init(&args.spec)
            .with_systemd(false)
            .with_no_pivot(args.no_pivot)
            .with_detach(true)
            .build()
            .map(drop)
            .map_err(|err| chain(&err)),
        HelperOp::Exec => builder
            .as_tenant()
            .with_detach(true)
            .with_process(Some(&args.spec))
            .build()
            .map(drop)
            .map_err(|err| chain(&err)),
        HelperOp::Start | HelperOp::Delete => Ok(()),
    }
}

/// libcontainer's error-level log lines, for the failure's message (the helper's stderr
/// belongs to the container), appended to the error file through a descriptor opened before
/// libcontainer runs. Not kept in memory: libcontainer logs the init's own failures (a
/// mount's, say) in the init and intermediate processes it clones from the helper, whose
/// memory dies with them, while the descriptor they inherit writes to the same file (it is
/// close-on-exec, so nothing of it reaches the container's program). Bounded: a log that
/// runs away keeps its first lines. The helper replaces the file's content with the whole
/// message at a failure; the agent removes the file either way.
#[derive(Debug, Clone)]
struct ErrorLog(Arc<std::fs::File>);

/// At most this much of libcontainer's log goes into a failure's message, in bytes.
const MAX_LOGGED_BYTES: usize = 4096;

impl ErrorLog {
    /// Opens (creates) `path` for appending.
    fn open(path: &std::path::Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        Ok(Self(Arc::new(file)))
    }

    /// The lines logged so far, by any process.
    fn lines(&self) -> Vec<String> {
        use std::io::{Read, Seek, SeekFrom};
        let mut buffer = Vec::new();
        let mut file = &*self.0;
        if file.seek(SeekFrom::Start(0)).is_err() || file.read_to_end(&mut buffer).is_err() {
            return Vec::new();
        }
        String::from_utf8_lossy(&buffer)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

impl Write for ErrorLog {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut file = &*self.0;
        let len = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
        let room = MAX_LOGGED_BYTES.saturating_sub(len);
        // One write(2) per event on an O_APPEND descriptor: the processes' lines do not mix.
        file.write_all(&data[..data.len().min(room)])?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ErrorLog {
    type Writer = ErrorLog;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// `message` followed by the `logged` lines it does not already say.
fn with_logged(message: String, logged: &[String]) -> String {
    let extra: Vec<&str> = logged
        .iter()
        .map(String::as_str)
        .filter(|line| !message.contains(line))
        .collect();
    if extra.is_empty() {
        message
    } else {
        format!("{message} (libcontainer: {})", extra.join("; "))
    }
}

/// An error with its causes, "outer: inner: ...".
fn chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip() {
        let args = HelperArgs {
            op: HelperOp::Exec,
            state_root: "/run/x".into(),
            id: "c1".into(),
            spec: "/run/x/p.json".into(),
            console_socket: Some("/run/x/t.sock".into()),
            pid_file: "/run/x/pid".into(),
            error_file: "/run/x/err".into(),
            no_pivot: true,
        };
        let parsed = HelperArgs::parse(&args.to_args()).expect("parses");
        assert_eq!(parsed.to_args(), args.to_args());
        let mut none = args.clone();
        none.console_socket = None;
        assert_eq!(
            HelperArgs::parse(&none.to_args())
                .expect("parses")
                .console_socket,
            None
        );
        assert!(HelperArgs::parse(&[]).is_none());
    }

    #[test]
    fn a_failure_message_carries_what_libcontainer_logged() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ErrorLog::open(&dir.path().join("err")).unwrap();
        writeln!(log, "failed to mount /dev/shm: ENOENT").unwrap();
        writeln!(log, "io error").unwrap();
        assert_eq!(
            with_logged("failed to create container: io error".into(), &log.lines()),
            "failed to create container: io error (libcontainer: failed to mount /dev/shm: ENOENT)"
        );
        assert_eq!(with_logged("plain".into(), &[]), "plain");
    }

    #[test]
    fn the_captured_log_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ErrorLog::open(&dir.path().join("err")).unwrap();
        for _ in 0..1000 {
            writeln!(log, "0123456789").unwrap();
        }
        let kept = log.lines().join("\n").len();
        assert!(
            (MAX_LOGGED_BYTES - 20..=MAX_LOGGED_BYTES).contains(&kept),
            "{kept}"
        );
    }
}
