//! UpdateInterface, UpdateRoutes and ListInterfaces of a host-mode hull-agent running in a
//! network namespace the test creates (`ip netns exec`), checked with `ip` from outside, as a
//! guest's network would be: the interface with the given MAC is renamed, takes its MTU and
//! addresses and comes up; the routing table becomes the list sent. Bad requests change
//! nothing and name the field; outside a namespace of its own the agent refuses.

use std::path::Path;
use std::time::Duration;

use hull_agent_protocol::agent::*;
use hull_agent_protocol::ttrpc::r#async::Client;
use hull_agent_protocol::ttrpc::{self, context, Code};
use hull_agent_protocol::types::{Interface, IpAddress, IpFamily, Route, Routes};
use hull_agent_protocol::AgentServiceClient;
use hull_tests::host_agent::HostAgent;
use hull_tests::netns::{ip, Netns};
use hull_tests::prereq::{self, find_program, Missing};
use hull_tests::require;

fn prerequisites() -> Result<(), Missing> {
    prereq::root()?;
    find_program("ip", "iproute2")?;
    Ok(())
}

/// A namespace of its own with one veth end, `ve0` (its peer `ve1` beside it).
fn netns(label: &str) -> Netns {
    let netns = Netns::new(&format!("agent-{label}"));
    ip(&[
        "-n",
        netns.name(),
        "link",
        "add",
        "ve0",
        "type",
        "veth",
        "peer",
        "name",
        "ve1",
    ]);
    ip(&["-n", netns.name(), "link", "set", "ve1", "up"]);
    netns
}

fn agent_in(netns: &Netns, test: &str) -> HostAgent {
    HostAgent::start(
        Path::new(env!("CARGO_BIN_EXE_hull-agent")),
        test,
        &["ip", "netns", "exec", netns.name()],
        &[],
    )
}

async fn client(agent: &HostAgent) -> AgentServiceClient {
    AgentServiceClient::new(
        Client::connect(&agent.address())
            .await
            .expect("connecting to the agent"),
    )
}

fn ctx() -> context::Context {
    context::with_timeout(Duration::from_secs(10).as_nanos() as i64)
}

fn status_of<T: std::fmt::Debug>(result: ttrpc::Result<T>) -> (Code, String) {
    match result {
        Err(ttrpc::Error::RpcStatus(status)) => (status.code(), status.message().to_owned()),
        other => panic!("expected an error status, got {other:?}"),
    }
}

fn address(family: IpFamily, address: &str, prefix_len: u32) -> IpAddress {
    IpAddress {
        family: family.into(),
        address: address.into(),
        prefix_len,
        ..Default::default()
    }
}

fn route(destination: &str, gateway: &str, device: &str, scope: u32) -> Route {
    Route {
        family: IpFamily::IP_FAMILY_V4.into(),
        destination: destination.into(),
        gateway: gateway.into(),
        device: device.into(),
        scope,
        ..Default::default()
    }
}

fn update_interface(interface: Interface) -> UpdateInterfaceRequest {
    let mut request = UpdateInterfaceRequest::new();
    request.interface = Some(interface).into();
    request
}

fn update_routes(routes: Vec<Route>) -> UpdateRoutesRequest {
    let mut request = UpdateRoutesRequest::new();
    request.routes = Some(Routes {
        routes,
        ..Default::default()
    })
    .into();
    request
}

#[tokio::test(flavor = "current_thread")]
async fn the_interface_with_the_mac_takes_name_mtu_addresses_and_routes() {
    let test = "the_interface_with_the_mac_takes_name_mtu_addresses_and_routes";
    require!(test, prerequisites());
    let netns = netns("configure");
    let mac = netns.mac("ve0");
    let agent = agent_in(&netns, "configure");
    let client = client(&agent).await;

    let listed = client
        .list_interfaces(ctx(), &ListInterfacesRequest::new())
        .await
        .expect("ListInterfaces");
    let names: Vec<&str> = listed.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert!(names.contains(&"ve0") && names.contains(&"lo"), "{names:?}");
    let ve0 = listed
        .interfaces
        .iter()
        .find(|i| i.name == "ve0")
        .expect("ve0 is listed");
    assert_eq!(ve0.hw_addr, mac);

    let updated = client
        .update_interface(
            ctx(),
            &update_interface(Interface {
                hw_addr: mac.to_uppercase(),
                name: "eth0".into(),
                mtu: 1400,
                addresses: vec![
                    address(IpFamily::IP_FAMILY_V4, "169.254.9.2", 24),
                    address(IpFamily::IP_FAMILY_V6, "fd00:9::2", 64),
                ],
                ..Default::default()
            }),
        )
        .await
        .expect("UpdateInterface");
    assert_eq!(updated.name, "eth0");
    assert_eq!(updated.mtu, 1400);
    assert_ne!(updated.raw_flags & libc::IFF_UP as u32, 0, "eth0 is up");
    let link = ip(&["-n", netns.name(), "-o", "link", "show", "eth0"]);
    assert!(link.contains("mtu 1400") && link.contains(&mac), "{link}");
    let addresses = ip(&["-n", netns.name(), "-o", "addr", "show", "dev", "eth0"]);
    assert!(addresses.contains("inet 169.254.9.2/24"), "{addresses}");
    assert!(addresses.contains("inet6 fd00:9::2/64"), "{addresses}");

    // Sending the interface again with other addresses replaces them.
    client
        .update_interface(
            ctx(),
            &update_interface(Interface {
                hw_addr: mac.clone(),
                addresses: vec![address(IpFamily::IP_FAMILY_V4, "169.254.9.3", 24)],
                ..Default::default()
            }),
        )
        .await
        .expect("UpdateInterface again");
    let addresses = ip(&["-n", netns.name(), "-o", "addr", "show", "dev", "eth0"]);
    assert!(addresses.contains("inet 169.254.9.3/24"), "{addresses}");
    assert!(!addresses.contains("169.254.9.2/"), "{addresses}");
    assert!(!addresses.contains("fd00:9::2"), "{addresses}");

    let routes = client
        .update_routes(
            ctx(),
            &update_routes(vec![
                // Listed before the route that uses it as a gateway: the agent orders them.
                route("10.9.0.0/16", "169.254.9.1", "eth0", 0),
                route("", "169.254.9.1", "eth0", 0),
                route("192.0.2.0/24", "", "eth0", 253),
            ]),
        )
        .await
        .expect("UpdateRoutes");
    assert_eq!(routes.routes.len(), 3, "{:?}", routes.routes);
    let table = ip(&["-n", netns.name(), "route", "show"]);
    assert!(
        table.contains("default via 169.254.9.1 dev eth0"),
        "{table}"
    );
    assert!(
        table.contains("10.9.0.0/16 via 169.254.9.1 dev eth0"),
        "{table}"
    );
    assert!(table.contains("192.0.2.0/24 dev eth0"), "{table}");

    // The table becomes what is sent: routes not sent again are gone.
    client
        .update_routes(
            ctx(),
            &update_routes(vec![route("", "169.254.9.1", "eth0", 0)]),
        )
        .await
        .expect("UpdateRoutes again");
    let table = ip(&["-n", netns.name(), "route", "show"]);
    assert!(
        table.contains("default via 169.254.9.1 dev eth0"),
        "{table}"
    );
    assert!(!table.contains("10.9.0.0/16"), "{table}");
    assert!(!table.contains("192.0.2.0/24"), "{table}");
    // The subnet route the kernel derives from the address stays.
    assert!(table.contains("169.254.9.0/24 dev eth0"), "{table}");
}

