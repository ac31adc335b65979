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
use serde_json::{json, Map, Value};

use super::error::{json_object, ApiError};
use crate::app::App;
use crate::membership::{AdminError, Hop};

type ApiResult = Result<Json<Value>, ApiError>;

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> ApiError {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, e.to_string(), e.retryable())
    }
}

fn u64_field(map: &Map<String, Value>, name: &str, required: bool) -> Result<u64, ApiError> {
    match map.get(name) {
        Some(v) => v.as_u64().ok_or_else(|| {
            ApiError::bad_request(format!("field \"{name}\" must be a non-negative integer"))
        }),
        None if required => Err(ApiError::bad_request(format!("missing field \"{name}\""))),
        None => Ok(0),
    }
}

fn str_field(map: &Map<String, Value>, name: &str) -> Result<String, ApiError> {
    map.get(name)
        .and_then(Value::as_str)
        .map(String::from)
        .ok_or_else(|| ApiError::bad_request(format!("missing string field \"{name}\"")))
}

fn spec(map: &Map<String, Value>) -> Result<MemberSpec, ApiError> {
    Ok(MemberSpec {
        id: u64_field(map, "id", true)?,
        name: str_field(map, "name")?,
        address: str_field(map, "address")?,
    })
}

fn done(r: AdminResult) -> Json<Value> {
    Json(json!({ "ok": true, "message": r.message, "logIndex": r.log_index }))
}

pub async fn init(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let map = json_object(body, app.config.limits.max_request_bytes, true)?;
    let members = match map.get("members") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|m| match m {
                Value::Object(o) => spec(o),
                _ => Err(ApiError::bad_request(
                    "each member must be an object {id, name, address}",
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::bad_request("\"members\" must be an array")),
    };
    Ok(done(app.admin_init(InitRequest { members }).await?))
}

pub async fn add_learner(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let map = json_object(body, app.config.limits.max_request_bytes, true)?;
    let member = Some(spec(&map)?);
    Ok(done(
        app.admin_add_learner(AddLearnerRequest { member }, Hop::Client)
            .await?,
    ))
}

pub async fn promote(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let map = json_object(body, app.config.limits.max_request_bytes, true)?;
    let id = u64_field(&map, "id", true)?;
    Ok(done(
        app.admin_promote(PromoteRequest { id }, Hop::Client)
            .await?,
    ))
}

pub async fn remove(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let map = json_object(body, app.config.limits.max_request_bytes, true)?;
    let id = u64_field(&map, "id", true)?;
    let force = map.get("force").and_then(Value::as_bool).unwrap_or(false);
    Ok(done(
        app.admin_remove(RemoveMemberRequest { id, force }, Hop::Client)
            .await?,
    ))
}

pub async fn transfer_leader(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let map = json_object(body, app.config.limits.max_request_bytes, true)?;
    let to = u64_field(&map, "to", false)?;
    Ok(done(
        app.admin_transfer_leader(TransferLeaderRequest { to }, Hop::Client)
            .await?,
    ))
}

pub async fn members(State(app): State<Arc<App>>) -> ApiResult {
    let r = app.admin_members(Hop::Client).await?;
    let members: Vec<Value> = r
        .members
        .into_iter()
        .map(|m| {
            json!({
                "id": m.id, "name": m.name, "address": m.address, "role": m.role,
                "leader": m.leader, "matchedIndex": m.matched_index, "lag": m.lag,
                "lastContactMs": m.last_contact_ms, "reachable": m.reachable,
            })
        })
        .collect();
    Ok(Json(
        json!({ "leaderId": r.leader_id, "lastLogIndex": r.last_log_index, "members": members }),
    ))
}

pub async fn node_status(State(app): State<Arc<App>>) -> Json<Value> {
    let s = app.admin_node_status().await;
    Json(json!({
        "id": s.id, "name": s.name, "clusterId": s.cluster_id, "initialized": s.initialized,
        "role": s.role, "term": s.term, "leaderId": s.leader_id, "commitIndex": s.commit_index,
        "appliedIndex": s.applied_index, "snapshotIndex": s.snapshot_index,
        "incarnation": s.incarnation, "version": s.version, "address": s.address, "ready": s.ready,
    }))
}
