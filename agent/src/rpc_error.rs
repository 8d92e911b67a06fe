//! The ttrpc statuses the agent answers with. Every failed call carries a gRPC code a shim can
//! act on and a message naming the call or object; nothing here is ever a fake success.

use hull_agent_protocol::ttrpc::{self, Code};
use hull_agent_protocol::Call;

fn status(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

/// The agent does not serve `call` yet.
pub fn unimplemented(call: Call) -> ttrpc::Error {
    status(
        Code::UNIMPLEMENTED,
        format!("{call} is not implemented by hull-agent {}", crate::VERSION),
    )
}

/// The request itself is wrong; `message` says which field and why.
pub fn invalid_argument(call: Call, message: impl std::fmt::Display) -> ttrpc::Error {
    status(Code::INVALID_ARGUMENT, format!("{call}: {message}"))
}

/// The request names something the agent does not have.
pub fn not_found(call: Call, message: impl std::fmt::Display) -> ttrpc::Error {
    status(Code::NOT_FOUND, format!("{call}: {message}"))
}

/// The request is valid but the agent's state does not allow it.
pub fn failed_precondition(call: Call, message: impl std::fmt::Display) -> ttrpc::Error {
    status(Code::FAILED_PRECONDITION, format!("{call}: {message}"))
}

/// The guest failed to do what was asked.
pub fn internal(call: Call, message: impl std::fmt::Display) -> ttrpc::Error {
    status(Code::INTERNAL, format!("{call}: {message}"))
}

/// The request would create something that exists already (a duplicate id).
pub fn already_exists(call: Call, message: impl std::fmt::Display) -> ttrpc::Error {
    status(Code::ALREADY_EXISTS, format!("{call}: {message}"))
}

/// Waiting for something took longer than the request allowed.
pub fn deadline_exceeded(call: Call, message: impl std::fmt::Display) -> ttrpc::Error {
    status(Code::DEADLINE_EXCEEDED, format!("{call}: {message}"))
}

/// A feature of a call this agent does not have (the call itself is served).
pub fn unimplemented_feature(call: Call, message: impl std::fmt::Display) -> ttrpc::Error {
    status(Code::UNIMPLEMENTED, format!("{call}: {message}"))
}
