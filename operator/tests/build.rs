//! Builders from YAML fixtures, snapshot-tested: every object the operator applies, for a
//! minimal spec and for one with every override. No API server involved.

use concord_operator::build;
use concord_operator::crd::{ConcordCluster, PeerTls};
use concord_operator::tls::{self, certs, objects};

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

/// The objects at the step a cluster's TLS starts at (a new cluster: straight to its target).
fn desired(cluster: &ConcordCluster, sts_replicas: i32) -> build::Desired {
    let v = valid(cluster);
    let peer = tls::current_peer(cluster, v.tls.wants_tls());
    build::desired(&v, sts_replicas, peer)
}

fn snapshot_all(name: &str) {
    let cluster = fixture(name);
    let d = desired(&cluster, cluster.spec.replicas);
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
        let pdb = desired(&cluster, replicas).pdb.expect("a PDB");
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
    let before = desired(&cluster, 3).stateful_set;
    cluster.spec.raft.snapshot_threshold = Some(1234);
    let after = desired(&cluster, 3).stateful_set;
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
    let sts = desired(&cluster, 5).stateful_set;
    assert_eq!(sts.spec.and_then(|s| s.replicas), Some(5));
}

#[test]
fn a_storage_change_keeps_the_existing_volume_templates_and_warns() {
    let cluster = fixture("minimal");
    let current = desired(&cluster, 3).stateful_set;
    let mut bigger = cluster.clone();
    bigger.spec.storage.size = "10Gi".into();
    let mut bigger_sts = desired(&bigger, 3).stateful_set;
    let warning = build::keep_volume_templates(&mut bigger_sts, &current).expect("a warning");
    assert!(
        warning.contains("10Gi") && warning.contains("1Gi"),
        "{warning}"
    );
    assert_eq!(
        bigger_sts.spec.as_ref().map(|s| &s.volume_claim_templates),
        current.spec.as_ref().map(|s| &s.volume_claim_templates)
    );
    // Unchanged storage: nothing to say.
    let mut same = desired(&cluster, 3).stateful_set;
    assert_eq!(build::keep_volume_templates(&mut same, &current), None);
}

/// What TLS changes in a pod: its environment, volumes and probes (the rest is in the full
/// StatefulSet snapshots).
fn pod_tls_view(d: &build::Desired) -> serde_json::Value {
    let spec = d
        .stateful_set
        .spec
        .clone()
        .expect("spec")
        .template
        .spec
        .expect("pod");
    let c = &spec.containers[0];
    serde_json::json!({
        "env": c.env,
        "volumeMounts": c.volume_mounts,
        "volumes": spec.volumes,
        "readinessProbe": c.readiness_probe,
        "config": d.config_map.data,
    })
}

#[test]
fn each_tls_mode_builds_its_objects() {
    for mode in ["minimal", "cert-manager", "secrets", "disabled"] {
        let cluster = fixture(mode);
        let d = desired(&cluster, 3);
        insta::assert_yaml_snapshot!(format!("tls-{mode}-pod"), pod_tls_view(&d));
        if mode == "cert-manager" {
            insta::assert_yaml_snapshot!("tls-cert-manager-certificates", d.certificates);
        } else {
            assert!(d.certificates.is_empty(), "{mode}");
        }
    }
}

#[test]
fn operator_minted_secrets_are_shaped_like_cert_managers() {
    let cluster = fixture("minimal");
    let v = valid(&cluster);
    let ca = certs::Ca::generate(&v.name).expect("ca");
    let wanted = objects::wanted(&v, 3);
    let names: Vec<&str> = wanted.iter().map(|w| w.secret.as_str()).collect();
    assert_eq!(
        names,
        [
            "kv-member-0",
            "kv-member-1",
            "kv-member-2",
            "kv-operator-tls",
            "kv-client-tls"
        ]
    );
    let mut secrets = vec![objects::ca_secret(&v, &ca)];
    for w in &wanted {
        let issued = ca.issue(&w.leaf, v.tls.lifetime).expect("issue");
        let seen = certs::inspect(&issued.cert_pem).expect("parses");
        assert_eq!(seen.common_name, w.leaf.common_name);
        assert_eq!(seen.dns_names, w.leaf.dns_names);
        secrets.push(objects::tls_secret(&v, &w.secret, &issued, &ca.cert_pem));
    }
    // The key material differs on every run: the snapshot holds each Secret with its keys.
    let shapes: Vec<serde_json::Value> = secrets
        .iter()
        .map(|s| {
            let mut v = serde_json::to_value(s).expect("json");
            for value in v["data"].as_object_mut().expect("data").values_mut() {
                *value = "[pem]".into();
            }
            v
        })
        .collect();
    insta::assert_yaml_snapshot!("tls-operator-secrets", shapes);
    insta::assert_yaml_snapshot!("tls-operator-member-0-names", wanted[0].leaf.dns_names);
}

