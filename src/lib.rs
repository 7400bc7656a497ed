//! The Tidings gRPC API, generated from `proto/tidings/v1/` at build time.
//!
//! The server (`tidings-server`) and the Rust client (`tidings-client`) both
//! depend on this crate and nothing else of each other. It holds generated
//! messages, clients and servers, and the encoded descriptor set that the
//! server registers for reflection. It holds no hand-written logic.

/// Version 1 of the API: package `tidings.v1`.
pub mod v1 {
    #![allow(missing_docs, unreachable_pub, clippy::all)]
    tonic::include_proto!("tidings.v1");
}

/// The encoded `FileDescriptorSet` of every file under `proto/`, including
/// the well-known types it imports, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tidings_descriptor.bin"));
