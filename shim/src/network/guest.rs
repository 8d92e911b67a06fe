//! What the VM and the guest are told about a pod's network: one NIC per endpoint (on the
//! endpoint's tap, with the pod interface's MAC), then the agent's UpdateInterface for each
//! and one UpdateRoutes, so the guest's interfaces and routes match the pod's namespace.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};

use hull_agent_protocol::types::{Interface, IpAddress, IpFamily, Route, Routes};

use super::{Endpoint, IpNetwork, PodNetwork};
use crate::vm_spec::VmDevice;

/// RT_SCOPE_LINK, the scope of a route to a directly reachable destination.
const SCOPE_LINK: u32 = 253;

fn family(addr: &IpAddr) -> IpFamily {
    if addr.is_ipv4() {
        IpFamily::IP_FAMILY_V4
    } else {
        IpFamily::IP_FAMILY_V6
    }
}

/// `aa:bb:cc:dd:ee:ff`, as `ip`, QEMU and hull-net write a MAC address.
pub(crate) fn mac_text(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A VM NIC for a backend outside the hypervisor: see [`PodNetwork::nics`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    /// The tap's (or macvtap's) descriptors, one per queue.
    pub fds: Vec<RawFd>,
    /// The guest's MAC: the pod interface's.
    pub mac: [u8; 6],
    /// The pod interface's MTU (a backend cannot ask a macvtap's from outside its
    /// namespace).
    pub mtu: u32,
}

impl Endpoint {
    /// The guest NIC's MAC: the pod interface's own, so peers that learnt it keep reaching
    /// the pod. `None` if the interface has no Ethernet address.
    pub fn guest_mac(&self) -> Option<[u8; 6]> {
        self.interface.mac.as_slice().try_into().ok()
    }
}

impl PodNetwork {
    /// The VM's NICs, in endpoint order: QEMU serves each on its tap's descriptors (which
    /// must stay open until QEMU has started). Endpoints without an Ethernet address get none.
    pub fn vm_devices(&self) -> Vec<VmDevice> {
        self.endpoints
            .iter()
            .filter_map(|endpoint| {
                Some(VmDevice::Tap {
                    fds: endpoint.tap_fds.iter().map(|fd| fd.as_raw_fd()).collect(),
                    mac: endpoint.guest_mac()?,
                })
            })
            .collect()
    }

    /// The VM's NICs, in endpoint order, for a backend outside the hypervisor (hull-net):
    /// each NIC's tap descriptors (one per queue, to be inherited by the backend), MAC and
    /// MTU. Endpoints without an Ethernet address get none, as in
    /// [`PodNetwork::vm_devices`].
    pub fn nics(&self) -> Vec<Nic> {
        self.endpoints
            .iter()
            .filter_map(|endpoint| {
                Some(Nic {
                    fds: endpoint.tap_fds.iter().map(|fd| fd.as_raw_fd()).collect(),
                    mac: endpoint.guest_mac()?,
                    mtu: endpoint.interface.mtu,
                })
            })
            .collect()
    }

    /// The agent's UpdateInterface requests, one per endpoint with a NIC.
    pub fn guest_interfaces(&self) -> Vec<Interface> {
        self.endpoints
            .iter()
            .filter(|endpoint| endpoint.guest_mac().is_some())
            .map(|endpoint| Interface {
                hw_addr: mac_text(&endpoint.interface.mac),
                name: endpoint.interface.name.clone(),
                mtu: endpoint.interface.mtu,
                addresses: endpoint
                    .interface
                    .addresses
                    .iter()
                    .map(|IpNetwork { addr, prefix }| IpAddress {
                        family: family(addr).into(),
                        address: addr.to_string(),
                        prefix_len: u32::from(*prefix),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect()
    }

    /// The agent's UpdateRoutes request: the pod's routes, through the guest interfaces of
    /// the same names.
    pub fn guest_routes(&self) -> Routes {
        Routes {
            routes: self
                .routes
                .iter()
                .map(|route| Route {
                    family: family(
                        &route
                            .destination
                            .map(|d| d.addr)
                            .or(route.gateway)
                            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
                    )
                    .into(),
                    destination: route.destination.map(|d| d.to_string()).unwrap_or_default(),
                    gateway: route.gateway.map(|g| g.to_string()).unwrap_or_default(),
                    device: route.device.clone(),
                    source: route.source.map(|s| s.to_string()).unwrap_or_default(),
                    scope: if route.link_scope { SCOPE_LINK } else { 0 },
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }
}