/// The Certificates the operator writes satisfy cert-manager's own schema (the subset under
/// operator/schemas/, copied from cert-manager's CRD), with no field it would prune.
#[test]
fn certificates_satisfy_cert_managers_schema() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schemas/cert-manager-certificate-v1.yaml"
    );
    let schema: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(path).expect("schema")).expect("yaml");
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    let d = desired(&fixture("cert-manager"), 5);
    assert_eq!(
        d.certificates.len(),
        7,
        "five members, the operator, clients"
    );
    for c in &d.certificates {
        let errors: Vec<String> = validator.iter_errors(c).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", c["metadata"]["name"]);
    }
    // The check has teeth: a misspelt field and a usage cert-manager does not know fail.
    let mut wrong = d.certificates[0].clone();
    wrong["spec"]["dnsName"] = serde_json::json!(["x"]);
    assert!(!validator.is_valid(&wrong));
    let mut wrong = d.certificates[0].clone();
    wrong["spec"]["usages"] = serde_json::json!(["serverAuth"]);
    assert!(!validator.is_valid(&wrong));
}

/// A running plaintext cluster switched on: only the config changes between steps, and the
/// pod template at `off` is exactly what a cluster without TLS gets (an operator upgrade does
/// not roll plaintext clusters).
#[test]
fn the_switch_steps_change_the_config_and_off_is_plaintext() {
    let plain = valid(&fixture("disabled"));
    let on = valid(&fixture("minimal"));
    let off = build::desired(&on, 3, PeerTls::Off);
    assert_eq!(
        off.stateful_set.spec,
        build::desired(&plain, 3, PeerTls::Off).stateful_set.spec
    );
    let mut hashes = std::collections::BTreeSet::new();
    for step in [PeerTls::Off, PeerTls::Accept, PeerTls::Prefer, PeerTls::On] {
        let d = build::desired(&on, 3, step);
        let config = d.config_map.data.clone().unwrap_or_default();
        let text = config.values().cloned().collect::<String>();
        assert_eq!(
            text.contains(&format!("peerTlsMode: {}", step.as_str())),
            step != PeerTls::Off,
            "{text}"
        );
        hashes.insert(build::config_hash(&d.config_map));
    }
    assert_eq!(hashes.len(), 4, "every step rolls the members");
}

/// A backup into a PVC is a Job: the node image's concordctl, the claim mounted, the member
/// dialed by the name its certificate carries, the operator's certificate mounted read-only
/// when the admin service speaks TLS; pruning is a Job that removes only the named files.
#[test]
fn backup_and_prune_jobs_for_a_pvc_destination() {
    use concord_operator::backup::job;
    use concord_operator::backup::PvcDestination;
    let cluster = fixture("full");
    let v = valid(&cluster);
    let dest = PvcDestination {
        claim_name: "backups".into(),
        directory: Some("/nightly/".into()),
    };
    let member = job::member_address(&v.name, &v.namespace, 1);
    let input = job::JobInput {
        name: job::backup_job_name("nightly-20261205"),
        namespace: &v.namespace,
        owner: None,
        cluster: &v,
        claim: &dest.claim_name,
        tls_secret: Some("kv-operator-tls".into()),
    };
    let backup = job::backup_job(&input, &dest, &member);
    insta::assert_yaml_snapshot!("backup-job-pvc-tls", backup);
    let plain = job::backup_job(
        &job::JobInput {
            tls_secret: None,
            ..input
        },
        &dest,
        &member,
    );
    let args = plain
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers[0].args.clone());
    let args = args.flatten().expect("args");
    assert!(!args.iter().any(|a| a == "--cacert"), "{args:?}");
    let files = vec!["nightly/prod/kv/kv-r7-20261201T020000Z.backup".to_string()];
    let prune = job::prune_job(
        &job::JobInput {
            name: job::prune_job_name("nightly", &files),
            namespace: &v.namespace,
            owner: None,
            cluster: &v,
            claim: "backups",
            tls_secret: None,
        },
        &files,
    );
    insta::assert_yaml_snapshot!("prune-job-pvc", prune);

    // Names stay valid label values however long the owner's name.
    let long = "b".repeat(250);
    assert!(job::backup_job_name(&long).len() <= 63);
    assert_ne!(
        job::backup_job_name(&long),
        job::backup_job_name(&format!("{long}x"))
    );
    assert!(job::prune_job_name(&long, &files).len() <= 63);
    assert_ne!(
        job::prune_job_name("s", &files),
        job::prune_job_name("s", &["other".to_string()])
    );
    // A location outside the claim, or climbing out of it, is never pruned.
    assert_eq!(
        job::path_in_claim("pvc://backups/a/b.backup", "backups"),
        Some("a/b.backup")
    );
    assert_eq!(
        job::path_in_claim("pvc://backups/../etc/x", "backups"),
        None
    );
    assert_eq!(job::path_in_claim("pvc://other/a.backup", "backups"), None);
    assert_eq!(
        job::path_in_claim("pvc://backupsX/a.backup", "backups"),
        None
    );
    assert_eq!(job::path_in_claim("s3://backups/a.backup", "backups"), None);
}
