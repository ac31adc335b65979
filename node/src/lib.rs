//! ConcordKV node: Raft (openraft) over gRPC, a durable log and snapshots written for this job,
//! and the HTTP/JSON API kept from the original Go design.

pub mod config;
pub mod kv;
pub mod metrics;
pub mod storage;
pub mod types;
pub mod app;
pub mod service;
pub mod transport;
pub mod api;
pub mod server;
