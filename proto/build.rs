//! Generates the gRPC code. protoc comes from the vendored crate so a fresh machine without a
//! system protoc still builds.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=concord.proto");
    tonic_prost_build::configure().compile_protos(&["concord.proto"], &["."])?;
    Ok(())
}
