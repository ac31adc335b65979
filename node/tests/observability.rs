//! Metrics exposition and health probes on real processes.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::Cluster;

const WAIT: Duration = Duration::from_secs(15);

/// Every metric an operator alerts on; a rename must break this test, not a dashboard.
const REQUIRED: &[&str] = &[
    "concord_server_has_leader",
    "concord_server_is_leader",
    "concord_server_leader_changes_seen_total",
    "concord_server_current_term",
    "concord_server_commit_index",
    "concord_server_applied_index",
    "concord_server_snapshot_index",
    "concord_server_proposals_committed_total",
    "concord_server_proposals_applied_total",
    "concord_server_proposals_failed_total",
    "concord_server_proposals_pending",
    "concord_server_members",
    "concord_server_forwarded_requests_total",
    "concord_disk_log_fsync_duration_seconds",
    "concord_disk_log_written_bytes_total",
    "concord_disk_snapshot_save_duration_seconds",
    "concord_disk_snapshot_load_duration_seconds",
    "concord_disk_snapshot_size_bytes",
    "concord_disk_log_segments",
    "concord_disk_data_dir_bytes",
    "concord_peer_replication_lag_entries",
    "concord_peer_rpc_failures_total",
    "concord_peer_rpc_duration_seconds",
    "concord_http_request_duration_seconds",
    "concord_http_requests_in_flight",
    "concord_http_rejected_requests_total",
    "concord_store_keys",
    "concord_store_bytes",
    "concord_process_cpu_seconds_total",
    "concord_process_resident_memory_bytes",
    "concord_process_open_fds",
    "concord_build_info",
];

async fn scrape_text(c: &Cluster, i: usize) -> String {
    c.http
        .get(format!("{}/metrics", c.nodes[i].api()))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body")
}

async fn scrape(c: &Cluster, i: usize) -> prometheus_parse::Scrape {
    let text = scrape_text(c, i).await;
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("valid exposition")
}

