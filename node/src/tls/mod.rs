//! TLS on the three ports, with the certificate settings etcd users know (`--cert-file`,
//! `--peer-cert-file`, ...): the client ports (the seed HTTP API and the etcd API) and the peer
//! port (Raft and the admin API), each with its own certificate, key and trusted CA.
//!
//! - Peers always authenticate each other when peer TLS is on: a member's server asks every
//!   peer for a certificate chaining to the peer CA (and, if set, with the allowed CN or DNS
//!   name), and its client presents its own when it dials.
//! - Files are re-read when they change (cert-manager and the kubelet rewrite Secrets in
//!   place): a new connection gets the new certificate, connections already open keep theirs,
//!   so nothing in flight is dropped. A file that does not load leaves the old one in use,
//!   logged and counted.
//! - The peer port can accept TLS and plaintext at once, for a rolling switch of a live
//!   cluster (`PeerTlsMode`; docs/security.md has the steps).

mod files;
mod io;
mod verify;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use files::{describe, CertFiles, CertInfo, Material};
pub use io::{dial_tls, DialConfig, MaybeTls, PeerConnectInfo, PeerIncoming, TlsConnector};
pub use verify::ClientCert;

use crate::telemetry::metrics::metrics;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path}: {problem}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// How the peer port treats TLS. With peer certificates the default is `On`; `Accept` and
/// `Prefer` are the two middle steps of switching a live cluster from plaintext to TLS (every
/// member to `Accept`, then every member to `Prefer`, then every member to `On`; the reverse to
/// go back), so that at each step every member can still reach every other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeerTlsMode {
    /// Plaintext only.
    #[default]
    Off,
    /// Accept TLS and plaintext; dial plaintext.
    Accept,
    /// Accept TLS and plaintext; dial TLS.
    Prefer,
    /// TLS only.
    On,
}

impl PeerTlsMode {
    pub fn parse(s: &str) -> Option<PeerTlsMode> {
        Some(match s {
            "off" => PeerTlsMode::Off,
            "accept" => PeerTlsMode::Accept,
            "prefer" => PeerTlsMode::Prefer,
            "on" => PeerTlsMode::On,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            PeerTlsMode::Off => "off",
            PeerTlsMode::Accept => "accept",
            PeerTlsMode::Prefer => "prefer",
            PeerTlsMode::On => "on",
        }
    }

    /// Whether this member dials its peers with TLS.
    pub fn dials_tls(self) -> bool {
        matches!(self, PeerTlsMode::Prefer | PeerTlsMode::On)
    }

    /// Whether the peer port still takes plaintext connections.
    pub fn accepts_plaintext(self) -> bool {
        !matches!(self, PeerTlsMode::On)
    }
}

/// TLS settings as configured (docs/configuration.md, TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Certificate, key and (for client certificates) CA of the client ports.
    pub client: Option<CertFiles>,
    /// Client ports ask for a certificate chaining to `client.trusted_ca`.
    pub client_cert_auth: bool,
    /// With `client_cert_auth`, `/livez`, `/readyz` and `/metrics` on the HTTP API port still
    /// answer a client without a certificate (kubelet probes, Prometheus).
    pub probes_without_client_cert: bool,
    /// Certificate, key and CA of the peer port (the CA is required: peers authenticate).
    pub peer: Option<CertFiles>,
    pub peer_mode: PeerTlsMode,
    /// A peer's certificate must carry this common name...
    pub peer_allowed_cn: Option<String>,
    /// ...or this DNS name among its subject alternative names.
    pub peer_allowed_hostname: Option<String>,
    /// How often the files are checked for changes.
    pub reload_interval: Duration,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            client: None,
            client_cert_auth: false,
            probes_without_client_cert: true,
            peer: None,
            peer_mode: PeerTlsMode::Off,
            peer_allowed_cn: None,
            peer_allowed_hostname: None,
            reload_interval: Duration::from_secs(10),
        }
    }
}

/// The TLS configurations the client ports hand to each new connection.
pub struct ClientPortConfigs {
    /// The seed HTTP API: a client certificate is asked for but (with probes reachable without
    /// one) checked per request, so probes and metrics still answer.
    pub http: Arc<ServerConfig>,
    /// The etcd API: with `client_cert_auth`, no handshake without a certificate.
    pub etcd: Arc<ServerConfig>,
}

/// The TLS configurations of the peer port and of this member's dialer.
pub struct PeerConfigs {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

/// Which port a client connection came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientPort {
    Http,
    Etcd,
}

