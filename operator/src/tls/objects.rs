//! The objects that carry a cluster's certificates: which certificates it needs (pure), the
//! Secrets holding what the operator minted, and the cert-manager `Certificate`s that ask
//! cert-manager for the same.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use serde_json::{json, Value};

use super::certs::{Ca, Issued, Leaf};
use super::TlsPlan;
use crate::crd::IssuerRef;
use crate::naming;
use crate::validate::ValidatedCluster;

/// One certificate the cluster needs, and the Secret it lives in.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub secret: String,
    pub leaf: Leaf,
}

/// A member's names: its pod under the peers Service (what members dial), the peers Service
/// itself (what the operator checks, reaching members by IP), the client Service (what clients
/// dial), and loopback (a shell in the pod).
pub fn member_leaf(cluster: &str, ns: &str, ordinal: u32) -> Leaf {
    let pod = naming::pod_name(cluster, ordinal);
    let peers = naming::peers_host(cluster, ns);
    let client = naming::client_service(cluster);
    let mut dns_names = Vec::new();
    for host in [
        format!("{pod}.{peers}"),
        peers.clone(),
        format!("{client}.{ns}.svc"),
    ] {
        dns_names.push(format!("{host}.cluster.local"));
        dns_names.push(host);
    }
    dns_names.extend([client.clone(), format!("{client}.{ns}"), "localhost".into()]);
    Leaf {
        common_name: pod,
        dns_names,
        ips: vec![std::net::IpAddr::from([127, 0, 0, 1])],
        server: true,
    }
}

/// Every certificate the cluster needs, given how many members may exist (the larger of the
/// wanted and the current size, so a member scaled away keeps its certificate until it is
/// gone, and a new one has its certificate before its pod starts).
pub fn wanted(valid: &ValidatedCluster, members: u32) -> Vec<Wanted> {
    let (name, ns) = (valid.name.as_str(), valid.namespace.as_str());
    let mut out: Vec<Wanted> = (0..members.min(naming::MAX_REPLICAS))
        .map(|o| Wanted {
            secret: naming::member_secret(name, o),
            leaf: member_leaf(name, ns, o),
        })
        .collect();
    out.push(Wanted {
        secret: naming::operator_secret(name),
        leaf: Leaf {
            common_name: naming::MANAGER.into(),
            dns_names: Vec::new(),
            ips: Vec::new(),
            server: false,
        },
    });
    out.push(Wanted {
        secret: naming::client_secret(name),
        leaf: Leaf {
            common_name: valid.tls.client_user.clone(),
            dns_names: Vec::new(),
            ips: Vec::new(),
            server: false,
        },
    });
    out
}

fn bytes(text: &str) -> ByteString {
    ByteString(text.as_bytes().to_vec())
}

/// The operator's CA, in a Secret only the operator reads.
pub fn ca_secret(valid: &ValidatedCluster, ca: &Ca) -> Secret {
    Secret {
        metadata: crate::build::meta(&valid.cluster, naming::ca_secret(&valid.name)),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            ("ca.crt".to_string(), bytes(&ca.cert_pem)),
            ("ca.key".to_string(), bytes(&ca.key_pem)),
        ])),
        ..Default::default()
    }
}

/// A minted certificate, shaped as cert-manager shapes its Secrets.
pub fn tls_secret(valid: &ValidatedCluster, name: &str, issued: &Issued, ca_pem: &str) -> Secret {
    Secret {
        metadata: crate::build::meta(&valid.cluster, name.to_string()),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("tls.crt".to_string(), bytes(&issued.cert_pem)),
            ("tls.key".to_string(), bytes(&issued.key_pem)),
            ("ca.crt".to_string(), bytes(ca_pem)),
        ])),
        ..Default::default()
    }
}

/// A Go duration, as cert-manager reads `duration` and `renewBefore`.
fn go_duration(d: Duration) -> String {
    format!("{}h0m0s", d.as_secs() / 3600)
}

/// A cert-manager `Certificate` asking `issuer` for `want`.
pub fn certificate(
    valid: &ValidatedCluster,
    want: &Wanted,
    issuer: &IssuerRef,
    plan: &TlsPlan,
) -> Value {
    let meta = crate::build::meta(&valid.cluster, want.secret.clone());
    let mut usages = vec!["digital signature", "key encipherment", "client auth"];
    if want.leaf.server {
        usages.push("server auth");
    }
    let mut spec = json!({
        "secretName": want.secret,
        "commonName": want.leaf.common_name,
        "duration": go_duration(plan.lifetime),
        "renewBefore": go_duration(plan.renew_before),
        "usages": usages,
        "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
        "issuerRef": {
            "name": issuer.name,
            "kind": issuer.kind.clone().unwrap_or_else(|| "Issuer".into()),
            "group": issuer.group.clone().unwrap_or_else(|| "cert-manager.io".into()),
        },
        "secretTemplate": {"labels": naming::labels(&valid.name)},
    });
    if !want.leaf.dns_names.is_empty() {
        spec["dnsNames"] = json!(want.leaf.dns_names);
    }
    if !want.leaf.ips.is_empty() {
        spec["ipAddresses"] = json!(want
            .leaf
            .ips
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>());
    }
    json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": meta,
        "spec": spec,
    })
}
