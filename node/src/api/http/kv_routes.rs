//! The seed's `/api/...` endpoints.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use openraft::EntryPayload;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth_routes::{authorize, reader};
use super::error::{json_object, ApiError};
use super::schema::{
    CasConflict, CasRequest, CasResponse, Current, DeleteResponse, ErrorBody, GetResponse,
    KeysResponse, SetRequest, SetResponse,
};
use crate::app::App;
use crate::auth::Access;
use crate::config::Limits;
use crate::requests::Consistency;
use crate::store::mvcc::KeyRange;
use crate::store::{Command, CommandResult};

type ApiResult = Result<Json<Value>, ApiError>;

const DEFAULT_LIST_LIMIT: usize = 1000;

fn check_key(limits: &Limits, key: &str) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::bad_request("key must not be empty"));
    }
    let max = limits.max_key_bytes;
    if key.len() > max {
        return Err(ApiError::too_large(format!(
            "key is {} bytes; the limit is {max} bytes",
            key.len()
        )));
    }
    Ok(())
}

/// A lease id from the seed API (a JSON number) as the store holds it.
pub fn lease_id(id: u64) -> Result<i64, ApiError> {
    i64::try_from(id).ok().filter(|id| *id > 0).ok_or_else(|| {
        ApiError::bad_request(format!("lease id {id} must be between 1 and 2^63 - 1"))
    })
}

fn check_value(limits: &Limits, value: &str) -> Result<(), ApiError> {
    let max = limits.max_value_bytes;
    if value.len() > max {
        return Err(ApiError::too_large(format!(
            "value is {} bytes; the limit is {max} bytes",
            value.len()
        )));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct KeyQuery {
    key: Option<String>,
    consistency: Option<String>,
    revision: Option<String>,
}

/// The seed API speaks text: bytes the etcd API stored that are not UTF-8 are refused, never
/// shown mangled.
fn one(key: &str) -> KeyRange {
    KeyRange::One(key.as_bytes().to_vec())
}

fn not_text(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!("{what} is not UTF-8 text (it was written through the etcd API, which stores bytes); read it through the etcd API"),
        false,
    )
}

fn consistency(param: Option<&str>) -> Result<Consistency, ApiError> {
    match param {
        None | Some("linearizable") | Some("") => Ok(Consistency::Linearizable),
        Some("stale") => Ok(Consistency::Stale),
        Some(other) => Err(ApiError::bad_request(format!(
            "consistency {other:?} must be \"linearizable\" or \"stale\""
        ))),
    }
}

fn query_key(q: &KeyQuery) -> Result<&str, ApiError> {
    q.key
        .as_deref()
        .ok_or_else(|| ApiError::bad_request("missing query parameter \"key\""))
}

#[utoipa::path(post, path = "/api/set", tag = "kv",
    request_body(content = SetRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Written: committed by a quorum and applied", body = SetResponse),
        (status = 400, description = "Not a JSON object with string `key` and `value` (and an optional numeric `lease` or `ttl`, not both), or an empty key", body = ErrorBody),
        (status = 404, description = "`lease` names no lease (never granted, revoked or expired): nothing was written", body = ErrorBody),
        (status = 413, description = "Key, value or body over its limit (named in the message)", body = ErrorBody),
        (status = 503, description = "No leader, no quorum, or overloaded: nothing was applied", body = ErrorBody),
        (status = 504, description = "Outcome unknown: proposed, commit not confirmed in time", body = ErrorBody),
        (status = 507, description = "The store is over --quota-backend-bytes: nothing was applied; compact or delete first", body = ErrorBody),
    ))]
