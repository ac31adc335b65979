//! Encoding of openraft's messages on the peer wire.

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