#[tokio::test(flavor = "current_thread")]
async fn bad_requests_name_the_field_and_change_nothing() {
    let test = "bad_requests_name_the_field_and_change_nothing";
    require!(test, prerequisites());
    let netns = netns("bad");
    let mac = netns.mac("ve0");
    let agent = agent_in(&netns, "bad");
    let client = client(&agent).await;
    let before = ip(&["-n", netns.name(), "-o", "addr", "show"]);

    let cases = [
        (
            Interface {
                hw_addr: "02:00:00:00:00".into(),
                ..Default::default()
            },
            Code::INVALID_ARGUMENT,
            "interface.hw_addr",
        ),
        (
            Interface {
                hw_addr: "02:00:00:00:00:99".into(),
                ..Default::default()
            },
            Code::NOT_FOUND,
            "02:00:00:00:00:99",
        ),
        (
            Interface {
                hw_addr: mac.clone(),
                name: "a/b".into(),
                ..Default::default()
            },
            Code::INVALID_ARGUMENT,
            "interface.name",
        ),
        (
            Interface {
                hw_addr: mac.clone(),
                addresses: vec![
                    address(IpFamily::IP_FAMILY_V4, "169.254.9.2", 24),
                    address(IpFamily::IP_FAMILY_V4, "fd00::1", 64),
                ],
                ..Default::default()
            },
            Code::INVALID_ARGUMENT,
            "interface.addresses[1]",
        ),
    ];
    for (interface, code, names) in cases {
        let (got, message) = status_of(
            client
                .update_interface(ctx(), &update_interface(interface))
                .await,
        );
        assert_eq!(got, code, "{message}");
        assert!(
            message.contains("UpdateInterface") && message.contains(names),
            "{message}"
        );
    }
    assert_eq!(ip(&["-n", netns.name(), "-o", "addr", "show"]), before);
    assert!(ip(&["-n", netns.name(), "-o", "link", "show", "ve0"]).contains("ve0"));

    let (code, message) = status_of(
        client
            .update_routes(
                ctx(),
                &update_routes(vec![route("", "169.254.9.1", "nope0", 0)]),
            )
            .await,
    );
    assert_eq!(code, Code::NOT_FOUND, "{message}");
    assert!(message.contains("routes[0].device"), "{message}");
    let (code, message) = status_of(
        client
            .update_routes(
                ctx(),
                &update_routes(vec![route("10.0.0.0", "", "ve0", 253)]),
            )
            .await,
    );
    assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");
    assert!(message.contains("routes[0].destination"), "{message}");
}

#[tokio::test(flavor = "current_thread")]
async fn in_the_hosts_own_namespace_the_agent_refuses_to_change_the_network() {
    let test = "in_the_hosts_own_namespace_the_agent_refuses_to_change_the_network";
    require!(test, prereq::root());
    let agent = HostAgent::start(
        Path::new(env!("CARGO_BIN_EXE_hull-agent")),
        "hostns",
        &[],
        &[],
    );
    let client = client(&agent).await;
    let (code, message) = status_of(
        client
            .update_routes(ctx(), &update_routes(Vec::new()))
            .await,
    );
    assert_eq!(code, Code::FAILED_PRECONDITION, "{message}");
    assert!(
        message.contains("host's own network namespace"),
        "{message}"
    );
    // Listing changes nothing and is allowed.
    client
        .list_interfaces(ctx(), &ListInterfacesRequest::new())
        .await
        .expect("ListInterfaces");
}
