//! ConcordKV node: Raft (openraft) over gRPC, a durable log and snapshots written for this job,
//! and the HTTP/JSON API kept from the original Go design.

// tonic::Status is large, and gRPC handlers must return it; boxing it everywhere buys nothing.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod api;
pub mod app;
pub mod bench;
pub mod check;
pub mod client;
pub mod config;
pub mod identity;
pub mod kv;
pub mod metrics;
pub mod server;
pub mod service;
pub mod storage;
pub mod telemetry;
pub mod transport;
pub mod types;
