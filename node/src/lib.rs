//! ConcordKV node: Raft (openraft) over gRPC, a durable log and snapshots written for this job,
//! and the HTTP/JSON API kept from the original Go design.
//!
//! A write, end to end: `api::http` (the route) → `requests` (to the leader, forwarded by a
//! follower over `raft::peer_service`) → openraft → `storage` (log append, fsync; then apply) →
//! `store` (the data). Membership changes live in `membership`; `client` and `cli` are
//! concordctl's; `telemetry` is logs, traces and metrics.

// tonic::Status is large, and gRPC handlers must return it; boxing it everywhere buys nothing.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod app;
pub mod auth;
pub mod backup;
pub mod budget;
pub mod cli;
pub mod client;
pub mod codec;
pub mod config;
pub mod lease;
pub mod membership;
pub mod raft;
pub mod requests;
pub mod storage;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod watch;
