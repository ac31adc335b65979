//! The HTTP accept loop: how many client connections may be open, how long each may take to send
//! a request or sit idle, and the answer to requests the HTTP parser refuses before our router
//! ever sees them.
//!
//! `axum::serve` sets none of these (hyper's header timeout needs a timer it does not give), so a
//! client that connects and sends nothing, or trickles a header a byte a second, kept a socket and
//! a task forever. Here every connection runs under a watchdog:
//!
//! - **header timeout**: from the moment a connection is open (or, after a response, from the
//!   first byte of the next request) its request head must be complete within
//!   `limits.headerReadTimeoutMs`;
//! - **idle timeout**: a connection with no request in progress and no byte received for
//!   `limits.idleTimeoutMs` is closed (keep-alive connections included). A request is in
//!   progress until its answer has been sent whole, so a long stream (a watch) is never idle;
//! - **connection limit**: beyond `limits.maxConnections` open connections a new one gets an
//!   immediate 503 JSON answer and is closed; open ones keep working.
//!
//! HTTP/2 connections get hyper's stream limits (`limits.maxConcurrentStreams`, and a bound on
//! streams reset before they are answered, against "rapid reset").

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

use crate::config::Limits;
use crate::telemetry::metrics::{metrics, GaugeGuard};
use crate::tls::{Acceptor, ClientCert, ClientPort, Tls};

/// What the accept loop enforces; from `limits.*` (docs/api.md, Limits).
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_concurrent_streams: u32,
    /// The shape of the JSON errors this loop writes itself.
    pub errors: ErrorShape,
}

impl ConnectionLimits {
    pub fn from_limits(l: &Limits) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: l.max_connections,
            header_read_timeout: l.header_read_timeout,
            idle_timeout: l.idle_timeout,
            max_concurrent_streams: l.max_concurrent_streams,
            errors: ErrorShape::Seed,
        }
    }
}

/// The error bodies of the port's API, for the answers written before any route is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorShape {
    /// The seed API's `{"error", "retryable"}`.
    Seed,
    /// grpc-gateway's `{"error", "code", "message"}` (etcd's port; `code` the gRPC code).
    Gateway,
}

impl ErrorShape {
    fn body(self, message: &str, retryable: bool, grpc_code: tonic::Code) -> String {
        match self {
            ErrorShape::Seed => serde_json::json!({ "error": message, "retryable": retryable }),
            ErrorShape::Gateway => serde_json::json!({
                "error": message,
                "code": grpc_code as i32,
                "message": message,
            }),
        }
        .to_string()
    }
}

/// How long connections may take to finish after shutdown begins.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` until `stop` turns true, over TLS if `tls` has a certificate
/// for this `port`; returns an error only if the listener itself fails.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    (tls, port): (Arc<Tls>, ClientPort),
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    // Refused connections drained before they are closed (see `refuse_connection`).
    let lingering = Arc::new(Semaphore::new(256));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The watchdog below times headers: hyper's own timer would also count idle time.
        .header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_pending_accept_reset_streams(Some(20))
        .keep_alive_interval(Some(limits.idle_timeout / 2))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) if transient_accept_error(&e) => {
                // Out of file descriptors or a connection reset before accept: wait and go on.
                tracing::warn!(error = %e, "accept failed; retrying");
                metrics()
                    .http_connections_refused
                    .with_label_values(&["accept_error"])
                    .inc();
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        // Without TCP_NODELAY small responses meet delayed ACKs: 40 ms tail latency.
        let _ = tcp.set_nodelay(true);
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics()
                .http_connections_refused
                .with_label_values(&["max_connections"])
                .inc();
            refuse_connection(tcp, &limits, &lingering);
            continue;
        };
        let builder = builder.clone();
        let router = router.clone();
        let stop = stop.clone();
        let limits = limits.clone();
        // The configuration as it is now: a certificate rotated since applies from here on.
        let acceptor = tls.client_port(port);
        tokio::spawn(async move {
            match acceptor {
                None => serve_connection(&builder, tcp, peer, None, router, &limits, stop).await,
                Some(acceptor) => {
                    // The handshake counts against the header timeout: a client that connects
                    // and stalls holds nothing longer than one that sends no request.
                    let deadline = limits.header_read_timeout;
                    if let Some((tls, cert)) = acceptor.accept(tcp, peer, deadline).await {
                        let gate = Some(CertGate { acceptor, cert });
                        serve_connection(&builder, tls, peer, gate, router, &limits, stop).await;
                    }
                }
            }
            drop(permit);
        });
    }
    // Every connection holds a permit: all of them back means all connections are done.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(DRAIN + Duration::from_secs(1), open.acquire_many(all)).await;
    Ok(())
}

fn transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || matches!(e.raw_os_error(), Some(23 | 24)) // ENFILE, EMFILE: out of descriptors
}