fn value(s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_name_everything_and_move_with_writes() {
    let mut c = Cluster::start(3, "");
    let leader = c.wait_leader(WAIT).await;
    let follower = (leader + 1) % 3;
    for i in 0..20 {
        let (s, body) = c
            .set(follower, &format!("secret-key-{i}"), "secret-value")
            .await;
        assert_eq!(s, 200, "{body}");
    }
    let (s, _) = c.post_raw(follower, "/api/set", b"{bad".to_vec()).await;
    assert_eq!(s, 400);
    tokio::time::sleep(Duration::from_millis(700)).await;

    let l = scrape(&c, leader).await;
    let f = scrape(&c, follower).await;
    let names: BTreeSet<&str> = l.samples.iter().map(|s| s.metric.as_str()).collect();
    for name in REQUIRED {
        assert!(
            names.contains(name),
            "missing metric {name}; have {names:?}"
        );
    }
    assert!(value(&l, "concord_server_proposals_committed_total", None) >= 20.0);
    assert!(
        value(
            &f,
            "concord_server_forwarded_requests_total",
            Some(("kind", "write"))
        ) >= 20.0
    );
    assert!(value(&l, "concord_disk_log_fsync_duration_seconds", None) > 0.0);
    assert!(
        value(
            &f,
            "concord_http_rejected_requests_total",
            Some(("reason", "bad_request"))
        ) >= 1.0
    );
    assert_eq!(value(&l, "concord_server_is_leader", None), 1.0);
    assert_eq!(value(&f, "concord_server_is_leader", None), 0.0);
    assert_eq!(value(&f, "concord_server_has_leader", None), 1.0);
    assert_eq!(
        value(&l, "concord_server_members", Some(("role", "voter"))),
        3.0
    );
    assert!(value(&l, "concord_store_keys", None) >= 20.0);
    // Bounded cardinality: no key or value ever becomes a label.
    for s in l.samples.iter().chain(f.samples.iter()) {
        for (k, v) in s.labels.iter() {
            assert!(
                !v.contains("secret"),
                "label {k}={v} on {} leaks user data",
                s.metric
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_quorum_and_livez_never_does() {
    let mut c = Cluster::start(3, "");
    let leader = c.wait_leader(WAIT).await;
    let survivor = (leader + 1) % 3;
    // A follower is ready once it has heard from the leader and applied what it committed.
    let ready_by = Instant::now() + WAIT;
    loop {
        let (s, body) = c.get(survivor, "/readyz?verbose").await;
        if s == 200 {
            break;
        }
        assert!(Instant::now() < ready_by, "follower never ready: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The survivor loses its quorum: the leader and the third node die.
    for i in 0..3 {
        if i != survivor {
            c.kill9(i);
        }
    }
    let lost_at = Instant::now();
    let deadline = lost_at + WAIT;
    loop {
        let (live, _) = c.get(survivor, "/livez").await;
        assert_eq!(live, 200, "livez must not depend on peers");
        let (ready, body) = c.get(survivor, "/readyz?verbose").await;
        let has_leader = value(
            &scrape(&c, survivor).await,
            "concord_server_has_leader",
            None,
        );
        if ready == 503 && has_leader == 0.0 {
            assert!(
                body.as_str().unwrap_or_default().contains("[-]leader"),
                "{body}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still ready without a quorum: {ready} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("readyz went 503 {:?} after quorum loss", lost_at.elapsed());
    let (s, _) = c.get(survivor, "/readyz/leader").await;
    assert_eq!(s, 503);
    let (s, _) = c.get(survivor, "/readyz/applied").await;
    assert_eq!(s, 200, "the applied check alone still passes");
    // Heal.
    for i in 0..3 {
        if i != survivor {
            c.spawn(i);
        }
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let (ready, body) = c.get(survivor, "/readyz").await;
        if ready == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not ready after healing: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        value(
            &scrape(&c, survivor).await,
            "concord_server_has_leader",
            None
        ),
        1.0
    );
    let (s, _) = c.get(survivor, "/healthz").await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_and_raft_lines_name_the_node() {
    let env = vec![
        ("CONCORD_LOG_FORMAT".to_string(), "json".to_string()),
        ("CONCORD_LOG".to_string(), "info,openraft=info".to_string()),
    ];
    let mut c = Cluster::start_with_env(1, "", env);
    c.wait_leader(WAIT).await;
    c.set_retry("k", "v", Duration::from_secs(5)).await;
    c.terminate(0);
    let text = c.log_text(0);
    let mut raft_lines = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        assert_eq!(v["node"], "node1", "{line}");
        assert!(
            v["id"].as_u64().is_some() && v["term"].as_u64().is_some(),
            "{line}"
        );
        let target = v["target"].as_str().unwrap_or_default();
        if target.starts_with("openraft") {
            raft_lines += 1;
            assert!(
                v["id"].as_u64().unwrap_or(0) > 0,
                "raft line without the node id: {line}"
            );
        }
    }
    assert!(raft_lines > 0, "no openraft lines at info level:\n{text}");
}

/// `concord_*` names a file refers to (PromQL in alerts, dashboard queries).
fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("concord_") {
        let start = i + pos;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |e| start + e);
        // `concord_cluster` is the label our scrape configs add, not a metric.
        if boundary && &text[start..end] != "concord_cluster" {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboards_only_use_metrics_a_node_exports() {
    // A 3-node cluster with a write, scraped on the leader: every series exists there
    // (replication lag is per peer and only on a leader).
    let mut c = Cluster::start(3, "");
    let leader = c.wait_leader(WAIT).await;
    let (s, body) = c.set(leader, "k", "v").await;
    assert_eq!(s, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = scrape_text(&c, leader).await;
    let exported: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();

    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let files = [
        "charts/concordkv-cluster/files/alerts.yaml",
        "charts/concordkv-cluster/files/dashboard.json",
        "manifests/monitoring/prometheusrule.yaml",
        "manifests/monitoring/prometheus/concordkv.rules.yaml",
        "manifests/monitoring/dashboard.json",
    ];
    // Exported only by members with TLS configured (tests/tls.rs checks it there).
    let only_with_tls = ["concord_cert_expiry_timestamp_seconds"];
    let mut checked = 0;
    for f in files {
        let content = std::fs::read_to_string(format!("{root}/{f}")).expect("monitoring file");
        let used = referenced_metrics(&content);
        assert!(!used.is_empty(), "{f} uses no concord metric?");
        for name in used.iter().filter(|n| !only_with_tls.contains(&n.as_str())) {
            assert!(
                exported.contains(name.as_str()),
                "{f} uses {name}, which a running node does not export"
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} references checked");
}

/// Clients that hang up mid-request (a write waiting for a quorum that is gone, a linearizable
/// read waiting for its barrier) must not leave the in-flight gauges counting them forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_come_back_down_when_clients_hang_up() {
    use tokio::io::AsyncWriteExt;

    let mut c = Cluster::start(3, "");
    let leader = c.wait_leader(WAIT).await;
    for i in 0..3 {
        if i != leader {
            c.kill9(i);
        }
    }
    let body = r#"{"key":"k","value":"v"}"#;
    let requests = [
        format!(
            "POST /api/set HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ),
        "GET /api/get?key=k HTTP/1.1\r\nhost: x\r\n\r\n".to_string(),
    ];
    let addr = format!("127.0.0.1:{}", c.nodes[leader].api_port);
    let mut hung_up = 0;
    for _ in 0..3 {
        for req in &requests {
            let mut conn = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            conn.write_all(req.as_bytes()).await.expect("send");
            // Long enough for the request to be waiting inside the node, then hang up.
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(conn);
            hung_up += 1;
        }
    }
    assert_eq!(hung_up, 6);
    // Without a quorum nothing completes; only the scrape itself may be in flight.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let s = scrape(&c, leader).await;
        let in_flight = value(&s, "concord_http_requests_in_flight", None);
        let pending = value(&s, "concord_server_proposals_pending", None);
        if in_flight == 1.0 && pending == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gauges stayed up after the clients left: in flight {in_flight}, pending {pending}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The log held in memory is bounded by bytes, not by the snapshot schedule: past
/// `raft.maxLogMemoryBytes` applied entries are evicted (no snapshot is needed for that), a
/// follower that was down catches up from entries the leader reads back from disk, and every
/// value stays readable, also after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_held_in_memory_is_bounded_by_bytes() {
    const BUDGET: f64 = 1024.0 * 1024.0;
    // Continues FAST_RAFT's `raft:` section.
    let mut c = Cluster::start(3, "  maxLogMemoryBytes: 1048576\n");
    let leader = c.wait_leader(WAIT).await;
    let down = (leader + 1) % 3;
    c.kill9(down);
    let big = "v".repeat(200 * 1024);
    for i in 0..40 {
        let (code, body) = c.set(leader, &format!("big/{i}"), &big).await;
        assert_eq!(code, 200, "{body}");
    }
    // 8 MB written; without the bound all of it would stay in memory until a snapshot.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = scrape(&c, leader).await;
        let held = value(&s, "concord_server_log_memory_bytes", None);
        if held <= BUDGET {
            // The entry-count threshold (10,000) is far off: nothing was snapshotted.
            let snapshot = value(&s, "concord_server_snapshot_index", None);
            assert_eq!(snapshot, 0.0, "a snapshot was taken");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "log memory stayed at {held} bytes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The follower catches up from the log (there is no snapshot to send).
    c.spawn(down);
    c.wait_value(down, "big/39", &big, Duration::from_secs(20))
        .await;
    c.wait_value(down, "big/0", &big, Duration::from_secs(5))
        .await;
    c.terminate(leader);
    c.spawn(leader);
    let leader = c.wait_leader(WAIT).await;
    for i in [0, 17, 39] {
        let (code, body) = c.get(leader, &format!("/api/get?key=big/{i}")).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["value"].as_str().map(str::len), Some(big.len()));
    }
}
