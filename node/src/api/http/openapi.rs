//! The OpenAPI 3.1 document of the HTTP API (the seed's `/api/*`, the admin JSON API, probes
//! and metrics), generated from the handlers' `#[utoipa::path]` annotations and the body types
//! in `schema.rs`. The router is built from the same list of handlers (`mod.rs`, `served_routes`), so
//! every route served is in the document. Served at `/openapi.json`; committed as
//! `docs/openapi.json`, which a test keeps equal to what the code generates.

use std::sync::OnceLock;

use utoipa::openapi::{ContentBuilder, OpenApi, PathItem, Ref, RefOr, ResponseBuilder};
use utoipa::OpenApi as _;

use super::schema::ErrorBody;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "ConcordKV HTTP API",
        description = "The seed's key-value API (`/api/*`), the admin JSON API (`/admin/*`), probes and metrics. \
            Every error is JSON `{\"error\", \"retryable\"}` except on the probes and `/metrics`, which answer in \
            their own text formats. A path called with a method it does not take answers 405 with `Allow`; an \
            unknown path 404. docs/api.md explains each status and limit."
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "kv", description = "The seed's key-value API"),
        (name = "auth", description = "Signing in: a user name and password for a token (once auth is enabled through etcd's Auth service)"),
        (name = "lease", description = "Leases: keys that are deleted when their owner stops renewing"),
        (name = "admin", description = "Membership and node state (what concordctl and the operator use)"),
        (name = "probes", description = "Kubernetes probes and Prometheus metrics, in text"),
    )
)]
struct ApiDoc;

/// What the HTTP layer itself can answer to any request, before or around its handler: the
/// parser's refusals and a bug.
const ANY_REQUEST: &[(u16, &str)] = &[
    (
        400,
        "The HTTP parser cannot read the request, or a query parameter does not parse or is repeated",
    ),
    (414, "The request line is over 64 KiB"),
    (431, "The request headers are over the parser's limit"),
    (500, "A bug or a storage failure"),
    (505, "An HTTP version the server does not speak"),
];

/// What every request but the probes and `/metrics` (which are never refused) can also get:
/// the answers of admission control and of the request deadline.
const ANY_API_REQUEST: &[(u16, &str)] = &[
    (
        408,
        "The body did not arrive within limits.requestTimeoutMs: nothing was applied",
    ),
    (
        413,
        "A Content-Length over limits.maxRequestBytes, refused before the body is read",
    ),
    (
        429,
        "Out of limits.maxInFlightBytes, and this client holds half of it: nothing was applied",
    ),
    (
        503,
        "Overloaded (limits.maxInFlightBytes, limits.maxConnections) or shutting down: nothing was applied",
    ),
    (
        504,
        "No answer within the request deadline; for a write, its outcome is unknown",
    ),
    (
        401,
        "Auth is on and the request has no valid token (Authorization: Bearer) or client certificate; or, on a TLS port with --client-cert-auth, no certificate",
    ),
    (
        403,
        "Auth is on and the caller's roles do not permit this (the admin API needs root)",
    ),
];

/// Paths whose answers are text and which admission control never refuses.
pub fn is_probe(path: &str) -> bool {
    matches!(path, "/livez" | "/readyz" | "/healthz" | "/metrics") || path.starts_with("/readyz/")
}

/// The document for the handlers in `api`: their own answers plus the HTTP layer's.
pub fn complete(mut api: OpenApi) -> OpenApi {
    let base = ApiDoc::openapi();
    api.info = base.info;
    api.tags = base.tags;
    let mut components = api.components.take().unwrap_or_default();
    if let Some(c) = base.components {
        components.schemas.extend(c.schemas);
    }
    api.components = Some(components);
    for (path, item) in api.paths.paths.iter_mut() {
        let probe = is_probe(path);
        for op in operations(item) {
            let layer = ANY_REQUEST
                .iter()
                .chain(if probe { &[][..] } else { ANY_API_REQUEST });
            for (status, description) in layer {
                op.responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| error_answer(description));
            }
        }
    }
    api
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
        item.head.as_mut(),
        item.options.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}

fn error_answer(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}

/// The document as served and committed (pretty JSON, stable order).
pub fn document_json() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let (_, api) = super::served_routes().split_for_parts();
        // Serializing our own in-memory document cannot fail; an empty one would fail the
        // committed-copy test rather than the server.
        let mut text = complete(api).to_pretty_json().unwrap_or_default();
        text.push('\n');
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");

    /// docs/openapi.json is what the code generates. After changing a route, regenerate it with
    /// `UPDATE_OPENAPI=1 cargo test -p concord-node --lib openapi` (scripts/regen.sh does).
    #[test]
    fn the_committed_document_is_what_the_code_generates() {
        let generated = document_json();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(COMMITTED, generated).expect("write docs/openapi.json");
        }
        let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json is stale: run UPDATE_OPENAPI=1 cargo test -p concord-node --lib openapi"
        );
    }

    #[test]
    fn every_operation_has_its_answers_and_the_layers_and_every_error_is_described() {
        let doc: serde_json::Value = serde_json::from_str(document_json()).expect("json");
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().expect("paths");
        for expected in [
            "/api/set",
            "/api/get",
            "/admin/init",
            "/readyz/{check}",
            "/openapi.json",
        ] {
            assert!(paths.contains_key(expected), "{expected} missing");
        }
        for (path, item) in paths {
            for (method, op) in item.as_object().expect("item") {
                let answers = op["responses"].as_object().expect("responses");
                assert!(answers.contains_key("200"), "{method} {path}: no 200");
                let layer = ANY_REQUEST.iter().chain(if is_probe(path) {
                    &[][..]
                } else {
                    ANY_API_REQUEST
                });
                for (status, _) in layer {
                    assert!(
                        answers.contains_key(&status.to_string()),
                        "{method} {path}: no {status}"
                    );
                }
                for (status, answer) in answers {
                    assert!(
                        answer["description"]
                            .as_str()
                            .is_some_and(|d| !d.is_empty()),
                        "{method} {path} {status}: no description"
                    );
                }
            }
        }
    }
}
