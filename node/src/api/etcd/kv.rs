//! etcd's `KV` service on the MVCC store. Writes go through Raft as one [`Command::Txn`] each
//! (forwarded to the leader by a follower, as the seed API's are); reads are served from this
//! member's state, linearizable unless the request is `serializable`.

use std::sync::Arc;

use concord_proto::etcd::etcdserverpb as pb;
use concord_proto::etcd::etcdserverpb::kv_server::Kv;
use tonic::{Request, Response, Status};

use super::convert::{self, mvcc_status};
use super::{header, service_status};
use crate::app::App;
use crate::auth::Access;
use crate::store::mvcc::{KeyRange, MvccError, Op, OpResult, TxnRequest, TxnResult};
use crate::store::{Command, CommandResult};

pub struct KvService {
    pub app: Arc<App>,
}

/// Keys per message of a streamed range.
const RANGE_STREAM_CHUNK: usize = 1000;

type RangeChunks = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<pb::RangeStreamResponse, Status>> + Send + 'static>,
>;

/// Proposes a transaction; returns its result and the store revision after it.
pub(super) async fn write_txn(app: &App, txn: TxnRequest) -> Result<(TxnResult, u64), Status> {
    let written = app
        .write(Command::Txn(txn))
        .await
        .map_err(|e| service_status(&e))?;
    match written.result {
        CommandResult::Txn { result, revision } => {
            result.map(|r| (r, revision)).map_err(|e| mvcc_status(&e))
        }
        other => Err(Status::internal(format!(
            "a transaction produced {other:?}"
        ))),
    }
}

/// Refuses the request being served unless its caller may `access` every key of `keys`.
pub(super) fn authorize(app: &App, access: Access, keys: &KeyRange) -> Result<(), Status> {
    let state = app.state.read();
    crate::auth::caller(&state.auth)
        .and_then(|c| c.check(&state.auth, access, keys))
        .map_err(|r| super::auth::refused(&r))
}

/// Refuses the request being served unless its caller has the root role.
pub(super) fn authorize_root(app: &App) -> Result<(), Status> {
    let state = app.state.read();
    crate::auth::caller(&state.auth)
        .and_then(|c| c.check_root(&state.auth))
        .map_err(|r| super::auth::refused(&r))
}

/// What a transaction reads (its compares and ranges) and writes (its puts and deletes), in
/// both branches and nested transactions, as etcd checks it: all of it must be permitted,
/// whichever branch runs.
fn txn_access(txn: &TxnRequest, out: &mut Vec<(Access, KeyRange)>) {
    out.extend(txn.compare.iter().map(|c| (Access::Read, c.keys.clone())));
    for op in txn.success.iter().chain(&txn.failure) {
        match op {
            Op::Range(r) => out.extend(r.keys.clone().map(|k| (Access::Read, k))),
            Op::Put(p) => out.push((Access::Write, KeyRange::One(p.key.clone()))),
            Op::Delete(d) => out.push((Access::Write, d.keys.clone())),
            Op::Txn(t) => txn_access(t, out),
        }
    }
}

impl KvService {
    async fn write_txn(&self, txn: TxnRequest) -> Result<(TxnResult, u64), Status> {
        write_txn(&self.app, txn).await
    }

    fn one(op: Op) -> TxnRequest {
        TxnRequest {
            compare: Vec::new(),
            success: vec![op],
            failure: Vec::new(),
        }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        req: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let req = req.into_inner();
        let serializable = req.serializable;
        let range = convert::range_request(req, &self.app.config.limits)?;
        if let Some(keys) = &range.keys {
            authorize(&self.app, Access::Read, keys)?;
        }
        if !serializable {
            self.app.linearize().await.map_err(|e| service_status(&e))?;
        }
        let result = self.app.state.read().kv.range(&range);
        let result = result.map_err(|e| mvcc_status(&e))?;
        let header = header(&self.app, result.revision);
        Ok(Response::new(convert::range_response(header, result)))
    }

    type RangeStreamStream = RangeChunks;

