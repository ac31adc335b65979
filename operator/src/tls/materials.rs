//! The I/O of TLS: keeping the certificate Secrets the operator mints current (reissuing by
//! `certs::renewal_reason`), asking cert-manager for the same, and reading the identity the
//! operator presents to a cluster's admin API. Decisions are made in `certs` and `objects`.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Api, Client};

use super::certs::{self, Ca, CertError};
use super::{objects, Source};
use crate::admin::AdminTls;
use crate::naming::{self, MANAGER};
use crate::validate::ValidatedCluster;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading or writing Secret {name}: {source}")]
    Secret {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("applying cert-manager Certificate {name}: {source} (is cert-manager installed?)")]
    Certificate {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Mint(#[from] CertError),
    #[error("Secret {name} has no {key}: {why}")]
    Incomplete {
        name: String,
        key: &'static str,
        why: &'static str,
    },
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

async fn read(api: &Api<Secret>, name: &str) -> Result<Option<Secret>, TlsError> {
    api.get_opt(name).await.map_err(|source| TlsError::Secret {
        name: name.into(),
        source,
    })
}

async fn write(client: &Client, ns: &str, secret: &Secret) -> Result<(), TlsError> {
    crate::reconcile::apply_object(client, ns, secret)
        .await
        .map_err(|source| TlsError::Secret {
            name: secret.metadata.name.clone().unwrap_or_default(),
            source,
        })
}

/// Brings the cluster's certificates to what it needs for `members` members: the operator's
/// own (minted and renewed here) or cert-manager's (Certificates applied; cert-manager
/// renews). Returns the earliest expiry among the certificates this call saw, in seconds.
pub async fn ensure(
    client: &Client,
    valid: &ValidatedCluster,
    members: u32,
    certificates: &[serde_json::Value],
) -> Result<Option<i64>, TlsError> {
    match &valid.tls.source {
        Some(Source::Operator) => ensure_minted(client, valid, members).await.map(Some),
        Some(Source::CertManager(_)) => {
            apply_certificates(client, &valid.namespace, certificates).await?;
            Ok(None)
        }
        Some(Source::Secrets { .. }) | None => Ok(None),
    }
}

async fn ensure_minted(
    client: &Client,
    valid: &ValidatedCluster,
    members: u32,
) -> Result<i64, TlsError> {
    let ns = valid.namespace.as_str();
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let ca_name = naming::ca_secret(&valid.name);
    let ca = match read(&api, &ca_name).await? {
        Some(s) => Ca {
            cert_pem: text(&s, "ca.crt").ok_or_else(|| TlsError::Incomplete {
                name: ca_name.clone(),
                key: "ca.crt",
                why: "delete the Secret to have a new CA minted (every certificate is then reissued)",
            })?,
            key_pem: text(&s, "ca.key").ok_or_else(|| TlsError::Incomplete {
                name: ca_name.clone(),
                key: "ca.key",
                why: "delete the Secret to have a new CA minted (every certificate is then reissued)",
            })?,
        },
        None => {
            let ca = Ca::generate(&valid.name)?;
            write(client, ns, &objects::ca_secret(valid, &ca)).await?;
            tracing::info!(namespace = ns, cluster = %valid.name, "minted the cluster CA");
            ca
        }
    };
    let now = certs::now_seconds();
    let mut earliest = i64::MAX;
    for want in objects::wanted(valid, members) {
        let existing = read(&api, &want.secret).await?;
        let seen = existing
            .as_ref()
            .and_then(|s| text(s, "tls.crt"))
            .and_then(|pem| certs::inspect(&pem));
        let same_ca = existing
            .as_ref()
            .and_then(|s| text(s, "ca.crt"))
            .is_some_and(|c| c == ca.cert_pem);
        let reason = certs::renewal_reason(
            seen.as_ref(),
            same_ca,
            &want.leaf,
            now,
            valid.tls.renew_before,
        );
        match reason {
            None => earliest = earliest.min(seen.map_or(i64::MAX, |s| s.not_after)),
            Some(reason) => {
                let issued = ca.issue(&want.leaf, valid.tls.lifetime)?;
                if let Some(s) = certs::inspect(&issued.cert_pem) {
                    earliest = earliest.min(s.not_after);
                }
                write(
                    client,
                    ns,
                    &objects::tls_secret(valid, &want.secret, &issued, &ca.cert_pem),
                )
                .await?;
                tracing::info!(namespace = ns, cluster = %valid.name, secret = %want.secret, reason, "issued a certificate");
            }
        }
    }
    Ok(earliest)
}

async fn apply_certificates(
    client: &Client,
    ns: &str,
    certificates: &[serde_json::Value],
) -> Result<(), TlsError> {
    let resource = ApiResource {
        group: "cert-manager.io".into(),
        version: "v1".into(),
        api_version: "cert-manager.io/v1".into(),
        kind: "Certificate".into(),
        plural: "certificates".into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    for c in certificates {
        let name = c["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(c),
        )
        .await
        .map_err(|source| TlsError::Certificate { name, source })?;
    }
    Ok(())
}

/// The client certificate the operator presents to this cluster's members, from its Secret.
pub async fn admin_identity(
    client: &Client,
    valid: &ValidatedCluster,
) -> Result<Option<AdminTls>, TlsError> {
    let name = match &valid.tls.source {
        None => return Ok(None),
        Some(Source::Secrets { operator, .. }) => operator.clone(),
        Some(_) => naming::operator_secret(&valid.name),
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), &valid.namespace);
    let why = "the operator needs it to reach the members over TLS (cert-manager may not have issued it yet)";
    let secret = read(&api, &name)
        .await?
        .ok_or_else(|| TlsError::Incomplete {
            name: name.clone(),
            key: "data",
            why,
        })?;
    let get = |key: &'static str| {
        text(&secret, key).ok_or_else(|| TlsError::Incomplete {
            name: name.clone(),
            key,
            why,
        })
    };
    Ok(Some(AdminTls {
        ca_pem: get("ca.crt")?,
        cert_pem: get("tls.crt")?,
        key_pem: get("tls.key")?,
        domain: naming::peers_host(&valid.name, &valid.namespace),
    }))
}
