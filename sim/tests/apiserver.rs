//! The simulated API server through a real client (kube-rs, as the operator uses it) over
//! HTTP: objects, resource versions and conflicts, label selectors, server-side apply with
//! field managers, the status and scale subresources, watches, finalizers, graceful pod
//! deletion, and garbage collection by owner references.

use std::collections::BTreeMap;
use std::time::Duration;

use concord_sim::apiserver::{http, ApiServer};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, Config};
use serde_json::json;

async fn client() -> (ApiServer, Client) {
    let api = ApiServer::new();
    let (addr, _task) = http::listen(api.clone(), "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("listen");
    std::mem::forget(_task);
    let config = Config::new(format!("http://{addr}").parse().expect("url"));
    (api, Client::try_from(config).expect("client"))
}

fn cm(name: &str, labels: &[(&str, &str)], data: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels.iter().cloned().collect::<BTreeMap<_, _>>()},
        "data": data.iter().cloned().collect::<BTreeMap<_, _>>(),
    }))
    .expect("configmap")
}

#[tokio::test]
async fn objects_versions_and_selectors() {
    let (_api, c) = client().await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "db");
    let a = cms
        .create(
            &PostParams::default(),
            &cm("a", &[("app", "kv")], &[("k", "1")]),
        )
        .await
        .expect("create");
    assert!(a.metadata.uid.is_some() && a.metadata.creation_timestamp.is_some());
    let e = cms
        .create(&PostParams::default(), &cm("a", &[], &[]))
        .await
        .expect_err("exists");
    assert!(matches!(e, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"));
    cms.create(&PostParams::default(), &cm("b", &[("app", "web")], &[]))
        .await
        .expect("b");
    let other: Api<ConfigMap> = Api::namespaced(c.clone(), "other");
    other
        .create(&PostParams::default(), &cm("c", &[("app", "kv")], &[]))
        .await
        .expect("c");
    let kv = cms
        .list(&ListParams::default().labels("app=kv"))
        .await
        .expect("list");
    assert_eq!(kv.items.len(), 1);
    let all: Api<ConfigMap> = Api::all(c.clone());
    let everywhere = all
        .list(&ListParams::default().labels("app in (kv)"))
        .await
        .expect("all");
    assert_eq!(everywhere.items.len(), 2);
    // A write from a stale read is refused.
    let mut stale = a.clone();
    let mut fresh = a.clone();
    fresh.data = Some([("k".to_string(), "2".to_string())].into());
    cms.replace("a", &PostParams::default(), &fresh)
        .await
        .expect("replace");
    stale.data = Some([("k".to_string(), "3".to_string())].into());
    let e = cms
        .replace("a", &PostParams::default(), &stale)
        .await
        .expect_err("stale");
    assert!(matches!(e, kube::Error::Api(s) if s.code == 409));
    // A Secret's stringData is folded into data, as the API server does.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(c.clone(), "db");
    let s: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "creds"}, "stringData": {"KEY": "v@lue"}}))
    .expect("secret");
    let stored = secrets
        .create(&PostParams::default(), &s)
        .await
        .expect("secret");
    assert!(stored.string_data.is_none());
    assert_eq!(
        stored.data.and_then(|d| d.get("KEY").cloned()).map(|b| b.0),
        Some(b"v@lue".to_vec())
    );
    cms.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    let e = cms.get("a").await.expect_err("gone");
    assert!(matches!(e, kube::Error::Api(s) if s.code == 404));
}

#[tokio::test]
async fn server_side_apply_tracks_each_managers_fields() {
    let (_api, c) = client().await;
    let cms: Api<ConfigMap> = Api::namespaced(c, "db");
    let apply = |data: serde_json::Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": data});
    cms.patch(
        "cfg",
        &PatchParams::apply("operator"),
        &Patch::Apply(apply(json!({"a": "1", "b": "2"}))),
    )
    .await
    .expect("first apply creates");
    // Another manager changes a: a conflict for the operator unless forced.
    cms.patch(
        "cfg",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"a": "x"}})),
    )
    .await
    .expect("merge");
    let e = cms
        .patch(
            "cfg",
            &PatchParams::apply("operator"),
            &Patch::Apply(apply(json!({"a": "1"}))),
        )
        .await
        .expect_err("conflict");
    assert!(
        matches!(&e, kube::Error::Api(s) if s.code == 409 && s.message.contains("data")),
        "{e:?}"
    );
    let done = cms
        .patch(
            "cfg",
            &PatchParams::apply("operator").force(),
            &Patch::Apply(apply(json!({"a": "1"}))),
        )
        .await
        .expect("forced");
    // b is no longer applied and nobody else owns it: removed.
    assert_eq!(done.data, Some([("a".to_string(), "1".to_string())].into()));
    let managers: Vec<String> = done
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(managers.contains(&"operator".to_string()), "{managers:?}");
}

