//! etcd's `v3lock` and `v3election` services: the lock and election recipes run on the server,
//! for clients that call them instead of running the recipes themselves (etcdctl's `lock` and
//! `elect` run them client-side over KV, Lease and Watch, which work too).
//!
//! Both are etcd's `concurrency` recipes: a contender writes `NAME/<lease id hex>` attached to
//! its lease (once: a retry finds its key), the lowest create revision under `NAME/` holds the
//! lock or leads, and each other contender waits for the deletion of the key just before its
//! own — by its owner, or by its lease expiring.

use std::sync::Arc;
use std::time::Duration;

use concord_proto::etcd::mvccpb;
use concord_proto::etcd::v3electionpb as epb;
use concord_proto::etcd::v3lockpb as lpb;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::convert::{self, mvcc_status};
use super::kv::{authorize, write_txn};
use super::{header, service_status};
use crate::app::App;
use crate::auth::Access;
use crate::store::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRequest, KeyRange, KeyValue, Op, OpResult,
    PutRequest, RangeRequest, SortOrder, SortTarget, TxnRequest,
};
use crate::watch::{Feed, Update, WatchSpec};

fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

/// Writes `key` (attached to `lease`) unless it exists; its create revision.
async fn enqueue(app: &App, key: &[u8], value: &[u8], lease: i64) -> Result<u64, Status> {
    let one = KeyRange::One(key.to_vec());
    let t = TxnRequest {
        compare: vec![Compare {
            keys: one.clone(),
            result: CompareResult::Equal,
            target: CompareTarget::Create(0),
        }],
        success: vec![Op::Put(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
        })],
        failure: vec![Op::Range(RangeRequest {
            keys: Some(one),
            ..RangeRequest::default()
        })],
    };
    let (result, revision) = write_txn(app, t).await?;
    if result.succeeded {
        return Ok(revision);
    }
    match result.responses.first() {
        Some(OpResult::Range(r)) => r
            .kvs
            .first()
            .map(|kv| kv.create_revision)
            .ok_or_else(|| Status::unavailable("the contender's key vanished; retry")),
        _ => Err(Status::internal("an unexpected transaction answer")),
    }
}

/// The key under `prefix` created last before `before` (0: the first one of all).
fn neighbour(app: &App, prefix: &[u8], before: u64) -> Result<Option<KeyValue>, Status> {
    let (order, max) = if before == 0 {
        (SortOrder::Ascend, 0)
    } else {
        (SortOrder::Descend, before - 1)
    };
    let req = RangeRequest {
        keys: Some(KeyRange::prefix(prefix)),
        limit: 1,
        sort_order: order,
        sort_target: SortTarget::Create,
        max_create_revision: max,
        ..RangeRequest::default()
    };
    let r = app
        .state
        .read()
        .kv
        .range(&req)
        .map_err(|e| mvcc_status(&e))?;
    Ok(r.kvs.into_iter().next())
}

/// Waits until `key` is deleted at or after `from` (or history from there is gone).
async fn deleted(app: &App, key: &[u8], from: u64) -> Result<(), Status> {
    let mut feed = Feed::new(
        &app.watches,
        app.state.clone(),
        64 * 1024,
        Duration::from_secs(3600),
    );
    let spec = WatchSpec {
        range: KeyRange::One(key.to_vec()),
        start_revision: from.max(1),
        prev_kv: false,
        no_put: true,
        no_delete: false,
        progress_notify: false,
    };
    feed.create(0, spec)
        .map_err(|e| Status::resource_exhausted(e.to_string()))?;
    loop {
        match feed.next().await {
            Update::Events { .. } | Update::Canceled { .. } => return Ok(()),
            Update::Progress { .. } => {}
        }
    }
}

/// Waits until no key under `prefix` was created before `mine`.
async fn wait_turn(app: &App, prefix: &[u8], mine: u64) -> Result<(), Status> {
    loop {
        app.linearize().await.map_err(|e| service_status(&e))?;
        let Some(before) = neighbour(app, prefix, mine)? else {
            return Ok(());
        };
        let now = app.state.read().kv.revision();
        deleted(app, &before.key, now + 1).await?;
    }
}

