//! Pod networking on the host side, in network namespaces these tests create: the pod's
//! interfaces are found, each is joined to a tap by tc redirects, frames cross in both
//! directions, and detaching (or failing) leaves the namespace as it was.
//!
//! Each test builds a "pod" namespace holding `eth0`, one end of a veth pair whose other end,
//! `peer0`, lives in a "peer" namespace playing the host's bridge side. Link-local addresses
//! only; nothing touches the host's own namespace.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use hull_shim::network::{netns, Error, LinkKind, PodNetwork};
use hull_shim::vm_spec::VmDevice;
use hull_tests::netns::{ip, run, Netns, PodNetns};
use hull_tests::prereq::{self, find_program, Missing};
use hull_tests::require;

/// An experimental EtherType (IEEE 802 local use), so no stack answers the test's frames.
const TEST_ETHERTYPE: u16 = 0x88b5;
/// The virtio-net header the tap puts before each frame (IFF_VNET_HDR, no mergeable buffers).
const VNET_HDR_LEN: usize = 10;

fn prerequisites() -> Result<(), Missing> {
    prereq::root()?;
    prereq::tun()?;
    find_program("ip", "iproute2")?;
    find_program("tc", "iproute2")?;
    Ok(())
}

fn mac_of(netns: &Netns, device: &str) -> [u8; 6] {
    let bytes: Vec<u8> = netns
        .mac(device)
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect();
    bytes.try_into().expect("6 bytes")
}

fn frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    frame.extend_from_slice(payload);
    frame.resize(frame.len().max(60), 0);
    frame
}

/// Waits until `fd` is readable, for at most 5 seconds.
fn readable(fd: BorrowedFd<'_>) -> bool {
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, and its count.
    let n = unsafe { libc::poll(&mut poll, 1, 5000) };
    n == 1
}

/// Reads frames from `fd` until one of the test's EtherType arrives (the pod's interface also
/// sends IPv6 neighbour discovery, which the tap gets too); answers it, or None on timeout.
fn receive_test_frame(fd: BorrowedFd<'_>, skip: usize) -> Option<Vec<u8>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut buffer = vec![0u8; 65536];
    while std::time::Instant::now() < deadline {
        if !readable(fd) {
            return None;
        }
        // SAFETY: reads into a live buffer of the given length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
        let Ok(n) = usize::try_from(n) else {
            return None;
        };
        let frame = &buffer[skip.min(n)..n];
        if frame.len() >= 14 && frame[12..14] == TEST_ETHERTYPE.to_be_bytes() {
            return Some(frame.to_vec());
        }
    }
    None
}

/// An AF_PACKET socket bound to `device` of the calling thread's namespace, receiving the
/// test's EtherType.
fn packet_socket(device: &str) -> std::io::Result<OwnedFd> {
    let protocol = TEST_ETHERTYPE.to_be();
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new socket this function owns.
    let socket = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let name = std::ffi::CString::new(device).expect("no NUL");
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: sockaddr_ll is plain data; zero is a valid value for every field.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = protocol;
    address.sll_ifindex = index as i32;
    // SAFETY: binds the socket to a fully initialised sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&address as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(socket)
}

/// The first frame of the test's EtherType on any of a tap's `queues` (the kernel picks the
/// queue by flow), after its virtio-net header; None after 5 seconds.
fn receive_on_any(queues: &[OwnedFd]) -> Option<Vec<u8>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        let mut polls: Vec<libc::pollfd> = queues
            .iter()
            .map(|q| libc::pollfd {
                fd: q.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: a live array of pollfds, and its length.
        let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 500) };
        if n <= 0 {
            continue;
        }
        for (poll, queue) in polls.iter().zip(queues) {
            if poll.revents & libc::POLLIN != 0 {
                if let Some(frame) = receive_test_frame(queue.as_fd(), VNET_HDR_LEN) {
                    return Some(frame);
                }
            }
        }
    }
    None
}

fn write_all(fd: BorrowedFd<'_>, bytes: &[u8]) {
    // SAFETY: writes from a live buffer of the given length.
    let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    assert_eq!(
        n,
        bytes.len() as isize,
        "{}",
        std::io::Error::last_os_error()
    );
}

