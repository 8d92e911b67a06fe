//! Endpoints: the tap each pod interface's traffic is redirected to and from, and the pod
//! network made of them.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use futures_util::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use rtnetlink::packet_route::tc::{TcHandle, TcMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, LinkUnspec};

use super::netns::{run_in, with_netlink};
use super::scan::{scan, Interface, LinkKind, NetnsScan, Route};
use super::{macvtap, tap, Error, Result};

/// How an interface is connected to the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointModel {
    /// A tap beside the interface, with tc ingress filters redirecting every frame of one to
    /// the other (Kata's "tcfilter" model): works for veth, macvlan and ipvlan, needs no
    /// bridge and no change to the interface itself.
    TcFilter,
    /// The interface is a macvtap: its own queues serve the NIC, with no tap and no filter
    /// (Kata's macvtap endpoint). Nothing is added to the namespace, so nothing is removed.
    MacVtap,
}

/// One pod interface connected to a tap (a macvtap is its own).
#[derive(Debug)]
pub struct Endpoint {
    /// The pod interface, as scanned: the guest's NIC takes its MAC, MTU and addresses.
    pub interface: Interface,
    /// How it is connected.
    pub model: EndpointModel,
    /// The tap's name in the pod's namespace (a macvtap's own name).
    pub tap_name: String,
    /// The tap's interface index in the pod's namespace (a macvtap's own index).
    pub tap_index: u32,
    /// One descriptor per queue, for the hypervisor or hull-net (pass them on; the tap lives
    /// while any copy is open).
    pub tap_fds: Vec<OwnedFd>,
    /// Whether hull added the ingress qdisc of the interface (and so removes it), or found
    /// one there (and removes only its own filter).
    added_qdisc: bool,
}

/// What hull changed on one pod interface, as the sandbox's persisted record keeps it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordedInterface {
    /// The interface's index in the pod's namespace.
    pub index: u32,
    /// Its name, for messages.
    pub name: String,
    /// Whether hull added its ingress qdisc (removed whole) or only a filter (removed alone).
    pub added_qdisc: bool,
}

/// What of a pod network outlives the shim if it dies: the redirect filters on the pod's
/// interfaces (the taps die with their last descriptor). Kept in the sandbox's record so
/// `shim delete` can remove them ([`release`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordedNetwork {
    /// The pod's network namespace.
    pub netns: PathBuf,
    /// The interfaces hull joined to taps.
    pub interfaces: Vec<RecordedInterface>,
}

/// The interfaces of a pod's namespace its VM knows of (the pod's, and hull's taps), to
/// notice ones added later ([`KnownInterfaces::added`]) without holding the [`PodNetwork`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownInterfaces {
    netns: PathBuf,
    indexes: Vec<u32>,
}

impl KnownInterfaces {
    /// The names of the interfaces (loopback aside) in the namespace now that the VM does
    /// not know of: added after the sandbox started. Blocks while it scans (a thread of its
    /// own enters the namespace).
    pub fn added(&self) -> Result<Vec<String>> {
        let NetnsScan { interfaces, .. } = run_in(&self.netns, || {
            with_netlink(async |handle| scan(&handle).await)
        })?;
        Ok(interfaces
            .into_iter()
            .filter(|interface| !self.indexes.contains(&interface.index))
            .map(|interface| interface.name)
            .collect())
    }

    /// [`Error::HotplugUnsupported`] naming the interfaces added since the sandbox started,
    /// if any: `hypervisor` (which runs the VM) cannot hot-plug NICs.
    pub fn refuse_added(&self, hypervisor: &'static str) -> Result<()> {
        let names = self.added()?;
        if names.is_empty() {
            return Ok(());
        }
        Err(Error::HotplugUnsupported {
            names,
            netns: self.netns.clone(),
            hypervisor,
        })
    }
}

