//! What a membership change can fail with, as a Rust error, a gRPC status and an HTTP status.

use concord_proto::errors::{self, ErrorReason};
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

// A gRPC code and a reason for each error, and back: a forwarded call's refusal reaches the
// caller unchanged, matched by its reason (the message is for people).
impl From<AdminError> for Status {
    fn from(e: AdminError) -> Status {
        use tonic::Code;
        let (code, reason) = match &e {
            AdminError::Invalid(_) => (Code::InvalidArgument, ErrorReason::InvalidArgument),
            AdminError::NotFound(_) => (Code::NotFound, ErrorReason::NotFound),
            AdminError::AlreadyInitialized(_) => {
                (Code::AlreadyExists, ErrorReason::AlreadyInitialized)
            }
            AdminError::Busy => (Code::Aborted, ErrorReason::Busy),
            AdminError::InProgress(_) => (Code::Aborted, ErrorReason::ChangeInProgress),
            AdminError::Refused(_) => (Code::FailedPrecondition, ErrorReason::Refused),
            AdminError::NoLeader(_) => (Code::Unavailable, ErrorReason::NoLeader),
            AdminError::Internal(_) => (Code::Internal, ErrorReason::Internal),
        };
        errors::status(code, detail(&e), reason)
    }
}

/// The variable part of an error's message, without the prefix its `Display` adds.
fn detail(e: &AdminError) -> String {
    match e {
        AdminError::Invalid(m)
        | AdminError::AlreadyInitialized(m)
        | AdminError::InProgress(m)
        | AdminError::Refused(m)
        | AdminError::NotFound(m)
        | AdminError::NoLeader(m)
        | AdminError::Internal(m) => m.clone(),
        AdminError::Busy => String::new(),
    }
}

/// The error a forwarded admin call came back with, by its reason. A status without one came
/// from the transport: the leader could not be reached.
pub(crate) fn from_status(s: Status) -> AdminError {
    let msg = s.message().to_string();
    match errors::reason(&s) {
        Some(ErrorReason::InvalidArgument) => AdminError::Invalid(msg),
        Some(ErrorReason::NotFound) => AdminError::NotFound(msg),
        Some(ErrorReason::AlreadyInitialized) => AdminError::AlreadyInitialized(msg),
        Some(ErrorReason::Busy) => AdminError::Busy,
        Some(ErrorReason::ChangeInProgress) => AdminError::InProgress(msg),
        Some(ErrorReason::Refused) => AdminError::Refused(msg),
        Some(ErrorReason::NoLeader | ErrorReason::NotLeader) => AdminError::NoLeader(msg),
        Some(_) => AdminError::Internal(msg),
        None => AdminError::NoLeader(format!("the leader did not answer: {msg}")),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_crosses_the_wire_as_itself() {
        let all = [
            AdminError::Invalid("bad id".into()),
            AdminError::AlreadyInitialized("x".into()),
            AdminError::Busy,
            AdminError::InProgress("joint config".into()),
            AdminError::Refused("quorum".into()),
            AdminError::NotFound("7".into()),
            AdminError::NoLeader("election".into()),
            AdminError::Internal("disk".into()),
        ];
        for e in all {
            let before = e.to_string();
            // As the caller receives it: code, message and the details bytes.
            let s = Status::from(e);
            let back = from_status(Status::with_details(
                s.code(),
                s.message(),
                s.details().to_vec().into(),
            ));
            assert_eq!(back.to_string(), before);
        }
        // Without a reason it is the transport's failure, whatever the text says.
        assert!(matches!(
            from_status(Status::aborted("busy: another change")),
            AdminError::NoLeader(_)
        ));
    }
}
