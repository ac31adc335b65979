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

pub struct AdminService {
    pub app: Arc<App>,
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
            self.app.admin_add_learner(req.into_inner(), hop).await?
        }))
    }
    async fn promote(&self, req: Request<PromoteRequest>) -> Result<Response<AdminResult>, Status> {
        Ok(Response::new({
            let hop = hop_of(&req);
            self.app.admin_promote(req.into_inner(), hop).await?
        }))
    }
    async fn remove_member(
        &self,
        req: Request<RemoveMemberRequest>,
    ) -> Result<Response<AdminResult>, Status> {
        Ok(Response::new({
            let hop = hop_of(&req);
            self.app.admin_remove(req.into_inner(), hop).await?
        }))
    }
    async fn transfer_leader(
        &self,
        req: Request<TransferLeaderRequest>,
    ) -> Result<Response<AdminResult>, Status> {
        Ok(Response::new({
            let hop = hop_of(&req);
            self.app
                .admin_transfer_leader(req.into_inner(), hop)
                .await?
        }))
    }
    async fn members(
        &self,
        req: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        Ok(Response::new(self.app.admin_members(hop_of(&req)).await?))
    }
    async fn node_status(
        &self,
        _req: Request<NodeStatusRequest>,
    ) -> Result<Response<NodeStatusResponse>, Status> {
        Ok(Response::new(self.app.admin_node_status().await))
    }
}