async fn delete_key(app: &App, key: &[u8]) -> Result<u64, Status> {
    let t = TxnRequest {
        compare: vec![],
        success: vec![Op::Delete(DeleteRequest {
            keys: KeyRange::One(key.to_vec()),
            prev_kv: false,
        })],
        failure: vec![],
    };
    Ok(write_txn(app, t).await?.1)
}

/// Joins the queue for `name` with `value` and waits until first: the key and its revision.
async fn acquire(
    app: &App,
    name: &[u8],
    lease: i64,
    value: &[u8],
) -> Result<(Vec<u8>, u64), Status> {
    let key = contender_key(name, lease)?;
    // The recipe writes its own key and reads the others under the name (etcd checks the
    // KV requests its recipe server makes as the caller's).
    authorize(app, Access::Write, &KeyRange::One(key.clone()))?;
    authorize(app, Access::Read, &KeyRange::prefix(&prefix_of(name)))?;
    let mine = enqueue(app, &key, value, lease).await?;
    wait_turn(app, &prefix_of(name), mine).await?;
    Ok((key, mine))
}

fn contender_key(name: &[u8], lease: i64) -> Result<Vec<u8>, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument(
            "etcdserver: the name must not be empty",
        ));
    }
    if lease <= 0 {
        return Err(Status::invalid_argument(
            "etcdserver: a lease is required (the contender's session)",
        ));
    }
    let mut key = prefix_of(name);
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    Ok(key)
}

pub struct LockService {
    pub app: Arc<App>,
}

#[tonic::async_trait]
impl lpb::lock_server::Lock for LockService {
    async fn lock(
        &self,
        req: Request<lpb::LockRequest>,
    ) -> Result<Response<lpb::LockResponse>, Status> {
        let r = req.into_inner();
        let (key, _) = acquire(&self.app, &r.name, r.lease, b"").await?;
        Ok(Response::new(lpb::LockResponse {
            header: Some(header(&self.app, self.app.state.read().kv.revision())),
            key,
        }))
    }

    async fn unlock(
        &self,
        req: Request<lpb::UnlockRequest>,
    ) -> Result<Response<lpb::UnlockResponse>, Status> {
        let key = req.into_inner().key;
        authorize(&self.app, Access::Write, &KeyRange::One(key.clone()))?;
        let revision = delete_key(&self.app, &key).await?;
        Ok(Response::new(lpb::UnlockResponse {
            header: Some(header(&self.app, revision)),
        }))
    }
}

pub struct ElectionService {
    pub app: Arc<App>,
}

/// etcd's `ErrElectionNotLeader` and `ErrElectionNoLeader`.
fn not_leader() -> Status {
    Status::failed_precondition("election: not leader")
}

fn no_leader() -> Status {
    Status::not_found("election: no leader")
}

type Observations =
    std::pin::Pin<Box<dyn Stream<Item = Result<epb::LeaderResponse, Status>> + Send>>;

impl ElectionService {
    /// A transaction that runs `op` if `leader` still holds its key (same create revision).
    async fn as_leader(&self, leader: Option<epb::LeaderKey>, op: Op) -> Result<u64, Status> {
        let leader =
            leader.ok_or_else(|| Status::invalid_argument("etcdserver: no leader key given"))?;
        let own = KeyRange::One(leader.key.clone());
        authorize(&self.app, Access::Read, &own)?;
        authorize(&self.app, Access::Write, &own)?;
        let t = TxnRequest {
            compare: vec![Compare {
                keys: KeyRange::One(leader.key.clone()),
                result: CompareResult::Equal,
                target: CompareTarget::Create(u64::try_from(leader.rev).unwrap_or(0)),
            }],
            success: vec![op],
            failure: vec![],
        };
        let (result, revision) = write_txn(&self.app, t).await?;
        if result.succeeded {
            Ok(revision)
        } else {
            Err(not_leader())
        }
    }
}

