//! The protocol's messages on the wire: every request decodes hostile bytes without panicking,
//! and what one end encodes the other decodes unchanged, unknown fields included.

use hull_agent_protocol::agent::*;
use hull_agent_protocol::protobuf::Message;
use hull_agent_protocol::types::*;
use hull_agent_protocol::Call;
use proptest::prelude::*;

/// Decodes `bytes` as every request type of the service (and the response types the shim
/// decodes from the guest), and re-encodes whatever decoded.
fn decode_as_every_message(bytes: &[u8]) {
    macro_rules! decode_all {
        ($($ty:ty),+ $(,)?) => {$(
            if let Ok(message) = <$ty>::parse_from_bytes(bytes) {
                // Whatever decodes must encode again (unknown fields included).
                let encoded = message.write_to_bytes().expect("a decoded message encodes");
                let again = <$ty>::parse_from_bytes(&encoded).expect("an encoded message decodes");
                assert_eq!(again, message);
            }
        )+};
    }
    decode_all!(
        // Requests: what the agent decodes from the shim.
        CreateSandboxRequest,
        DestroySandboxRequest,
        CreateContainerRequest,
        StartContainerRequest,
        RemoveContainerRequest,
        PauseContainerRequest,
        ResumeContainerRequest,
        StatsContainerRequest,
        UpdateContainerRequest,
        ListProcessesRequest,
        ExecProcessRequest,
        SignalProcessRequest,
        WaitProcessRequest,
        RemoveProcessRequest,
        WriteStreamRequest,
        ReadStreamRequest,
        CloseStdinRequest,
        TtyWinResizeRequest,
        GetOOMEventRequest,
        UpdateInterfaceRequest,
        UpdateRoutesRequest,
        ListInterfacesRequest,
        GuestDetailsRequest,
        CheckRequest,
        GetMetricsRequest,
        SetGuestDateTimeRequest,
        CopyFileRequest,
        // Responses: what the shim decodes from a guest, which is just as hostile.
        Empty,
        StatsContainerResponse,
        ListProcessesResponse,
        WaitProcessResponse,
        WriteStreamResponse,
        ReadStreamResponse,
        OOMEvent,
        Interface,
        Interfaces,
        Routes,
        GuestDetailsResponse,
        CheckResponse,
        Metrics,
    );
}

/// Decodes `bytes` as the request of `call`, re-encoding whatever decoded. The match has no
/// wildcard: a call added to the service without its request here does not compile.
fn decode_request_of(call: Call, bytes: &[u8]) {
    fn round_trip<M: Message + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
        if let Ok(message) = M::parse_from_bytes(bytes) {
            let encoded = message.write_to_bytes().expect("a decoded message encodes");
            assert_eq!(
                M::parse_from_bytes(&encoded).expect("decodes again"),
                message
            );
        }
    }
    match call {
        Call::CreateSandbox => round_trip::<CreateSandboxRequest>(bytes),
        Call::DestroySandbox => round_trip::<DestroySandboxRequest>(bytes),
        Call::CreateContainer => round_trip::<CreateContainerRequest>(bytes),
        Call::StartContainer => round_trip::<StartContainerRequest>(bytes),
        Call::RemoveContainer => round_trip::<RemoveContainerRequest>(bytes),
        Call::PauseContainer => round_trip::<PauseContainerRequest>(bytes),
        Call::ResumeContainer => round_trip::<ResumeContainerRequest>(bytes),
        Call::StatsContainer => round_trip::<StatsContainerRequest>(bytes),
        Call::UpdateContainer => round_trip::<UpdateContainerRequest>(bytes),
        Call::ListProcesses => round_trip::<ListProcessesRequest>(bytes),
        Call::ExecProcess => round_trip::<ExecProcessRequest>(bytes),
        Call::SignalProcess => round_trip::<SignalProcessRequest>(bytes),
        Call::WaitProcess => round_trip::<WaitProcessRequest>(bytes),
        Call::RemoveProcess => round_trip::<RemoveProcessRequest>(bytes),
        Call::WriteStdin => round_trip::<WriteStreamRequest>(bytes),
        Call::ReadStdout | Call::ReadStderr => round_trip::<ReadStreamRequest>(bytes),
        Call::CloseStdin => round_trip::<CloseStdinRequest>(bytes),
        Call::TtyWinResize => round_trip::<TtyWinResizeRequest>(bytes),
        Call::GetOOMEvent => round_trip::<GetOOMEventRequest>(bytes),
        Call::UpdateInterface => round_trip::<UpdateInterfaceRequest>(bytes),
        Call::UpdateRoutes => round_trip::<UpdateRoutesRequest>(bytes),
        Call::ListInterfaces => round_trip::<ListInterfacesRequest>(bytes),
        Call::GetGuestDetails => round_trip::<GuestDetailsRequest>(bytes),
        Call::Check => round_trip::<CheckRequest>(bytes),
        Call::GetMetrics => round_trip::<GetMetricsRequest>(bytes),
        Call::SetGuestDateTime => round_trip::<SetGuestDateTimeRequest>(bytes),
        Call::CopyFile => round_trip::<CopyFileRequest>(bytes),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// The request of each of the service's 28 calls decodes arbitrary bytes without panic.
    #[test]
    fn every_calls_request_decodes_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for &call in Call::ALL {
            decode_request_of(call, &bytes);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_any_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_as_every_message(&bytes);
    }

    /// Bytes that are mostly well-formed tags and lengths reach deeper into the decoders than
    /// uniform noise: nested messages, maps, packed fields, huge lengths.
    #[test]
    fn tag_shaped_bytes_never_panic_any_decoder(
        fields in proptest::collection::vec((1u32..16, 0u32..6, proptest::collection::vec(any::<u8>(), 0..24)), 0..12)
    ) {
        let mut bytes = Vec::new();
        for (number, wire_type, payload) in fields {
            push_varint(&mut bytes, u64::from(number << 3 | wire_type));
            if wire_type == 2 {
                push_varint(&mut bytes, payload.len() as u64);
            }
            bytes.extend_from_slice(&payload);
        }
        decode_as_every_message(&bytes);
    }
}

