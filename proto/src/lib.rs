//! Generated gRPC types for ConcordKV's peer protocol.
#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("concord.v1");
}

pub use v1::*;
