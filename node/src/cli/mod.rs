//! concordctl's commands that are more than one request: the load generator, the smoke check,
//! watch (a stream that resumes), and leases with the lock and election recipes built on them.

pub mod auth;
pub mod bench;
pub mod bench_watch;
pub mod check;
pub mod lease;
pub mod snapshot;
pub mod watch;
