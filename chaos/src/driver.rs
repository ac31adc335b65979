//! Runs a cluster under load and faults, records the history, checks it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};

use crate::checker;
use crate::cluster::ChaosCluster;
use crate::etcd_ops;
use crate::history::{Api, Event, Op, Outcome};
use crate::nemesis::{NemesisEvent, NemesisKind};

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub nodes: usize,
    pub clients: usize,
    pub keys: usize,
    pub duration: Duration,
    pub seed: u64,
    pub nemeses: Vec<NemesisKind>,
    /// Time between faults.
    pub interval: Duration,
    pub node_bin: PathBuf,
    pub report_path: Option<PathBuf>,
    /// TLS on every port, client certificates required, and auth on (clients act as root).
    pub secure: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub seed: u64,
    pub nemeses: Vec<NemesisKind>,
    /// Nemeses that could not run here, and why.
    pub notes: Vec<String>,
    pub operations: usize,
    pub by_outcome: std::collections::BTreeMap<String, usize>,
    pub nemesis_events: Vec<NemesisEvent>,
    /// Things that must never happen, besides a linearizability violation: a node that did not
    /// come back, an unexpected HTTP status.
    pub anomalies: Vec<String>,
    pub violations: Vec<Value>,
    pub inconclusive: Vec<(String, String)>,
    pub linearizable: bool,
    /// Per member: changes its watcher saw, and how often it had to reconnect.
    pub watchers: Vec<Value>,
    pub lease: Option<crate::watchers::LeaseReport>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.linearizable && self.anomalies.is_empty() && self.inconclusive.is_empty()
    }
}

struct Shared {
    started: Instant,
    history: Mutex<Vec<Event>>,
    anomalies: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }
}

async fn request(
    http: &reqwest::Client,
    api: &str,
    op: &Op,
    key: &str,
) -> Result<(u16, Value), reqwest::Error> {
    let req = match op {
        Op::Read => http.get(format!("{api}/api/get?key={key}")),
        Op::Write(v) => http
            .post(format!("{api}/api/set"))
            .json(&json!({ "key": key, "value": v })),
        Op::Cas { expected, new } => http
            .post(format!("{api}/api/cas"))
            .json(&json!({ "key": key, "expected": expected, "value": new })),
    };
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    Ok((status, body))
}

/// Maps a response to what the client may conclude. Anything undocumented is an anomaly.
fn classify(op: &Op, res: &Result<(u16, Value), reqwest::Error>) -> Result<Outcome, String> {
    match res {
        Err(e) if e.is_connect() => Ok(Outcome::Failed),
        Err(_) => Ok(Outcome::Unknown),
        Ok((status, body)) => match (op, status) {
            (Op::Read, 200) => Ok(Outcome::Read(body["value"].as_str().map(String::from))),
            (Op::Read, 404) => Ok(Outcome::Read(None)),
            (Op::Read, 503 | 504) => Ok(Outcome::Failed),
            (_, 200) => Ok(Outcome::Ok),
            (Op::Cas { .. }, 409) => Ok(Outcome::CasFailed),
            (_, 503) => Ok(Outcome::Failed),
            (_, 504) => Ok(Outcome::Unknown),
            (_, s) => Err(format!("unexpected HTTP {s} for {op:?}: {body}")),
        },
    }
}

/// Each client's operations go to a random member through a random API: seed HTTP or etcd
/// gRPC, on the same keys, so the check covers both and their agreement.
async fn client_loop(
    http: reqwest::Client,
    id: usize,
    seed: u64,
    apis: Vec<String>,
    etcd: Vec<etcd_ops::Client>,
    keys: usize,
    shared: Arc<Shared>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut last_seen: Vec<Option<String>> = vec![None; keys];
    let mut seq = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let k = rng.random_range(0..keys);
        let key = format!("k{k}");
        let node = rng.random_range(0..apis.len());
        seq += 1;
        let op = match rng.random_range(0..10) {
            0..=4 => Op::Read,
            5..=7 => Op::Write(format!("c{id}-{seq}")),
            _ => Op::Cas {
                expected: last_seen[k].clone(),
                new: format!("c{id}-{seq}"),
            },
        };
        let api = if rng.random_bool(0.5) {
            Api::Seed
        } else {
            Api::Etcd
        };
        let invoke_us = shared.now_us();
        let outcome = match api {
            Api::Seed => classify(&op, &request(&http, &apis[node], &op, &key).await),
            Api::Etcd => etcd_ops::request(&etcd[node], &op, &key).await,
        };
        let complete = shared.now_us();
        match outcome {
            Ok(outcome) => {
                match (&op, &outcome) {
                    (Op::Read, Outcome::Read(v)) => last_seen[k] = v.clone(),
                    (Op::Write(v), Outcome::Ok) => last_seen[k] = Some(v.clone()),
                    (Op::Cas { new, .. }, Outcome::Ok) => last_seen[k] = Some(new.clone()),
                    _ => {}
                }
                let complete_us = (outcome != Outcome::Unknown).then_some(complete);
                shared.history.lock().push(Event {
                    client: id,
                    key,
                    op,
                    invoke_us,
                    complete_us,
                    outcome,
                    node,
                    api,
                });
            }
            Err(anomaly) => shared.anomalies.lock().push(anomaly),
        }
    }
}