impl ClientPort {
    fn label(self) -> &'static str {
        match self {
            ClientPort::Http => "api",
            ClientPort::Etcd => "etcd",
        }
    }
}

/// One set of certificate files and what was built from them, rebuilt when they change.
pub struct Reloading<T> {
    label: &'static str,
    files: CertFiles,
    build: fn(&Material, &TlsSettings) -> Result<T, TlsError>,
    settings: TlsSettings,
    current: RwLock<Arc<T>>,
    /// The files' contents the current value was built from.
    loaded: Mutex<Vec<Vec<u8>>>,
}

impl<T> Reloading<T> {
    fn new(
        label: &'static str,
        files: CertFiles,
        settings: &TlsSettings,
        build: fn(&Material, &TlsSettings) -> Result<T, TlsError>,
    ) -> Result<Reloading<T>, TlsError> {
        let (bytes, material) = files.load()?;
        let built = build(&material, settings)?;
        set_expiry(label, &material);
        Ok(Reloading {
            label,
            files,
            build,
            settings: settings.clone(),
            current: RwLock::new(Arc::new(built)),
            loaded: Mutex::new(bytes),
        })
    }

    pub fn current(&self) -> Arc<T> {
        self.current.read().clone()
    }

    /// Re-reads the files; rebuilds if any changed. A file that cannot be read or does not
    /// load leaves the current configuration in place.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let bytes = self.files.read_all()?;
        if *self.loaded.lock() == bytes {
            return Ok(false);
        }
        let material = self.files.parse(&bytes)?;
        let built = (self.build)(&material, &self.settings)?;
        *self.current.write() = Arc::new(built);
        *self.loaded.lock() = bytes;
        set_expiry(self.label, &material);
        tracing::info!(certificate = self.label, files = %self.files, "reloaded TLS certificate");
        Ok(true)
    }
}

fn set_expiry(label: &str, material: &Material) {
    metrics()
        .cert_expiry_timestamp_seconds
        .with_label_values(&[label])
        .set(material.not_after);
}

/// This member's TLS: what each port accepts and how it dials its peers.
pub struct Tls {
    pub settings: TlsSettings,
    pub client: Option<Reloading<ClientPortConfigs>>,
    pub peer: Option<Reloading<PeerConfigs>>,
}

impl Tls {
    /// No TLS anywhere.
    pub fn disabled() -> Tls {
        Tls {
            settings: TlsSettings::default(),
            client: None,
            peer: None,
        }
    }

    /// Loads every configured file; refuses settings that cannot work.
    pub fn load(settings: &TlsSettings) -> Result<Tls, TlsError> {
        let client = settings
            .client
            .clone()
            .map(|f| Reloading::new("client", f, settings, build_client_ports))
            .transpose()?;
        let peer = match (&settings.peer, settings.peer_mode) {
            (_, PeerTlsMode::Off) | (None, _) => None,
            (Some(f), _) => Some(Reloading::new("peer", f.clone(), settings, build_peer)?),
        };
        Ok(Tls {
            settings: settings.clone(),
            client,
            peer,
        })
    }

    pub fn peer_mode(&self) -> PeerTlsMode {
        if self.peer.is_some() {
            self.settings.peer_mode
        } else {
            PeerTlsMode::Off
        }
    }

    /// The configuration a new connection to a client port gets, if that port speaks TLS.
    pub fn client_port(&self, port: ClientPort) -> Option<Acceptor> {
        let configs = self.client.as_ref()?.current();
        let config = match port {
            ClientPort::Http => configs.http.clone(),
            ClientPort::Etcd => configs.etcd.clone(),
        };
        Some(Acceptor {
            config,
            port,
            cert_required: self.settings.client_cert_auth,
            probes_open: self.settings.probes_without_client_cert,
        })
    }

    /// The peer port's server configuration, if it speaks TLS.
    pub fn peer_server(&self) -> Option<Arc<ServerConfig>> {
        Some(self.peer.as_ref()?.current().server.clone())
    }

    /// The configuration this member dials peers with, if it dials TLS.
    pub fn peer_dialer(&self) -> Option<Arc<ClientConfig>> {
        if !self.peer_mode().dials_tls() {
            return None;
        }
        Some(self.peer.as_ref()?.current().client.clone())
    }

