//! What is in a pod's network namespace: its interfaces (with their kind, MAC, MTU and
//! addresses) and the routes through them, read over netlink.

use std::net::IpAddr;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkLayerType};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::{Handle, IpVersion};

use super::{Error, Result};

/// The kind of a network interface, as far as hull cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// One end of a veth pair (what most CNI plugins give a pod).
    Veth,
    /// A macvlan interface.
    MacVlan,
    /// An ipvlan interface.
    IpVlan,
    /// A macvtap interface.
    MacVtap,
    /// Anything else, by the name the kernel gives its kind ("" for none, e.g. a physical NIC).
    Other(String),
}

impl std::fmt::Display for LinkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkKind::Veth => f.write_str("veth"),
            LinkKind::MacVlan => f.write_str("macvlan"),
            LinkKind::IpVlan => f.write_str("ipvlan"),
            LinkKind::MacVtap => f.write_str("macvtap"),
            LinkKind::Other(kind) if kind.is_empty() => f.write_str("device (no kind)"),
            LinkKind::Other(kind) => f.write_str(kind),
        }
    }
}

/// An address with its prefix length, as `ip addr` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNetwork {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

impl std::fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A network interface of the pod's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Its index in the namespace.
    pub index: u32,
    /// Its name (`eth0`).
    pub name: String,
    /// Its kind.
    pub kind: LinkKind,
    /// Its hardware address (6 bytes for Ethernet).
    pub mac: Vec<u8>,
    /// Its MTU.
    pub mtu: u32,
    /// Its addresses, except IPv6 link-local ones (the guest derives the same from the MAC).
    pub addresses: Vec<IpNetwork>,
}

/// A route of the pod's main routing table through one of its interfaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The destination, `None` for the default route.
    pub destination: Option<IpNetwork>,
    /// The next hop, if not on-link.
    pub gateway: Option<IpAddr>,
    /// The preferred source address.
    pub source: Option<IpAddr>,
    /// The name of the interface it goes through.
    pub device: String,
    /// Whether it is a link-scope route (directly reachable destination).
    pub link_scope: bool,
}

/// Everything found in a pod's network namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetnsScan {
    /// The interfaces, loopback excluded, in index order.
    pub interfaces: Vec<Interface>,
    /// The routes that must be recreated in the guest: the main table's routes through the
    /// interfaces, except those the kernel derives by itself from an address (protocol
    /// `kernel`), which the guest's kernel derives the same way.
    pub routes: Vec<Route>,
}

const MAIN_TABLE: u8 = 254;

/// Reads the interfaces and routes of the namespace `handle` talks to.
pub(crate) async fn scan(handle: &Handle) -> Result<NetnsScan> {
    let mut interfaces = Vec::new();
    let mut links = handle.link().get().execute();
    while let Some(link) = links.try_next().await.map_err(|source| Error::Netlink {
        what: "listing links".into(),
        source,
    })? {
        if link.header.link_layer_type == LinkLayerType::Loopback {
            continue;
        }
        let mut interface = Interface {
            index: link.header.index,
            name: String::new(),
            kind: LinkKind::Other(String::new()),
            mac: Vec::new(),
            mtu: 0,
            addresses: Vec::new(),
        };
        for attribute in link.attributes {
            match attribute {
                LinkAttribute::IfName(name) => interface.name = name,
                LinkAttribute::Address(mac) => interface.mac = mac,
                LinkAttribute::Mtu(mtu) => interface.mtu = mtu,
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            interface.kind = link_kind(&kind);
                        }
                    }
                }
                _ => {}
            }
        }
        interfaces.push(interface);
    }
    interfaces.sort_by_key(|i| i.index);

    let mut addresses = handle.address().get().execute();
    while let Some(message) = addresses
        .try_next()
        .await
        .map_err(|source| Error::Netlink {
            what: "listing addresses".into(),
            source,
        })?
    {
        let Some(interface) = interfaces
            .iter_mut()
            .find(|i| i.index == message.header.index)
        else {
            continue;
        };
        // IFA_LOCAL is the interface's own address on point-to-point links, where IFA_ADDRESS
        // is the peer's; elsewhere the two are equal.
        let mut address = None;
        let mut local = None;
        for attribute in message.attributes {
            match attribute {
                AddressAttribute::Address(a) => address = Some(a),
                AddressAttribute::Local(a) => local = Some(a),
                _ => {}
            }
        }
        let Some(addr) = local.or(address) else {
            continue;
        };
        if is_ipv6_link_local(&addr) {
            continue;
        }
        interface.addresses.push(IpNetwork {
            addr,
            prefix: message.header.prefix_len,
        });
    }

    let mut routes = Vec::new();
    for version in [IpVersion::V4, IpVersion::V6] {
        let request = match version {
            IpVersion::V4 => rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            IpVersion::V6 => rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        };
        let mut stream = handle.route().get(request).execute();
        while let Some(message) = stream.try_next().await.map_err(|source| Error::Netlink {
            what: format!("listing {version:?} routes"),
            source,
        })? {
            if let Some(route) = route(&message, &interfaces) {
                routes.push(route);
            }
        }
    }
    Ok(NetnsScan { interfaces, routes })
}

fn link_kind(kind: &InfoKind) -> LinkKind {
    match kind {
        InfoKind::Veth => LinkKind::Veth,
        InfoKind::MacVlan => LinkKind::MacVlan,
        InfoKind::IpVlan => LinkKind::IpVlan,
        InfoKind::MacVtap => LinkKind::MacVtap,
        other => LinkKind::Other(other.to_string()),
    }
}

fn is_ipv6_link_local(addr: &IpAddr) -> bool {
    matches!(addr, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

fn route_addr(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The route `message` describes, if it is one the guest needs.
fn route(message: &RouteMessage, interfaces: &[Interface]) -> Option<Route> {
    let header = &message.header;
    if header.kind != RouteType::Unicast || header.protocol == RouteProtocol::Kernel {
        return None;
    }
    let mut table = u32::from(header.table);
    let mut destination = None;
    let mut gateway = None;
    let mut source = None;
    let mut device = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => destination = route_addr(d),
            RouteAttribute::Gateway(g) => gateway = route_addr(g),
            RouteAttribute::PrefSource(s) => source = route_addr(s),
            RouteAttribute::Oif(index) => {
                device = interfaces
                    .iter()
                    .find(|i| i.index == *index)
                    .map(|i| i.name.clone());
            }
            _ => {}
        }
    }
    if table != u32::from(MAIN_TABLE) {
        return None;
    }
    let destination = match destination {
        Some(addr) => Some(IpNetwork {
            addr,
            prefix: header.destination_prefix_length,
        }),
        None if header.destination_prefix_length == 0 => None,
        None => return None,
    };
    if destination.is_some_and(|d| is_ipv6_link_local(&d.addr) || is_ipv6_multicast(&d.addr)) {
        return None;
    }
    Some(Route {
        destination,
        gateway,
        source,
        device: device?,
        link_scope: header.scope == rtnetlink::packet_route::route::RouteScope::Link,
    })
}

fn is_ipv6_multicast(addr: &IpAddr) -> bool {
    matches!(addr, IpAddr::V6(v6) if v6.is_multicast())
}
