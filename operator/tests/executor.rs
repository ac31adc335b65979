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

use concord_operator::admin::{AdminTls, GrpcAdmin, NodeAdmin};
use concord_operator::crd::PeerTls;
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
    /// The TLS step it was started with.
    tls_step: PeerTls,
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
    /// The TLS step of the current template (the ConfigMap's `peerTlsMode`), and where the
    /// certificates are (`kv-N/tls.crt`, `tls.key`, `ca.crt`), once minted.
    peer: Mutex<PeerTls>,
    certs: Mutex<Option<Certs>>,
}

/// Certificates minted by the operator's own code, as its Secrets would hold them.
#[derive(Clone)]
struct Certs {
    dir: PathBuf,
    ca: String,
    operator: (String, String),
    client: (String, String),
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
                .danger_accept_invalid_certs(true)
                .build()
                .expect("http client"),
            peer: Mutex::new(PeerTls::Off),
            certs: Mutex::new(None),
        }
    }

    /// Mints the cluster's certificates with the operator's code (CA, members, the operator's
    /// and a client's), written as the member Secrets are mounted.
    fn mint_certificates(&self, members: u32) -> Certs {
        use concord_operator::tls::certs::{Ca, Leaf};
        use concord_operator::tls::objects::member_leaf;
        let ca = Ca::generate("kv").expect("ca");
        let dir = self.dir.path().join("tls");
        let life = Duration::from_secs(86_400);
        for o in 0..members {
            let issued = ca
                .issue(&member_leaf("kv", "default", o), life)
                .expect("member");
            let d = dir.join(format!("kv-{o}"));
            std::fs::create_dir_all(&d).expect("dir");
            std::fs::write(d.join("tls.crt"), &issued.cert_pem).expect("crt");
            std::fs::write(d.join("tls.key"), &issued.key_pem).expect("key");
            std::fs::write(d.join("ca.crt"), &ca.cert_pem).expect("ca");
        }
        let client = |cn: &str| {
            let leaf = Leaf {
                common_name: cn.into(),
                dns_names: vec![],
                ips: vec![],
                server: false,
            };
            let i = ca.issue(&leaf, life).expect("client");
            (i.cert_pem, i.key_pem)
        };
        let certs = Certs {
            dir,
            ca: ca.cert_pem.clone(),
            operator: client("concord-operator"),
            client: client("client"),
        };
        *self.certs.lock() = Some(certs.clone());
        certs
    }

    /// A new template at TLS step `peer`: every running pod is out of date until restarted.
    fn set_peer(&self, peer: PeerTls) {
        *self.peer.lock() = peer;
        self.revision.fetch_add(1, Ordering::SeqCst);
    }

    fn tls_yaml(&self, name: &str, peer: PeerTls) -> String {
        if peer == PeerTls::Off {
            return String::new();
        }
        let certs = self.certs.lock().clone().expect("certificates minted");
        let d = certs.dir.join(name);
        let (c, k, a) = (
            d.join("tls.crt").display().to_string(),
            d.join("tls.key").display().to_string(),
            d.join("ca.crt").display().to_string(),
        );
        format!(
            "tls:\n  certFile: \"{c}\"\n  keyFile: \"{k}\"\n  trustedCaFile: \"{a}\"\n  clientCertAuth: true\n  probesWithoutClientCert: true\n  peerCertFile: \"{c}\"\n  peerKeyFile: \"{k}\"\n  peerTrustedCaFile: \"{a}\"\n  peerTlsMode: {}\n",
            peer.as_str()
        )
    }

    fn spawn(&self, ordinal: u32, pods: &mut BTreeMap<u32, ProcPod>) {
        let name = format!("kv-{ordinal}");
        let (peer, api, etcd) = match pods.get(&ordinal) {
            Some(p) => (p.peer, p.api, p.etcd),
            None => (free_port(), free_port(), free_port()),
        };
        let config = self.dir.path().join(format!("{name}.yaml"));
        let tls_step = *self.peer.lock();
        std::fs::write(
            &config,
            format!(
                "server:\n  nodeId: \"{name}\"\n  listenAddr: \"127.0.0.1:{peer}\"\n  apiAddr: \"127.0.0.1:{api}\"\n  etcdAddr: \"127.0.0.1:{etcd}\"\n  dataDir: \"{}\"\n  join: true\nraft:\n  heartbeatIntervalMs: 50\n  electionTimeoutMinMs: 500\n  electionTimeoutMaxMs: 1000\n  maxPromoteLag: 100\n{}",
                self.dir.path().join(&name).display(),
                self.tls_yaml(&name, tls_step)
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
                tls_step,
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

    /// The running pods' HTTP API ports, and whether each serves TLS.
    fn api_ports(&self) -> Vec<(u16, bool)> {
        self.pods
            .lock()
            .values()
            .filter(|p| p.child.is_some())
            .map(|p| (p.api, p.tls_step != PeerTls::Off))
            .collect()
    }

    /// A client as an application would be: plaintext, or trusting the cluster CA with the
    /// client certificate, by what the pod serves.
    fn clients(&self, timeout: Duration) -> (reqwest::Client, Option<reqwest::Client>) {
        let plain = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .expect("client");
        let tls = self.certs.lock().clone().map(|c| {
            reqwest::Client::builder()
                .timeout(timeout)
                .add_root_certificate(reqwest::Certificate::from_pem(c.ca.as_bytes()).expect("ca"))
                .identity(
                    reqwest::Identity::from_pem(format!("{}{}", c.client.0, c.client.1).as_bytes())
                        .expect("identity"),
                )
                .build()
                .expect("tls client")
        });
        (plain, tls)
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
        type Seen = (u32, u16, u16, Duration, bool, PeerTls, u64);
        let snapshot: Vec<Seen> = self
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
                    p.tls_step,
                    p.revision,
                )
            })
            .collect();
        let mut pods = Vec::new();
        for (ordinal, peer, api, age, up_to_date, tls_step, revision) in snapshot {
            let scheme = if tls_step == PeerTls::Off {
                "http"
            } else {
                "https"
            };
            let ready = self
                .http
                .get(format!("{scheme}://127.0.0.1:{api}/readyz"))
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
                config_hash: Some(format!("{revision}-{}", tls_step.as_str())),
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

fn policy(desired: u32) -> Policy {
    Policy {
        desired,
        recorded_cluster_id: None,
        max_promote_lag: 100,
        stall_after: Duration::from_secs(60),
        restore_from: None,
    }
}

/// Drives the operator's loop until the plan converges; returns the actions taken.
async fn converge(
    pods: &ProcessPods,
    admin: &dyn NodeAdmin,
    desired: u32,
    timeout: Duration,
) -> Vec<Action> {
    converge_with(pods, admin, &policy(desired), timeout).await
}

async fn converge_with(
    pods: &ProcessPods,
    admin: &dyn NodeAdmin,
    policy: &Policy,
    timeout: Duration,
) -> Vec<Action> {
    let desired = policy.desired;
    let deadline = Instant::now() + timeout;
    let mut actions = Vec::new();
    let mut last = String::new();
    loop {
        let (_, step, outcome) = membership::step(pods, admin, policy)
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
        let mut acked = Vec::new();
        let mut clients: (Option<reqwest::Client>, Option<reqwest::Client>) = (None, None);
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let ports = pods.api_ports();
            if ports.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let (port, tls) = ports[(i as usize) % ports.len()];
            // Certificates may be minted while the writer runs: the clients follow (built
            // once each: a TLS client per request costs more than the request).
            if clients.1.is_none() && (clients.0.is_none() || tls) {
                let (plain, secure) = pods.clients(Duration::from_secs(3));
                clients = (Some(plain), secure);
            }
            let Some(plain) = clients.0.clone() else {
                continue;
            };
            let secure = clients.1.clone();
            let (http, scheme) = match (tls, &secure) {
                (true, Some(c)) => (c, "https"),
                _ => (&plain, "http"),
            };
            let r = http
                .post(format!("{scheme}://127.0.0.1:{port}/api/set"))
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

/// The value of key `w<i>`, read through member `n` (modulo the members), over TLS where the
/// member serves it.
async fn value_of(pods: &ProcessPods, n: usize, i: u64) -> Option<String> {
    let (plain, secure) = pods.clients(Duration::from_secs(5));
    let ports = pods.api_ports();
    let (port, tls) = ports[n % ports.len()];
    let (http, scheme) = match (tls, &secure) {
        (true, Some(c)) => (c, "https"),
        _ => (&plain, "http"),
    };
    let body: serde_json::Value = http
        .get(format!("{scheme}://127.0.0.1:{port}/api/get?key=w{i}"))
        .send()
        .await
        .expect("read")
        .json()
        .await
        .expect("json");
    body["value"].as_str().map(str::to_string)
}

async fn read_back(pods: &ProcessPods, acked: &[u64]) {
    for (n, i) in acked.iter().enumerate() {
        assert_eq!(
            value_of(pods, n, *i).await,
            Some(i.to_string()),
            "acknowledged write w{i} lost"
        );
    }
}

async fn voters(admin: &dyn NodeAdmin, pods: &ProcessPods) -> Vec<String> {
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
    let policy = policy(5);
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

/// The issue's story: TLS turned on for a running 3-member cluster while a client writes. The
/// operator's own pieces decide — `tls::next_peer` for the step, `tls::admin_over_tls` for how
/// it dials, the planner for the restarts — and the members roll off -> accept -> prefer -> on,
/// one member at a time per step, the leader last. Every acknowledged write is read back over
/// TLS, and at the end plaintext is refused on the client and the peer port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_turned_on_for_a_running_cluster_while_writing() {
    use concord_operator::tls;
    let pods = Arc::new(ProcessPods::new());
    let plain = GrpcAdmin::default();
    let t = Duration::from_secs(90);
    converge(&pods, &plain, 3, t).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_writer(pods.clone(), stop.clone());

    let certs = pods.mint_certificates(3);
    let identity = AdminTls {
        ca_pem: certs.ca.clone(),
        cert_pem: certs.operator.0.clone(),
        key_pem: certs.operator.1.clone(),
        domain: concord_operator::naming::peers_host("kv", "default"),
    };
    let mut peer = PeerTls::Off;
    let mut restarts = Vec::new();
    let started = Instant::now();
    loop {
        let admin = plain.scoped(tls::admin_over_tls(peer).then(|| identity.clone()));
        let actions = converge(&pods, admin.as_ref(), 3, t).await;
        let rolled: Vec<String> = actions
            .iter()
            .filter_map(|a| match a {
                Action::RestartPod { pod } => Some(pod.clone()),
                _ => None,
            })
            .collect();
        let pods_step: Vec<PeerTls> = pods.pods.lock().values().map(|p| p.tls_step).collect();
        let settled = pods_step.iter().all(|s| *s == peer);
        let next = tls::next_peer(peer, true, settled, true);
        eprintln!("step {peer:?}: restarted {rolled:?}; next {next:?}");
        restarts.push((peer, rolled));
        if next == peer {
            break;
        }
        peer = next;
        pods.set_peer(next);
    }
    eprintln!("TLS on in {:?}", started.elapsed());
    assert_eq!(peer, PeerTls::On);
    // Off needed no roll; each of the three steps restarted every member once.
    let per_step: Vec<(PeerTls, usize)> = restarts.iter().map(|(p, r)| (*p, r.len())).collect();
    assert_eq!(
        per_step,
        [
            (PeerTls::Off, 0),
            (PeerTls::Accept, 3),
            (PeerTls::Prefer, 3),
            (PeerTls::On, 3)
        ]
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let acked = writer.await.expect("writer");
    assert!(acked.len() > 50, "the client kept writing: {}", acked.len());
    read_back(&pods, &acked).await;

    // On: plaintext refused on the client port and on the peer port (the admin API).
    let (plain_http, _) = pods.clients(Duration::from_secs(2));
    for (port, tls) in pods.api_ports() {
        assert!(tls);
        let r = plain_http
            .get(format!("http://127.0.0.1:{port}/livez"))
            .send()
            .await;
        assert!(r.is_err(), "plaintext answered on {port}");
    }
    let view = pods.view().await.expect("view");
    let addr = view.pods[0].admin_addr.clone().expect("addr");
    assert!(plain.node_status(&addr).await.is_err(), "plaintext admin");
    let secure = plain.scoped(Some(identity.clone()));
    assert!(secure.node_status(&addr).await.is_ok(), "mTLS admin");
    // With auth enabled (a root user, through etcd's JSON gateway), the operator's certificate
    // still acts as root on the admin API, while the client certificate's user does not exist.
    let (_, Some(app)) = pods.clients(Duration::from_secs(5)) else {
        panic!("tls client");
    };
    let etcd = pods
        .pods
        .lock()
        .values()
        .next()
        .map(|p| p.etcd)
        .expect("etcd port");
    for (path, body) in [
        ("role/add", serde_json::json!({"name": "root"})),
        (
            "user/add",
            serde_json::json!({"name": "root", "password": "s3cret"}),
        ),
        (
            "user/grant",
            serde_json::json!({"user": "root", "role": "root"}),
        ),
        ("enable", serde_json::json!({})),
    ] {
        let r = app
            .post(format!("https://127.0.0.1:{etcd}/v3/auth/{path}"))
            .json(&body)
            .send()
            .await
            .expect("auth call");
        assert!(r.status().is_success(), "{path}: {:?}", r.text().await);
    }
    assert!(
        secure.node_status(&addr).await.is_ok(),
        "operator under auth"
    );
    assert!(secure.members(&addr).await.is_ok(), "operator under auth");
    let (port, _) = pods.api_ports()[0];
    let denied = app
        .post(format!("https://127.0.0.1:{port}/api/set"))
        .json(&serde_json::json!({"key": "k", "value": "v"}))
        .send()
        .await
        .expect("answer");
    assert!(
        denied.status().is_client_error(),
        "a certificate for a user that does not exist: {}",
        denied.status()
    );
    // A client certificate is not a member's: another CA's operator is refused.
    let stranger = ProcessPods::new().mint_certificates(1);
    let foreign = plain.scoped(Some(AdminTls {
        ca_pem: certs.ca.clone(),
        cert_pem: stranger.operator.0,
        key_pem: stranger.operator.1,
        domain: identity.domain.clone(),
    }));
    assert!(
        foreign.node_status(&addr).await.is_err(),
        "foreign CA admin"
    );
}

/// Every `w<i>` key a pod of `pods` holds, for i below `n`, with its value.
async fn keys(pods: &ProcessPods, n: u64) -> Vec<(u64, Option<String>)> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push((i, value_of(pods, 0, i).await));
    }
    out
}

/// Runs the operator's loop on a new cluster until its first member's initialization has been
/// tried once; returns how that went.
async fn first_initialization(
    pods: &ProcessPods,
    admin: &dyn NodeAdmin,
    policy: &Policy,
) -> Result<String, membership::StepError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, step, outcome) = membership::step(pods, admin, policy)
            .await
            .expect("runtime");
        if let (Step::Act(Action::Initialize { .. }), Some(outcome)) = (&step, outcome) {
            return outcome;
        }
        assert!(Instant::now() < deadline, "no initialization: {step:?}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_is_restored_from_a_backup_and_bad_backups_initialize_nothing() {
    use concord_operator::backup::restore::BackupObject;
    use object_store::{memory::InMemory, path::Path, ObjectStore};
    let admin = GrpcAdmin::default();
    let t = Duration::from_secs(90);

    // The source: a cluster with data, and a backup of it taken through the admin API.
    let source = Arc::new(ProcessPods::new());
    converge(&source, &admin, 1, t).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_writer(source.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::SeqCst);
    let acked = writer.await.expect("writer");
    let written = acked.iter().max().map_or(0, |m| m + 1);
    let addr = format!("127.0.0.1:{}", source.pods.lock()[&0].peer);
    let mut stream = admin.snapshot(&addr).await.expect("backup");
    let mut backup = Vec::new();
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        backup.extend_from_slice(&chunk.expect("chunk"));
    }
    let expected = keys(&source, written).await;
    assert!(
        expected.iter().filter(|(_, v)| v.is_some()).count() == acked.len(),
        "the source holds every acknowledged write"
    );

    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let put = |key: &str, bytes: Vec<u8>| {
        let store = store.clone();
        let key = key.to_string();
        async move {
            store
                .put(&Path::from(key.as_str()), bytes.into())
                .await
                .expect("put")
        }
    };
    put("good.backup", backup.clone()).await;
    let mut flipped = backup.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 1;
    put("flipped.backup", flipped).await;
    let mut newer = backup.clone();
    newer[7] = b'9';
    put("newer.backup", newer).await;
    let from = |key: &str| {
        let mut p = policy(3);
        p.restore_from = Some(Arc::new(BackupObject {
            store: store.clone(),
            key: key.into(),
            location: format!("memory://{key}"),
        }));
        p
    };

    // Bad backups: the cause is named, and the first member stays out of any cluster.
    let target = ProcessPods::new();
    for (key, reason) in [
        ("missing.backup", "BackupNotFound"),
        ("flipped.backup", "BackupCorrupt"),
        ("newer.backup", "BackupFormatTooNew"),
    ] {
        match first_initialization(&target, &admin, &from(key)).await {
            Err(membership::StepError::Restore(f)) => {
                eprintln!("{key}: {f}");
                assert_eq!(f.reason, reason, "{key}: {f}");
                assert!(!f.transient, "{key}");
            }
            other => panic!("{key}: {other:?}"),
        }
        let pod0 = format!("127.0.0.1:{}", target.pods.lock()[&0].peer);
        let status = admin.node_status(&pod0).await.expect("status");
        assert!(!status.initialized, "{key}: nothing was initialized");
    }

    // The good one: the first member restores it, the others join; the new cluster holds
    // exactly what the source held.
    let started = Instant::now();
    let actions = converge_with(&target, &admin, &from("good.backup"), t).await;
    eprintln!(
        "restored and grown to 3 members in {:?}: {:?}",
        started.elapsed(),
        actions
            .iter()
            .map(membership::action_kind)
            .collect::<Vec<_>>()
    );
    assert_eq!(voters(&admin, &target).await, ["kv-0", "kv-1", "kv-2"]);
    assert_eq!(keys(&target, written).await, expected);
    let pod0 = format!("127.0.0.1:{}", target.pods.lock()[&0].peer);
    let restored = admin.node_status(&pod0).await.expect("status");
    let original = admin.node_status(&addr).await.expect("status");
    assert_ne!(restored.cluster_id, original.cluster_id, "a new cluster id");
    eprintln!("{} keys restored", acked.len());
}
