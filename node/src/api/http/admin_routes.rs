//! `/admin/...`: the admin operations as JSON, for people with curl (and concordctl).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use concord_proto::{
    AddLearnerRequest, AdminResult, InitRequest, MemberSpec, PromoteRequest, RemoveMemberRequest,
    TransferLeaderRequest,
};
use serde_json::Value;

use super::error::{json_object, ApiError};
use super::schema::{
    AdminDone, ErrorBody, InitBody, MemberBody, MemberView, MembersResponse, NodeStatus,
    PromoteBody, RemoveBody, TransferBody,
};
use crate::app::App;
use crate::membership::{AdminError, Hop};

type ApiResult = Result<Json<AdminDone>, ApiError>;

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> ApiError {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, e.to_string(), e.retryable())
    }
}

fn spec(m: MemberBody) -> MemberSpec {
    MemberSpec {
        id: m.id,
        name: m.name,
        address: m.address,
    }
}

fn done(r: AdminResult) -> Json<AdminDone> {
    Json(AdminDone {
        ok: true,
        message: r.message,
        log_index: r.log_index,
    })
}

fn body(
    app: &App,
    body: Result<Bytes, BytesRejection>,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    json_object(body, app.config.limits.max_request_bytes, true)
}

#[utoipa::path(post, path = "/admin/init", tag = "admin",
    request_body(content = InitBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The cluster is initialised with these members", body = AdminDone),
        (status = 400, description = "A malformed body or member", body = ErrorBody),
        (status = 409, description = "Already initialised", body = ErrorBody),
        (status = 503, description = "Cannot do it now (retry)", body = ErrorBody),
    ))]
pub async fn init(State(app): State<Arc<App>>, b: Result<Bytes, BytesRejection>) -> ApiResult {
    let members = InitBody::from_body(body(&app, b)?)?
        .members
        .unwrap_or_default()
        .into_iter()
        .map(spec)
        .collect();
    Ok(done(app.admin_init(InitRequest { members }).await?))
}

#[utoipa::path(post, path = "/admin/learners", tag = "admin",
    request_body(content = MemberBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Added as a learner and caught up", body = AdminDone),
        (status = 400, description = "A malformed body, or a member that conflicts with the membership", body = ErrorBody),
        (status = 409, description = "Another membership change is in progress", body = ErrorBody),
        (status = 503, description = "No leader (retry)", body = ErrorBody),
        (status = 504, description = "The change did not finish in time", body = ErrorBody),
    ))]
pub async fn add_learner(
    State(app): State<Arc<App>>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let member = Some(spec(MemberBody::from_body(body(&app, b)?)?));
    Ok(done(
        app.admin_add_learner(
            AddLearnerRequest {
                member,
                no_wait: false,
            },
            Hop::Client,
        )
        .await?,
    ))
}

#[utoipa::path(post, path = "/admin/promote", tag = "admin",
    request_body(content = PromoteBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The learner is a voter", body = AdminDone),
        (status = 400, description = "A malformed body, an unknown member, or a learner too far behind", body = ErrorBody),
        (status = 404, description = "No such member", body = ErrorBody),
        (status = 409, description = "Another membership change is in progress", body = ErrorBody),
        (status = 503, description = "No leader (retry)", body = ErrorBody),
        (status = 504, description = "The change did not finish in time", body = ErrorBody),
    ))]
pub async fn promote(State(app): State<Arc<App>>, b: Result<Bytes, BytesRejection>) -> ApiResult {
    let PromoteBody { id } = PromoteBody::from_body(body(&app, b)?)?;
    Ok(done(
        app.admin_promote(PromoteRequest { id }, Hop::Client)
            .await?,
    ))
}

#[utoipa::path(post, path = "/admin/remove", tag = "admin",
    request_body(content = RemoveBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The member is out of the membership", body = AdminDone),
        (status = 400, description = "A malformed body, or a removal that would cost quorum (without `force`)", body = ErrorBody),
        (status = 404, description = "No such member", body = ErrorBody),
        (status = 409, description = "Another membership change is in progress", body = ErrorBody),
        (status = 503, description = "No leader (retry)", body = ErrorBody),
        (status = 504, description = "The change did not finish in time", body = ErrorBody),
    ))]