pub async fn set(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SetResponse>, ApiError> {
    let body = json_object(body, app.config.limits.max_request_bytes, false)?;
    let SetRequest {
        key,
        value,
        lease,
        ttl,
    } = SetRequest::from_body(body)?;
    check_key(&app.config.limits, &key)?;
    check_value(&app.config.limits, &value)?;
    authorize(&app, Access::Write, &one(&key))?;
    let lease = match (lease, ttl) {
        (Some(id), _) => Some(lease_id(id)?),
        (None, Some(ttl)) => Some(super::lease_routes::grant(&app, 0, ttl).await?.0),
        (None, None) => None,
    };
    let Some(lease) = lease else {
        let written = app
            .write(Command::Set {
                key: key.clone(),
                value,
            })
            .await?;
        return Ok(Json(SetResponse {
            ok: true,
            key,
            revision: written.log_index,
            lease: None,
        }));
    };
    // A put attached to a lease is a one-operation transaction, as etcd's.
    let put = crate::store::mvcc::Op::Put(crate::store::mvcc::PutRequest {
        key: key.clone().into_bytes(),
        value: value.into_bytes(),
        lease,
        prev_kv: false,
        ignore_value: false,
        ignore_lease: false,
    });
    let txn = crate::store::mvcc::TxnRequest {
        compare: Vec::new(),
        success: vec![put],
        failure: Vec::new(),
    };
    let written = app.write(Command::Txn(txn)).await?;
    match written.result {
        CommandResult::Txn {
            result: Ok(_),
            revision,
        } => Ok(Json(SetResponse {
            ok: true,
            key,
            revision,
            lease: Some(lease as u64),
        })),
        CommandResult::Txn {
            result: Err(crate::store::mvcc::MvccError::LeaseNotFound),
            ..
        } => Err(ApiError::not_found(format!("lease {lease} not found"))),
        other => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("a put produced {other:?}"),
            false,
        )),
    }
}

#[utoipa::path(get, path = "/api/get", tag = "kv",
    params(
        ("key" = String, Query, description = "The key (at most limits.maxKeyBytes)"),
        ("consistency" = Option<String>, Query, description = "`linearizable` (default: confirmed with a quorum) or `stale` (this node's state)"),
        ("revision" = Option<u64>, Query, description = "Read the key as it was at this store revision (default: now); refused once compacted"),
    ),
    responses(
        (status = 200, description = "The key's value", body = GetResponse),
        (status = 400, description = "Missing or repeated `key`, an empty key, a bad `consistency` or `revision`, a revision compacted away or in the future", body = ErrorBody),
        (status = 404, description = "The key is absent (at that revision)", body = ErrorBody),
        (status = 422, description = "The value is not UTF-8 text (written through the etcd API, which stores bytes): read it there", body = ErrorBody),
        (status = 413, description = "Key over limits.maxKeyBytes", body = ErrorBody),
        (status = 503, description = "No leader to confirm a linearizable read", body = ErrorBody),
    ))]
pub async fn get(
    State(app): State<Arc<App>>,
    Query(q): Query<KeyQuery>,
) -> Result<Json<GetResponse>, ApiError> {
    let key = query_key(&q)?;
    check_key(&app.config.limits, key)?;
    authorize(&app, Access::Read, &one(key))?;
    let c = consistency(q.consistency.as_deref())?;
    let revision = match q.revision.as_deref() {
        None | Some("") => 0,
        Some(r) => r.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("revision {r:?} must be a non-negative integer"))
        })?,
    };
    match app.get(key, c, revision).await? {
        Ok(Some(kv)) => Ok(Json(GetResponse {
            key: key.to_string(),
            value: String::from_utf8(kv.value)
                .map_err(|_| not_text(&format!("the value of key {key:?}")))?,
            revision: kv.mod_revision,
        })),
        Ok(None) => Err(ApiError::not_found(format!("key {key:?} not found"))),
        Err(e) => Err(ApiError::bad_request(e.to_string())),
    }
}

#[utoipa::path(delete, path = "/api/delete", tag = "kv",
    params(("key" = String, Query, description = "The key to delete")),
    responses(
        (status = 200, description = "Deleted", body = DeleteResponse),
        (status = 400, description = "Missing or repeated `key`, or an empty key", body = ErrorBody),
        (status = 404, description = "The key was absent (nothing changed)", body = ErrorBody),
        (status = 413, description = "Key over limits.maxKeyBytes", body = ErrorBody),
        (status = 503, description = "No leader, no quorum, or overloaded: nothing was applied", body = ErrorBody),
        (status = 504, description = "Outcome unknown", body = ErrorBody),
    ))]
