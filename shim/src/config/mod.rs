//! hull's configuration: the settings ([`Config`]), how they are found and merged from
//! `configuration.toml` and its `config.d/` drop-ins ([`load`]), and which of them a pod may
//! override with `io.hull.config.*` annotations ([`annotations`]).
//!
//! Every file is parsed strictly: an unknown key or a value of the wrong type is an error
//! naming the file, the line and the key, never a silently ignored setting.

pub mod annotations;
pub mod load;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use load::{load, ConfigSearch, LoadedConfig};

/// Errors of configuration loading and validation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration file that was named explicitly does not exist.
    #[error("configuration file {path} (from {origin}) does not exist")]
    NotFound {
        /// The file.
        path: PathBuf,
        /// Who named it (shim options, HULL_CONF_FILE).
        origin: &'static str,
    },
    /// A file could not be read.
    #[error("reading configuration {path}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid TOML, or has an unknown key or a value of the wrong type.
    #[error("invalid configuration in {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's account, with line, column and key.
        message: String,
    },
    /// A value is of the right type but out of range.
    #[error("invalid configuration: {key} = {value}: {reason} (set in {origin})")]
    Invalid {
        /// The key, dotted (`vm.vcpus`).
        key: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        reason: &'static str,
        /// Where the merged configuration came from.
        origin: String,
    },
    /// A pod annotation tried to override a setting it may not, or gave a bad value.
    #[error("annotation {annotation}: {reason}")]
    Annotation {
        /// The annotation key.
        annotation: String,
        /// Why it was refused.
        reason: String,
    },
}

/// A `Result` with this module's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Which hypervisor runs the pod's VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HypervisorKind {
    /// `builtin` where hardware virtualization works, else `qemu`.
    #[default]
    Auto,
    /// hull-vmm, this project's KVM VMM, one child process per pod with vhost-user devices
    /// behind virtio-mmio. Linux guests need hardware virtualization (vmx/svm); pod
    /// interfaces need `network.backend = "hull-net"` (it serves no taps itself); no pause.
    Builtin,
    /// A child qemu-system-x86_64 (KVM, or TCG where there is no hardware virtualization).
    Qemu,
    /// No VM: the agent runs on the host in fresh namespaces. Development and measurement
    /// only; provides no isolation and is refused unless `runtime.enable_none_hypervisor`.
    None,
}

/// The QEMU machine type for the `qemu` backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QemuMachine {
    /// virtio-mmio devices, no PCI, no firmware: the fastest start.
    #[default]
    Microvm,
    /// PCI (virtio-pci devices), ACPI.
    Q35,
}

/// Where the `builtin` hypervisor's VMM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BuiltinProcess {
    /// In the shim's own process (as Kata's Dragonball): one vCPU thread per vCPU beside the
    /// shim's event-loop thread, which also drives the VMM's device loop. The VMM shares the
    /// shim's privileges: only the vCPU threads are confined by seccomp.
    #[default]
    Shim,
    /// A child `hull-vmm` per pod, confined apart: its main thread under its own seccomp
    /// filter and with no capabilities, at the cost of one more process and thread.
    HullVmm,
}

/// Who serves the virtio-net device of each pod interface, on the endpoint's tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkBackend {
    /// QEMU's own virtio-net on its `tap` netdev (the tap descriptors inherited by QEMU).
    #[default]
    Qemu,
    /// One `hull-net` process per interface (vhost-user-net on the tap's descriptors), its
    /// data plane outside QEMU.
    HullNet,
}

/// hull's configuration, after defaults, files, drop-ins and annotations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The hypervisor backend.
    pub hypervisor: HypervisorKind,
    /// The guest VM.
    pub vm: VmConfig,
    /// The `qemu` backend.
    pub qemu: QemuConfig,
    /// The link to the guest agent.
    pub agent: AgentConfig,
    /// The shim itself.
    pub runtime: RuntimeConfig,
    /// Pod networking.
    pub network: NetworkConfig,
}

/// How a pod's network reaches its VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Who serves the guest NIC of each pod interface.
    pub backend: NetworkBackend,
}