fn push_varint(bytes: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        bytes.push((value as u8) | 0x80);
        value >>= 7;
    }
    bytes.push(value as u8);
}

#[test]
fn create_container_request_round_trips() {
    let mut request = CreateContainerRequest::new();
    request.container_id = "web-1".into();
    request.oci_spec_json =
        br#"{"ociVersion":"1.1.0","root":{"path":"/run/hull/c/web-1"}}"#.to_vec();
    let mut share = Storage::new();
    share.kind = StorageKind::STORAGE_KIND_VIRTIO_FS.into();
    share.source = "hullfs".into();
    share.mount_point = "/run/hull/shared".into();
    share.options = vec!["nodev".into()];
    let mut disk = Storage::new();
    disk.kind = StorageKind::STORAGE_KIND_BLOCK.into();
    disk.source = "pci:02/00".into();
    disk.fstype = "ext4".into();
    disk.mount_point = "/run/hull/storage/data".into();
    request.storages = vec![share, disk];

    let bytes = request.write_to_bytes().expect("encodes");
    let decoded = CreateContainerRequest::parse_from_bytes(&bytes).expect("decodes");
    assert_eq!(decoded, request);
    assert_eq!(
        decoded.storages[1].kind.enum_value(),
        Ok(StorageKind::STORAGE_KIND_BLOCK)
    );
}

#[test]
fn unknown_fields_and_enum_values_from_a_newer_peer_survive() {
    // A newer shim sends field 99 and a storage kind this agent does not know.
    let mut bytes = {
        let mut storage = Storage::new();
        storage.source = "tag".into();
        let mut request = CreateSandboxRequest::new();
        request.hostname = "pod".into();
        request.storages = vec![storage];
        request.write_to_bytes().expect("encodes")
    };
    push_varint(&mut bytes, 99 << 3 | 2); // field 99, length-delimited
    bytes.extend_from_slice(&[3, b'n', b'e', b'w']);
    let mut storage_with_new_kind = Storage::new();
    storage_with_new_kind.kind = hull_agent_protocol::protobuf::EnumOrUnknown::from_i32(42);
    let nested = storage_with_new_kind.write_to_bytes().expect("encodes");
    bytes.push(4 << 3 | 2); // field 4 (storages), length-delimited
    bytes.push(u8::try_from(nested.len()).expect("a small message"));
    bytes.extend_from_slice(&nested);

    let decoded = CreateSandboxRequest::parse_from_bytes(&bytes).expect("decodes");
    assert_eq!(decoded.hostname, "pod");
    assert_eq!(decoded.storages.len(), 2);
    assert_eq!(decoded.storages[1].kind.value(), 42);
    assert!(
        decoded.storages[1].kind.enum_value().is_err(),
        "42 is no StorageKind here"
    );
    // Relaying the message keeps what this end did not understand.
    let relayed = decoded.write_to_bytes().expect("encodes");
    assert_eq!(
        CreateSandboxRequest::parse_from_bytes(&relayed).expect("decodes"),
        decoded
    );
    assert!(
        decoded.special_fields.unknown_fields().get(99).is_some(),
        "field 99 is kept"
    );
}
