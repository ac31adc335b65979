//! The committed CRD is exactly what the Rust types generate.

#[test]
fn committed_crd_matches_the_types() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/crds/concordclusters.yaml"
    );
    let committed = std::fs::read_to_string(path).expect("manifests/crds/concordclusters.yaml");
    assert!(
        committed == concord_operator::crd_yaml(),
        "manifests/crds/concordclusters.yaml is stale: run `bash scripts/regen.sh`"
    );
}

#[test]
fn committed_backup_crd_matches_the_types() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/crds/concordbackups.yaml"
    );
    let committed = std::fs::read_to_string(path).expect("manifests/crds/concordbackups.yaml");
    assert!(
        committed == concord_operator::backup_crd_yaml(),
        "manifests/crds/concordbackups.yaml is stale: run `bash scripts/regen.sh`"
    );
}

#[test]
fn committed_backup_schedule_crd_matches_the_types() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/crds/concordbackupschedules.yaml"
    );
    let committed =
        std::fs::read_to_string(path).expect("manifests/crds/concordbackupschedules.yaml");
    assert!(
        committed == concord_operator::backup_schedule_crd_yaml(),
        "manifests/crds/concordbackupschedules.yaml is stale: run `bash scripts/regen.sh`"
    );
}

#[test]
fn the_crd_has_the_subresources_and_columns_kubectl_needs() {
    let crd: serde_json::Value =
        serde_yaml_ng::from_str(&concord_operator::crd_yaml()).expect("yaml");
    let v = &crd["spec"]["versions"][0];
    assert_eq!(
        v["subresources"]["scale"]["specReplicasPath"],
        ".spec.replicas"
    );
    assert_eq!(
        v["subresources"]["scale"]["statusReplicasPath"],
        ".status.replicas"
    );
    assert!(v["subresources"]["status"].is_object());
    let columns: Vec<&str> = v["additionalPrinterColumns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(columns, ["Replicas", "Ready", "Leader", "Phase", "Age"]);
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "concord");
    let replicas = &v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["replicas"];
    assert_eq!(replicas["minimum"], 1.0);
    assert_eq!(replicas["maximum"], 9.0);
}
