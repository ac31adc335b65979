//! Peer transport over gRPC: openraft's network (client side), the peer service (server side)
//! and the channel pool both use.

pub mod channels;
pub mod network;
pub mod server;

pub use channels::Channels;

use std::io;

/// Encodes an openraft message for the wire.
pub fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, tonic::Status> {
    bincode::serialize(v).map_err(|e| tonic::Status::internal(format!("encode: {e}")))
}

/// Decodes an openraft message from the wire.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, io::Error> {
    bincode::deserialize(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}
