//! Watch: every change to a key or a range, from any revision not compacted away, in order,
//! without gaps — served from this member's applied state.
//!
//! - [`hub`]: who watches what; apply hands each revision's changes to the watchers they
//!   concern, never waiting for one (a watcher that cannot keep up lags and catches up).
//! - [`feed`]: one stream's watches as the updates its client is sent, history first.
//!
//! The transports are `api::etcd::watch` (etcd's Watch service and its JSON gateway) and
//! `api::http::watch` (Server-Sent Events on the seed API).

pub mod feed;
pub mod hub;

pub use feed::{Feed, Update, WatchSpec};
pub use hub::{Batch, HubLimits, WatchHub, WatchId};
