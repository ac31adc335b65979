//! Leases, checked with clients nobody here wrote: Debian's `etcdctl` (lease commands, and
//! its `lock` and `elect`, which are etcd's client-side recipes over leases, transactions and
//! watches) and the `etcd-client` crate, against a real three-node cluster.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{etcdctl, etcdctl_stdin, json, Cluster, Streamed};
use etcd_client::{Client, PutOptions};

const LEADER_WAIT: Duration = Duration::from_secs(15);

fn lease_id(grant_output: &str) -> String {
    // "lease 694d77aa9e38260f granted with TTL(5s)"
    grant_output
        .split_whitespace()
        .nth(1)
        .expect("a lease id")
        .to_string()
}

/// `etcdctl lease grant`, `put --lease`, `lease keep-alive` for longer than the TTL, then
/// stopped: the key lives while renewed and is gone within TTL + an election timeout after;
/// `timetolive --keys` shows the key; `lease revoke` deletes its keys at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_leases_keep_keys_alive_while_renewed_and_remove_them_after() {
    let mut c = Cluster::start(3, "");
    let leader = c.wait_leader(LEADER_WAIT).await;
    let follower = c.nodes[(leader + 1) % 3].etcd();
    let id = lease_id(&etcdctl(&follower, &["lease", "grant", "3"]));
    etcdctl(&follower, &["put", "--lease", &id, "svc/a", "10.0.0.1"]);
    let ttl = json(&etcdctl(
        &follower,
        &["lease", "timetolive", &id, "--keys", "-w", "json"],
    ));
    assert_eq!(ttl["granted-ttl"], 3, "{ttl}");
    assert!(
        ttl["ttl"].as_i64().is_some_and(|t| (1..=3).contains(&t)),
        "{ttl}"
    );
    assert_eq!(ttl["keys"][0], common::b64("svc/a"), "{ttl}");

    // Renewed through a follower for twice the TTL: the key stays.
    let keeper = Streamed::etcdctl(&follower, &["lease", "keep-alive", &id]);
    let first = keeper
        .line(Duration::from_secs(5))
        .expect("a keep-alive answer");
    assert!(first.contains("keepalived with TTL(3)"), "{first}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let got = json(&etcdctl(&follower, &["get", "svc/a", "-w", "json"]));
    assert_eq!(got["count"], 1, "the key expired while renewed: {got}");
    drop(keeper);
    let stopped = Instant::now();
    let deadline = stopped + Duration::from_secs(3) + Duration::from_millis(2500);
    loop {
        let got = json(&etcdctl(&follower, &["get", "svc/a", "-w", "json"]));
        if got["count"].is_null() || got["count"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still there {:?} after the renewals stopped",
            stopped.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        stopped.elapsed() >= Duration::from_millis(1500),
        "expired early: {:?}",
        stopped.elapsed()
    );
    let gone = etcdctl(&follower, &["lease", "timetolive", &id]);
    assert!(gone.contains("already expired"), "{gone}");

    // Revoke: every key of the lease at once.
    let id = lease_id(&etcdctl(&follower, &["lease", "grant", "60"]));
    etcdctl(&follower, &["put", "--lease", &id, "svc/b", "x"]);
    etcdctl(&follower, &["put", "--lease", &id, "svc/c", "y"]);
    let listed = etcdctl(&follower, &["lease", "list"]);
    assert!(listed.contains(&id), "{listed}");
    let revoked = etcdctl(&follower, &["lease", "revoke", &id]);
    assert!(revoked.contains("revoked"), "{revoked}");
    let left = json(&etcdctl(
        &follower,
        &["get", "svc/", "--prefix", "-w", "json"],
    ));
    assert!(left["kvs"].is_null(), "{left}");
    // A put naming a lease that does not exist is refused with etcd's message.
    let refused = etcdctl_stdin(&follower, &["put", "--lease", &id, "svc/d", "z"], None)
        .expect_err("a revoked lease");
    assert!(refused.contains("requested lease not found"), "{refused}");
}

/// `etcdctl lock` and `etcdctl elect`, etcd's recipes: one holder at a time, and the next
/// contender takes over when the holder's session lease expires (the holder killed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_and_elect_hand_over_when_the_holder_dies() {
    let mut c = Cluster::start(3, "");
    let leader = c.wait_leader(LEADER_WAIT).await;
    let a = c.nodes[(leader + 1) % 3].etcd();
    let b = c.nodes[(leader + 2) % 3].etcd();

    let first = Streamed::etcdctl(&a, &["lock", "--ttl", "2", "jobs"]);
    let held = first
        .line(Duration::from_secs(10))
        .expect("the first holder gets the lock");
    assert!(held.starts_with("jobs/"), "{held}");
    let second = Streamed::etcdctl(&b, &["lock", "--ttl", "2", "jobs"]);
    assert_eq!(
        second.line(Duration::from_secs(2)),
        None,
        "two holders at once"
    );
    drop(first); // kill -9: its session lease is left to expire
    let taken = second
        .line(Duration::from_secs(8))
        .expect("the lock passes on once the holder's lease expires");
    assert!(
        taken.starts_with("jobs/") && taken != held,
        "{taken} after {held}"
    );

    let one = Streamed::etcdctl(&a, &["elect", "leader", "one"]);
    let key = one.line(Duration::from_secs(10)).expect("elected");
    assert!(key.starts_with("leader/"), "{key}");
    assert_eq!(one.line(Duration::from_secs(2)).as_deref(), Some("one"));
    let observed = Streamed::etcdctl(&b, &["elect", "-l", "leader"]);
    let seen = observed.line(Duration::from_secs(10)).expect("observed");
    assert!(seen.starts_with("leader/"), "{seen}");
    assert_eq!(
        observed.line(Duration::from_secs(2)).as_deref(),
        Some("one")
    );
    let two = Streamed::etcdctl(&b, &["elect", "leader", "two"]);
    assert_eq!(
        two.line(Duration::from_secs(2)),
        None,
        "two leaders at once"
    );
    // Interrupted, the leader resigns (etcdctl deletes its key); the next one is elected.
    let pid = one.child.id().to_string();
    let sent = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    let next = two
        .line(Duration::from_secs(8))
        .expect("the next one is elected");
    assert!(next.starts_with("leader/") && next != key, "{next}");
    assert_eq!(two.line(Duration::from_secs(2)).as_deref(), Some("two"));
    // The observer sees the change of leader.
    let changed: Vec<String> = (0..4)
        .filter_map(|_| observed.line(Duration::from_secs(3)))
        .collect();
    assert!(changed.iter().any(|l| l == "two"), "{changed:?}");
}