/// Removes what a dead shim's pod network left on the pod's interfaces. A namespace that is
/// gone took everything with it.
pub fn release(recorded: &RecordedNetwork) -> Result<()> {
    let result = run_in(&recorded.netns, || {
        with_netlink(async |handle| {
            let mut first_error = None;
            for interface in &recorded.interfaces {
                if let Err(error) = disconnect_recorded(&handle, interface).await {
                    first_error.get_or_insert(error);
                }
            }
            first_error.map_or(Ok(()), Err)
        })
    });
    match result {
        Err(Error::OpenNetns { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        other => other,
    }
}

impl Endpoint {
    fn recorded(&self) -> RecordedInterface {
        RecordedInterface {
            index: self.interface.index,
            name: self.interface.name.clone(),
            added_qdisc: self.added_qdisc,
        }
    }
}

/// The network of one pod: its namespace, an endpoint per interface and the routes to give
/// the guest. Call [`PodNetwork::detach`] when the pod ends; dropping it detaches too, but
/// can only log a failure.
#[derive(Debug)]
pub struct PodNetwork {
    netns: PathBuf,
    /// The endpoints, in the order of the pod's interface indexes.
    pub endpoints: Vec<Endpoint>,
    /// The routes the guest needs (see [`NetnsScan::routes`]).
    pub routes: Vec<Route>,
    detached: bool,
}

/// The priority of hull's tc filters, so they can be found and removed one by one when the
/// ingress qdisc was not hull's to remove.
const FILTER_PRIORITY: u16 = 0xc1e1;
/// tc's ingress qdisc handle, `ffff:`.
const INGRESS_HANDLE: u32 = 0xffff_0000;
/// `protocol all`, in network byte order as the kernel compares it with skb->protocol.
const PROTOCOL_ALL: u16 = (libc::ETH_P_ALL as u16).to_be();

impl PodNetwork {
    /// Scans the network namespace at `netns` and connects every interface in it (loopback
    /// aside) to a new tap with `queues` queues. Fails, undoing what it did, if an interface
    /// is of a kind hull cannot connect.
    pub fn attach(netns: &Path, queues: u16) -> Result<PodNetwork> {
        let (endpoints, routes) = run_in(netns, || {
            with_netlink(async |handle| {
                let NetnsScan { interfaces, routes } = scan(&handle).await?;
                for interface in &interfaces {
                    model(interface)?;
                }
                let mut endpoints = Vec::new();
                for (n, interface) in interfaces.into_iter().enumerate() {
                    match connect(&handle, interface, n, queues).await {
                        Ok(endpoint) => endpoints.push(endpoint),
                        Err(error) => {
                            for endpoint in &endpoints {
                                if let Err(undo) = disconnect(&handle, endpoint).await {
                                    tracing::warn!(tap = endpoint.tap_name, "undoing: {undo}");
                                }
                            }
                            return Err(error);
                        }
                    }
                }
                Ok((endpoints, routes))
            })
        })?;
        Ok(PodNetwork {
            netns: netns.to_owned(),
            endpoints,
            routes,
            detached: false,
        })
    }

    /// What to keep in the sandbox's record, so the filters can be removed after a crash
    /// (macvtap endpoints have none).
    pub fn recorded(&self) -> RecordedNetwork {
        RecordedNetwork {
            netns: self.netns.clone(),
            interfaces: self
                .endpoints
                .iter()
                .filter(|endpoint| endpoint.model == EndpointModel::TcFilter)
                .map(Endpoint::recorded)
                .collect(),
        }
    }

    /// The interfaces the VM knows of, to notice ones added to the namespace later.
    pub fn known(&self) -> KnownInterfaces {
        KnownInterfaces {
            netns: self.netns.clone(),
            indexes: self
                .endpoints
                .iter()
                .flat_map(|endpoint| [endpoint.interface.index, endpoint.tap_index])
                .collect(),
        }
    }

    /// The network namespace this network lives in.
    pub fn netns(&self) -> &Path {
        &self.netns
    }

    /// Removes hull's filters (and the ingress qdiscs hull added) from the pod's interfaces
    /// and closes the shim's tap descriptors. A namespace that no longer exists has nothing
    /// left to remove.
    pub fn detach(mut self) -> Result<()> {
        self.detached = true;
        let endpoints = std::mem::take(&mut self.endpoints);
        let result = match run_in(&self.netns, || {
            with_netlink(async |handle| {
                let mut first_error = None;
                for endpoint in &endpoints {
                    if let Err(error) = disconnect(&handle, endpoint).await {
                        first_error.get_or_insert(error);
                    }
                }
                first_error.map_or(Ok(()), Err)
            })
        }) {
            Err(Error::OpenNetns { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(())
            }
            other => other,
        };
        drop(endpoints);
        result
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        if !self.detached {
            let network = PodNetwork {
                netns: std::mem::take(&mut self.netns),
                endpoints: std::mem::take(&mut self.endpoints),
                routes: Vec::new(),
                detached: false,
            };
            self.detached = true;
            if let Err(error) = network.detach() {
                tracing::warn!("detaching the pod network on drop: {error}");
            }
        }
    }
}

fn model(interface: &Interface) -> Result<EndpointModel> {
    match interface.kind {
        LinkKind::Veth | LinkKind::MacVlan | LinkKind::IpVlan => Ok(EndpointModel::TcFilter),
        LinkKind::MacVtap => Ok(EndpointModel::MacVtap),
        _ => Err(Error::UnsupportedKind {
            name: interface.name.clone(),
            kind: interface.kind.to_string(),
        }),
    }
}

fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let what = what.into();
    move |source| Error::Netlink { what, source }
}

/// Creates interface number `n`'s tap and the filters joining the two; a macvtap's own
/// queues are opened instead.
async fn connect(handle: &Handle, interface: Interface, n: usize, queues: u16) -> Result<Endpoint> {
    let model = model(&interface)?;
    if model == EndpointModel::MacVtap {
        return connect_macvtap(handle, interface, queues).await;
    }
    let tap_name = format!("hull_tap{n}");
    let tap_fds = tap::create(&tap_name, queues)?;
    let tap_index = handle
        .link()
        .get()
        .match_name(tap_name.clone())
        .execute()
        .try_next()
        .await
        .map_err(netlink(format!("finding tap {tap_name}")))?
        .ok_or_else(|| Error::Vanished(tap_name.clone()))?
        .header
        .index;
    let mut endpoint = Endpoint {
        interface,
        model,
        tap_name,
        tap_index,
        tap_fds,
        added_qdisc: false,
    };
    if let Err(error) = join(handle, &mut endpoint).await {
        if let Err(undo) = disconnect(handle, &endpoint).await {
            tracing::warn!(tap = endpoint.tap_name, "undoing: {undo}");
        }
        return Err(error);
    }
    Ok(endpoint)
}

/// A macvtap's queues, the interface brought up (the guest's NIC is as up as it is).
async fn connect_macvtap(handle: &Handle, interface: Interface, queues: u16) -> Result<Endpoint> {
    let tap_fds = macvtap::open_queues(&interface.name, interface.index, queues)?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(interface.index).up().build())
        .execute()
        .await
        .map_err(netlink(format!("bringing up {}", interface.name)))?;
    Ok(Endpoint {
        model: EndpointModel::MacVtap,
        tap_name: interface.name.clone(),
        tap_index: interface.index,
        tap_fds,
        added_qdisc: false,
        interface,
    })
}

async fn join(handle: &Handle, endpoint: &mut Endpoint) -> Result<()> {
    let (name, index, mtu) = (
        endpoint.interface.name.clone(),
        endpoint.interface.index,
        endpoint.interface.mtu,
    );
    let tap = endpoint.tap_index;
    handle
        .link()
        .set(LinkUnspec::new_with_index(tap).mtu(mtu).up().build())
        .execute()
        .await
        .map_err(netlink(format!(
            "setting MTU {mtu} and bringing up {}",
            endpoint.tap_name
        )))?;
    endpoint.added_qdisc = add_ingress_qdisc(handle, index)
        .await
        .map_err(netlink(format!("adding an ingress qdisc to {name}")))?;
    add_ingress_qdisc(handle, tap)
        .await
        .map_err(netlink(format!(
            "adding an ingress qdisc to {}",
            endpoint.tap_name
        )))?;
    for (from, to, what) in [(index, tap, &name), (tap, index, &endpoint.tap_name)] {
        handle
            .traffic_filter(from as i32)
            .add()
            .parent(INGRESS_HANDLE)
            .priority(FILTER_PRIORITY)
            .protocol(PROTOCOL_ALL)
            .redirect(to)
            .map_err(netlink(format!("building the redirect filter of {what}")))?
            .execute()
            .await
            .map_err(netlink(format!("adding the redirect filter to {what}")))?;
    }
    Ok(())
}

/// Adds an ingress qdisc to `index`; answers whether it was added (false: one was there).
async fn add_ingress_qdisc(
    handle: &Handle,
    index: u32,
) -> std::result::Result<bool, rtnetlink::Error> {
    match handle.qdisc().add(index as i32).ingress().execute().await {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(message)) if message.raw_code() == -libc::EEXIST => {
            Ok(false)
        }
        Err(error) => Err(error),
    }
}

