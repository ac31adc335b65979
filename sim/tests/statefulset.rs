//! The simulated StatefulSet controller on the simulated API server, in process: pods and
//! claims from the template, OnDelete and rolling updates, scale-down with the claim retention
//! policy, and the status.

use concord_sim::apiserver::{ApiServer, DeleteOptions, WriteOptions};
use concord_sim::statefulset::{reconcile_all, REVISION_LABEL};
use serde_json::{json, Value};

const STS: &str = "/apis/apps/v1/namespaces/db/statefulsets";
const PODS: &str = "/api/v1/namespaces/db/pods";
const PVCS: &str = "/api/v1/namespaces/db/persistentvolumeclaims";

fn sts(replicas: i64, image: &str, strategy: &str, when_scaled: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "kv", "namespace": "db"},
        "spec": {
            "replicas": replicas, "serviceName": "kv-peers", "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": strategy},
            "persistentVolumeClaimRetentionPolicy": {"whenScaled": when_scaled, "whenDeleted": "Retain"},
            "selector": {"matchLabels": {"app": "kv"}},
            "template": {"metadata": {"labels": {"app": "kv"}},
                         "spec": {"containers": [{"name": "node", "image": image}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
        },
    })
}

fn apply(api: &ApiServer, obj: Value) {
    let t = ApiServer::target(&format!("{STS}/kv")).expect("target");
    let o = WriteOptions {
        manager: "test".into(),
        force: true,
    };
    api.patch(&t, "application/apply-patch+yaml", obj, &o)
        .expect("apply");
}

fn names(api: &ApiServer, path: &str) -> Vec<String> {
    let mut n: Vec<String> = api
        .list_path(path, "")
        .iter()
        .filter(|o| o["metadata"]["deletionTimestamp"].is_null())
        .map(|o| {
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    n.sort();
    n
}

fn make_ready(api: &ApiServer) {
    for p in api.list_path(PODS, "") {
        let name = p["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let t = ApiServer::target(&format!("{PODS}/{name}/status")).expect("t");
        api.patch(&t, "application/merge-patch+json",
            json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}),
            &WriteOptions { manager: "kubelet".into(), force: false }).expect("ready");
    }
}

fn kill(api: &ApiServer, name: &str) {
    let t = ApiServer::target(&format!("{PODS}/{name}")).expect("t");
    api.delete(
        &t,
        &DeleteOptions {
            grace_seconds: Some(0),
            ..Default::default()
        },
    )
    .expect("delete");
}

#[test]
fn pods_and_claims_follow_the_statefulset() {
    let api = ApiServer::new();
    apply(&api, sts(3, "v1", "OnDelete", "Delete"));
    reconcile_all(&api);
    assert_eq!(names(&api, PODS), ["kv-0", "kv-1", "kv-2"]);
    assert_eq!(names(&api, PVCS), ["data-kv-0", "data-kv-1", "data-kv-2"]);
    let p0 = api.get_path(&format!("{PODS}/kv-0")).expect("kv-0");
    assert_eq!(p0["spec"]["hostname"], "kv-0");
    assert_eq!(p0["spec"]["subdomain"], "kv-peers");
    assert_eq!(
        p0["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "data-kv-0"
    );
    let first_rev = p0["metadata"]["labels"][REVISION_LABEL].clone();
    make_ready(&api);
    reconcile_all(&api);
    let st = api.get_path(&format!("{STS}/kv")).expect("sts")["status"].clone();
    assert_eq!(
        (st["replicas"].as_i64(), st["readyReplicas"].as_i64()),
        (Some(3), Some(3))
    );

    // OnDelete: a new template touches no pod until one is deleted.
    apply(&api, sts(3, "v2", "OnDelete", "Delete"));
    reconcile_all(&api);
    let p2 = api.get_path(&format!("{PODS}/kv-2")).expect("kv-2");
    assert_eq!(p2["metadata"]["labels"][REVISION_LABEL], first_rev);
    kill(&api, "kv-2");
    reconcile_all(&api);
    let p2 = api.get_path(&format!("{PODS}/kv-2")).expect("kv-2 again");
    assert_ne!(p2["metadata"]["labels"][REVISION_LABEL], first_rev);
    assert_eq!(p2["spec"]["containers"][0]["image"], "v2");
    make_ready(&api);
    reconcile_all(&api);
    let st = api.get_path(&format!("{STS}/kv")).expect("sts")["status"].clone();
    assert_eq!(st["updatedReplicas"], 1);
    assert_eq!(st["currentRevision"], first_rev, "{st}");

    // Scale down with whenScaled: Delete — the pod goes and its claim with it.
    apply(&api, sts(2, "v2", "OnDelete", "Delete"));
    reconcile_all(&api);
    let pvc = api.get_path(&format!("{PVCS}/data-kv-2")).expect("claim");
    assert_eq!(pvc["metadata"]["ownerReferences"][0]["kind"], "Pod");
    // The kubelet finishes the pod's graceful deletion.
    kill(&api, "kv-2");
    assert_eq!(names(&api, PODS), ["kv-0", "kv-1"]);
    assert_eq!(names(&api, PVCS), ["data-kv-0", "data-kv-1"]);
}

#[test]
fn rolling_updates_go_one_ready_pod_at_a_time_and_retained_claims_stay() {
    let api = ApiServer::new();
    apply(&api, sts(2, "v1", "RollingUpdate", "Retain"));
    reconcile_all(&api);
    make_ready(&api);
    apply(&api, sts(2, "v2", "RollingUpdate", "Retain"));
    reconcile_all(&api);
    let terminating: Vec<String> = api
        .list_path(PODS, "")
        .iter()
        .filter(|p| !p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(
        terminating,
        ["kv-1"],
        "the highest ordinal first, one at a time"
    );
    apply(&api, sts(1, "v2", "RollingUpdate", "Retain"));
    kill(&api, "kv-1");
    reconcile_all(&api);
    assert_eq!(
        names(&api, PVCS),
        ["data-kv-0", "data-kv-1"],
        "Retain keeps the claim"
    );
}
