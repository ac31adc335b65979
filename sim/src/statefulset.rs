//! The StatefulSet controller, as much of it as ConcordKV's StatefulSets use: pods
//! `NAME-0..N-1` from the template (labelled with the template's revision), a claim per pod
//! from each `volumeClaimTemplate` with the retention policy honoured, `Parallel` (all at
//! once) or `OrderedReady` pod management, `OnDelete` updates (a pod is replaced by the new
//! template only once something deletes it) and `RollingUpdate` (highest ordinal first, one at
//! a time, when all are ready), and the status.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use serde_json::{json, Value};

use crate::apiserver::{ApiServer, DeleteOptions, WriteOptions};

const MANAGER: &str = "statefulset-controller";
pub const REVISION_LABEL: &str = "controller-revision-hash";

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// `<name>-<10 hex of the template>`: changes exactly when the template does.
pub fn revision(sts: &Value) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    sts["spec"]["template"].to_string().hash(&mut h);
    format!(
        "{}-{:010x}",
        s(&sts["metadata"]["name"]),
        h.finish() & 0xff_ffff_ffff
    )
}

fn owner_ref(obj: &Value, kind: &str, api_version: &str, controller: bool) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "name": obj["metadata"]["name"],
           "uid": obj["metadata"]["uid"], "controller": controller, "blockOwnerDeletion": true})
}

pub fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

fn claim_name(template: &Value, sts: &str, ordinal: i64) -> String {
    format!("{}-{sts}-{ordinal}", s(&template["metadata"]["name"]))
}

/// The pod for `ordinal` from the current template.
fn pod_for(sts: &Value, ordinal: i64, rev: &str) -> Value {
    let name = s(&sts["metadata"]["name"]);
    let ns = s(&sts["metadata"]["namespace"]);
    let template = &sts["spec"]["template"];
    let pod_name = format!("{name}-{ordinal}");
    let mut labels = template["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    labels[REVISION_LABEL] = rev.into();
    labels["statefulset.kubernetes.io/pod-name"] = pod_name.clone().into();
    labels["apps.kubernetes.io/pod-index"] = ordinal.to_string().into();
    let mut spec = template["spec"].clone();
    spec["hostname"] = pod_name.clone().into();
    spec["subdomain"] = sts["spec"]["serviceName"].clone();
    let mut volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
    for t in sts["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
    {
        volumes.push(json!({"name": t["metadata"]["name"],
            "persistentVolumeClaim": {"claimName": claim_name(t, &name, ordinal)}}));
    }
    spec["volumes"] = Value::Array(volumes);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name, "namespace": ns, "labels": labels,
                     "annotations": template["metadata"]["annotations"],
                     "ownerReferences": [owner_ref(sts, "StatefulSet", "apps/v1", true)]},
        "spec": spec,
        "status": {"phase": "Pending"},
    })
}

/// One pass over every StatefulSet.
pub fn reconcile_all(api: &ApiServer) {
    for sts in api.list_path("/apis/apps/v1/statefulsets", "") {
        if sts["metadata"]["deletionTimestamp"].is_null() {
            if let Err(e) = reconcile(api, &sts) {
                tracing::warn!(error = %e, "statefulset controller");
            }
        }
    }
}

