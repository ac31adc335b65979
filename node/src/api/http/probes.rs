//! Health probes with etcd's shape: `/livez`, `/readyz` (alias `/healthz`), each check also at
//! `/readyz/<check>`, and `?verbose` listing every check.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::app::App;

/// The readiness checks, in the order they are reported.
pub const READY_CHECKS: &[&str] = &["raft", "shutdown", "leader", "applied"];

/// Runs one readiness check: `Ok` or the reason it fails.
pub fn check(app: &App, name: &str) -> Option<Result<(), String>> {
    let m = app.metrics();
    Some(match name {
        "raft" => m
            .running_state
            .as_ref()
            .map(|_| ())
            .map_err(|e| format!("raft has stopped: {e}")),
        "shutdown" => {
            if app.is_shutting_down() {
                Err("node is shutting down".into())
            } else {
                Ok(())
            }
        }
        "leader" => app.leader_contact(&m),
        "applied" => {
            let committed = m.cluster_committed.as_ref().map(|l| l.index).unwrap_or(0);
            let applied = m.last_applied.as_ref().map(|l| l.index).unwrap_or(0);
            if applied < committed {
                Err(format!(
                    "applied index {applied} is behind commit index {committed}"
                ))
            } else {
                Ok(())
            }
        }
        _ => return None,
    })
}

/// Ready when every check passes; the first failure otherwise.
pub fn readiness(app: &App) -> Result<(), String> {
    for name in READY_CHECKS {
        if let Some(Err(reason)) = check(app, name) {
            return Err(format!("{name}: {reason}"));
        }
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct Verbose {
    verbose: Option<String>,
}

fn render(results: &[(&str, Result<(), String>)], verbose: bool, what: &str) -> Response {
    let ok = results.iter().all(|(_, r)| r.is_ok());
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = String::new();
    if verbose {
        for (name, r) in results {
            match r {
                Ok(()) => body.push_str(&format!("[+]{name} ok\n")),
                Err(reason) => body.push_str(&format!("[-]{name} failed: {reason}\n")),
            }
        }
    }
    if ok {
        body.push_str(&format!("{what} check passed\n"));
    } else {
        for (name, r) in results {
            if let Err(reason) = r {
                if !verbose {
                    body.push_str(&format!("[-]{name} failed: {reason}\n"));
                }
            }
        }
        body.push_str(&format!("{what} check failed\n"));
    }
    (status, body).into_response()
}

/// Liveness never depends on peers: a partitioned node is alive and must not be restarted. It
/// does fail when Raft itself has stopped on a fatal local error (a failed fsync, a full disk):
/// only a restart recovers from that.
#[utoipa::path(get, path = "/livez", tag = "probes",
    params(("verbose" = Option<String>, Query, description = "Present: list every check")),
    responses(
        (status = 200, description = "Alive (`ok`, or the checks with `?verbose`)", body = String, content_type = "text/plain"),
        (status = 503, description = "Raft stopped on a fatal local error: restart the process", body = String, content_type = "text/plain"),
    ))]
pub async fn livez(State(app): State<Arc<App>>, Query(q): Query<Verbose>) -> Response {
    let raft = check(&app, "raft").unwrap_or(Ok(()));
    render(
        &[("runtime", Ok(())), ("raft", raft)],
        q.verbose.is_some(),
        "livez",
    )
}

#[utoipa::path(get, path = "/readyz", tag = "probes",
    params(("verbose" = Option<String>, Query, description = "Present: list every check")),
    responses(
        (status = 200, description = "Ready to serve (`ok`, or the checks with `?verbose`)", body = String, content_type = "text/plain"),
        (status = 503, description = "Not ready; the failing checks are listed", body = String, content_type = "text/plain"),
    ))]
pub async fn readyz(State(app): State<Arc<App>>, Query(q): Query<Verbose>) -> Response {
    let results: Vec<(&str, Result<(), String>)> = READY_CHECKS
        .iter()
        .filter_map(|name| check(&app, name).map(|r| (*name, r)))
        .collect();
    render(&results, q.verbose.is_some(), "readyz")
}

/// `/readyz` under the name Kubernetes' own components use.
#[utoipa::path(get, path = "/healthz", tag = "probes",
    params(("verbose" = Option<String>, Query, description = "Present: list every check")),
    responses(
        (status = 200, description = "Ready to serve", body = String, content_type = "text/plain"),
        (status = 503, description = "Not ready; the failing checks are listed", body = String, content_type = "text/plain"),
    ))]
pub async fn healthz(app: State<Arc<App>>, q: Query<Verbose>) -> Response {
    readyz(app, q).await
}

#[utoipa::path(get, path = "/readyz/{check}", tag = "probes",
    params(("check" = String, Path, description = "One of raft, shutdown, leader, applied")),
    responses(
        (status = 200, description = "The check passes", body = String, content_type = "text/plain"),
        (status = 404, description = "No such check; the known ones are listed", body = String, content_type = "text/plain"),
        (status = 503, description = "The check fails, with its reason", body = String, content_type = "text/plain"),
    ))]
pub async fn readyz_one(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    match READY_CHECKS.iter().find(|c| **c == name) {
        Some(known) => match check(&app, known) {
            Some(r) => render(&[(known, r)], true, "readyz"),
            None => (StatusCode::NOT_FOUND, "unknown check\n").into_response(),
        },
        None => (
            StatusCode::NOT_FOUND,
            format!(
                "unknown check {name:?}; checks: {}\n",
                READY_CHECKS.join(", ")
            ),
        )
            .into_response(),
    }
}