/// A lease renewed through a follower survives the leader being killed (the new leader gives
/// it its full TTL); one nobody renews is gone within its TTL and an election after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_lease_outlives_a_leader_kill_and_an_abandoned_one_expires() {
    let mut c = Cluster::start(3, "");
    let leader = c.wait_leader(LEADER_WAIT).await;
    let follower = (leader + 1) % 3;
    let mut client = Client::connect([c.nodes[follower].etcd()], None)
        .await
        .expect("connect");
    let kept = client.lease_grant(3, None).await.expect("grant").id();
    let abandoned = client.lease_grant(3, None).await.expect("grant").id();
    client
        .put("owned/kept", "x", Some(PutOptions::new().with_lease(kept)))
        .await
        .expect("put");
    client
        .put(
            "owned/abandoned",
            "y",
            Some(PutOptions::new().with_lease(abandoned)),
        )
        .await
        .expect("put");
    let (mut keeper, mut answers) = client.lease_keep_alive(kept).await.expect("keep alive");
    // Renew every 500 ms whatever happens to the answers (as etcd's clients do, at a third of
    // the TTL); record any answer that says the lease is gone.
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let saw_refusal = refused.clone();
    let draining = tokio::spawn(async move {
        while let Ok(Some(a)) = answers.message().await {
            if a.ttl() <= 0 {
                saw_refusal.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let renewing = tokio::spawn(async move {
        while keeper.keep_alive().await.is_ok() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.kill9(leader);
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    c.wait_leader_among(&others, LEADER_WAIT).await;
    // Well past the TTL since the kill.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut reader = Client::connect([c.nodes[follower].etcd()], None)
        .await
        .expect("connect");
    let kept_key = reader.get("owned/kept", None).await.expect("get");
    assert_eq!(
        kept_key.count(),
        1,
        "a renewed lease expired across the leader change"
    );
    let abandoned_key = reader.get("owned/abandoned", None).await.expect("get");
    assert_eq!(
        abandoned_key.count(),
        0,
        "an abandoned lease outlived its TTL"
    );
    assert!(
        !refused.load(std::sync::atomic::Ordering::SeqCst),
        "a renewal was answered as if the lease were gone"
    );
    renewing.abort();
    draining.abort();
}

/// The seed-style lease API: grant, a key set with the lease and one with the `ttl`
/// shorthand, the lease's keys and time left, renewal, revoke deleting its keys, and 404 JSON
/// for leases that do not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_lease_api_grants_renews_lists_and_revokes() {
    use serde_json::json;
    let mut c = Cluster::start(3, "");
    let leader = c.wait_leader(LEADER_WAIT).await;
    let f = (leader + 1) % 3;
    let (s, granted) = c.post(f, "/api/lease/grant", &json!({ "ttl": 30 })).await;
    assert_eq!(s, 200, "{granted}");
    let id = granted["id"].as_u64().expect("id");
    assert_eq!(granted["ttl"], 30);
    let (s, set) = c
        .post(
            f,
            "/api/set",
            &json!({ "key": "reg/a", "value": "1", "lease": id }),
        )
        .await;
    assert_eq!((s, set["lease"].as_u64()), (200, Some(id)), "{set}");
    let (s, short) = c
        .post(
            f,
            "/api/set",
            &json!({ "key": "reg/b", "value": "2", "ttl": 30 }),
        )
        .await;
    assert_eq!(s, 200, "{short}");
    let other = short["lease"]
        .as_u64()
        .expect("a lease granted for the key");
    assert_ne!(other, id);
    let (s, info) = c.get(f, &format!("/api/lease/{id}")).await;
    assert_eq!(s, 200, "{info}");
    assert_eq!(info["keys"], json!(["reg/a"]));
    assert_eq!(info["grantedTtl"], 30);
    assert!(
        info["ttl"].as_i64().is_some_and(|t| t > 25 && t <= 30),
        "{info}"
    );
    let (s, renewed) = c
        .post(f, "/api/lease/keepalive", &json!({ "id": id }))
        .await;
    assert_eq!((s, renewed["ttl"].as_i64()), (200, Some(30)), "{renewed}");
    let (s, revoked) = c.post(f, "/api/lease/revoke", &json!({ "id": id })).await;
    assert_eq!(s, 200, "{revoked}");
    let (s, _) = c.get(f, "/api/get?key=reg/a").await;
    assert_eq!(s, 404, "the revoked lease's key is gone");
    let (s, _) = c.get(f, "/api/get?key=reg/b").await;
    assert_eq!(s, 200, "another lease's key stays");
    // Unknown leases: 404 with a JSON error naming the lease.
    for (path, body) in [
        ("/api/lease/keepalive", json!({ "id": id })),
        ("/api/lease/revoke", json!({ "id": id })),
        (
            "/api/set",
            json!({ "key": "reg/c", "value": "3", "lease": id }),
        ),
    ] {
        let (s, e) = c.post(f, path, &body).await;
        assert_eq!(s, 404, "{path}: {e}");
        assert!(
            e["error"]
                .as_str()
                .is_some_and(|m| m.contains(&id.to_string())),
            "{path}: {e}"
        );
    }
    let (s, e) = c.get(f, &format!("/api/lease/{id}")).await;
    assert_eq!(s, 404, "{e}");
    let (s, e) = c.get(f, "/api/lease/abc").await;
    assert_eq!(s, 400, "{e}");
    let (s, e) = c
        .post(
            f,
            "/api/set",
            &json!({ "key": "k", "value": "v", "lease": other, "ttl": 5 }),
        )
        .await;
    assert_eq!(s, 400, "{e}");
}

/// concordctl's own: `watch --prefix` prints each change once, `lock` hands over when its
/// holder is killed (its session lease expires), `lease grant|ttl|revoke`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concordctl_watch_lock_and_lease_commands() {
    let mut c = Cluster::start(3, "");
    let leader = c.wait_leader(LEADER_WAIT).await;
    let endpoints = (0..3)
        .map(|i| c.nodes[i].api())
        .collect::<Vec<_>>()
        .join(",");
    let ctl = |args: &[&str]| {
        Streamed::spawn(
            Command::new(common::CTL_BIN)
                .arg("--endpoints")
                .arg(&endpoints)
                .args(args),
        )
    };
    let watch = ctl(&["watch", "--prefix", "cfg/"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.set(leader, "cfg/a", "1").await;
    c.delete(leader, "/api/delete?key=cfg/a").await;
    let put = watch.line(Duration::from_secs(10)).expect("a put");
    assert!(put.starts_with("PUT cfg/a 1 (revision "), "{put}");
    let del = watch.line(Duration::from_secs(10)).expect("a delete");
    assert!(del.starts_with("DELETE cfg/a"), "{del}");

    let first = ctl(&["lock", "--ttl", "2", "batch"]);
    let held = first.line(Duration::from_secs(10)).expect("held");
    assert!(held.starts_with("batch/"), "{held}");
    let second = ctl(&[
        "lock",
        "--ttl",
        "2",
        "batch",
        "--",
        "echo",
        "ran-while-holding",
    ]);
    assert_eq!(second.line(Duration::from_secs(2)), None, "two holders");
    drop(first);
    let taken = second.line(Duration::from_secs(10)).expect("handed over");
    assert!(taken.starts_with("batch/") && taken != held, "{taken}");
    assert_eq!(
        second.line(Duration::from_secs(5)).as_deref(),
        Some("ran-while-holding")
    );

    let out = ctl(&["lease", "grant", "30"])
        .line(Duration::from_secs(10))
        .expect("grant");
    let id = lease_id(&out);
    let ttl = ctl(&["lease", "ttl", &id])
        .line(Duration::from_secs(10))
        .expect("ttl");
    assert!(ttl.contains("granted with TTL(30s)"), "{ttl}");
    let revoked = ctl(&["lease", "revoke", &id])
        .line(Duration::from_secs(10))
        .expect("revoke");
    assert!(revoked.contains("revoked"), "{revoked}");
}

/// etcd's server-side recipes (`v3lock`, `v3election`) through the etcd-client crate, on a
/// follower: a second locker waits until the first unlocks; a campaign waits for the leader to
/// resign, `Leader` and `Observe` follow it, `Proclaim` changes its value, and a proclaim with a
/// key that no longer leads is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_and_election_services_serve_etcds_recipes() {
    use etcd_client::{LockOptions, ProclaimOptions, ResignOptions};
    let mut c = Cluster::start(3, "");
    let leader = c.wait_leader(LEADER_WAIT).await;
    let follower = c.nodes[(leader + 1) % 3].etcd();
    let mut a = Client::connect([follower.clone()], None)
        .await
        .expect("connect");
    let mut b = Client::connect([follower.clone()], None)
        .await
        .expect("connect");
    let la = a.lease_grant(30, None).await.expect("grant").id();
    let lb = b.lease_grant(30, None).await.expect("grant").id();

    let held = a
        .lock("res", Some(LockOptions::new().with_lease(la)))
        .await
        .expect("lock");
    let key = held.key().to_vec();
    assert!(key.starts_with(b"res/"), "{key:?}");
    let waiting = tokio::spawn(async move {
        let r = b.lock("res", Some(LockOptions::new().with_lease(lb))).await;
        (b, r.map(|r| r.key().to_vec()))
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "two holders of one lock");
    a.unlock(key.clone()).await.expect("unlock");
    let (mut b, second) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the lock passes on")
        .expect("task");
    let second = second.expect("lock");
    assert_ne!(second, key);
    b.unlock(second).await.expect("unlock");

    let won = a.campaign("chief", "alpha", la).await.expect("campaign");
    let ours = won.leader().expect("leader key").clone();
    let now = a.leader("chief").await.expect("leader");
    assert_eq!(now.kv().map(|kv| kv.value()), Some(&b"alpha"[..]));
    let mut observer = b.observe("chief").await.expect("observe");
    let seen = observer
        .message()
        .await
        .expect("message")
        .expect("the leader");
    assert_eq!(seen.kv().map(|kv| kv.value()), Some(&b"alpha"[..]));
    a.proclaim(
        "beta",
        Some(ProclaimOptions::new().with_leader(ours.clone())),
    )
    .await
    .expect("proclaim");
    let seen = tokio::time::timeout(Duration::from_secs(10), observer.message())
        .await
        .expect("in time")
        .expect("message")
        .expect("the new value");
    assert_eq!(seen.kv().map(|kv| kv.value()), Some(&b"beta"[..]));
    let mut c2 = Client::connect([follower.clone()], None)
        .await
        .expect("connect");
    let next = tokio::spawn(async move { c2.campaign("chief", "gamma", lb).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!next.is_finished(), "two leaders at once");
    a.resign(Some(ResignOptions::new().with_leader(ours.clone())))
        .await
        .expect("resign");
    let took = tokio::time::timeout(Duration::from_secs(10), next)
        .await
        .expect("the next one is elected")
        .expect("task")
        .expect("campaign");
    assert_ne!(
        took.leader().map(|l| l.key().to_vec()),
        Some(ours.key().to_vec())
    );
    let stale = a
        .proclaim("delta", Some(ProclaimOptions::new().with_leader(ours)))
        .await
        .expect_err("a resigned leader cannot proclaim");
    assert!(
        stale.to_string().contains("election: not leader"),
        "{stale}"
    );
}

/// The gateway's election routes, as a JSON client uses them: campaign, leader, and observe
/// streaming one `{"result": ...}` per line that follows a proclaim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_the_election_routes_and_streams_observe() {
    let mut c = Cluster::start(3, "");
    let leader = c.wait_leader(LEADER_WAIT).await;
    let etcd = c.nodes[(leader + 1) % 3].etcd();
    let post = |path: &str, body: serde_json::Value| {
        let req = c.http.post(format!("http://{etcd}{path}")).json(&body);
        async move {
            let r = req.send().await.expect("send");
            let status = r.status().as_u16();
            (
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    let (s, lease) = post("/v3/lease/grant", serde_json::json!({ "TTL": "30" })).await;
    assert_eq!(s, 200, "{lease}");
    let id = lease["ID"].as_str().expect("ID").to_string();
    let name = common::b64("boss");
    let (s, won) = post(
        "/v3/election/campaign",
        serde_json::json!({ "name": name, "lease": id, "value": common::b64("one") }),
    )
    .await;
    assert_eq!(s, 200, "{won}");
    let (s, now) = post("/v3/election/leader", serde_json::json!({ "name": name })).await;
    assert_eq!(
        (s, &now["kv"]["value"]),
        (200, &serde_json::json!(common::b64("one"))),
        "{now}"
    );
    let mut observed = c
        .http
        .post(format!("http://{etcd}/v3/election/observe"))
        .timeout(Duration::from_secs(30))
        .json(&serde_json::json!({ "name": name }))
        .send()
        .await
        .expect("observe");
    let mut buffered = Vec::new();
    let mut next_line = async || -> serde_json::Value {
        loop {
            if let Some(end) = buffered.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffered.drain(..=end).collect();
                return serde_json::from_slice(&line).expect("a JSON line");
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), observed.chunk())
                .await
                .expect("in time")
                .expect("bytes")
                .expect("the stream goes on");
            buffered.extend_from_slice(&chunk);
        }
    };
    let first = next_line().await;
    assert_eq!(
        first["result"]["kv"]["value"],
        common::b64("one"),
        "{first}"
    );
    let (s, p) = post(
        "/v3/election/proclaim",
        serde_json::json!({ "leader": won["leader"], "value": common::b64("two") }),
    )
    .await;
    assert_eq!(s, 200, "{p}");
    let second = next_line().await;
    assert_eq!(
        second["result"]["kv"]["value"],
        common::b64("two"),
        "{second}"
    );
}
