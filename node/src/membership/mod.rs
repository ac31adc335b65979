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

/// Where a membership request came from: a client (the operator, concordctl, HTTP), or another
/// member forwarding it to the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    Client,
    Forwarded,
}

/// gRPC metadata a member sets on a request it forwards to the leader.
pub const FORWARDED_HEADER: &str = "x-concord-forwarded";

impl crate::app::App {
    /// `msg` as a request forwarded by this member. With auth on it carries a token for the
    /// caller of the request being served (signed here, valid for a minute), so the leader
    /// checks the same user the front door identified.
    pub(crate) fn forwarded<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut().insert(
            FORWARDED_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        let state = self.state.read();
        if let Ok(crate::auth::Caller::User(user)) = crate::auth::caller(&state.auth) {
            let token = crate::auth::issue_token(
                &state.auth,
                &user,
                std::time::Duration::from_secs(60),
                std::time::SystemTime::now(),
            );
            if let Some(value) = token.ok().and_then(|t| t.parse().ok()) {
                req.metadata_mut().insert("token", value);
            }
        }
        req
    }
}

/// How a gRPC request reached this node.
pub fn hop_of<T>(req: &tonic::Request<T>) -> Hop {
    if req.metadata().contains_key(FORWARDED_HEADER) {
        Hop::Forwarded
    } else {
        Hop::Client
    }
}
