//! Membership changes on real processes: grow and shrink under load, remove the leader,
//! replace a wiped member, and every refusal.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Cluster;
use parking_lot::Mutex;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(15);

/// A background client writing unique keys to the API addresses in `targets`, recording what
/// was acknowledged, every non-200 status, and the longest gap between acknowledgements.
struct Load {
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    errors: Arc<Mutex<BTreeMap<u16, usize>>>,
    max_gap: Arc<Mutex<Duration>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(http: reqwest::Client, targets: Arc<Mutex<Vec<String>>>, writers: usize) -> Load {
        let load = Load {
            acked: Arc::default(),
            errors: Arc::default(),
            max_gap: Arc::default(),
            stop: Arc::default(),
            tasks: Vec::new(),
        };
        let last_ack = Arc::new(Mutex::new(Instant::now()));
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (http, targets, acked, errors, stop, max_gap, last_ack) = (
                http.clone(),
                targets.clone(),
                load.acked.clone(),
                load.errors.clone(),
                load.stop.clone(),
                load.max_gap.clone(),
                last_ack.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let api = {
                        let t = targets.lock();
                        t[(n + w) % t.len()].clone()
                    };
                    let key = format!("load-{w}-{n}");
                    let value = format!("v{n}");
                    let status = match http
                        .post(format!("{api}/api/set"))
                        .json(&json!({ "key": key, "value": value }))
                        .send()
                        .await
                    {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    };
                    if status == 200 {
                        acked.lock().insert(key, value);
                        let mut last = last_ack.lock();
                        let gap = last.elapsed();
                        let mut mg = max_gap.lock();
                        if gap > *mg {
                            *mg = gap;
                        }
                        *last = Instant::now();
                    } else {
                        *errors.lock().entry(status).or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    n += 1;
                }
            }));
        }
        Load { tasks, ..load }
    }

    async fn stop(self) -> (BTreeMap<String, String>, BTreeMap<u16, usize>, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let acked = self.acked.lock().clone();
        let errors = self.errors.lock().clone();
        let gap = *self.max_gap.lock();
        (acked, errors, gap)
    }
}

async fn init_first(c: &mut Cluster) {
    for i in 0..c.nodes.len() {
        c.admin_status(i).await;
    }
    let (s, body) = c.post(0, "/admin/init", &json!({})).await;
    assert_eq!(s, 200, "init: {body}");
    c.wait_leader_among(&[0], WAIT).await;
}

async fn assert_all_readable(c: &Cluster, via: usize, acked: &BTreeMap<String, String>) {
    for (k, v) in acked {
        let (s, body) = c.get(via, &format!("/api/get?key={k}")).await;
        assert_eq!(
            (s, body["value"].as_str()),
            (200, Some(v.as_str())),
            "acknowledged {k} lost"
        );
    }
}

