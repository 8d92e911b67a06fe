//! The QEMU command line for a [`VmSpec`]: a pure function, so every device and machine
//! combination is checked by unit tests without starting QEMU.

use std::ffi::OsString;
use std::path::Path;

use crate::config::QemuMachine;
use crate::vm_spec::{VmDevice, VmSpec};

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's binary translator: no hardware support needed, much slower.
    Tcg,
}

/// Builds QEMU's arguments. `run_dir` holds the QMP socket and the console log.
pub fn arguments(
    spec: &VmSpec,
    machine: QemuMachine,
    accel: Accel,
    run_dir: &Path,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    let (machine_arg, pci) = match machine {
        QemuMachine::Microvm => ("microvm,acpi=off,memory-backend=mem", false),
        QemuMachine::Q35 => ("q35,memory-backend=mem", true),
    };
    let (accel_arg, cpu) = match accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Tcg => ("tcg", "max"),
    };
    let name = format!("hull-{},process=hull-vm-{}", spec.id, spec.id);
    let memory = format!("{}M", spec.memory_mib);
    push(&[
        "-name",
        &name,
        "-M",
        machine_arg,
        "-accel",
        accel_arg,
        "-cpu",
        cpu,
    ]);
    push(&["-smp", &spec.vcpus.to_string(), "-m", &memory]);
    push(&[
        "-object",
        &format!("memory-backend-memfd,id=mem,size={memory},share=on"),
    ]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    let console = run_dir.join("console.log");
    let qmp = run_dir.join("qmp.sock");
    push(&[
        "-chardev",
        &format!("file,id=console,path={}", console.display()),
    ]);
    push(&["-serial", "chardev:console"]);
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", qmp.display()),
    ]);

    for (index, device) in spec.devices.iter().enumerate() {
        let chardev = format!("dev{index}");
        let socket = match device {
            VmDevice::VhostUserVsock { socket }
            | VmDevice::VhostUserFs { socket, .. }
            | VmDevice::VhostUserBlk { socket }
            | VmDevice::VhostUserNet { socket, .. } => socket,
            // Refused before QEMU is started (QemuVm::start).
            VmDevice::HybridVsock { .. } => continue,
            VmDevice::Tap { fds, mac } => {
                // QEMU serves virtio-net itself on the tap descriptors it inherits. vhost=off:
                // vhost-net needs /dev/vhost-net, which a pod's host may not give the shim.
                let netdev = format!("net{index}");
                let fds_arg = match fds.as_slice() {
                    [fd] => format!("fd={fd}"),
                    fds => format!(
                        "fds={}",
                        fds.iter()
                            .map(|fd| fd.to_string())
                            .collect::<Vec<_>>()
                            .join(":")
                    ),
                };
                push(&["-netdev", &format!("tap,id={netdev},{fds_arg},vhost=off")]);
                push(&["-device", &net_device(pci, &netdev, mac, fds.len())]);
                continue;
            }
        };
        push(&[
            "-chardev",
            &format!("socket,id={chardev},path={}", socket.display()),
        ]);
        let device_arg = match device {
            VmDevice::VhostUserVsock { .. } => {
                let model = if pci {
                    "vhost-user-vsock-pci"
                } else {
                    "vhost-user-vsock-device"
                };
                format!("{model},chardev={chardev}")
            }
            VmDevice::VhostUserFs { tag, .. } => {
                let model = if pci {
                    "vhost-user-fs-pci"
                } else {
                    "vhost-user-fs-device"
                };
                format!("{model},chardev={chardev},tag={tag}")
            }
            VmDevice::VhostUserBlk { .. } => {
                let model = if pci {
                    "vhost-user-blk-pci"
                } else {
                    "vhost-user-blk"
                };
                format!("{model},chardev={chardev}")
            }
            VmDevice::VhostUserNet { mac, .. } => {
                let netdev = format!("net{index}");
                push(&[
                    "-netdev",
                    &format!("vhost-user,id={netdev},chardev={chardev}"),
                ]);
                net_device(pci, &netdev, mac, 1)
            }
            VmDevice::Tap { .. } | VmDevice::HybridVsock { .. } => continue,
        };
        push(&["-device", &device_arg]);
    }

    args.extend(["-kernel".into(), spec.kernel.clone().into_os_string()]);
    args.extend(["-initrd".into(), spec.initrd.clone().into_os_string()]);
    args.extend(["-append".into(), spec.kernel_params.join(" ").into()]);
    args
}

