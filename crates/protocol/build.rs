//! Compiles `proto/` with the pure-Rust `protox` compiler, so building needs
//! no system `protoc`, and keeps the descriptor set for gRPC reflection.
use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        proto_root.join("switchboard/v1/event.proto"),
        proto_root.join("switchboard/v1/chat.proto"),
        proto_root.join("switchboard/v1/seed_chat.proto"),
        proto_root.join("switchboard/v1/bus.proto"),
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let fds = protox::compile(&files, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("switchboard_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    // `build_transport(false)`: the generated client's `connect(dst)` helper
    // would clash with the `Connect` rpc; clients are built from a Channel.
    tonic_prost_build::configure()
        .build_transport(false)
        // Events are sent by their once-encoded bytes: see wire_event.rs.
        .extern_path(".switchboard.v1.Event", "crate::WireEvent")
        .compile_fds(fds)?;
    Ok(())
}