/// Only the documented retryable statuses (503: nothing applied; 504: outcome unknown; 0: the
/// node we talked to went away) may appear while membership changes.
fn assert_only_retryable(errors: &BTreeMap<u16, usize>) {
    for status in errors.keys() {
        assert!(
            [0, 503, 504].contains(status),
            "non-retryable client error {status}: {errors:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_1_3_5_and_shrink_5_3_1_under_load() {
    let mut c = Cluster::start_join(5);
    init_first(&mut c).await;
    let targets = Arc::new(Mutex::new(vec![c.nodes[0].api()]));
    let load = Load::start(c.http.clone(), targets.clone(), 4);
    let ids: Vec<u64> = futures::future::join_all((0..5).map(|i| c.member_id(i))).await;

    for new in 1..5 {
        c.add_voter(0, new).await;
        targets.lock().push(c.nodes[new].api());
        let voters = c.voters(0).await;
        assert_eq!(voters.len(), new + 1, "after adding node {new}: {voters:?}");
    }
    for old in (1..5).rev() {
        targets.lock().retain(|a| *a != c.nodes[old].api());
        let (s, body) = c.remove_member(0, ids[old]).await;
        assert_eq!(s, 200, "remove {old}: {body}");
        let voters = c.voters(0).await;
        assert_eq!(voters.len(), old, "after removing node {old}: {voters:?}");
        assert!(!voters.contains(&ids[old]));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (acked, errors, gap) = load.stop().await;
    eprintln!(
        "1→5→1: {} writes acknowledged, errors {errors:?}, longest gap between acks {gap:?}",
        acked.len()
    );
    assert!(acked.len() > 100, "too few writes: {}", acked.len());
    assert_only_retryable(&errors);
    assert_eq!(c.voters(0).await, vec![ids[0]]);
    assert_all_readable(&c, 0, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_leader_moves_leadership_first() {
    let mut c = Cluster::start_join(3);
    init_first(&mut c).await;
    c.add_voter(0, 1).await;
    c.add_voter(0, 2).await;
    let ids: Vec<u64> = futures::future::join_all((0..3).map(|i| c.member_id(i))).await;
    let targets = Arc::new(Mutex::new(vec![c.nodes[1].api(), c.nodes[2].api()]));
    let load = Load::start(c.http.clone(), targets, 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leader = c.wait_leader_among(&[0, 1, 2], WAIT).await;
    let started = Instant::now();
    let (s, body) = c.remove_member(1, ids[leader]).await;
    assert_eq!(s, 200, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("transferred leadership"),
        "{body}"
    );
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (acked, errors, gap) = load.stop().await;
    eprintln!("removing the leader took {took:?}; longest write stall {gap:?}; errors {errors:?}");
    assert!(gap < Duration::from_secs(3), "write stall {gap:?} too long");
    assert_only_retryable(&errors);
    let rest: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let new_leader = c.wait_leader_among(&rest, WAIT).await;
    assert_ne!(new_leader, leader);
    let voters = c.voters(new_leader).await;
    assert_eq!(voters.len(), 2);
    assert!(!voters.contains(&ids[leader]));
    assert_all_readable(&c, new_leader, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_member_is_replaced_without_losing_quorum() {
    let mut c = Cluster::start_join(3);
    init_first(&mut c).await;
    c.add_voter(0, 1).await;
    c.add_voter(0, 2).await;
    let old_id = c.member_id(2).await;
    let targets = Arc::new(Mutex::new(vec![c.nodes[0].api(), c.nodes[1].api()]));
    let load = Load::start(c.http.clone(), targets, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The volume is lost; the pod comes back with the same name and address.
    c.wipe(2);
    c.spawn(2);
    let new_id = c.member_id(2).await;
    assert_ne!(new_id, old_id, "an empty data dir must get a new member id");
    // The leader keeps sending to the old member; the new process refuses to answer for it.
    let deadline = Instant::now() + WAIT;
    loop {
        let st = c.status(2).await.expect("status");
        if st["refusedPeerMessages"].as_u64().unwrap_or(0) > 0 {
            assert!(
                st["lastRefusal"].as_str().unwrap().contains("wrong-member"),
                "{st}"
            );
            assert_eq!(st["initialized"], false, "{st}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "old member's messages were not refused: {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Replace: add as a new learner, promote, then remove the stale id.
    c.add_voter(0, 2).await;
    let (s, body) = c.remove_member(0, old_id).await;
    assert_eq!(s, 200, "{body}");
    let voters = c.voters(0).await;
    assert_eq!(voters.len(), 3);
    assert!(voters.contains(&new_id) && !voters.contains(&old_id));
    let (acked, errors, gap) = load.stop().await;
    eprintln!(
        "replacement: {} writes, errors {errors:?}, longest gap {gap:?}",
        acked.len()
    );
    // Quorum was never lost: writes kept being acknowledged throughout.
    assert!(gap < Duration::from_secs(3), "writes stalled for {gap:?}");
    assert_only_retryable(&errors);
    assert_all_readable(&c, 2, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_changes_are_refused_and_change_nothing() {
    let mut c = Cluster::start_join(3);
    init_first(&mut c).await;
    c.add_voter(0, 1).await;
    c.add_voter(0, 2).await;
    let ids: Vec<u64> = futures::future::join_all((0..3).map(|i| c.member_id(i))).await;
    let before = c.voters(0).await;

    // Init twice.
    let (s, body) = c.post(1, "/admin/init", &json!({})).await;
    assert_eq!(s, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("already"),
        "{body}"
    );

    // A learner that never receives anything (its process does not exist) holds the one
    // membership slot while AddLearner waits for replication: a second change is "busy".
    let ghost = 999_999u64;
    let ghost_spec = json!({ "id": ghost, "name": "ghost", "address": format!("127.0.0.1:{}", common::free_port()) });
    let adding = {
        let http = c.http.clone();
        let api = c.nodes[0].api();
        tokio::spawn(async move {
            http.post(format!("{api}/admin/learners"))
                .json(&ghost_spec)
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s, body) = c.post(1, "/admin/promote", &json!({ "id": ids[2] })).await;
    assert_eq!(s, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("busy"), "{body}");
    assert_eq!(body["retryable"], true);
    let added = adding.await.unwrap().unwrap();
    assert_eq!(added.status().as_u16(), 200);

    // Promoting the lagging learner is refused with its lag.
    let (s, body) = c.post(0, "/admin/promote", &json!({ "id": ghost })).await;
    assert_eq!(s, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("lag"), "{body}");
    assert_eq!(c.voters(0).await, before);
    let (s, body) = c.remove_member(0, ghost).await;
    assert_eq!(s, 200, "removing a learner: {body}");

    // Removing a voter when the rest could not form a quorum: kill one follower, then try to
    // remove the other.
    let leader = c.wait_leader_among(&[0, 1, 2], WAIT).await;
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    c.kill9(followers[0]);
    // Past the leader's "healthy" window (3 election timeouts, at least 2 s).
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let (s, body) = c.remove_member(leader, ids[followers[1]]).await;
    assert_eq!(s, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("quorum"), "{body}");
    assert_eq!(
        c.voters(leader).await,
        before,
        "refused removal changed membership"
    );
    // Removing the dead one is allowed: the remaining two are healthy.
    let (s, body) = c.remove_member(leader, ids[followers[0]]).await;
    assert_eq!(s, 200, "{body}");

    // Bad admin input.
    let (s, _) = c
        .post(
            0,
            "/admin/learners",
            &json!({ "id": 0, "name": "x", "address": "h:1" }),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = c.post(0, "/admin/promote", &json!({})).await;
    assert_eq!(s, 400);
    let (s, _) = c.post(0, "/admin/promote", &json!({ "id": 12345 })).await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_from_another_cluster_are_refused() {
    let mut c = Cluster::start(3, "");
    let leader = c.wait_leader(WAIT).await;
    let before = c.status(0).await.expect("status");
    // An intruder whose static peer list names node1 at node1's real address: a second cluster
    // that would try to pull node1 into its elections.
    let intruder_port = common::free_port();
    let intruder_api = common::free_port();
    let cfg = c.dir.path().join("intruder.yaml");
    std::fs::write(
        &cfg,
        format!(
            "server:\n  nodeId: intruder\n  listenAddr: \"127.0.0.1:{intruder_port}\"\n  apiAddr: \"127.0.0.1:{intruder_api}\"\n  dataDir: \"{}\"\n  peers:\n    - \"intruder:127.0.0.1:{intruder_port}\"\n    - \"node1:127.0.0.1:{}\"\n{}",
            c.dir.path().join("intruder").display(),
            c.nodes[0].peer_port,
            common::FAST_RAFT
        ),
    )
    .unwrap();
    let mut intruder = std::process::Command::new(common::NODE_BIN)
        .arg("-config")
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let st = loop {
        let st = c.status(0).await.unwrap_or_default();
        if st["refusedPeerMessages"].as_u64().unwrap_or(0) > 0 {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "intruder's messages were never refused: {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = intruder.kill();
    let _ = intruder.wait();
    assert!(
        st["lastRefusal"]
            .as_str()
            .unwrap()
            .contains("cluster-mismatch"),
        "{st}"
    );
    assert_eq!(st["clusterId"], before["clusterId"]);
    assert_eq!(st["voters"], before["voters"]);
    assert!(c.log_text(0).contains("refused a peer message"));
    assert_eq!(
        c.wait_leader(WAIT).await,
        leader,
        "the intruder disturbed the cluster"
    );
    c.set_retry("still", "fine", Duration::from_secs(5)).await;
}

/// The operator speaks gRPC to the same operations: check the service and its error codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_admin_service_answers_and_refuses_with_codes() {
    use concord_proto::admin_client::AdminClient;
    use concord_proto::{InitRequest, MembersRequest, NodeStatusRequest, PromoteRequest};

    let mut c = Cluster::start_join(2);
    let before = c.admin_status(1).await;
    assert_eq!(before["initialized"], false);
    init_first(&mut c).await;
    let connect = |port: u16| async move {
        AdminClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .expect("admin channel")
    };
    let mut a0 = connect(c.nodes[0].peer_port).await;
    let mut a1 = connect(c.nodes[1].peer_port).await;

    let st = a0
        .node_status(NodeStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        st.initialized && st.role == "leader" && !st.cluster_id.is_empty(),
        "{st:?}"
    );
    let st1 = a1
        .node_status(NodeStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!st1.initialized && st1.role == "uninitialized", "{st1:?}");
    assert_ne!(st1.incarnation, st.incarnation);

    let err = a0.init(InitRequest { members: vec![] }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    let err = a0.promote(PromoteRequest { id: 424242 }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    c.add_voter(0, 1).await;
    let members = a1.members(MembersRequest {}).await.unwrap().into_inner();
    assert_eq!(members.members.len(), 2, "{members:?}");
    assert_eq!(members.leader_id, st.id);
    assert!(members.members.iter().all(|m| m.role == "voter"));

    // The reason travels in the status details: the caller matches on it, not on the text.
    let err = a0.promote(PromoteRequest { id: 424242 }).await.unwrap_err();
    assert_eq!(
        concord_proto::errors::reason(&err),
        Some(concord_proto::errors::ErrorReason::NotFound)
    );
    // A follower forwards a client's call to the leader once; a call that another member
    // already forwarded (it thought this follower led) is refused as retryable, not forwarded
    // again, so no call bounces between nodes while leadership moves.
    let marked = || {
        let mut r = tonic::Request::new(MembersRequest {});
        r.metadata_mut().insert(
            concord_node::membership::FORWARDED_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        r
    };
    let err = a1.members(marked()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_eq!(
        concord_proto::errors::reason(&err),
        Some(concord_proto::errors::ErrorReason::NoLeader)
    );
    // The leader itself serves a forwarded call.
    assert_eq!(
        a0.members(marked())
            .await
            .unwrap()
            .into_inner()
            .members
            .len(),
        2
    );
}
