//! Watch, checked with clients nobody here wrote: Debian's `etcdctl watch` as a child process
//! (its output parsed as a script would) and the `etcd-client` crate, against a real
//! three-node cluster, through followers.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{etcdctl, json, Cluster, Streamed};
use etcd_client::{Client, EventType, WatchOptions};
use serde_json::Value;

const LEADER_WAIT: Duration = Duration::from_secs(15);

fn unb64(v: &Value) -> String {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap_or_default())
        .expect("base64");
    String::from_utf8(bytes).expect("utf8")
}

/// `etcdctl watch ... -w json` running in the background; its responses as they arrive.
struct EtcdctlWatch(Streamed);

impl EtcdctlWatch {
    fn start(endpoint: &str, args: &[&str]) -> EtcdctlWatch {
        let mut all = vec!["watch"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-w", "json"]);
        EtcdctlWatch(Streamed::etcdctl(endpoint, &all))
    }

    /// (type, key, value, mod revision) of every event received until `n` have arrived.
    fn events(&self, n: usize, timeout: Duration) -> Vec<(String, String, String, i64)> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(line) = self.0.line(left) else {
                panic!("only {} of {n} events arrived: {got:?}", got.len());
            };
            let resp = json(&line);
            for e in resp["Events"].as_array().into_iter().flatten() {
                let kind = if e["type"] == 1 { "DELETE" } else { "PUT" };
                got.push((
                    kind.to_string(),
                    unb64(&e["kv"]["key"]),
                    unb64(&e["kv"]["value"]),
                    e["kv"]["mod_revision"].as_i64().expect("mod_revision"),
                ));
            }
        }
        got
    }
}

fn revision_of(put_output: &str) -> i64 {
    json(put_output)["header"]["revision"]
        .as_i64()
        .expect("revision")
}

/// `etcdctl watch --prefix --rev N` on a follower sees exactly the changes from N on: history
/// first, then live puts, deletes and a transaction's changes, in order, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_from_a_past_revision_sees_exactly_the_changes() {
    let mut c = Cluster::start(3, "");
    let leader = c.wait_leader(LEADER_WAIT).await;
    let follower = c.nodes[(leader + 1) % 3].etcd();
    let at = |cmd: &[&str]| etcdctl(&c.nodes[leader].etcd(), cmd);
    at(&["put", "w/0", "before"]);
    let from = revision_of(&at(&["put", "w/1", "a", "-w", "json"]));
    at(&["put", "other", "x"]);
    at(&["put", "w/2", "b"]);
    let watch = EtcdctlWatch::start(&follower, &["--prefix", "w/", "--rev", &from.to_string()]);
    // History, as soon as it starts.
    let history = watch.events(2, Duration::from_secs(10));
    assert_eq!(
        history
            .iter()
            .map(|e| (&*e.0, &*e.1, &*e.2))
            .collect::<Vec<_>>(),
        [("PUT", "w/1", "a"), ("PUT", "w/2", "b")]
    );
    assert_eq!(history[0].3, from);
    // Live changes, through another member.
    at(&["put", "w/3", "c"]);
    at(&["del", "w/1"]);
    at(&["put", "unwatched", "x"]);
    let txn = common::etcdctl_stdin(
        &c.nodes[leader].etcd(),
        &["txn", "-w", "json"],
        Some("\nput w/4 d\nput w/5 e\n\n\n"),
    )
    .expect("txn");
    assert_eq!(json(&txn)["succeeded"], true, "{txn}");
    let live = watch.events(4, Duration::from_secs(10));
    assert_eq!(
        live.iter()
            .map(|e| (&*e.0, &*e.1, &*e.2))
            .collect::<Vec<_>>(),
        [
            ("PUT", "w/3", "c"),
            ("DELETE", "w/1", ""),
            ("PUT", "w/4", "d"),
            ("PUT", "w/5", "e")
        ]
    );
    // The transaction's two changes share its revision; revisions only grow.
    assert_eq!(live[2].3, live[3].3);
    assert!(history
        .iter()
        .chain(&live)
        .collect::<Vec<_>>()
        .windows(2)
        .all(|w| w[0].3 <= w[1].3));
}

