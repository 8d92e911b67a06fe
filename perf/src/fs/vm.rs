//! One QEMU TCG guest per vhost-user-fs backend, driven over its serial console: hull-bench
//! writes a command line to QEMU's stdin, the guest program (perf/guest/fs_bench.rs) answers
//! with one `HULLFS-BENCH` line on its stdout. The guest is the same microvm with a
//! `vhost-user-fs-device` as hull-fs's own QEMU test (tests/src/qemu.rs), with stdin kept
//! open for the commands, so it is started here rather than through that harness.
//!
//! QEMU is killed and reaped when the handle drops, on every path out of a run.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Prefix of every line the guest program answers with.
const PREFIX: &str = "HULLFS-BENCH ";
/// Console lines kept for error messages.
const KEPT_LINES: usize = 60;

/// How the guest is started.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// qemu-system-x86_64.
    pub qemu: PathBuf,
    /// Guest kernel (ELF vmlinux).
    pub kernel: PathBuf,
    /// Initrd whose /init is the guest program.
    pub initrd: PathBuf,
    /// The backend's vhost-user socket.
    pub socket: PathBuf,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// QEMU accelerator (`tcg` here; `kvm` where full guests run on it).
    pub accel: String,
}

/// A running guest.
pub struct Vm {
    name: String,
    child: Child,
    stdin: ChildStdin,
    answers: Receiver<String>,
    console: Arc<Mutex<Vec<String>>>,
}

