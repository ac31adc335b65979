//! The seed's `/api/...` endpoints.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use openraft::EntryPayload;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::{json_object, ApiError};
use crate::app::App;
use crate::config::Limits;
use crate::requests::Consistency;
use crate::store::{Command, CommandResult};

type ApiResult = Result<Json<Value>, ApiError>;

const DEFAULT_LIST_LIMIT: usize = 1000;

/// Takes a string field out of the body (a value may be a megabyte: moved, not copied).
fn string_field(map: &mut Map<String, Value>, name: &str) -> Result<String, ApiError> {
    match map.remove(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ApiError::bad_request(format!(
            "field \"{name}\" must be a string"
        ))),
        None => Err(ApiError::bad_request(format!("missing field \"{name}\""))),
    }
}

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

pub async fn set(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let mut map = json_object(body, app.config.limits.max_request_bytes, false)?;
    let key = string_field(&mut map, "key")?;
    let value = string_field(&mut map, "value")?;
    check_key(&app.config.limits, &key)?;
    check_value(&app.config.limits, &value)?;
    let written = app
        .write(Command::Set {
            key: key.clone(),
            value,
        })
        .await?;
    Ok(Json(
        json!({ "ok": true, "key": key, "revision": written.log_index }),
    ))
}

pub async fn get(State(app): State<Arc<App>>, Query(q): Query<KeyQuery>) -> ApiResult {
    let key = query_key(&q)?;
    check_key(&app.config.limits, key)?;
    let c = consistency(q.consistency.as_deref())?;
    match app.get(key, c).await? {
        Some(v) => Ok(Json(
            json!({ "key": key, "value": v.value, "revision": v.revision }),
        )),
        None => Err(ApiError::not_found(format!("key {key:?} not found"))),
    }
}

pub async fn delete(State(app): State<Arc<App>>, Query(q): Query<KeyQuery>) -> ApiResult {
    let key = query_key(&q)?.to_string();
    check_key(&app.config.limits, &key)?;
    let written = app.write(Command::Delete { key: key.clone() }).await?;
    match written.result {
        CommandResult::Delete {
            found: true,
            revision,
        } => Ok(Json(
            json!({ "ok": true, "key": key, "deleted": true, "revision": revision }),
        )),
        _ => Err(ApiError::not_found(format!("key {key:?} not found"))),
    }
}

pub async fn cas(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let mut map = json_object(body, app.config.limits.max_request_bytes, false)?;
    let key = string_field(&mut map, "key")?;
    let value = string_field(&mut map, "value")?;
    let expected = match map.remove("expected") {
        Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            return Err(ApiError::bad_request(
                "field \"expected\" must be a string or null",
            ))
        }
        None => {
            return Err(ApiError::bad_request(
                "missing field \"expected\" (use null to require that the key is absent)",
            ))
        }
    };
    check_key(&app.config.limits, &key)?;
    check_value(&app.config.limits, &value)?;
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
        } => Ok(Json(
            json!({ "ok": true, "key": key, "swapped": true, "revision": revision }),
        )),
        CommandResult::Cas { current, .. } => {
            let mut err = ApiError::new(
                StatusCode::CONFLICT,
                "compare failed: the current value differs from \"expected\"",
                false,
            );
            err.extra = Some(json!({
                "key": key,
                "swapped": false,
                "current": current.map(|c| json!({ "value": c.value, "revision": c.revision })),
            }));
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

pub async fn keys(State(app): State<Arc<App>>, Query(q): Query<KeysQuery>) -> ApiResult {
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
    let (keys, more) = app.list(&prefix, &start_after, limit, c).await?;
    let next = if more { keys.last().cloned() } else { None };
    Ok(Json(json!({ "keys": keys, "continue": next })))
}

pub async fn status(State(app): State<Arc<App>>) -> Json<Value> {
    Json(super::status::status_json(&app))
}

pub async fn metrics_json(State(app): State<Arc<App>>) -> Json<Value> {
    Json(super::status::metrics_json(&app))
}

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    start: Option<u64>,
    limit: Option<usize>,
}

/// Recent Raft log entries, newest page by default. Values are shown by size only.
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
