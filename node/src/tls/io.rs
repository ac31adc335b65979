//! Connections that may or may not be TLS: the peer port's accept loop (which, while a cluster
//! switches to TLS, takes both) and the dialer members reach their peers with.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{handshake_failed, server_name, Tls};

/// A connection as a server sees it: plaintext, or TLS over it.
pub enum MaybeTls<S> {
    Plain(S),
    Tls(Box<tokio_rustls::server::TlsStream<S>>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// What the peer port knows of a connection: its addresses and whether the other end
/// presented a certificate the peer CA signed (a member, or the operator).
#[derive(Debug, Clone)]
pub struct PeerConnectInfo {
    pub tcp: tonic::transport::server::TcpConnectInfo,
    pub peer_certificate: bool,
}

impl tonic::transport::server::Connected for MaybeTls<TcpStream> {
    type ConnectInfo = PeerConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            MaybeTls::Plain(s) => PeerConnectInfo {
                tcp: s.connect_info(),
                peer_certificate: false,
            },
            MaybeTls::Tls(s) => PeerConnectInfo {
                tcp: s.get_ref().0.connect_info(),
                // The peer port's verifier refuses any connection without one.
                peer_certificate: s.get_ref().1.peer_certificates().is_some(),
            },
        }
    }
}

/// The first byte of a TLS connection (a handshake record).
const TLS_HANDSHAKE: u8 = 0x16;

/// How long a peer connection has to complete its TLS handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// The peer port's connections, TLS or plaintext as the member's [`super::PeerTlsMode`] takes
/// them, as the stream tonic's server serves. Handshakes run on their own tasks, so a slow or
/// hostile one holds up no other connection.
pub struct PeerIncoming;

impl PeerIncoming {
    pub fn spawn(
        listener: TcpListener,
        tls: Arc<Tls>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> ReceiverStream<io::Result<MaybeTls<TcpStream>>> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tx.closed() => return,
                };
                let (tcp, from) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "peer accept failed; retrying");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Raft RPCs are small and latency-bound.
                let _ = tcp.set_nodelay(true);
                let Some(config) = tls.peer_server() else {
                    if tx.send(Ok(MaybeTls::Plain(tcp))).await.is_err() {
                        return;
                    }
                    continue;
                };
                let plaintext_ok = tls.peer_mode().accepts_plaintext();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let accepted = tokio::time::timeout(HANDSHAKE_DEADLINE, async {
                        let mut first = [0u8; 1];
                        let n = tcp.peek(&mut first).await.map_err(|e| e.to_string())?;
                        if n == 1 && first[0] != TLS_HANDSHAKE {
                            return if plaintext_ok {
                                Ok(MaybeTls::Plain(tcp))
                            } else {
                                Err("a plaintext connection to a TLS-only peer port".to_string())
                            };
                        }
                        let tls = tokio_rustls::TlsAcceptor::from(config)
                            .accept(tcp)
                            .await
                            .map_err(|e| e.to_string())?;
                        Ok(MaybeTls::Tls(Box::new(tls)))
                    })
                    .await
                    .unwrap_or_else(|_| Err("handshake timed out".to_string()));
                    match accepted {
                        Ok(conn) => {
                            let _ = tx.send(Ok(conn)).await;
                        }
                        Err(why) => handshake_failed("peer", from, &why),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

/// Dials `authority` (`host:port`) and makes a TLS connection over it with `config`, checking
/// the server's certificate against `host`, all within `timeout`.
pub async fn dial_tls(
    authority: &str,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>> {
    let name = server_name(authority).map_err(io::Error::other)?;
    let dial = async {
        let tcp = TcpStream::connect(authority).await?;
        let _ = tcp.set_nodelay(true);
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
    };
    let stream = tokio::time::timeout(timeout, dial)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS connect timed out"))??;
    Ok(TokioIo::new(stream))
}

fn authority_of(uri: &http::Uri) -> io::Result<String> {
    uri.authority()
        .map(|a| a.as_str().to_string())
        .ok_or_else(|| io::Error::other(format!("address {uri} has no host")))
}

type Dialed = Pin<
    Box<
        dyn Future<Output = io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>> + Send,
    >,
>;

/// Where a dialer's TLS configuration comes from.
#[derive(Clone)]
pub enum DialConfig {
    /// This member's peer configuration, looked up at each connect, so a reconnection after a
    /// rotation presents the new certificate.
    Peer(Arc<Tls>),
    /// One fixed configuration (a client of the etcd port: concordctl's bench).
    Fixed(Arc<rustls::ClientConfig>),
}

/// Dials TLS connections for tonic's channels.
#[derive(Clone)]
pub struct TlsConnector {
    pub config: DialConfig,
    pub connect_timeout: Duration,
}

impl tower::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Dialed;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (source, timeout) = (self.config.clone(), self.connect_timeout);
        Box::pin(async move {
            let config = match source {
                DialConfig::Peer(tls) => tls
                    .peer_dialer()
                    .ok_or_else(|| io::Error::other("peer TLS is not configured"))?,
                DialConfig::Fixed(config) => config,
            };
            dial_tls(&authority_of(&uri)?, config, timeout).await
        })
    }
}
