//! The API server over plain HTTP, as `kubectl` and kube-rs speak to it: JSON bodies, list and
//! watch (a stream of JSON lines, held open until `timeoutSeconds`, with bookmarks when asked),
//! and `Status` objects for errors.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::resources::{self, Target};
use super::selector::Selector;
use super::{ApiError, ApiServer, DeleteOptions, WriteOptions};

fn query(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-decoding of a query component.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn param<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn json_response(code: u16, v: &Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

fn error(e: &ApiError) -> Response {
    json_response(e.code(), &e.status())
}

fn selectors(q: &[(String, String)]) -> Result<(Selector, Selector), ApiError> {
    let labels =
        Selector::parse(param(q, "labelSelector").unwrap_or("")).map_err(ApiError::BadRequest)?;
    let fields =
        Selector::parse(param(q, "fieldSelector").unwrap_or("")).map_err(ApiError::BadRequest)?;
    Ok((labels, fields))
}

async fn serve(
    api: ApiServer,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    if path == "/version" {
        return json_response(
            200,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-concord-sim", "platform": "linux/amd64"}),
        );
    }
    if path == "/healthz" || path == "/readyz" || path == "/livez" {
        return (StatusCode::OK, "ok").into_response();
    }
    let Some(t) = resources::parse(&path) else {
        return error(&ApiError::NotFound {
            kind: "path".into(),
            name: path,
        });
    };
    let q = query(&uri);
    let manager = param(&q, "fieldManager").unwrap_or("unknown").to_string();
    let parsed: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return error(&ApiError::BadRequest(format!("the body is not JSON: {e}"))),
        }
    };
    let result = match (&method, t.name.is_some()) {
        (&Method::GET, false) => {
            if matches!(param(&q, "watch"), Some("true" | "1")) {
                return watch(api, t, q);
            }
            list(&api, &t, &q)
        }
        (&Method::GET, true) => api.get(&t),
        (&Method::POST, false) => api.create(&t, parsed, &manager),
        (&Method::PUT, true) => api.replace(&t, parsed, &manager),
        (&Method::PATCH, true) => {
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/merge-patch+json");
            let o = WriteOptions {
                manager,
                force: matches!(param(&q, "force"), Some("true" | "1")),
            };
            api.patch(&t, content_type, parsed, &o)
        }
        (&Method::DELETE, true) => {
            let grace = param(&q, "gracePeriodSeconds")
                .and_then(|g| g.parse().ok())
                .or_else(|| parsed["gracePeriodSeconds"].as_i64());
            let propagation = param(&q, "propagationPolicy")
                .map(String::from)
                .or_else(|| parsed["propagationPolicy"].as_str().map(String::from));
            let o = DeleteOptions {
                grace_seconds: grace,
                orphan: propagation.as_deref() == Some("Orphan"),
                precondition_uid: parsed["preconditions"]["uid"].as_str().map(String::from),
                precondition_rv: parsed["preconditions"]["resourceVersion"]
                    .as_str()
                    .map(String::from),
            };
            api.delete(&t, &o)
        }
        _ => Err(ApiError::MethodNotAllowed),
    };
    match result {
        Ok(v) => {
            let code = if method == Method::POST { 201 } else { 200 };
            json_response(code, &v)
        }
        Err(e) => error(&e),
    }
}

fn list(api: &ApiServer, t: &Target, q: &[(String, String)]) -> Result<Value, ApiError> {
    let (labels, fields) = selectors(q)?;
    let (items, rv) = api.list(t, &labels, &fields);
    Ok(json!({
        "kind": format!("{}List", t.res.kind), "apiVersion": t.res.api_version(),
        "metadata": {"resourceVersion": rv.to_string()}, "items": items,
    }))
}

/// A watch: every event after `resourceVersion` (or, without one, the current objects as
/// ADDED first), then new ones as they happen, until `timeoutSeconds`.
fn watch(api: ApiServer, t: Target, q: Vec<(String, String)>) -> Response {
    let (labels, fields) = match selectors(&q) {
        Ok(s) => s,
        Err(e) => return error(&e),
    };
    let timeout = param(&q, "timeoutSeconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(300u64)
        .min(1800);
    let bookmarks = matches!(param(&q, "allowWatchBookmarks"), Some("true" | "1"));
    let start: Option<u64> = param(&q, "resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .and_then(|v| v.parse().ok());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        let line = |v: Value| {
            let mut b = serde_json::to_vec(&v).unwrap_or_default();
            b.push(b'\n');
            Ok(Bytes::from(b))
        };
        let mut since = match start {
            Some(rv) => rv,
            None => {
                let (items, rv) = api.list(&t, &labels, &fields);
                for obj in items {
                    if tx
                        .send(line(json!({"type": "ADDED", "object": obj})))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                rv
            }
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut last_bookmark = tokio::time::Instant::now();
        loop {
            // Registered before reading, so a write between the read and the wait wakes it.
            let changed = api.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match api.events_since(&t, since, &labels, &fields) {
                Err(e) => {
                    let _ = tx
                        .send(line(json!({"type": "ERROR", "object": e.status()})))
                        .await;
                    return;
                }
                Ok((events, rv)) => {
                    for (kind, obj) in events {
                        if tx
                            .send(line(json!({"type": kind, "object": obj})))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    since = rv;
                }
            }
            if bookmarks && last_bookmark.elapsed() > Duration::from_secs(10) {
                last_bookmark = tokio::time::Instant::now();
                let mark = json!({"type": "BOOKMARK", "object": {
                    "kind": t.res.kind, "apiVersion": t.res.api_version(),
                    "metadata": {"resourceVersion": since.to_string()}}});
                if tx.send(line(mark)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = tokio_stream_from(rx);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Serves `api` on `addr` until the task is dropped; the address it listens on.
pub async fn listen(
    api: ApiServer,
    addr: SocketAddr,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let api = api.clone();
            async move { serve(api, method, uri, headers, body).await }
        },
    );
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the simulated API server stopped");
        }
    });
    Ok((bound, task))
}

/// A kubeconfig that points a client (kubectl, the operator) at `addr`.
pub fn kubeconfig(addr: SocketAddr, namespace: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: sim\n  context:\n    cluster: sim\n    user: sim\n    namespace: {namespace}\ncurrent-context: sim\nusers:\n- name: sim\n  user: {{}}\n"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_components_are_decoded() {
        assert_eq!(super::decode("a%3Db%2Cc+d"), "a=b,c d");
        assert_eq!(super::decode("100%"), "100%");
    }
}
