//! The membership executor against real concord-node processes standing in for pods: each
//! "pod" is a local process in join mode with its own data dir and ports, the "StatefulSet" is
//! this file's `ProcessPods`. The operator's own observe → plan → execute loop drives it while a
//! client writes throughout; every acknowledged write must be readable at the end.

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_operator::admin::GrpcAdmin;
use concord_operator::membership::{
    self, PodRuntime, Policy, RuntimeError, RuntimePod, RuntimeView,
};
use concord_operator::plan::{Action, PodObs, Step};
use parking_lot::Mutex;

/// A free port this process has not handed out before (see node/tests/common's).
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

struct ProcPod {
    peer: u16,
    api: u16,
    /// Picked like the others: a port the OS picks at bind time (`:0`) can be one just handed
    /// out to another pod that has not bound it yet.
    etcd: u16,
    child: Option<Child>,
    started: Instant,
    revision: u64,
}

/// Pods as local processes. `revision` plays the StatefulSet template revision: bumping it
/// makes every running pod out of date until restarted.
struct ProcessPods {
    dir: tempfile::TempDir,
    bin: PathBuf,
    replicas: Mutex<u32>,
    pods: Mutex<BTreeMap<u32, ProcPod>>,
    revision: AtomicU64,
    /// storage.onScaleDown: Retain keeps a removed pod's data dir for when it comes back.
    retain_on_scale_down: AtomicBool,
    http: reqwest::Client,
}

impl ProcessPods {
    fn new() -> ProcessPods {
        ProcessPods {
            dir: tempfile::tempdir().expect("tempdir"),
            bin: common::node_binary(),
            replicas: Mutex::new(0),
            pods: Mutex::new(BTreeMap::new()),
            revision: AtomicU64::new(1),
            retain_on_scale_down: AtomicBool::new(false),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("http client"),
        }
    }

    fn spawn(&self, ordinal: u32, pods: &mut BTreeMap<u32, ProcPod>) {
        let name = format!("kv-{ordinal}");
        let (peer, api, etcd) = match pods.get(&ordinal) {
            Some(p) => (p.peer, p.api, p.etcd),
            None => (free_port(), free_port(), free_port()),
        };
        let config = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            format!(
                "server:\n  nodeId: \"{name}\"\n  listenAddr: \"127.0.0.1:{peer}\"\n  apiAddr: \"127.0.0.1:{api}\"\n  etcdAddr: \"127.0.0.1:{etcd}\"\n  dataDir: \"{}\"\n  join: true\nraft:\n  heartbeatIntervalMs: 50\n  electionTimeoutMinMs: 500\n  electionTimeoutMaxMs: 1000\n  maxPromoteLag: 100\n",
                self.dir.path().join(&name).display()
            ),
        )
        .expect("write config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .expect("log file");
        let child = Command::new(&self.bin)
            .arg("-config")
            .arg(&config)
            .env("CONCORD_LOG", "info,openraft=warn")
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn concord-node");
        pods.insert(
            ordinal,
            ProcPod {
                peer,
                api,
                etcd,
                child: Some(child),
                started: Instant::now(),
                revision: self.revision.load(Ordering::SeqCst),
            },
        );
    }

    fn stop(child: &mut Child) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn api_ports(&self) -> Vec<u16> {
        self.pods
            .lock()
            .values()
            .filter(|p| p.child.is_some())
            .map(|p| p.api)
            .collect()
    }
}

impl Drop for ProcessPods {
    fn drop(&mut self) {
        for p in self.pods.lock().values_mut() {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::env::var_os("CONCORD_TEST_KEEP").is_some() {
            let path = self.dir.path().to_path_buf();
            eprintln!("keeping {}", path.display());
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("tempdir"),
            ));
        }
    }
}

