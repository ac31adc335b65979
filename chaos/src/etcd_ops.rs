//! The clients' operations through etcd's v3 gRPC API: a read is a linearizable `Range`, a
//! write a `Put`, a compare-and-set a `Txn` (compare the value, or `create_revision == 0` for
//! "absent"; on success put). Outcomes are classified as an etcd client may conclude them.

use std::time::Duration;

use concord_proto::etcd::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use concord_proto::etcd::etcdserverpb::kv_client::KvClient;
use concord_proto::etcd::etcdserverpb::request_op::Request;
use concord_proto::etcd::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::history::{Op, Outcome};

pub type Client = KvClient<Channel>;

/// A client for one member's etcd port; connects on first use and reconnects after a fault.
pub fn client(
    clients: &crate::security::Clients,
    addr: &str,
    timeout: Duration,
) -> anyhow::Result<Client> {
    let channel = clients
        .endpoint(addr)?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_lazy();
    Ok(KvClient::new(channel))
}

/// Runs `op` on `key`; `Err` is an answer no etcd client should ever get (an anomaly).
pub async fn request(client: &Client, op: &Op, key: &str) -> Result<Outcome, String> {
    let mut kv = client.clone();
    let key_bytes = key.as_bytes().to_vec();
    let res = match op {
        Op::Read => kv
            .range(RangeRequest {
                key: key_bytes,
                ..Default::default()
            })
            .await
            .map(|r| {
                let value = r.into_inner().kvs.into_iter().next().map(|kv| kv.value);
                Outcome::Read(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
            }),
        Op::Write(v) => kv
            .put(PutRequest {
                key: key_bytes,
                value: v.as_bytes().to_vec(),
                ..Default::default()
            })
            .await
            .map(|_| Outcome::Ok),
        Op::Cas { expected, new } => {
            let compare = match expected {
                Some(v) => Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Value as i32,
                    key: key_bytes.clone(),
                    target_union: Some(TargetUnion::Value(v.as_bytes().to_vec())),
                    ..Default::default()
                },
                None => Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Create as i32,
                    key: key_bytes.clone(),
                    target_union: Some(TargetUnion::CreateRevision(0)),
                    ..Default::default()
                },
            };
            let put = RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key_bytes,
                    value: new.as_bytes().to_vec(),
                    ..Default::default()
                })),
            };
            kv.txn(TxnRequest {
                compare: vec![compare],
                success: vec![put],
                failure: vec![],
            })
            .await
            .map(|r| {
                if r.into_inner().succeeded {
                    Outcome::Ok
                } else {
                    Outcome::CasFailed
                }
            })
        }
    };
    match res {
        Ok(outcome) => Ok(outcome),
        Err(status) => classify_error(op, &status),
    }
}

/// What an error tells the client. ConcordKV answers as etcd does: `Unavailable` with
/// "etcdserver: request timed out" when a write's outcome is unknown, `Unavailable` otherwise
/// when nothing was applied, `ResourceExhausted` when refused for load.
fn classify_error(op: &Op, status: &Status) -> Result<Outcome, String> {
    let read = matches!(op, Op::Read);
    match status.code() {
        // A read has no effect, whatever happened to it.
        _ if read && is_transient(status.code()) => Ok(Outcome::Failed),
        _ if never_sent(status) => Ok(Outcome::Failed),
        Code::Unavailable
            if status
                .message()
                .starts_with("etcdserver: request timed out") =>
        {
            Ok(Outcome::Unknown)
        }
        // Refused by the server before proposing ("etcdserver: no leader", "...: unavailable").
        Code::Unavailable if status.message().starts_with("etcdserver: ") => Ok(Outcome::Failed),
        Code::ResourceExhausted => Ok(Outcome::Failed),
        // The connection broke or the deadline passed with the request sent: it may apply.
        c if is_transient(c) => Ok(Outcome::Unknown),
        c => Err(format!(
            "unexpected gRPC {c:?} for {op:?}: {}",
            status.message()
        )),
    }
}

fn is_transient(c: Code) -> bool {
    matches!(
        c,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::ResourceExhausted
    )
}

/// Whether the request never left the client: the connection was refused.
fn never_sent(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cas() -> Op {
        Op::Cas {
            expected: None,
            new: "x".into(),
        }
    }

    #[test]
    fn errors_mean_what_etcd_clients_take_them_to_mean() {
        let timed_out = Status::unavailable("etcdserver: request timed out (leader changed)");
        assert_eq!(classify_error(&cas(), &timed_out), Ok(Outcome::Unknown));
        let no_leader = Status::unavailable("etcdserver: no leader");
        assert_eq!(classify_error(&cas(), &no_leader), Ok(Outcome::Failed));
        let broken = Status::unavailable("transport error");
        assert_eq!(classify_error(&cas(), &broken), Ok(Outcome::Unknown));
        assert_eq!(
            classify_error(&cas(), &Status::deadline_exceeded("timeout")),
            Ok(Outcome::Unknown)
        );
        assert_eq!(classify_error(&Op::Read, &broken), Ok(Outcome::Failed));
        assert!(classify_error(&cas(), &Status::invalid_argument("bad")).is_err());
        assert!(classify_error(&Op::Read, &Status::internal("bug")).is_err());
    }
}
