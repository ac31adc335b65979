//! Client of the nodes' gRPC Admin service. Behind a trait so the reconciler can be tested
//! with an in-memory cluster; the real one talks to pods (or local processes).

use std::collections::HashMap;
use std::time::Duration;

use concord_proto::admin_client::AdminClient;
use concord_proto::errors::{self, ErrorReason};
use concord_proto::{
    AddLearnerRequest, AdminResult, InitRequest, MemberSpec, MembersRequest, MembersResponse,
    NodeStatusRequest, NodeStatusResponse, PromoteRequest, RemoveMemberRequest,
    TransferLeaderRequest,
};
use std::sync::Arc;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

#[derive(Debug, thiserror::Error)]
pub enum AdminCallError {
    #[error("{addr} unreachable: {message}")]
    Unreachable { addr: String, message: String },
    /// The node answered with a refusal, e.g. busy, refused, no leader: `reason` says which.
    #[error("{addr} refused ({}): {message}", reason.as_str_name())]
    Refused {
        addr: String,
        reason: ErrorReason,
        message: String,
    },
    /// The stream the operator was sending broke off on its side (its source failed).
    #[error("the stream sent to the member broke off: {message}")]
    Source { message: String },
}

/// The admin operations the operator uses; `addr` is a node's `host:port` peer endpoint.
#[tonic::async_trait]
pub trait NodeAdmin: Send + Sync {
    async fn node_status(&self, addr: &str) -> Result<NodeStatusResponse, AdminCallError>;
    async fn members(&self, addr: &str) -> Result<MembersResponse, AdminCallError>;
    async fn init(&self, addr: &str) -> Result<AdminResult, AdminCallError>;
    async fn add_learner(
        &self,
        addr: &str,
        member: MemberSpec,
    ) -> Result<AdminResult, AdminCallError>;
    async fn promote(&self, addr: &str, id: u64) -> Result<AdminResult, AdminCallError>;
    async fn remove(&self, addr: &str, id: u64) -> Result<AdminResult, AdminCallError>;
    async fn transfer_leader(&self, addr: &str, to: u64) -> Result<AdminResult, AdminCallError>;
    /// A backup of the member's whole state, as it streams (see `backup`).
    async fn snapshot(&self, addr: &str) -> Result<ByteStream, AdminCallError>;
    /// Starts a new cluster on the uninitialized member at `addr` from the backup `chunks`
    /// carry; a chunk that is an error ends the stream short (the member then refuses it).
    async fn restore(&self, addr: &str, chunks: ByteStream) -> Result<AdminResult, AdminCallError>;
    /// The same client, presenting `tls` to one cluster's members (None: plaintext).
    fn scoped(&self, tls: Option<AdminTls>) -> Arc<dyn NodeAdmin>;
}

/// Bytes as a member streams them.
pub type ByteStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Vec<u8>, AdminCallError>> + Send>>;

/// What the operator presents to a cluster's admin API, and what it expects back: a member
/// certificate from `ca_pem` naming `domain` (members are reached by IP, so the name checked
/// is one every member's certificate carries).
#[derive(Clone, PartialEq)]
pub struct AdminTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub domain: String,
}

impl std::fmt::Debug for AdminTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminTls")
            .field("domain", &self.domain)
            .field("key_pem", &"<secret>")
            .finish()
    }
}

