//! Signing in with a user name and password, for both APIs (etcd's Authenticate and the seed
//! API's `POST /api/auth/authenticate`): limited per source address, counted, logged by user
//! name only.

use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use super::{issue_token, password_matches};
use crate::app::App;
use crate::telemetry::metrics::metrics;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignInError {
    #[error("etcdserver: authentication is not enabled")]
    NotEnabled,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    Failed,
    #[error("etcdserver: too many failed authentications from this address; retry later")]
    TooMany,
    #[error("{0}")]
    Internal(String),
}

/// A token for `name` if `password` is theirs.
pub async fn sign_in(
    app: &App,
    name: &str,
    password: String,
    source: Option<IpAddr>,
) -> Result<String, SignInError> {
    if let Some(ip) = source {
        if !app.failed_logins.may_try(ip, Instant::now()) {
            metrics()
                .auth_failures
                .with_label_values(&["rate_limited"])
                .inc();
            return Err(SignInError::TooMany);
        }
    }
    let store = app.state.read().auth.clone();
    if !store.enabled() {
        return Err(SignInError::NotEnabled);
    }
    // argon2 takes tens of milliseconds on purpose: off the runtime's threads.
    let (check, user) = (store.clone(), name.to_string());
    let matches = tokio::task::spawn_blocking(move || password_matches(&check, &user, &password))
        .await
        .map_err(|e| SignInError::Internal(format!("hashing task: {e}")))?;
    if !matches {
        if let Some(ip) = source {
            app.failed_logins.failed(ip, Instant::now());
        }
        metrics()
            .auth_failures
            .with_label_values(&["bad_password"])
            .inc();
        tracing::warn!(user = %name, source = ?source, "authentication failed");
        return Err(SignInError::Failed);
    }
    if let Some(ip) = source {
        app.failed_logins.succeeded(ip);
    }
    issue_token(&store, name, app.config.auth_token_ttl, SystemTime::now())
        .map_err(SignInError::Internal)
}