/// Answers a connection over the limit without serving it: one non-blocking write of a 503 (an
/// HTTP/1 client sees why; any client sees the close at once), then close. Closing a socket
/// with unread input makes the kernel send a reset, which can destroy the answer before the
/// client reads it, so while few refusals are pending the input is drained for a moment first.
fn refuse_connection(mut tcp: TcpStream, limits: &ConnectionLimits, lingering: &Arc<Semaphore>) {
    let message = format!(
        "too many open connections (limits.maxConnections = {}); retry shortly",
        limits.max_connections
    );
    let body = limits.errors.body(&message, true, tonic::Code::Unavailable);
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.try_write(response.as_bytes());
    let Ok(permit) = lingering.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = tcp.shutdown().await;
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            let mut left = 64 * 1024usize;
            while left > 0 {
                match tcp.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        })
        .await;
        drop(permit);
    });
}

/// A TLS connection's client certificate, and whether requests without one are let through.
struct CertGate {
    acceptor: Acceptor,
    cert: Option<ClientCert>,
}

impl CertGate {
    /// The answer to a request the port's certificate rule refuses.
    fn refusal(
        gate: Option<&CertGate>,
        path: &str,
        errors: ErrorShape,
    ) -> Option<axum::response::Response> {
        let gate = gate?;
        if gate.acceptor.admits(path, gate.cert.as_ref()) {
            return None;
        }
        let body = errors.body(
            "a client certificate from the trusted CA is required (--client-cert-auth)",
            false,
            tonic::Code::Unauthenticated,
        );
        axum::response::Response::builder()
            .status(hyper::StatusCode::UNAUTHORIZED)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(body))
            .ok()
    }
}

async fn serve_connection<S>(
    builder: &auto::Builder<TokioExecutor>,
    stream: S,
    peer: std::net::SocketAddr,
    gate: Option<CertGate>,
    router: Router,
    limits: &ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _open = GaugeGuard::hold(&metrics().http_connections);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(WatchedIo {
        inner: stream,
        activity: activity.clone(),
        rewrite: None,
        errors: limits.errors,
    });
    let service_activity = activity.clone();
    let gate = Arc::new(gate);
    let errors = limits.errors;
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let request = RequestGuard::enter(&service_activity);
        let router = router.clone();
        let gate = gate.clone();
        async move {
            let mut req = req.map(axum::body::Body::new);
            // Who sent it: admission control tells the client hogging the server from others.
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let refused = CertGate::refusal(gate.as_ref().as_ref(), req.uri().path(), errors);
            let response = match refused {
                Some(refusal) => Ok(refusal),
                None => {
                    if let Some(cert) = gate.as_ref().as_ref().and_then(|g| g.cert.clone()) {
                        req.extensions_mut().insert(cert);
                    }
                    router.oneshot(req).await
                }
            };
            // Counted as in progress until its body is sent whole: a streamed answer (a
            // watch) is not an idle connection.
            response.map(|r| {
                r.map(|body| {
                    axum::body::Body::new(Answering {
                        body,
                        _request: request,
                    })
                })
            })
        }
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let tick = (limits.header_read_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(tick);
    let mut draining: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = ticker.tick() => {
                if let Some(reason) = activity.expired(limits) {
                    metrics()
                        .http_connections_closed
                        .with_label_values(&[reason])
                        .inc();
                    return;
                }
                if draining.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    return;
                }
            }
            _ = stop.wait_for(|s| *s), if draining.is_none() => {
                conn.as_mut().graceful_shutdown();
                draining = Some(tokio::time::Instant::now() + DRAIN);
            }
        }
    }
}

/// What the watchdog knows about one connection. Times are milliseconds since `start`.
struct Activity {
    start: Instant,
    /// Requests handed to the router and not yet answered.
    in_flight: AtomicUsize,
    /// When the connection last became ready for a request (accept, or the last answer).
    idle_since: AtomicU64,
    /// When the first byte of the next request arrived; 0 while none has.
    request_started: AtomicU64,
    /// Whether the connection has been answered at least once (then silence is idleness, not a
    /// slow request).
    answered: AtomicBool,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            request_started: AtomicU64::new(0),
            answered: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        // At least 1, so 0 can mean "not yet".
        (self.start.elapsed().as_millis() as u64).max(1)
    }

    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.request_started.load(Ordering::Relaxed) == 0
        {
            self.request_started.store(self.now(), Ordering::Relaxed);
        }
    }

    /// Why the connection should be closed now, if it should.
    fn expired(&self, limits: &ConnectionLimits) -> Option<&'static str> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let now = self.now();
        let started = self.request_started.load(Ordering::Relaxed);
        let header_limit = limits.header_read_timeout.as_millis() as u64;
        if started != 0 && now.saturating_sub(started) > header_limit {
            return Some("header_timeout");
        }
        let idle = now.saturating_sub(self.idle_since.load(Ordering::Relaxed));
        if started == 0 {
            // A new connection must send its first request within the header timeout; after
            // an answer, the connection may sit idle for the idle timeout.
            if !self.answered.load(Ordering::Relaxed) && idle > header_limit {
                return Some("header_timeout");
            }
            if idle > limits.idle_timeout.as_millis() as u64 {
                return Some("idle_timeout");
            }
        }
        None
    }
}

