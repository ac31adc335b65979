//! The seed-style lease API: `POST /api/lease/grant|keepalive|revoke` and
//! `GET /api/lease/{id}`, over `crate::lease` (the same leases etcd's API serves). An unknown
//! lease is a 404 with a JSON body.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::Json;

use super::error::{json_object, ApiError};
use super::kv_routes::lease_id;
use super::schema::{
    ErrorBody, LeaseGrantRequest, LeaseIdRequest, LeaseInfo, LeaseResponse, LeaseRevokeResponse,
};
use crate::app::App;
use crate::store::leases::LeaseId;
use crate::store::mvcc::MvccError;

fn refused(id: u64, e: MvccError) -> ApiError {
    match e {
        MvccError::LeaseNotFound => ApiError::not_found(format!("lease {id} not found")),
        MvccError::LeaseExists => ApiError::new(
            axum::http::StatusCode::CONFLICT,
            format!("lease {id} already exists"),
            false,
        ),
        other => ApiError::bad_request(other.to_string()),
    }
}

/// Grants a lease (`id` 0: the cluster chooses); its id and TTL.
pub async fn grant(app: &App, id: u64, ttl: u64) -> Result<(LeaseId, i64), ApiError> {
    let wanted = if id == 0 { 0 } else { lease_id(id)? };
    let ttl = i64::try_from(ttl).unwrap_or(i64::MAX);
    app.lease_grant(wanted, ttl)
        .await?
        .map_err(|e| refused(id, e))
}

#[utoipa::path(post, path = "/api/lease/grant", tag = "lease",
    request_body(content = LeaseGrantRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Granted", body = LeaseResponse),
        (status = 400, description = "Not a JSON object with a numeric `ttl` (and optional `id`), or a TTL over 9,000,000,000 s", body = ErrorBody),
        (status = 409, description = "A lease with this `id` exists", body = ErrorBody),
        (status = 503, description = "No leader: nothing was granted", body = ErrorBody),
    ))]
pub async fn lease_grant(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<LeaseResponse>, ApiError> {
    let req = LeaseGrantRequest::from_body(json_object(
        body,
        app.config.limits.max_request_bytes,
        false,
    )?)?;
    let (id, ttl) = grant(&app, req.id.unwrap_or(0), req.ttl).await?;
    Ok(Json(LeaseResponse { id: id as u64, ttl }))
}

#[utoipa::path(post, path = "/api/lease/keepalive", tag = "lease",
    request_body(content = LeaseIdRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Renewed: the lease lives its TTL from now", body = LeaseResponse),
        (status = 404, description = "No such lease (never granted, revoked or expired)", body = ErrorBody),
        (status = 503, description = "No leader to renew it (retry: an election is under way)", body = ErrorBody),
    ))]
pub async fn lease_keep_alive(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<LeaseResponse>, ApiError> {
    let req = LeaseIdRequest::from_body(json_object(
        body,
        app.config.limits.max_request_bytes,
        false,
    )?)?;
    match app.lease_keep_alive(lease_id(req.id)?).await? {
        Some(ttl) => Ok(Json(LeaseResponse { id: req.id, ttl })),
        None => Err(ApiError::not_found(format!("lease {} not found", req.id))),
    }
}

#[utoipa::path(post, path = "/api/lease/revoke", tag = "lease",
    request_body(content = LeaseIdRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Revoked: its keys are deleted, in one revision", body = LeaseRevokeResponse),
        (status = 404, description = "No such lease", body = ErrorBody),
        (status = 503, description = "No leader: nothing was revoked", body = ErrorBody),
    ))]
pub async fn lease_revoke(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<LeaseRevokeResponse>, ApiError> {
    let req = LeaseIdRequest::from_body(json_object(
        body,
        app.config.limits.max_request_bytes,
        false,
    )?)?;
    // Revoking deletes the lease's keys: the caller must be allowed to write each.
    let keys: Vec<Vec<u8>> = app
        .state
        .read()
        .kv
        .leases()
        .get(lease_id(req.id)?)
        .map(|l| l.keys.iter().map(|k| k.to_vec()).collect())
        .unwrap_or_default();
    for key in keys {
        super::auth_routes::authorize(
            &app,
            crate::auth::Access::Write,
            &crate::store::mvcc::KeyRange::One(key),
        )?;
    }
    let revision = app
        .lease_revoke(lease_id(req.id)?)
        .await?
        .map_err(|e| refused(req.id, e))?;
    Ok(Json(LeaseRevokeResponse {
        ok: true,
        id: req.id,
        revision,
    }))
}

#[utoipa::path(get, path = "/api/lease/{id}", tag = "lease",
    params(("id" = u64, Path, description = "The lease")),
    responses(
        (status = 200, description = "Its time left (from the leader) and its keys", body = LeaseInfo),
        (status = 400, description = "The id is not a positive integer", body = ErrorBody),
        (status = 404, description = "No such lease", body = ErrorBody),
        (status = 422, description = "A key is not UTF-8 text (written through the etcd API): read it there", body = ErrorBody),
        (status = 503, description = "No leader to ask", body = ErrorBody),
    ))]
pub async fn lease_info(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<LeaseInfo>, ApiError> {
    let n: u64 = id.parse().map_err(|_| {
        ApiError::bad_request(format!("lease id {id:?} must be a positive integer"))
    })?;
    let Some(t) = app.lease_time_to_live(lease_id(n)?, true).await? else {
        return Err(ApiError::not_found(format!("lease {n} not found")));
    };
    let keys = t
        .keys
        .into_iter()
        .map(|k| {
            String::from_utf8(k).map_err(|_| {
                ApiError::new(
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    format!("a key of lease {n} is not UTF-8 text: list it through the etcd API"),
                    false,
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(LeaseInfo {
        id: n,
        ttl: t.remaining,
        granted_ttl: t.granted,
        keys,
    }))
}
