// Generates the gRPC client and server code from the single wire contract.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Respect a protoc the environment already provides; otherwise use the
    // vendored one so that a bare machine builds offline.
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    let proto_dir = "../../proto";
    let proto = format!("{proto_dir}/snakepit_bridge.proto");
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&[proto.as_str()], &[proto_dir])?;
    Ok(())
}
