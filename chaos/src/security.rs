//! A chaos run with TLS on every port and auth on: certificates minted for the run (one CA; the
//! members' certificate valid for every address they use; a client certificate whose common
//! name is `root`), and the clients that present them. Every client then acts as root through
//! the auth checks, so the run exercises TLS handshakes and permission checks under the faults.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The run's certificates, as files for the members and PEM for the clients.
pub struct Security {
    pub dir: PathBuf,
    ca: String,
    client_cert: String,
    client_key: String,
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    cn: &str,
    ips: &[String],
) -> anyhow::Result<(String, String)> {
    let mut p = CertificateParams::new(vec!["localhost".to_string()])?;
    for ip in ips {
        p.subject_alt_names
            .push(SanType::IpAddress(ip.parse().context("an address")?));
    }
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl Security {
    /// Mints the certificates under `dir` for members at `ips`.
    pub fn mint(dir: &Path, ips: &[String]) -> anyhow::Result<Arc<Security>> {
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "chaos CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca_pem = ca.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(ca, ca_key);
        let (node_cert, node_key) = leaf(&issuer, "member", ips)?;
        let (client_cert, client_key) = leaf(&issuer, "root", &[])?;
        std::fs::create_dir_all(dir)?;
        for (name, text) in [
            ("ca.crt", &ca_pem),
            ("node.crt", &node_cert),
            ("node.key", &node_key),
        ] {
            std::fs::write(dir.join(name), text)?;
        }
        Ok(Arc::new(Security {
            dir: dir.to_path_buf(),
            ca: ca_pem,
            client_cert,
            client_key,
        }))
    }

    /// The members' `tls:` section: every port TLS, client certificates required.
    pub fn yaml(&self) -> String {
        let f = |name: &str| self.dir.join(name).display().to_string();
        format!(
            "tls:\n  certFile: \"{c}\"\n  keyFile: \"{k}\"\n  trustedCaFile: \"{a}\"\n  clientCertAuth: true\n  peerCertFile: \"{c}\"\n  peerKeyFile: \"{k}\"\n  peerTrustedCaFile: \"{a}\"\n",
            c = f("node.crt"),
            k = f("node.key"),
            a = f("ca.crt"),
        )
    }
}

/// How the run's clients reach the members: plaintext, or TLS with the root certificate.
#[derive(Clone, Default)]
pub struct Clients {
    pub security: Option<Arc<Security>>,
}

impl Clients {
    pub fn scheme(&self) -> &'static str {
        if self.security.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// An HTTP client for the seed API.
    pub fn http(&self, timeout: Duration) -> anyhow::Result<reqwest::Client> {
        let mut b = reqwest::Client::builder().timeout(timeout);
        if let Some(s) = &self.security {
            b = b
                .use_rustls_tls()
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(s.ca.as_bytes())?)
                .identity(reqwest::Identity::from_pem(
                    format!("{}{}", s.client_cert, s.client_key).as_bytes(),
                )?);
        }
        Ok(b.build()?)
    }

    /// A gRPC endpoint for a member's etcd port (`host:port`).
    pub fn endpoint(&self, addr: &str) -> anyhow::Result<tonic::transport::Endpoint> {
        let e = tonic::transport::Endpoint::from_shared(format!("{}://{addr}", self.scheme()))?;
        Ok(match &self.security {
            None => e,
            Some(s) => e.tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&s.ca))
                    .identity(tonic::transport::Identity::from_pem(
                        &s.client_cert,
                        &s.client_key,
                    )),
            )?,
        })
    }
}
