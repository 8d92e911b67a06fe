//! The container manager: the containers of this shim's sandbox and their processes, as
//! containerd's Task service sees them (created, running, stopped, paused), driven through
//! the agent. It owns the state containerd asks about and the life of each process's stdio
//! copies and exit waiter; it does not run containers (the agent does) or translate
//! containerd's messages (the Task service does).
//!
//! Process ids: containers run inside the sandbox (in a VM, out of the host's sight), so every
//! process reports the shim's own pid to containerd, as Kata does with its VMM's.

pub mod stdio;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use stdio::{ProcessRef, StdioPaths};

use crate::agent_link::AgentLink;

/// How long an exit waits for the process's output to reach containerd's FIFOs. Output still
/// held by a process's children that outlive it (a daemon holding stdout) must not hold the
/// exit back for ever.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// A process's state, as containerd's Status has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Created, its program not started.
    Created,
    /// Running.
    Running,
    /// Exited.
    Stopped,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// As containerd reports it: the exit code, or 128 + the signal.
    pub status: u32,
    /// When.
    pub at: SystemTime,
}

/// One process: a container's init (exec id "") or an exec.
pub struct Process {
    /// Its stdio.
    pub stdio: StdioPaths,
    /// The OCI process of an exec, as JSON; `None` for the init process.
    pub process_json: Option<Vec<u8>>,
    /// Its state.
    pub status: Status,
    exit: watch::Sender<Option<Exit>>,
    outputs: Vec<JoinHandle<()>>,
    close_stdin: Option<Arc<Notify>>,
}

impl Process {
    /// A created process.
    pub fn new(stdio: StdioPaths, process_json: Option<Vec<u8>>) -> Self {
        Self {
            stdio,
            process_json,
            status: Status::Created,
            exit: watch::channel(None).0,
            outputs: Vec::new(),
            close_stdin: None,
        }
    }

    /// Its exit, once it exited.
    pub fn exit(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// A receiver that sees the exit.
    pub fn exit_watch(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.subscribe()
    }

    /// The stdin copy's close signal, if the process has stdin.
    pub fn close_stdin(&self) -> Option<Arc<Notify>> {
        self.close_stdin.clone()
    }
}

/// One container.
pub struct Container {
    /// Its bundle.
    pub bundle: PathBuf,
    /// The host directory its rootfs is mounted on, and how many mounts are stacked there;
    /// `None` when containerd gave no mounts.
    pub rootfs: Option<(PathBuf, usize)>,
    /// Whether the rootfs is bound into the pod's share (a VM's containers).
    pub shared_rootfs: bool,
    /// The host mount points of its volumes (host binds) in the pod's share.
    pub volumes: Vec<PathBuf>,
    /// Whether it is paused.
    pub paused: bool,
    /// Its init process.
    pub init: Process,
    /// Its exec processes by id.
    pub execs: HashMap<String, Process>,
}

impl Container {
    /// The process `exec_id` ("" for init).
    pub fn process(&self, exec_id: &str) -> Option<&Process> {
        if exec_id.is_empty() {
            Some(&self.init)
        } else {
            self.execs.get(exec_id)
        }
    }

    /// The process `exec_id`, mutably.
    pub fn process_mut(&mut self, exec_id: &str) -> Option<&mut Process> {
        if exec_id.is_empty() {
            Some(&mut self.init)
        } else {
            self.execs.get_mut(exec_id)
        }
    }
}

/// Called with each process's exit, after its output reached containerd and before the Wait
/// calls are answered (so containerd has the TaskExit event before it can delete the task).
pub type ExitHook =
    Arc<dyn Fn(ProcessRef, Exit) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The containers of a sandbox. Cheap to share: clones refer to the same containers.
#[derive(Clone, Default)]
pub struct Containers {
    inner: Arc<Mutex<HashMap<String, Container>>>,
}

impl Containers {
    /// Locks the map. Never held across an await.
    pub fn lock(&self) -> MutexGuard<'_, HashMap<String, Container>> {
        // Each change under the lock is a single insert, remove or field update, so a map
        // whose holder panicked is still consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the stdio copies of a process that the agent now has (created or started).
    pub fn start_stdio(&self, agent: &AgentLink, process: &ProcessRef) {
        let mut map = self.lock();
        let Some(p) = map
            .get_mut(&process.container_id)
            .and_then(|c| c.process_mut(&process.exec_id))
        else {
            return;
        };
        let copy = stdio::start(agent, process, &p.stdio);
        p.outputs = copy.outputs;
        p.close_stdin = copy.close_stdin;
    }

