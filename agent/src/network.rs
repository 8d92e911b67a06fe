//! The guest side of pod networking: UpdateInterface, UpdateRoutes and ListInterfaces, done
//! over netlink (rtnetlink, as Kata's agent does) on the agent's own event loop.
//!
//! The host scans the pod's network namespace and gives the guest's NIC each pod interface's
//! MAC; here the guest interface with that MAC takes the pod interface's name, MTU and
//! addresses, and the main routing table becomes the list of routes the host sends.
//!
//! Every request is checked in full before anything changes (addresses, prefixes, families,
//! names, devices of routes), so a bad request changes nothing. On a host (`--listen`, for
//! tests) the agent refuses to touch the network namespace the host itself runs in.

use std::net::IpAddr;

use futures_util::TryStreamExt;
use hull_agent_protocol::types::{Interface, Interfaces, IpAddress, IpFamily, Route, Routes};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType, RouteVia,
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// Why a network request failed; each maps to a ttrpc status in the service.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A field of the request is malformed.
    #[error("{field}: {message}")]
    Invalid {
        /// The field, with its index when it is in a list (`addresses[1]`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The request names an interface the guest does not have.
    #[error("{0}")]
    NotFound(String),
    /// Refused: the agent runs on a host, in the host's own network namespace.
    #[error(
        "refused on a host: the agent is in the host's own network namespace (run it in a \
         namespace of its own, e.g. with `ip netns exec`)"
    )]
    HostNamespace,
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Netlink {
        /// The request.
        what: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// The netlink socket could not be opened.
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
}

type Result<T> = std::result::Result<T, NetError>;

fn invalid(field: impl Into<String>, message: impl Into<String>) -> NetError {
    NetError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Netlink { what, source }
}

/// Parses "aa:bb:cc:dd:ee:ff".
pub fn parse_mac(field: &str, text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<&str> = text.split(':').collect();
    let bad = || {
        invalid(
            field,
            format!("{text:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"),
        )
    };
    if bytes.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (slot, byte) in mac.iter_mut().zip(bytes) {
        if byte.len() != 2 {
            return Err(bad());
        }
        *slot = u8::from_str_radix(byte, 16).map_err(|_| bad())?;
    }
    Ok(mac)
}

fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An address and prefix, checked against the family the request gives (if any).
pub fn parse_address(field: &str, address: &IpAddress) -> Result<(IpAddr, u8)> {
    let addr: IpAddr = address
        .address
        .parse()
        .map_err(|_| invalid(field, format!("{:?} is not an IP address", address.address)))?;
    check_family(field, address.family.enum_value_or_default(), &addr)?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = u8::try_from(address.prefix_len)
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| {
            invalid(
                field,
                format!("prefix length {} is above {max}", address.prefix_len),
            )
        })?;
    Ok((addr, prefix))
}

fn check_family(field: &str, family: IpFamily, addr: &IpAddr) -> Result<()> {
    match (family, addr) {
        (IpFamily::IP_FAMILY_UNSPECIFIED, _)
        | (IpFamily::IP_FAMILY_V4, IpAddr::V4(_))
        | (IpFamily::IP_FAMILY_V6, IpAddr::V6(_)) => Ok(()),
        _ => Err(invalid(
            field,
            format!("{addr} does not belong to the family {family:?}"),
        )),
    }
}

/// A destination in CIDR form ("10.0.0.0/24"); empty is the default route.
pub fn parse_cidr(field: &str, text: &str) -> Result<Option<(IpAddr, u8)>> {
    if text.is_empty() {
        return Ok(None);
    }
    let (addr, prefix) = text
        .split_once('/')
        .ok_or_else(|| invalid(field, format!("{text:?} is not in CIDR form (10.0.0.0/24)")))?;
    let address = IpAddress {
        address: addr.to_owned(),
        prefix_len: prefix
            .parse()
            .map_err(|_| invalid(field, format!("{prefix:?} is not a prefix length")))?,
        ..Default::default()
    };
    parse_address(field, &address).map(Some)
}