pub async fn delete(
    State(app): State<Arc<App>>,
    Query(q): Query<KeyQuery>,
) -> Result<Json<DeleteResponse>, ApiError> {
    let key = query_key(&q)?.to_string();
    check_key(&app.config.limits, &key)?;
    authorize(&app, Access::Write, &one(&key))?;
    let written = app.write(Command::Delete { key: key.clone() }).await?;
    match written.result {
        CommandResult::Delete {
            found: true,
            revision,
        } => Ok(Json(DeleteResponse {
            ok: true,
            key,
            deleted: true,
            revision,
        })),
        _ => Err(ApiError::not_found(format!("key {key:?} not found"))),
    }
}

#[utoipa::path(post, path = "/api/cas", tag = "kv",
    request_body(content = CasRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Compared and swapped", body = CasResponse),
        (status = 400, description = "Not a JSON object with string `key`, `value` and a string-or-null `expected`", body = ErrorBody),
        (status = 409, description = "Compared and did not swap; `current` is what is there", body = CasConflict),
        (status = 413, description = "Key, value or body over its limit", body = ErrorBody),
        (status = 503, description = "No leader, no quorum, or overloaded: nothing was applied", body = ErrorBody),
        (status = 504, description = "Outcome unknown", body = ErrorBody),
        (status = 507, description = "The store is over --quota-backend-bytes: nothing was applied", body = ErrorBody),
    ))]
pub async fn cas(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CasResponse>, ApiError> {
    let body = json_object(body, app.config.limits.max_request_bytes, false)?;
    let CasRequest {
        key,
        expected,
        value,
    } = CasRequest::from_body(body)?;
    check_key(&app.config.limits, &key)?;
    check_value(&app.config.limits, &value)?;
    // A compare reads the key (a failed one answers its value): both accesses.
    authorize(&app, Access::Read, &one(&key))?;
    authorize(&app, Access::Write, &one(&key))?;
    if let Some(e) = &expected {
        check_value(&app.config.limits, e)?;
    }
    let written = app
        .write(Command::Cas {
            key: key.clone(),
            expected,
            value,
        })
        .await?;
    match written.result {
        CommandResult::Cas {
            swapped: true,
            revision,
            ..
        } => Ok(Json(CasResponse {
            ok: true,
            key,
            swapped: true,
            revision,
        })),
        CommandResult::Cas { current, .. } => {
            let message = "compare failed: the current value differs from \"expected\"";
            let mut err = ApiError::new(StatusCode::CONFLICT, message, false);
            let conflict = CasConflict {
                error: message.into(),
                retryable: false,
                key,
                swapped: false,
                current: current.map(|c| Current {
                    value: c.value,
                    revision: c.revision,
                }),
            };
            err.extra = serde_json::to_value(conflict).ok();
            Err(err)
        }
        other => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected result {other:?}"),
            false,
        )),
    }
}

#[derive(Debug, Deserialize)]
pub struct KeysQuery {
    prefix: Option<String>,
    limit: Option<String>,
    #[serde(rename = "continue")]
    continue_token: Option<String>,
    consistency: Option<String>,
}

#[utoipa::path(get, path = "/api/keys", tag = "kv",
    params(
        ("prefix" = Option<String>, Query, description = "Only keys starting with it"),
        ("limit" = Option<usize>, Query, description = "Page size, 1 to limits.maxListLimit (default 1000)"),
        ("continue" = Option<String>, Query, description = "The `continue` of the previous page"),
        ("consistency" = Option<String>, Query, description = "`linearizable` (default) or `stale`"),
    ),
    responses(
        (status = 200, description = "One page of keys, in order", body = KeysResponse),
        (status = 400, description = "A bad or repeated parameter", body = ErrorBody),
        (status = 422, description = "A key in the page is not UTF-8 text (written through the etcd API)", body = ErrorBody),
        (status = 503, description = "No leader to confirm a linearizable read", body = ErrorBody),
    ))]
