//! The HTTP API: the seed's `/api/...`, the admin JSON API, probes and `/metrics`, and the
//! listener that serves them.

pub mod admin_routes;
pub mod admission;
pub mod auth_routes;
pub mod error;
pub mod kv_routes;
pub mod lease_routes;
pub mod listener;
pub mod openapi;
pub mod probes;
pub mod schema;
pub mod status;
pub mod watch_routes;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tracing::Instrument;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::telemetry::metrics::{metrics, render, GaugeGuard};
use error::ApiError;

/// Every route the node serves, each with its OpenAPI description: the router and the
/// document (`openapi.rs`) are both made from this list, so neither has a route the other lacks.
pub fn served_routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(auth_routes::authenticate))
        .routes(routes!(kv_routes::set))
        .routes(routes!(kv_routes::get))
        .routes(routes!(kv_routes::delete))
        .routes(routes!(kv_routes::cas))
        .routes(routes!(kv_routes::keys))
        .routes(routes!(watch_routes::watch))
        .routes(routes!(lease_routes::lease_grant))
        .routes(routes!(lease_routes::lease_keep_alive))
        .routes(routes!(lease_routes::lease_revoke))
        .routes(routes!(lease_routes::lease_info))
        .routes(routes!(kv_routes::status))
        .routes(routes!(kv_routes::metrics_json))
        .routes(routes!(kv_routes::logs))
        .routes(routes!(admin_routes::init))
        .routes(routes!(admin_routes::add_learner))
        .routes(routes!(admin_routes::promote))
        .routes(routes!(admin_routes::remove))
        .routes(routes!(admin_routes::transfer_leader))
        .routes(routes!(admin_routes::members))
        .routes(routes!(admin_routes::node_status))
        .routes(routes!(admin_routes::snapshot))
        .routes(routes!(prometheus))
        .routes(routes!(openapi_json))
        .routes(routes!(probes::livez))
        .routes(routes!(probes::readyz))
        .routes(routes!(probes::readyz_one))
        .routes(routes!(probes::healthz))
}

pub fn router(app: Arc<App>) -> Router {
    let body_limit = app.config.limits.max_request_bytes;
    let admission = admission::Admission::new(app.request_bytes.clone(), body_limit as u64);
    let (routes, _) = served_routes().split_for_parts();
    let routes = routes
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            app.clone(),
            auth_routes::front_door,
        ))
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app);
    // Outside the routes: axum adds `Allow` to a 405 after the routes' own layers.
    Router::new()
        .fallback_service(routes)
        .layer(middleware::from_fn(move |req, next| {
            admission::admit(admission.clone(), req, next)
        }))
        .layer(middleware::from_fn(move |req, next| {
            error::json_errors(body_limit, req, next)
        }))
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// Records latency by route and bounds every request's time, so no client hangs past the
/// configured timeout even if something below forgets its own deadline.
async fn observe(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let m = metrics();
    let in_flight = GaugeGuard::hold(&m.http_in_flight);
    let started = Instant::now();
    // Membership changes wait for their effect (replication, a new leader) a little longer.
    let limit = if route.starts_with("/admin") {
        app.config.limits.request_timeout + Duration::from_secs(15)
    } else {
        app.config.limits.request_timeout + Duration::from_secs(1)
    };
    let span = tracing::info_span!(
        "http.request",
        otel.kind = "server",
        http.method = %req.method(),
        http.route = %route,
        node = %app.identity.name,
    );
    crate::telemetry::adopt_http_parent(&span, req.headers());
    let (req, body_read) = watch_body(req);
    let response = match tokio::time::timeout(limit, next.run(req).instrument(span)).await {
        Ok(r) => r,
        Err(_) if !body_read.load(Ordering::Acquire) => {
            metrics()
                .http_rejected
                .with_label_values(&["body_timeout"])
                .inc();
            let mut r = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} ms; nothing was applied",
                    limit.as_millis()
                ),
                true,
            )
            .into_response();
            // The rest of the body may still come: this connection cannot carry another request.
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
        Err(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "request timed out; if it was a write, its outcome is unknown",
            true,
        )
        .into_response(),
    };
    drop(in_flight);
    let class = format!("{}xx", response.status().as_u16() / 100);
    m.http_seconds
        .with_label_values(&[route.as_str(), class.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Wraps the request's body so that `observe` knows whether it was read to its end: a request
/// that times out still waiting for its body was never applied (408), unlike one that timed out
/// waiting for Raft (504, outcome unknown).
fn watch_body(req: Request) -> (Request, Arc<AtomicBool>) {
    let (parts, body) = req.into_parts();
    let done = Arc::new(AtomicBool::new(hyper::body::Body::is_end_stream(&body)));
    let body = axum::body::Body::new(WatchedBody {
        inner: body,
        done: done.clone(),
    });
    (Request::from_parts(parts, body), done)
}

struct WatchedBody {
    inner: axum::body::Body,
    done: Arc<AtomicBool>,
}

impl hyper::body::Body for WatchedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.done.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[utoipa::path(get, path = "/metrics", tag = "probes",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4", body = String, content_type = "text/plain")))]
async fn prometheus() -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        render(),
    )
}

#[utoipa::path(get, path = "/openapi.json", tag = "kv",
    responses((status = 200, description = "This document", body = Object)))]
async fn openapi_json() -> impl IntoResponse {
    (
        [("content-type", "application/json")],
        openapi::document_json(),
    )
}