pub async fn run(api: ApiServer) {
    loop {
        let changed = api.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        reconcile_all(&api);
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

fn reconcile(api: &ApiServer, sts: &Value) -> Result<(), crate::apiserver::ApiError> {
    let name = s(&sts["metadata"]["name"]);
    let ns = s(&sts["metadata"]["namespace"]);
    let replicas = sts["spec"]["replicas"].as_i64().unwrap_or(1);
    let rev = revision(sts);
    let parallel = sts["spec"]["podManagementPolicy"] == "Parallel";
    let rolling = sts["spec"]["updateStrategy"]["type"] != "OnDelete";
    let retention = &sts["spec"]["persistentVolumeClaimRetentionPolicy"];
    let delete_when_deleted = retention["whenDeleted"] == "Delete";
    let delete_when_scaled = retention["whenScaled"] == "Delete";
    let pods_path = format!("/api/v1/namespaces/{ns}/pods");
    let claims_path = format!("/api/v1/namespaces/{ns}/persistentvolumeclaims");
    let pod = |o: i64| api.get_path(&format!("{pods_path}/{name}-{o}"));
    let templates = sts["spec"]["volumeClaimTemplates"]
        .as_array()
        .cloned()
        .unwrap_or_default();

    // Pods and claims for every ordinal below replicas.
    for o in 0..replicas {
        for t in &templates {
            let claim = claim_name(t, &name, o);
            if api.get_path(&format!("{claims_path}/{claim}")).is_none() {
                let mut pvc = json!({
                    "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": claim, "namespace": ns, "labels": t["metadata"]["labels"]},
                    "spec": t["spec"],
                });
                if delete_when_deleted {
                    pvc["metadata"]["ownerReferences"] =
                        json!([owner_ref(sts, "StatefulSet", "apps/v1", false)]);
                }
                let target = ApiServer::target(&claims_path)?;
                api.create(&target, pvc, MANAGER)?;
                let bound = ApiServer::target(&format!(
                    "{claims_path}/{}/status",
                    claim_name(t, &name, o)
                ))?;
                api.patch(
                    &bound,
                    "application/merge-patch+json",
                    json!({"status": {"phase": "Bound"}}),
                    &WriteOptions {
                        manager: MANAGER.into(),
                        force: false,
                    },
                )?;
            }
        }
        if pod(o).is_none() {
            // OrderedReady: one at a time, each after the one before it is ready.
            let before_ready = parallel || o == 0 || pod(o - 1).is_some_and(|p| is_ready(&p));
            if before_ready {
                api.create(
                    &ApiServer::target(&pods_path)?,
                    pod_for(sts, o, &rev),
                    MANAGER,
                )?;
            }
            if !parallel {
                break;
            }
        }
    }
    // Pods past replicas go (highest first when ordered); a claim that goes with them is
    // handed to its pod first.
    let mut extra: Vec<Value> = api
        .list_path(&pods_path, "")
        .into_iter()
        .filter(|p| {
            p["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["uid"] == sts["metadata"]["uid"]))
        })
        .filter(|p| {
            s(&p["metadata"]["labels"]["apps.kubernetes.io/pod-index"])
                .parse::<i64>()
                .is_ok_and(|o| o >= replicas)
        })
        .collect();
    extra.sort_by_key(|p| {
        std::cmp::Reverse(
            s(&p["metadata"]["labels"]["apps.kubernetes.io/pod-index"])
                .parse::<i64>()
                .unwrap_or(0),
        )
    });
    for p in extra.iter().take(if parallel { usize::MAX } else { 1 }) {
        if !p["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let o: i64 = s(&p["metadata"]["labels"]["apps.kubernetes.io/pod-index"])
            .parse()
            .unwrap_or(0);
        if delete_when_scaled {
            for t in &templates {
                let path = format!("{claims_path}/{}", claim_name(t, &name, o));
                if let Some(mut pvc) = api.get_path(&path) {
                    let mut refs = pvc["metadata"]["ownerReferences"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    refs.push(owner_ref(p, "Pod", "v1", false));
                    pvc["metadata"]["ownerReferences"] = Value::Array(refs);
                    api.replace(&ApiServer::target(&path)?, pvc, MANAGER)?;
                }
            }
        }
        let path = format!("{pods_path}/{}", s(&p["metadata"]["name"]));
        api.delete(&ApiServer::target(&path)?, &DeleteOptions::default())?;
    }
    // RollingUpdate: one outdated pod at a time, highest first, when every pod is ready.
    let current: Vec<Value> = (0..replicas).filter_map(pod).collect();
    if rolling
        && current.len() as i64 == replicas
        && current
            .iter()
            .all(|p| is_ready(p) && p["metadata"]["deletionTimestamp"].is_null())
    {
        if let Some(p) = current
            .iter()
            .rev()
            .find(|p| p["metadata"]["labels"][REVISION_LABEL] != rev.as_str())
        {
            let path = format!("{pods_path}/{}", s(&p["metadata"]["name"]));
            api.delete(&ApiServer::target(&path)?, &DeleteOptions::default())?;
        }
    }
    // Status.
    let ready = current.iter().filter(|p| is_ready(p)).count();
    let updated = current
        .iter()
        .filter(|p| p["metadata"]["labels"][REVISION_LABEL] == rev.as_str())
        .count();
    // The revision the pods ran before this update: kept until every pod runs the new one.
    let previous = s(&sts["status"]["currentRevision"]);
    let current_rev = if updated == current.len() || previous.is_empty() {
        rev.clone()
    } else {
        previous
    };
    let on_current = current
        .iter()
        .filter(|p| p["metadata"]["labels"][REVISION_LABEL] == current_rev.as_str())
        .count();
    let status = json!({
        "observedGeneration": sts["metadata"]["generation"],
        "replicas": current.len(), "readyReplicas": ready, "availableReplicas": ready,
        "currentReplicas": on_current, "updatedReplicas": updated,
        "updateRevision": rev, "currentRevision": current_rev,
    });
    let mut merged = sts["status"].clone();
    if !merged.is_object() {
        merged = json!({});
    }
    json_patch::merge(&mut merged, &status);
    if merged != sts["status"] {
        let target = ApiServer::target(&format!(
            "/apis/apps/v1/namespaces/{ns}/statefulsets/{name}/status"
        ))?;
        api.patch(
            &target,
            "application/merge-patch+json",
            json!({"status": status}),
            &WriteOptions {
                manager: MANAGER.into(),
                force: false,
            },
        )?;
    }
    Ok(())
}
