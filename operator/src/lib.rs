//! concord-operator: reconciles ConcordCluster resources into StatefulSets, Services, a PDB and
//! config, and drives Raft membership through the nodes' admin API one safe step at a time.

pub mod admin;
pub mod backup;
pub mod build;
pub mod controller;
pub mod crd;
pub mod kube_pods;
pub mod membership;
pub mod metrics;
pub mod naming;
pub mod plan;
pub mod reconcile;
pub mod status;
pub mod tls;
pub mod validate;

fn generated<K: kube::CustomResourceExt>() -> String {
    format!(
        "# Generated from the Rust types by `bash scripts/regen.sh` (crdgen); do not edit.\n{}",
        serde_yaml_ng::to_string(&K::crd()).unwrap_or_default()
    )
}

/// The ConcordCluster CRD as YAML, exactly as committed under `manifests/crds/`.
pub fn crd_yaml() -> String {
    generated::<crd::ConcordCluster>()
}

/// The ConcordBackup CRD as YAML, exactly as committed under `manifests/crds/`.
pub fn backup_crd_yaml() -> String {
    generated::<backup::ConcordBackup>()
}

/// The ConcordBackupSchedule CRD as YAML, exactly as committed under `manifests/crds/`.
pub fn backup_schedule_crd_yaml() -> String {
    generated::<backup::schedule::ConcordBackupSchedule>()
}
