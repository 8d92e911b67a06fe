//! `hull-bench rpc`: the round-trip latency of a call to the agent, as the shim makes it.
//!
//! Contestants, interleaved in the same run:
//! - subject: `hull-agent --listen unix:PATH` answering Check through the generated ttrpc
//!   client of `agent/protocol` (the client the shim uses), one call at a time;
//! - peer: a ttrpc server in this process answering Check with nothing but the answer (what
//!   ttrpc itself costs, so the agent's own share is the difference);
//! - limit: a bare unix-socket ping-pong moving the same bytes each way as the ttrpc frames
//!   of a Check call and its answer, a thread on the other end.
//!
//! Workloads: one call at a time (latency) and 16 calls in flight (throughput). The guest
//! case (over vsock, through hull-vsock) is not measured here yet.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hull_agent_protocol::agent::{CheckRequest, CheckResponse, ServingStatus};
use hull_agent_protocol::protobuf::{self, MessageField};
use hull_agent_protocol::ttrpc::r#async::{Client, Server, TtrpcContext};
use hull_agent_protocol::ttrpc::{self, context};
use hull_agent_protocol::{create_agent_service, AgentService, AgentServiceClient, SERVICE_NAME};
use serde_json::json;

use crate::child::{cpu_time, find_program, RunDir, Server as ServerProcess};
use crate::measure::{self, Contestant, Plan, Role, Trial, Workload};
use crate::progress::Progress;
use crate::results::{Machine, Run};
use crate::{Error, Result};

/// Options of `hull-bench rpc`.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long and how often.
    pub plan: Plan,
    /// A smoke run.
    pub quick: bool,
    /// The hull-agent binary; found beside hull-bench or on PATH when `None`.
    pub agent: Option<PathBuf>,
}

/// A workload: Check calls with a number of them in flight at any time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckCalls {
    /// Calls in flight (1: each call waits for the previous answer).
    pub in_flight: usize,
}

impl Workload for CheckCalls {
    fn name(&self) -> String {
        if self.in_flight == 1 {
            "Check round trip".into()
        } else {
            format!("Check, {} in flight", self.in_flight)
        }
    }
}

/// The workloads: latency (one call at a time) and throughput (16 in flight).
pub const WORKLOADS: [CheckCalls; 2] = [CheckCalls { in_flight: 1 }, CheckCalls { in_flight: 16 }];

/// Per-call timeout the client sends; it is part of the request frame's size.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn ctx() -> context::Context {
    context::with_timeout(i64::try_from(CALL_TIMEOUT.as_nanos()).unwrap_or(i64::MAX))
}

/// Bytes of the ttrpc frames of a Check call and of its answer (header included), as the
/// client and server write them.
pub fn check_frame_sizes() -> Result<(usize, usize)> {
    let encode = |message: &dyn protobuf::MessageDyn| {
        message
            .write_to_bytes_dyn()
            .map_err(|source| Error::Protobuf {
                what: "encoding a Check frame to size the ping-pong",
                source,
            })
    };
    let mut request = ttrpc::Request::new();
    request.service = SERVICE_NAME.into();
    request.method = "Check".into();
    request.timeout_nano = ctx().timeout_nano;
    request.payload = encode(&CheckRequest::new())?;
    let mut answer = CheckResponse::new();
    answer.status = ServingStatus::SERVING_STATUS_SERVING.into();
    let mut response = ttrpc::Response::new();
    response.status = MessageField::some(ttrpc::Status::new());
    response.payload = encode(&answer)?;
    let header = ttrpc::proto::MESSAGE_HEADER_LENGTH;
    Ok((
        header + encode(&request)?.len(),
        header + encode(&response)?.len(),
    ))
}