#[test]
fn attaches_a_veth_and_carries_frames_both_ways_then_leaves_nothing() {
    let test = "attaches_a_veth_and_carries_frames_both_ways_then_leaves_nothing";
    require!(test, prerequisites());
    let PodNetns { pod, peer } = PodNetns::new("carry");
    let eth0_mac = mac_of(&pod, "eth0");
    let peer_mac = mac_of(&peer, "peer0");

    let network = PodNetwork::attach(&pod.path(), 1).expect("attach");
    assert_eq!(network.netns(), pod.path());
    assert_eq!(network.endpoints.len(), 1, "{:?}", network.endpoints);
    let endpoint = &network.endpoints[0];
    assert_eq!(endpoint.interface.name, "eth0");
    assert_eq!(endpoint.interface.kind, LinkKind::Veth);
    assert_eq!(endpoint.interface.mtu, 1400);
    assert_eq!(endpoint.interface.mac, eth0_mac);
    let addresses: Vec<String> = endpoint
        .interface
        .addresses
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(addresses, ["169.254.77.2/24"]);
    let default = network
        .routes
        .iter()
        .find(|r| r.destination.is_none())
        .expect("the default route");
    assert_eq!(default.gateway, Some("169.254.77.1".parse().expect("ip")));
    assert_eq!(default.device, "eth0");
    // The subnet route the kernel derives from the address is the guest kernel's to derive.
    assert_eq!(network.routes.len(), 1, "{:?}", network.routes);
    assert_eq!(endpoint.tap_fds.len(), 1);
    let tap_line = ip(&["-n", pod.name(), "-o", "link", "show", &endpoint.tap_name]);
    assert!(tap_line.contains("mtu 1400"), "{tap_line}");
    assert!(tap_line.contains(",UP"), "{tap_line}");
    assert!(pod.has_ingress_qdisc("eth0"));

    // What the VM and the guest agent are told.
    let hw_addr = eth0_mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let interfaces = network.guest_interfaces();
    assert_eq!(interfaces.len(), 1);
    assert_eq!(
        (
            interfaces[0].hw_addr.as_str(),
            interfaces[0].name.as_str(),
            interfaces[0].mtu
        ),
        (hw_addr.as_str(), "eth0", 1400)
    );
    let guest_addresses: Vec<(String, u32)> = interfaces[0]
        .addresses
        .iter()
        .map(|a| (a.address.clone(), a.prefix_len))
        .collect();
    assert_eq!(guest_addresses, [("169.254.77.2".to_string(), 24)]);
    let routes = network.guest_routes().routes;
    assert_eq!(routes.len(), 1);
    assert_eq!(
        (
            routes[0].destination.as_str(),
            routes[0].gateway.as_str(),
            routes[0].device.as_str()
        ),
        ("", "169.254.77.1", "eth0")
    );
    assert_eq!(
        network.vm_devices(),
        [VmDevice::Tap {
            fds: vec![endpoint.tap_fds[0].as_raw_fd()],
            mac: eth0_mac,
        }]
    );

    // peer0 → eth0 → (redirect) → the tap, where the VM would read it.
    let tap = endpoint.tap_fds[0].try_clone().expect("dup");
    let sent = frame(eth0_mac, peer_mac, b"hull: towards the guest");
    netns::run_in(&peer.path(), || {
        let socket = packet_socket("peer0").expect("packet socket");
        write_all(socket.as_fd_borrowed(), &sent);
        Ok(())
    })
    .expect("send from the peer");
    let received = receive_test_frame(std::os::fd::AsFd::as_fd(&tap), VNET_HDR_LEN)
        .expect("the frame comes out of the tap");
    assert_eq!(received[..sent.len()], sent[..]);

    // The VM writes to the tap → (redirect) → eth0 → peer0.
    let back = frame(peer_mac, eth0_mac, b"hull: from the guest");
    let received = netns::run_in(&peer.path(), || {
        let socket = packet_socket("peer0").expect("packet socket");
        let mut with_header = vec![0u8; VNET_HDR_LEN];
        with_header.extend_from_slice(&back);
        write_all(std::os::fd::AsFd::as_fd(&tap), &with_header);
        Ok(receive_test_frame(socket.as_fd_borrowed(), 0))
    })
    .expect("receive at the peer")
    .expect("the frame reaches peer0");
    assert_eq!(received[..back.len()], back[..]);
    drop(tap);

    network.detach().expect("detach");
    assert!(!pod.has_link("hull_tap0"), "the tap is gone");
    assert!(!pod.has_ingress_qdisc("eth0"), "hull's qdisc is gone");
    assert!(pod.has_link("eth0"), "the pod's own interface stays");
}

/// BorrowedFd from an OwnedFd without naming the trait at every call.
trait Borrowed {
    fn as_fd_borrowed(&self) -> BorrowedFd<'_>;
}

impl Borrowed for OwnedFd {
    fn as_fd_borrowed(&self) -> BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self)
    }
}