/// The guest VM's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmConfig {
    /// Guest kernel (ELF vmlinux or bzImage); empty means the one `make image` built.
    pub kernel: PathBuf,
    /// Guest initrd; empty means the one `make image` built.
    pub initrd: PathBuf,
    /// Appended to hull's own kernel parameters.
    pub kernel_params: String,
    /// vCPUs at boot, 1 to 255.
    pub vcpus: u32,
    /// Guest memory in MiB, at least 64.
    pub memory_mib: u32,
    /// A pod's first container whose rootfs is a block device (one ext4 mount of a device,
    /// as the devmapper snapshotter gives) gets it as a virtio-blk disk served by hull-blk
    /// and mounted in the guest, never on the host. false: mounted on the host and shared
    /// through hull-fs like any snapshot.
    pub block_rootfs: bool,
    /// With `hypervisor = "builtin"`: the VMM in the shim's process (`shim`) or in a child
    /// `hull-vmm` process (`hull-vmm`).
    pub builtin_process: BuiltinProcess,
}

/// Settings of the `qemu` backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QemuConfig {
    /// The QEMU binary: a name looked up on PATH, or an absolute path.
    pub path: PathBuf,
    /// Machine type.
    pub machine: QemuMachine,
}

/// The shim's link to the guest agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// How long the VM may take from start to the agent's first answer, in seconds. TCG boots
    /// are slow; with KVM a few seconds suffice.
    pub start_timeout_secs: u32,
    /// Seconds between health checks of a running sandbox's agent; 0 turns them off.
    pub health_check_interval_secs: u32,
}

/// Settings of the shim process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub log_level: String,
    /// How the shim writes its log lines to containerd: `text` (containerd's own
    /// `time=… level=… msg=…`) or `json` (one object per line). Read when the shim starts,
    /// from the configuration the default search finds (`HULL_LOG_FORMAT` overrides it): a
    /// pod's own configuration path comes too late for it.
    pub log_format: crate::logging::LogFormat,
    /// A file the shim appends each start-up phase mark to (`crate::phase`), one line with
    /// its wall-clock time; empty: marks go to the log only.
    pub phase_file: PathBuf,
    /// Allows `hypervisor = "none"` (no isolation).
    pub enable_none_hypervisor: bool,
    /// Keys (`vm.vcpus`) that pods may override with `io.hull.config.<key>` annotations;
    /// a subset of [`annotations::OVERRIDABLE`].
    pub allowed_annotations: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            hypervisor: HypervisorKind::Auto,
            vm: VmConfig::default(),
            qemu: QemuConfig::default(),
            agent: AgentConfig::default(),
            runtime: RuntimeConfig::default(),
            network: NetworkConfig::default(),
        }
    }
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            kernel: PathBuf::new(),
            initrd: PathBuf::new(),
            kernel_params: String::new(),
            vcpus: 1,
            memory_mib: 256,
            block_rootfs: true,
            builtin_process: BuiltinProcess::Shim,
        }
    }
}

impl Default for QemuConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("qemu-system-x86_64"),
            machine: QemuMachine::Microvm,
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            start_timeout_secs: 120,
            health_check_interval_secs: 10,
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            log_level: "info".to_owned(),
            log_format: crate::logging::LogFormat::Text,
            phase_file: PathBuf::new(),
            enable_none_hypervisor: false,
            allowed_annotations: vec!["vm.vcpus".to_owned(), "vm.memory_mib".to_owned()],
        }
    }
}

/// Most vCPUs KVM gives one VM on x86_64 with the default capabilities.
pub const MAX_VCPUS: u32 = 255;
/// Least guest memory the guest image boots in, in MiB.
pub const MIN_MEMORY_MIB: u32 = 64;

impl Config {
    /// The kernel to boot: the configured one, else the one `make image` built.
    pub fn kernel(&self) -> PathBuf {
        non_empty_or(&self.vm.kernel, crate::paths::default_kernel)
    }

    /// The initrd to boot: the configured one, else the one `make image` built.
    pub fn initrd(&self) -> PathBuf {
        non_empty_or(&self.vm.initrd, crate::paths::default_initrd)
    }

