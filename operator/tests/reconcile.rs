//! The reconciler against a mocked Kubernetes API (tower-test) and an in-memory Raft cluster
//! behind the admin trait: the API calls it makes for create, scale up, scale down, status and
//! deletion. The fake API server is a small object store; a helper plays the StatefulSet
//! controller (pods appear for the StatefulSet's size).

mod common;

use common::*;
use serde_json::json;

const SECRETS: &str = "/api/v1/namespaces/default/secrets";

fn apply_calls() -> Vec<String> {
    [
        "PATCH /api/v1/namespaces/default/configmaps/kv-config",
        "PATCH /api/v1/namespaces/default/services/kv-peers",
        "PATCH /api/v1/namespaces/default/services/kv",
        "PATCH /apis/apps/v1/namespaces/default/statefulsets/kv",
        "PATCH /apis/policy/v1/namespaces/default/poddisruptionbudgets/kv",
    ]
    .map(String::from)
    .to_vec()
}

#[tokio::test]
async fn create_applies_objects_then_initialises_and_grows_membership() {
    let h = Harness::new(json!({"replicas": 3, "version": "test"}));

    // First pass: only the finalizer is added.
    assert_eq!(h.reconcile().await, [format!("PATCH {CR}")]);
    assert_eq!(
        h.cr()["metadata"]["finalizers"],
        json!(["concordkv.io/cleanup"])
    );

    // Second pass: read the StatefulSet, apply every object, observe, write status.
    let calls = h.reconcile().await;
    let mut expected = vec![format!("GET {STS}")];
    // TLS (mode operator, the default for a new cluster): the CA, then every certificate,
    // before any pod can mount them.
    for secret in [
        "kv-ca",
        "kv-member-0",
        "kv-member-1",
        "kv-member-2",
        "kv-operator-tls",
        "kv-client-tls",
    ] {
        expected.push(format!("GET {SECRETS}/{secret}"));
        expected.push(format!("PATCH {SECRETS}/{secret}"));
    }
    expected.extend(apply_calls());
    expected.extend([
        // The operator's own certificate, for the admin API over mutual TLS.
        format!("GET {SECRETS}/kv-operator-tls"),
        format!("GET {STS}"),
        format!("GET {PODS} (list)"),
        format!("PATCH {CR}/status"),
    ]);
    assert_eq!(calls, expected);
    let status = &h.cr()["status"];
    assert_eq!(status["phase"], "Creating");
    assert_eq!(
        status["selector"],
        "app.kubernetes.io/instance=kv,app.kubernetes.io/name=concordkv"
    );

    // Pods appear: pod 0 initialises, the others join one at a time; each step is an event.
    h.run_statefulset_controller();
    let calls = h.reconcile().await;
    assert!(
        calls.contains(&"POST /apis/events.k8s.io/v1/namespaces/default/events".to_string()),
        "{calls:?}"
    );
    assert_eq!(h.admin_log(), ["init kv-0"]);
    let log = h.settle().await;
    assert_eq!(
        log,
        [
            "add-learner kv-1",
            "promote kv-1",
            "add-learner kv-2",
            "promote kv-2"
        ]
    );

    // Status: members, leader, conditions, observed generation.
    let status = h.cr()["status"].clone();
    assert_eq!(status["phase"], "Running");
    assert_eq!(status["leader"], "kv-0");
    assert_eq!(status["readyReplicas"], 3);
    assert_eq!(status["clusterId"], "ckv-fake");
    assert_eq!(
        status["currentImage"],
        "ghcr.io/concordkv/concord-node:test"
    );
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));
    let available = status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Available")
        .cloned()
        .expect("Available");
    assert_eq!(available["status"], "True");
    assert_eq!(available["reason"], "QuorumHealthy");

    // Converged and unchanged: no status write.
    let calls = h.reconcile().await;
    assert!(!calls.contains(&format!("PATCH {CR}/status")), "{calls:?}");
}

#[tokio::test]
async fn scale_up_then_down_goes_through_membership_one_step_at_a_time() {
    let h = Harness::new(json!({"replicas": 3}));
    h.reconcile().await;
    h.settle().await;

    // 3 -> 5: the StatefulSet grows (a merge patch of spec.replicas), then members join.
    h.edit_spec(|s| s["replicas"] = 5.into());
    let calls = h.reconcile().await;
    assert_eq!(
        calls
            .iter()
            .filter(|c| *c == &format!("PATCH {STS}"))
            .count(),
        2,
        "apply + scale: {calls:?}"
    );
    assert_eq!(h.store.lock().objects[STS]["spec"]["replicas"], 5);
    let log = h.settle().await;
    assert_eq!(
        log,
        [
            "add-learner kv-3",
            "promote kv-3",
            "add-learner kv-4",
            "promote kv-4"
        ]
    );

    // 5 -> 3: members leave Raft first; only then does the StatefulSet shrink.
    h.edit_spec(|s| s["replicas"] = 3.into());
    h.reconcile().await;
    assert_eq!(h.admin_log(), ["remove kv-4"]);
    assert_eq!(
        h.store.lock().objects[STS]["spec"]["replicas"],
        5,
        "not shrunk while kv-3 is a member"
    );
    h.reconcile().await;
    assert_eq!(h.admin_log(), ["remove kv-3"]);
    assert_eq!(h.store.lock().objects[STS]["spec"]["replicas"], 5);
    h.reconcile().await;
    assert_eq!(h.store.lock().objects[STS]["spec"]["replicas"], 3);
    h.settle().await;
    assert_eq!(
        h.cr()["status"]["members"].as_array().map(Vec::len),
        Some(3)
    );
}