#[test]
fn an_ingress_qdisc_found_on_the_interface_stays_with_its_filters() {
    let test = "an_ingress_qdisc_found_on_the_interface_stays_with_its_filters";
    require!(test, prerequisites());
    let PodNetns { pod, peer: _peer } = PodNetns::new("qdisc");
    run(
        "tc",
        &["-n", pod.name(), "qdisc", "add", "dev", "eth0", "ingress"],
    )
    .expect("tc qdisc add");
    run(
        "tc",
        &[
            "-n",
            pod.name(),
            "filter",
            "add",
            "dev",
            "eth0",
            "parent",
            "ffff:",
            "prio",
            "7",
            "protocol",
            "ip",
            "u32",
            "match",
            "u32",
            "0",
            "0",
        ],
    )
    .expect("tc filter add");

    let network = PodNetwork::attach(&pod.path(), 2).expect("attach");
    assert_eq!(network.endpoints[0].tap_fds.len(), 2, "one fd per queue");
    let filters = run(
        "tc",
        &["-n", pod.name(), "filter", "show", "dev", "eth0", "ingress"],
    )
    .expect("tc filter show");
    assert!(filters.contains("mirred"), "{filters}");
    network.detach().expect("detach");

    let filters = run(
        "tc",
        &["-n", pod.name(), "filter", "show", "dev", "eth0", "ingress"],
    )
    .expect("tc filter show");
    assert!(
        filters.contains("pref 7"),
        "the pod's own filter stays: {filters}"
    );
    assert!(
        !filters.contains("mirred"),
        "hull's filter is gone: {filters}"
    );
    assert!(!pod.has_link("hull_tap0"));
}

#[test]
fn an_unsupported_interface_is_refused_by_name_and_nothing_is_left() {
    let test = "an_unsupported_interface_is_refused_by_name_and_nothing_is_left";
    require!(test, prerequisites());
    let PodNetns { pod, peer: _peer } = PodNetns::new("dummy");
    // A bridge (dummy, vxlan and the like are kernel modules this host may lack).
    ip(&["-n", pod.name(), "link", "add", "odd0", "type", "bridge"]);

    let error = PodNetwork::attach(&pod.path(), 1).expect_err("a bridge is refused");
    assert!(
        matches!(&error, Error::UnsupportedKind { name, kind } if name == "odd0" && kind == "bridge"),
        "{error:?}"
    );
    assert!(error.to_string().contains("odd0"), "{error}");
    assert!(!pod.has_link("hull_tap0"));
    assert!(!pod.has_link("hull_tap1"));
    assert!(!pod.has_ingress_qdisc("eth0"));
}

#[test]
fn a_missing_namespace_is_named_in_the_error() {
    let missing = PathBuf::from(format!(
        "/var/run/netns/hull-test-missing-{}",
        std::process::id()
    ));
    let error = PodNetwork::attach(&missing, 1).expect_err("no such namespace");
    assert!(matches!(error, Error::OpenNetns { .. }), "{error:?}");
    assert!(
        error.to_string().contains(&missing.display().to_string()),
        "{error}"
    );
}

#[test]
fn a_file_that_is_not_a_network_namespace_is_refused() {
    let test = "a_file_that_is_not_a_network_namespace_is_refused";
    require!(test, prereq::root());
    let error = PodNetwork::attach(std::path::Path::new("/proc/self/ns/mnt"), 1)
        .expect_err("a mount namespace is not a network namespace");
    assert!(matches!(error, Error::EnterNetns { .. }), "{error:?}");
}

#[test]
fn a_macvlan_interface_gets_an_endpoint_too() {
    let test = "a_macvlan_interface_gets_an_endpoint_too";
    require!(test, prerequisites());
    let PodNetns { pod, peer: _peer } = PodNetns::new("macvlan");
    ip(&[
        "-n",
        pod.name(),
        "link",
        "add",
        "mv0",
        "link",
        "eth0",
        "type",
        "macvlan",
    ]);
    ip(&["-n", pod.name(), "link", "set", "mv0", "up"]);
    a_second_interface_is_joined_by_tc_filters(&pod, "mv0", LinkKind::MacVlan);
}

