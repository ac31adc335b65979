//! etcd's Lease service over `crate::lease`: Grant, Revoke, KeepAlive (a stream; each request
//! renews once, on the leader), TimeToLive and Leases. Any member serves them; renewals and
//! TTL queries are answered by the leader, which times leases.

use std::pin::Pin;
use std::sync::Arc;

use concord_proto::etcd::etcdserverpb as pb;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::convert::mvcc_status;
use super::{header, service_status};
use crate::app::App;
use crate::requests::ServiceError;

pub struct LeaseService {
    pub app: Arc<App>,
}

impl LeaseService {
    fn header(&self) -> Option<pb::ResponseHeader> {
        Some(header(&self.app, self.app.state.read().kv.revision()))
    }
}

type KeepAlives = Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let req = req.into_inner();
        let (id, ttl) = self
            .app
            .lease_grant(req.id, req.ttl)
            .await
            .map_err(|e| service_status(&e))?
            .map_err(|e| mvcc_status(&e))?;
        Ok(Response::new(pb::LeaseGrantResponse {
            header: self.header(),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let id = req.into_inner().id;
        // Revoking deletes the lease's keys: the caller must be allowed to write each (etcd).
        let keys: Vec<Vec<u8>> = self
            .app
            .state
            .read()
            .kv
            .leases()
            .get(id)
            .map(|l| l.keys.iter().map(|k| k.to_vec()).collect())
            .unwrap_or_default();
        for key in keys {
            super::kv::authorize(
                &self.app,
                crate::auth::Access::Write,
                &crate::store::mvcc::KeyRange::One(key),
            )?;
        }
        let revision = self
            .app
            .lease_revoke(id)
            .await
            .map_err(|e| service_status(&e))?
            .map_err(|e| mvcc_status(&e))?;
        Ok(Response::new(pb::LeaseRevokeResponse {
            header: Some(header(&self.app, revision)),
        }))
    }

    type LeaseKeepAliveStream = KeepAlives;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut requests = req.into_inner();
        let app = self.app.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(Ok(r)) = requests.next().await {
                // etcd answers an unknown (or expired) lease with TTL 0, not an error.
                let answer = match app.lease_keep_alive(r.id).await {
                    Ok(ttl) => pb::LeaseKeepAliveResponse {
                        header: Some(header(&app, app.state.read().kv.revision())),
                        id: r.id,
                        ttl: ttl.unwrap_or(0),
                    },
                    // No leader for now (an election): this renewal goes unanswered and the
                    // stream stays, so the client's next one (at a third of the TTL) reaches
                    // the new leader, which has restarted every TTL.
                    Err(
                        e @ (ServiceError::NoLeader(_)
                        | ServiceError::NotLeader
                        | ServiceError::Unavailable(_)),
                    ) => {
                        tracing::debug!(lease = r.id, error = %e, "a renewal found no leader");
                        continue;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(service_status(&e))).await;
                        break;
                    }
                };
                if tx.send(Ok(answer)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let req = req.into_inner();
        let ttl = self
            .app
            .lease_time_to_live(req.id, req.keys)
            .await
            .map_err(|e| service_status(&e))?;
        // etcd: an unknown lease has TTL -1.
        let (ttl, granted_ttl, keys) = match ttl {
            Some(t) => (t.remaining, t.granted, t.keys),
            None => (-1, 0, Vec::new()),
        };
        Ok(Response::new(pb::LeaseTimeToLiveResponse {
            header: self.header(),
            id: req.id,
            ttl,
            granted_ttl,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        _: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let ids = self
            .app
            .lease_list()
            .await
            .map_err(|e| service_status(&e))?;
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: self.header(),
            leases: ids.into_iter().map(|id| pb::LeaseStatus { id }).collect(),
        }))
    }
}