/// The etcd client crate: a watch from before the compaction point is canceled with
/// `compact_revision`; progress is reported on request; 100 watches share one stream and
/// each sees only its own key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_client_crate_watches_compaction_progress_and_many_watches_on_one_stream() {
    let mut c = Cluster::start(3, "");
    let leader = c.wait_leader(LEADER_WAIT).await;
    let follower = c.nodes[(leader + 1) % 3].etcd();
    let mut client = Client::connect([follower.clone()], None)
        .await
        .expect("connect");
    for i in 0..5 {
        client.put("c/k", format!("{i}"), None).await.expect("put");
    }
    let latest = client.get("c/k", None).await.expect("get");
    let compacted = latest.kvs()[0].mod_revision();
    client.compact(compacted, None).await.expect("compact");

    // Compacted start: created, then canceled with the compaction revision.
    let mut old = client
        .watch("c/k", Some(WatchOptions::new().with_start_revision(1)))
        .await
        .expect("watch");
    let created = old.message().await.expect("message").expect("created");
    assert!(created.created());
    let canceled = old.message().await.expect("message").expect("canceled");
    assert!(canceled.canceled(), "{canceled:?}");
    assert_eq!(canceled.compact_revision(), compacted);

    // 100 watches on one stream, each on its own key.
    let mut stream = client.watch("m/0", None).await.expect("watch");
    let mut ids = vec![stream
        .message()
        .await
        .expect("message")
        .expect("created")
        .watch_id()];
    for i in 1..100 {
        stream.watch(format!("m/{i}"), None).await.expect("watch");
        let created = stream.message().await.expect("message").expect("created");
        assert!(created.created());
        ids.push(created.watch_id());
    }
    let distinct: std::collections::HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), 100, "{ids:?}");
    for i in (0..100).rev() {
        client
            .put(format!("m/{i}"), format!("v{i}"), None)
            .await
            .expect("put");
    }
    let mut seen = std::collections::HashMap::new();
    while seen.len() < 100 {
        let resp = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("events in time")
            .expect("message")
            .expect("a response");
        for e in resp.events() {
            assert_eq!(e.event_type(), EventType::Put);
            let key = e.kv().expect("kv").key_str().expect("utf8").to_string();
            let i = ids
                .iter()
                .position(|id| *id == resp.watch_id())
                .expect("known id");
            assert_eq!(
                key,
                format!("m/{i}"),
                "watch {} got another key",
                resp.watch_id()
            );
            assert!(seen.insert(i, key).is_none(), "watch {i} got its key twice");
        }
    }

    // Progress on request: the revision every change up to which has been sent — this
    // member's, which reaches a write acknowledged by the leader once it has applied it.
    let now = client.put("m/unwatched", "x", None).await.expect("put");
    let now = now.header().expect("header").revision();
    let mut reached = 0;
    for _ in 0..50 {
        stream.request_progress().await.expect("request progress");
        let progress = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("progress in time")
            .expect("message")
            .expect("a response");
        assert!(progress.events().is_empty(), "{progress:?}");
        assert_eq!(progress.watch_id(), -1);
        reached = progress.header().expect("header").revision();
        if reached >= now {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reached >= now, "progress stayed at {reached}, below {now}");
}

/// A watch is a request that lasts: quiet for longer than the connection header and idle
/// timeouts, it still delivers — over gRPC and over the JSON gateway's `POST /v3/watch`,
/// which streams one `{"result": ...}` object per line as grpc-gateway does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_watch_streams_outlive_the_connection_timeouts_on_grpc_and_the_gateway() {
    let mut c = Cluster::start(
        3,
        "limits:\n  headerReadTimeoutMs: 300\n  idleTimeoutMs: 600\n",
    );
    let leader = c.wait_leader(LEADER_WAIT).await;
    let follower = (leader + 1) % 3;
    let mut client = Client::connect([c.nodes[follower].etcd()], None)
        .await
        .expect("connect");
    let mut grpc = client.watch("quiet", None).await.expect("watch");
    assert!(grpc
        .message()
        .await
        .expect("message")
        .expect("created")
        .created());

    let body = serde_json::json!({ "create_request": { "key": common::b64("quiet") } });
    let resp = c
        .http
        .post(format!("http://{}/v3/watch", c.nodes[follower].etcd()))
        .timeout(Duration::from_secs(30))
        .json(&body)
        .send()
        .await
        .expect("gateway watch");
    assert_eq!(resp.status(), 200);
    let mut resp = resp;
    let mut buffered = Vec::new();
    let mut next_line = async || -> Value {
        loop {
            if let Some(end) = buffered.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffered.drain(..=end).collect();
                return serde_json::from_slice(&line).expect("a JSON line");
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
                .await
                .expect("a line in time")
                .expect("bytes")
                .expect("the stream goes on");
            buffered.extend_from_slice(&chunk);
        }
    };
    let created = next_line().await;
    assert_eq!(created["result"]["created"], true, "{created}");

    tokio::time::sleep(Duration::from_secs(2)).await;
    client.put("quiet", "at last", None).await.expect("put");
    let event = tokio::time::timeout(Duration::from_secs(10), grpc.message())
        .await
        .expect("an event in time")
        .expect("message")
        .expect("the stream is still open");
    assert_eq!(event.events()[0].kv().expect("kv").value(), b"at last");
    let line = next_line().await;
    let kv = &line["result"]["events"][0]["kv"];
    assert_eq!(unb64(&kv["value"]), "at last", "{line}");
    assert!(kv["mod_revision"].is_string(), "int64 as a string: {line}");
}

/// `curl -N` on the seed API's Server-Sent Events, as a user streams it; its frames as
/// (event, id, data).
struct Curl(Streamed);