/// Attaches the pod's network (its `eth0` and `name` of `kind`), checks both got a tap joined
/// by tc filters, then that detaching removes the filters and the taps.
fn a_second_interface_is_joined_by_tc_filters(pod: &Netns, name: &str, kind: LinkKind) {
    let network = PodNetwork::attach(&pod.path(), 1).expect("attach");
    let kinds: Vec<(String, LinkKind, String)> = network
        .endpoints
        .iter()
        .map(|e| {
            (
                e.interface.name.clone(),
                e.interface.kind.clone(),
                e.tap_name.clone(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("eth0".to_string(), LinkKind::Veth, "hull_tap0".to_string()),
            (name.to_string(), kind, "hull_tap1".to_string()),
        ]
    );
    assert!(pod.has_ingress_qdisc(name));
    network.detach().expect("detach");
    assert!(!pod.has_ingress_qdisc(name));
    assert!(!pod.has_link("hull_tap1"));
}

/// A macvtap in the pod's namespace (as the macvtap CNI plugin leaves one: made on a host
/// interface, then moved in) serves the NIC on its own queues: no tap, no filter. Here the
/// macvtap's lower device is `peer0`, the other end of the pod's veth, so a frame the guest
/// would send through the macvtap comes back into the pod's `eth0` and through its tcfilter
/// endpoint, and the reverse: both models carry frames, in both directions.
#[test]
fn a_macvtap_serves_the_nic_on_its_own_queues_and_is_left_as_it_was() {
    let test = "a_macvtap_serves_the_nic_on_its_own_queues_and_is_left_as_it_was";
    require!(test, prerequisites());
    let PodNetns { pod, peer } = PodNetns::new("macvtap");
    ip(&[
        "-n",
        peer.name(),
        "link",
        "add",
        "mvt0",
        "link",
        "peer0",
        "type",
        "macvtap",
        "mode",
        "bridge",
    ]);
    ip(&[
        "-n",
        peer.name(),
        "link",
        "set",
        "mvt0",
        "netns",
        pod.name(),
    ]);
    ip(&["-n", pod.name(), "link", "set", "mvt0", "mtu", "1400"]);
    let eth0_mac = mac_of(&pod, "eth0");
    let mvt0_mac = mac_of(&pod, "mvt0");

    let network = PodNetwork::attach(&pod.path(), 2).expect("attach");
    let kinds: Vec<(String, LinkKind, String, usize)> = network
        .endpoints
        .iter()
        .map(|e| {
            (
                e.interface.name.clone(),
                e.interface.kind.clone(),
                e.tap_name.clone(),
                e.tap_fds.len(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (
                "eth0".to_string(),
                LinkKind::Veth,
                "hull_tap0".to_string(),
                2
            ),
            ("mvt0".to_string(), LinkKind::MacVtap, "mvt0".to_string(), 2),
        ]
    );
    assert_eq!(
        network.endpoints[1].model,
        hull_shim::network::EndpointModel::MacVtap
    );
    assert!(!pod.has_ingress_qdisc("mvt0"), "no filter on a macvtap");
    assert!(!pod.has_link("hull_tap1"), "no tap is made for a macvtap");
    assert!(
        ip(&["-n", pod.name(), "-o", "link", "show", "mvt0"]).contains(",UP"),
        "the macvtap is brought up"
    );
    let guest: Vec<(String, u32)> = network
        .guest_interfaces()
        .iter()
        .map(|i| (i.hw_addr.clone(), i.mtu))
        .collect();
    let mvt0_text = pod.mac("mvt0");
    assert!(
        guest.contains(&(mvt0_text.clone(), 1400)),
        "the guest's NIC takes the macvtap's MAC and MTU: {guest:?}"
    );
    assert_eq!(
        network.recorded().interfaces.len(),
        1,
        "only the veth's filters need undoing after a crash"
    );

    let (tap0, macvtap) = (&network.endpoints[0].tap_fds, &network.endpoints[1].tap_fds);
    // Out of the macvtap (what its guest sends), in through eth0 to hull_tap0.
    let out = frame(eth0_mac, mvt0_mac, b"out of the macvtap");
    write_all(
        macvtap[0].as_fd(),
        &[vec![0; VNET_HDR_LEN], out.clone()].concat(),
    );
    assert_eq!(
        receive_on_any(tap0).as_deref(),
        Some(&out[..]),
        "{test}: the macvtap's frame leaves through its lower device"
    );
    // Out of hull_tap0, through eth0 and peer0, into the macvtap's queues.
    let back = frame(mvt0_mac, eth0_mac, b"into the macvtap");
    write_all(
        tap0[0].as_fd(),
        &[vec![0; VNET_HDR_LEN], back.clone()].concat(),
    );
    assert_eq!(
        receive_on_any(macvtap).as_deref(),
        Some(&back[..]),
        "{test}: a frame for the macvtap's MAC reaches one of its queues"
    );

    network.detach().expect("detach");
    assert!(pod.has_link("mvt0"), "the macvtap is the pod's: it stays");
    assert!(!pod.has_ingress_qdisc("eth0"));
    assert!(!pod.has_link("hull_tap0"));
}

/// An ipvlan is joined like a veth (Kata's tcfilter model for ipvlan too). Kernels built
/// without CONFIG_IPVLAN (this test machine's) cannot make one: the test skips saying so.
#[test]
fn an_ipvlan_interface_gets_an_endpoint_too() {
    let test = "an_ipvlan_interface_gets_an_endpoint_too";
    require!(test, prerequisites());
    let PodNetns { pod, peer: _peer } = PodNetns::new("ipvlan");
    if let Err(error) = run(
        "ip",
        &[
            "-n",
            pod.name(),
            "link",
            "add",
            "iv0",
            "link",
            "eth0",
            "type",
            "ipvlan",
            "mode",
            "l2",
        ],
    ) {
        require!(
            test,
            Err::<(), _>(Missing::hardware(
                "ipvlan in the host kernel",
                format!("a kernel with CONFIG_IPVLAN; `ip link add type ipvlan` said: {error}"),
            ))
        );
    }
    ip(&["-n", pod.name(), "link", "set", "iv0", "up"]);
    a_second_interface_is_joined_by_tc_filters(&pod, "iv0", LinkKind::IpVlan);
}

/// A shim that dies leaves its filters on the pod's interface (its taps die with its
/// descriptors); the sandbox record keeps what `shim delete` needs to remove them.
#[test]
fn the_sandbox_record_removes_a_dead_shims_filters() {
    let test = "the_sandbox_record_removes_a_dead_shims_filters";
    require!(test, prerequisites());
    let PodNetns { pod, peer: _peer } = PodNetns::new("record");
    let mut network = PodNetwork::attach(&pod.path(), 1).expect("attach");
    let mut record = hull_shim::sandbox::persist::SandboxRecord::new("record-test");
    record.network = Some(network.recorded());
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("sandbox.json");
    record.save(&path).expect("saving the record");

    // The shim dies: its descriptors close (the tap goes), nothing else is undone.
    for endpoint in &mut network.endpoints {
        endpoint.tap_fds.clear();
    }
    std::mem::forget(network);
    assert!(
        !pod.has_link("hull_tap0"),
        "a tap dies with its last descriptor"
    );
    assert!(
        pod.has_ingress_qdisc("eth0"),
        "the filters outlive the shim"
    );

    let loaded = hull_shim::sandbox::persist::SandboxRecord::load(&path).expect("loading");
    let report = loaded.cleanup();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(
        !pod.has_ingress_qdisc("eth0"),
        "shim delete removed the filters"
    );
    assert!(pod.has_link("eth0"));
    // Again, or after the namespace is gone: nothing to do, no error.
    assert!(loaded.cleanup().errors.is_empty());
    drop(pod);
    assert!(loaded.cleanup().errors.is_empty());
}

/// An interface added to the pod's namespace after the VM started is named, with why it
/// cannot reach the VM (no NIC hotplug) and what to do; the pod's own interface and hull's
/// tap are not reported.
#[test]
fn an_interface_added_after_the_start_is_refused_by_name() {
    let test = "an_interface_added_after_the_start_is_refused_by_name";
    require!(test, prerequisites());
    let PodNetns { pod, peer: _peer } = PodNetns::new("hotplug");
    let network = PodNetwork::attach(&pod.path(), 1).expect("attach");
    let known = network.known();
    assert_eq!(known.added().expect("scan"), Vec::<String>::new());
    known
        .refuse_added("QEMU microvm")
        .expect("nothing added yet");

    ip(&[
        "-n",
        pod.name(),
        "link",
        "add",
        "late0",
        "type",
        "veth",
        "peer",
        "name",
        "late1",
    ]);
    let mut added = known.added().expect("scan");
    added.sort();
    assert_eq!(added, ["late0", "late1"]);
    let error = known
        .refuse_added("QEMU microvm")
        .expect_err("an added interface is refused");
    let text = error.to_string();
    assert!(
        matches!(error, Error::HotplugUnsupported { .. }),
        "{error:?}"
    );
    for part in [
        "late0",
        "late1",
        "QEMU microvm",
        "hot-plug",
        "recreate the pod",
    ] {
        assert!(text.contains(part), "{part} missing: {text}");
    }
    network.detach().expect("detach");
    assert!(!pod.has_link("hull_tap0"), "the tap went with the network");
}
