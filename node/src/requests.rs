//! Client operations as the cluster serves them: writes go through Raft on the leader, reads are
//! linearizable (ReadIndex on the leader) unless the caller asks for a stale read. Any node
//! accepts any request; a follower forwards to the leader over the peer channel.

use std::time::Duration;

use concord_proto::errors::{self, ErrorReason};
use concord_proto::WriteRequest;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::raft::ReadPolicy;
use tokio::time::{sleep, timeout_at, Instant};

use crate::app::App;
use crate::store::mvcc::{KeyRange, KeyValue, MvccError, RangeRequest};
use crate::store::{Command, CommandResult, Versioned};
use crate::telemetry::metrics::{metrics, GaugeGuard};

/// Why a client operation did not succeed. Each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No leader is known, or this node is not the leader and cannot forward. Nothing was
    /// applied; retry.
    #[error("no leader available: {0}")]
    NoLeader(String),
    /// The write may or may not have been applied.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The cluster cannot serve right now (quorum lost, node stopping). Nothing was applied.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Too much is pending already (`limits.maxPendingProposals` on the leader). Nothing was
    /// applied; retry shortly.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The store is over its quota (`--quota-backend-bytes`) and this write would add data.
    /// Nothing was applied; compact or delete, then retry.
    #[error("{0}")]
    NoSpace(String),
    /// Internal error (a bug or a storage failure).
    #[error("internal error: {0}")]
    Internal(String),
    /// Only on the peer path: the receiving node is not the leader (nothing was proposed).
    #[error("not the leader")]
    NotLeader,
}

/// Result of a committed write.
#[derive(Debug, Clone)]
pub struct Written {
    pub log_index: u64,
    pub result: CommandResult,
}

/// Read consistency requested by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    Linearizable,
    Stale,
}

const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// The status the peer service answers a forwarded operation with. Its reason lets the
/// forwarding side tell "the leader refused before proposing" from "the leader proposed and
/// then lost track", which decides whether a retry is safe.
pub fn to_status(err: ServiceError) -> tonic::Status {
    use tonic::Code;
    let (code, reason) = match &err {
        ServiceError::NotLeader | ServiceError::NoLeader(_) => {
            (Code::FailedPrecondition, ErrorReason::NotLeader)
        }
        ServiceError::Unknown(_) => (Code::Aborted, ErrorReason::OutcomeUnknown),
        ServiceError::Unavailable(_) => (Code::Unavailable, ErrorReason::Unavailable),
        ServiceError::Overloaded(_) => (Code::ResourceExhausted, ErrorReason::ResourceExhausted),
        ServiceError::NoSpace(_) => (Code::ResourceExhausted, ErrorReason::NoSpace),
        ServiceError::Internal(_) => (Code::Internal, ErrorReason::Internal),
    };
    errors::status(code, err.to_string(), reason)
}

/// What confirming leadership for a read (within the deadline) means for the caller.
fn read_confirmation<T>(
    confirmed: Result<
        Result<
            T,
            RaftError<crate::raft::TypeConfig, LinearizableReadError<crate::raft::TypeConfig>>,
        >,
        tokio::time::error::Elapsed,
    >,
) -> Result<T, ServiceError> {
    match confirmed {
        Err(_) => Err(ServiceError::Unavailable(
            "timed out confirming leadership with a quorum".into(),
        )),
        Ok(Ok(v)) => Ok(v),
        Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_)))) => {
            Err(ServiceError::NotLeader)
        }
        Ok(Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(q)))) => {
            Err(ServiceError::Unavailable(format!("no quorum: {q}")))
        }
        Ok(Err(RaftError::Fatal(f))) => {
            Err(ServiceError::Unavailable(format!("raft stopped: {f}")))
        }
    }
}

/// What a failed forward means for the caller.
pub(crate) enum ForwardFailure {
    /// Nothing happened on the leader; safe to retry.
    Retry(String),
    /// The leader could not even be connected to: it is gone, and an election will follow.
    /// Nothing was sent; the client hears so at once rather than at the request timeout.
    LeaderGone(String),
    /// Final answer.
    Fail(ServiceError),
}

