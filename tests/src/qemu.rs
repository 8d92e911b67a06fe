//! A guest under QEMU for tests: started with the hull image, its serial console captured,
//! and killed when the handle drops, so a failing test leaves no QEMU behind.
//!
//! Uses TCG where the host has no hardware virtualization (see ARCHITECTURE.md, "The machine
//! we test on"); the shim's qemu backend, not this module, is what users run.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::prereq::{find_program, hardware_virtualization, Missing};

/// How a test guest is started.
#[derive(Debug, Clone)]
pub struct GuestConfig {
    /// Kernel: ELF vmlinux (PVH) or bzImage.
    pub kernel: PathBuf,
    /// Initrd.
    pub initrd: PathBuf,
    /// Kernel command line, after `console=ttyS0 reboot=t panic=-1 no_timer_check` (the
    /// last: a TCG guest on a loaded host fails the IO-APIC timer check and panics).
    pub extra_cmdline: String,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// vhost-user devices; with any, guest RAM is a shared memfd the backends can map.
    pub devices: Vec<VhostUserDevice>,
}

/// A vhost-user device of a test guest.
#[derive(Debug, Clone)]
pub struct VhostUserDevice {
    /// The backend's vhost-user socket.
    pub socket: PathBuf,
    /// QEMU's device model and its options after the chardev, e.g.
    /// `vhost-user-fs-device,tag=hullfs` (the virtio-mmio models suit microvm). A
    /// `virtio-net-device` or `virtio-net-pci` model gets its backend through a
    /// `-netdev vhost-user` on the chardev instead, as QEMU wants for vhost-user-net (a
    /// `queues=N` option goes to that netdev).
    pub model: String,
}

/// Errors of a test guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// QEMU could not be started.
    #[error("starting {program}")]
    Spawn {
        /// The QEMU binary.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The guest did not stop within the bound the test gave.
    #[error("guest still running after {timeout:?}; console so far:\n{console}")]
    Timeout {
        /// The bound.
        timeout: Duration,
        /// Console output so far.
        console: String,
    },
    /// Waiting for QEMU failed.
    #[error("waiting for QEMU")]
    Wait(#[source] std::io::Error),
}

/// The console output and exit of a guest that stopped.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Everything the guest wrote to its serial console, then QEMU's own stderr.
    pub console: String,
    /// QEMU's exit status.
    pub status: std::process::ExitStatus,
}

/// A running guest. Dropping it kills QEMU and reaps it.
pub struct Guest {
    child: Child,
    console: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

/// The QEMU accelerator to use: KVM where full guests run on it, else TCG.
pub fn accelerator() -> &'static str {
    if hardware_virtualization().is_ok() {
        "kvm"
    } else {
        "tcg"
    }
}

impl Guest {
    /// Boots a microvm guest with the serial console on QEMU's stdout.
    pub fn start(config: &GuestConfig) -> Result<Result<Self, Error>, Missing> {
        let qemu = find_program("qemu-system-x86_64", "qemu-system-x86")?;
        Ok(Self::spawn(&qemu, config))
    }

    fn spawn(qemu: &Path, config: &GuestConfig) -> Result<Self, Error> {
        let accel = accelerator();
        let cpu = if accel == "kvm" { "host" } else { "max" };
        let cmdline = format!(
            "console=ttyS0 reboot=t panic=-1 no_timer_check {}",
            config.extra_cmdline
        );
        let mut command = Command::new(qemu);
        if config.devices.is_empty() {
            command.args(["-M", "microvm,acpi=off"]);
        } else {
            // vhost-user backends map guest RAM: it must be a shared memfd.
            let memory = format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                config.memory_mib
            );
            command.args([
                "-M",
                "microvm,acpi=off,memory-backend=mem",
                "-object",
                &memory,
            ]);
        }
        for (index, device) in config.devices.iter().enumerate() {
            let (model, options) = device.model.split_once(',').unwrap_or((&device.model, ""));
            let options = if options.is_empty() {
                String::new()
            } else {
                format!(",{options}")
            };
            command.arg("-chardev").arg(format!(
                "socket,id=dev{index},path={}",
                device.socket.display()
            ));
            if model.starts_with("virtio-net-") {
                // `queues=N` belongs to the netdev; the rest to the device.
                let (queues, options): (Vec<&str>, Vec<&str>) = options
                    .split(',')
                    .filter(|o| !o.is_empty())
                    .partition(|o| o.starts_with("queues="));
                let netdev_options: String = queues.iter().map(|q| format!(",{q}")).collect();
                let device_options: String = options.iter().map(|o| format!(",{o}")).collect();
                command.arg("-netdev").arg(format!(
                    "vhost-user,id=net{index},chardev=dev{index}{netdev_options}"
                ));
                command
                    .arg("-device")
                    .arg(format!("{model},netdev=net{index}{device_options}"));
                continue;
            }
            command
                .arg("-device")
                .arg(format!("{model},chardev=dev{index}{options}"));
        }
        command
            .args(["-accel", accel, "-cpu", cpu])
            .args([
                "-m",
                &config.memory_mib.to_string(),
                "-smp",
                &config.vcpus.to_string(),
            ])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .args(["-serial", "stdio"])
            .arg("-kernel")
            .arg(&config.kernel)
            .arg("-initrd")
            .arg(&config.initrd)
            .args(["-append", &cmdline])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let line: Vec<String> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let mut child = command.spawn().map_err(|source| Error::Spawn {
            program: qemu.to_owned(),
            source,
        })?;
        // The command line heads the console capture, so a failing test shows what ran.
        let console = Arc::new(Mutex::new(format!(
            "qemu: {} {}\n",
            qemu.display(),
            line.join(" ")
        )));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(collect(out, Arc::clone(&console), ""));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(collect(err, Arc::clone(&console), "qemu: "));
        }
        Ok(Self {
            child,
            console,
            readers,
        })
    }

    /// The console output so far.
    pub fn console(&self) -> String {
        self.console.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Waits for the guest to stop by itself, at most `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Result<Finished, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().map_err(Error::Wait)? {
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return Ok(Finished {
                    console: self.console(),
                    status,
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    timeout,
                    console: self.console(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn collect(
    stream: impl Read + Send + 'static,
    sink: Arc<Mutex<String>>,
    prefix: &'static str,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        while let Ok(n) = reader.read_until(b'\n', &mut line) {
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&line);
            if let Ok(mut sink) = sink.lock() {
                sink.push_str(prefix);
                sink.push_str(text.trim_end_matches(['\r', '\n']));
                sink.push('\n');
            }
            line.clear();
        }
    })
}
