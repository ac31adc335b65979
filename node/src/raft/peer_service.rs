//! The peer gRPC service: Raft RPCs into openraft, and client operations forwarded by followers.

use std::sync::Arc;

use concord_proto::raft_peer_server::RaftPeer;
use concord_proto::{
    LeaseAnswer, LeaseRequest, ListRequest, ListResponse, RaftMessage, ReadIndexRequest,
    ReadIndexResponse, ReadRequest, ReadResponse, SnapshotChunk, WriteRequest, WriteResponse,
};
use std::io::Write;

use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::app::App;
use crate::codec::{
    check_wire_version, decode_wire as decode, encode_wire as encode, WIRE_VERSION,
};
use crate::raft::{Snapshot, SnapshotMeta, Vote};
use crate::requests::{to_status, ServiceError};
use crate::storage::SnapshotWriter;
use crate::store::Command;
use concord_proto::errors::{self, ErrorReason};

pub struct PeerService {
    pub app: Arc<App>,
}

/// A forwarded write's bytes, held from this node's request budget while it is served.
#[derive(Clone)]
struct ForwardCharge(#[allow(dead_code)] Arc<crate::budget::InFlight>);

/// Charges each forwarded write the bytes its follower declares to this node's request budget
/// (`limits.maxInFlightBytes`, shared with the HTTP API) before its body is read, and refuses
/// it (RESOURCE_EXHAUSTED, a retryable 503 for the client) when they do not fit: without it, a
/// leader serves its own clients' bytes plus every follower's. An unread body stays in the
/// sender's flow-control window, not in this node's memory. Raft RPCs carry no such size and
/// pass untouched.
pub fn charge_forwarded_writes(
    app: Arc<App>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut req: Request<()>| {
        let Some(declared) = req.metadata().get(crate::budget::FORWARD_BYTES_HEADER) else {
            return Ok(req);
        };
        let max = app.config.limits.max_request_bytes as u64;
        let bytes = declared
            .to_str()
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(max)
            .min(super::channels::MAX_MESSAGE_BYTES as u64)
            + crate::api::http::admission::PER_REQUEST_BYTES;
        let Some(charge) = app.request_bytes.try_charge(bytes) else {
            crate::telemetry::metrics::metrics()
                .http_rejected
                .with_label_values(&["overloaded"])
                .inc();
            return Err(to_status(ServiceError::Overloaded(format!(
                "leader busy: requests in flight hold its limits.maxInFlightBytes ({} bytes); nothing was applied, retry shortly",
                app.request_bytes.max_bytes()
            ))));
        };
        req.extensions_mut()
            .insert(ForwardCharge(Arc::new(charge.shown_in_flight())));
        Ok(req)
    }
}

impl PeerService {
    fn check_cluster(&self, cluster_id: &str) -> Result<(), Status> {
        self.app
            .cluster_id
            .accept(cluster_id)
            .map_err(|reason| self.refuse(reason))
    }

    /// A Raft message must be meant for this member: after a disk wipe the same name and
    /// address belong to a new member, which must not answer for the old one.
    fn check_raft(
        &self,
        cluster_id: &str,
        target_id: u64,
        wire_version: u32,
    ) -> Result<(), Status> {
        check_wire_version(wire_version)?;
        if target_id != 0 && target_id != self.app.id() {
            return Err(self.refuse(format!(
                "wrong-member: this node is member {} ({}, incarnation {}), the message is for member {target_id}",
                self.app.id(),
                self.app.identity.name,
                self.app.identity.incarnation
            )));
        }
        self.check_cluster(cluster_id)
    }

    fn refuse(&self, reason: String) -> Status {
        tracing::warn!(%reason, "refused a peer message");
        self.app.record_refusal(reason.clone());
        errors::status(
            tonic::Code::FailedPrecondition,
            reason,
            ErrorReason::WrongPeer,
        )
    }

    fn bad_payload(e: std::io::Error) -> Status {
        errors::status(
            tonic::Code::InvalidArgument,
            format!("undecodable payload: {e}"),
            ErrorReason::InvalidArgument,
        )
    }

    fn reply<T: serde::Serialize>(&self, v: &T) -> Result<Response<RaftMessage>, Status> {
        Ok(Response::new(RaftMessage {
            cluster_id: self.app.cluster_id.wire(),
            payload: encode(v)?,
            target_id: 0,
            wire_version: WIRE_VERSION,
        }))
    }

    /// The span for a forwarded client operation, continuing the caller's trace.
    fn server_span(
        &self,
        name: &'static str,
        metadata: &tonic::metadata::MetadataMap,
    ) -> tracing::Span {
        let span = tracing::info_span!(
            "peer.forward",
            otel.name = name,
            otel.kind = "server",
            node = %self.app.identity.name
        );
        crate::telemetry::adopt_grpc_parent(&span, metadata);
        span
    }

    fn disk_error(e: std::io::Error) -> Status {
        tracing::error!(error = %e, "writing a received snapshot failed");
        errors::status(
            tonic::Code::Internal,
            format!("writing the snapshot failed: {e}"),
            ErrorReason::Internal,
        )
    }

    fn raft_stopped(e: impl std::fmt::Display) -> Status {
        errors::status(
            tonic::Code::Unavailable,
            format!("raft stopped: {e}"),
            ErrorReason::Unavailable,
        )
    }

    /// Vote and pre-vote: refused while this node abstains after repairing its log.
    async fn handle_vote(
        &self,
        req: Request<RaftMessage>,
        pre: bool,
    ) -> Result<Response<RaftMessage>, Status> {
        let msg = req.into_inner();
        self.check_raft(&msg.cluster_id, msg.target_id, msg.wire_version)?;
        if let Some(why) = self.app.abstaining() {
            return Err(errors::status(
                tonic::Code::Unavailable,
                why,
                ErrorReason::Abstaining,
            ));
        }
        let rpc = decode(&msg.payload).map_err(Self::bad_payload)?;
        let resp = if pre {
            self.app.raft.pre_vote(rpc).await
        } else {
            self.app.raft.vote(rpc).await
        };
        self.reply(&resp.map_err(Self::raft_stopped)?)
    }
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let msg = req.into_inner();
        self.check_raft(&msg.cluster_id, msg.target_id, msg.wire_version)?;
        let rpc = decode(&msg.payload).map_err(Self::bad_payload)?;
        let resp = self
            .app
            .raft
            .append_entries(rpc)
            .await
            .map_err(Self::raft_stopped)?;
        // Heard from the current leader (a stale one gets HigherVote and does not count).
        if !matches!(resp, openraft::raft::AppendEntriesResponse::HigherVote(_)) {
            self.app.note_leader_contact();
        }
        self.reply(&resp)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.handle_vote(req, false).await
    }

    async fn pre_vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.handle_vote(req, true).await
    }

    async fn transfer_leader(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let msg = req.into_inner();
        self.check_raft(&msg.cluster_id, msg.target_id, msg.wire_version)?;
        let rpc = decode(&msg.payload).map_err(Self::bad_payload)?;
        let resp = self
            .app
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(Self::raft_stopped)?;
        self.reply(&resp)
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftMessage>, Status> {
        let mut stream = req.into_inner();
        let mut vote: Option<Vote> = None;
        let mut meta: Option<SnapshotMeta> = None;
        // Chunks go to a temporary file as they arrive: a snapshot of any size costs one chunk
        // of memory. Dropped on any early return, the file is deleted.
        let mut writer: Option<SnapshotWriter> = None;
        let mut done = false;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            let mut out = match writer.take() {
                Some(out) => out,
                None => {
                    self.check_raft(&chunk.cluster_id, chunk.target_id, chunk.wire_version)?;
                    vote = Some(decode(&chunk.vote).map_err(Self::bad_payload)?);
                    let m: SnapshotMeta = decode(&chunk.meta).map_err(Self::bad_payload)?;
                    let format = match chunk.data_format {
                        0 => 1,
                        f => u8::try_from(f)
                            .ok()
                            .filter(|f| *f <= crate::codec::SNAPSHOT_FORMAT)
                            .ok_or_else(|| {
                                errors::status(
                                    tonic::Code::FailedPrecondition,
                                    format!(
                                        "snapshot in format {f}, newer than this node reads ({}): upgrade this node first",
                                        crate::codec::SNAPSHOT_FORMAT
                                    ),
                                    ErrorReason::Internal,
                                )
                            })?,
                    };
                    let out = self
                        .app
                        .snapshots
                        .create_in(&m, format)
                        .map_err(Self::disk_error)?;
                    meta = Some(m);
                    out
                }
            };
            let limit = self.app.config.raft.max_snapshot_bytes;
            if out.data_len() + chunk.data.len() as u64 > limit {
                return Err(errors::status(
                    tonic::Code::ResourceExhausted,
                    format!("snapshot exceeds raft.maxSnapshotBytes ({limit} bytes)"),
                    ErrorReason::ResourceExhausted,
                ));
            }
            let last = chunk.done;
            out = tokio::task::spawn_blocking(move || {
                out.write_all(&chunk.data)?;
                Ok::<_, std::io::Error>(out)
            })
            .await
            .map_err(|e| Self::disk_error(std::io::Error::other(e.to_string())))?
            .map_err(Self::disk_error)?;
            writer = Some(out);
            if last {
                done = true;
                break;
            }
        }
        let (Some(vote), Some(meta), Some(out), true) = (vote, meta, writer, done) else {
            return Err(errors::status(
                tonic::Code::InvalidArgument,
                "snapshot stream ended before its last chunk",
                ErrorReason::InvalidArgument,
            ));
        };
        let file = tokio::task::spawn_blocking(move || out.finish())
            .await
            .map_err(|e| Self::disk_error(std::io::Error::other(e.to_string())))?
            .map_err(Self::disk_error)?;
        let snapshot = Snapshot {
            meta,
            snapshot: file,
        };
        let resp = self
            .app
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(Self::raft_stopped)?;
        self.reply(&resp)
    }

    async fn forward_write(
        &self,
        req: Request<WriteRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        let span = self.server_span("peer.forward_write", req.metadata());
        self.forward_write_inner(req).instrument(span).await
    }

    async fn forward_read(
        &self,
        req: Request<ReadRequest>,
    ) -> Result<Response<ReadResponse>, Status> {
        let span = self.server_span("peer.forward_read", req.metadata());
        self.forward_read_inner(req).instrument(span).await
    }

    async fn forward_list(
        &self,
        req: Request<ListRequest>,
    ) -> Result<Response<ListResponse>, Status> {
        let span = self.server_span("peer.forward_list", req.metadata());
        self.forward_list_inner(req).instrument(span).await
    }

    async fn lease_keep_alive(
        &self,
        req: Request<LeaseRequest>,
    ) -> Result<Response<LeaseAnswer>, Status> {
        let req = req.into_inner();
        self.check_cluster(&req.cluster_id)?;
        let answer = self.app.lease_answer(&req, true).await.map_err(to_status)?;
        Ok(Response::new(answer))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseRequest>,
    ) -> Result<Response<LeaseAnswer>, Status> {
        let req = req.into_inner();
        self.check_cluster(&req.cluster_id)?;
        let answer = self
            .app
            .lease_answer(&req, false)
            .await
            .map_err(to_status)?;
        Ok(Response::new(answer))
    }

    async fn read_index(
        &self,
        req: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        let deadline = tokio::time::Instant::now() + self.app.config.limits.request_timeout;
        self.check_cluster(&req.into_inner().cluster_id)?;
        let index = self.app.read_index(deadline).await.map_err(to_status)?;
        Ok(Response::new(ReadIndexResponse { index }))
    }
}