#[tokio::test]
async fn deletion_removes_volumes_per_policy_and_the_finalizer() {
    let h = Harness::new(json!({"replicas": 1, "storage": {"onDelete": "Delete"}}));
    h.reconcile().await;
    h.settle().await;
    h.store.lock().objects.insert(
        "/api/v1/namespaces/default/persistentvolumeclaims/data-kv-0".into(),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data-kv-0", "namespace": NS}}),
    );
    {
        let mut s = h.store.lock();
        let cr = s.objects.get_mut(CR).expect("cr");
        cr["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
    }
    let calls = h.reconcile().await;
    assert_eq!(
        calls,
        [
            "GET /api/v1/namespaces/default/persistentvolumeclaims (list)".to_string(),
            "DELETE /api/v1/namespaces/default/persistentvolumeclaims/data-kv-0".to_string(),
            "POST /apis/events.k8s.io/v1/namespaces/default/events".to_string(),
            format!("PATCH {CR}"),
        ]
    );
    assert_eq!(h.cr()["metadata"]["finalizers"], json!([]));
}

#[tokio::test]
async fn an_invalid_spec_changes_nothing_and_says_why() {
    let h = Harness::new(json!({"replicas": 3, "storage": {"size": "lots"}}));
    h.reconcile().await;
    let calls = h.reconcile().await;
    assert_eq!(
        calls,
        [
            "POST /apis/events.k8s.io/v1/namespaces/default/events".to_string(),
            format!("PATCH {CR}/status"),
        ]
    );
    let status = h.cr()["status"].clone();
    assert_eq!(status["phase"], "Failed");
    let degraded = status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Degraded")
        .cloned()
        .expect("Degraded");
    assert_eq!(degraded["reason"], "InvalidSpec");
    assert!(degraded["message"]
        .as_str()
        .unwrap_or("")
        .contains("spec.storage.size"));
}

#[tokio::test]
async fn a_paused_cluster_is_observed_but_not_changed() {
    let h = Harness::new(json!({"replicas": 3}));
    h.reconcile().await;
    h.settle().await;
    h.edit_spec(|s| {
        s["paused"] = true.into();
        s["replicas"] = 5.into();
    });
    let calls = h.reconcile().await;
    assert!(
        calls
            .iter()
            .all(|c| c.starts_with("GET ") || c == &format!("PATCH {CR}/status")),
        "a paused cluster only reads (and reports): {calls:?}"
    );
    assert_eq!(h.store.lock().objects[STS]["spec"]["replicas"], 3);
    assert!(h.admin_log().is_empty());
    let status = h.cr()["status"].clone();
    assert_eq!(status["phase"], "Paused");
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));
}

/// A restart deletes the pod that was observed. If the StatefulSet controller recreated it in
/// the meantime, the new pod (another UID, same name) must survive.
#[tokio::test]
async fn a_pod_restart_never_deletes_a_pod_recreated_since_it_was_observed() {
    use concord_operator::kube_pods::KubePods;
    use concord_operator::membership::PodRuntime;

    let store: Shared = Default::default();
    let pod = |uid: &str| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "kv-0", "namespace": NS, "uid": uid,
                         "labels": {"app.kubernetes.io/instance": "kv"}},
        })
    };
    let path = format!("{PODS}/kv-0");
    store.lock().put(path.clone(), pod("uid-old"));
    let client = fake_client(store.clone());
    let runtime = KubePods {
        pods: kube::Api::namespaced(client.clone(), NS),
        sts: kube::Api::namespaced(client, NS),
        cluster: "kv".into(),
    };
    // Recreated under the same name after the operator looked.
    store.lock().delete(&path);
    store.lock().put(path.clone(), pod("uid-new"));
    let refused = runtime.restart("kv-0", Some("uid-old")).await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(
        store.lock().objects[&path]["metadata"]["uid"],
        "uid-new",
        "the new pod survives"
    );
    // The pod that is still the one observed is deleted.
    runtime
        .restart("kv-0", Some("uid-new"))
        .await
        .expect("delete");
    assert!(!store.lock().objects.contains_key(&path));
}

