//! Admission control: a request is served only if the bytes it may bring fit in
//! `limits.maxInFlightBytes` beside those of the requests already being served. Past it the
//! answer is an immediate 503 with `Retry-After`, before the body is read, instead of a queue
//! that grows until requests time out and memory runs out.
//!
//! A request is charged its declared `Content-Length`, or `limits.maxRequestBytes` when it
//! declares none (a chunked body may be that large), plus a fixed allowance for its head and
//! answer. The charge is held until the answer is produced.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::error::ApiError;
use crate::telemetry::metrics::metrics;

/// Charged to every request besides its body: its head, its parsed form, its answer.
const PER_REQUEST_BYTES: u64 = 4096;
/// Permits count units of this many bytes (a semaphore counts in `u32`).
const UNIT: u64 = 1024;

#[derive(Clone)]
pub struct Admission {
    budget: Arc<Semaphore>,
    max_bytes: u64,
    max_request_bytes: u64,
}

impl Admission {
    pub fn new(max_bytes: u64, max_request_bytes: u64) -> Admission {
        let units = (max_bytes / UNIT).clamp(1, u64::from(u32::MAX) / 2);
        Admission {
            budget: Arc::new(Semaphore::new(units as usize)),
            max_bytes,
            max_request_bytes,
        }
    }

    fn charge(&self, req: &Request) -> u64 {
        let body = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(self.max_request_bytes)
            .min(self.max_request_bytes);
        body + PER_REQUEST_BYTES
    }
}

/// Probes and metrics are never refused: under overload, knowing the node's state matters most.
fn exempt(path: &str) -> bool {
    matches!(path, "/livez" | "/readyz" | "/healthz" | "/metrics") || path.starts_with("/readyz/")
}

pub async fn admit(admission: Admission, req: Request, next: Next) -> Response {
    if exempt(req.uri().path()) {
        return next.run(req).await;
    }
    let bytes = admission.charge(&req);
    let units = bytes.div_ceil(UNIT).min(u64::from(u32::MAX)) as u32;
    let Ok(permit) = admission.budget.clone().try_acquire_many_owned(units) else {
        metrics()
            .http_rejected
            .with_label_values(&["overloaded"])
            .inc();
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "server busy: requests in flight hold its limits.maxInFlightBytes ({} bytes); nothing was applied, retry shortly",
                admission.max_bytes
            ),
            true,
        )
        .into_response();
        // The body is not read: the connection cannot carry another request.
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        return response;
    };
    let _charged = Charged::hold(bytes as i64);
    let response = next.run(req).await;
    drop(permit);
    response
}

/// The charge shown in `concord_http_request_bytes_in_flight`, released however the request
/// ends (answered, or dropped when the client goes away).
struct Charged(i64);

impl Charged {
    fn hold(bytes: i64) -> Charged {
        metrics().http_in_flight_bytes.add(bytes);
        Charged(bytes)
    }
}

impl Drop for Charged {
    fn drop(&mut self) {
        metrics().http_in_flight_bytes.sub(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_the_declared_length_or_the_largest_body() {
        let a = Admission::new(1 << 20, 64 * 1024);
        let with = |len: Option<&str>| {
            let mut b = Request::builder().uri("/api/set");
            if let Some(len) = len {
                b = b.header(header::CONTENT_LENGTH, len);
            }
            a.charge(&b.body(axum::body::Body::empty()).unwrap())
        };
        assert_eq!(with(Some("100")), 100 + PER_REQUEST_BYTES);
        assert_eq!(with(None), 64 * 1024 + PER_REQUEST_BYTES);
        assert_eq!(with(Some("junk")), 64 * 1024 + PER_REQUEST_BYTES);
        // Over the request limit is refused elsewhere (413); the charge never exceeds it.
        assert_eq!(with(Some("999999999")), 64 * 1024 + PER_REQUEST_BYTES);
    }
}