/// Runs the benchmark and returns its results.
pub fn run(options: &Options) -> Result<Run> {
    // Started now: the record says when the measurement began.
    let mut run = Run::new("rpc", options.quick, options.plan, Machine::probe());
    let agent = find_program(
        "hull-agent",
        options.agent.as_deref(),
        "build it with 'cargo build --release -p hull-agent' or pass --agent PATH",
    )?;
    let dir = RunDir::new(&std::env::temp_dir(), "rpc")?;
    let (request_bytes, response_bytes) = check_frame_sizes()?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            what: "starting the client's tokio runtime".into(),
            source,
        })?;
    let agent_socket = dir.path().join("agent.sock");
    let agent_process = ServerProcess::start(
        "hull-agent",
        &agent,
        &[
            "--listen".to_owned(),
            format!("unix:{}", agent_socket.display()),
            "--log-level=warn".to_owned(),
        ],
        &agent_socket,
        &dir.path().join("hull-agent.log"),
    )?;
    let echo = InProcessEcho::start(&dir.path().join("echo.sock"))?;

    let mut contestants: Vec<Box<dyn Contestant<CheckCalls> + '_>> = vec![
        Box::new(TtrpcCaller::connect(
            &runtime,
            "hull-agent (ttrpc, unix socket)",
            Role::Subject,
            &agent_socket,
            Some(agent_process.pid()),
        )?),
        Box::new(TtrpcCaller::connect(
            &runtime,
            "ttrpc echo in process",
            Role::Peer,
            &echo.socket,
            None,
        )?),
        Box::new(PingPong::start(request_bytes, response_bytes)?),
    ];
    let trials = (options.plan.rounds * contestants.len() * WORKLOADS.len()) as u64;
    let progress = Progress::new("rpc", trials);
    let outcome = measure::run(&options.plan, &WORKLOADS, &mut contestants, &progress)?;
    drop(progress);
    drop(contestants);
    drop(agent_process);
    drop(echo);

    run.machine.finish();
    run.params = json!({
        "agent": agent.display().to_string(),
        "request_frame_bytes": request_bytes,
        "response_frame_bytes": response_bytes,
        "calls_in_flight": WORKLOADS.iter().map(|w| w.in_flight).collect::<Vec<_>>(),
    });
    run.notes = vec![
        "Latency is from the client's call to its answer; 'Check round trip' has one call in \
         flight, the other workload keeps 16 in flight (16 tasks on the client's runtime; the \
         ping-pong writes 16 requests at once and reads the 16 answers)."
            .into(),
        format!(
            "The ping-pong moves {request_bytes} bytes one way and {response_bytes} back: \
             the ttrpc frames of Check and its answer."
        ),
        "The agent and the in-process echo are called through the same generated client on \
         a tokio current-thread runtime; the ping-pong uses blocking sockets."
            .into(),
        "CPU µs/op: user + system time of the hull-agent process per call (clock ticks of \
         10 ms); the echo and the ping-pong run in hull-bench's own process and have none."
            .into(),
    ];
    run.record(outcome);
    Ok(run)
}

/// Calls Check through the generated ttrpc client.
struct TtrpcCaller<'r> {
    name: String,
    role: Role,
    runtime: &'r tokio::runtime::Runtime,
    client: AgentServiceClient,
    /// The serving process, whose CPU time per call is measured; `None` when it is this one.
    server_pid: Option<u32>,
}

impl<'r> TtrpcCaller<'r> {
    fn connect(
        runtime: &'r tokio::runtime::Runtime,
        name: &str,
        role: Role,
        socket: &Path,
        server_pid: Option<u32>,
    ) -> Result<Self> {
        let address = format!("unix://{}", socket.display());
        let client = runtime
            .block_on(Client::connect(&address))
            .map_err(|source| Error::Ttrpc {
                what: format!("connecting to {address}"),
                source,
            })?;
        Ok(Self {
            name: name.to_owned(),
            role,
            runtime,
            client: AgentServiceClient::new(client),
            server_pid,
        })
    }
}

impl Contestant<CheckCalls> for TtrpcCaller<'_> {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn role(&self) -> Role {
        self.role
    }

    fn trial(&mut self, workload: &CheckCalls, budget: Duration) -> Result<Trial> {
        let cpu_before = self.server_pid.and_then(cpu_time);
        let start = Instant::now();
        let mut latencies = self.runtime.block_on(async {
            // One task per call in flight, all on this thread, as the shim's runtime would.
            let mut callers = tokio::task::JoinSet::new();
            for _ in 0..workload.in_flight.max(1) {
                let client = self.client.clone();
                callers.spawn(async move { call_until(&client, start + budget).await });
            }
            let mut latencies = Vec::new();
            while let Some(joined) = callers.join_next().await {
                let mut more = joined
                    .map_err(|err| Error::Unexpected(format!("a calling task failed: {err}")))??;
                latencies.append(&mut more);
            }
            Ok::<_, Error>(latencies)
        })?;
        let ops = latencies.len() as u64;
        let trial = Trial::from_latencies(ops, 0, start.elapsed(), &mut latencies);
        let cpu_after = self.server_pid.and_then(cpu_time);
        Ok(match (cpu_before, cpu_after) {
            (Some(before), Some(after)) => trial.with_cpu(after.saturating_sub(before)),
            _ => trial,
        })
    }
}

