//! Generates the gRPC code: ConcordKV's own peer protocol, and etcd's v3 API from the vendored
//! etcd .proto files (`vendor/`, see its README). protoc and its well-known types come from the
//! vendored crate so a fresh machine without a system protoc still builds.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=concord.proto");
    println!("cargo:rerun-if-changed=vendor");
    tonic_prost_build::configure().compile_protos(&["concord.proto"], &["."])?;
    let includes = protoc_bin_vendored::include_path()?;
    let includes = includes
        .to_str()
        .ok_or("protoc's include path is not UTF-8")?;
    // The client side is only for `concordctl bench`, which loads ConcordKV and etcd alike
    // through it; compatibility tests use clients nobody here wrote (the etcd-client crate,
    // Debian's etcdctl).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = out.join("etcd_descriptors.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptors)
        .compile_protos(
            &[
                "vendor/etcd/api/etcdserverpb/rpc.proto",
                "vendor/etcd/api/mvccpb/kv.proto",
                "vendor/etcd/api/authpb/auth.proto",
                "vendor/etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
                "vendor/etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto",
            ],
            &["vendor", includes],
        )?;
    // serde for the JSON gateway, in protobuf's JSON mapping with the .proto field names, as
    // etcd's grpc-gateway (OrigName) writes them: int64 as strings, bytes as base64.
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptors)?)?
        .preserve_proto_field_names()
        .build(&[
            ".etcdserverpb",
            ".mvccpb",
            ".authpb",
            ".v3lockpb",
            ".v3electionpb",
        ])?;
    Ok(())
}
