//! hull's shim⇄agent protocol: the ttrpc service `hull.agent.v1.AgentService` that the agent
//! (PID 1 of every guest) serves and the shim calls.
//!
//! The protocol is defined by the .proto files in `proto/hull/agent/v1/` (read them for the
//! meaning of every call and field, and for the compatibility rules). Their Rust code, the
//! rust-protobuf messages and the async ttrpc client ([`AgentServiceClient`]) and server trait
//! ([`AgentService`], registered with [`create_agent_service`]), is generated at build time
//! by ttrpc-codegen, in pure Rust: building needs no `protoc`.
//!
//! Beside the generated code this crate holds only what both ends must agree on and the
//! .proto files cannot express: the version, the vsock port, the size limits, and the list of
//! calls ([`Call`]). It owns no behaviour: the agent implements the service, the shim calls it.
//!
//! Unknown fields are tolerated in both directions (protobuf 3 keeps them as unknown fields
//! and the generated code never fails on them), so a newer shim can talk to an older agent
//! and the other way round; a call the agent does not serve answers UNIMPLEMENTED.

pub mod call;

pub use call::Call;

/// The generated code, as ttrpc-codegen writes it. Its lints are the generators' business.
#[allow(missing_docs, clippy::all, clippy::undocumented_unsafe_blocks)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/generated.rs"));
}

/// The messages of the calls (`CheckRequest`, `CreateContainerRequest` ...), from agent.proto.
pub use generated::agent;
pub use generated::agent_ttrpc::{create_agent_service, AgentService, AgentServiceClient};
/// The types the calls share (`Storage`, `Interface`, `CgroupStats` ...), from types.proto.
pub use generated::types;

/// The protobuf runtime of the generated messages (`Message::parse_from_bytes` ...).
pub use protobuf;
/// The ttrpc crate the generated code is built on, for callers that need its client, server,
/// context and error types at the same version.
pub use ttrpc;

/// The protocol version this crate speaks, reported by the agent in GetGuestDetails. It
/// changes only when a call's meaning changes incompatibly (a new package, `hull.agent.v2`);
/// adding calls or fields keeps it.
pub const PROTOCOL_VERSION: u32 = 1;

/// The vsock port the agent listens on in the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The vsock port the agent serves its log on in the guest (Kata's is 1025 too): one line per
/// event, the level first (` INFO message key=value`).
pub const AGENT_LOG_VSOCK_PORT: u32 = 1025;

/// The guest directory that CopyFile writes under (and where the shim's shared files, such as
/// a container's resolv.conf, live).
pub const GUEST_SHARED_DIR: &str = "/run/hull/shared";

/// The fully qualified name of the service, as it travels in every ttrpc request.
pub const SERVICE_NAME: &str = "hull.agent.v1.AgentService";

/// Largest OCI spec, OCI process or OCI resources JSON the agent accepts, in bytes.
pub const MAX_JSON_BYTES: usize = 1 << 20;

/// Largest chunk of stdio (WriteStdin, ReadStdout, ReadStderr) or file (CopyFile) data in
/// one call, in bytes. ttrpc itself caps a whole message at 4 MiB.
pub const MAX_CHUNK_BYTES: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_service_name_matches_the_constant() {
        struct Nothing;
        impl AgentService for Nothing {}
        let services = create_agent_service(std::sync::Arc::new(Nothing));
        let names: Vec<_> = services.keys().collect();
        assert_eq!(names, [SERVICE_NAME]);
    }
}