/// Removes what [`join`] added to the pod's interface. The tap's own qdisc and filter go
/// with the tap.
async fn disconnect(handle: &Handle, endpoint: &Endpoint) -> Result<()> {
    if endpoint.model == EndpointModel::MacVtap {
        return Ok(());
    }
    disconnect_recorded(handle, &endpoint.recorded()).await
}

async fn disconnect_recorded(handle: &Handle, interface: &RecordedInterface) -> Result<()> {
    let index = interface.index as i32;
    let result = if interface.added_qdisc {
        let mut request = handle.qdisc().del(index);
        request.message_mut().header.parent = TcHandle::INGRESS;
        request.message_mut().header.handle = TcHandle::from(INGRESS_HANDLE);
        request.execute().await
    } else {
        delete_filter(handle, index, FILTER_PRIORITY).await
    };
    match result {
        Ok(()) => Ok(()),
        // Already gone (the interface or the qdisc was removed meanwhile): nothing is left.
        Err(rtnetlink::Error::NetlinkError(message))
            if [-libc::ENOENT, -libc::ENODEV, -libc::EINVAL].contains(&message.raw_code()) =>
        {
            Ok(())
        }
        Err(source) => Err(Error::Netlink {
            what: format!("removing hull's ingress redirect from {}", interface.name),
            source,
        }),
    }
}

/// `tc filter del dev INDEX parent ffff: prio PRIORITY`: rtnetlink's delete request cannot
/// name a priority, so the message is built here.
async fn delete_filter(
    handle: &Handle,
    index: i32,
    priority: u16,
) -> std::result::Result<(), rtnetlink::Error> {
    let mut message = TcMessage::with_index(index);
    message.header.parent = TcHandle::from(INGRESS_HANDLE);
    message.header.info = (u32::from(priority) << 16) | u32::from(PROTOCOL_ALL);
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::DelTrafficFilter(message));
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut handle = handle.clone();
    let mut responses = handle.request(request)?;
    while let Some(response) = responses.next().await {
        if let NetlinkPayload::Error(error) = response.payload {
            if error.code.is_some() {
                return Err(rtnetlink::Error::NetlinkError(error));
            }
        }
    }
    Ok(())
}
