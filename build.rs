//! Compiles `proto/` into Rust with protox (pure Rust, so no system `protoc`)
//! and tonic-prost-build, and writes the encoded file descriptor set that the
//! server registers for reflection.

use std::path::PathBuf;

use prost::Message as _;

const PROTOS: &[&str] = &[
    "tidings/v1/resources.proto",
    "tidings/v1/publisher.proto",
    "tidings/v1/subscriber.proto",
    "tidings/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A directory: cargo rebuilds when anything under it changes.
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let fds = protox::compile(PROTOS, ["proto"])?;
    std::fs::write(out_dir.join("tidings_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        // Payloads are `Bytes`, so they move from the request buffer to
        // storage and back out without a copy.
        .bytes(".tidings.v1")
        .compile_fds(fds)?;
    Ok(())
}