/// An interface name the kernel accepts: 1 to 15 bytes, no '/', ':' or whitespace.
pub fn check_name(field: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{name:?} is not a valid interface name"),
        ))
    }
}

/// Refuses to work in the host's own network namespace (the agent started with `--listen` on
/// a host, outside a namespace of its own): tests must never reconfigure the machine.
///
/// The host's namespace is PID 1's; where PID 1's namespace cannot be read (a container
/// without CAP_SYS_PTRACE over its init), the parent's stands in for it: an agent started in
/// a namespace of its own (`ip netns exec`, `unshare -n`) is always in another namespace than
/// the process that started it.
pub fn refuse_host_namespace() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let inode = |path: String| std::fs::metadata(path).map(|m| m.ino()).ok();
    let own = inode("/proc/self/ns/net".into());
    let host = inode("/proc/1/ns/net".into()).or_else(|| {
        inode(format!(
            "/proc/{}/ns/net",
            std::os::unix::process::parent_id()
        ))
    });
    match (own, host) {
        (Some(own), Some(host)) if own != host => Ok(()),
        _ => Err(NetError::HostNamespace),
    }
}

async fn connect() -> Result<(Handle, tokio::task::JoinHandle<()>)> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(NetError::Socket)?;
    Ok((handle, tokio::spawn(connection)))
}

/// Runs `work` with a netlink handle, closing the connection afterwards.
async fn with_handle<T>(work: impl AsyncFnOnce(&Handle) -> Result<T>) -> Result<T> {
    let (handle, connection) = connect().await?;
    let result = work(&handle).await;
    connection.abort();
    result
}

async fn links(handle: &Handle) -> Result<Vec<LinkMessage>> {
    handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing links"))
}

