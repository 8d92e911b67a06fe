//! The `agent_request` target: a request of any of the agent service's calls, decoded from
//! the bytes a shim (or whatever reaches the agent's vsock port) sends, and checked the way
//! the agent checks it before acting: CreateContainer into a [`ContainerRequest`] and its
//! spec's namespaces, CreateSandbox's storages, ExecProcess's and UpdateContainer's JSON,
//! UpdateInterface's and UpdateRoutes' addresses and names. What would act on the guest
//! (mounts, netlink, processes) is not reached.

use hull_agent::container::namespaces;
use hull_agent::container_request::{storage_requests, ContainerRequest};
use hull_agent::network::{check_name, parse_address, parse_cidr, parse_mac};
use hull_agent_protocol::agent::*;
use hull_agent_protocol::protobuf::Message;
use hull_agent_protocol::Call;
use libcontainer::oci_spec::runtime::{LinuxResources, Process as OciProcess};

/// Decodes `bytes` as `M`; whatever decodes must encode and decode again to itself (unknown
/// fields included), as the agent's replies and the shim's retries rely on.
fn decode<M: Message + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Option<M> {
    let message = M::parse_from_bytes(bytes).ok()?;
    let encoded = message.write_to_bytes().expect("a decoded message encodes");
    let again = M::parse_from_bytes(&encoded).expect("an encoded message decodes");
    assert_eq!(again, message, "a message changed through encoding");
    Some(message)
}

/// What the agent does with a CreateContainer request before creating anything.
fn create_container(request: CreateContainerRequest) {
    let Ok(checked) = ContainerRequest::try_from(request) else {
        return;
    };
    for storage in &checked.storages {
        assert!(storage.mount_point.is_absolute());
    }
    let Ok(mut spec) = serde_json::from_slice::<serde_json::Value>(&checked.spec_json) else {
        return;
    };
    if namespaces::cri_sandbox_of(&spec).is_some() {
        let _ = namespaces::join_sandbox(&mut spec, 42);
    }
}

/// `agent_request`: the first byte picks the call, the rest is its request.
pub fn agent_request(data: &[u8]) {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let call = Call::ALL[usize::from(which) % Call::ALL.len()];
    match call {
        Call::CreateSandbox => {
            if let Some(request) = decode::<CreateSandboxRequest>(bytes) {
                let _ = storage_requests(&request.storages);
            }
        }
        Call::CreateContainer => {
            if let Some(request) = decode::<CreateContainerRequest>(bytes) {
                create_container(request);
            }
        }
        Call::ExecProcess => {
            if let Some(request) = decode::<ExecProcessRequest>(bytes) {
                let _ = serde_json::from_slice::<OciProcess>(&request.process_json);
            }
        }
        Call::UpdateContainer => {
            if let Some(request) = decode::<UpdateContainerRequest>(bytes) {
                let _ = serde_json::from_slice::<LinuxResources>(&request.resources_json);
            }
        }
        Call::UpdateInterface => {
            if let Some(request) = decode::<UpdateInterfaceRequest>(bytes) {
                if let Some(interface) = request.interface.as_ref() {
                    let _ = parse_mac("interface.hw_addr", &interface.hw_addr);
                    let _ = check_name("interface.name", &interface.name);
                    for address in &interface.addresses {
                        let _ = parse_address("interface.addresses", address);
                    }
                }
            }
        }
        Call::UpdateRoutes => {
            if let Some(request) = decode::<UpdateRoutesRequest>(bytes) {
                if let Some(routes) = request.routes.as_ref() {
                    for route in &routes.routes {
                        let _ = parse_cidr("routes.destination", &route.destination);
                    }
                }
            }
        }
        Call::DestroySandbox => drop(decode::<DestroySandboxRequest>(bytes)),
        Call::StartContainer => drop(decode::<StartContainerRequest>(bytes)),
        Call::RemoveContainer => drop(decode::<RemoveContainerRequest>(bytes)),
        Call::PauseContainer => drop(decode::<PauseContainerRequest>(bytes)),
        Call::ResumeContainer => drop(decode::<ResumeContainerRequest>(bytes)),
        Call::StatsContainer => drop(decode::<StatsContainerRequest>(bytes)),
        Call::ListProcesses => drop(decode::<ListProcessesRequest>(bytes)),
        Call::SignalProcess => drop(decode::<SignalProcessRequest>(bytes)),
        Call::WaitProcess => drop(decode::<WaitProcessRequest>(bytes)),
        Call::RemoveProcess => drop(decode::<RemoveProcessRequest>(bytes)),
        Call::WriteStdin => drop(decode::<WriteStreamRequest>(bytes)),
        Call::ReadStdout | Call::ReadStderr => drop(decode::<ReadStreamRequest>(bytes)),
        Call::CloseStdin => drop(decode::<CloseStdinRequest>(bytes)),
        Call::TtyWinResize => drop(decode::<TtyWinResizeRequest>(bytes)),
        Call::GetOOMEvent => drop(decode::<GetOOMEventRequest>(bytes)),
        Call::ListInterfaces => drop(decode::<ListInterfacesRequest>(bytes)),
        Call::GetGuestDetails => drop(decode::<GuestDetailsRequest>(bytes)),
        Call::Check => drop(decode::<CheckRequest>(bytes)),
        Call::GetMetrics => drop(decode::<GetMetricsRequest>(bytes)),
        Call::SetGuestDateTime => drop(decode::<SetGuestDateTimeRequest>(bytes)),
        Call::CopyFile => drop(decode::<CopyFileRequest>(bytes)),
    }
}