pub(crate) fn classify(status: tonic::Status, write: bool) -> ForwardFailure {
    let msg = status.message().to_string();
    match errors::reason(&status) {
        Some(ErrorReason::NotLeader) => ForwardFailure::Retry("leader moved".into()),
        Some(ErrorReason::OutcomeUnknown) => ForwardFailure::Fail(ServiceError::Unknown(msg)),
        Some(ErrorReason::Unavailable) => ForwardFailure::Fail(ServiceError::Unavailable(msg)),
        Some(ErrorReason::ResourceExhausted) => ForwardFailure::Fail(ServiceError::Overloaded(msg)),
        Some(ErrorReason::NoSpace) => ForwardFailure::Fail(ServiceError::NoSpace(msg)),
        // Any other answer from the leader itself (a refused peer, a bad payload, a bug) is
        // final: it did not propose, but a retry would meet the same answer.
        Some(_) => ForwardFailure::Fail(ServiceError::Internal(msg)),
        // No reason: the transport failed. Nothing left if the connection was refused; a read
        // can always be retried; a write that may have left is of unknown outcome.
        None if errors::never_connected(&status) => ForwardFailure::LeaderGone(msg),
        None if !write => ForwardFailure::Retry(msg),
        None => ForwardFailure::Fail(ServiceError::Unknown(format!(
            "lost contact with the leader: {msg}"
        ))),
    }
}

impl App {
    /// The store's size if it is at or over `--quota-backend-bytes` (the NOSPACE alarm).
    pub fn over_quota(&self) -> Option<u64> {
        let quota = self.config.limits.quota_backend_bytes;
        let used = self.state.read().kv.total_bytes();
        (quota > 0 && used >= quota).then_some(used)
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.config.limits.request_timeout
    }

    /// Proposes `cmd` and waits until it is committed and applied.
    pub async fn write(&self, cmd: Command) -> Result<Written, ServiceError> {
        self.on_leader(
            "write",
            |deadline| self.propose(cmd.clone(), deadline),
            |addr, deadline| self.forward_write(addr, &cmd, deadline),
        )
        .await
    }

