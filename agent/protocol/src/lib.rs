//! The shim⇄agent ttrpc protocol.
//!
//! Not built yet: see the agent issue.