impl PeerService {
    async fn forward_write_inner(
        &self,
        req: Request<WriteRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        let deadline = tokio::time::Instant::now() + self.app.config.limits.request_timeout;
        let _charge = req.extensions().get::<ForwardCharge>().cloned();
        let msg = req.into_inner();
        check_wire_version(msg.wire_version)?;
        self.check_cluster(&msg.cluster_id)?;
        let cmd: Command = decode(&msg.command).map_err(Self::bad_payload)?;
        if !self.app.is_leader() {
            return Err(to_status(ServiceError::NotLeader));
        }
        let written = self.app.propose(cmd, deadline).await.map_err(to_status)?;
        Ok(Response::new(WriteResponse {
            log_index: written.log_index,
            result: encode(&written.result)?,
            wire_version: WIRE_VERSION,
        }))
    }

    async fn forward_read_inner(
        &self,
        req: Request<ReadRequest>,
    ) -> Result<Response<ReadResponse>, Status> {
        let deadline = tokio::time::Instant::now() + self.app.config.limits.request_timeout;
        let msg = req.into_inner();
        self.check_cluster(&msg.cluster_id)?;
        self.app.read_barrier(deadline).await.map_err(to_status)?;
        let found = self.app.legacy_local_get(&msg.key);
        Ok(Response::new(match found {
            Some(v) => ReadResponse {
                found: true,
                value: v.value,
                revision: v.revision,
            },
            None => ReadResponse::default(),
        }))
    }

    async fn forward_list_inner(
        &self,
        req: Request<ListRequest>,
    ) -> Result<Response<ListResponse>, Status> {
        let deadline = tokio::time::Instant::now() + self.app.config.limits.request_timeout;
        let msg = req.into_inner();
        self.check_cluster(&msg.cluster_id)?;
        let limit = (msg.limit as usize).clamp(1, self.app.config.limits.max_list_limit);
        self.app.read_barrier(deadline).await.map_err(to_status)?;
        let (keys, more) = self
            .app
            .legacy_local_list(&msg.prefix, &msg.start_after, limit);
        Ok(Response::new(ListResponse { keys, more }))
    }
}
