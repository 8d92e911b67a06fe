//! Generates the protobuf messages and the async ttrpc client and server of hull's agent
//! protocol from the checked-in .proto files. ttrpc-codegen parses .proto files in pure Rust
//! (protobuf-parse), so no `protoc` is needed to build hull.

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

const PROTOS: &[&str] = &[
    "proto/hull/agent/v1/types.proto",
    "proto/hull/agent/v1/agent.proto",
];

fn main() {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    Codegen::new()
        .out_dir(&out_dir)
        .inputs(PROTOS)
        .include("proto")
        .rust_protobuf()
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generating the agent protocol from proto/ (see the error above)");
    // The generators' own mod.rs opens with an inner attribute, which `include!` rejects: name
    // the generated modules here instead (they resolve relative to this file, in OUT_DIR).
    let modules = "pub mod agent;\npub mod agent_ttrpc;\npub mod types;\n";
    std::fs::write(format!("{out_dir}/generated.rs"), modules)
        .expect("writing generated.rs into OUT_DIR");
}