pub async fn remove(State(app): State<Arc<App>>, b: Result<Bytes, BytesRejection>) -> ApiResult {
    let RemoveBody { id, force } = RemoveBody::from_body(body(&app, b)?)?;
    let force = force.unwrap_or(false);
    Ok(done(
        app.admin_remove(RemoveMemberRequest { id, force }, Hop::Client)
            .await?,
    ))
}

#[utoipa::path(post, path = "/admin/transfer-leader", tag = "admin",
    request_body(content = TransferBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Leadership moved", body = AdminDone),
        (status = 400, description = "A malformed body, or a target that cannot lead", body = ErrorBody),
        (status = 404, description = "No such member", body = ErrorBody),
        (status = 409, description = "Another membership change is in progress", body = ErrorBody),
        (status = 503, description = "No leader (retry)", body = ErrorBody),
        (status = 504, description = "Leadership did not move in time", body = ErrorBody),
    ))]
pub async fn transfer_leader(
    State(app): State<Arc<App>>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let to = TransferBody::from_body(body(&app, b)?)?.to.unwrap_or(0);
    Ok(done(
        app.admin_transfer_leader(TransferLeaderRequest { to }, Hop::Client)
            .await?,
    ))
}

#[utoipa::path(get, path = "/admin/members", tag = "admin",
    responses(
        (status = 200, description = "The membership as the leader sees it", body = MembersResponse),
        (status = 503, description = "No leader (retry)", body = ErrorBody),
        (status = 504, description = "The leader did not answer in time", body = ErrorBody),
    ))]
pub async fn members(State(app): State<Arc<App>>) -> Result<Json<MembersResponse>, ApiError> {
    let r = app.admin_members(Hop::Client).await?;
    let members = r
        .members
        .into_iter()
        .map(|m| MemberView {
            id: m.id,
            name: m.name,
            address: m.address,
            role: m.role,
            leader: m.leader,
            matched_index: m.matched_index,
            lag: m.lag,
            last_contact_ms: m.last_contact_ms,
            reachable: m.reachable,
        })
        .collect();
    Ok(Json(MembersResponse {
        leader_id: r.leader_id,
        last_log_index: r.last_log_index,
        members,
    }))
}

#[utoipa::path(get, path = "/admin/status", tag = "admin",
    responses((status = 200, description = "This node's own state", body = NodeStatus)))]
pub async fn node_status(State(app): State<Arc<App>>) -> Json<NodeStatus> {
    let s = app.admin_node_status().await;
    Json(NodeStatus {
        id: s.id,
        name: s.name,
        cluster_id: s.cluster_id,
        initialized: s.initialized,
        role: s.role,
        term: s.term,
        leader_id: s.leader_id,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        snapshot_index: s.snapshot_index,
        incarnation: s.incarnation,
        version: s.version,
        address: s.address,
        ready: s.ready,
    })
}

/// Response headers of a backup download, besides its length.
const REVISION_HEADER: &str = "x-concord-revision";

#[utoipa::path(get, path = "/admin/snapshot", tag = "admin",
    responses(
        (status = 200, description = "A consistent backup of the whole state, streamed in one pass over the store (no length up front; `concordctl snapshot status` checks it); `x-concord-revision` is its revision", content_type = "application/octet-stream"),
        (status = 503, description = "No leader to confirm the read with", body = ErrorBody),
    ))]
pub async fn snapshot(State(app): State<Arc<App>>) -> Result<axum::response::Response, ApiError> {
    let backup = crate::backup::serve::start(&app).await?;
    let stream = tokio_stream::wrappers::ReceiverStream::new(backup.chunks);
    let body = axum::body::Body::from_stream(stream);
    let response = axum::response::Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/octet-stream")
        .header(REVISION_HEADER, backup.header.revision)
        .header(
            axum::http::header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"concordkv-{}-{}.backup\"",
                backup.header.member, backup.header.revision
            ),
        )
        .body(body)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), false))?;
    Ok(response)
}