fn link_name(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn link_mac(link: &LinkMessage) -> Vec<u8> {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(mac) => Some(mac.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

async fn addresses_of(handle: &Handle, index: u32) -> Result<Vec<AddressMessage>> {
    handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(netlink(format!(
            "listing the addresses of interface {index}"
        )))
}

fn address_of(message: &AddressMessage) -> Option<IpAddr> {
    let mut address = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(a) => return Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            _ => {}
        }
    }
    address
}

fn is_ipv6_link_local(addr: &IpAddr) -> bool {
    matches!(addr, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

async fn describe(handle: &Handle, link: &LinkMessage) -> Result<Interface> {
    let mut interface = Interface {
        hw_addr: format_mac(&link_mac(link)),
        name: link_name(link),
        raw_flags: link.header.flags.bits(),
        ..Default::default()
    };
    for attribute in &link.attributes {
        if let LinkAttribute::Mtu(mtu) = attribute {
            interface.mtu = *mtu;
        }
    }
    for message in addresses_of(handle, link.header.index).await? {
        if let Some(addr) = address_of(&message) {
            interface.addresses.push(IpAddress {
                family: if addr.is_ipv4() {
                    IpFamily::IP_FAMILY_V4
                } else {
                    IpFamily::IP_FAMILY_V6
                }
                .into(),
                address: addr.to_string(),
                prefix_len: u32::from(message.header.prefix_len),
                ..Default::default()
            });
        }
    }
    Ok(interface)
}

/// ListInterfaces: every interface of the guest, with its addresses and flags.
pub async fn list_interfaces() -> Result<Interfaces> {
    with_handle(async |handle| {
        let mut interfaces = Interfaces::default();
        for link in links(handle).await? {
            interfaces.interfaces.push(describe(handle, &link).await?);
        }
        Ok(interfaces)
    })
    .await
}

/// UpdateInterface: the interface with `request.hw_addr` takes the request's name, MTU and
/// addresses (replacing its own, IPv6 link-local ones aside) and is brought up. Answers the
/// interface as it then is.
pub async fn update_interface(request: Interface) -> Result<Interface> {
    let mac = parse_mac("interface.hw_addr", &request.hw_addr)?;
    if !request.name.is_empty() {
        check_name("interface.name", &request.name)?;
    }
    let addresses = request
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| parse_address(&format!("interface.addresses[{i}]"), a))
        .collect::<Result<Vec<_>>>()?;
    with_handle(async |handle| {
        let link = links(handle)
            .await?
            .into_iter()
            .find(|l| link_mac(l) == mac)
            .ok_or_else(|| {
                NetError::NotFound(format!(
                    "no interface has the MAC address {}",
                    request.hw_addr
                ))
            })?;
        let index = link.header.index;
        let current = link_name(&link);
        if !request.name.is_empty() && request.name != current {
            // A link is renamed only while down.
            handle
                .link()
                .set(LinkUnspec::new_with_index(index).down().build())
                .execute()
                .await
                .map_err(netlink(format!("bringing {current} down to rename it")))?;
            handle
                .link()
                .set(
                    LinkUnspec::new_with_index(index)
                        .name(request.name.clone())
                        .build(),
                )
                .execute()
                .await
                .map_err(netlink(format!("renaming {current} to {}", request.name)))?;
        }
        if request.mtu != 0 {
            handle
                .link()
                .set(LinkUnspec::new_with_index(index).mtu(request.mtu).build())
                .execute()
                .await
                .map_err(netlink(format!(
                    "setting the MTU of {current} to {}",
                    request.mtu
                )))?;
        }
        for message in addresses_of(handle, index).await? {
            if address_of(&message).is_some_and(|a| is_ipv6_link_local(&a)) {
                continue;
            }
            handle
                .address()
                .del(message)
                .execute()
                .await
                .map_err(netlink(format!("removing an old address of {current}")))?;
        }
        for (addr, prefix) in &addresses {
            handle
                .address()
                .add(index, *addr, *prefix)
                .execute()
                .await
                .map_err(netlink(format!("adding {addr}/{prefix}")))?;
        }
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(netlink(format!("bringing interface {index} up")))?;
        let link = links(handle)
            .await?
            .into_iter()
            .find(|l| l.header.index == index)
            .ok_or_else(|| NetError::NotFound(format!("interface {index} vanished")))?;
        describe(handle, &link).await
    })
    .await
}

/// A route of the request, checked and with its device resolved.
struct NewRoute {
    destination: Option<(IpAddr, u8)>,
    gateway: Option<IpAddr>,
    source: Option<IpAddr>,
    device: u32,
    scope: RouteScope,
}

fn parse_route(i: usize, route: &Route, links: &[LinkMessage]) -> Result<NewRoute> {
    let field = |name: &str| format!("routes[{i}].{name}");
    let family = route.family.enum_value_or_default();
    let destination = parse_cidr(&field("destination"), &route.destination)?;
    let parse_ip = |name: &str, text: &str| -> Result<Option<IpAddr>> {
        if text.is_empty() {
            return Ok(None);
        }
        let addr: IpAddr = text
            .parse()
            .map_err(|_| invalid(field(name), format!("{text:?} is not an IP address")))?;
        Ok(Some(addr))
    };
    let gateway = parse_ip("gateway", &route.gateway)?;
    let source = parse_ip("source", &route.source)?;
    let addrs = destination
        .map(|d| d.0)
        .into_iter()
        .chain(gateway)
        .chain(source);
    let mut v4 = None;
    for addr in addrs {
        check_family(&field("family"), family, &addr)?;
        match v4 {
            None => v4 = Some(addr.is_ipv4()),
            Some(is_v4) if is_v4 != addr.is_ipv4() => {
                return Err(invalid(field("family"), "mixes IPv4 and IPv6 addresses"));
            }
            Some(_) => {}
        }
    }
    if v4.is_none() && family == IpFamily::IP_FAMILY_UNSPECIFIED {
        return Err(invalid(
            field("family"),
            "a default route without a gateway needs its family",
        ));
    }
    let device = links
        .iter()
        .find(|l| link_name(l) == route.device)
        .ok_or_else(|| {
            NetError::NotFound(format!(
                "routes[{i}].device: no interface is named {:?}",
                route.device
            ))
        })?
        .header
        .index;
    let scope = u8::try_from(route.scope)
        .map(RouteScope::from)
        .map_err(|_| {
            invalid(
                field("scope"),
                format!("{} is not a route scope", route.scope),
            )
        })?;
    Ok(NewRoute {
        destination,
        gateway,
        source,
        device,
        scope,
    })
}

fn route_message(route: &NewRoute, v6: bool) -> std::result::Result<RouteMessage, String> {
    let mut builder = RouteMessageBuilder::<IpAddr>::new();
    if let Some((addr, prefix)) = route.destination {
        builder = builder
            .destination_prefix(addr, prefix)
            .map_err(|e| e.to_string())?;
    } else if v6 {
        builder.get_mut().header.address_family = rtnetlink::packet_route::AddressFamily::Inet6;
    } else {
        builder.get_mut().header.address_family = rtnetlink::packet_route::AddressFamily::Inet;
    }
    if let Some(gateway) = route.gateway {
        builder = builder.gateway(gateway).map_err(|e| e.to_string())?;
    }
    if let Some(source) = route.source {
        builder = builder.pref_source(source).map_err(|e| e.to_string())?;
    }
    Ok(builder
        .output_interface(route.device)
        .scope(route.scope)
        .protocol(RouteProtocol::Boot)
        .build())
}

fn route_addr(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The main table's unicast routes not derived by the kernel from an address.
async fn current_routes(handle: &Handle) -> Result<Vec<RouteMessage>> {
    let mut routes = Vec::new();
    for request in [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let found: Vec<RouteMessage> = handle
            .route()
            .get(request)
            .execute()
            .try_collect()
            .await
            .map_err(netlink("listing routes"))?;
        routes.extend(found.into_iter().filter(|r| {
            let table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            table == 254
                && r.header.kind == RouteType::Unicast
                && r.header.protocol != RouteProtocol::Kernel
        }));
    }
    Ok(routes)
}

fn describe_route(message: &RouteMessage, links: &[LinkMessage]) -> Route {
    let mut route = Route {
        family: if message.header.address_family == rtnetlink::packet_route::AddressFamily::Inet6 {
            IpFamily::IP_FAMILY_V6
        } else {
            IpFamily::IP_FAMILY_V4
        }
        .into(),
        scope: u32::from(u8::from(message.header.scope)),
        ..Default::default()
    };
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(d) => {
                if let Some(addr) = route_addr(d) {
                    route.destination =
                        format!("{addr}/{}", message.header.destination_prefix_length);
                }
            }
            RouteAttribute::Gateway(g) => {
                route.gateway = route_addr(g).map(|a| a.to_string()).unwrap_or_default();
            }
            RouteAttribute::Via(RouteVia::Inet6(v6)) => route.gateway = v6.to_string(),
            RouteAttribute::PrefSource(s) => {
                route.source = route_addr(s).map(|a| a.to_string()).unwrap_or_default();
            }
            RouteAttribute::Oif(index) => {
                route.device = links
                    .iter()
                    .find(|l| l.header.index == *index)
                    .map(link_name)
                    .unwrap_or_default();
            }
            _ => {}
        }
    }
    route
}

/// UpdateRoutes: the main routing table becomes `request` (routes the kernel derives from
/// addresses aside). Link-scope routes are added first, so gateways are reachable when the
/// routes through them are added. Answers the table as it then is.
pub async fn update_routes(request: Routes) -> Result<Routes> {
    with_handle(async |handle| {
        let links = links(handle).await?;
        let routes = request
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| parse_route(i, r, &links))
            .collect::<Result<Vec<_>>>()?;
        let families: Vec<bool> = request
            .routes
            .iter()
            .zip(&routes)
            .map(|(r, n)| {
                r.family.enum_value_or_default() == IpFamily::IP_FAMILY_V6
                    || n.destination.is_some_and(|d| d.0.is_ipv6())
                    || n.gateway.is_some_and(|g| g.is_ipv6())
            })
            .collect();
        let mut messages = Vec::new();
        for (i, (route, v6)) in routes.iter().zip(&families).enumerate() {
            messages
                .push(route_message(route, *v6).map_err(|e| invalid(format!("routes[{i}]"), e))?);
        }
        for old in current_routes(handle).await? {
            handle
                .route()
                .del(old)
                .execute()
                .await
                .map_err(netlink("removing an old route"))?;
        }
        let mut order: Vec<usize> = (0..messages.len()).collect();
        order.sort_by_key(|&i| routes[i].gateway.is_some());
        for i in order {
            handle
                .route()
                .add(messages[i].clone())
                .execute()
                .await
                .map_err(netlink(format!("adding routes[{i}]")))?;
        }
        let mut answer = Routes::default();
        for message in current_routes(handle).await? {
            answer.routes.push(describe_route(&message, &links));
        }
        Ok(answer)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn macs_parse_and_bad_ones_name_the_field() {
        assert_eq!(
            parse_mac("f", "02:aB:00:11:22:ff").expect("valid"),
            [2, 0xab, 0, 0x11, 0x22, 0xff]
        );
        for bad in [
            "",
            "02:ab:00:11:22",
            "02:ab:00:11:22:ff:00",
            "2:ab:00:11:22:ff",
            "zz:ab:00:11:22:ff",
        ] {
            let error = parse_mac("interface.hw_addr", bad).expect_err(bad);
            assert!(
                error.to_string().starts_with("interface.hw_addr: "),
                "{error}"
            );
        }
    }

    #[test]
    fn addresses_check_family_and_prefix() {
        let address = |family: IpFamily, address: &str, prefix_len| IpAddress {
            family: family.into(),
            address: address.into(),
            prefix_len,
            ..Default::default()
        };
        assert!(parse_address("a", &address(IpFamily::IP_FAMILY_V4, "10.0.0.2", 24)).is_ok());
        assert!(parse_address("a", &address(IpFamily::IP_FAMILY_V6, "fd00::2", 64)).is_ok());
        for bad in [
            address(IpFamily::IP_FAMILY_V4, "fd00::2", 64),
            address(IpFamily::IP_FAMILY_V6, "10.0.0.2", 24),
            address(IpFamily::IP_FAMILY_V4, "10.0.0.2", 33),
            address(IpFamily::IP_FAMILY_V6, "fd00::2", 129),
            address(IpFamily::IP_FAMILY_V4, "300.0.0.1", 24),
        ] {
            assert!(parse_address("a", &bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cidrs_and_names() {
        assert_eq!(parse_cidr("d", "").expect("default"), None);
        assert_eq!(
            parse_cidr("d", "10.1.0.0/16").expect("cidr"),
            Some(("10.1.0.0".parse().expect("ip"), 16))
        );
        assert!(parse_cidr("d", "10.1.0.0").is_err());
        assert!(parse_cidr("d", "10.1.0.0/x").is_err());
        assert!(check_name("n", "eth0").is_ok());
        for bad in ["", "a/b", "a b", "sixteen-chars-xx", "..", "a:b"] {
            assert!(check_name("n", bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn parsers_never_panic(text in ".{0,40}", prefix in any::<u32>()) {
            let _ = parse_mac("f", &text);
            let _ = parse_cidr("f", &text);
            let _ = check_name("f", &text);
            let _ = parse_address("f", &IpAddress {
                address: text.clone(),
                prefix_len: prefix,
                ..Default::default()
            });
        }
    }
}