    /// etcd 3.7's chunked range: the same result as `range`, its keys in messages of at most
    /// 1,000, the header, `more` and `count` on the last one.
    async fn range_stream(
        &self,
        req: Request<pb::RangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        let whole = self.range(req).await?.into_inner();
        let mut chunks: Vec<pb::RangeStreamResponse> = whole
            .kvs
            .chunks(RANGE_STREAM_CHUNK)
            .map(|kvs| pb::RangeStreamResponse {
                range_response: Some(pb::RangeResponse {
                    kvs: kvs.to_vec(),
                    ..Default::default()
                }),
            })
            .collect();
        if chunks.is_empty() {
            chunks.push(pb::RangeStreamResponse::default());
        }
        if let Some(last) = chunks.last_mut() {
            let last = last.range_response.get_or_insert_with(Default::default);
            last.header = whole.header;
            last.more = whole.more;
            last.count = whole.count;
        }
        Ok(Response::new(Box::pin(futures::stream::iter(
            chunks.into_iter().map(Ok),
        ))))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let put = convert::put_request(req.into_inner(), &self.app.config.limits)?;
        authorize(&self.app, Access::Write, &KeyRange::One(put.key.clone()))?;
        if put.prev_kv {
            authorize(&self.app, Access::Read, &KeyRange::One(put.key.clone()))?;
        }
        let (result, revision) = self.write_txn(Self::one(Op::Put(put))).await?;
        let prev_kv = match result.responses.into_iter().next() {
            Some(OpResult::Put { prev_kv }) => prev_kv.map(convert::kv),
            _ => None,
        };
        Ok(Response::new(pb::PutResponse {
            header: Some(header(&self.app, revision)),
            prev_kv,
        }))
    }

    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let delete = convert::delete_request(req.into_inner(), &self.app.config.limits)?;
        authorize(&self.app, Access::Write, &delete.keys)?;
        if delete.prev_kv {
            authorize(&self.app, Access::Read, &delete.keys)?;
        }
        let (result, revision) = self.write_txn(Self::one(Op::Delete(delete))).await?;
        let (deleted, prev_kvs) = match result.responses.into_iter().next() {
            Some(OpResult::Delete { deleted, prev_kvs }) => (deleted, prev_kvs),
            _ => (0, Vec::new()),
        };
        Ok(Response::new(pb::DeleteRangeResponse {
            header: Some(header(&self.app, revision)),
            deleted: deleted as i64,
            prev_kvs: prev_kvs.into_iter().map(convert::kv).collect(),
        }))
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let txn = convert::txn_request(req.into_inner(), &self.app.config.limits)?;
        let mut access = Vec::new();
        txn_access(&txn, &mut access);
        for (a, keys) in &access {
            authorize(&self.app, *a, keys)?;
        }
        if !txn.writes() {
            // Only reads (no put or delete in any branch): answered from this member's state
            // once it is linearizable, under one read lock, so compares and reads see one
            // revision; no Raft entry.
            self.app.linearize().await.map_err(|e| service_status(&e))?;
            let state = self.app.state.read();
            let result = state.kv.read_txn(&txn).map_err(|e| mvcc_status(&e))?;
            let header = header(&self.app, state.kv.revision());
            drop(state);
            return Ok(Response::new(convert::txn_response(header, result)));
        }
        let (result, revision) = self.write_txn(txn).await?;
        let header = header(&self.app, revision);
        Ok(Response::new(convert::txn_response(header, result)))
    }

    async fn compact(
        &self,
        req: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        authorize_root(&self.app)?;
        let revision = u64::try_from(req.into_inner().revision)
            .map_err(|_| Status::invalid_argument("etcdserver: revision must not be negative"))?;
        // Refused here only when this member already knows it would be: a compacted revision
        // stays compacted. A revision past this member's may be the leader's newest (this
        // member can lag it), so that is left to the check when the entry applies.
        let compacted = self.app.state.read().kv.compacted();
        if revision <= compacted {
            return Err(mvcc_status(&MvccError::Compacted { compacted }));
        }
        let written = self
            .app
            .write(Command::Compact { revision })
            .await
            .map_err(|e| service_status(&e))?;
        match written.result {
            CommandResult::Compact(Ok(())) => Ok(Response::new(pb::CompactionResponse {
                header: Some(header(&self.app, self.app.state.read().kv.revision())),
            })),
            CommandResult::Compact(Err(e)) => Err(mvcc_status(&e)),
            other => Err(Status::internal(format!("a compaction produced {other:?}"))),
        }
    }
}
