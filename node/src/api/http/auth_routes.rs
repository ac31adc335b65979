//! `POST /api/auth/authenticate`: a user name and password for a token, as etcd's
//! Authenticate, and what the seed API checks of every request once auth is on.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::{json_object, ApiError};
use super::schema::{AuthenticateRequest, AuthenticateResponse, ErrorBody};
use crate::app::App;
use crate::auth::sign_in::{sign_in, SignInError};
use crate::auth::{self, Access, Caller, Refusal};
use crate::store::mvcc::KeyRange;

#[utoipa::path(post, path = "/api/auth/authenticate", tag = "auth",
    request_body(content = AuthenticateRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Signed in: the token to send as `Authorization: Bearer TOKEN`", body = AuthenticateResponse),
        (status = 400, description = "Not a JSON object with string `name` and `password`", body = ErrorBody),
        (status = 401, description = "Wrong user name or password (the same answer for both)", body = ErrorBody),
        (status = 409, description = "Authentication is not enabled", body = ErrorBody),
        (status = 429, description = "Too many failed attempts from this address: retry later", body = ErrorBody),
    ))]
pub async fn authenticate(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<AuthenticateResponse>, ApiError> {
    let req = AuthenticateRequest::from_body(json_object(
        body,
        app.config.limits.max_request_bytes,
        false,
    )?)?;
    match sign_in(&app, &req.name, req.password, auth::source()).await {
        Ok(token) => Ok(Json(AuthenticateResponse { token })),
        Err(e) => Err(ApiError::new(
            match e {
                SignInError::NotEnabled => StatusCode::CONFLICT,
                SignInError::Failed => StatusCode::UNAUTHORIZED,
                SignInError::TooMany => StatusCode::TOO_MANY_REQUESTS,
                SignInError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            e.to_string(),
            matches!(e, SignInError::TooMany),
        )),
    }
}

/// The answer to a refused request: 401 without (valid) credentials, 403 without permission.
pub fn refusal(r: &Refusal) -> ApiError {
    r.count();
    let (status, message) = match r {
        Refusal::NoCredentials => (
            StatusCode::UNAUTHORIZED,
            "authentication required: send Authorization: Bearer TOKEN (POST /api/auth/authenticate) or a client certificate".to_string(),
        ),
        Refusal::InvalidToken => (
            StatusCode::UNAUTHORIZED,
            "the token is invalid or expired: authenticate again".to_string(),
        ),
        Refusal::Denied => (StatusCode::FORBIDDEN, "permission denied".to_string()),
    };
    ApiError::new(status, message, false)
}

/// Refuses the request being served unless its caller may `access` every key of `keys`.
pub fn authorize(app: &App, access: Access, keys: &KeyRange) -> Result<(), ApiError> {
    let state = app.state.read();
    auth::caller(&state.auth)
        .and_then(|c| c.check(&state.auth, access, keys))
        .map_err(|r| refusal(&r))
}

/// The caller of the request being served, to filter what it may see.
pub fn reader(app: &App) -> Result<Caller, ApiError> {
    auth::caller(&app.state.read().auth).map_err(|r| refusal(&r))
}

/// What the HTTP API asks of a request's caller while auth is on.
fn path_rule(path: &str) -> auth::Gate {
    use auth::Gate;
    match path {
        "/livez"
        | "/readyz"
        | "/healthz"
        | "/metrics"
        | "/openapi.json"
        | "/api/status"
        | "/api/auth/authenticate" => Gate::Open,
        _ if path.starts_with("/readyz/") => Gate::Open,
        "/api/get" | "/api/set" | "/api/delete" | "/api/cas" | "/api/keys" | "/api/watch"
        | "/api/lease/revoke" => Gate::Handler,
        _ if path.starts_with("/api/lease/") => Gate::SignedIn,
        _ => Gate::Root,
    }
}

/// The HTTP API's front door: identifies the caller (a bearer token, else the client
/// certificate's common name) and serves the request as theirs, refusing at once what its
/// path's rule does not let through.
pub async fn front_door(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let (caller, refused) = {
        let state = app.state.read();
        if !state.auth.enabled() {
            (Ok(Caller::Anyone), None)
        } else {
            let cert = req.extensions().get::<crate::tls::ClientCert>();
            let caller = Caller::of_request(&state.auth, req.headers(), cert);
            let refused = path_rule(req.uri().path()).refuses(&state.auth, &caller);
            (caller, refused)
        }
    };
    if let Some(r) = refused {
        return refusal(&r).into_response();
    }
    auth::serving(caller, source, next.run(req)).await
}
