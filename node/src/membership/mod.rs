//! Membership administration: what the operator and `concordctl member ...` drive.
//!
//! Every change runs on the leader (other nodes forward), one at a time, and refuses what would
//! be unsafe: promoting a learner that is behind, removing a voter when the remaining healthy
//! voters could not form a quorum, a second change while one is running.
//!
//! - [`changes`]: the checks and the changes themselves, on the leader.
//! - [`view`]: the leader's view of its members that the checks read.
//! - [`admin_service`]: the gRPC `Admin` service (the HTTP face is `api::http::admin_routes`).
//! - [`error`]: what a change can fail with.

pub mod admin_service;
pub mod changes;
pub mod error;
pub mod view;

pub use admin_service::AdminService;
pub use error::AdminError;