    /// Checks ranges and cross-field rules that types cannot express. `origin` says where the
    /// configuration came from, for the error.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let invalid = |key, value: String, reason| Error::Invalid {
            key,
            value,
            reason,
            origin: origin.to_owned(),
        };
        if !(1..=MAX_VCPUS).contains(&self.vm.vcpus) {
            return Err(invalid(
                "vm.vcpus",
                self.vm.vcpus.to_string(),
                "must be 1 to 255",
            ));
        }
        if self.vm.memory_mib < MIN_MEMORY_MIB {
            return Err(invalid(
                "vm.memory_mib",
                self.vm.memory_mib.to_string(),
                "must be at least 64 (MiB)",
            ));
        }
        for (key, path) in [
            ("vm.kernel", &self.vm.kernel),
            ("vm.initrd", &self.vm.initrd),
            ("runtime.phase_file", &self.runtime.phase_file),
        ] {
            if !path.as_os_str().is_empty() && !path.is_absolute() {
                return Err(invalid(
                    key,
                    format!("{path:?}"),
                    "must be an absolute path or empty",
                ));
            }
        }
        if self.agent.start_timeout_secs == 0 {
            return Err(invalid(
                "agent.start_timeout_secs",
                "0".to_owned(),
                "must be at least 1",
            ));
        }
        if !["error", "warn", "info", "debug", "trace"].contains(&self.runtime.log_level.as_str()) {
            return Err(invalid(
                "runtime.log_level",
                format!("{:?}", self.runtime.log_level),
                "must be error, warn, info, debug or trace",
            ));
        }
        if self.hypervisor == HypervisorKind::None && !self.runtime.enable_none_hypervisor {
            return Err(invalid(
                "hypervisor",
                "\"none\"".to_owned(),
                "runs containers without a VM (no isolation); set \
                 runtime.enable_none_hypervisor = true to allow it for development",
            ));
        }
        for key in &self.runtime.allowed_annotations {
            if !annotations::OVERRIDABLE.contains(&key.as_str()) {
                return Err(invalid(
                    "runtime.allowed_annotations",
                    format!("{key:?}"),
                    "names a key pods may never override (allowed: vm.vcpus, vm.memory_mib, \
                     vm.kernel_params, agent.start_timeout_secs)",
                ));
            }
        }
        Ok(())
    }
}

fn non_empty_or(path: &std::path::Path, default: impl FnOnce() -> PathBuf) -> PathBuf {
    if path.as_os_str().is_empty() {
        default()
    } else {
        path.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_use_the_built_image() {
        let config = Config::default();
        config.validate("defaults").unwrap();
        assert_eq!(config.kernel(), crate::paths::default_kernel());
        assert_eq!(config.initrd(), crate::paths::default_initrd());
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        let mut config = Config::default();
        config.vm.vcpus = 0;
        let err = config
            .validate("/etc/hull/configuration.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("vm.vcpus = 0"), "{err}");
        assert!(err.contains("/etc/hull/configuration.toml"), "{err}");

        let mut config = Config::default();
        config.vm.memory_mib = 16;
        assert!(config
            .validate("x")
            .unwrap_err()
            .to_string()
            .contains("vm.memory_mib"));

        let mut config = Config::default();
        config.vm.kernel = PathBuf::from("vmlinux");
        assert!(config
            .validate("x")
            .unwrap_err()
            .to_string()
            .contains("absolute"));
    }

    #[test]
    fn none_hypervisor_needs_explicit_consent() {
        let mut config = Config {
            hypervisor: HypervisorKind::None,
            ..Default::default()
        };
        let err = config.validate("x").unwrap_err().to_string();
        assert!(err.contains("enable_none_hypervisor"), "{err}");
        config.runtime.enable_none_hypervisor = true;
        config.validate("x").unwrap();
    }

    #[test]
    fn allowed_annotations_cannot_open_paths_to_pods() {
        let mut config = Config::default();
        config
            .runtime
            .allowed_annotations
            .push("vm.kernel".to_owned());
        let err = config.validate("x").unwrap_err().to_string();
        assert!(err.contains("\"vm.kernel\""), "{err}");
    }
}