/// Calls Check one after the other until `deadline`; returns each call's latency in ns.
async fn call_until(client: &AgentServiceClient, deadline: Instant) -> Result<Vec<u64>> {
    let request = CheckRequest::new();
    let mut latencies = Vec::new();
    while Instant::now() < deadline {
        let t0 = Instant::now();
        let answer = client
            .check(ctx(), &request)
            .await
            .map_err(|source| Error::Ttrpc {
                what: "calling Check".into(),
                source,
            })?;
        let elapsed = t0.elapsed();
        if answer.status.enum_value() != Ok(ServingStatus::SERVING_STATUS_SERVING) {
            return Err(Error::Unexpected(format!(
                "Check answered {:?}, not SERVING",
                answer.status
            )));
        }
        latencies.push(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }
    Ok(latencies)
}

/// A ttrpc server in this process whose Check answers SERVING and does nothing else, on its
/// own thread and runtime (as the agent is its own process).
struct InProcessEcho {
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Echo;

#[async_trait::async_trait]
impl AgentService for Echo {
    async fn check(&self, _: &TtrpcContext, _: CheckRequest) -> ttrpc::Result<CheckResponse> {
        let mut answer = CheckResponse::new();
        answer.status = ServingStatus::SERVING_STATUS_SERVING.into();
        Ok(answer)
    }
}

impl InProcessEcho {
    fn start(socket: &Path) -> Result<Self> {
        let address = format!("unix://{}", socket.display());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel::<Result<()>>();
        let thread = std::thread::Builder::new()
            .name("ttrpc-echo".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(source) => {
                        let _ = ready_tx.send(Err(Error::Io {
                            what: "starting the echo server's runtime".into(),
                            source,
                        }));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let server = Server::new()
                        .bind(&address)
                        .map(|s| s.register_service(create_agent_service(Arc::new(Echo))));
                    let mut server = match server {
                        Ok(server) => server,
                        Err(source) => {
                            let _ = ready_tx.send(Err(Error::Ttrpc {
                                what: format!("binding the echo server to {address}"),
                                source,
                            }));
                            return;
                        }
                    };
                    if let Err(source) = server.start().await {
                        let _ = ready_tx.send(Err(Error::Ttrpc {
                            what: "starting the echo server".into(),
                            source,
                        }));
                        return;
                    }
                    let _ = ready_tx.send(Ok(()));
                    let _ = stopped.await;
                    let _ = server.shutdown().await;
                });
            })
            .map_err(|source| Error::Io {
                what: "starting the echo server's thread".into(),
                source,
            })?;
        let mut echo = Self {
            socket: socket.to_owned(),
            stop: Some(stop),
            thread: Some(thread),
        };
        match ready.recv() {
            Ok(Ok(())) => Ok(echo),
            Ok(Err(err)) => Err(err),
            Err(_) => {
                echo.stop.take();
                Err(Error::Unexpected("the echo server's thread ended".into()))
            }
        }
    }
}

impl Drop for InProcessEcho {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Blocking ping-pong over a unix stream socket pair with a thread answering.
struct PingPong {
    client: UnixStream,
    request: Vec<u8>,
    response: Vec<u8>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PingPong {
    fn start(request_bytes: usize, response_bytes: usize) -> Result<Self> {
        let (client, mut server) = UnixStream::pair().map_err(|source| Error::Io {
            what: "creating the ping-pong socket pair".into(),
            source,
        })?;
        let thread = std::thread::Builder::new()
            .name("ping-pong".into())
            .spawn(move || {
                let mut request = vec![0u8; request_bytes];
                let response = vec![0x5au8; response_bytes];
                // Ends when the client closes its end (read fails or hits EOF).
                while server.read_exact(&mut request).is_ok() {
                    if server.write_all(&response).is_err() {
                        break;
                    }
                }
            })
            .map_err(|source| Error::Io {
                what: "starting the ping-pong thread".into(),
                source,
            })?;
        Ok(Self {
            client,
            request: vec![0xa5; request_bytes],
            response: vec![0; response_bytes],
            thread: Some(thread),
        })
    }
}

impl Contestant<CheckCalls> for PingPong {
    fn name(&self) -> String {
        "bare unix-socket ping-pong".into()
    }

    fn role(&self) -> Role {
        Role::Limit
    }

    /// With n in flight: n requests written at once, then the n answers read one by one,
    /// each timed from the write.
    fn trial(&mut self, workload: &CheckCalls, budget: Duration) -> Result<Trial> {
        let io_error = |source| Error::Io {
            what: "ping-pong on the socket pair".into(),
            source,
        };
        let batch = workload.in_flight.max(1);
        let requests = self.request.repeat(batch);
        let mut latencies = Vec::new();
        let start = Instant::now();
        while start.elapsed() < budget {
            let t0 = Instant::now();
            self.client.write_all(&requests).map_err(io_error)?;
            for _ in 0..batch {
                self.client
                    .read_exact(&mut self.response)
                    .map_err(io_error)?;
                latencies.push(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
            }
        }
        let ops = latencies.len() as u64;
        Ok(Trial::from_latencies(
            ops,
            0,
            start.elapsed(),
            &mut latencies,
        ))
    }
}

impl Drop for PingPong {
    fn drop(&mut self) {
        let _ = self.client.shutdown(std::net::Shutdown::Both);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_frames_are_sized_from_the_real_messages() {
        let (request, response) = check_frame_sizes().expect("sizes");
        // Header plus at least the service and method names.
        assert!(request > ttrpc::proto::MESSAGE_HEADER_LENGTH + SERVICE_NAME.len() + 5);
        assert!(response > ttrpc::proto::MESSAGE_HEADER_LENGTH);
    }

    #[test]
    fn ping_pong_moves_the_sizes_it_was_given_and_its_thread_ends() {
        let mut pp = PingPong::start(100, 20).expect("start");
        let trial = pp
            .trial(&CheckCalls { in_flight: 1 }, Duration::from_millis(20))
            .expect("trial");
        assert!(trial.ops > 0);
        let trial = pp
            .trial(&CheckCalls { in_flight: 4 }, Duration::from_millis(20))
            .expect("trial");
        assert_eq!(trial.ops % 4, 0, "whole batches");
        assert!(trial.p50_us.is_some() && trial.p99_us.is_some());
        drop(pp); // joins the thread: the test would hang if it did not end
    }
}
