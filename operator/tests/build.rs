//! Builders from YAML fixtures, snapshot-tested: every object the operator applies, for a
//! minimal spec and for one with every override. No API server involved.

use concord_operator::build;
use concord_operator::crd::ConcordCluster;

fn fixture(name: &str) -> ConcordCluster {
    let path = format!("{}/tests/fixtures/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("fixture");
    serde_yaml_ng::from_str(&text).expect("fixture is a ConcordCluster")
}

/// The builders take only validated clusters; every fixture is valid.
fn valid(cluster: &ConcordCluster) -> concord_operator::validate::ValidatedCluster {
    let ns = cluster.metadata.namespace.clone().unwrap_or_default();
    concord_operator::validate::check(cluster, &ns).expect("a valid fixture")
}

fn snapshot_all(name: &str) {
    let cluster = fixture(name);
    let d = build::desired(&valid(&cluster), cluster.spec.replicas);
    insta::assert_yaml_snapshot!(format!("{name}-configmap"), d.config_map);
    insta::assert_yaml_snapshot!(format!("{name}-peers-service"), d.peers_service);
    insta::assert_yaml_snapshot!(format!("{name}-client-service"), d.client_service);
    insta::assert_yaml_snapshot!(format!("{name}-statefulset"), d.stateful_set);
    insta::assert_yaml_snapshot!(format!("{name}-pdb"), d.pdb);
}

#[test]
fn minimal_cluster_objects() {
    snapshot_all("minimal");
}

#[test]
fn every_override_reaches_the_objects() {
    snapshot_all("full");
}

#[test]
fn pdb_never_allows_losing_quorum() {
    let mut cluster = fixture("minimal");
    for (replicas, allowed) in [(1, 0), (2, 0), (3, 1), (4, 1), (5, 2), (7, 3), (9, 4)] {
        cluster.spec.replicas = replicas;
        let pdb = build::desired(&valid(&cluster), replicas)
            .pdb
            .expect("a PDB");
        let max = pdb.spec.and_then(|s| s.max_unavailable);
        assert_eq!(
            max,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(allowed)),
            "{replicas} replicas"
        );
        // Those left up still form a quorum.
        let quorum = replicas / 2 + 1;
        assert!(replicas - allowed >= quorum);
    }
}

#[test]
fn a_config_change_changes_the_pod_template() {
    let mut cluster = fixture("minimal");
    let before = build::desired(&valid(&cluster), 3).stateful_set;
    cluster.spec.raft.snapshot_threshold = Some(1234);
    let after = build::desired(&valid(&cluster), 3).stateful_set;
    let hash = |s: &k8s_openapi::api::apps::v1::StatefulSet| {
        s.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.clone())
    };
    assert_ne!(hash(&before), hash(&after));
}

#[test]
fn the_statefulset_uses_the_planner_size_not_the_spec() {
    let cluster = fixture("minimal");
    let sts = build::desired(&valid(&cluster), 5).stateful_set;
    assert_eq!(sts.spec.and_then(|s| s.replicas), Some(5));
}

#[test]
fn a_storage_change_keeps_the_existing_volume_templates_and_warns() {
    let cluster = fixture("minimal");
    let current = build::desired(&valid(&cluster), 3).stateful_set;
    let mut bigger = cluster.clone();
    bigger.spec.storage.size = "10Gi".into();
    let mut desired = build::desired(&valid(&bigger), 3).stateful_set;
    let warning = build::keep_volume_templates(&mut desired, &current).expect("a warning");
    assert!(
        warning.contains("10Gi") && warning.contains("1Gi"),
        "{warning}"
    );
    assert_eq!(
        desired.spec.as_ref().map(|s| &s.volume_claim_templates),
        current.spec.as_ref().map(|s| &s.volume_claim_templates)
    );
    // Unchanged storage: nothing to say.
    let mut same = build::desired(&valid(&cluster), 3).stateful_set;
    assert_eq!(build::keep_volume_templates(&mut same, &current), None);
}