    /// Re-reads changed files every `reload_interval` until `stop`.
    pub async fn reload_until(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.settings.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let client = self.client.as_ref().map(|r| (r.label, r.reload()));
            let peer = self.peer.as_ref().map(|r| (r.label, r.reload()));
            for (label, result) in client.into_iter().chain(peer) {
                if let Err(e) = result {
                    metrics()
                        .tls_reload_failures
                        .with_label_values(&[label])
                        .inc();
                    tracing::warn!(certificate = label, error = %e, "could not reload a TLS certificate; the one loaded before stays in use");
                }
            }
        }
    }
}

/// A client port's TLS for one new connection.
#[derive(Clone)]
pub struct Acceptor {
    config: Arc<ServerConfig>,
    port: ClientPort,
    /// Requests need a verified client certificate...
    pub cert_required: bool,
    /// ...but for probes and metrics.
    pub probes_open: bool,
}

impl Acceptor {
    /// The TLS handshake, within `deadline`; a failure is counted and logged (never its
    /// secrets: rustls errors name what was wrong, not key material).
    pub async fn accept<S>(
        &self,
        stream: S,
        peer: std::net::SocketAddr,
        deadline: Duration,
    ) -> Option<(tokio_rustls::server::TlsStream<S>, Option<ClientCert>)>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.clone());
        match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => {
                let cert = ClientCert::of(tls.get_ref().1.peer_certificates());
                Some((tls, cert))
            }
            Ok(Err(e)) => {
                handshake_failed(self.port.label(), peer, &e.to_string());
                None
            }
            Err(_) => {
                handshake_failed(self.port.label(), peer, "handshake timed out");
                None
            }
        }
    }

    /// Whether a request for `path` from a connection with `cert` is let through to the API.
    pub fn admits(&self, path: &str, cert: Option<&ClientCert>) -> bool {
        !self.cert_required
            || cert.is_some()
            || (self.probes_open && matches!(path, "/livez" | "/readyz" | "/metrics"))
    }
}

/// Counts and logs a refused handshake on `port` ("api", "etcd", "peer").
pub fn handshake_failed(port: &str, from: std::net::SocketAddr, why: &str) {
    metrics()
        .tls_handshake_failures
        .with_label_values(&[port])
        .inc();
    tracing::warn!(port, %from, reason = why, "TLS handshake refused");
}

/// A client's TLS configuration for gRPC (HTTP/2): the servers' CA bundle and, if given, a
/// client certificate and key, all PEM.
pub fn grpc_client_config(
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> Result<Arc<ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::PrivateKeyDer;
    let ca = CertificateDer::pem_slice_iter(ca_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("CA bundle: {e}"))?;
    let roots = roots(&ca).map_err(|e| e.to_string())?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client certificate: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("client key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

fn roots(certs: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c.clone())?;
    }
    Ok(roots)
}

fn build_client_ports(m: &Material, s: &TlsSettings) -> Result<ClientPortConfigs, TlsError> {
    let server = |mandatory: bool| -> Result<Arc<ServerConfig>, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let builder = match (&m.trusted_ca, s.client_cert_auth) {
            (Some(ca), true) => {
                let v =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider());
                let v = if mandatory {
                    v.build()?
                } else {
                    v.allow_unauthenticated().build()?
                };
                builder.with_client_cert_verifier(v)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(m.certs.clone(), m.key.clone_key())?;
        config.alpn_protocols = alpn();
        Ok(Arc::new(config))
    };
    Ok(ClientPortConfigs {
        http: server(!s.probes_without_client_cert)?,
        etcd: server(true)?,
    })
}

fn build_peer(m: &Material, s: &TlsSettings) -> Result<PeerConfigs, TlsError> {
    let Some(ca) = &m.trusted_ca else {
        // Checked when the settings are resolved; kept here so no path builds a peer port
        // that takes any certificate.
        return Err(TlsError::Rustls(rustls::Error::General(
            "peer TLS needs a trusted CA (--peer-trusted-ca-file)".into(),
        )));
    };
    let roots = Arc::new(roots(ca)?);
    let chain = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider()).build()?;
    let verifier = Arc::new(verify::AllowedPeers::new(
        chain,
        s.peer_allowed_cn.clone(),
        s.peer_allowed_hostname.clone(),
    ));
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(m.certs.clone(), m.key.clone_key())?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(m.certs.clone(), m.key.clone_key())?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(PeerConfigs {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

/// The name a peer's certificate is checked against when dialing `host:port`: its host, a
/// DNS name or an IP address.
pub fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = match addr.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    ServerName::try_from(host.to_string()).map_err(|e| format!("peer address {addr:?}: {e}"))
}
