//! Compiles `proto/*.proto` into the `raftlane-proto` crate with a vendored protoc,
//! so a fresh machine needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let protos = [
        "proto/raft_transport.proto",
        "proto/admin.proto",
        "proto/kv.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    // Every service decodes with the field count bounded (proto/codec.rs).
    tonic_prost_build::configure()
        .codec_path("crate::codec::BoundedCodec")
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
