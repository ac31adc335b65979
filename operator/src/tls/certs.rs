//! Certificates the operator mints itself (`mode: operator`): a cluster CA, and leaves signed
//! by it; and what an existing certificate says about itself, to decide when to renew. The
//! cryptography is rcgen's and x509-parser's.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// How long the cluster CA lives. Leaves are renewed under it; replacing the CA itself means
/// deleting its Secret (docs/security.md says how).
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("minting a certificate: {0}")]
    Mint(#[from] rcgen::Error),
    #[error("the CA Secret is not a CA this operator can sign with: {0}")]
    BadCa(String),
}

/// The cluster CA: its certificate, and the key only the operator holds.
#[derive(Clone)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("key_pem", &"<secret>").finish()
    }
}

/// A certificate and its private key, PEM.
#[derive(Clone, PartialEq)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("key_pem", &"<secret>")
            .finish()
    }
}

/// What a leaf certificate must say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub common_name: String,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// Server and client auth (a member); else client auth only.
    pub server: bool,
}

fn window(lifetime: Duration) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack backwards: clocks across nodes differ.
    (now - Duration::from_secs(300), now + lifetime)
}

impl Ca {
    pub fn generate(cluster: &str) -> Result<Ca, CertError> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.distinguished_name
            .push(DnType::CommonName, format!("{cluster} ConcordKV CA"));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        (p.not_before, p.not_after) = window(CA_LIFETIME);
        let key = KeyPair::generate()?;
        let cert = p.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    pub fn issue(&self, leaf: &Leaf, lifetime: Duration) -> Result<Issued, CertError> {
        let ca_key =
            KeyPair::from_pem(&self.key_pem).map_err(|e| CertError::BadCa(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)
            .map_err(|e| CertError::BadCa(e.to_string()))?;
        let mut p = CertificateParams::new(leaf.dns_names.clone())?;
        p.subject_alt_names
            .extend(leaf.ips.iter().map(|ip| SanType::IpAddress(*ip)));
        p.distinguished_name
            .push(DnType::CommonName, leaf.common_name.clone());
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = if leaf.server {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        (p.not_before, p.not_after) = window(lifetime);
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// What an existing certificate says, as far as renewal cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    pub common_name: String,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// Seconds since the epoch.
    pub not_after: i64,
}

/// Reads a PEM certificate; None when it is not one.
pub fn inspect(pem: &str) -> Option<Inspected> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut dns_names = Vec::new();
    let mut ips = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        ips.push(IpAddr::from(a));
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        ips.push(IpAddr::from(a));
                    }
                }
                _ => {}
            }
        }
    }
    Some(Inspected {
        common_name,
        dns_names,
        ips,
        not_after: cert.validity().not_after.timestamp(),
    })
}

pub fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Why a Secret's certificate must be (re)issued, or None when it may stay. Pure: `now` and
/// the inspected certificate in, so renewal is tested without waiting for time to pass.
/// `same_ca`: the Secret's `ca.crt` is the current CA's.
pub fn renewal_reason(
    existing: Option<&Inspected>,
    same_ca: bool,
    want: &Leaf,
    now: i64,
    renew_before: Duration,
) -> Option<&'static str> {
    let Some(have) = existing else {
        return Some("missing");
    };
    if !same_ca {
        return Some("signed by another CA");
    }
    let mut want_dns = want.dns_names.clone();
    let mut have_dns = have.dns_names.clone();
    want_dns.sort();
    have_dns.sort();
    let mut want_ips = want.ips.clone();
    let mut have_ips = have.ips.clone();
    want_ips.sort();
    have_ips.sort();
    if have.common_name != want.common_name || want_dns != have_dns || want_ips != have_ips {
        return Some("names changed");
    }
    if have.not_after - now <= renew_before.as_secs() as i64 {
        return Some("expiring");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member() -> Leaf {
        Leaf {
            common_name: "kv-0".into(),
            dns_names: vec!["kv-0.kv-peers.ns.svc".into(), "kv-peers.ns.svc".into()],
            ips: vec!["127.0.0.1".parse().expect("ip")],
            server: true,
        }
    }

    #[test]
    fn a_leaf_says_what_it_was_issued_for() {
        let ca = Ca::generate("kv").expect("ca");
        let issued = ca
            .issue(&member(), Duration::from_secs(86_400))
            .expect("leaf");
        let seen = inspect(&issued.cert_pem).expect("parses");
        assert_eq!(seen.common_name, "kv-0");
        assert_eq!(seen.dns_names.len(), 2);
        assert_eq!(seen.ips, member().ips);
        let left = seen.not_after - now_seconds();
        assert!((86_000..=86_400).contains(&left), "{left}");
        let day = Duration::from_secs(86_400);
        let now = now_seconds();
        assert_eq!(
            renewal_reason(Some(&seen), true, &member(), now, day / 2),
            None
        );
        assert_eq!(
            renewal_reason(Some(&seen), true, &member(), now + 86_400 / 2 + 1, day / 2),
            Some("expiring")
        );
        assert_eq!(
            renewal_reason(Some(&seen), false, &member(), now, day / 2),
            Some("signed by another CA")
        );
        let mut moved = member();
        moved.dns_names.pop();
        assert_eq!(
            renewal_reason(Some(&seen), true, &moved, now, day / 2),
            Some("names changed")
        );
        assert_eq!(
            renewal_reason(None, true, &member(), now, day / 2),
            Some("missing")
        );
        assert!(inspect("not a certificate").is_none());
    }

    #[test]
    fn a_ca_read_back_from_its_secret_signs() {
        let ca = Ca::generate("kv").expect("ca");
        let again = Ca {
            cert_pem: ca.cert_pem.clone(),
            key_pem: ca.key_pem.clone(),
        };
        assert!(again.issue(&member(), Duration::from_secs(60)).is_ok());
        let broken = Ca {
            cert_pem: ca.cert_pem.clone(),
            key_pem: "junk".into(),
        };
        assert!(matches!(
            broken.issue(&member(), Duration::from_secs(60)),
            Err(CertError::BadCa(_))
        ));
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }
}