impl AdminTls {
    /// Names this identity in the channel cache: a renewed certificate gets new channels.
    fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for part in [&self.ca_pem, &self.cert_pem, &self.domain] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// gRPC admin client with one lazily connected channel per address (and identity).
#[derive(Clone)]
pub struct GrpcAdmin {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    tls: Option<Arc<AdminTls>>,
    /// Status reads answer fast or not at all; changes may wait for a leader to move.
    read_timeout: Duration,
    change_timeout: Duration,
    /// A restore that moves no byte for this long is given up (see `restore`).
    restore_stall: Duration,
}

impl Default for GrpcAdmin {
    fn default() -> Self {
        GrpcAdmin {
            channels: Arc::new(Mutex::new(HashMap::new())),
            tls: None,
            read_timeout: Duration::from_secs(3),
            change_timeout: Duration::from_secs(30),
            restore_stall: Duration::from_secs(60),
        }
    }
}

/// After the last chunk, a member checks and installs the whole backup before it answers: it
/// gets the stall allowance plus a second per this many bytes.
const INSTALL_BYTES_PER_SECOND: u64 = 16 * 1024 * 1024;

impl GrpcAdmin {
    /// The same client with another stall allowance for restores.
    pub fn with_restore_stall(mut self, stall: Duration) -> GrpcAdmin {
        self.restore_stall = stall;
        self
    }

    fn key(&self, addr: &str) -> String {
        match &self.tls {
            Some(t) => format!("{addr} tls {}", t.fingerprint()),
            None => addr.to_string(),
        }
    }

    fn client(&self, addr: &str) -> Result<AdminClient<Channel>, AdminCallError> {
        let key = self.key(addr);
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get(&key) {
            return Ok(AdminClient::new(c.clone()));
        }
        let bad = |e: &dyn std::fmt::Display| AdminCallError::Unreachable {
            addr: addr.into(),
            message: format!("bad address or TLS settings: {e}"),
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| bad(&e))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        if let Some(t) = &self.tls {
            let config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&t.ca_pem))
                .identity(Identity::from_pem(&t.cert_pem, &t.key_pem))
                .domain_name(t.domain.clone());
            endpoint = endpoint.tls_config(config).map_err(|e| bad(&e))?;
        }
        let channel = endpoint.connect_lazy();
        channels.insert(key, channel.clone());
        Ok(AdminClient::new(channel))
    }

    /// Pods get new IPs when they restart: forget the channel of an address that stopped
    /// answering, so the cache does not grow with every restart.
    fn forget_if_unreachable<T>(
        &self,
        addr: &str,
        r: Result<T, AdminCallError>,
    ) -> Result<T, AdminCallError> {
        if matches!(r, Err(AdminCallError::Unreachable { .. })) {
            self.channels.lock().remove(&self.key(addr));
        }
        r
    }
}

/// How far a restore's stream has got: when a chunk last went out, and when the last did.
struct Progress {
    last: std::time::Instant,
    ended: Option<std::time::Instant>,
    bytes: u64,
}

/// A backup's chunks as `Restore` sends them, up to the first error, noting its progress.
struct UntilError(Option<ByteStream>, Arc<Mutex<Progress>>);

impl futures::Stream for UntilError {
    type Item = concord_proto::BackupChunk;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let Some(inner) = self.0.as_mut() else {
            return Poll::Ready(None);
        };
        match inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(data))) => {
                let mut p = self.1.lock();
                p.last = std::time::Instant::now();
                p.bytes += data.len() as u64;
                Poll::Ready(Some(concord_proto::BackupChunk {
                    data,
                    remaining_bytes: 0,
                }))
            }
            Poll::Ready(_) => {
                self.0 = None;
                self.1.lock().ended = Some(std::time::Instant::now());
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Why a restore in `progress` counts as hung, if it does: no chunk moved for `stall` while
/// sending, or no answer within the install allowance after the last.
fn restore_stalled(progress: &Progress, stall: Duration) -> Option<String> {
    match progress.ended {
        None if progress.last.elapsed() > stall => Some(format!(
            "no part of the backup moved for {}s ({} bytes sent)",
            stall.as_secs_f32(),
            progress.bytes
        )),
        None => None,
        Some(end) => {
            let window = stall + Duration::from_secs(progress.bytes / INSTALL_BYTES_PER_SECOND);
            (end.elapsed() > window).then(|| {
                format!(
                    "no answer within {}s of the whole backup ({} bytes) being sent",
                    window.as_secs_f32(),
                    progress.bytes
                )
            })
        }
    }
}

/// A status with a ConcordKV reason is the node's answer; any other came from the transport
/// (connection refused or reset, name not resolved, deadline) and means it was not reached.
fn call_error(addr: &str, s: tonic::Status) -> AdminCallError {
    match errors::reason(&s) {
        Some(reason) => AdminCallError::Refused {
            addr: addr.into(),
            reason,
            message: s.message().into(),
        },
        None => AdminCallError::Unreachable {
            addr: addr.into(),
            message: s.message().into(),
        },
    }
}

fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// Awaits one call for at most `timeout`: a node that accepted the connection and then hangs
/// must not hang the reconcile.
async fn bounded<T>(
    addr: &str,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, AdminCallError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r.map(|r| r.into_inner()).map_err(|e| call_error(addr, e)),
        Err(_) => Err(AdminCallError::Unreachable {
            addr: addr.into(),
            message: format!("no answer within {timeout:?}"),
        }),
    }
}

