//! Who is on the other end of a connection: the peer check beyond the CA (etcd's
//! `--peer-cert-allowed-cn` / `--peer-cert-allowed-hostname`) and a client's certificate names.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::files::describe;

/// The names on a verified client certificate (the user name, once authentication exists, is
/// its common name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub common_name: Option<String>,
    pub dns_names: Vec<String>,
}

impl ClientCert {
    /// From the chain a handshake verified (none: the client sent no certificate).
    pub fn of(chain: Option<&[CertificateDer<'_>]>) -> Option<ClientCert> {
        let info = describe(chain?.first()?).ok()?;
        Some(ClientCert {
            common_name: info.common_name,
            dns_names: info.dns_names,
        })
    }
}

/// A peer's certificate must chain to the peer CA (the inner verifier) and, when names are
/// configured, carry the allowed common name or DNS name.
#[derive(Debug)]
pub struct AllowedPeers {
    chain: Arc<dyn ClientCertVerifier>,
    cn: Option<String>,
    hostname: Option<String>,
}

impl AllowedPeers {
    pub fn new(
        chain: Arc<dyn ClientCertVerifier>,
        cn: Option<String>,
        hostname: Option<String>,
    ) -> AllowedPeers {
        AllowedPeers {
            chain,
            cn,
            hostname,
        }
    }

    /// Whether the names allow this certificate (any certificate when none is configured).
    fn allows(&self, cert: &CertificateDer<'_>) -> Result<(), String> {
        if self.cn.is_none() && self.hostname.is_none() {
            return Ok(());
        }
        let info = describe(cert)?;
        let cn_ok = self
            .cn
            .as_ref()
            .is_some_and(|cn| info.common_name.as_deref() == Some(cn.as_str()));
        let host_ok = self
            .hostname
            .as_ref()
            .is_some_and(|h| info.dns_names.iter().any(|d| d.eq_ignore_ascii_case(h)));
        if cn_ok || host_ok {
            Ok(())
        } else {
            Err(format!(
                "peer certificate (CN {:?}, DNS names {:?}) matches neither the allowed CN {:?} nor the allowed hostname {:?}",
                info.common_name, info.dns_names, self.cn, self.hostname
            ))
        }
    }
}

impl ClientCertVerifier for AllowedPeers {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        self.allows(end_entity).map_err(rustls::Error::General)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}
