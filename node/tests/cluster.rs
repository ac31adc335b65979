//! Real-process cluster tests: formation, forwarding, failover, crash recovery, snapshots.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Cluster;
use parking_lot::Mutex;

const LEADER_WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_from_seed_yaml_and_followers_forward() {
    let mut c = Cluster::start(3, "");
    let leader = c.wait_leader(LEADER_WAIT).await;
    let follower = (leader + 1) % 3;
    let (s, body) = c.set(follower, "greeting", "hello").await;
    assert_eq!(s, 200, "{body}");
    assert!(body["revision"].as_u64().unwrap() > 0);
    // A linearizable read through every node sees the write immediately.
    for i in 0..3 {
        let (s, body) = c.get(i, "/api/get?key=greeting").await;
        assert_eq!(
            (s, body["value"].as_str()),
            (200, Some("hello")),
            "node {i}: {body}"
        );
    }
    // Every node eventually applies it locally.
    for i in 0..3 {
        c.wait_value(i, "greeting", "hello", Duration::from_secs(5))
            .await;
    }
    // All agree on membership and cluster id.
    let ids: Vec<_> = futures::future::join_all((0..3).map(|i| c.status(i)))
        .await
        .into_iter()
        .map(|s| s.expect("status")["clusterId"].clone())
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0] && id.is_string()));
    let st = c.status(0).await.expect("status");
    assert_eq!(st["voters"].as_array().map(|v| v.len()), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill9_fails_over_and_restarted_node_catches_up() {
    let mut c = Cluster::start(3, "");
    let old = c.wait_leader(LEADER_WAIT).await;
    for i in 0..20 {
        c.set_retry(&format!("before-{i}"), "v", Duration::from_secs(5))
            .await;
    }
    c.kill9(old);
    let killed_at = Instant::now();
    let new = c.wait_leader(LEADER_WAIT).await;
    let failover = killed_at.elapsed();
    assert_ne!(new, old);
    // Election timeout max is 600ms here: a new leader within a few timeouts.
    assert!(
        failover < Duration::from_secs(5),
        "failover took {failover:?}"
    );
    eprintln!("failover after kill -9 of the leader: {failover:?}");
    for i in 0..20 {
        c.set_retry(&format!("after-{i}"), "w", Duration::from_secs(5))
            .await;
    }
    c.spawn(old);
    c.wait_value(old, "after-19", "w", Duration::from_secs(15))
        .await;
    c.wait_value(old, "before-0", "v", Duration::from_secs(5))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_of_every_node_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3, "");
    c.wait_leader(LEADER_WAIT).await;
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let stop_at = Instant::now() + Duration::from_secs(2);
    let mut writers = Vec::new();
    for w in 0..8 {
        let http = c.http.clone();
        let api = c.nodes[w % 3].api();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < stop_at {
                let key = format!("w{w}-{n}");
                let value = format!("value-{w}-{n}");
                let r = http
                    .post(format!("{api}/api/set"))
                    .json(&serde_json::json!({ "key": key, "value": value }))
                    .send()
                    .await;
                if matches!(&r, Ok(resp) if resp.status().as_u16() == 200) {
                    acked.lock().insert(key, value);
                }
                n += 1;
            }
        }));
    }
    // Crash every node while writes are in flight.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..3 {
        c.kill9(i);
    }
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().clone();
    assert!(
        acked.len() > 50,
        "too few writes acknowledged: {}",
        acked.len()
    );
    for i in 0..3 {
        c.spawn(i);
    }
    let leader = c.wait_leader(LEADER_WAIT).await;
    for (k, v) in &acked {
        let (s, body) = c.get(leader, &format!("/api/get?key={k}")).await;
        assert_eq!(
            (s, body["value"].as_str()),
            (200, Some(v.as_str())),
            "acknowledged write {k} lost"
        );
    }
    eprintln!(
        "{} acknowledged writes survived kill -9 of every node",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_behind_follower_catches_up_through_a_snapshot() {
    // Count-based snapshots (ratio 0), so the leader purges past what the lagging node has.
    let extra = "  snapshotThreshold: 20\n  snapshotLogRatio: 0\n  logsToKeepAfterSnapshot: 0\n";
    let mut c = Cluster::start(3, extra);
    let leader = c.wait_leader(LEADER_WAIT).await;
    let lagger = (leader + 1) % 3;
    c.kill9(lagger);
    // 30 kB values: the snapshot (~4.5 MB) crosses several 1 MiB chunks on the wire.
    let value = |i: usize| format!("v{i}-{}", "x".repeat(30_000));
    for i in 0..150 {
        c.set_retry(&format!("k{i:03}"), &value(i), Duration::from_secs(5))
            .await;
    }
    // The leader has snapshotted and purged the entries the lagging node lacks.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = c.status(leader).await.expect("leader status");
        if st["purgedIndex"].as_u64().unwrap_or(0) > 100 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leader never purged its log: {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.spawn(lagger);
    c.wait_value(lagger, "k149", &value(149), Duration::from_secs(20))
        .await;
    c.wait_value(lagger, "k000", &value(0), Duration::from_secs(5))
        .await;
    let st = c.status(lagger).await.expect("status");
    assert!(
        st["lastSnapshot"].is_object(),
        "lagging node has no snapshot: {st}"
    );
    // Received chunk by chunk into one file, with no temporary file left over. The node may
    // be writing a snapshot of its own at this moment (its threshold is 20 entries): a
    // `partial-` file then exists until that one is installed, so wait for a quiet moment.
    let list = || -> Vec<String> {
        std::fs::read_dir(c.nodes[lagger].data_dir.join("snapshots"))
            .expect("snapshot dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    };
    let quiet_by = Instant::now() + Duration::from_secs(10);
    let mut snapshots = list();
    while snapshots.len() != 1 && Instant::now() < quiet_by {
        tokio::time::sleep(Duration::from_millis(50)).await;
        snapshots = list();
    }
    assert_eq!(snapshots.len(), 1, "snapshot dir: {snapshots:?}");
    assert!(
        snapshots[0].ends_with(".snap"),
        "snapshot dir: {snapshots:?}"
    );
    // And it survives its own restart from that snapshot.
    c.kill9(lagger);
    c.spawn(lagger);
    c.wait_value(lagger, "k075", &value(75), Duration::from_secs(15))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_leader_hands_over_and_exits_cleanly() {
    let mut c = Cluster::start(3, "");
    let leader = c.wait_leader(LEADER_WAIT).await;
    c.set_retry("k", "v", Duration::from_secs(5)).await;
    let stopped_at = Instant::now();
    let code = c.terminate(leader);
    assert_eq!(
        code,
        Some(0),
        "graceful shutdown exit code\n{}",
        c.log_text(leader)
    );
    assert!(
        c.log_text(leader).contains("transferring leadership"),
        "leader did not hand over:\n{}",
        c.log_text(leader)
    );
    let new = c.wait_leader(LEADER_WAIT).await;
    assert_ne!(new, leader);
    eprintln!("leader change after SIGTERM: {:?}", stopped_at.elapsed());
    c.set_retry("k2", "v2", Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_restart_keeps_data_and_concordctl_check_passes() {
    let mut c = Cluster::start(1, "");
    c.wait_leader(LEADER_WAIT).await;
    c.set_retry("persist", "yes", Duration::from_secs(5)).await;
    let api = c.nodes[0].api();
    let out = std::process::Command::new(common::CTL_BIN)
        .args(["--endpoints", &api, "check"])
        .output()
        .expect("run concordctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "concordctl check failed:\n{text}");
    assert!(text.contains("all checks passed"));
    c.kill9(0);
    c.spawn(0);
    c.wait_leader(LEADER_WAIT).await;
    let (s, body) = c.get(0, "/api/get?key=persist").await;
    assert_eq!((s, body["value"].as_str()), (200, Some("yes")));
}

/// A gauge's value in a node's /metrics.
async fn gauge(c: &Cluster, i: usize, name: &str) -> Option<f64> {
    let (_, text) = c.get(i, "/metrics").await;
    text.as_str()?
        .lines()
        .find(|l| l.split(' ').next() == Some(name))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_compacted_automatically_at_the_same_revision_on_every_member() {
    let extra = "compaction:\n  mode: revision\n  retention: 10\n";
    let mut c = Cluster::start(3, extra);
    c.wait_leader(LEADER_WAIT).await;
    for i in 0..60 {
        c.set_retry(
            "hot",
            &format!("v{i}-{}", "x".repeat(1000)),
            Duration::from_secs(5),
        )
        .await;
    }
    // The leader proposes compaction to its revision minus 10; every member applies it.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut seen = Vec::new();
        for i in 0..3 {
            seen.push((
                gauge(&c, i, "concord_store_revision").await.unwrap_or(0.0),
                gauge(&c, i, "concord_store_compacted_revision")
                    .await
                    .unwrap_or(0.0),
                gauge(&c, i, "concord_store_history_bytes")
                    .await
                    .unwrap_or(f64::MAX),
            ));
        }
        let agreed = seen.windows(2).all(|w| w[0] == w[1]);
        let (revision, compacted, history) = seen[0];
        if agreed && compacted > 0.0 && revision - compacted <= 10.0 && history < 20_000.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not compacted alike (revision, compacted, history bytes): {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // What was compacted stays compacted across a restart (log replay or snapshot).
    let before = gauge(&c, 1, "concord_store_compacted_revision").await;
    c.kill9(1);
    c.spawn(1);
    c.wait_value(
        1,
        "hot",
        &format!("v59-{}", "x".repeat(1000)),
        Duration::from_secs(15),
    )
    .await;
    assert!(gauge(&c, 1, "concord_store_compacted_revision").await >= before);
}
