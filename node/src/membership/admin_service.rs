//! The gRPC face of the admin operations.

use std::sync::Arc;

use concord_proto::admin_server::Admin;
use concord_proto::{
    AddLearnerRequest, AdminResult, InitRequest, MembersRequest, MembersResponse,
    NodeStatusRequest, NodeStatusResponse, PromoteRequest, RemoveMemberRequest,
    TransferLeaderRequest,
};
use tonic::{Request, Response, Status};

use super::hop_of;
use crate::app::App;
use crate::auth::Caller;

pub struct AdminService {
    pub app: Arc<App>,
}

/// Who may call the admin service while auth is on: a connection with a certificate the peer
/// CA signed (members, the operator: the peer port's trust boundary; they act as root), or a
/// root user's token (`token` metadata; a member forwarding an admin request signs one for its
/// caller). The caller goes with the request, for a change forwarded to the leader.
pub fn admin_gate(app: Arc<App>) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut req: Request<()>| {
        let state = app.state.read();
        let caller = if !state.auth.enabled() {
            Caller::Anyone
        } else if req
            .extensions()
            .get::<crate::tls::PeerConnectInfo>()
            .is_some_and(|c| c.peer_certificate)
        {
            Caller::User(crate::auth::ROOT.to_string())
        } else {
            let headers = req.metadata().clone().into_headers();
            Caller::of_request(&state.auth, &headers, None)
                .and_then(|c| c.check_root(&state.auth).map(|()| c))
                .map_err(|r| {
                    r.count();
                    r.grpc()
                })?
        };
        drop(state);
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}

/// Runs `f` as the request's caller (as the gate found it).
async fn as_caller<T, F: std::future::Future>(req: &Request<T>, f: F) -> F::Output {
    let caller = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or(crate::auth::Refusal::NoCredentials);
    crate::auth::serving(caller, None, f).await
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn init(&self, req: Request<InitRequest>) -> Result<Response<AdminResult>, Status> {
        Ok(Response::new(self.app.admin_init(req.into_inner()).await?))
    }

    async fn add_learner(
        &self,
        req: Request<AddLearnerRequest>,
    ) -> Result<Response<AdminResult>, Status> {
        Ok(Response::new({
            let hop = hop_of(&req);
            let call = self.app.admin_add_learner(req.get_ref().clone(), hop);
            as_caller(&req, call).await?
        }))
    }
    async fn promote(&self, req: Request<PromoteRequest>) -> Result<Response<AdminResult>, Status> {
        Ok(Response::new({
            let hop = hop_of(&req);
            let call = self.app.admin_promote(*req.get_ref(), hop);
            as_caller(&req, call).await?
        }))
    }
    async fn remove_member(
        &self,
        req: Request<RemoveMemberRequest>,
    ) -> Result<Response<AdminResult>, Status> {
        Ok(Response::new({
            let hop = hop_of(&req);
            let call = self.app.admin_remove(*req.get_ref(), hop);
            as_caller(&req, call).await?
        }))
    }
    async fn transfer_leader(
        &self,
        req: Request<TransferLeaderRequest>,
    ) -> Result<Response<AdminResult>, Status> {
        Ok(Response::new({
            let hop = hop_of(&req);
            let call = self.app.admin_transfer_leader(*req.get_ref(), hop);
            as_caller(&req, call).await?
        }))
    }
    async fn members(
        &self,
        req: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let call = self.app.admin_members(hop_of(&req));
        Ok(Response::new(as_caller(&req, call).await?))
    }
    async fn node_status(
        &self,
        _req: Request<NodeStatusRequest>,
    ) -> Result<Response<NodeStatusResponse>, Status> {
        Ok(Response::new(self.app.admin_node_status().await))
    }

    type SnapshotStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<concord_proto::BackupChunk, Status>> + Send>,
    >;

    async fn snapshot(
        &self,
        _req: Request<concord_proto::BackupRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let backup = crate::backup::serve::start(&self.app)
            .await
            .map_err(|e| crate::api::etcd::service_status(&e))?;
        let chunks = tokio_stream::wrappers::ReceiverStream::new(backup.chunks);
        let stream = futures::StreamExt::map(chunks, |chunk| {
            let data = chunk.map_err(|e| Status::internal(format!("backup: {e}")))?;
            Ok(concord_proto::BackupChunk {
                data: data.to_vec(),
                remaining_bytes: 0,
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn restore(
        &self,
        req: Request<tonic::Streaming<concord_proto::BackupChunk>>,
    ) -> Result<Response<AdminResult>, Status> {
        let chunks = futures::StreamExt::map(req.into_inner(), |c| c.map(|c| c.data));
        Ok(Response::new(self.app.admin_restore(chunks).await?))
    }
}
