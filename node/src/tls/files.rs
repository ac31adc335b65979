//! Certificate, key and CA files in PEM, as Kubernetes Secrets and cert-manager write them.

use std::fmt;
use std::path::PathBuf;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsError;

/// Where one certificate, its key and (optionally) the CA bundle that certificates presented
/// to it must chain to are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub trusted_ca: Option<PathBuf>,
}

impl fmt::Display for CertFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cert.display())
    }
}

/// What the files hold, parsed.
pub struct Material {
    /// The certificate and the chain after it.
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub trusted_ca: Option<Vec<CertificateDer<'static>>>,
    /// When the certificate expires, seconds since the Unix epoch.
    pub not_after: i64,
}

impl CertFiles {
    fn paths(&self) -> Vec<(&'static str, &PathBuf)> {
        let mut paths = vec![("certificate", &self.cert), ("key", &self.key)];
        if let Some(ca) = &self.trusted_ca {
            paths.push(("trusted CA", ca));
        }
        paths
    }

    /// Every file's bytes, in the order of [`CertFiles::paths`].
    pub fn read_all(&self) -> Result<Vec<Vec<u8>>, TlsError> {
        self.paths()
            .into_iter()
            .map(|(what, path)| {
                std::fs::read(path).map_err(|source| TlsError::Read {
                    what,
                    path: path.clone(),
                    source,
                })
            })
            .collect()
    }

    pub fn load(&self) -> Result<(Vec<Vec<u8>>, Material), TlsError> {
        let bytes = self.read_all()?;
        let material = self.parse(&bytes)?;
        Ok((bytes, material))
    }

    /// Parses what [`CertFiles::read_all`] read.
    pub fn parse(&self, bytes: &[Vec<u8>]) -> Result<Material, TlsError> {
        let problem = |what: &'static str, path: &PathBuf, problem: String| TlsError::Pem {
            what,
            path: path.clone(),
            problem,
        };
        let certs = |what: &'static str, path: &PathBuf, pem: &[u8]| {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| problem(what, path, format!("not PEM certificates ({e})")))?;
            if certs.is_empty() {
                return Err(problem(what, path, "holds no certificate".into()));
            }
            Ok(certs)
        };
        let [cert_pem, key_pem, rest @ ..] = bytes else {
            return Err(problem("certificate", &self.cert, "not read".into()));
        };
        let chain = certs("certificate", &self.cert, cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| problem("key", &self.key, format!("no PEM private key in it ({e})")))?;
        let trusted_ca = match (&self.trusted_ca, rest.first()) {
            (Some(path), Some(pem)) => Some(certs("trusted CA", path, pem)?),
            _ => None,
        };
        let not_after = describe(&chain[0])
            .map(|d| d.not_after)
            .map_err(|e| problem("certificate", &self.cert, e))?;
        Ok(Material {
            certs: chain,
            key,
            trusted_ca,
            not_after,
        })
    }
}

/// What a certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub common_name: Option<String>,
    pub dns_names: Vec<String>,
    pub not_after: i64,
}

/// Reads a certificate's subject common name, DNS names and expiry.
pub fn describe(cert: &CertificateDer<'_>) -> Result<CertInfo, String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("not an X.509 certificate ({e})"))?;
    let common_name = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    let dns_names = match parsed.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(CertInfo {
        common_name,
        dns_names,
        not_after: parsed.validity().not_after.timestamp(),
    })
}
