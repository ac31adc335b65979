//! Names, labels and addresses derived from a ConcordCluster: one place, so builders, the
//! planner and the status agree on them.

use std::collections::BTreeMap;

/// Port of the Raft peer transport and the admin gRPC service (the node's default).
pub const PEER_PORT: i32 = 8080;
/// Port of the HTTP client API, /metrics and probes (the node's default).
pub const API_PORT: i32 = 8081;
/// Port of etcd's v3 API (the node's default, etcd's client port). The config leaves it
/// unset: a node from before the etcd API would refuse the unknown setting.
pub const ETCD_PORT: i32 = 2379;
/// Where the node's config file is mounted.
pub const CONFIG_DIR: &str = "/etc/concord";
pub const CONFIG_FILE: &str = "concord.yaml";
/// Where the certificates are mounted: `<pod>/tls.crt` under it (operator and certManager
/// modes, one Secret per member), or `tls.crt` (one Secret for all).
pub const TLS_DIR: &str = "/etc/concord-tls";
/// Most voters a cluster may have (spec.replicas' bound); also how many member Secrets a pod
/// template can mount.
pub const MAX_REPLICAS: u32 = 9;
/// Where the member's volume is mounted.
pub const DATA_DIR: &str = "/var/lib/concord";
/// Name of the volume claim template (PVCs are `data-<pod>`).
pub const VOLUME_NAME: &str = "data";

pub const APP_NAME: &str = "concordkv";
pub const MANAGER: &str = "concord-operator";
/// Pod template annotation holding the hash of the node config: a config change rolls pods.
pub const CONFIG_HASH_ANNOTATION: &str = "concordkv.io/config-hash";
pub const FINALIZER: &str = "concordkv.io/cleanup";

/// Longest cluster name: pod names, `<name>-peers` and the StatefulSet's revision label
/// (`<name>-<10 char hash>`) must stay valid DNS labels of at most 63 characters.
pub const MAX_NAME_LEN: usize = 45;

pub fn peers_service(cluster: &str) -> String {
    format!("{cluster}-peers")
}

pub fn client_service(cluster: &str) -> String {
    cluster.to_string()
}

pub fn config_map(cluster: &str) -> String {
    format!("{cluster}-config")
}

/// The operator's cluster CA (`mode: operator`): `ca.crt` and `ca.key`.
pub fn ca_secret(cluster: &str) -> String {
    format!("{cluster}-ca")
}

/// One member's certificate (`kubernetes.io/tls` with `ca.crt`), whoever issues it.
pub fn member_secret(cluster: &str, ordinal: u32) -> String {
    format!("{cluster}-member-{ordinal}")
}

/// The client certificate the operator presents to the members' admin API.
pub fn operator_secret(cluster: &str) -> String {
    format!("{cluster}-operator-tls")
}

/// A client certificate for applications to mount.
pub fn client_secret(cluster: &str) -> String {
    format!("{cluster}-client-tls")
}

/// The name every member's certificate carries besides its own, which the operator checks
/// when it reaches a member by IP.
pub fn peers_host(cluster: &str, ns: &str) -> String {
    format!("{}.{ns}.svc", peers_service(cluster))
}

pub fn pod_name(cluster: &str, ordinal: u32) -> String {
    format!("{cluster}-{ordinal}")
}

/// The ordinal of a pod of this cluster, from its name.
pub fn ordinal_of(cluster: &str, pod: &str) -> Option<u32> {
    let rest = pod.strip_prefix(cluster)?.strip_prefix('-')?;
    if rest.is_empty() || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    rest.parse().ok()
}

/// Stable DNS name of a pod's peer endpoint (what members advertise to each other).
pub fn peer_address_template(cluster: &str) -> String {
    format!(
        "$(POD_NAME).{}.$(POD_NAMESPACE).svc:{PEER_PORT}",
        peers_service(cluster)
    )
}

/// Labels that select this cluster's pods. Never change: a StatefulSet selector is immutable.
pub fn selector_labels(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), APP_NAME.to_string()),
        (
            "app.kubernetes.io/instance".to_string(),
            cluster.to_string(),
        ),
    ])
}

/// Labels on every object the operator owns.
pub fn labels(cluster: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(cluster);
    l.insert("app.kubernetes.io/component".into(), "database".into());
    l.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    l.insert("app.kubernetes.io/part-of".into(), APP_NAME.into());
    l
}

pub fn selector_string(cluster: &str) -> String {
    selector_labels(cluster)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_parse_only_this_clusters_pods() {
        assert_eq!(ordinal_of("kv", "kv-0"), Some(0));
        assert_eq!(ordinal_of("kv", "kv-12"), Some(12));
        assert_eq!(ordinal_of("kv", "kv-x"), None);
        assert_eq!(ordinal_of("kv", "kv-01"), None);
        assert_eq!(ordinal_of("kv", "kvx-1"), None);
        assert_eq!(ordinal_of("kv", "kv-"), None);
        assert_eq!(ordinal_of("kv-a", "kv-1"), None);
    }
}