    /// Runs `local` if this node leads, else `remote` against the leader; retries while
    /// leadership moves (`local` answering `NotLeader`, `remote` answering `Retry`) until the
    /// request deadline.
    pub(crate) async fn on_leader<T, L, LF, R, RF>(
        &self,
        kind: &'static str,
        local: L,
        remote: R,
    ) -> Result<T, ServiceError>
    where
        L: Fn(Instant) -> LF,
        LF: std::future::Future<Output = Result<T, ServiceError>>,
        R: Fn(String, Instant) -> RF,
        RF: std::future::Future<Output = Result<T, ForwardFailure>>,
    {
        let deadline = self.deadline();
        let mut last_reason = String::from("no leader elected yet");
        loop {
            if self.is_shutting_down() {
                return Err(ServiceError::Unavailable("node is shutting down".into()));
            }
            match self.leader() {
                Some(l) if l.id == self.id() => match local(deadline).await {
                    Err(ServiceError::NotLeader) => last_reason = "leadership changed".into(),
                    other => return other,
                },
                Some(l) => {
                    let Some(member) = l.member else {
                        return Err(ServiceError::NoLeader(format!(
                            "leader {} has no address",
                            l.id
                        )));
                    };
                    metrics().forwarded.with_label_values(&[kind]).inc();
                    match remote(member.addr.clone(), deadline).await {
                        Ok(v) => return Ok(v),
                        Err(ForwardFailure::Retry(r)) => last_reason = r,
                        Err(ForwardFailure::LeaderGone(r)) => {
                            return Err(ServiceError::NoLeader(format!(
                                "the leader ({member}) is unreachable: {r}; an election follows, retry"
                            )))
                        }
                        Err(ForwardFailure::Fail(e)) => return Err(e),
                    }
                }
                None => {}
            }
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(ServiceError::NoLeader(last_reason));
            }
            sleep(RETRY_PAUSE).await;
        }
    }

    /// Proposes on this node, which believes it is the leader; returns once committed and
    /// applied.
    #[tracing::instrument(name = "raft.propose", skip_all, fields(node = %self.identity.name, otel.kind = "internal"))]
    pub async fn propose(&self, cmd: Command, deadline: Instant) -> Result<Written, ServiceError> {
        let m = metrics();
        if let Some(used) = self.over_quota() {
            if cmd.adds_data() {
                m.proposals_failed.with_label_values(&["nospace"]).inc();
                return Err(ServiceError::NoSpace(format!(
                    "etcdserver: mvcc: database space exceeded (the store holds {used} bytes, \
                     --quota-backend-bytes is {}); compact history or delete keys, then retry",
                    self.config.limits.quota_backend_bytes
                )));
            }
        }
        let max = self.config.limits.max_pending_proposals;
        if m.proposals_pending.get() >= max as i64 {
            m.proposals_failed.with_label_values(&["overloaded"]).inc();
            return Err(ServiceError::Overloaded(format!(
                "{max} writes are already waiting to commit (limits.maxPendingProposals); nothing was applied, retry shortly"
            )));
        }
        // Each write is charged at least a unit (1 KiB) for its entry and its bookkeeping.
        let Some(charged) = self.pending_proposal_bytes.try_charge(cmd.payload_bytes()) else {
            m.proposals_failed.with_label_values(&["overloaded"]).inc();
            return Err(ServiceError::Overloaded(format!(
                "writes waiting to commit hold {} bytes (limits.maxPendingProposalBytes); nothing was applied, retry shortly",
                self.pending_proposal_bytes.max_bytes()
            )));
        };
        let pending = GaugeGuard::hold(&m.proposals_pending);
        let res = timeout_at(deadline, self.raft.client_write(cmd)).await;
        drop(pending);
        drop(charged);
        match res {
            Err(_) => {
                m.proposals_failed.with_label_values(&["timeout"]).inc();
                Err(ServiceError::Unknown(
                    "timed out waiting for the write to commit".into(),
                ))
            }
            Ok(Ok(resp)) => {
                m.proposals_committed.inc();
                Ok(Written {
                    log_index: resp.log_id().index,
                    result: resp.response().clone(),
                })
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(ServiceError::NotLeader)
            }
            Ok(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)))) => {
                m.proposals_failed
                    .with_label_values(&["leader_changed"])
                    .inc();
                Err(ServiceError::Unknown(
                    "leadership changed after the write was proposed; it may or may not have been applied".into(),
                ))
            }
            Ok(Err(RaftError::APIError(e))) => {
                m.proposals_failed.with_label_values(&["rejected"]).inc();
                Err(ServiceError::Internal(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(f))) => {
                // Raft stopped (e.g. a storage error) after the entry may have been appended
                // and replicated: the write can still commit through another leader.
                m.proposals_failed.with_label_values(&["fatal"]).inc();
                Err(ServiceError::Unknown(format!(
                    "raft stopped while the write was in flight: {f}"
                )))
            }
        }
    }

    async fn forward_write(
        &self,
        addr: String,
        cmd: &Command,
        deadline: Instant,
    ) -> Result<Written, ForwardFailure> {
        let command = crate::codec::encode_wire(cmd)
            .map_err(|e| ForwardFailure::Fail(ServiceError::Internal(e.message().to_string())))?;
        let bytes = command.len();
        let (mut client, mut req) = self.to_leader(
            &addr,
            WriteRequest {
                cluster_id: self.cluster_id.wire(),
                command,
                wire_version: crate::codec::WIRE_VERSION,
            },
            deadline,
        )?;
        req.metadata_mut().insert(
            crate::budget::FORWARD_BYTES_HEADER,
            tonic::metadata::MetadataValue::from(bytes as u64),
        );
        let resp = client
            .forward_write(req)
            .await
            .map_err(|s| classify(s, true))?
            .into_inner();
        crate::codec::check_wire_version(resp.wire_version)
            .map_err(|s| ForwardFailure::Fail(ServiceError::Internal(s.message().to_string())))?;
        let result = crate::codec::decode_wire(&resp.result).map_err(|e| {
            ForwardFailure::Fail(ServiceError::Internal(format!(
                "bad reply from leader: {e}"
            )))
        })?;
        Ok(Written {
            log_index: resp.log_index,
            result,
        })
    }

    /// A client for the leader at `addr` and the request to send it: deadline and trace
    /// context attached.
    pub(crate) fn to_leader<T>(
        &self,
        addr: &str,
        msg: T,
        deadline: Instant,
    ) -> Result<
        (
            concord_proto::raft_peer_client::RaftPeerClient<tonic::transport::Channel>,
            tonic::Request<T>,
        ),
        ForwardFailure,
    > {
        let client = self
            .channels
            .client(addr)
            .map_err(|e| ForwardFailure::Fail(ServiceError::Internal(e.message().to_string())))?;
        let mut req = tonic::Request::new(msg);
        req.set_timeout(deadline.saturating_duration_since(Instant::now()));
        crate::telemetry::inject_grpc(req.metadata_mut());
        Ok((client, req))
    }

    /// Waits until this node, as leader, may serve a linearizable read from its state.
    #[tracing::instrument(name = "raft.read_index", skip_all, fields(node = %self.identity.name))]
    pub async fn read_barrier(&self, deadline: Instant) -> Result<(), ServiceError> {
        let confirmed = timeout_at(
            deadline,
            self.raft.ensure_linearizable(ReadPolicy::ReadIndex),
        )
        .await;
        read_confirmation(confirmed).map(|_| ())
    }

    /// As leader: confirms leadership with a quorum and returns the log index a linearizable
    /// read must see applied (it does not wait for this node's own apply).
    pub async fn read_index(&self, deadline: Instant) -> Result<u64, ServiceError> {
        let confirmed =
            timeout_at(deadline, self.raft.get_read_log_id(ReadPolicy::ReadIndex)).await;
        read_confirmation(confirmed).map(|(read, _)| read.log_id().index)
    }

    /// Makes this node's state fit for a linearizable read, wherever it runs: the leader
    /// confirms its leadership; a follower asks the leader for its read index and waits until
    /// it has applied that far, then reads its own state (so followers serve reads with every
    /// option the store has, and the leader only confirms).
    pub async fn linearize(&self) -> Result<(), ServiceError> {
        self.on_leader(
            "read_index",
            |deadline| self.read_barrier(deadline),
            |addr, deadline| async move {
                let (mut client, req) = self.to_leader(
                    &addr,
                    concord_proto::ReadIndexRequest {
                        cluster_id: self.cluster_id.wire(),
                    },
                    deadline,
                )?;
                let index = client
                    .read_index(req)
                    .await
                    .map_err(|s| classify(s, false))?
                    .into_inner()
                    .index;
                let left = deadline.saturating_duration_since(Instant::now());
                self.raft
                    .wait(Some(left))
                    .applied_index_at_least(Some(index), "linearizable read")
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        ForwardFailure::Fail(ServiceError::Unavailable(format!(
                            "this member did not catch up with the leader's read index {index} in time: {e}"
                        )))
                    })
            },
        )
        .await
    }

    /// Best effort for a watch that starts from history: catches this member up with the
    /// leader's commit index (so a compaction or write the caller saw acknowledged elsewhere
    /// is visible here), but serves from local history when no leader answers within
    /// `patience` — a watch, like etcd's, keeps working without a leader.
    pub async fn catch_up(&self, patience: std::time::Duration) {
        match tokio::time::timeout(patience, self.linearize()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "watch starts from local history"),
            Err(_) => tracing::debug!("watch starts from local history: no leader in time"),
        }
    }

    /// A key as of `revision` (0: now), read from this member's state — made linearizable
    /// first (the leader's read index) unless `consistency` is stale. The inner error is the
    /// store's refusal of the revision (compacted, or in the future).
    pub async fn get(
        &self,
        key: &str,
        consistency: Consistency,
        revision: u64,
    ) -> Result<Result<Option<KeyValue>, MvccError>, ServiceError> {
        if consistency == Consistency::Linearizable {
            self.linearize().await?;
        }
        let req = RangeRequest {
            keys: Some(KeyRange::One(key.as_bytes().to_vec())),
            revision,
            ..RangeRequest::default()
        };
        Ok(self
            .state
            .read()
            .kv
            .range(&req)
            .map(|r| r.kvs.into_iter().next()))
    }

    /// A page of keys, as [`App::get`] reads.
    pub async fn list(
        &self,
        prefix: &str,
        start_after: &str,
        limit: usize,
        consistency: Consistency,
    ) -> Result<(Vec<Vec<u8>>, bool), ServiceError> {
        if consistency == Consistency::Linearizable {
            self.linearize().await?;
        }
        Ok(self
            .state
            .read()
            .kv
            .list_keys(prefix.as_bytes(), start_after.as_bytes(), limit))
    }

    /// A key for a follower of an older release, which forwards its reads here: its answer has
    /// room only for text, so a value that is not UTF-8 (written through the etcd API) reaches
    /// it with replacement characters.
    pub fn legacy_local_get(&self, key: &str) -> Option<Versioned> {
        let kv = self.state.read().kv.get(key.as_bytes())?;
        Some(Versioned {
            value: String::from_utf8_lossy(&kv.value).into_owned(),
            revision: kv.mod_revision,
        })
    }

    /// A page of keys for a follower of an older release (see [`App::legacy_local_get`]).
    pub fn legacy_local_list(
        &self,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> (Vec<String>, bool) {
        let (keys, more) =
            self.state
                .read()
                .kv
                .list_keys(prefix.as_bytes(), start_after.as_bytes(), limit);
        let keys = keys
            .into_iter()
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .collect();
        (keys, more)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_is_recognised_as_never_sent() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let channels = crate::raft::channels::Channels::default();
        let mut client = channels.client(&format!("127.0.0.1:{port}")).unwrap();
        let status = client
            .forward_write(WriteRequest::default())
            .await
            .unwrap_err();
        assert!(errors::never_connected(&status), "{status:?}");
        assert!(matches!(
            classify(status.clone(), true),
            ForwardFailure::LeaderGone(_)
        ));
        assert!(matches!(
            classify(status, false),
            ForwardFailure::LeaderGone(_)
        ));
        let broken = tonic::Status::unavailable("h2 protocol error: connection reset by peer");
        assert!(matches!(
            classify(broken, true),
            ForwardFailure::Fail(ServiceError::Unknown(_))
        ));
    }

    #[test]
    fn a_reason_decides_the_retry_not_the_message() {
        // As the forwarding side receives them: code, message and the details bytes.
        let over_the_wire = |e: ServiceError| {
            let s = to_status(e);
            tonic::Status::with_details(s.code(), s.message(), s.details().to_vec().into())
        };
        assert!(matches!(
            classify(over_the_wire(ServiceError::NotLeader), true),
            ForwardFailure::Retry(_)
        ));
        assert!(matches!(
            classify(over_the_wire(ServiceError::Unknown("x".into())), true),
            ForwardFailure::Fail(ServiceError::Unknown(_))
        ));
        assert!(matches!(
            classify(over_the_wire(ServiceError::Unavailable("x".into())), false),
            ForwardFailure::Fail(ServiceError::Unavailable(_))
        ));
        // The old text alone, without a reason, no longer means "not the leader".
        let text_only = tonic::Status::failed_precondition("not-leader");
        assert!(matches!(
            classify(text_only, true),
            ForwardFailure::Fail(ServiceError::Unknown(_))
        ));
    }
}