async fn leader_index(http: &reqwest::Client, cluster: &ChaosCluster) -> Option<usize> {
    for n in cluster.nodes.iter().filter(|n| n.running() && !n.paused) {
        let Ok(resp) = http.get(format!("{}/api/status", n.api())).send().await else {
            continue;
        };
        let Ok(st) = resp.json::<Value>().await else {
            continue;
        };
        if let Some(name) = st["leader"]["name"].as_str() {
            return cluster.nodes.iter().position(|n| n.name == name);
        }
    }
    None
}

async fn wait_ready(http: &reqwest::Client, cluster: &ChaosCluster, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let mut all = true;
        for n in cluster.nodes.iter().filter(|n| n.running()) {
            let ok = http
                .get(format!("{}/readyz", n.api()))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            all &= ok;
        }
        if all {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn node_id(http: &reqwest::Client, api: &str) -> Option<u64> {
    let st: Value = http
        .get(format!("{api}/admin/status"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    st["id"].as_u64()
}

/// One fault, healed before returning.
async fn strike(
    kind: NemesisKind,
    rng: &mut StdRng,
    http: &reqwest::Client,
    cluster: &mut ChaosCluster,
    log: &mut Vec<String>,
) -> anyhow::Result<()> {
    let n = cluster.nodes.len();
    let leader = leader_index(http, cluster).await;
    let target = match (leader, rng.random_bool(0.5)) {
        (Some(l), true) => l,
        _ => rng.random_range(0..n),
    };
    let name = cluster.nodes[target].name.clone();
    let is_leader = leader == Some(target);
    let hold = Duration::from_millis(rng.random_range(500..2000));
    match kind {
        NemesisKind::Kill => {
            log.push(format!(
                "kill -9 {name}{}",
                if is_leader { " (leader)" } else { "" }
            ));
            cluster.kill9(target);
            tokio::time::sleep(hold).await;
            cluster.spawn(target)?;
            log.push(format!("restart {name}"));
        }
        NemesisKind::Pause => {
            log.push(format!(
                "SIGSTOP {name}{}",
                if is_leader { " (leader)" } else { "" }
            ));
            cluster.pause(target);
            tokio::time::sleep(hold).await;
            cluster.resume(target);
            log.push(format!("SIGCONT {name}"));
        }
        NemesisKind::DiskTail => {
            cluster.kill9(target);
            let cut = rng.random_bool(0.5);
            let what = cluster.damage_log_tail(target, cut, rng.random_range(1..40))?;
            log.push(format!("kill -9 {name}, then {what}"));
            cluster.spawn(target)?;
            log.push(format!("restart {name} on the damaged log"));
        }
        NemesisKind::DiskFull => {
            let bytes = cluster.fill_disk(target)?;
            log.push(format!("disk full on {name} ({} MiB filler)", bytes >> 20));
            tokio::time::sleep(hold + Duration::from_millis(500)).await;
            cluster.free_disk(target)?;
            log.push(format!("space returned on {name}"));
            // A node whose Raft stopped on the write error fails /livez: restart it, as the
            // kubelet would.
            let live = http
                .get(format!("{}/livez", cluster.nodes[target].api()))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if !live {
                cluster.kill9(target);
                cluster.spawn(target)?;
                log.push(format!(
                    "{name} failed /livez after the full disk: restarted"
                ));
            }
        }
        NemesisKind::Partition => {
            let Some(hosts) = cluster.hosts.as_ref() else {
                return Ok(());
            };
            let others = |x: usize| (0..n).filter(move |i| *i != x);
            let (what, pairs): (String, Vec<(usize, usize)>) = match rng.random_range(0..3) {
                0 if leader.is_some() => {
                    let l = leader.unwrap_or(target);
                    (
                        format!("isolate the leader {}", cluster.nodes[l].name),
                        others(l).map(|o| (l, o)).collect(),
                    )
                }
                1 => {
                    // Bridge: the rest split into two halves that cannot see each other; the
                    // bridge node sees both, so each half plus the bridge is a majority.
                    let bridge = target;
                    let mut rest: Vec<usize> = others(bridge).collect();
                    rand::seq::SliceRandom::shuffle(rest.as_mut_slice(), rng);
                    let (left, right) = rest.split_at(rest.len() / 2);
                    let pairs = left
                        .iter()
                        .flat_map(|a| right.iter().map(move |b| (*a, *b)))
                        .collect();
                    (
                        format!(
                            "bridge through {}: {:?} cut from {:?}",
                            cluster.nodes[bridge].name,
                            left.iter()
                                .map(|i| &cluster.nodes[*i].name)
                                .collect::<Vec<_>>(),
                            right
                                .iter()
                                .map(|i| &cluster.nodes[*i].name)
                                .collect::<Vec<_>>()
                        ),
                        pairs,
                    )
                }
                _ => (
                    format!("isolate {name} (minority) from the majority"),
                    others(target).map(|o| (target, o)).collect(),
                ),
            };
            log.push(format!("partition: {what}"));
            hosts.cut(&pairs)?;
            tokio::time::sleep(hold + Duration::from_millis(1000)).await;
            hosts.heal()?;
            log.push("partition healed".into());
        }
        NemesisKind::Membership => {
            let Some(l) = leader else {
                log.push("membership: no leader, skipped".into());
                return Ok(());
            };
            let victim = (0..n)
                .find(|i| *i != l && cluster.nodes[*i].running() && !cluster.nodes[*i].paused);
            let Some(v) = victim else {
                return Ok(());
            };
            let api = cluster.nodes[l].api();
            let Some(id) = node_id(http, &cluster.nodes[v].api()).await else {
                return Ok(());
            };
            let r = http
                .post(format!("{api}/admin/remove"))
                .json(&json!({ "id": id }))
                .send()
                .await?;
            let status = r.status().as_u16();
            log.push(format!(
                "remove {} from the membership: HTTP {status}",
                cluster.nodes[v].name
            ));
            if status != 200 {
                return Ok(());
            }
            tokio::time::sleep(hold).await;
            // Add it back: learner, then voter once caught up (through any node).
            let spec = json!({ "id": id, "name": cluster.nodes[v].name, "address": cluster.nodes[v].peer_addr() });
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut stage = "learner";
            while Instant::now() < deadline {
                let via = cluster.nodes[(l + 2) % n].api();
                let (path, body) = if stage == "learner" {
                    ("/admin/learners", spec.clone())
                } else {
                    ("/admin/promote", json!({ "id": id }))
                };
                let ok = http
                    .post(format!("{via}{path}"))
                    .json(&body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok && stage == "learner" {
                    stage = "voter";
                } else if ok {
                    log.push(format!("{} added back as voter", cluster.nodes[v].name));
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            anyhow::bail!("could not add {} back within 20s", cluster.nodes[v].name);
        }
    }
    Ok(())
}

/// Turns auth on as etcd's users do (a root user with the root role, then enable), through the
/// first member's etcd API. The run's client certificate names `root`, so every client then
/// acts as root.
async fn enable_auth(
    clients: &crate::security::Clients,
    cluster: &ChaosCluster,
) -> anyhow::Result<()> {
    use concord_proto::etcd::{authpb, etcdserverpb as pb};
    let channel = clients
        .endpoint(&cluster.nodes[0].etcd_addr())?
        .connect()
        .await?;
    let mut auth = pb::auth_client::AuthClient::new(channel);
    auth.user_add(pb::AuthUserAddRequest {
        name: "root".into(),
        options: Some(authpb::UserAddOptions { no_password: true }),
        ..Default::default()
    })
    .await?;
    auth.role_add(pb::AuthRoleAddRequest {
        name: "root".into(),
    })
    .await?;
    auth.user_grant_role(pb::AuthUserGrantRoleRequest {
        user: "root".into(),
        role: "root".into(),
    })
    .await?;
    auth.auth_enable(pb::AuthEnableRequest {}).await?;
    Ok(())
}

pub async fn run(cfg: RunConfig) -> anyhow::Result<Report> {
    anyhow::ensure!(cfg.nodes >= 3, "need at least 3 nodes");
    let mut nemeses = cfg.nemeses.clone();
    let mut notes = Vec::new();
    let hosts = if nemeses.contains(&NemesisKind::Partition) {
        match crate::netns::Hosts::create(cfg.nodes) {
            Ok(h) => Some(h),
            Err(e) => {
                let note = format!(
                    "NETWORK PARTITIONS DISABLED: cannot create network namespaces ({e:#}); running the other nemeses only"
                );
                eprintln!("{note}");
                notes.push(note);
                nemeses.retain(|k| *k != NemesisKind::Partition);
                None
            }
        }
    } else {
        None
    };
    let want_tmpfs = nemeses.contains(&NemesisKind::DiskFull);
    let mut cluster = match ChaosCluster::start(
        cfg.nodes,
        &cfg.node_bin,
        hosts,
        want_tmpfs,
        cfg.secure,
    ) {
        Ok(c) => c,
        Err(e) if want_tmpfs => {
            let note = format!("FULL-DISK FAULT DISABLED: cannot mount tmpfs data dirs ({e:#}); running the other nemeses only");
            eprintln!("{note}");
            notes.push(note);
            nemeses.retain(|k| *k != NemesisKind::DiskFull);
            let hosts = if nemeses.contains(&NemesisKind::Partition) {
                crate::netns::Hosts::create(cfg.nodes).ok()
            } else {
                None
            };
            ChaosCluster::start(cfg.nodes, &cfg.node_bin, hosts, false, cfg.secure)?
        }
        Err(e) => return Err(e),
    };
    let clients = cluster.clients.clone();
    let http = clients.http(Duration::from_secs(3))?;
    anyhow::ensure!(
        wait_ready(&http, &cluster, Duration::from_secs(30)).await,
        "cluster did not become ready:\n{}",
        cluster.log_text(0)
    );
    if cfg.secure {
        enable_auth(&clients, &cluster).await?;
    }
    let shared = Arc::new(Shared {
        started: Instant::now(),
        history: Mutex::default(),
        anomalies: Mutex::default(),
        stop: AtomicBool::new(false),
    });
    let apis: Vec<String> = cluster.nodes.iter().map(|n| n.api()).collect();
    // Watchers on every member from the first revision, and the lease keeper.
    let finish = Arc::new(crate::watchers::Finish::default());
    let watchers: Vec<_> = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            tokio::spawn(crate::watchers::record(
                clients.clone(),
                i,
                n.etcd_addr(),
                1,
                finish.clone(),
            ))
        })
        .collect();
    let lease_stop = Arc::new(AtomicBool::new(false));
    let keeper = tokio::spawn(crate::watchers::keep_lease(
        clients.clone(),
        apis.clone(),
        lease_stop.clone(),
    ));
    let mut workers = Vec::new();
    for id in 0..cfg.clients {
        let etcd = cluster
            .nodes
            .iter()
            .map(|n| etcd_ops::client(&clients, &n.etcd_addr(), Duration::from_secs(3)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        workers.push(tokio::spawn(client_loop(
            http.clone(),
            id,
            cfg.seed,
            apis.clone(),
            etcd,
            cfg.keys,
            shared.clone(),
        )));
    }

    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut nemesis_events = Vec::new();
    let end = Instant::now() + cfg.duration;
    while Instant::now() + cfg.interval < end {
        tokio::time::sleep(cfg.interval).await;
        if nemeses.is_empty() {
            continue;
        }
        let kind = nemeses[rng.random_range(0..nemeses.len())];
        let at_ms = shared.started.elapsed().as_millis() as u64;
        let mut log = Vec::new();
        if let Err(e) = strike(kind, &mut rng, &http, &mut cluster, &mut log).await {
            shared
                .anomalies
                .lock()
                .push(format!("nemesis {kind:?} failed: {e:#}"));
        }
        for what in log {
            nemesis_events.push(NemesisEvent { at_ms, what });
        }
        // Every node must come back from every fault.
        if !wait_ready(&http, &cluster, Duration::from_secs(30)).await {
            let logs: Vec<String> = (0..cluster.nodes.len())
                .map(|i| cluster.log_text(i))
                .collect();
            shared.anomalies.lock().push(format!(
                "cluster not ready 30s after {kind:?}; last log lines: {:?}",
                logs.iter()
                    .map(|l| l.lines().rev().take(5).collect::<Vec<_>>())
                    .collect::<Vec<_>>()
            ));
            break;
        }
    }
    tokio::time::sleep(end.saturating_duration_since(Instant::now())).await;
    shared.stop.store(true, Ordering::Relaxed);
    for c in workers {
        let _ = c.await;
    }
    lease_stop.store(true, Ordering::Relaxed);
    let lease = keeper.await.ok();
    // Final linearizable read of every key: a lost write shows up here if nowhere else.
    for k in 0..cfg.keys {
        let key = format!("k{k}");
        for attempt in 0..50 {
            let node = attempt % cluster.nodes.len();
            let invoke_us = shared.now_us();
            let res = request(&http, &cluster.nodes[node].api(), &Op::Read, &key).await;
            if let Ok(Outcome::Read(v)) = classify(&Op::Read, &res) {
                shared.history.lock().push(Event {
                    client: usize::MAX,
                    key: key.clone(),
                    op: Op::Read,
                    invoke_us,
                    complete_us: Some(shared.now_us()),
                    outcome: Outcome::Read(v),
                    node,
                    api: Api::Seed,
                });
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The committed history: the store's own, read from a member once everything has
    // settled; every watcher must have seen exactly it.
    let mut target = 0i64;
    for attempt in 0..50 {
        let node = attempt % cluster.nodes.len();
        if let Ok(r) = etcd_ops::client(
            &clients,
            &cluster.nodes[node].etcd_addr(),
            Duration::from_secs(3),
        ) {
            let mut kv = r.clone();
            let req = concord_proto::etcd::etcdserverpb::RangeRequest {
                key: b"k0".to_vec(),
                ..Default::default()
            };
            if let Ok(resp) = kv.range(req).await {
                target = resp.into_inner().header.map_or(0, |h| h.revision);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    finish.target.store(target.max(1), Ordering::SeqCst);
    let give_up = {
        let finish = finish.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            finish.abandon.store(true, Ordering::SeqCst);
        })
    };
    let mut records = Vec::new();
    for w in watchers {
        if let Ok(r) = w.await {
            records.push(r);
        }
    }
    let reference = crate::watchers::record(
        clients.clone(),
        0,
        cluster.nodes[0].etcd_addr(),
        1,
        finish.clone(),
    )
    .await;
    give_up.abort();
    {
        let acked: Vec<(String, String)> = shared
            .history
            .lock()
            .iter()
            .filter(|e| e.outcome == Outcome::Ok)
            .filter_map(|e| match &e.op {
                Op::Write(v) | Op::Cas { new: v, .. } => Some((e.key.clone(), v.clone())),
                Op::Read => None,
            })
            .collect();
        let mut problems = reference.anomalies.clone();
        if reference.changes.last().is_none_or(|c| c.revision < target) && target > 1 {
            problems.push(format!(
                "the reference watch did not reach revision {target}"
            ));
        }
        let empty = crate::watchers::LeaseReport::default();
        problems.extend(crate::watchers::check(
            &records,
            &reference.changes,
            &acked,
            lease.as_ref().unwrap_or(&empty),
        ));
        if problems.iter().any(|p| p.contains("lease")) {
            for i in 0..cluster.nodes.len() {
                let lines: Vec<String> = cluster
                    .log_text(i)
                    .lines()
                    .filter(|l| l.contains("concord_node::lease"))
                    .map(String::from)
                    .collect();
                problems.push(format!(
                    "{}'s log on leases: {lines:#?}",
                    cluster.nodes[i].name
                ));
            }
        }
        shared.anomalies.lock().extend(problems);
    }
    let watcher_summary: Vec<Value> = records
        .iter()
        .map(|r| json!({ "member": r.member, "changes": r.changes.len(), "reconnects": r.reconnects }))
        .collect();
    drop(cluster);

    let history = shared.history.lock().clone();
    let mut by_outcome = std::collections::BTreeMap::new();
    for e in &history {
        let label = match e.outcome {
            Outcome::Read(_) => "read-ok",
            Outcome::Ok => "write-ok",
            Outcome::CasFailed => "cas-refused",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
        };
        let api = match e.api {
            Api::Seed => "seed",
            Api::Etcd => "etcd",
        };
        *by_outcome.entry(format!("{api}:{label}")).or_insert(0) += 1;
    }
    let (violations, inconclusive) =
        tokio::task::spawn_blocking(move || checker::check(&history, Duration::from_secs(60)))
            .await?;
    let history_len = shared.history.lock().len();
    let report = Report {
        seed: cfg.seed,
        nemeses,
        notes,
        operations: history_len,
        by_outcome,
        nemesis_events,
        anomalies: shared.anomalies.lock().clone(),
        linearizable: violations.is_empty(),
        violations: violations
            .iter()
            .map(|v| json!({ "key": v.key, "minimal_failing_history": v.minimal, "history": v.history }))
            .collect(),
        inconclusive,
        watchers: watcher_summary,
        lease,
    };
    if let Some(path) = &cfg.report_path {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(report)
}
