//! Client-facing errors: every failure is JSON `{"error": "...", "retryable": bool}` with a
//! status code that says what happened.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use crate::requests::ServiceError;
use crate::telemetry::metrics::metrics;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub retryable: bool,
    /// Extra fields merged into the body (e.g. the current value on a failed CAS).
    pub extra: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>, retryable: bool) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retryable,
            extra: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        metrics()
            .http_rejected
            .with_label_values(&["bad_request"])
            .inc();
        ApiError::new(StatusCode::BAD_REQUEST, message, false)
    }

    pub fn too_large(message: impl Into<String>) -> ApiError {
        metrics()
            .http_rejected
            .with_label_values(&["too_large"])
            .inc();
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message, false)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message, false)
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        let reason = match &e {
            ServiceError::NoLeader(_) | ServiceError::NotLeader => "no_leader",
            ServiceError::Unknown(_) => "outcome_unknown",
            ServiceError::Unavailable(_) => "unavailable",
            ServiceError::Overloaded(_) => "overloaded",
            ServiceError::NoSpace(_) => "nospace",
            ServiceError::Internal(_) => "internal",
        };
        metrics().http_rejected.with_label_values(&[reason]).inc();
        match e {
            ServiceError::NoLeader(_)
            | ServiceError::NotLeader
            | ServiceError::Unavailable(_)
            | ServiceError::Overloaded(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), true)
            }
            ServiceError::Unknown(m) => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("outcome unknown: the write may or may not have been applied ({m}); read before retrying a non-idempotent write"),
                true,
            ),
            // Not retryable as it stands: space must be freed first.
            ServiceError::NoSpace(m) => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, m, false),
            ServiceError::Internal(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), false),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message, "retryable": self.retryable });
        if let (Some(serde_json::Value::Object(extra)), Some(obj)) =
            (self.extra, body.as_object_mut())
        {
            obj.extend(extra);
        }
        let mut response = (self.status, Json(body)).into_response();
        if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            // Every 503 and 429 means "nothing was applied, try again": say when.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Reads a JSON object body, turning every failure into a 4xx that names the problem. With
/// `empty_is_object`, an empty body is `{}` (admin calls whose fields are all optional).
pub fn json_object(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
    empty_is_object: bool,
) -> Result<Map<String, Value>, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            body_too_large(None, limit)
        } else {
            ApiError::bad_request(format!("cannot read request body: {}", e.body_text()))
        }
    })?;
    if body.is_empty() && empty_is_object {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("request body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!("malformed JSON: {e}"))),
    }
}

fn body_too_large(declared: Option<u64>, limit: usize) -> ApiError {
    let size = match declared {
        Some(n) => format!("request body is {n} bytes"),
        None => "request body is too large".to_string(),
    };
    ApiError::too_large(format!(
        "{size}; the limit is {limit} bytes (limits.maxRequestBytes)"
    ))
}

/// What axum's 405 says a path takes (its `Allow` header).
fn allowed_methods(headers: &axum::http::HeaderMap) -> String {
    headers
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Probes and `/metrics` answer in text, their wrong methods too: axum's bare 405 gets a text
/// body saying what is allowed (and keeps `Allow`).
fn probe_method_not_allowed(
    response: Response,
    method: &axum::http::Method,
    path: &str,
) -> Response {
    if response.status() != StatusCode::METHOD_NOT_ALLOWED {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let allowed = allowed_methods(&parts.headers);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let text = format!("method {method} is not allowed on {path}; allowed: {allowed}\n");
    Response::from_parts(parts, axum::body::Body::from(text))
}

/// The one error path of the HTTP layer. A body whose declared length is over the limit is
/// refused before it is read; an error answer that is not already JSON — what axum gives for a
/// wrong method (405, with `Allow`), a query or path that does not parse, a body it could not
/// buffer — becomes the JSON error with the same status and headers, its text as the message.
pub async fn json_errors(limit: usize, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if let Some(declared) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if declared > limit as u64 {
            let mut response = body_too_large(Some(declared), limit).into_response();
            // The body is not read: the connection cannot be reused for another request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    }
    let response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    if super::openapi::is_probe(&path) {
        return probe_method_not_allowed(response, &method, &path);
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // axum's rejection texts are short; anything else is cut rather than buffered whole.
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = allowed_methods(&parts.headers);
            format!("method {method} is not allowed on {path}; allowed: {allowed}")
        }
        _ if !text.is_empty() => text,
        other => other
            .canonical_reason()
            .unwrap_or("request refused")
            .to_string(),
    };
    let reason = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "too_large"
    } else if status.is_client_error() {
        "bad_request"
    } else {
        "internal"
    };
    metrics().http_rejected.with_label_values(&[reason]).inc();
    let json = ApiError::new(status, message, status.is_server_error()).into_response();
    let (json_parts, json_body) = json.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in json_parts.headers.iter() {
        parts.headers.insert(name.clone(), value.clone());
    }
    Response::from_parts(parts, json_body)
}