    /// Marks a process running and waits, in a task on the event loop, for its exit: the
    /// agent's WaitProcess, then the end of its output copies; then calls `on_exit`, records
    /// the exit and wakes the Wait calls.
    pub fn watch_exit(&self, agent: &AgentLink, process: ProcessRef, on_exit: ExitHook) {
        let outputs = {
            let mut map = self.lock();
            let Some(p) = map
                .get_mut(&process.container_id)
                .and_then(|c| c.process_mut(&process.exec_id))
            else {
                return;
            };
            p.status = Status::Running;
            std::mem::take(&mut p.outputs)
        };
        let agent = agent.clone();
        let containers = self.clone();
        tokio::spawn(async move {
            let status = match agent
                .wait_process(&process.container_id, &process.exec_id)
                .await
            {
                Ok(answer) => answer.exit_status,
                Err(err) => {
                    tracing::error!(container = %process.container_id, exec = %process.exec_id, "waiting for the process: {}; reporting exit 255", err.agent_message());
                    255
                }
            };
            // The process is gone: its stdin copy ends too (containerd may never close its
            // end, and the copy holds a connection to the agent).
            let stdin = containers
                .lock()
                .get(&process.container_id)
                .and_then(|c| c.process(&process.exec_id))
                .and_then(Process::close_stdin);
            if let Some(stdin) = stdin {
                stdin.notify_one();
            }
            for output in outputs {
                let abort = output.abort_handle();
                if tokio::time::timeout(OUTPUT_DRAIN, output).await.is_err() {
                    tracing::warn!(container = %process.container_id, exec = %process.exec_id, "output still open {OUTPUT_DRAIN:?} after the exit (a child holds it?); no longer copied");
                    abort.abort();
                }
            }
            let exit = Exit {
                status,
                at: SystemTime::now(),
            };
            let reported = containers
                .lock()
                .get(&process.container_id)
                .and_then(|c| c.process(&process.exec_id))
                .is_none_or(|p| p.status == Status::Stopped);
            if reported {
                // Reported already, by the sandbox's failure ([`Containers::fail_unfinished`]).
                return;
            }
            tracing::info!(container = %process.container_id, exec = %process.exec_id, status, "process exited");
            on_exit(process.clone(), exit).await;
            {
                let mut map = containers.lock();
                if let Some(p) = map
                    .get_mut(&process.container_id)
                    .and_then(|c| c.process_mut(&process.exec_id))
                {
                    p.status = Status::Stopped;
                    p.exit.send_replace(Some(exit));
                }
            }
        });
    }
}

impl Containers {
    /// Marks every process that has not exited (running, or created and never started)
    /// exited with `status`, when the sandbox running them is lost, and returns them for
    /// their exit events. Their waiters report nothing more, and they cannot be started.
    pub fn fail_unfinished(&self, status: u32) -> Vec<(ProcessRef, Exit)> {
        let exit = Exit {
            status,
            at: SystemTime::now(),
        };
        let mut failed = Vec::new();
        for (id, container) in self.lock().iter_mut() {
            let processes = std::iter::once((String::new(), &mut container.init))
                .chain(container.execs.iter_mut().map(|(e, p)| (e.clone(), p)));
            for (exec_id, process) in processes {
                if process.status != Status::Stopped {
                    process.status = Status::Stopped;
                    process.exit.send_replace(Some(exit));
                    failed.push((
                        ProcessRef {
                            container_id: id.clone(),
                            exec_id,
                        },
                        exit,
                    ));
                }
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_the_empty_exec_id() {
        let container = Container {
            bundle: PathBuf::from("/b"),
            rootfs: None,
            shared_rootfs: false,
            volumes: Vec::new(),
            paused: false,
            init: Process::new(StdioPaths::default(), None),
            execs: HashMap::from([(
                "e1".to_owned(),
                Process::new(StdioPaths::default(), Some(b"{}".to_vec())),
            )]),
        };
        assert!(container.process("").unwrap().process_json.is_none());
        assert!(container.process("e1").unwrap().process_json.is_some());
        assert!(container.process("e2").is_none());
    }

    #[test]
    fn a_lost_sandbox_fails_every_unfinished_process_once() {
        let containers = Containers::default();
        let mut running = Process::new(StdioPaths::default(), None);
        running.status = Status::Running;
        let mut exec = Process::new(StdioPaths::default(), Some(b"{}".to_vec()));
        exec.status = Status::Running;
        let mut finished = Process::new(StdioPaths::default(), Some(b"{}".to_vec()));
        finished.status = Status::Stopped;
        let exit_3 = Exit {
            status: 3,
            at: SystemTime::now(),
        };
        finished.exit.send_replace(Some(exit_3));
        containers.lock().insert(
            "c1".to_owned(),
            Container {
                bundle: PathBuf::from("/b"),
                rootfs: None,
                shared_rootfs: false,
                volumes: Vec::new(),
                paused: false,
                init: running,
                execs: HashMap::from([
                    ("e1".to_owned(), exec),
                    (
                        "e2".to_owned(),
                        Process::new(StdioPaths::default(), Some(b"{}".to_vec())),
                    ),
                    ("e3".to_owned(), finished),
                ]),
            },
        );
        let mut failed: Vec<(String, String, u32)> = containers
            .fail_unfinished(255)
            .into_iter()
            .map(|(p, e)| (p.container_id, p.exec_id, e.status))
            .collect();
        failed.sort();
        assert_eq!(
            failed,
            [
                ("c1".to_owned(), String::new(), 255),
                ("c1".to_owned(), "e1".to_owned(), 255),
                ("c1".to_owned(), "e2".to_owned(), 255),
            ]
        );
        let map = containers.lock();
        assert_eq!(map["c1"].init.exit().map(|e| e.status), Some(255));
        assert_eq!(
            map["c1"].execs["e2"].status,
            Status::Stopped,
            "a created process can never start now"
        );
        assert_eq!(
            map["c1"].execs["e3"].exit(),
            Some(exit_3),
            "an exit already reported stays"
        );
        drop(map);
        assert!(containers.fail_unfinished(255).is_empty(), "reported once");
    }

    #[tokio::test]
    async fn an_exit_wakes_every_waiter_and_stays() {
        let process = Process::new(StdioPaths::default(), None);
        let mut early = process.exit_watch();
        let exit = Exit {
            status: 7,
            at: SystemTime::now(),
        };
        process.exit.send_replace(Some(exit));
        let seen = early.wait_for(Option::is_some).await.unwrap().unwrap();
        assert_eq!(seen.status, 7);
        let late = process.exit_watch();
        assert_eq!(late.borrow().unwrap().status, 7);
        assert_eq!(process.exit(), Some(exit));
    }
}
