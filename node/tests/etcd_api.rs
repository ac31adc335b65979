//! etcd's v3 API, checked with clients nobody here wrote: Debian's `etcdctl` (package
//! etcd-client, which the test command installs) and the `etcd-client` crate, against a real
//! three-node cluster — through followers as well as the leader. Assertions are on the JSON
//! etcdctl prints, as a script would read it.

mod common;

use std::time::Duration;

use common::{b64, etcdctl, etcdctl_stdin, json, Cluster};
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
};
use serde_json::Value;

const LEADER_WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_works_against_every_member() {
    let mut c = Cluster::start(3, "");
    let leader = c.wait_leader(LEADER_WAIT).await;
    let follower = c.nodes[(leader + 1) % 3].etcd();
    let other = c.nodes[(leader + 2) % 3].etcd();
    let lead = c.nodes[leader].etcd();

    // put / get through a follower (writes forwarded to the leader), read back everywhere.
    for (i, k) in ["app/a", "app/b", "app/c", "other/x"].iter().enumerate() {
        assert_eq!(
            etcdctl(&follower, &["put", k, &format!("v{i}")]).trim(),
            "OK"
        );
    }
    let got = json(&etcdctl(&other, &["get", "app/", "--prefix", "-w", "json"]));
    let kvs = got["kvs"].as_array().expect("kvs");
    assert_eq!(kvs.len(), 3, "{got}");
    assert_eq!(kvs[0]["key"], b64("app/a"));
    assert_eq!(kvs[2]["value"], b64("v2"));
    assert_eq!(got["count"], 3);
    let rev_after_c = kvs[2]["mod_revision"].as_i64().expect("revision");

    // Overwrite, then read the past.
    etcdctl(&lead, &["put", "app/a", "new"]);
    let now = json(&etcdctl(&follower, &["get", "app/a", "-w", "json"]));
    assert_eq!(now["kvs"][0]["value"], b64("new"));
    assert_eq!(now["kvs"][0]["version"], 2);
    let then = json(&etcdctl(
        &follower,
        &[
            "get",
            "app/a",
            "-w",
            "json",
            &format!("--rev={rev_after_c}"),
        ],
    ));
    assert_eq!(then["kvs"][0]["value"], b64("v0"), "{then}");

    // --limit, --keys-only, --sort-by.
    let limited = json(&etcdctl(
        &other,
        &["get", "app/", "--prefix", "--limit=2", "-w", "json"],
    ));
    assert_eq!(limited["kvs"].as_array().map(Vec::len), Some(2));
    assert_eq!(limited["more"], true);
    assert_eq!(limited["count"], 3);
    let keys = etcdctl(&other, &["get", "app/", "--prefix", "--keys-only"]);
    assert_eq!(
        keys.split_whitespace().collect::<Vec<_>>(),
        ["app/a", "app/b", "app/c"]
    );
    // (--count-only came with etcdctl 3.5; Debian's is 3.4: the crate test covers it.)
    let by_mod = json(&etcdctl(
        &other,
        &[
            "get",
            "app/",
            "--prefix",
            "--sort-by=MODIFY",
            "--order=DESCEND",
            "-w",
            "json",
        ],
    ));
    assert_eq!(by_mod["kvs"][0]["key"], b64("app/a"), "{by_mod}");

    // del --prefix --prev-kv.
    let deleted = json(&etcdctl(
        &follower,
        &["del", "app/", "--prefix", "--prev-kv", "-w", "json"],
    ));
    assert_eq!(deleted["deleted"], 3, "{deleted}");
    assert_eq!(deleted["prev_kvs"].as_array().map(Vec::len), Some(3));
    let gone = json(&etcdctl(&other, &["get", "app/", "--prefix", "-w", "json"]));
    assert!(gone["kvs"].is_null(), "{gone}");

    // txn: compares on value, version, create and mod revision; both branches.
    etcdctl(&lead, &["put", "lock", "free"]);
    let script = "value(\"lock\") = \"free\"\nversion(\"lock\") = \"1\"\n\nput lock taken\n\nput lock failed\n\n";
    let txn = json(&etcdctl_stdin(&follower, &["txn", "-w", "json"], Some(script)).expect("txn"));
    assert_eq!(txn["succeeded"], true, "{txn}");
    let txn = json(&etcdctl_stdin(&follower, &["txn", "-w", "json"], Some(script)).expect("txn"));
    assert!(
        txn["succeeded"].is_null() || txn["succeeded"] == false,
        "{txn}"
    );
    let lock = json(&etcdctl(&other, &["get", "lock", "-w", "json"]));
    assert_eq!(lock["kvs"][0]["value"], b64("failed"));
    let created = lock["kvs"][0]["create_revision"].as_i64().expect("create");
    let modified = lock["kvs"][0]["mod_revision"].as_i64().expect("mod");
    let script = format!(
        "create(\"lock\") = \"{created}\"\nmod(\"lock\") = \"{modified}\"\n\nput lock checked\n\n\n"
    );
    let txn = json(&etcdctl_stdin(&lead, &["txn", "-w", "json"], Some(&script)).expect("txn"));
    assert_eq!(txn["succeeded"], true, "{txn}");

    // compaction, then the compacted revision is refused with etcd's message.
    let status = json(&etcdctl(&lead, &["endpoint", "status", "-w", "json"]));
    let revision = status[0]["Status"]["header"]["revision"]
        .as_i64()
        .expect("revision");
    etcdctl(&follower, &["compaction", &revision.to_string()]);
    let err = etcdctl_stdin(
        &other,
        &["get", "lock", &format!("--rev={rev_after_c}")],
        None,
    )
    .expect_err("a compacted revision is refused");
    assert!(
        err.contains("required revision has been compacted"),
        "{err}"
    );

    // member list, endpoint status and health, move-leader.
    let members = json(&etcdctl(&other, &["member", "list", "-w", "json"]));
    let members = members["members"].as_array().expect("members").clone();
    assert_eq!(members.len(), 3);
    for m in &members {
        assert!(m["peerURLs"][0]
            .as_str()
            .is_some_and(|u| u.starts_with("http://127.0.0.1:")));
        assert!(m["clientURLs"][0].as_str().is_some());
        assert!(m["name"].as_str().is_some_and(|n| n.starts_with("node")));
    }
    let endpoints = [lead.as_str(), follower.as_str(), other.as_str()].join(",");
    let statuses = json(&etcdctl(&endpoints, &["endpoint", "status", "-w", "json"]));
    let leaders: Vec<&Value> = statuses
        .as_array()
        .expect("statuses")
        .iter()
        .map(|s| &s["Status"]["leader"])
        .collect();
    assert!(leaders.windows(2).all(|w| w[0] == w[1]), "{statuses}");
    let health = json(&etcdctl(&endpoints, &["endpoint", "health", "-w", "json"]));
    let healthy = health
        .as_array()
        .expect("health")
        .iter()
        .filter(|h| h["health"] == true)
        .count();
    assert_eq!(healthy, 3, "{health}");
    let leader_id = statuses[0]["Status"]["leader"].as_u64().expect("leader id");
    let target = members
        .iter()
        .map(|m| m["ID"].as_u64().expect("id"))
        .find(|id| *id != leader_id)
        .expect("a follower");
    let moved = etcdctl(&lead, &["move-leader", &format!("{target:x}")]);
    assert!(moved.contains("Leadership transferred"), "{moved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_client_crate_works_through_a_follower_and_the_leader() {
    let mut c = Cluster::start(3, "");
    let leader = c.wait_leader(LEADER_WAIT).await;
    for target in [(leader + 1) % 3, leader] {
        let mut client = Client::connect([c.nodes[target].etcd()], None)
            .await
            .expect("connect");
        let p = format!("crate/{target}/");
        for i in 0..5 {
            client
                .put(format!("{p}{i}"), format!("v{i}"), None)
                .await
                .expect("put");
        }
        let r = client
            .get(
                p.as_str(),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_sort(SortTarget::Key, SortOrder::Descend)
                        .with_limit(2),
                ),
            )
            .await
            .expect("get");
        assert_eq!(r.count(), 5);
        assert!(r.more());
        let keys: Vec<&str> = r
            .kvs()
            .iter()
            .map(|kv| kv.key_str().expect("utf8"))
            .collect();
        assert_eq!(keys, [format!("{p}4"), format!("{p}3")]);
        let counted = client
            .get(
                p.as_str(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .expect("count");
        assert_eq!((counted.count(), counted.kvs().len()), (5, 0));

        // prev_kv on put, a compare-and-swap transaction, and its failure.
        let put = client
            .put(
                format!("{p}0"),
                "w",
                Some(PutOptions::new().with_prev_key()),
            )
            .await
            .expect("put");
        assert_eq!(put.prev_key().map(|kv| kv.value()), Some(&b"v0"[..]));
        let cas = |expect: &str, new: &str| {
            Txn::new()
                .when([Compare::value(format!("{p}0"), CompareOp::Equal, expect)])
                .and_then([TxnOp::put(format!("{p}0"), new, None)])
                .or_else([TxnOp::get(format!("{p}0"), None)])
        };
        assert!(client.txn(cas("w", "x")).await.expect("txn").succeeded());
        let lost = client.txn(cas("w", "y")).await.expect("txn");
        assert!(!lost.succeeded());
        let r = client.get(format!("{p}0"), None).await.expect("get");
        assert_eq!(r.kvs()[0].value(), b"x");

        // A future revision is refused with etcd's code and message.
        let future = client
            .get(
                format!("{p}0"),
                Some(GetOptions::new().with_revision(1 << 40)),
            )
            .await
            .expect_err("future revision");
        assert!(
            future
                .to_string()
                .contains("required revision is a future revision"),
            "{future}"
        );
        let status = client.status().await.expect("status");
        assert!(status.raft_index() > 0);
        let deleted = client
            .delete(
                p.as_str(),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await
            .expect("delete");
        assert_eq!(deleted.deleted(), 5);
    }

    // A revision just written through the leader may not have applied on a follower yet;
    // compacting to it through the follower is still accepted (the leader decides), and a
    // revision past every member's is refused as etcd refuses it.
    let mut at_leader = Client::connect([c.nodes[leader].etcd()], None)
        .await
        .expect("connect");
    let mut at_follower = Client::connect([c.nodes[(leader + 1) % 3].etcd()], None)
        .await
        .expect("connect");
    for i in 0..20 {
        let put = at_leader.put("crate/compact", format!("{i}"), None).await;
        let revision = put.expect("put").header().expect("header").revision();
        at_follower
            .compact(revision, None)
            .await
            .unwrap_or_else(|e| panic!("compact {i} to {revision} through a follower: {e}"));
    }
    let future = at_follower
        .compact(1 << 40, None)
        .await
        .expect_err("a future revision is refused");
    assert!(future.to_string().contains("future revision"), "{future}");
}

/// POSTs JSON to the etcd port as etcd's gateway documentation shows it.
async fn gateway(c: &Cluster, i: usize, path: &str, body: &str) -> (u16, Value) {
    let r = c
        .http
        .post(format!("http://{}{path}", c.nodes[i].etcd()))
        .body(body.to_string())
        .send()
        .await
        .expect("gateway request");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (status, json(&text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_gateway_answers_as_etcds_does_on_the_same_port() {
    let mut c = Cluster::start(3, "");
    let leader = c.wait_leader(LEADER_WAIT).await;
    let f = (leader + 1) % 3;
    // From etcd's "gRPC gateway" guide: keys and values base64, int64 as strings.
    let (s, put) = gateway(&c, f, "/v3/kv/put", r#"{"key": "Zm9v", "value": "YmFy"}"#).await;
    assert_eq!(s, 200, "{put}");
    // A request the HTTP parser itself refuses gets grpc-gateway's error shape here too.
    {
        use std::io::{Read, Write};
        let mut raw = std::net::TcpStream::connect(c.nodes[f].etcd()).expect("connect");
        raw.write_all(b"POST /v3/kv/put HTTP/1.1\r\nthis is not a header\r\n\r\n")
            .expect("write");
        let mut answer = String::new();
        let _ = raw.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        let body: serde_json::Value =
            serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap_or("")).expect("JSON");
        assert_eq!(body["code"], 3, "{body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("malformed")),
            "{body}"
        );
    }
    assert!(
        put["header"]["revision"].is_string(),
        "int64 as a string: {put}"
    );
    let (s, got) = gateway(&c, leader, "/v3/kv/range", r#"{"key": "Zm9v"}"#).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["kvs"][0]["key"], "Zm9v");
    assert_eq!(got["kvs"][0]["value"], "YmFy");
    assert_eq!(got["count"], "1");
    let created = got["kvs"][0]["create_revision"]
        .as_str()
        .expect("create")
        .to_string();
    // The guide's transaction, in its camelCase spelling (both spellings are read).
    let txn = format!(
        r#"{{"compare":[{{"target":"CREATE","key":"Zm9v","createRevision":"{created}"}}],"success":[{{"requestPut":{{"key":"Zm9v","value":"YmF6"}}}}]}}"#
    );
    let (s, t) = gateway(&c, f, "/v3/kv/txn", &txn).await;
    assert_eq!((s, &t["succeeded"]), (200, &Value::Bool(true)), "{t}");
    // A prefix range with range_end, and the JSON everyone else on the same port gets.
    gateway(
        &c,
        f,
        "/v3/kv/put",
        r#"{"key": "Zm9vMg==", "value": "eA=="}"#,
    )
    .await;
    let (_, r) = gateway(
        &c,
        f,
        "/v3/kv/range",
        r#"{"key": "Zm9v", "range_end": "Zm9w", "keys_only": true}"#,
    )
    .await;
    assert_eq!(r["count"], "2", "{r}");
    assert!(r["kvs"][0]["value"].is_null(), "keys only: {r}");
    let (s, d) = gateway(
        &c,
        f,
        "/v3/kv/deleterange",
        r#"{"key": "Zm9v", "range_end": "Zm9w"}"#,
    )
    .await;
    assert_eq!((s, &d["deleted"]), (200, &Value::String("2".into())), "{d}");
    let (s, m) = gateway(&c, f, "/v3/cluster/member/list", "{}").await;
    assert_eq!(s, 200);
    assert_eq!(m["members"].as_array().map(Vec::len), Some(3), "{m}");
    let (s, st) = gateway(&c, f, "/v3/maintenance/status", "{}").await;
    assert_eq!(
        (s, &st["version"]),
        (200, &Value::String("3.5.0".into())),
        "{st}"
    );
    let v: Value = c
        .http
        .get(format!("http://{}/version", c.nodes[f].etcd()))
        .send()
        .await
        .expect("version")
        .json()
        .await
        .expect("json");
    assert_eq!(v["etcdserver"], "3.5.0");

    // Refusals: grpc-gateway's error JSON with its HTTP status.
    let (s, e) = gateway(
        &c,
        f,
        "/v3/kv/range",
        r#"{"key": "Zm9v", "revision": "999999999"}"#,
    )
    .await;
    assert_eq!(s, 400, "{e}");
    assert_eq!(e["code"], 11, "OutOfRange: {e}");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("future revision")),
        "{e}"
    );
    let (s, e) = gateway(&c, f, "/v3/kv/put", "{not json").await;
    assert_eq!((s, &e["code"]), (400, &Value::from(3)), "{e}");
    let (s, e) = gateway(&c, f, "/v3/kv/nothing", "{}").await;
    assert_eq!((s, &e["code"]), (404, &Value::from(5)), "{e}");
    let r = c
        .http
        .get(format!("http://{}/v3/kv/range", c.nodes[f].etcd()))
        .send()
        .await
        .expect("wrong method");
    assert_eq!(r.status().as_u16(), 405);
    assert!(r.headers().get("allow").is_some());
    let e: Value = r.json().await.expect("json error");
    assert!(e["message"].is_string(), "{e}");

    // And gRPC still answers on that port beside it.
    let mut client = Client::connect([c.nodes[f].etcd()], None)
        .await
        .expect("connect");
    assert!(client
        .get("Zm9v", None)
        .await
        .expect("get")
        .kvs()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_api_reads_the_same_store_at_past_revisions_and_refuses_bytes_it_cannot_show() {
    let mut c = Cluster::start(3, "");
    let leader = c.wait_leader(LEADER_WAIT).await;
    let f = (leader + 1) % 3;
    let (_, first) = c.set(f, "cfg", "one").await;
    let first = first["revision"].as_u64().expect("revision");
    c.set(f, "cfg", "two").await;
    let (s, now) = c.get(f, "/api/get?key=cfg").await;
    assert_eq!((s, now["value"].as_str()), (200, Some("two")));
    let (s, then) = c
        .get(f, &format!("/api/get?key=cfg&revision={first}"))
        .await;
    assert_eq!((s, then["value"].as_str()), (200, Some("one")), "{then}");
    assert_eq!(then["revision"].as_u64(), Some(first));
    // The seed API's revision is the etcd API's mod_revision.
    let mut etcd = Client::connect([c.nodes[f].etcd()], None)
        .await
        .expect("connect");
    let kv = etcd.get("cfg", None).await.expect("get").kvs()[0].clone();
    assert_eq!(
        kv.mod_revision() as u64,
        now["revision"].as_u64().expect("rev")
    );
    let (s, e) = c.get(f, "/api/get?key=cfg&revision=99999999").await;
    assert_eq!(s, 400, "{e}");
    assert!(
        e["error"]
            .as_str()
            .is_some_and(|m| m.contains("future revision")),
        "{e}"
    );
    etcd.compact(kv.mod_revision(), None)
        .await
        .expect("compact");
    let (s, e) = c
        .get(f, &format!("/api/get?key=cfg&revision={first}"))
        .await;
    assert_eq!(s, 400, "{e}");
    assert!(
        e["error"].as_str().is_some_and(|m| m.contains("compacted")),
        "{e}"
    );

    // Bytes that are not text: refused with 422, never shown mangled.
    etcd.put("bin", vec![0xff, 0xfe, 0x00], None)
        .await
        .expect("put");
    let (s, e) = c.get(f, "/api/get?key=bin").await;
    assert_eq!(s, 422, "{e}");
    etcd.put(vec![b'k', 0xff], "v", None).await.expect("put");
    let (s, e) = c.get(leader, "/api/keys?prefix=k").await;
    assert_eq!(s, 422, "{e}");
    let (s, _) = c.get(leader, "/api/keys?prefix=cfg").await;
    assert_eq!(s, 200);
}

/// `--quota-backend-bytes`: past it, writes that add data are refused with etcd's message (and
/// through a follower too), every member reports NOSPACE, deletes and compaction still work,
/// and once they bring the store under the quota writes go through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_over_its_quota_refuses_puts_raises_nospace_and_recovers_after_compaction() {
    let mut c = Cluster::start(3, "limits:\n  quotaBackendBytes: 65536\n");
    let leader = c.wait_leader(LEADER_WAIT).await;
    let follower = (leader + 1) % 3;
    let mut client = Client::connect([c.nodes[follower].etcd()], None)
        .await
        .expect("connect");
    let value = "x".repeat(1000);
    let mut refused = None;
    for i in 0..200 {
        match client.put(format!("q/{i}"), value.as_str(), None).await {
            Ok(_) => {}
            Err(etcd_client::Error::GRpcStatus(s)) => {
                refused = Some((i, s));
                break;
            }
            Err(e) => panic!("put {i}: {e}"),
        }
    }
    let (at, status) = refused.expect("the quota never refused a put");
    assert!(at > 30, "refused too early, at put {at}");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        status.message(),
        "etcdserver: mvcc: database space exceeded"
    );
    // The seed API refuses the same way, with a JSON body naming the quota.
    let (code, body) = c.set(follower, "q/seed", "v").await;
    assert_eq!(code, 507, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("--quota-backend-bytes")),
        "{body}"
    );
    // Every member is listed with NOSPACE, as etcdctl shows it.
    let alarms = etcdctl(&c.nodes[leader].etcd(), &["alarm", "list"]);
    assert_eq!(alarms.matches("alarm:NOSPACE").count(), 3, "{alarms}");
    // Deletes and compaction free space, and are not refused.
    let deleted = client
        .delete("q/", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .expect("delete while over quota");
    assert_eq!(deleted.deleted(), at as i64);
    let revision = deleted.header().expect("header").revision();
    client
        .compact(revision, None)
        .await
        .expect("compact while over quota");
    let alarms = etcdctl(&c.nodes[follower].etcd(), &["alarm", "list"]);
    assert_eq!(alarms.trim(), "", "alarm still raised: {alarms}");
    client
        .put("q/after", "v", None)
        .await
        .expect("a put after compaction");
}

/// etcd's way of growing a cluster: `etcdctl member add` (the cluster assigns the id), the new
/// node started with that id, `etcdctl member promote` once it has caught up. The new member
/// then serves linearizable reads of what was written before it existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_member_add_then_promote_grows_the_cluster() {
    let mut c = Cluster::start(3, "");
    let leader = c.wait_leader(LEADER_WAIT).await;
    let follower = c.nodes[(leader + 1) % 3].etcd();
    for i in 0..20 {
        etcdctl(&follower, &["put", &format!("grow/{i}"), &format!("v{i}")]);
    }
    let new = c.configure_join_node();
    let url = format!("http://127.0.0.1:{}", c.nodes[new].peer_port);
    let peer_urls = format!("--peer-urls={url}");
    let added = json(&etcdctl(
        &follower,
        &[
            "member",
            "add",
            "node4",
            &peer_urls,
            "--learner",
            "-w",
            "json",
        ],
    ));
    let id = added["member"]["ID"].as_u64().expect("the new member's id");
    assert_eq!(added["member"]["isLearner"], true, "{added}");
    assert_eq!(added["member"]["peerURLs"][0], url.as_str(), "{added}");
    assert_eq!(
        added["members"].as_array().map(Vec::len),
        Some(4),
        "{added}"
    );
    // The same peer URL twice is refused, as etcd refuses it.
    let twice = etcdctl_stdin(&follower, &["member", "add", "again", &peer_urls], None)
        .expect_err("a second member with the same peer URL");
    assert!(twice.contains("Peer URLs already exists"), "{twice}");
    // A peer URL that is not one is refused with a reason.
    let mut client = Client::connect([follower.clone()], None)
        .await
        .expect("connect");
    let bad = client
        .member_add(["http://127.0.0.1".to_string()], None)
        .await
        .expect_err("a peer URL without a port");
    assert!(bad.to_string().contains("host:port"), "{bad}");

    let hex = format!("{id:x}");
    c.spawn_with_args(new, &["--member-id", &hex]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match etcdctl_stdin(&follower, &["member", "promote", &hex], None) {
            Ok(out) => {
                assert!(out.contains("promoted"), "{out}");
                break;
            }
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "member {hex} was never promoted: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let list = json(&etcdctl(&follower, &["member", "list", "-w", "json"]));
    let members = list["members"].as_array().expect("members");
    assert_eq!(members.len(), 4, "{list}");
    let grown = members
        .iter()
        .find(|m| m["ID"].as_u64() == Some(id))
        .expect("the new member is listed");
    assert_ne!(grown["isLearner"], true, "{list}");
    let read = json(&etcdctl(
        &c.nodes[new].etcd(),
        &["get", "grow/7", "-w", "json"],
    ));
    assert_eq!(read["kvs"][0]["value"], b64("v7"), "{read}");
    assert_eq!(c.member_id(new).await, id);
}
