//! The whole controller — watches of ConcordClusters and owned objects, the reconcile loop,
//! requeues — against the fake API server (list + watch) and the in-memory Raft cluster: a new
//! ConcordCluster reaches Running, and a spec change (scale) is picked up from the watch.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

async fn wait_for(h: &Harness, what: &str, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Play the StatefulSet controller between reconciles.
        h.run_statefulset_controller();
        let cr = h.cr();
        if done(&cr) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not reached; status: {}",
            cr["status"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn running_with(members: usize) -> impl Fn(&Value) -> bool {
    move |cr: &Value| {
        cr["status"]["phase"] == "Running"
            && cr["status"]["members"].as_array().map(Vec::len) == Some(members)
            && cr["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Progressing" && c["status"] == "False")
            })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_creates_a_cluster_and_follows_spec_changes() {
    let h = Harness::new(json!({"replicas": 3}));
    let controller = tokio::spawn(concord_operator::controller::run(
        h.ctx.client.clone(),
        h.ctx.clone(),
        Some(NS.to_string()),
    ));

    wait_for(&h, "3 running members", running_with(3)).await;
    assert_eq!(
        h.cr()["metadata"]["finalizers"],
        json!(["concordkv.io/cleanup"])
    );
    let log = h.admin_log();
    assert_eq!(
        log,
        [
            "init kv-0",
            "add-learner kv-1",
            "promote kv-1",
            "add-learner kv-2",
            "promote kv-2"
        ]
    );

    // `kubectl scale` changes spec.replicas: the watch brings it in.
    h.edit_spec(|s| s["replicas"] = 5.into());
    wait_for(&h, "5 running members", running_with(5)).await;
    assert_eq!(h.store.lock().objects[STS]["spec"]["replicas"], 5);
    assert_eq!(
        h.admin_log(),
        [
            "add-learner kv-3",
            "promote kv-3",
            "add-learner kv-4",
            "promote kv-4"
        ]
    );
    controller.abort();
}