#[tonic::async_trait]
impl epb::election_server::Election for ElectionService {
    async fn campaign(
        &self,
        req: Request<epb::CampaignRequest>,
    ) -> Result<Response<epb::CampaignResponse>, Status> {
        let r = req.into_inner();
        let (key, mine) = acquire(&self.app, &r.name, r.lease, &r.value).await?;
        Ok(Response::new(epb::CampaignResponse {
            header: Some(header(&self.app, self.app.state.read().kv.revision())),
            leader: Some(epb::LeaderKey {
                name: r.name,
                key,
                rev: mine as i64,
                lease: r.lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        req: Request<epb::ProclaimRequest>,
    ) -> Result<Response<epb::ProclaimResponse>, Status> {
        let r = req.into_inner();
        let key = r.leader.as_ref().map(|l| l.key.clone()).unwrap_or_default();
        let put = Op::Put(PutRequest {
            key,
            value: r.value,
            lease: 0,
            prev_kv: false,
            ignore_value: false,
            ignore_lease: true,
        });
        let revision = self.as_leader(r.leader, put).await?;
        Ok(Response::new(epb::ProclaimResponse {
            header: Some(header(&self.app, revision)),
        }))
    }

    async fn leader(
        &self,
        req: Request<epb::LeaderRequest>,
    ) -> Result<Response<epb::LeaderResponse>, Status> {
        let prefix = prefix_of(&req.into_inner().name);
        authorize(&self.app, Access::Read, &KeyRange::prefix(&prefix))?;
        self.app.linearize().await.map_err(|e| service_status(&e))?;
        let kv = neighbour(&self.app, &prefix, 0)?.ok_or_else(no_leader)?;
        Ok(Response::new(epb::LeaderResponse {
            header: Some(header(&self.app, self.app.state.read().kv.revision())),
            kv: Some(convert::kv(kv)),
        }))
    }

    type ObserveStream = Observations;

    /// The leader now, then each change of leader or of its value, as etcd's `Observe`.
    async fn observe(
        &self,
        req: Request<epb::LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let app = self.app.clone();
        let prefix = prefix_of(&req.into_inner().name);
        authorize(&self.app, Access::Read, &KeyRange::prefix(&prefix))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut last: Option<mvccpb::KeyValue> = None;
            loop {
                if app.linearize().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                let now = app.state.read().kv.revision();
                let current = match neighbour(&app, &prefix, 0) {
                    Ok(kv) => kv.map(convert::kv),
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                if let Some(kv) = &current {
                    let changed = last
                        .as_ref()
                        .is_none_or(|l| l.key != kv.key || l.mod_revision != kv.mod_revision);
                    if changed {
                        let resp = epb::LeaderResponse {
                            header: Some(header(&app, now)),
                            kv: Some(kv.clone()),
                        };
                        if tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                    }
                }
                last = current;
                // Wait for any change under the prefix after `now`.
                let mut feed = Feed::new(
                    &app.watches,
                    app.state.clone(),
                    64 * 1024,
                    Duration::from_secs(3600),
                );
                let spec = WatchSpec {
                    range: KeyRange::prefix(&prefix),
                    start_revision: now + 1,
                    prev_kv: false,
                    no_put: false,
                    no_delete: false,
                    progress_notify: false,
                };
                if feed.create(0, spec).is_err() {
                    return;
                }
                tokio::select! {
                    _ = feed.next() => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn resign(
        &self,
        req: Request<epb::ResignRequest>,
    ) -> Result<Response<epb::ResignResponse>, Status> {
        let r = req.into_inner();
        let key = r.leader.as_ref().map(|l| l.key.clone()).unwrap_or_default();
        let delete = Op::Delete(DeleteRequest {
            keys: KeyRange::One(key),
            prev_kv: false,
        });
        let revision = self.as_leader(r.leader, delete).await?;
        Ok(Response::new(epb::ResignResponse {
            header: Some(header(&self.app, revision)),
        }))
    }
}