#[tonic::async_trait]
impl PodRuntime for ProcessPods {
    async fn view(&self) -> Result<RuntimeView, RuntimeError> {
        let current = self.revision.load(Ordering::SeqCst);
        let snapshot: Vec<(u32, u16, u16, Duration, bool)> = self
            .pods
            .lock()
            .iter()
            .filter(|(_, p)| p.child.is_some())
            .map(|(o, p)| {
                (
                    *o,
                    p.peer,
                    p.api,
                    p.started.elapsed(),
                    p.revision == current,
                )
            })
            .collect();
        let mut pods = Vec::new();
        for (ordinal, peer, api, age, up_to_date) in snapshot {
            let ready = self
                .http
                .get(format!("http://127.0.0.1:{api}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            pods.push(RuntimePod {
                pod: PodObs {
                    ordinal,
                    name: format!("kv-{ordinal}"),
                    ready,
                    up_to_date,
                    terminating: false,
                    age,
                    node: None,
                },
                admin_addr: Some(format!("127.0.0.1:{peer}")),
                image: None,
                uid: None,
            });
        }
        Ok(RuntimeView {
            sts_replicas: *self.replicas.lock(),
            pods,
        })
    }

    async fn scale(&self, replicas: u32) -> Result<(), RuntimeError> {
        let mut pods = self.pods.lock();
        let mut current = self.replicas.lock();
        for o in replicas..*current {
            if let Some(p) = pods.get_mut(&o) {
                if let Some(mut c) = p.child.take() {
                    Self::stop(&mut c);
                }
            }
            if !self.retain_on_scale_down.load(Ordering::SeqCst) {
                let _ = std::fs::remove_dir_all(self.dir.path().join(format!("kv-{o}")));
            }
        }
        for o in *current..replicas {
            self.spawn(o, &mut pods);
        }
        *current = replicas;
        Ok(())
    }

    async fn restart(&self, pod: &str, _uid: Option<&str>) -> Result<(), RuntimeError> {
        let ordinal: u32 = pod
            .strip_prefix("kv-")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| RuntimeError::Other(format!("no pod {pod}")))?;
        let mut pods = self.pods.lock();
        if let Some(mut c) = pods.get_mut(&ordinal).and_then(|p| p.child.take()) {
            Self::stop(&mut c);
        }
        self.spawn(ordinal, &mut pods);
        Ok(())
    }
}

