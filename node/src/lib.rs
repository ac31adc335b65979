//! ConcordKV node: Raft (openraft) over gRPC, a durable log and snapshots written for this job,
//! and the HTTP/JSON API kept from the original Go design.

pub mod api;
pub mod app;
pub mod bench;
pub mod check;
pub mod client;
pub mod config;
pub mod kv;
pub mod metrics;
pub mod server;
pub mod service;
pub mod storage;
pub mod transport;
pub mod types;