pub async fn keys(
    State(app): State<Arc<App>>,
    Query(q): Query<KeysQuery>,
) -> Result<Json<KeysResponse>, ApiError> {
    let max = app.config.limits.max_list_limit;
    let limit = match q.limit.as_deref() {
        None | Some("") => DEFAULT_LIST_LIMIT.min(max),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "limit must be an integer from 1 to {max}"
                )))
            }
        },
    };
    let c = consistency(q.consistency.as_deref())?;
    let prefix = q.prefix.unwrap_or_default();
    let start_after = q.continue_token.unwrap_or_default();
    let caller = reader(&app)?;
    let (keys, more) = app.list(&prefix, &start_after, limit, c).await?;
    // A listing shows only the keys its caller may read (a page may come back short; `next`
    // still continues after the last key scanned).
    let last_scanned = keys.last().cloned();
    let keys: Vec<Vec<u8>> = {
        let state = app.state.read();
        keys.into_iter()
            .filter(|k| caller.may_read(&state.auth, k))
            .collect()
    };
    let keys = keys
        .into_iter()
        .map(|k| String::from_utf8(k).map_err(|_| not_text("a key in this page")))
        .collect::<Result<Vec<_>, _>>()?;
    let next = match (more, last_scanned) {
        (true, Some(k)) => Some(String::from_utf8(k).map_err(|_| not_text("a key in this page"))?),
        _ => None,
    };
    Ok(Json(KeysResponse { keys, next }))
}

#[utoipa::path(get, path = "/api/status", tag = "kv",
    responses((status = 200, description = "This node's view of the cluster (the seed's status object)", body = Object)))]
pub async fn status(State(app): State<Arc<App>>) -> Json<Value> {
    Json(super::status::status_json(&app))
}

#[utoipa::path(get, path = "/api/metrics", tag = "kv",
    responses((status = 200, description = "Counters as JSON (the seed's format; Prometheus reads /metrics)", body = Object)))]
pub async fn metrics_json(State(app): State<Arc<App>>) -> Json<Value> {
    Json(super::status::metrics_json(&app))
}

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    start: Option<u64>,
    limit: Option<usize>,
}

/// Recent Raft log entries, newest page by default. Values are shown by size only.
#[utoipa::path(get, path = "/api/logs", tag = "kv",
    params(
        ("start" = Option<u64>, Query, description = "First index (default: the newest page)"),
        ("limit" = Option<usize>, Query, description = "Entries, 1 to 1000 (default 100)"),
    ),
    responses(
        (status = 200, description = "`{entries: [{index, term, leader, type, detail}], first, last, next}`", body = Object),
        (status = 400, description = "A parameter that does not parse, or is repeated", body = ErrorBody),
    ))]
pub async fn logs(State(app): State<Arc<App>>, Query(q): Query<LogsQuery>) -> ApiResult {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let Some((first, last)) = app.log.bounds() else {
        return Ok(Json(
            json!({ "entries": [], "first": null, "last": null, "next": null }),
        ));
    };
    let start = q
        .start
        .unwrap_or_else(|| last.saturating_sub(limit as u64 - 1))
        .max(first);
    let end = start.saturating_add(limit as u64).min(last + 1);
    let entries: Vec<Value> = app
        .log
        .entries(start, end)
        .await
        .map_err(|e| crate::requests::ServiceError::Internal(format!("reading the raft log: {e}")))?
        .into_iter()
        .map(|e| {
            let (kind, detail) = match &e.payload {
                EntryPayload::Blank => ("blank", Value::Null),
                EntryPayload::Normal(cmd) => ("command", json!(cmd.to_string())),
                EntryPayload::Membership(m) => ("membership", json!(m.to_string())),
            };
            json!({
                "index": e.log_id.index,
                "term": e.log_id.leader_id.term,
                "leader": e.log_id.leader_id.node_id,
                "type": kind,
                "detail": detail,
            })
        })
        .collect();
    let next = (end <= last).then_some(end);
    Ok(Json(
        json!({ "entries": entries, "first": first, "last": last, "next": next }),
    ))
}
