//! Generated gRPC types for ConcordKV's peer protocol, and the error reasons its statuses carry.
#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("concord.v1");
}

pub use v1::*;

/// etcd's v3 API, generated from etcd's own .proto files (`vendor/`): the packages keep their
/// names, so generated references between them (`super::mvccpb::KeyValue`) resolve.
pub mod etcd {
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
        include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
    }
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
        include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
    }
    pub mod v3lockpb {
        tonic::include_proto!("v3lockpb");
        include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
    }
    pub mod v3electionpb {
        tonic::include_proto!("v3electionpb");
        include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
    }
    pub mod authpb {
        tonic::include_proto!("authpb");
        include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
    }
}

/// Statuses that say why, in a form a program can match on: a `google.rpc.ErrorInfo` in the
/// status details naming an [`ErrorReason`].
pub mod errors {
    use std::collections::HashMap;
    use std::error::Error as _;

    use tonic_types::{ErrorDetails, StatusExt};

    pub use super::v1::ErrorReason;

    /// The `ErrorInfo.domain` of every reason ConcordKV sets.
    pub const DOMAIN: &str = "concordkv.io";

    /// A status with `code`, a message for people, and `reason` for programs.
    pub fn status(
        code: tonic::Code,
        message: impl Into<String>,
        reason: ErrorReason,
    ) -> tonic::Status {
        let details = ErrorDetails::with_error_info(reason.as_str_name(), DOMAIN, HashMap::new());
        tonic::Status::with_error_details(code, message, details)
    }

    /// The reason a ConcordKV node gave, if the status carries one. `None` for statuses made by
    /// the transport (connection refused, reset, deadline) or by anything else on the way.
    pub fn reason(status: &tonic::Status) -> Option<ErrorReason> {
        let info = status.get_details_error_info()?;
        if info.domain != DOMAIN {
            return None;
        }
        ErrorReason::from_str_name(&info.reason)
    }

    /// True when the call failed before any connection to the server existed (refused, no
    /// route, name not resolved), so the request cannot have reached it. A connection that broke
    /// mid-call is not this case. Decided by the error's type in the source chain, not its text.
    pub fn never_connected(status: &tonic::Status) -> bool {
        let mut source = status.source();
        while let Some(e) = source {
            if e.is::<tonic::ConnectError>() {
                return true;
            }
            source = e.source();
        }
        false
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_reason_survives_the_wire_encoding() {
            let s = status(tonic::Code::Aborted, "busy", ErrorReason::Busy);
            // What the receiving side sees: code, message and the details bytes of the trailers.
            let back =
                tonic::Status::with_details(s.code(), s.message(), s.details().to_vec().into());
            assert_eq!(reason(&back), Some(ErrorReason::Busy));
            assert_eq!(back.message(), "busy");
            assert_eq!(reason(&tonic::Status::aborted("busy")), None);
        }
    }
}
