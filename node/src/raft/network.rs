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

/// The slowest transfer (network, the follower's decode and fsync) an append is allowed before
/// it counts as failed. openraft gives every append the heartbeat interval (100 ms by default)
/// whatever it carries: enough for a heartbeat, never enough for a batch of megabyte entries,
/// which then time out and are resent forever while the log grows (2,000 1 MiB writes stalled
/// a 3-node cluster). A dead follower is still found by the heartbeats, which carry nothing.
const SLOWEST_APPEND_BYTES_PER_SEC: f64 = 4.0 * 1024.0 * 1024.0;

/// The most entry bytes one append carries; a larger batch is sent in prefixes, each answered
/// to openraft as a partial success so it sends the rest next. openraft batches by count (up to
/// 300 entries), which with megabyte values would exceed the peer message limit.
const APPEND_BATCH_BYTES: u64 = 8 * 1024 * 1024;

/// How many of `entries`, from the first, fit in [`APPEND_BATCH_BYTES`]; at least one.
fn entries_within_budget<T: serde::Serialize>(entries: &[T]) -> usize {
    let mut total = 0u64;
    for (i, e) in entries.iter().enumerate() {
        total = total.saturating_add(crate::codec::encoded_len(e));
        if total > APPEND_BATCH_BYTES {
            return i.max(1);
        }
    }
    entries.len()
}

/// How long an RPC whose request is `bytes` long may take: openraft's soft TTL plus the time
/// its bytes take at the slowest rate we accept.
fn deadline_for(bytes: usize, soft_ttl: std::time::Duration) -> std::time::Duration {
    soft_ttl + std::time::Duration::from_secs_f64(bytes as f64 / SLOWEST_APPEND_BYTES_PER_SEC)
}

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
        request.set_timeout(deadline_for(
            request.get_ref().payload.len(),
            option.soft_ttl(),
        ));
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
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<TypeConfig>> {
        let fits = entries_within_budget(&rpc.entries);
        if fits == rpc.entries.len() {
            return self.call("append_entries", &rpc, &option).await;
        }
        rpc.entries.truncate(fits);
        let last_sent = rpc.entries.last().map(|e| e.log_id);
        match self.call("append_entries", &rpc, &option).await? {
            AppendEntriesResponse::Success => Ok(AppendEntriesResponse::PartialSuccess(last_sent)),
            other => Ok(other),
        }
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
    let data_format = u32::from(file.format());
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
                data_format,
            };
            Some((chunk, (!done).then_some((next, None))))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_batch_of_large_entries_is_cut_to_the_byte_budget_but_never_to_nothing() {
        let mib = vec![0u8; 1024 * 1024];
        let big: Vec<Vec<u8>> = (0..300).map(|_| mib.clone()).collect();
        // Each entry is 1 MiB plus its 8-byte length: seven fit in 8 MiB, the eighth does not.
        assert_eq!(entries_within_budget(&big), 7);
        let huge = vec![vec![0u8; 3 * APPEND_BATCH_BYTES as usize]; 2];
        assert_eq!(entries_within_budget(&huge), 1);
        let small: Vec<Vec<u8>> = (0..300).map(|_| vec![0u8; 100]).collect();
        assert_eq!(entries_within_budget(&small), 300);
        assert_eq!(entries_within_budget::<Vec<u8>>(&[]), 0);
    }

    #[test]
    fn an_append_gets_time_for_its_bytes_and_a_heartbeat_only_the_soft_ttl() {
        let ttl = Duration::from_millis(75);
        assert_eq!(deadline_for(0, ttl), ttl);
        let eight_mib = deadline_for(8 * 1024 * 1024, ttl);
        assert_eq!(eight_mib, ttl + Duration::from_secs(2));
    }
}