#[tokio::test]
async fn status_and_scale_are_their_own_subresources() {
    let (_api, c) = client().await;
    let sts: Api<StatefulSet> = Api::namespaced(c, "db");
    let spec = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "kv"},
        "spec": {"replicas": 3, "serviceName": "kv", "selector": {"matchLabels": {"app": "kv"}},
                 "template": {"metadata": {"labels": {"app": "kv"}}, "spec": {"containers": [{"name": "n", "image": "i"}]}}},
        "status": {"replicas": 99}});
    let created = sts
        .patch("kv", &PatchParams::apply("op"), &Patch::Apply(&spec))
        .await
        .expect("apply");
    assert_eq!(created.metadata.generation, Some(1));
    assert!(
        created.status.is_none(),
        "status is not written through the object"
    );
    let st = sts
        .patch_status(
            "kv",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 2}, "spec": {"replicas": 7}})),
        )
        .await
        .expect("status");
    assert_eq!(st.status.map(|s| s.replicas), Some(2));
    assert_eq!(
        st.spec.and_then(|s| s.replicas),
        Some(3),
        "a status write changes nothing else"
    );
    assert_eq!(st.metadata.generation, Some(1));
    let scale = sts.get_scale("kv").await.expect("scale");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(3));
    sts.patch_scale(
        "kv",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 5}})),
    )
    .await
    .expect("scale");
    let now = sts.get("kv").await.expect("get");
    assert_eq!(now.spec.and_then(|s| s.replicas), Some(5));
    assert_eq!(
        now.metadata.generation,
        Some(2),
        "a spec change is a new generation"
    );
    assert_eq!(now.status.map(|s| s.replicas), Some(2));
}

#[tokio::test]
async fn watches_see_changes_as_they_happen() {
    let (_api, c) = client().await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "db");
    let mut events = watcher(cms.clone(), watcher::Config::default().labels("app=kv")).boxed();
    // The initial listing.
    let mut seen = Vec::new();
    let writer = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cms.create(&PostParams::default(), &cm("w", &[("app", "kv")], &[]))
            .await
            .expect("create");
        cms.create(&PostParams::default(), &cm("x", &[("app", "web")], &[]))
            .await
            .expect("other");
        cms.patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "v"}})),
        )
        .await
        .expect("modify");
        // No longer matching: gone from this watch.
        cms.patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app": "web"}}})),
        )
        .await
        .expect("relabel");
    };
    let reader = async {
        while let Some(e) = events.next().await {
            match e.expect("event") {
                watcher::Event::Apply(o) => seen.push(format!(
                    "apply {} {:?}",
                    o.metadata.name.clone().unwrap_or_default(),
                    o.data.clone().unwrap_or_default().get("k")
                )),
                watcher::Event::Delete(o) => {
                    seen.push(format!(
                        "delete {}",
                        o.metadata.name.clone().unwrap_or_default()
                    ));
                    break;
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(
        Duration::from_secs(10),
        futures::future::join(writer, reader),
    )
    .await
    .expect("in time");
    assert_eq!(seen, ["apply w None", "apply w Some(\"v\")", "delete w"]);
}

#[tokio::test]
async fn finalizers_grace_and_owners_govern_deletion() {
    let (_api, c) = client().await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "db");
    let mut held = cm("held", &[], &[]);
    held.metadata.finalizers = Some(vec!["example.com/cleanup".into()]);
    cms.create(&PostParams::default(), &held)
        .await
        .expect("create");
    cms.delete("held", &DeleteParams::default())
        .await
        .expect("delete");
    let marked = cms.get("held").await.expect("still there");
    assert!(marked.metadata.deletion_timestamp.is_some());
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([{"op": "remove", "path": "/metadata/finalizers"}]))
                .expect("patch"),
        ),
    )
    .await
    .expect("unfinalize");
    assert!(
        cms.get_opt("held").await.expect("get").is_none(),
        "finalized: gone"
    );

    // Dependents go with their owner; orphaned ones stay, without the reference.
    let owner = cms
        .create(&PostParams::default(), &cm("owner", &[], &[]))
        .await
        .expect("owner");
    let reference = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                            "uid": owner.metadata.uid, "controller": true}]);
    for name in ["dep1", "dep2"] {
        let mut d = cm(name, &[], &[]);
        d.metadata.owner_references = serde_json::from_value(reference.clone()).expect("refs");
        cms.create(&PostParams::default(), &d)
            .await
            .expect("dependent");
    }
    cms.delete("owner", &DeleteParams::default())
        .await
        .expect("delete owner");
    assert!(cms.get_opt("dep1").await.expect("get").is_none());
    let owner2 = cms
        .create(&PostParams::default(), &cm("owner2", &[], &[]))
        .await
        .expect("owner2");
    let mut d = cm("dep3", &[], &[]);
    d.metadata.owner_references = serde_json::from_value(json!([{"apiVersion": "v1",
        "kind": "ConfigMap", "name": "owner2", "uid": owner2.metadata.uid}]))
    .expect("refs");
    cms.create(&PostParams::default(), &d).await.expect("dep3");
    cms.delete("owner2", &DeleteParams::orphan())
        .await
        .expect("orphan");
    let kept = cms.get("dep3").await.expect("orphaned, kept");
    assert!(kept
        .metadata
        .owner_references
        .unwrap_or_default()
        .is_empty());

    // A pod is deleted gracefully: marked, then gone when its kubelet says so (grace 0).
    let pods: Api<Pod> = Api::namespaced(c, "db");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "i"}], "terminationGracePeriodSeconds": 30}}))
        .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("pod");
    pods.delete("p", &DeleteParams::default())
        .await
        .expect("delete");
    let terminating = pods.get("p").await.expect("terminating");
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(30));
    pods.delete("p", &DeleteParams::default().grace_period(0))
        .await
        .expect("now");
    assert!(pods.get_opt("p").await.expect("get").is_none());
}
