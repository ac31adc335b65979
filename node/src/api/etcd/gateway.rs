//! etcd's JSON gateway (what grpc-gateway gives etcd), on the same port as the gRPC services:
//! `POST /v3/kv/range` and the rest, with etcd's messages in protobuf's JSON mapping and the
//! .proto field names (int64 as strings, bytes as base64), plus `GET /version` and
//! `GET /health` as etcd answers them. Clients such as Patroni use only this. Each route calls
//! the gRPC service itself, so both forms of a request get the same answer.
//!
//! Errors are grpc-gateway's JSON `{"error", "code", "message"}` with the HTTP status it maps
//! the gRPC code to — for every refusal, unknown routes, wrong methods and bad bodies included.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use concord_proto::etcd::etcdserverpb::auth_server::Auth;
use concord_proto::etcd::etcdserverpb::cluster_server::Cluster;
use concord_proto::etcd::etcdserverpb::kv_server::Kv;
use concord_proto::etcd::etcdserverpb::lease_server::Lease;
use concord_proto::etcd::etcdserverpb::maintenance_server::Maintenance;
use concord_proto::etcd::v3electionpb::election_server::Election;
use concord_proto::etcd::v3lockpb::lock_server::Lock;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use tonic::{Code, Status};

use super::kv::KvService;
use super::lease::LeaseService;
use super::{ClusterService, MaintenanceService, ETCD_API_VERSION};
use crate::app::App;

#[derive(Clone)]
pub struct Services {
    pub kv: Arc<KvService>,
    pub cluster: Arc<ClusterService>,
    pub maintenance: Arc<MaintenanceService>,
    pub lease: Arc<LeaseService>,
    pub lock: Arc<super::recipes::LockService>,
    pub election: Arc<super::recipes::ElectionService>,
    pub auth: Arc<super::auth::AuthService>,
    pub app: Arc<App>,
}

/// A unary route: the body decoded as the request, `service.method` called, its answer
/// encoded.
macro_rules! unary {
    ($service:ident . $method:ident) => {
        post(|State(s): State<Services>, b| async move {
            call(b, |r| async move { s.$service.$method(r).await }).await
        })
    };
}

/// grpc-gateway's HTTP status for a gRPC code (`runtime.HTTPStatusFromCode`).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The gateway's error body for a status.
pub fn error(status: &Status) -> Response {
    let body = json!({
        "error": status.message(),
        "code": status.code() as i32,
        "message": status.message(),
    });
    (http_status(status.code()), Json(body)).into_response()
}

/// The request in the body (empty: the message's defaults), or the gateway's error for it.
fn decode<Req>(body: Result<Bytes, BytesRejection>) -> Result<Req, Response>
where
    Req: DeserializeOwned + Default,
{
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(error(&Status::invalid_argument(
                "etcdserver: request is too large",
            )))
        }
        Err(e) => {
            return Err(error(&Status::invalid_argument(format!(
                "cannot read the request body: {}",
                e.body_text()
            ))))
        }
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Req::default());
    }
    serde_json::from_slice(&body).map_err(|e| {
        error(&Status::invalid_argument(format!(
            "the body is not this request in JSON: {e}"
        )))
    })
}

/// Decodes the body, runs the call, encodes the answer.
async fn call<Req, Resp, F, Fut>(body: Result<Bytes, BytesRejection>, f: F) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let req: Req = match decode(body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    match f(tonic::Request::new(req)).await {
        Ok(r) => Json(r.into_inner()).into_response(),
        Err(s) => error(&s),
    }
}

async fn lease_revoke(State(s): State<Services>, b: Result<Bytes, BytesRejection>) -> Response {
    call(b, |r| async move { s.lease.lease_revoke(r).await }).await
}

async fn lease_time_to_live(
    State(s): State<Services>,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    call(b, |r| async move { s.lease.lease_time_to_live(r).await }).await
}

async fn lease_leases(State(s): State<Services>, b: Result<Bytes, BytesRejection>) -> Response {
    call(b, |r| async move { s.lease.lease_leases(r).await }).await
}

