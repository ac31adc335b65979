//! `GET /api/watch`: the seed API's watch, as Server-Sent Events (`text/event-stream`).
//!
//! One SSE event per change (`event: put` / `event: delete`, JSON data), its `id:` the change's
//! revision, so a client that reconnects with `Last-Event-ID` resumes with nothing missed and
//! nothing repeated. A revision with several changes to the watched keys (a transaction) gives
//! its changes the ids `R.0`, `R.1`, ... and the last one `R`, so a reconnect in the middle of
//! it resumes inside it. `event: progress` (id: the revision everything up to which has been
//! sent) comes every `watch.heartbeatIntervalMs`, so proxies do not cut a quiet stream; a start
//! revision compacted away gets `event: compacted` and the stream ends.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::schema::ErrorBody;
use crate::app::App;
use crate::store::mvcc::{Event, KeyRange, KeyValue};
use crate::watch::{Feed, Update, WatchSpec};

/// Bytes of changes in one batch of SSE events at most.
const MAX_UPDATE_BYTES: usize = 256 * 1024;

/// How long a resuming stream waits for the leader before it replays local history.
const RESUME_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WatchQuery {
    key: Option<String>,
    prefix: Option<String>,
    from_revision: Option<String>,
    prev_value: Option<String>,
}

/// Where a stream starts: a revision, and how many of its changes were already sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Resume {
    revision: u64,
    skip: usize,
}

/// An SSE id as this API writes them: `R` (all of revision R sent) or `R.i` (its changes up
/// to the i-th, from 0, sent). Returns where to go on from.
fn parse_last_event_id(id: &str) -> Option<Resume> {
    match id.split_once('.') {
        None => Some(Resume {
            revision: id.parse::<u64>().ok()?.checked_add(1)?,
            skip: 0,
        }),
        Some((r, i)) => Some(Resume {
            revision: r.parse().ok()?,
            skip: i.parse::<usize>().ok()?.checked_add(1)?,
        }),
    }
}

fn flag(name: &str, v: Option<&str>) -> Result<bool, ApiError> {
    match v {
        None | Some("false") => Ok(false),
        Some("true") | Some("") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "{name} must be true or false, not {other:?}"
        ))),
    }
}

#[utoipa::path(get, path = "/api/watch", tag = "kv",
    params(
        ("key" = Option<String>, Query, description = "Watch this key (exactly one of key and prefix)"),
        ("prefix" = Option<String>, Query, description = "Watch every key starting with this (empty: every key)"),
        ("fromRevision" = Option<u64>, Query, description = "First revision to send (history first); default: changes from now on"),
        ("prevValue" = Option<bool>, Query, description = "Also send each change's previous value"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event (an id this stream sent); wins over fromRevision"),
    ),
    responses(
        (status = 200, description = "An event stream (text/event-stream): `put`, `delete`, `progress`, and `compacted` before the stream ends", content_type = "text/event-stream"),
        (status = 400, description = "Neither or both of key and prefix, a bad revision, flag or Last-Event-ID", body = ErrorBody),
        (status = 503, description = "No leader to confirm the current revision, or the member's watcher limit (watch.maxWatchers) is reached", body = ErrorBody),
    ))]
pub async fn watch(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<WatchQuery>,
) -> Result<Response, ApiError> {
    let range = match (&q.key, &q.prefix) {
        (Some(k), None) if !k.is_empty() => KeyRange::One(k.as_bytes().to_vec()),
        (None, Some(p)) => KeyRange::prefix(p.as_bytes()),
        (Some(_), None) => return Err(ApiError::bad_request("key must not be empty")),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of the query parameters \"key\" and \"prefix\"",
            ))
        }
    };
    super::auth_routes::authorize(&app, crate::auth::Access::Read, &range)?;
    let last_event = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| parse_last_event_id(s.trim()))
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "Last-Event-ID {v:?} is not an id this stream sent (R or R.i)"
                    ))
                })
        })
        .transpose()?;
    let from = match q.from_revision.as_deref() {
        None | Some("") => None,
        Some(r) => Some(r.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("fromRevision {r:?} must be a non-negative integer"))
        })?),
    };
    let resume = last_event.or(from.map(|revision| Resume { revision, skip: 0 }));
    let prev = flag("prevValue", q.prev_value.as_deref())?;
    match resume {
        // "From now" as a linearizable read would see it.
        None => app.linearize().await?,
        // History as of what the leader acknowledged (compactions included).
        Some(_) => app.catch_up(RESUME_PATIENCE).await,
    }
    let mut feed = Feed::new(
        &app.watches,
        app.state.clone(),
        MAX_UPDATE_BYTES,
        app.config.watch.heartbeat_interval,
    );
    let spec = WatchSpec {
        range,
        start_revision: resume.map_or(0, |r| r.revision.max(1)),
        prev_kv: prev,
        no_put: false,
        no_delete: false,
        progress_notify: true,
    };
    feed.create(0, spec).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
            true,
        )
    })?;
    let skip = resume.filter(|r| r.skip > 0);
    Ok(Sse::new(events(feed, skip)).into_response())
}

