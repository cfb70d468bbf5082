//! Compiles `proto/worker/v1/worker.proto` with `protox` (a protobuf
//! compiler in Rust: no system `protoc` needed) and generates the prost
//! messages and tonic client/server with `tonic-prost-build`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = dir.join("worker/v1/worker.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&dir])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The RPC is named `Connect`: the generated `connect(dst)` helper
        // would clash with it (channels are built with `Endpoint`).
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
