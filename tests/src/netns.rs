//! Network namespaces the tests make and always delete: a named namespace (`ip netns add`),
//! and the pod network CNI would leave — a pod namespace whose `eth0` is one end of a veth
//! pair, the other end (`peer0`) in a namespace standing for the host. Link-local addresses
//! only; nothing touches the host's own namespace.

use std::path::PathBuf;
use std::process::Command;

/// Runs `program` with `args`; its stdout, or what it printed on stderr when it failed.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Runs `ip` with `args` and answers its stdout; panics (failing the test) if it fails.
pub fn ip(args: &[&str]) -> String {
    run("ip", args).unwrap_or_else(|e| panic!("{e}"))
}

/// A named network namespace, deleted (with everything in it) on drop.
pub struct Netns(String);

impl Netns {
    /// Makes the namespace `hull-test-{label}-{pid}`.
    pub fn new(label: &str) -> Netns {
        let name = format!("hull-test-{label}-{}", std::process::id());
        let _ = run("ip", &["netns", "del", &name]);
        ip(&["netns", "add", &name]);
        Netns(name)
    }

    /// Its name, for `ip -n NAME` and `ip netns exec NAME`.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// Its path, as an OCI spec or setns names it.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.0)
    }

    /// The MAC address of `device` in it, "aa:bb:cc:dd:ee:ff".
    pub fn mac(&self, device: &str) -> String {
        let line = ip(&["-n", &self.0, "-o", "link", "show", device]);
        line.split("link/ether ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("{device} has no link/ether address: {line}"))
            .to_owned()
    }

    /// Whether `device` exists in it.
    pub fn has_link(&self, device: &str) -> bool {
        run("ip", &["-n", &self.0, "link", "show", device]).is_ok()
    }

    /// Whether `device` in it has an ingress qdisc.
    pub fn has_ingress_qdisc(&self, device: &str) -> bool {
        run("tc", &["-n", &self.0, "qdisc", "show", "dev", device])
            .unwrap_or_else(|e| panic!("{e}"))
            .contains("ingress")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.0]);
    }
}

/// The pod's address on `eth0`.
pub const POD_ADDRESS: &str = "169.254.77.2";
/// The peer's address on `peer0`, the pod's default gateway.
pub const PEER_ADDRESS: &str = "169.254.77.1";
/// The MTU of both ends.
pub const MTU: u32 = 1400;

/// A pod network as CNI leaves it: `pod` holds `eth0` (MTU [`MTU`], [`POD_ADDRESS`]/24,
/// default route via [`PEER_ADDRESS`]), a veth whose peer `peer0` ([`PEER_ADDRESS`]/24) is
/// in `peer`.
pub struct PodNetns {
    /// The pod's namespace.
    pub pod: Netns,
    /// The namespace of the veth's other end.
    pub peer: Netns,
}

impl PodNetns {
    /// Makes both namespaces, labelled `label`.
    pub fn new(label: &str) -> PodNetns {
        let pod = Netns::new(&format!("{label}-pod"));
        let peer = Netns::new(&format!("{label}-peer"));
        ip(&[
            "link", "add", "eth0", "netns", &pod.0, "type", "veth", "peer", "name", "peer0",
            "netns", &peer.0,
        ]);
        Self::configure(pod, peer)
    }

    /// The same network, but the pod's `eth0` is a macvtap (bridge mode), as the macvtap CNI
    /// plugin leaves one: made on `low0` in `peer` (the other end of a veth whose `peer0`
    /// has [`PEER_ADDRESS`]), then moved into `pod`.
    pub fn with_macvtap(label: &str) -> PodNetns {
        let pod = Netns::new(&format!("{label}-pod"));
        let peer = Netns::new(&format!("{label}-peer"));
        ip(&[
            "-n", &peer.0, "link", "add", "low0", "type", "veth", "peer", "name", "peer0",
        ]);
        ip(&[
            "-n",
            &peer.0,
            "link",
            "set",
            "low0",
            "mtu",
            &MTU.to_string(),
            "up",
        ]);
        ip(&[
            "-n", &peer.0, "link", "add", "eth0", "link", "low0", "type", "macvtap", "mode",
            "bridge",
        ]);
        ip(&["-n", &peer.0, "link", "set", "eth0", "netns", &pod.0]);
        Self::configure(pod, peer)
    }

    /// Gives `eth0` in `pod` and `peer0` in `peer` their MTU, addresses and routes.
    fn configure(pod: Netns, peer: Netns) -> PodNetns {
        let mtu = MTU.to_string();
        ip(&["-n", &pod.0, "link", "set", "eth0", "mtu", &mtu, "up"]);
        ip(&[
            "-n",
            &pod.0,
            "addr",
            "add",
            &format!("{POD_ADDRESS}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &pod.0, "route", "add", "default", "via", PEER_ADDRESS]);
        ip(&["-n", &peer.0, "link", "set", "peer0", "mtu", &mtu, "up"]);
        ip(&[
            "-n",
            &peer.0,
            "addr",
            "add",
            &format!("{PEER_ADDRESS}/24"),
            "dev",
            "peer0",
        ]);
        PodNetns { pod, peer }
    }
}
