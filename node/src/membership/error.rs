//! What a membership change can fail with, as a Rust error, a gRPC status and an HTTP status.

use concord_proto::AdminResult;
use openraft::errors::{ChangeMembershipError, ClientWriteError, RaftError};
use tonic::Status;

use crate::raft::TypeConfig;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("already initialized: {0}")]
    AlreadyInitialized(String),
    #[error("busy: another membership change is in progress; retry when it finishes")]
    Busy,
    #[error("busy: the previous membership change is not committed yet; retry shortly ({0})")]
    InProgress(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("no leader: {0}")]
    NoLeader(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl AdminError {
    pub fn http_status(&self) -> u16 {
        match self {
            AdminError::Invalid(_) => 400,
            AdminError::NotFound(_) => 404,
            AdminError::AlreadyInitialized(_)
            | AdminError::Busy
            | AdminError::InProgress(_)
            | AdminError::Refused(_) => 409,
            AdminError::NoLeader(_) => 503,
            AdminError::Internal(_) => 500,
        }
    }

    pub fn retryable(&self) -> bool {
        matches!(
            self,
            AdminError::Busy | AdminError::InProgress(_) | AdminError::NoLeader(_)
        )
    }
}

// gRPC codes for each error, and back: a forwarded call's refusal reaches the caller unchanged.
impl From<AdminError> for Status {
    fn from(e: AdminError) -> Status {
        let msg = e.to_string();
        match e {
            AdminError::Invalid(_) => Status::invalid_argument(msg),
            AdminError::NotFound(_) => Status::not_found(msg),
            AdminError::AlreadyInitialized(_) => Status::already_exists(msg),
            AdminError::Busy | AdminError::InProgress(_) => Status::aborted(msg),
            AdminError::Refused(_) => Status::failed_precondition(msg),
            AdminError::NoLeader(_) => Status::unavailable(msg),
            AdminError::Internal(_) => Status::internal(msg),
        }
    }
}

pub(crate) fn from_status(s: Status) -> AdminError {
    let msg = s.message().to_string();
    let strip = |p: &str| msg.strip_prefix(p).unwrap_or(&msg).to_string();
    match s.code() {
        tonic::Code::InvalidArgument => AdminError::Invalid(strip("invalid request: ")),
        tonic::Code::NotFound => AdminError::NotFound(strip("not found: ")),
        tonic::Code::AlreadyExists => {
            AdminError::AlreadyInitialized(strip("already initialized: "))
        }
        tonic::Code::Aborted => AdminError::Busy,
        tonic::Code::FailedPrecondition => AdminError::Refused(strip("refused: ")),
        tonic::Code::Unavailable => AdminError::NoLeader(strip("no leader: ")),
        _ => AdminError::Internal(msg),
    }
}

pub(crate) fn write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> AdminError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            AdminError::NoLeader("leadership moved during the change; retry".into())
        }
        // The previous change (or the initial membership) is not committed yet: transient.
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(p),
        )) => AdminError::InProgress(p.to_string()),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            AdminError::Refused(c.to_string())
        }
        other => AdminError::Internal(other.to_string()),
    }
}

pub(crate) fn result(message: impl Into<String>, log_index: u64) -> AdminResult {
    AdminResult {
        message: message.into(),
        log_index,
    }
}
