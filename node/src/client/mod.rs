//! A small HTTP client for the `/api/...` endpoints, used by concordctl and the tests.
//! Tries each endpoint in turn when one is unreachable or has no leader.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

/// How a client reaches endpoints that speak TLS: the CA bundle that signed the servers'
/// certificates and, for servers that ask for one, a client certificate and key (concordctl's
/// `--cacert`, `--cert`, `--key`, as etcdctl's).
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl ClientTls {
    /// The rustls configuration for gRPC clients (etcd's API over TLS), if a CA is given.
    pub fn grpc_config(&self) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, ClientError> {
        let Some(ca) = &self.cacert else {
            return Ok(None);
        };
        let read = |what: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| {
                ClientError::Tls(format!("cannot read {what} {}: {e}", path.display()))
            })
        };
        let ca = read("--cacert", ca)?;
        let identity = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((read("--cert", c)?, read("--key", k)?)),
            (None, None) => None,
            _ => return Err(ClientError::Tls("--cert and --key go together".into())),
        };
        crate::tls::grpc_client_config(
            &ca,
            identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
        )
        .map(Some)
        .map_err(ClientError::Tls)
    }

    /// An HTTP client builder set up with these files.
    pub fn http_builder(&self) -> Result<reqwest::ClientBuilder, ClientError> {
        let read = |what: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| {
                ClientError::Tls(format!("cannot read {what} {}: {e}", path.display()))
            })
        };
        let mut b = reqwest::Client::builder().use_rustls_tls();
        if let Some(ca) = &self.cacert {
            let certs = reqwest::Certificate::from_pem_bundle(&read("--cacert", ca)?)
                .map_err(|e| ClientError::Tls(format!("--cacert {}: {e}", ca.display())))?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let mut pem = read("--cert", cert)?;
                pem.push(b'\n');
                pem.extend(read("--key", key)?);
                let identity = reqwest::Identity::from_pem(&pem)
                    .map_err(|e| ClientError::Tls(format!("--cert/--key: {e}")))?;
                b = b.identity(identity);
            }
            (None, None) => {}
            _ => return Err(ClientError::Tls("--cert and --key go together".into())),
        }
        Ok(b)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {0:?}")]
    Endpoint(String),
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: Value },
    #[error("request failed: {0}")]
    Transport(String),
    #[error("TLS settings: {0}")]
    Tls(String),
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    endpoints: Vec<String>,
    tls: ClientTls,
    timeout: Duration,
    /// From [`Client::sign_in`]: sent with every request.
    token: Option<String>,
}

fn normalize(endpoint: &str) -> Result<String, ClientError> {
    let e = endpoint.trim().trim_end_matches('/');
    if e.is_empty() {
        return Err(ClientError::Endpoint(endpoint.to_string()));
    }
    Ok(if e.starts_with("http://") || e.starts_with("https://") {
        e.to_string()
    } else {
        format!("http://{e}")
    })
}

impl Client {
    pub fn new(endpoints: &[String], timeout: Duration) -> Result<Client, ClientError> {
        Client::with_tls(endpoints, timeout, ClientTls::default())
    }

    /// A client for endpoints that may speak TLS (`https://`).
    pub fn with_tls(
        endpoints: &[String],
        timeout: Duration,
        tls: ClientTls,
    ) -> Result<Client, ClientError> {
        let endpoints = endpoints
            .iter()
            .map(|e| normalize(e))
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(ClientError::Endpoint(String::new()));
        }
        let http = tls
            .http_builder()?
            .timeout(timeout)
            .build()
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok(Client {
            http,
            endpoints,
            tls,
            timeout,
            token: None,
        })
    }

    /// Signs in with a user name and password (`POST /api/auth/authenticate`); every later
    /// request carries the token, on the HTTP API and etcd's gateway alike.
    pub async fn sign_in(&mut self, user: &str, password: &str) -> Result<(), ClientError> {
        let v = self
            .send(
                reqwest::Method::POST,
                "/api/auth/authenticate",
                Some(&serde_json::json!({ "name": user, "password": password })),
            )
            .await?;
        let token = v["token"]
            .as_str()
            .ok_or_else(|| {
                ClientError::Transport(format!("sign-in answered without a token: {v}"))
            })?
            .to_string();
        let mut headers = reqwest::header::HeaderMap::new();
        let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|e| ClientError::Transport(format!("the token is not a header value: {e}")))?;
        headers.insert(reqwest::header::AUTHORIZATION, value);
        self.http = self
            .tls
            .http_builder()?
            .timeout(self.timeout)
            .default_headers(headers)
            .build()
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        self.token = Some(token);
        Ok(())
    }

    /// The token from [`Client::sign_in`], if signed in.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The HTTP client requests go through (TLS settings and token included).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    pub fn tls(&self) -> &ClientTls {
        &self.tls
    }

    /// Sends to each endpoint in turn until one answers without a retryable failure.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let mut last = ClientError::Transport("no endpoints".into());
        for ep in &self.endpoints {
            let mut req = self.http.request(method.clone(), format!("{ep}{path}"));
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Err(e) if e.is_connect() => last = ClientError::Transport(format!("{ep}: {e}")),
                Err(e) => return Err(ClientError::Transport(format!("{ep}: {e}"))),
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let text = resp
                        .text()
                        .await
                        .map_err(|e| ClientError::Transport(e.to_string()))?;
                    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    if (200..300).contains(&status) {
                        return Ok(value);
                    }
                    let err = ClientError::Status {
                        status,
                        body: value,
                    };
                    if status == 503 {
                        last = err;
                        continue;
                    }
                    return Err(err);
                }
            }
        }
        Err(last)
    }

    pub async fn set(&self, key: &str, value: &str) -> Result<Value, ClientError> {
        self.send(
            reqwest::Method::POST,
            "/api/set",
            Some(&json!({ "key": key, "value": value })),
        )
        .await
    }

    pub async fn get(&self, key: &str, stale: bool) -> Result<Value, ClientError> {
        let mut path = format!("/api/get?key={}", encode(key));
        if stale {
            path.push_str("&consistency=stale");
        }
        self.send(reqwest::Method::GET, &path, None).await
    }

    pub async fn delete(&self, key: &str) -> Result<Value, ClientError> {
        self.send(
            reqwest::Method::DELETE,
            &format!("/api/delete?key={}", encode(key)),
            None,
        )
        .await
    }

    pub async fn cas(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<Value, ClientError> {
        let body = json!({ "key": key, "expected": expected, "value": value });
        self.send(reqwest::Method::POST, "/api/cas", Some(&body))
            .await
    }

    pub async fn keys(
        &self,
        prefix: &str,
        limit: usize,
        token: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut path = format!("/api/keys?prefix={}&limit={limit}", encode(prefix));
        if let Some(t) = token {
            path.push_str(&format!("&continue={}", encode(t)));
        }
        self.send(reqwest::Method::GET, &path, None).await
    }

    pub async fn status(&self) -> Result<Value, ClientError> {
        self.send(reqwest::Method::GET, "/api/status", None).await
    }

    /// GET of any API path (admin, leases), with the same failover as the others.
    pub async fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// POST of a JSON body to any API path.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    /// GET of any path, returning status and body text (for probes and /metrics).
    pub async fn raw_get(&self, path: &str) -> Result<(u16, String), ClientError> {
        let ep = &self.endpoints[0];
        let resp = self
            .http
            .get(format!("{ep}{path}"))
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok((status, text))
    }
}

/// Percent-encodes a query parameter value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