/// Marks one request in progress on its connection.
struct RequestGuard(Arc<Activity>);

impl RequestGuard {
    fn enter(activity: &Arc<Activity>) -> RequestGuard {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.request_started.store(0, Ordering::Relaxed);
        RequestGuard(activity.clone())
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.0;
        a.answered.store(true, Ordering::Relaxed);
        if a.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            a.idle_since.store(a.now(), Ordering::Relaxed);
        }
    }
}

/// A response body that keeps its request in progress (its guard alive) until hyper has sent
/// it and dropped it.
struct Answering {
    body: axum::body::Body,
    _request: RequestGuard,
}

impl http_body::Body for Answering {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The socket as hyper sees it: reads feed the watchdog, and a bare error answer written by
/// hyper's parser gets our JSON body.
struct WatchedIo<S> {
    inner: S,
    activity: Arc<Activity>,
    /// Our replacement for an error answer hyper is writing: the bytes, how many are written,
    /// and how many of hyper's bytes it stands for.
    rewrite: Option<(Vec<u8>, usize, usize)>,
    errors: ErrorShape,
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.rewrite.is_none() {
            if let Some(replacement) = parser_error_answer(buf, self.errors) {
                self.rewrite = Some((replacement, 0, buf.len()));
            }
        }
        let this = &mut *self;
        let Some((bytes, written, stands_for)) = this.rewrite.as_mut() else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        while *written < bytes.len() {
            match Pin::new(&mut this.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let consumed = *stands_for;
        this.rewrite = None;
        Poll::Ready(Ok(consumed))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// If `buf` is exactly one bodiless HTTP/1 error response with no content type — what hyper
/// writes when it refuses a request it could not parse (414 URI too long, 431 headers too large,
/// 400 malformed) — the same answer with the JSON error body every other refusal has. Responses
/// from the router always carry a content type, so they are never touched.
pub(crate) fn parser_error_answer(buf: &[u8], shape: ErrorShape) -> Option<Vec<u8>> {
    if !(buf.starts_with(b"HTTP/1.1 ") || buf.starts_with(b"HTTP/1.0 ")) {
        return None;
    }
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    if head_end != buf.len() {
        return None;
    }
    let head = std::str::from_utf8(buf).ok()?.to_ascii_lowercase();
    if head.contains("\r\ncontent-type:") || !head.contains("\r\ncontent-length: 0\r\n") {
        return None;
    }
    let code: u16 = head.get(9..12)?.parse().ok()?;
    if code < 400 {
        return None;
    }
    let message = match code {
        414 => "request URI too long: the request line is over the HTTP parser's limit (64 KiB); send large keys in a JSON body".to_string(),
        431 => "request headers too large: over the HTTP parser's limit".to_string(),
        400 => "malformed HTTP request: the request line or headers could not be parsed".to_string(),
        other => format!("request refused by the HTTP parser ({other})"),
    };
    let body = shape.body(&message, false, tonic::Code::InvalidArgument);
    let reason = head
        .get(13..head.find("\r\n")?)
        .map(str::to_string)
        .unwrap_or_default();
    let reason = http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or(&reason)
        .to_string();
    Some(
        format!(
            "HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 10,
            header_read_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(300),
            max_concurrent_streams: 10,
            errors: ErrorShape::Seed,
        }
    }

    #[test]
    fn hypers_bare_error_answers_get_the_json_body() {
        let bare = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(parser_error_answer(bare, ErrorShape::Seed).unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{out}");
        let body = out.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["retryable"], false);
        assert!(v["error"].as_str().unwrap().contains("URI too long"));
        assert!(out.contains(&format!("content-length: {}\r\n", body.len())));
        // On etcd's port, grpc-gateway's shape with the gRPC code.
        let out =
            String::from_utf8(parser_error_answer(bare, ErrorShape::Gateway).unwrap()).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(v["code"], 3);
        assert_eq!(v["message"], v["error"]);
    }

    #[test]
    fn router_answers_are_never_rewritten() {
        for untouched in [
            &b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nextra",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\n\r\n",
            b"{\"error\":\"HTTP/1.1 400\"}",
        ] {
            assert!(parser_error_answer(untouched, ErrorShape::Seed).is_none());
        }
    }

    #[test]
    fn watchdog_times_headers_then_idleness() {
        let l = limits();
        let a = Arc::new(Activity::new());
        assert_eq!(a.expired(&l), None);
        // A new connection that sends nothing is held to the header timeout.
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(a.expired(&l), Some("header_timeout"));
        // A request in progress is never cut by the watchdog.
        let req = RequestGuard::enter(&a);
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(a.expired(&l), None);
        drop(req);
        // After an answer, silence is idleness: allowed up to the idle timeout.
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(a.expired(&l), None);
        // But a started request must finish its head within the header timeout.
        a.bytes_read();
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(a.expired(&l), Some("header_timeout"));
        let b = Arc::new(Activity::new());
        drop(RequestGuard::enter(&b));
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(b.expired(&l), Some("idle_timeout"));
    }
}