/// `POST /v3/lease/keepalive`: one renewal, answered as grpc-gateway answers a stream that
/// ends after one message: `{"result": LeaseKeepAliveResponse}` (what Patroni reads).
async fn lease_keep_alive(
    State(s): State<Services>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req: concord_proto::etcd::etcdserverpb::LeaseKeepAliveRequest = match decode(body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    match s.app.lease_keep_alive(req.id).await {
        Ok(ttl) => {
            let revision = s.app.state.read().kv.revision();
            let resp = concord_proto::etcd::etcdserverpb::LeaseKeepAliveResponse {
                header: Some(super::header(&s.app, revision)),
                id: req.id,
                ttl: ttl.unwrap_or(0),
            };
            Json(json!({ "result": resp })).into_response()
        }
        Err(e) => error(&super::service_status(&e)),
    }
}

/// `POST /v3/watch`: the body is one `WatchRequest` (a create request); the answer streams, as
/// grpc-gateway streams, one JSON object per line: `{"result": WatchResponse}`.
async fn watch(State(s): State<Services>, body: Result<Bytes, BytesRejection>) -> Response {
    let req: concord_proto::etcd::etcdserverpb::WatchRequest = match decode(body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    streamed(super::watch::responses(
        s.app.clone(),
        futures::stream::iter([Ok(req)]),
    ))
}

/// `POST /v3/election/observe`: the leader now and each change, streamed as `/v3/watch` is.
async fn observe(State(s): State<Services>, body: Result<Bytes, BytesRejection>) -> Response {
    let req: concord_proto::etcd::v3electionpb::LeaderRequest = match decode(body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    match s.election.observe(tonic::Request::new(req)).await {
        Ok(r) => streamed(r.into_inner()),
        Err(status) => error(&status),
    }
}

/// A server stream as grpc-gateway answers one: a JSON object per line, `{"result": message}`
/// or, if the stream fails, `{"error": {...}}`.
fn streamed<M, S>(messages: S) -> Response
where
    M: Serialize,
    S: futures::Stream<Item = Result<M, Status>> + Send + 'static,
{
    let lines = messages.map(|r| {
        let message = match r {
            Ok(m) => json!({ "result": m }),
            Err(status) => json!({ "error": {
                "grpc_code": status.code() as i32,
                "http_code": http_status(status.code()).as_u16(),
                "message": status.message(),
                "http_status": http_status(status.code()).canonical_reason().unwrap_or(""),
            }}),
        };
        let mut line = serde_json::to_vec(&message).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(line))
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

pub fn router(services: Services) -> Router {
    let limit = services.app.config.limits.max_request_bytes;
    Router::new()
        .route(
            "/v3/kv/range",
            post(|State(s): State<Services>, b| async move {
                call(b, |r| async move { s.kv.range(r).await }).await
            }),
        )
        .route(
            "/v3/kv/put",
            post(|State(s): State<Services>, b| async move {
                call(b, |r| async move { s.kv.put(r).await }).await
            }),
        )
        .route(
            "/v3/kv/deleterange",
            post(|State(s): State<Services>, b| async move {
                call(b, |r| async move { s.kv.delete_range(r).await }).await
            }),
        )
        .route(
            "/v3/kv/txn",
            post(|State(s): State<Services>, b| async move {
                call(b, |r| async move { s.kv.txn(r).await }).await
            }),
        )
        .route(
            "/v3/kv/compaction",
            post(|State(s): State<Services>, b| async move {
                call(b, |r| async move { s.kv.compact(r).await }).await
            }),
        )
        .route(
            "/v3/cluster/member/list",
            post(|State(s): State<Services>, b| async move {
                call(b, |r| async move { s.cluster.member_list(r).await }).await
            }),
        )
        .route(
            "/v3/cluster/member/remove",
            post(|State(s): State<Services>, b| async move {
                call(b, |r| async move { s.cluster.member_remove(r).await }).await
            }),
        )
        .route(
            "/v3/cluster/member/promote",
            post(|State(s): State<Services>, b| async move {
                call(b, |r| async move { s.cluster.member_promote(r).await }).await
            }),
        )
        .route(
            "/v3/maintenance/status",
            post(|State(s): State<Services>, b| async move {
                call(b, |r| async move { s.maintenance.status(r).await }).await
            }),
        )
        .route(
            "/v3/maintenance/alarm",
            post(|State(s): State<Services>, b| async move {
                call(b, |r| async move { s.maintenance.alarm(r).await }).await
            }),
        )
        .route(
            "/v3/maintenance/transfer-leadership",
            post(|State(s): State<Services>, b| async move {
                call(b, |r| async move { s.maintenance.move_leader(r).await }).await
            }),
        )
        .route("/v3/watch", post(watch))
        .route(
            "/v3/lease/grant",
            post(|State(s): State<Services>, b| async move {
                call(b, |r| async move { s.lease.lease_grant(r).await }).await
            }),
        )
        .route(
            "/v3/lock/lock",
            post(|State(s): State<Services>, b| async move {
                call(b, |r| async move { s.lock.lock(r).await }).await
            }),
        )
        .route(
            "/v3/lock/unlock",
            post(|State(s): State<Services>, b| async move {
                call(b, |r| async move { s.lock.unlock(r).await }).await
            }),
        )
        .route(
            "/v3/election/campaign",
            post(|State(s): State<Services>, b| async move {
                call(b, |r| async move { s.election.campaign(r).await }).await
            }),
        )
        .route(
            "/v3/election/proclaim",
            post(|State(s): State<Services>, b| async move {
                call(b, |r| async move { s.election.proclaim(r).await }).await
            }),
        )
        .route(
            "/v3/election/leader",
            post(|State(s): State<Services>, b| async move {
                call(b, |r| async move { s.election.leader(r).await }).await
            }),
        )
        .route("/v3/election/observe", post(observe))
        .route(
            "/v3/election/resign",
            post(|State(s): State<Services>, b| async move {
                call(b, |r| async move { s.election.resign(r).await }).await
            }),
        )
        .route("/v3/lease/revoke", post(lease_revoke))
        .route("/v3/kv/lease/revoke", post(lease_revoke))
        .route("/v3/lease/keepalive", post(lease_keep_alive))
        .route("/v3/lease/timetolive", post(lease_time_to_live))
        .route("/v3/kv/lease/timetolive", post(lease_time_to_live))
        .route("/v3/lease/leases", post(lease_leases))
        .route("/v3/kv/lease/leases", post(lease_leases))
        .route("/v3/auth/authenticate", unary!(auth.authenticate))
        .route("/v3/auth/enable", unary!(auth.auth_enable))
        .route("/v3/auth/disable", unary!(auth.auth_disable))
        .route("/v3/auth/status", unary!(auth.auth_status))
        .route("/v3/auth/user/add", unary!(auth.user_add))
        .route("/v3/auth/user/get", unary!(auth.user_get))
        .route("/v3/auth/user/list", unary!(auth.user_list))
        .route("/v3/auth/user/delete", unary!(auth.user_delete))
        .route("/v3/auth/user/changepw", unary!(auth.user_change_password))
        .route("/v3/auth/user/grant", unary!(auth.user_grant_role))
        .route("/v3/auth/user/revoke", unary!(auth.user_revoke_role))
        .route("/v3/auth/role/add", unary!(auth.role_add))
        .route("/v3/auth/role/get", unary!(auth.role_get))
        .route("/v3/auth/role/list", unary!(auth.role_list))
        .route("/v3/auth/role/delete", unary!(auth.role_delete))
        .route("/v3/auth/role/grant", unary!(auth.role_grant_permission))
        .route("/v3/auth/role/revoke", unary!(auth.role_revoke_permission))
        .route("/version", get(version))
        .route("/health", get(health))
        .fallback(|| async { error(&Status::not_found("no such endpoint")) })
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(method_not_allowed))
        .with_state(services)
}

/// axum's bare 405 as the gateway's JSON error.
async fn method_not_allowed(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let response = next.run(req).await;
    if response.status() != StatusCode::METHOD_NOT_ALLOWED {
        return response;
    }
    let allow = response.headers().get(axum::http::header::ALLOW).cloned();
    let mut e = error(&Status::unimplemented(format!(
        "method {method} is not allowed on {path}"
    )));
    *e.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    if let Some(allow) = allow {
        e.headers_mut().insert(axum::http::header::ALLOW, allow);
    }
    e
}

/// As etcd's `/version`.
async fn version() -> Json<serde_json::Value> {
    Json(json!({ "etcdserver": ETCD_API_VERSION, "etcdcluster": ETCD_API_VERSION }))
}

/// As etcd's `/health`: healthy when this member has a leader and is ready to serve.
async fn health(State(s): State<Services>) -> Response {
    match crate::api::http::probes::readiness(&s.app) {
        Ok(()) => Json(json!({ "health": "true", "reason": "" })).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "health": "false", "reason": reason })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_grpc_gateways_statuses() {
        assert_eq!(http_status(Code::OutOfRange), StatusCode::BAD_REQUEST);
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            http_status(Code::Unimplemented),
            StatusCode::NOT_IMPLEMENTED
        );
        assert_eq!(
            http_status(Code::ResourceExhausted),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
}