fn events(feed: Feed, skip: Option<Resume>) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    struct Out {
        feed: Feed,
        skip: Option<Resume>,
        ready: VecDeque<SseEvent>,
        ended: bool,
    }
    let out = Out {
        feed,
        skip,
        ready: VecDeque::new(),
        ended: false,
    };
    futures::stream::unfold(out, |mut out| async move {
        loop {
            if let Some(e) = out.ready.pop_front() {
                return Some((Ok(e), out));
            }
            if out.ended {
                return None;
            }
            match out.feed.next().await {
                Update::Events { events, .. } => {
                    for (id, e) in with_ids(&events) {
                        if let Some(s) = out.skip {
                            if e.revision() == s.revision && id_position(&id) < s.skip {
                                continue;
                            }
                            out.skip = None;
                        }
                        out.ready.push_back(change(id, e));
                    }
                }
                Update::Progress { revision, .. } => {
                    out.ready.push_back(
                        SseEvent::default()
                            .event("progress")
                            .id(revision.to_string())
                            .data(json!({ "revision": revision }).to_string()),
                    );
                }
                Update::Canceled {
                    compact_revision,
                    reason,
                    ..
                } => {
                    let data = json!({ "error": reason, "compactRevision": compact_revision });
                    out.ready.push_back(
                        SseEvent::default()
                            .event("compacted")
                            .data(data.to_string()),
                    );
                    out.ended = true;
                }
            }
        }
    })
}

/// Each event with its SSE id: `R` for the last change of revision R, `R.i` for the others.
fn with_ids(events: &[Event]) -> Vec<(String, &Event)> {
    let mut out = Vec::with_capacity(events.len());
    let mut i = 0;
    while i < events.len() {
        let r = events[i].revision();
        let n = events[i..].iter().take_while(|e| e.revision() == r).count();
        for (j, e) in events[i..i + n].iter().enumerate() {
            let id = if j + 1 == n {
                r.to_string()
            } else {
                format!("{r}.{j}")
            };
            out.push((id, e));
        }
        i += n;
    }
    out
}

/// How many changes of its revision an id says were sent (`R.i`: i + 1; `R`: all).
fn id_position(id: &str) -> usize {
    id.split_once('.')
        .and_then(|(_, i)| i.parse::<usize>().ok())
        .unwrap_or(usize::MAX)
}

/// Text as the seed API shows it; bytes that are not UTF-8 (written through the etcd API) go
/// as base64 under `<name>Base64` instead of being mangled.
fn text(out: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    use base64::Engine;
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            out.insert(name.into(), json!(s));
        }
        Err(_) => {
            let b = base64::engine::general_purpose::STANDARD.encode(bytes);
            out.insert(format!("{name}Base64"), json!(b));
        }
    }
}

fn change(id: String, e: &Event) -> SseEvent {
    let mut data = Map::new();
    let (kind, kv, prev): (&str, &KeyValue, &Option<KeyValue>) = match e {
        Event::Put { kv, prev } => ("put", kv, prev),
        Event::Delete { kv, prev } => ("delete", kv, prev),
    };
    text(&mut data, "key", &kv.key);
    if kind == "put" {
        text(&mut data, "value", &kv.value);
        data.insert("createRevision".into(), json!(kv.create_revision));
        data.insert("version".into(), json!(kv.version));
        if kv.lease != 0 {
            data.insert("lease".into(), json!(kv.lease));
        }
    }
    data.insert("revision".into(), json!(kv.mod_revision));
    if let Some(prev) = prev {
        text(&mut data, "prevValue", &prev.value);
    }
    SseEvent::default()
        .event(kind)
        .id(id)
        .data(Value::Object(data).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, rev: u64) -> Event {
        Event::Put {
            kv: KeyValue {
                key: key.into(),
                mod_revision: rev,
                ..KeyValue::default()
            },
            prev: None,
        }
    }

    #[test]
    fn ids_name_revisions_and_positions_inside_them() {
        let events = [
            put("a", 5),
            put("b", 7),
            put("c", 7),
            put("d", 7),
            put("e", 9),
        ];
        let ids: Vec<String> = with_ids(&events).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, ["5", "7.0", "7.1", "7", "9"]);
        // Resuming after each: on from the next change, exactly.
        assert_eq!(
            parse_last_event_id("5"),
            Some(Resume {
                revision: 6,
                skip: 0
            })
        );
        assert_eq!(
            parse_last_event_id("7.1"),
            Some(Resume {
                revision: 7,
                skip: 2
            })
        );
        assert_eq!(id_position("7.1"), 1);
        assert_eq!(id_position("7"), usize::MAX);
        for bad in ["", "x", "7.", ".1", "-1", "18446744073709551615"] {
            assert_eq!(parse_last_event_id(bad), None, "{bad}");
        }
    }
}