#[tonic::async_trait]
impl NodeAdmin for GrpcAdmin {
    async fn node_status(&self, addr: &str) -> Result<NodeStatusResponse, AdminCallError> {
        let (mut c, t) = (self.client(addr)?, self.read_timeout);
        let r = bounded(addr, t, c.node_status(request(NodeStatusRequest {}, t))).await;
        self.forget_if_unreachable(addr, r)
    }
    async fn members(&self, addr: &str) -> Result<MembersResponse, AdminCallError> {
        let (mut c, t) = (self.client(addr)?, self.read_timeout);
        let r = bounded(addr, t, c.members(request(MembersRequest {}, t))).await;
        self.forget_if_unreachable(addr, r)
    }
    async fn init(&self, addr: &str) -> Result<AdminResult, AdminCallError> {
        let (mut c, t) = (self.client(addr)?, self.change_timeout);
        let r = bounded(addr, t, c.init(request(InitRequest { members: vec![] }, t))).await;
        self.forget_if_unreachable(addr, r)
    }
    async fn add_learner(
        &self,
        addr: &str,
        member: MemberSpec,
    ) -> Result<AdminResult, AdminCallError> {
        let (mut c, t) = (self.client(addr)?, self.change_timeout);
        let req = AddLearnerRequest {
            member: Some(member),
            no_wait: false,
        };
        let r = bounded(addr, t, c.add_learner(request(req, t))).await;
        self.forget_if_unreachable(addr, r)
    }
    async fn promote(&self, addr: &str, id: u64) -> Result<AdminResult, AdminCallError> {
        let (mut c, t) = (self.client(addr)?, self.change_timeout);
        let r = bounded(addr, t, c.promote(request(PromoteRequest { id }, t))).await;
        self.forget_if_unreachable(addr, r)
    }
    async fn remove(&self, addr: &str, id: u64) -> Result<AdminResult, AdminCallError> {
        let (mut c, t) = (self.client(addr)?, self.change_timeout);
        let req = RemoveMemberRequest { id, force: false };
        let r = bounded(addr, t, c.remove_member(request(req, t))).await;
        self.forget_if_unreachable(addr, r)
    }
    async fn transfer_leader(&self, addr: &str, to: u64) -> Result<AdminResult, AdminCallError> {
        let (mut c, t) = (self.client(addr)?, self.change_timeout);
        bounded(
            addr,
            t,
            c.transfer_leader(request(TransferLeaderRequest { to }, t)),
        )
        .await
    }
    async fn snapshot(&self, addr: &str) -> Result<ByteStream, AdminCallError> {
        let mut c = self.client(addr)?;
        // No deadline on the stream itself (a large store takes a while); its start is bounded.
        let stream = bounded(
            addr,
            self.change_timeout,
            c.snapshot(tonic::Request::new(concord_proto::BackupRequest {})),
        )
        .await;
        let stream = self.forget_if_unreachable(addr, stream)?;
        let addr = addr.to_string();
        Ok(Box::pin(futures::StreamExt::map(stream, move |r| {
            r.map(|chunk| chunk.data).map_err(|s| call_error(&addr, s))
        })))
    }
    async fn restore(&self, addr: &str, chunks: ByteStream) -> Result<AdminResult, AdminCallError> {
        let mut c = self.client(addr)?;
        let progress = Arc::new(Mutex::new(Progress {
            last: std::time::Instant::now(),
            ended: None,
            bytes: 0,
        }));
        // Up to the first error: the member then sees a stream cut short and refuses it.
        let chunks = UntilError(Some(chunks), progress.clone());
        // No overall deadline (a large backup takes as long as it takes), but a member that
        // stops taking chunks, or never answers after the last, must not hold the reconcile.
        let call = c.restore(tonic::Request::new(chunks));
        tokio::pin!(call);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let r = loop {
            tokio::select! {
                r = &mut call => {
                    break r.map(|r| r.into_inner()).map_err(|s| call_error(addr, s));
                }
                _ = tick.tick() => {
                    if let Some(message) = restore_stalled(&progress.lock(), self.restore_stall) {
                        break Err(AdminCallError::Unreachable { addr: addr.into(), message });
                    }
                }
            }
        };
        self.forget_if_unreachable(addr, r)
    }
    fn scoped(&self, tls: Option<AdminTls>) -> Arc<dyn NodeAdmin> {
        Arc::new(GrpcAdmin {
            tls: tls.map(Arc::new),
            ..self.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_address_nobody_listens_on_is_unreachable_and_forgotten() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let admin = GrpcAdmin::default();
        let addr = format!("127.0.0.1:{port}");
        let e = admin.node_status(&addr).await.expect_err("nothing listens");
        assert!(matches!(e, AdminCallError::Unreachable { .. }), "{e:?}");
        assert!(admin.channels.lock().is_empty());
    }

    /// A member that accepts the connection and then takes nothing does not hold a restore
    /// (and with it the cluster's reconcile) for ever.
    #[tokio::test]
    async fn a_restore_into_a_member_that_stops_taking_chunks_is_given_up() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        // Accepts, and never says a word.
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                conns.push(c);
            }
        });
        let admin = GrpcAdmin::default().with_restore_stall(Duration::from_millis(500));
        let chunks: ByteStream = Box::pin(futures::stream::iter(
            (0..64).map(|_| Ok(vec![7u8; 1 << 20])),
        ));
        let started = std::time::Instant::now();
        let e = admin
            .restore(&addr, chunks)
            .await
            .expect_err("a hung member");
        assert!(
            matches!(&e, AdminCallError::Unreachable { message, .. } if message.contains("moved")),
            "{e:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        held.abort();
    }

    #[test]
    fn after_the_last_chunk_a_member_gets_time_by_the_backups_size() {
        let stall = Duration::from_secs(1);
        let ago = |s: u64| std::time::Instant::now() - Duration::from_secs(s);
        let sending = Progress {
            last: ago(0),
            ended: None,
            bytes: 10,
        };
        assert_eq!(restore_stalled(&sending, stall), None);
        let stuck = Progress {
            last: ago(2),
            ended: None,
            bytes: 10,
        };
        assert!(restore_stalled(&stuck, stall).is_some());
        // 160 MiB sent 5 s ago: 1 s + 10 s allowed.
        let big = Progress {
            last: ago(5),
            ended: Some(ago(5)),
            bytes: 160 << 20,
        };
        assert_eq!(restore_stalled(&big, stall), None);
        let silent = Progress {
            last: ago(12),
            ended: Some(ago(12)),
            bytes: 160 << 20,
        };
        assert!(restore_stalled(&silent, stall).is_some_and(|m| m.contains("no answer")));
    }
}