/// Drives the operator's loop until the plan converges; returns the actions taken.
async fn converge(
    pods: &ProcessPods,
    admin: &GrpcAdmin,
    desired: u32,
    timeout: Duration,
) -> Vec<Action> {
    let policy = Policy {
        desired,
        recorded_cluster_id: None,
        max_promote_lag: 100,
        stall_after: Duration::from_secs(60),
    };
    let deadline = Instant::now() + timeout;
    let mut actions = Vec::new();
    let mut last = String::new();
    loop {
        let (_, step, outcome) = membership::step(pods, admin, &policy)
            .await
            .expect("runtime never fails here");
        match &step {
            Step::Converged => return actions,
            Step::Act(a) => match outcome {
                Some(Ok(msg)) => {
                    eprintln!("step: {} -> {msg}", membership::describe(a));
                    actions.push(a.clone());
                }
                Some(Err(e)) => eprintln!("step failed (retried): {e}"),
                None => {}
            },
            Step::Wait { reason, message } => {
                let line = format!("wait {reason:?}: {message}");
                if line != last {
                    eprintln!("{line}");
                    last = line;
                }
                assert!(
                    !reason.blocking()
                        || matches!(reason, concord_operator::plan::WaitReason::QuorumLost),
                    "blocked: {message}"
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "no convergence to {desired} within {timeout:?}; last: {step:?}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Writes unique keys to whichever pods are up, remembering each acknowledged one.
fn start_writer(
    pods: Arc<ProcessPods>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .expect("client");
        let mut acked = Vec::new();
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let ports = pods.api_ports();
            if ports.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let port = ports[(i as usize) % ports.len()];
            let r = http
                .post(format!("http://127.0.0.1:{port}/api/set"))
                .json(&serde_json::json!({ "key": format!("w{i}"), "value": i.to_string() }))
                .send()
                .await;
            if r.is_ok_and(|r| r.status().is_success()) {
                acked.push(i);
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        acked
    })
}

async fn read_back(pods: &ProcessPods, acked: &[u64]) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let ports = pods.api_ports();
    for (n, i) in acked.iter().enumerate() {
        let port = ports[n % ports.len()];
        let body: serde_json::Value = http
            .get(format!("http://127.0.0.1:{port}/api/get?key=w{i}"))
            .send()
            .await
            .expect("read")
            .json()
            .await
            .expect("json");
        assert_eq!(
            body["value"].as_str(),
            Some(i.to_string().as_str()),
            "acknowledged write w{i} lost: {body}"
        );
    }
}

async fn voters(admin: &GrpcAdmin, pods: &ProcessPods) -> Vec<String> {
    use concord_operator::admin::NodeAdmin;
    let view = pods.view().await.expect("view");
    for p in &view.pods {
        if let Some(addr) = &p.admin_addr {
            if let Ok(m) = admin.members(addr).await {
                let mut names: Vec<String> = m
                    .members
                    .into_iter()
                    .filter(|m| m.role == "voter")
                    .map(|m| m.name)
                    .collect();
                names.sort();
                return names;
            }
        }
    }
    Vec::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_1_3_5_3_and_roll_every_member_while_writing() {
    let pods = Arc::new(ProcessPods::new());
    let admin = GrpcAdmin::default();
    let t = Duration::from_secs(90);

    // Create with one member, then start the client.
    let created = converge(&pods, &admin, 1, t).await;
    assert!(created
        .iter()
        .any(|a| matches!(a, Action::Initialize { .. })));
    assert_eq!(voters(&admin, &pods).await, ["kv-0"]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_writer(pods.clone(), stop.clone());

    // 1 -> 3: each new member added as a learner, then promoted, one at a time.
    let up = converge(&pods, &admin, 3, t).await;
    let kinds: Vec<&str> = up.iter().map(membership::action_kind).collect();
    assert_eq!(
        kinds,
        [
            "ScaleStatefulSet",
            "AddLearner",
            "Promote",
            "AddLearner",
            "Promote"
        ]
    );
    assert_eq!(voters(&admin, &pods).await, ["kv-0", "kv-1", "kv-2"]);

    // 3 -> 5.
    converge(&pods, &admin, 5, t).await;
    assert_eq!(voters(&admin, &pods).await.len(), 5);

    // 5 -> 3: members leave the Raft configuration before their pods go.
    let down = converge(&pods, &admin, 3, t).await;
    let first_scale = down
        .iter()
        .position(|a| matches!(a, Action::ScaleStatefulSet { .. }))
        .expect("the StatefulSet shrinks");
    let removals = down[..first_scale]
        .iter()
        .filter(|a| matches!(a, Action::RemoveMember { .. }))
        .count();
    assert_eq!(removals, 2, "{down:?}");
    assert_eq!(voters(&admin, &pods).await, ["kv-0", "kv-1", "kv-2"]);

    // A new template: every member restarted, followers first, leader last after handing over.
    pods.revision.fetch_add(1, Ordering::SeqCst);
    let roll = converge(&pods, &admin, 3, Duration::from_secs(120)).await;
    let restarts: Vec<&Action> = roll
        .iter()
        .filter(|a| matches!(a, Action::RestartPod { .. }))
        .collect();
    assert_eq!(restarts.len(), 3, "{roll:?}");
    let last_restart = roll
        .iter()
        .rposition(|a| matches!(a, Action::RestartPod { .. }))
        .expect("restarts");
    assert!(
        roll[..last_restart]
            .iter()
            .any(|a| matches!(a, Action::TransferLeadership { .. })),
        "the leader hands over before its restart: {roll:?}"
    );

    // Let the client write a little more against the final cluster, then check everything.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let acked = writer.await.expect("writer");
    assert!(
        acked.len() > 100,
        "the client kept writing ({} acked)",
        acked.len()
    );
    read_back(&pods, &acked).await;
    eprintln!("{} acknowledged writes, all readable", acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_a_wiped_volume_is_replaced() {
    let pods = Arc::new(ProcessPods::new());
    let admin = GrpcAdmin::default();
    let t = Duration::from_secs(90);
    converge(&pods, &admin, 3, t).await;
    let before = {
        use concord_operator::admin::NodeAdmin;
        let view = pods.view().await.expect("view");
        admin
            .node_status(view.pods[2].admin_addr.as_deref().expect("addr"))
            .await
            .expect("status")
            .id
    };
    // kv-2 loses its disk: kill -9, wipe, start again (the StatefulSet would recreate it).
    {
        let mut map = pods.pods.lock();
        if let Some(mut c) = map.get_mut(&2).and_then(|p| p.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        std::fs::remove_dir_all(pods.dir.path().join("kv-2")).expect("wipe");
        pods.spawn(2, &mut map);
    }
    // Until the new process answers, kv-2 just looks down (Degraded, nothing to do).
    let addr = pods.view().await.expect("view").pods[2]
        .admin_addr
        .clone()
        .expect("addr");
    let deadline = Instant::now() + t;
    loop {
        use concord_operator::admin::NodeAdmin;
        if let Ok(s) = admin.node_status(&addr).await {
            assert_ne!(s.id, before, "an empty volume means a new member id");
            break;
        }
        assert!(Instant::now() < deadline, "kv-2 did not restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let steps = converge(&pods, &admin, 3, t).await;
    let kinds: Vec<&str> = steps.iter().map(membership::action_kind).collect();
    assert_eq!(
        kinds,
        ["RemoveMember", "AddLearner", "Promote"],
        "{steps:?}"
    );
    assert!(matches!(
        steps[0],
        Action::RemoveMember { id, reason: concord_operator::plan::RemoveReason::Replaced, .. } if id == before
    ));
    assert_eq!(voters(&admin, &pods).await, ["kv-0", "kv-1", "kv-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_up_interrupted_and_reverted_converges_after_an_operator_restart() {
    let pods = Arc::new(ProcessPods::new());
    let t = Duration::from_secs(90);
    converge(&pods, &GrpcAdmin::default(), 3, t).await;

    // 3 -> 5 starts: run the operator until kv-3 is a learner (or a voter), then "crash" it.
    let first = GrpcAdmin::default();
    let policy = Policy {
        desired: 5,
        recorded_cluster_id: None,
        max_promote_lag: 100,
        stall_after: Duration::from_secs(60),
    };
    let deadline = Instant::now() + t;
    loop {
        let (_, step, outcome) = membership::step(pods.as_ref(), &first, &policy)
            .await
            .expect("step");
        if let (Step::Act(Action::AddLearner { pod, .. }), Some(Ok(_))) = (&step, &outcome) {
            if pod == "kv-3" {
                break;
            }
        }
        assert!(Instant::now() < deadline, "kv-3 never added");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(first);

    // A new operator process sees spec.replicas back at 3: the learner leaves, then the pods.
    let steps = converge(&pods, &GrpcAdmin::default(), 3, t).await;
    let kinds: Vec<&str> = steps.iter().map(membership::action_kind).collect();
    assert_eq!(kinds, ["RemoveMember", "ScaleStatefulSet"], "{steps:?}");
    assert!(matches!(
        steps[0],
        Action::RemoveMember { reason: concord_operator::plan::RemoveReason::Abandoned, ref name, .. } if name == "kv-3"
    ));
    assert_eq!(
        voters(&GrpcAdmin::default(), &pods).await,
        ["kv-0", "kv-1", "kv-2"]
    );
    assert_eq!(pods.view().await.expect("view").pods.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_volume_rejoins_after_scale_down_and_up() {
    // storage.onScaleDown: Retain (the default): kv-2 leaves, its data stays, and when the
    // cluster grows again the pod comes back with its old identity and is re-added.
    let pods = Arc::new(ProcessPods::new());
    pods.retain_on_scale_down.store(true, Ordering::SeqCst);
    let admin = GrpcAdmin::default();
    let t = Duration::from_secs(90);
    converge(&pods, &admin, 3, t).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_writer(pods.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    converge(&pods, &admin, 2, t).await;
    assert_eq!(voters(&admin, &pods).await, ["kv-0", "kv-1"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let back = converge(&pods, &admin, 3, t).await;
    let kinds: Vec<&str> = back.iter().map(membership::action_kind).collect();
    assert_eq!(
        kinds,
        ["ScaleStatefulSet", "AddLearner", "Promote"],
        "{back:?}"
    );
    assert_eq!(voters(&admin, &pods).await, ["kv-0", "kv-1", "kv-2"]);
    stop.store(true, Ordering::SeqCst);
    let acked = writer.await.expect("writer");
    read_back(&pods, &acked).await;
    // The rejoined member's own state machine catches up with everything acknowledged.
    let last = *acked.last().expect("some writes acknowledged");
    let kv2 = pods.pods.lock()[&2].api;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = pods
            .http
            .get(format!(
                "http://127.0.0.1:{kv2}/api/get?key=w{last}&consistency=stale"
            ))
            .send()
            .await;
        if let Ok(r) = r {
            if r.status().is_success() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "kv-2 never applied w{last}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