impl Curl {
    fn start(url: &str, last_event_id: Option<&str>) -> Curl {
        let mut cmd = Command::new("curl");
        cmd.args(["-N", "-s", url]);
        if let Some(id) = last_event_id {
            cmd.args(["-H", &format!("Last-Event-ID: {id}")]);
        }
        Curl(Streamed::spawn(&mut cmd))
    }

    /// The next frame: its lines up to the blank one that ends it.
    fn next_frame(&self) -> (String, String, Value) {
        let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
        loop {
            let line = self
                .0
                .line(Duration::from_secs(10))
                .expect("a frame in time");
            if let Some(v) = line.strip_prefix("event: ") {
                event = v.to_string();
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = v.to_string();
            } else if line.is_empty() && !event.is_empty() {
                return (
                    event,
                    id,
                    serde_json::from_str(&data).unwrap_or(Value::Null),
                );
            }
        }
    }

    /// The next `n` change frames (put/delete), skipping progress.
    fn changes(&self, n: usize) -> Vec<(String, String, Value)> {
        let mut got = Vec::new();
        while got.len() < n {
            let f = self.next_frame();
            if f.0 != "progress" {
                got.push(f);
            }
        }
        got
    }
}

/// The seed API's watch as Server-Sent Events with curl: history from a revision, live
/// changes (a transaction's two changes get ids inside its revision), a reconnect with
/// `Last-Event-ID` in the middle of that transaction resumes with nothing missed or repeated,
/// quiet streams get progress events, and a compacted start gets `compacted` and the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_resume_with_last_event_id_and_report_compaction() {
    let mut c = Cluster::start(3, "watch:\n  heartbeatIntervalMs: 300\n");
    let leader = c.wait_leader(LEADER_WAIT).await;
    let follower = (leader + 1) % 3;
    let (_, first) = c.set(leader, "s/1", "a").await;
    let from = first["revision"].as_u64().expect("revision");
    c.set(leader, "s/2", "b").await;
    let url = |q: &str| format!("{}/api/watch?{q}", c.nodes[follower].api());

    let sse = Curl::start(&url(&format!("prefix=s/&fromRevision={from}")), None);
    let history = sse.changes(2);
    assert_eq!(history[0].0, "put");
    assert_eq!(history[0].1, from.to_string());
    assert_eq!(
        (history[0].2["key"].as_str(), history[0].2["value"].as_str()),
        (Some("s/1"), Some("a"))
    );
    assert_eq!(history[1].2["key"], "s/2");

    let mut client = Client::connect([c.nodes[leader].etcd()], None)
        .await
        .expect("connect");
    let txn = etcd_client::Txn::new().and_then([
        etcd_client::TxnOp::put("s/3", "c", None),
        etcd_client::TxnOp::put("s/4", "d", None),
    ]);
    let rev = client
        .txn(txn)
        .await
        .expect("txn")
        .header()
        .expect("header")
        .revision();
    let live = sse.changes(2);
    assert_eq!(live[0].1, format!("{rev}.0"));
    assert_eq!(live[1].1, rev.to_string());
    assert_eq!(live[1].2["key"], "s/4");
    drop(sse);

    // A client that saw only the transaction's first change resumes at its second.
    c.delete(leader, "/api/delete?key=s/1").await;
    let resumed = Curl::start(&url("prefix=s/&prevValue=true"), Some(&format!("{rev}.0")));
    let again = resumed.changes(2);
    assert_eq!(
        (again[0].1.as_str(), again[0].2["key"].as_str()),
        (rev.to_string().as_str(), Some("s/4"))
    );
    assert_eq!(again[1].0, "delete");
    assert_eq!(again[1].2["key"], "s/1");
    assert_eq!(again[1].2["prevValue"], "a", "{:?}", again[1]);
    // Quiet now: progress events keep the stream alive, each naming a revision.
    let progress = resumed.next_frame();
    assert_eq!(progress.0, "progress", "{progress:?}");
    assert!(progress.1.parse::<u64>().is_ok_and(|r| r >= rev as u64));

    // A start before the compaction point: told so, then the stream ends.
    let now = client.put("s/5", "e", None).await.expect("put");
    client
        .compact(now.header().expect("header").revision(), None)
        .await
        .expect("compact");
    let mut old = Curl::start(&url("prefix=s/&fromRevision=1"), None);
    let compacted = old.next_frame();
    assert_eq!(compacted.0, "compacted", "{compacted:?}");
    assert!(compacted.2["compactRevision"]
        .as_u64()
        .is_some_and(|r| r > 1));
    let ended = old.0.child.wait().expect("curl ends with the stream");
    assert!(ended.success());

    // Bad requests get JSON errors, not a stream.
    for (q, what) in [
        ("", "exactly one"),
        ("key=a&prefix=b", "exactly one"),
        ("key=a&fromRevision=x", "fromRevision"),
    ] {
        let (s, body) = c.get(follower, &format!("/api/watch?{q}")).await;
        assert_eq!(s, 400, "{q}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains(what)),
            "{q}: {body}"
        );
    }
}