/// TLS turned on for a running plaintext cluster: certificates minted once, the members moved
/// off -> accept -> prefer -> on one step per converged pass (each a config change, so a roll),
/// a lost certificate reissued alone.
#[tokio::test]
async fn tls_is_switched_on_step_by_step_and_certificates_are_minted_once() {
    let h = Harness::new(json!({"replicas": 3, "tls": {"mode": "disabled"}}));
    h.reconcile().await;
    h.settle().await;
    assert_eq!(
        h.cr()["status"]["tls"],
        json!({"mode": "disabled", "peer": "off"})
    );
    let secrets = |h: &Harness| -> Vec<String> {
        h.store
            .lock()
            .objects
            .keys()
            .filter_map(|k| k.strip_prefix(&format!("{SECRETS}/")).map(String::from))
            .collect()
    };
    assert!(secrets(&h).is_empty());
    let config = |h: &Harness| -> String {
        h.store.lock().objects["/api/v1/namespaces/default/configmaps/kv-config"]["data"]
            ["concord.yaml"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(!config(&h).contains("tls:"));

    h.edit_spec(|s| s["tls"] = json!({"mode": "operator"}));
    let mut steps = vec!["off".to_string()];
    let mut pod_deletes = 0;
    for _ in 0..80 {
        if steps.last().map(String::as_str) == Some("on") {
            break;
        }
        h.run_statefulset_controller();
        let calls = h.reconcile().await;
        pod_deletes += calls
            .iter()
            .filter(|c| c.starts_with(&format!("DELETE {PODS}/")))
            .count();
        let peer = h.cr()["status"]["tls"]["peer"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if steps.last() != Some(&peer) {
            // Each step is recorded only once every pod runs the previous step's config.
            steps.push(peer);
        }
    }
    assert_eq!(steps, ["off", "accept", "prefer", "on"]);
    // accept and prefer each rolled all three members before the next step was recorded;
    // the roll to `on` is under way.
    assert!(pod_deletes >= 6, "{pod_deletes} pod restarts");
    h.settle().await;
    assert!(config(&h).contains("peerTlsMode: on"), "{}", config(&h));
    assert_eq!(
        secrets(&h),
        [
            "kv-ca",
            "kv-client-tls",
            "kv-member-0",
            "kv-member-1",
            "kv-member-2",
            "kv-operator-tls"
        ]
    );
    assert!(h.cr()["status"]["tls"]["certificatesNotAfter"].is_string());

    // Current certificates are read, never rewritten.
    let calls = h.reconcile().await;
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with(&format!("PATCH {SECRETS}"))),
        "{calls:?}"
    );
    // A lost member certificate is reissued alone, under the same CA.
    let ca_before = h.store.lock().objects[&format!("{SECRETS}/kv-ca")]["data"].clone();
    h.store.lock().delete(&format!("{SECRETS}/kv-member-1"));
    let calls = h.reconcile().await;
    let writes: Vec<&String> = calls
        .iter()
        .filter(|c| c.starts_with(&format!("PATCH {SECRETS}")))
        .collect();
    assert_eq!(writes, [&format!("PATCH {SECRETS}/kv-member-1")]);
    assert_eq!(
        h.store.lock().objects[&format!("{SECRETS}/kv-ca")]["data"],
        ca_before
    );
    // A certificate about to expire (here: minted by the test for one hour, under the
    // cluster's CA) is renewed for the full lifetime.
    let secret = |h: &Harness, name: &str| -> k8s_openapi::api::core::v1::Secret {
        serde_json::from_value(h.store.lock().objects[&format!("{SECRETS}/{name}")].clone())
            .expect("secret")
    };
    let text = |s: &k8s_openapi::api::core::v1::Secret, key: &str| {
        String::from_utf8(s.data.as_ref().expect("data")[key].0.clone()).expect("pem")
    };
    let ca_secret = secret(&h, "kv-ca");
    let ca = concord_operator::tls::certs::Ca {
        cert_pem: text(&ca_secret, "ca.crt"),
        key_pem: text(&ca_secret, "ca.key"),
    };
    let short = ca
        .issue(
            &concord_operator::tls::objects::member_leaf("kv", NS, 2),
            std::time::Duration::from_secs(3600),
        )
        .expect("issue");
    let mut member = secret(&h, "kv-member-2");
    member.data.as_mut().expect("data").insert(
        "tls.crt".into(),
        k8s_openapi::ByteString(short.cert_pem.into_bytes()),
    );
    let path = format!("{SECRETS}/kv-member-2");
    h.store
        .lock()
        .put(path, serde_json::to_value(&member).expect("json"));
    let calls = h.reconcile().await;
    assert!(
        calls.contains(&format!("PATCH {SECRETS}/kv-member-2")),
        "{calls:?}"
    );
    let renewed =
        concord_operator::tls::certs::inspect(&text(&secret(&h, "kv-member-2"), "tls.crt"))
            .expect("a certificate");
    let days = (renewed.not_after - concord_operator::tls::certs::now_seconds()) / 86_400;
    assert!(
        (89..=90).contains(&days),
        "renewed for the default 90 days: {days}"
    );

    // No private key in the status.
    assert!(!h.cr()["status"].to_string().contains("PRIVATE KEY"));
}
