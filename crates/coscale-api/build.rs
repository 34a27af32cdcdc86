//! Generates the gRPC code for the V2 inference service, the agent channel and
//! KEDA's external scaler.
//! Uses the `protoc` shipped inside `protoc-bin-vendored`, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single-threaded; edition 2021 makes set_var safe.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure().compile_protos(
        &[
            "proto/grpc_service.proto",
            "proto/agent.proto",
            "proto/externalscaler.proto",
        ],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