impl Vm {
    /// Boots the guest for backend `name` and waits (at most `bound`) until it has mounted
    /// the share and is ready for commands. Fails with [`Error::Unexpected`] when the
    /// guest's clock is not the TSC: under TCG the kernel's TSC calibration sometimes fails on
    /// a loaded host, and the fallback (jiffies, 4 ms steps) is too coarse for latencies.
    pub fn boot(name: &str, config: &VmConfig, bound: Duration) -> Result<Self> {
        let memory = format!(
            "memory-backend-memfd,id=mem,size={}M,share=on",
            config.memory_mib
        );
        let cpu = if config.accel == "kvm" { "host" } else { "max" };
        let mut command = Command::new(&config.qemu);
        command
            .args([
                "-M",
                "microvm,acpi=off,memory-backend=mem",
                "-object",
                &memory,
            ])
            .arg("-chardev")
            .arg(format!("socket,id=fs,path={}", config.socket.display()))
            .args(["-device", "vhost-user-fs-device,chardev=fs,tag=hullfs"])
            .args(["-accel", &config.accel, "-cpu", cpu])
            .args(["-m", &config.memory_mib.to_string(), "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-no-reboot", "-serial", "stdio"])
            .arg("-kernel")
            .arg(&config.kernel)
            .arg("-initrd")
            .arg(&config.initrd)
            .arg("-append")
            .arg(cmdline())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|source| Error::Io {
            what: format!("starting {} for {name}", config.qemu.display()),
            source,
        })?;
        let console = Arc::new(Mutex::new(Vec::new()));
        let (sender, answers) = mpsc::channel();
        let streams = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let (Some(stdin), Some(stdout), Some(stderr)) = streams else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Unexpected(format!(
                "QEMU for {name} was started without its pipes"
            )));
        };
        for (stream, prefix, sender) in [
            (
                Box::new(stdout) as Box<dyn std::io::Read + Send>,
                "",
                Some(sender),
            ),
            (Box::new(stderr), "qemu: ", None),
        ] {
            let console = Arc::clone(&console);
            std::thread::spawn(move || read_console(stream, prefix, &console, sender));
        }
        let mut vm = Self {
            name: name.to_owned(),
            child,
            stdin,
            answers,
            console,
        };
        let ready = vm.answer(bound)?;
        match ready.strip_prefix("ready ") {
            // tsc-early is the same counter before the kernel refines its frequency.
            Some("tsc" | "tsc-early") => Ok(vm),
            Some(clock) => Err(Error::Unexpected(format!(
                "{name}'s guest keeps time with clocksource {clock}, not tsc"
            ))),
            None => Err(vm.failure(&format!("the guest said '{ready}' instead of ready"))),
        }
    }

    /// Sends one command and waits (at most `bound`) for its answer, without the prefix.
    pub fn command(&mut self, line: &str, bound: Duration) -> Result<String> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .map_err(|source| Error::Io {
                what: format!("writing '{line}' to the console of {}'s guest", self.name),
                source,
            })?;
        let answer = self.answer(bound)?;
        match answer.strip_prefix("error ") {
            Some(err) => Err(self.failure(&format!("'{line}' failed in the guest: {err}"))),
            None => Ok(answer),
        }
    }

    /// Asks the guest to power off and waits for QEMU to exit (killing it after `bound`).
    pub fn quit(mut self, bound: Duration) {
        let _ = writeln!(self.stdin, "quit").and_then(|()| self.stdin.flush());
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answer(&mut self, bound: Duration) -> Result<String> {
        match self.answers.recv_timeout(bound) {
            Ok(answer) => Ok(answer),
            Err(RecvTimeoutError::Timeout) => {
                Err(self.failure(&format!("no answer within {bound:?}")))
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self
                    .child
                    .wait()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string());
                Err(self.failure(&format!("QEMU exited ({status})")))
            }
        }
    }

    fn failure(&self, what: &str) -> Error {
        let console = self
            .console
            .lock()
            .map(|lines| lines.join("\n"))
            .unwrap_or_default();
        Error::Backend {
            backend: self.name.clone(),
            what: format!("{what}; the guest's console ends with:\n{console}"),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The guest kernel's command line. The TSC as clock: without it a microvm guest counts in
/// jiffies (4 ms), too coarse for one operation's latency; under TCG the guest's TSC runs at
/// the host's rate, which is given to the guest (`tsc_early_khz`) because its own calibration
/// fails on a loaded host.
fn cmdline() -> String {
    let mut line =
        "console=ttyS0 reboot=t panic=-1 no_timer_check quiet loglevel=1 clocksource=tsc tsc=reliable"
            .to_owned();
    if let Some(khz) = host_tsc_khz() {
        line.push_str(&format!(" tsc_early_khz={khz}"));
    }
    line
}

/// The host's TSC rate in kHz, from the first `cpu MHz` of /proc/cpuinfo (on a host with a
/// constant TSC, its rate).
fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    cpu_mhz_khz(&cpuinfo)
}

fn cpu_mhz_khz(cpuinfo: &str) -> Option<u64> {
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    (mhz.is_finite() && mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

/// Keeps the last lines of `stream` in `console` and sends each guest answer to `answers`.
fn read_console(
    stream: Box<dyn std::io::Read + Send>,
    prefix: &str,
    console: &Mutex<Vec<String>>,
    answers: Option<mpsc::Sender<String>>,
) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    while let Ok(n) = reader.read_until(b'\n', &mut line) {
        if n == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_owned();
        line.clear();
        if let (Some(answers), Some(answer)) = (&answers, answer_of(&text)) {
            let _ = answers.send(answer.to_owned());
        }
        if let Ok(mut lines) = console.lock() {
            lines.push(format!("{prefix}{text}"));
            if lines.len() > KEPT_LINES {
                lines.remove(0);
            }
        }
    }
}

/// The answer a console line carries, if it is one (the terminal echoes commands back and
/// the kernel may print; neither starts with the prefix).
fn answer_of(line: &str) -> Option<&str> {
    line.trim_start().strip_prefix(PREFIX).map(str::trim)
}

/// The kernel built by `make image`: $HULL_KERNEL, else $HULL_CACHE_DIR/vmlinux, else
/// ~/.cache/hull/vmlinux.
pub fn kernel() -> Result<PathBuf> {
    hull_tests::artifacts::vmlinux().map_err(|missing| Error::MissingProgram {
        name: "the guest kernel".into(),
        fix: missing.to_string(),
    })
}

/// Compiles the guest program and packs it as the /init of an initrd in `dir`.
pub fn initrd(dir: &Path) -> Result<PathBuf> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/fs_bench.rs");
    match hull_tests::guest_program::build_initrd(&source, dir) {
        Ok(Ok(initrd)) => Ok(initrd),
        Ok(Err(err)) => Err(Error::Unexpected(format!("building the guest: {err}"))),
        Err(missing) => Err(Error::MissingProgram {
            name: "what the guest build needs".into(),
            fix: missing.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_rate_comes_from_cpu_mhz() {
        let cpuinfo = "processor\t: 0\ncpu MHz\t\t: 2445.432\ncache size\t: 512 KB\n";
        assert_eq!(cpu_mhz_khz(cpuinfo), Some(2_445_432));
        assert_eq!(cpu_mhz_khz("processor\t: 0\n"), None);
        assert_eq!(cpu_mhz_khz("cpu MHz\t: nan\n"), None);
    }

    #[test]
    fn answers_are_prefixed_lines_only() {
        assert_eq!(answer_of("HULLFS-BENCH ready\r"), Some("ready"));
        assert_eq!(
            answer_of("  HULLFS-BENCH result 1 2 3 4 5"),
            Some("result 1 2 3 4 5")
        );
        assert_eq!(answer_of("run seqread 100 0"), None, "an echoed command");
        assert_eq!(answer_of("[    0.1] virtiofs"), None);
    }
}
