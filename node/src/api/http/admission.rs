//! Admission control: a request is served only if the bytes it may bring fit in
//! `limits.maxInFlightBytes` beside those of the requests already being served. Past it the
//! answer is an immediate 503 with `Retry-After`, before the body is read, instead of a queue
//! that grows until requests time out and memory runs out.
//!
//! A request is charged its declared `Content-Length`, or `limits.maxRequestBytes` when it
//! declares none (a chunked body may be that large), plus a fixed allowance for its head and
//! answer. The charge is held until the answer is produced.
//!
//! When the budget is full, a client (by IP address) that holds half of it or more is the one
//! hogging the server: it gets 429, everyone else 503, both with `Retry-After`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Request};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::budget::ByteBudget;
use crate::telemetry::metrics::metrics;

/// Charged to every request besides its body: its head, its parsed form, its answer.
pub const PER_REQUEST_BYTES: u64 = 4096;

#[derive(Clone)]
pub struct Admission {
    budget: ByteBudget,
    max_request_bytes: u64,
    /// Bytes each client address holds now; an address leaves the map with its last request,
    /// so the map is bounded by the requests in flight.
    by_client: Arc<Mutex<HashMap<IpAddr, u64>>>,
}

impl Admission {
    /// `budget` is the node's request budget, which writes forwarded to it also draw on.
    pub fn new(budget: ByteBudget, max_request_bytes: u64) -> Admission {
        Admission {
            budget,
            max_request_bytes,
            by_client: Arc::default(),
        }
    }

    fn held_by(&self, client: IpAddr) -> u64 {
        let held = self.by_client.lock().unwrap_or_else(|p| p.into_inner());
        held.get(&client).copied().unwrap_or(0)
    }

    /// Whether `client`, refused for lack of budget, is the one holding it.
    fn is_hogging(&self, client: IpAddr) -> bool {
        self.held_by(client).saturating_mul(2) >= self.budget.max_bytes()
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

pub async fn admit(admission: Admission, req: Request, next: Next) -> Response {
    // Probes and metrics are never refused: under overload, knowing the node's state matters
    // most.
    if super::openapi::is_probe(req.uri().path()) {
        return next.run(req).await;
    }
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let bytes = admission.charge(&req);
    let Some(charge) = admission.budget.try_charge(bytes) else {
        let max = admission.budget.max_bytes();
        let mut response = match client {
            Some(ip) if admission.is_hogging(ip) => {
                metrics().http_rejected.with_label_values(&["hogging"]).inc();
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "too many requests from {ip}: they hold {} of this server's limits.maxInFlightBytes ({max} bytes); nothing was applied, retry shortly",
                        admission.held_by(ip)
                    ),
                    true,
                )
            }
            _ => {
                metrics()
                    .http_rejected
                    .with_label_values(&["overloaded"])
                    .inc();
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "server busy: requests in flight hold its limits.maxInFlightBytes ({max} bytes); nothing was applied, retry shortly"
                    ),
                    true,
                )
            }
        }
        .into_response();
        // The body is not read: the connection cannot carry another request.
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        return response;
    };
    let _held = charge.shown_in_flight();
    let _client = client.map(|ip| ClientShare::hold(&admission.by_client, ip, bytes));
    next.run(req).await
}

/// One request's bytes in its client's share, given back however the request ends.
struct ClientShare {
    by_client: Arc<Mutex<HashMap<IpAddr, u64>>>,
    ip: IpAddr,
    bytes: u64,
}

impl ClientShare {
    fn hold(by_client: &Arc<Mutex<HashMap<IpAddr, u64>>>, ip: IpAddr, bytes: u64) -> ClientShare {
        let mut held = by_client.lock().unwrap_or_else(|p| p.into_inner());
        *held.entry(ip).or_default() += bytes;
        ClientShare {
            by_client: by_client.clone(),
            ip,
            bytes,
        }
    }
}

impl Drop for ClientShare {
    fn drop(&mut self) {
        let mut held = self.by_client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = held.get_mut(&self.ip) {
            *h = h.saturating_sub(self.bytes);
            if *h == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_the_declared_length_or_the_largest_body() {
        let a = Admission::new(ByteBudget::new(1 << 20), 64 * 1024);
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

    #[test]
    fn the_client_holding_half_the_budget_is_the_hog_and_leaves_no_trace_when_done() {
        let a = Admission::new(ByteBudget::new(100 * 1024), 64 * 1024);
        let (hog, other): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let first = ClientShare::hold(&a.by_client, hog, 30 * 1024);
        let _small = ClientShare::hold(&a.by_client, other, 10 * 1024);
        assert!(!a.is_hogging(hog), "30% is not hogging");
        let second = ClientShare::hold(&a.by_client, hog, 20 * 1024);
        assert!(a.is_hogging(hog), "50% is");
        assert!(!a.is_hogging(other));
        drop((first, second));
        assert_eq!(a.held_by(hog), 0);
        assert!(!a.by_client.lock().unwrap().contains_key(&hog));
    }
}
