//! Client-facing errors: every failure is JSON `{"error": "...", "retryable": bool}` with a
//! status code that says what happened.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

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
            ServiceError::Internal(_) => "internal",
        };
        metrics().http_rejected.with_label_values(&[reason]).inc();
        match e {
            ServiceError::NoLeader(_) | ServiceError::NotLeader | ServiceError::Unavailable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), true)
            }
            ServiceError::Unknown(m) => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("outcome unknown: the write may or may not have been applied ({m}); read before retrying a non-idempotent write"),
                true,
            ),
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
        (self.status, Json(body)).into_response()
    }
}
