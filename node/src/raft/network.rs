//! openraft's network: sends Raft RPCs to one peer over its gRPC channel.

use std::future::Future;
use std::time::Instant;

use concord_proto::{RaftMessage, SnapshotChunk};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::raft::{TransferLeaderRequest, TransferLeaderResponse};

use super::channels::Channels;
use crate::codec::{check_wire_version, decode_wire, encode_wire, WIRE_VERSION};
use crate::raft::{Member, NodeId, Snapshot, TypeConfig, Vote};
use crate::storage::identity::ClusterId;
use crate::storage::SnapshotFile;
use crate::telemetry::metrics::metrics;

/// Snapshot chunk size on the wire.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
pub struct NetworkFactory {
    pub channels: Channels,
    pub cluster_id: ClusterId,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerNetwork {
        PeerNetwork {
            target,
            addr: node.addr.clone(),
            channels: self.channels.clone(),
            cluster_id: self.cluster_id.clone(),
        }
    }
}

pub struct PeerNetwork {
    target: NodeId,
    addr: String,
    channels: Channels,
    cluster_id: ClusterId,
}

type Rpc<T> = Result<T, RPCError<TypeConfig>>;

fn unreachable(e: impl ToString) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(e.to_string()))
}

impl PeerNetwork {
    async fn call<Req, Resp>(
        &self,
        method: &'static str,
        req: &Req,
        option: &RPCOption,
    ) -> Rpc<Resp>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
    {
        let started = Instant::now();
        let result = self.call_inner(method, req, option).await;
        let m = metrics();
        m.peer_rpc_seconds
            .with_label_values(&[method])
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            m.peer_rpc_failures.with_label_values(&[method]).inc();
        }
        result
    }

    async fn call_inner<Req, Resp>(
        &self,
        method: &'static str,
        req: &Req,
        option: &RPCOption,
    ) -> Rpc<Resp>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
    {
        let payload = encode_wire(req)
            .map_err(|e| RPCError::Network(NetworkError::from_string(e.message())))?;
        let mut request = tonic::Request::new(RaftMessage {
            cluster_id: self.cluster_id.wire(),
            payload,
            target_id: self.target,
            wire_version: WIRE_VERSION,
        });
        request.set_timeout(option.soft_ttl());
        let mut client = self
            .channels
            .client(&self.addr)
            .map_err(|e| unreachable(e.message()))?;
        let reply = match method {
            "append_entries" => client.append_entries(request).await,
            "vote" => client.vote(request).await,
            "pre_vote" => client.pre_vote(request).await,
            "transfer_leader" => client.transfer_leader(request).await,
            other => {
                return Err(RPCError::Network(NetworkError::from_string(format!(
                    "unknown method {other}"
                ))))
            }
        }
        .map_err(|status| {
            unreachable(format!(
                "{} to node {} at {}: {}",
                method,
                self.target,
                self.addr,
                status.message()
            ))
        })?;
        let reply = reply.into_inner();
        check_wire_version(reply.wire_version)
            .map_err(|s| RPCError::Network(NetworkError::from_string(s.message())))?;
        decode_wire(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<TypeConfig>> {
        self.call("append_entries", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<VoteResponse<TypeConfig>> {
        self.call("vote", &rpc, &option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<VoteResponse<TypeConfig>> {
        self.call("pre_vote", &rpc, &option).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<TransferLeaderResponse<TypeConfig>> {
        self.call("transfer_leader", &req, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let started = Instant::now();
        let to_err = |e: String| StreamingError::Unreachable(Unreachable::from_string(e));
        let vote_bytes = encode_wire(&vote).map_err(|e| to_err(e.message().to_string()))?;
        let meta_bytes =
            encode_wire(&snapshot.meta).map_err(|e| to_err(e.message().to_string()))?;
        let chunks = snapshot_chunks(
            snapshot.snapshot,
            self.cluster_id.wire(),
            self.target,
            vote_bytes,
            meta_bytes,
        );
        let mut client = self
            .channels
            .client(&self.addr)
            .map_err(|e| to_err(e.message().to_string()))?;
        let mut request = tonic::Request::new(chunks);
        // A snapshot may be large: allow the whole hard TTL, not the soft one.
        request.set_timeout(option.hard_ttl());
        let send = client.install_snapshot(request);
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            reply = send => reply,
        };
        metrics()
            .peer_rpc_seconds
            .with_label_values(&["install_snapshot"])
            .observe(started.elapsed().as_secs_f64());
        let reply = reply.map_err(|s| {
            metrics()
                .peer_rpc_failures
                .with_label_values(&["install_snapshot"])
                .inc();
            to_err(format!(
                "install_snapshot to {}: {}",
                self.addr,
                s.message()
            ))
        })?;
        let reply = reply.into_inner();
        check_wire_version(reply.wire_version)
            .map_err(|s| StreamingError::Network(NetworkError::from_string(s.message())))?;
        decode_wire(&reply.payload).map_err(|e| StreamingError::Network(NetworkError::new(&e)))
    }
}

/// The chunks of one snapshot, read from its file one at a time as the stream is polled, so a
/// snapshot of any size costs one chunk of memory. The first chunk carries the vote and the
/// meta; an empty snapshot is still one chunk, carrying them and `done`. A read error ends the
/// stream without `done`, which the receiver refuses.
fn snapshot_chunks(
    file: SnapshotFile,
    cluster_id: String,
    target_id: NodeId,
    vote: Vec<u8>,
    meta: Vec<u8>,
) -> impl futures::Stream<Item = SnapshotChunk> + Send + 'static {
    let file = std::sync::Arc::new(file);
    let total = file.data_len();
    let first = Some((vote, meta));
    futures::stream::unfold(Some((0u64, first)), move |state| {
        let file = file.clone();
        let cluster_id = cluster_id.clone();
        async move {
            let (offset, first) = state?;
            let read = tokio::task::spawn_blocking(move || {
                let want = (total - offset).min(SNAPSHOT_CHUNK_BYTES as u64) as usize;
                let mut buf = vec![0u8; want];
                let mut filled = 0;
                while filled < want {
                    let n = file.read_data_at(offset + filled as u64, &mut buf[filled..])?;
                    if n == 0 {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "snapshot file shorter than its header says",
                        ));
                    }
                    filled += n;
                }
                Ok(buf)
            })
            .await;
            let data = match read {
                Ok(Ok(data)) => data,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading the snapshot to send failed");
                    return None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "snapshot read task failed");
                    return None;
                }
            };
            let next = offset + data.len() as u64;
            let done = next >= total;
            let (vote, meta) = first.unwrap_or_default();
            let chunk = SnapshotChunk {
                cluster_id,
                target_id,
                vote,
                meta,
                data,
                done,
                wire_version: WIRE_VERSION,
            };
            Some((chunk, (!done).then_some((next, None))))
        }
    })
}