/// The `-device` argument of a virtio-net NIC on `netdev` with `queues` queue pairs. Multiple
/// queues need PCI (virtio-mmio has one interrupt per device) and 2 vectors per pair plus 2.
fn net_device(pci: bool, netdev: &str, mac: &[u8; 6], queues: usize) -> String {
    let mac = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    if !pci {
        return format!("virtio-net-device,netdev={netdev},mac={mac}");
    }
    if queues > 1 {
        let vectors = 2 * queues + 2;
        format!("virtio-net-pci,netdev={netdev},mac={mac},mq=on,vectors={vectors}")
    } else {
        format!("virtio-net-pci,netdev={netdev},mac={mac}")
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn spec(devices: Vec<VmDevice>) -> VmSpec {
        VmSpec {
            id: "pod1".into(),
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initrd.img".into(),
            kernel_params: vec!["console=ttyS0".into(), "agent.hostname=pod1".into()],
            vcpus: 2,
            memory_mib: 512,
            devices,
        }
    }

    fn joined(args: &[OsString]) -> String {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn microvm_shares_memory_and_exposes_qmp_and_console() {
        let args = joined(&arguments(
            &spec(vec![]),
            QemuMachine::Microvm,
            Accel::Tcg,
            Path::new("/run/x"),
        ));
        assert!(
            args.contains("-M microvm,acpi=off,memory-backend=mem"),
            "{args}"
        );
        assert!(
            args.contains("-object memory-backend-memfd,id=mem,size=512M,share=on"),
            "{args}"
        );
        assert!(args.contains("-accel tcg -cpu max"), "{args}");
        assert!(args.contains("-smp 2 -m 512M"), "{args}");
        assert!(
            args.contains("-qmp unix:/run/x/qmp.sock,server=on,wait=off"),
            "{args}"
        );
        assert!(args.contains("path=/run/x/console.log"), "{args}");
        assert!(
            args.ends_with("-append console=ttyS0 agent.hostname=pod1"),
            "{args}"
        );
        assert!(
            args.contains("-no-reboot"),
            "a guest reboot must end the VM: {args}"
        );
    }

    #[test]
    fn taps_are_served_by_qemu_on_inherited_descriptors() {
        let devices = vec![VmDevice::Tap {
            fds: vec![7],
            mac: [2, 0, 0, 0, 0, 0xcd],
        }];
        let mmio = joined(&arguments(
            &spec(devices),
            QemuMachine::Microvm,
            Accel::Tcg,
            Path::new("/r"),
        ));
        assert!(
            mmio.contains("-netdev tap,id=net0,fd=7,vhost=off -device virtio-net-device,netdev=net0,mac=02:00:00:00:00:cd"),
            "{mmio}"
        );
        assert!(
            !mmio.contains("-chardev socket,id=dev0"),
            "a tap has no socket: {mmio}"
        );
        let queues = vec![VmDevice::Tap {
            fds: vec![7, 8],
            mac: [2, 0, 0, 0, 0, 0xcd],
        }];
        let pci = joined(&arguments(
            &spec(queues),
            QemuMachine::Q35,
            Accel::Tcg,
            Path::new("/r"),
        ));
        assert!(
            pci.contains("-netdev tap,id=net0,fds=7:8,vhost=off -device virtio-net-pci,netdev=net0,mac=02:00:00:00:00:cd,mq=on,vectors=6"),
            "{pci}"
        );
    }

    #[test]
    fn devices_use_mmio_models_on_microvm_and_pci_models_on_q35() {
        let devices = vec![
            VmDevice::VhostUserVsock {
                socket: PathBuf::from("/s/vsock"),
            },
            VmDevice::VhostUserFs {
                socket: PathBuf::from("/s/fs"),
                tag: "hullfs".into(),
            },
            VmDevice::VhostUserBlk {
                socket: PathBuf::from("/s/blk"),
            },
            VmDevice::VhostUserNet {
                socket: PathBuf::from("/s/net"),
                mac: [2, 0, 0, 0, 0, 0xab],
            },
        ];
        let mmio = joined(&arguments(
            &spec(devices.clone()),
            QemuMachine::Microvm,
            Accel::Kvm,
            Path::new("/r"),
        ));
        assert!(mmio.contains("-chardev socket,id=dev0,path=/s/vsock -device vhost-user-vsock-device,chardev=dev0"), "{mmio}");
        assert!(
            mmio.contains("-device vhost-user-fs-device,chardev=dev1,tag=hullfs"),
            "{mmio}"
        );
        assert!(
            mmio.contains("-device vhost-user-blk,chardev=dev2"),
            "{mmio}"
        );
        assert!(mmio.contains("-netdev vhost-user,id=net3,chardev=dev3 -device virtio-net-device,netdev=net3,mac=02:00:00:00:00:ab"), "{mmio}");
        assert!(mmio.contains("-accel kvm -cpu host"), "{mmio}");
        let pci = joined(&arguments(
            &spec(devices),
            QemuMachine::Q35,
            Accel::Kvm,
            Path::new("/r"),
        ));
        assert!(pci.contains("-M q35,memory-backend=mem"), "{pci}");
        for model in [
            "vhost-user-vsock-pci",
            "vhost-user-fs-pci",
            "vhost-user-blk-pci",
            "virtio-net-pci",
        ] {
            assert!(pci.contains(model), "{model} missing: {pci}");
        }
    }
}
