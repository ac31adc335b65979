//! The operator end to end on the simulated cluster: the real `concord-operator` binary, pods
//! that are real `concord-node` processes in network namespaces of their own, DNS by hosts
//! files. The short stories (the current build only) run in the test command; the full run is
//! `scripts/e2e-sim.sh`. Needs root: without it each story says so loudly and does nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use concord_sim::cluster::SimCluster;
use concord_sim::kubelet::Images;
use serde_json::Value;

const CR: &str = "/apis/concordkv.io/v1alpha1/namespaces/default/concordclusters/example";

/// The workspace's binaries, built beside the test (`cargo test --workspace` builds them).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .to_path_buf();
    for b in ["concord-node", "concordctl", "concord-operator"] {
        assert!(
            dir.join(b).exists(),
            "{} not built: run cargo test --workspace",
            dir.join(b).display()
        );
    }
    dir
}

fn can_run() -> bool {
    match concord_sim::network::available() {
        Ok(()) => true,
        Err(why) => {
            eprintln!(
                "\n!!!!! SKIPPED: {why}; the operator end-to-end stories did not run !!!!!\n"
            );
            false
        }
    }
}

fn report(story: &str, what: &str, took: Duration) {
    eprintln!("[e2e-sim] {story}: {what} in {:.1}s", took.as_secs_f64());
}

/// The cluster's status when `phase` is Running with `n` ready healthy members.
fn running_with(c: &SimCluster, n: usize) -> Option<Value> {
    let cr = c.get(CR)?;
    let st = &cr["status"];
    let healthy = st["members"].as_array().map_or(0, |m| {
        m.iter()
            .filter(|m| m["healthy"] == true && m["role"] == "voter")
            .count()
    });
    (st["phase"] == "Running" && st["readyReplicas"] == n && healthy == n).then(|| st.clone())
}

/// The client certificate and CA an application gets from the cluster's Secrets.
fn client_files(c: &SimCluster, dir: &Path) -> Vec<String> {
    let secret = c
        .get("/api/v1/namespaces/default/secrets/example-client-tls")
        .expect("the client Secret");
    let mut args = Vec::new();
    for (key, flag) in [
        ("ca.crt", "--cacert"),
        ("tls.crt", "--cert"),
        ("tls.key", "--key"),
    ] {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(secret["data"][key].as_str().expect("key"))
            .expect("base64");
        let path = dir.join(key);
        std::fs::write(&path, bytes).expect("write");
        args.push(flag.to_string());
        args.push(path.display().to_string());
    }
    args
}

fn ctl(c: &SimCluster, bins: &Path, tls: &[String], args: &[&str]) -> (bool, String) {
    let out = c
        .client_command(&bins.join("concordctl"))
        .args(["--endpoints", "https://example.default.svc:8081"])
        .args(tls)
        .args(args)
        .output()
        .expect("concordctl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// One simulated cluster at a time: two would share the machine's two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The simulated cluster with the operator running and `minimal.yaml` applied and Running.
async fn minimal(dir: &Path, story: &str) -> (SimCluster, PathBuf) {
    start_cluster(dir, story, None).await
}

/// The same, with `spec` for the ConcordCluster instead of the example's.
async fn start_cluster(dir: &Path, story: &str, spec: Option<Value>) -> (SimCluster, PathBuf) {
    let bins = bin_dir();
    let images = Images {
        default: bins.clone(),
        by_reference: Vec::new(),
    };
    let mut c = SimCluster::start(dir, images)
        .await
        .expect("the simulated cluster");
    c.start_operator(&bins.join("concord-operator"))
        .expect("operator");
    let started = Instant::now();
    match spec {
        None => c
            .apply_yaml(include_str!("../../manifests/examples/minimal.yaml"))
            .map(drop),
        Some(spec) => c
            .apply(serde_json::json!({
                "apiVersion": "concordkv.io/v1alpha1", "kind": "ConcordCluster",
                "metadata": {"name": "example", "namespace": "default"}, "spec": spec,
            }))
            .map(drop),
    }
    .expect("apply");
    wait_running(&c, 3, Duration::from_secs(120)).await;
    report(story, "3 members Running after apply", started.elapsed());
    (c, bins)
}

async fn wait_running(c: &SimCluster, n: usize, timeout: Duration) -> Value {
    c.until(&format!("{n} members are Running"), timeout, |c| {
        running_with(c, n)
    })
    .await
    .unwrap_or_else(|e| {
        let st = c.get(CR).map(|cr| cr["status"].clone()).unwrap_or_default();
        panic!("{e}\nstatus: {st}")
    })
}

fn set_replicas(c: &SimCluster, n: u32) {
    c.apply(serde_json::json!({
        "apiVersion": "concordkv.io/v1alpha1", "kind": "ConcordCluster",
        "metadata": {"name": "example", "namespace": "default"},
        "spec": {"replicas": n},
    }))
    .expect("apply replicas");
}

/// An application in the cluster: HTTPS to the client Service's name with the client
/// certificate, the name resolved by the cluster's DNS at each connection.
fn app_client(c: &SimCluster) -> reqwest::Client {
    secret_client(&c.api, "example-client-tls").expect("the client Secret")
}

/// A client as an application holding Secret `secret` (its `ca.crt`, `tls.crt`, `tls.key`)
/// has one, names resolved by the cluster's DNS; None while the Secret does not exist.
fn secret_client(api: &concord_sim::apiserver::ApiServer, secret: &str) -> Option<reqwest::Client> {
    let secret = api.get_path(&format!("/api/v1/namespaces/default/secrets/{secret}"))?;
    let text = |key: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(secret["data"][key].as_str().unwrap_or_default())
            .unwrap_or_default()
    };
    let identity = [text("tls.crt"), text("tls.key")].concat();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&text("ca.crt")).ok()?)
        .identity(reqwest::Identity::from_pem(&identity).ok()?)
        .dns_resolver(std::sync::Arc::new(concord_sim::dns::Resolver(api.clone())))
        .timeout(Duration::from_secs(3))
        .connect_timeout(Duration::from_secs(1))
        .build()
        .ok()
}

/// A story's start: None (said loudly) where the simulated cluster cannot run; otherwise one
/// simulated cluster at a time, and a directory for it.
async fn begin() -> Option<(tokio::sync::MutexGuard<'static, ()>, tempfile::TempDir)> {
    if !can_run() {
        return None;
    }
    Some((
        ONE_AT_A_TIME.lock().await,
        tempfile::tempdir().expect("dir"),
    ))
}

const APP_URL: &str = "https://example.default.svc:8081";

/// What an application's writer got done: each acknowledged write's number and when.
struct Writes {
    acked: Vec<(u64, Instant)>,
    /// Writes no address took (each tried over HTTPS, then plaintext when allowed).
    failed: u64,
}

impl Writes {
    fn keys(&self) -> Vec<u64> {
        self.acked.iter().map(|(i, _)| *i).collect()
    }

    /// The longest gap between two acknowledgements that ends after `from` and starts before
    /// `to` (the whole run: `Instant` bounds far apart).
    fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        self.acked
            .windows(2)
            .filter(|w| w[1].1 > from && w[0].1 < to)
            .map(|w| w[1].1 - w[0].1)
            .max()
            .unwrap_or_default()
    }

    fn worst_gap(&self) -> Duration {
        let (first, last) = match (self.acked.first(), self.acked.last()) {
            (Some(f), Some(l)) => (f.1, l.1),
            _ => return Duration::ZERO,
        };
        self.longest_gap(first, last + Duration::from_millis(1))
    }
}

/// An application writing `w<i>` = i one after another through the client Service, until
/// `stop`: over HTTPS with the client certificate once its Secret exists, and (with
/// `plaintext_too`, for a cluster switching to TLS) over plain HTTP when that fails.
fn start_writer(
    c: &SimCluster,
    plaintext_too: bool,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<Writes>,
) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (api, done) = (c.api.clone(), stop.clone());
    let task = tokio::spawn(async move {
        let plain = reqwest::Client::builder()
            .dns_resolver(std::sync::Arc::new(concord_sim::dns::Resolver(api.clone())))
            .timeout(Duration::from_secs(3))
            .build()
            .expect("client");
        let mut secure: Option<reqwest::Client> = None;
        let mut w = Writes {
            acked: Vec::new(),
            failed: 0,
        };
        let mut i = 0u64;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            if secure.is_none() {
                secure = secret_client(&api, "example-client-tls");
            }
            let body = serde_json::json!({"key": format!("w{i}"), "value": i.to_string()});
            let mut attempts: Vec<(&reqwest::Client, &str)> = Vec::new();
            if let Some(s) = &secure {
                attempts.push((s, "https"));
            }
            if plaintext_too {
                attempts.push((&plain, "http"));
            }
            let mut ok = false;
            for (client, scheme) in attempts {
                let r = client
                    .post(format!("{scheme}://example.default.svc:8081/api/set"))
                    .json(&body)
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status().is_success()) {
                    ok = true;
                    break;
                }
            }
            if ok {
                w.acked.push((i, Instant::now()));
            } else {
                w.failed += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            i += 1;
        }
        w
    });
    (stop, task)
}

/// Every acknowledged write is there (a linearizable read through the Service).
async fn read_back(http: &reqwest::Client, acked: &[u64]) {
    for i in acked {
        let mut tries = 0;
        loop {
            let r = http.get(format!("{APP_URL}/api/get?key=w{i}")).send().await;
            match r {
                Ok(r) if r.status().is_success() => {
                    let body: Value = r.json().await.expect("json");
                    assert_eq!(
                        body["value"],
                        i.to_string(),
                        "acknowledged write w{i} lost: {body}"
                    );
                    break;
                }
                other => {
                    tries += 1;
                    assert!(tries < 50, "w{i} unreadable: {other:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Story 1: `kubectl apply -f manifests/examples/minimal.yaml` gives three members Running,
/// with the status and the StatefulSet right, and an application (concordctl in a namespace of
/// its own) writes and reads through the client Service's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn story_1_the_minimal_example_comes_up_and_serves_by_its_service_name() {
    let Some((_one, dir)) = begin().await else {
        return;
    };
    let started = Instant::now();
    let (c, bins) = minimal(dir.path(), "story 1").await;
    let status = running_with(&c, 3).expect("running");
    assert!(
        status["leader"]
            .as_str()
            .is_some_and(|l| l.starts_with("example-")),
        "{status}"
    );
    assert!(status["clusterId"].is_string(), "{status}");
    assert_eq!(
        status["tls"]["mode"], "operator",
        "TLS by default: {status}"
    );
    let sts = c
        .get("/apis/apps/v1/namespaces/default/statefulsets/example")
        .expect("the StatefulSet");
    assert_eq!(sts["status"]["readyReplicas"], 3);

    let tls = client_files(&c, dir.path());
    let (ok, text) = ctl(&c, &bins, &tls, &["set", "story1", "hello"]);
    assert!(ok, "a write through the Service name: {text}");
    let (ok, text) = ctl(&c, &bins, &tls, &["get", "story1"]);
    assert!(ok && text.contains("hello"), "{text}");
    report(
        "story 1",
        "write and read through example.default.svc",
        started.elapsed(),
    );
}

/// Story 2: scale 3 -> 5 -> 3 while an application writes; every acknowledged write is read
/// back at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn story_2_scale_up_and_down_under_writes_keeps_every_acknowledged_write() {
    let Some((_one, dir)) = begin().await else {
        return;
    };
    let (c, _) = minimal(dir.path(), "story 2").await;
    let http = app_client(&c);
    let (stop, writes) = start_writer(&c, false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = Instant::now();
    set_replicas(&c, 5);
    wait_running(&c, 5, Duration::from_secs(120)).await;
    report("story 2", "scaled 3 -> 5", t.elapsed());
    let t = Instant::now();
    set_replicas(&c, 3);
    wait_running(&c, 3, Duration::from_secs(120)).await;
    c.until(
        "the StatefulSet is back to 3 pods",
        Duration::from_secs(60),
        |c| {
            let pods = c.api.list_path(
                "/api/v1/namespaces/default/pods",
                "app.kubernetes.io/instance=example",
            );
            (pods.len() == 3).then_some(())
        },
    )
    .await
    .expect("3 pods");
    report("story 2", "scaled 5 -> 3", t.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let w = writes.await.expect("writer");
    assert!(
        w.acked.len() > 20,
        "the writer made progress: {}",
        w.acked.len()
    );
    read_back(&http, &w.keys()).await;
    eprintln!(
        "[e2e-sim] story 2: {} writes acknowledged and read back; longest gap between acknowledgements {} ms",
        w.acked.len(),
        w.worst_gap().as_millis()
    );
}

/// Story 3: a pod's process killed (the kubelet restarts it), a pod deleted (the StatefulSet
/// recreates it), a volume wiped (the operator replaces the member): each time the cluster is
/// back to three healthy voters, and the data written before is all there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn story_3_a_killed_process_a_deleted_pod_and_a_wiped_volume_heal() {
    let Some((_one, dir)) = begin().await else {
        return;
    };
    let (c, _) = minimal(dir.path(), "story 3").await;
    let http = app_client(&c);
    let (stop, writes) = start_writer(&c, false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let member_id = |c: &SimCluster, pod: &str| {
        c.get(CR).and_then(|cr| {
            cr["status"]["members"]
                .as_array()?
                .iter()
                .find(|m| m["name"] == pod)
                .map(|m| m["id"].as_str().unwrap_or_default().to_string())
        })
    };

    // The process dies: the kubelet restarts it in its pod.
    let t = Instant::now();
    assert!(c.kubelet.kill_container("default", "example-1"));
    c.until(
        "example-1 has restarted and is ready",
        Duration::from_secs(30),
        |c| {
            let p = c.get("/api/v1/namespaces/default/pods/example-1")?;
            (p["status"]["containerStatuses"][0]["restartCount"].as_u64() >= Some(1)
                && concord_sim::statefulset::is_ready(&p))
            .then_some(())
        },
    )
    .await
    .expect("restarted");
    wait_running(&c, 3, Duration::from_secs(60)).await;
    report(
        "story 3",
        "killed process restarted and back in the cluster",
        t.elapsed(),
    );

    // The pod is deleted: a new one, same volume, same member.
    let t = Instant::now();
    let before = member_id(&c, "example-2");
    let old_uid = c
        .get("/api/v1/namespaces/default/pods/example-2")
        .expect("pod")["metadata"]["uid"]
        .clone();
    let target =
        concord_sim::apiserver::ApiServer::target("/api/v1/namespaces/default/pods/example-2")
            .expect("t");
    c.api
        .delete(&target, &concord_sim::apiserver::DeleteOptions::default())
        .expect("delete pod");
    c.until("example-2 is a new pod", Duration::from_secs(60), |c| {
        let p = c.get("/api/v1/namespaces/default/pods/example-2")?;
        (p["metadata"]["uid"] != old_uid && concord_sim::statefulset::is_ready(&p)).then_some(())
    })
    .await
    .expect("recreated");
    wait_running(&c, 3, Duration::from_secs(60)).await;
    assert_eq!(
        member_id(&c, "example-2"),
        before,
        "the same member, from its volume"
    );
    report("story 3", "deleted pod recreated and back", t.elapsed());

    // The volume loses its data: the member comes back empty and is replaced.
    let t = Instant::now();
    let before = member_id(&c, "example-1");
    let volume = dir.path().join("volumes/default/data-example-1");
    for e in std::fs::read_dir(&volume).expect("volume") {
        let p = e.expect("entry").path();
        let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
    }
    // (It may already have died of the loss; then the kubelet has restarted it anyway.)
    c.kubelet.kill_container("default", "example-1");
    c.until("example-1 is a new member", Duration::from_secs(120), |c| {
        let now = member_id(c, "example-1")?;
        (Some(&now) != before.as_ref() && running_with(c, 3).is_some()).then_some(())
    })
    .await
    .expect("replaced");
    report("story 3", "wiped member replaced", t.elapsed());

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let w = writes.await.expect("writer");
    read_back(&http, &w.keys()).await;
    eprintln!(
        "[e2e-sim] story 3: {} writes acknowledged and read back; longest gap between acknowledgements {} ms",
        w.acked.len(),
        w.worst_gap().as_millis()
    );
}

fn member_names(c: &SimCluster) -> Vec<(String, String)> {
    let mut m: Vec<(String, String)> = c
        .get(CR)
        .and_then(|cr| cr["status"]["members"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or_default().to_string(),
                m["id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    m.sort();
    m
}

/// Story 4: the operator process is killed in the middle of a scale-up and started again: it
/// picks up where the cluster is and finishes, with no member added twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn story_4_an_operator_killed_mid_scale_resumes() {
    let Some((_one, dir)) = begin().await else {
        return;
    };
    let (mut c, bins) = minimal(dir.path(), "story 4").await;
    let t = Instant::now();
    set_replicas(&c, 5);
    c.until("the scale-up is under way", Duration::from_secs(60), |c| {
        (member_names(c).len() >= 4).then_some(())
    })
    .await
    .expect("under way");
    c.kill_operator();
    let at_kill = member_names(&c);
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.start_operator(&bins.join("concord-operator"))
        .expect("operator again");
    wait_running(&c, 5, Duration::from_secs(120)).await;
    let members = member_names(&c);
    assert_eq!(members.len(), 5, "{members:?}");
    let names: std::collections::BTreeSet<&String> = members.iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 5, "one member per pod: {members:?}");
    for m in &at_kill {
        assert!(
            members.contains(m),
            "{m:?} kept its id across the restart: {members:?}"
        );
    }
    report(
        "story 4",
        &format!("killed with {} members, resumed to 5", at_kill.len()),
        t.elapsed(),
    );
}

/// Story 7: two of three pods' processes stop and stay down: the phase is QuorumLost and no
/// membership change is attempted; when they return, the same three members are Running.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn story_7_quorum_loss_is_reported_and_nothing_is_changed_until_it_heals() {
    let Some((_one, dir)) = begin().await else {
        return;
    };
    let (c, _) = minimal(dir.path(), "story 7").await;
    let before = member_names(&c);
    let t = Instant::now();
    c.kubelet.hold("default", "example-1");
    c.kubelet.hold("default", "example-2");
    c.until("the phase is QuorumLost", Duration::from_secs(60), |c| {
        (c.get(CR)?["status"]["phase"] == "QuorumLost").then_some(())
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nstatus: {}",
            c.get(CR).map(|cr| cr["status"].clone()).unwrap_or_default()
        )
    });
    report("story 7", "QuorumLost reported", t.elapsed());
    let log_at_loss = std::fs::metadata(dir.path().join("operator.log"))
        .map(|m| m.len())
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cr = c.get(CR).expect("cr");
    assert_eq!(cr["status"]["phase"], "QuorumLost");
    assert_eq!(
        member_names(&c),
        before,
        "no membership change while quorum is lost"
    );
    let sts = c
        .get("/apis/apps/v1/namespaces/default/statefulsets/example")
        .expect("sts");
    assert_eq!(sts["spec"]["replicas"], 3);
    let log = std::fs::read(dir.path().join("operator.log")).unwrap_or_default();
    let since = String::from_utf8_lossy(&log[(log_at_loss as usize).min(log.len())..]).to_string();
    assert!(
        !since.contains("membership step"),
        "no membership step while quorum is lost:\n{since}"
    );
    let t = Instant::now();
    c.kubelet.release("default", "example-1");
    c.kubelet.release("default", "example-2");
    wait_running(&c, 3, Duration::from_secs(60)).await;
    assert_eq!(member_names(&c), before, "the same members come back");
    report("story 7", "healed when the pods returned", t.elapsed());
}

/// The `certificate="peer"` expiry a member reports on /metrics.
async fn peer_cert_expiry(c: &SimCluster, pod: &str) -> Option<String> {
    let ip = c.get(&format!("/api/v1/namespaces/default/pods/{pod}"))?["status"]["podIP"]
        .as_str()?
        .to_string();
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let text = http
        .get(format!("https://{ip}:8081/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.contains("cert_expiry_timestamp_seconds{certificate=\"peer\"}"))
        .and_then(|l| l.split_whitespace().last())
        .map(String::from)
}

/// Story 6 (first half): TLS turned on for a running plaintext cluster, through the peer
/// steps accept -> prefer -> on, with an application writing throughout; then a member's
/// certificate reissued (its Secret deleted) and picked up by the running member, with writes
/// going on; every acknowledged write read back over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn story_6_tls_switched_on_and_a_certificate_rotated_under_writes() {
    let Some((_one, dir)) = begin().await else {
        return;
    };
    let (c, _) = start_cluster(
        dir.path(),
        "story 6",
        Some(serde_json::json!({"replicas": 3, "tls": {"mode": "disabled"}})),
    )
    .await;
    let (stop, writes) = start_writer(&c, true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = Instant::now();
    c.apply(serde_json::json!({
        "apiVersion": "concordkv.io/v1alpha1", "kind": "ConcordCluster",
        "metadata": {"name": "example", "namespace": "default"},
        "spec": {"replicas": 3, "tls": {"mode": "operator"}},
    }))
    .expect("TLS on");
    c.until("TLS is on everywhere", Duration::from_secs(400), |c| {
        let st = c.get(CR)?["status"].clone();
        let sts = c.get("/apis/apps/v1/namespaces/default/statefulsets/example")?;
        (st["tls"]["peer"] == "on"
            && running_with(c, 3).is_some()
            && sts["status"]["updatedReplicas"] == 3)
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nstatus: {}",
            c.get(CR).map(|cr| cr["status"].clone()).unwrap_or_default()
        )
    });
    report("story 6", "TLS switched on (3 rolls)", t.elapsed());

    let t = Instant::now();
    let before = peer_cert_expiry(&c, "example-1")
        .await
        .expect("a peer certificate");
    // Whole-second expiries: the reissued certificate must expire at a later second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let target = concord_sim::apiserver::ApiServer::target(
        "/api/v1/namespaces/default/secrets/example-member-1",
    )
    .expect("t");
    c.api
        .delete(&target, &concord_sim::apiserver::DeleteOptions::default())
        .expect("delete the member's Secret");
    let mut after = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if let Some(now) = peer_cert_expiry(&c, "example-1").await {
            if now != before {
                after = Some(now);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = after.unwrap_or_else(|| {
        panic!(
            "example-1 never served a new certificate; operator log:\n{}",
            c.operator_log_tail(3000)
        )
    });
    assert!(after > before, "{before} -> {after}");
    wait_running(&c, 3, Duration::from_secs(30)).await;
    report(
        "story 6",
        "a member's certificate reissued and reloaded in place",
        t.elapsed(),
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let w = writes.await.expect("writer");
    read_back(&app_client(&c), &w.keys()).await;
    eprintln!(
        "[e2e-sim] story 6: {} writes acknowledged and read back over TLS ({} attempts failed during the rolls); longest gap between acknowledgements {} ms",
        w.acked.len(),
        w.failed,
        w.worst_gap().as_millis()
    );
}

/// moto's S3 server on the bridge (where the operator's namespace reaches it), bucket
/// `backups`; its endpoint.
async fn s3_on(c: &SimCluster) -> (std::process::Child, String) {
    let tools =
        std::env::var("CONCORD_TOOLS_DIR").unwrap_or_else(|_| "/var/tmp/concord-tools".into());
    let bin = format!("{tools}/venv/bin/moto_server");
    assert!(
        Path::new(&bin).exists(),
        "{bin} is missing: run `bash scripts/deploy-tools.sh` (scripts/test.sh does)"
    );
    let gw = c.net.gateway();
    let port = std::net::TcpListener::bind(format!("{gw}:0"))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let child = std::process::Command::new(&bin)
        .args(["-H", &gw, "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("moto_server");
    let endpoint = format!("http://{gw}:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .put(format!("{endpoint}/backups"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "moto_server did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (child, endpoint)
}

/// Story 6 (second half): a `ConcordBackup` of the running TLS cluster into a local
/// S3-compatible server, then a new cluster `restoreFrom` it: three members Running, every key
/// as written, read through the new cluster's own Service name.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn story_6_a_backup_to_s3_restores_into_a_new_cluster() {
    let Some((_one, dir)) = begin().await else {
        return;
    };
    let (c, _) = minimal(dir.path(), "story 6b").await;
    let (mut moto, endpoint) = s3_on(&c).await;
    let http = app_client(&c);
    for i in 0..200 {
        let r = http
            .post(format!("{APP_URL}/api/set"))
            .json(&serde_json::json!({"key": format!("b{i}"), "value": format!("v{i}")}))
            .send()
            .await
            .expect("write");
        assert!(r.status().is_success());
    }
    c.apply_yaml(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: s3-credentials, namespace: default}}\n\
         stringData: {{AWS_ACCESS_KEY_ID: AKIASIMEXAMPLE, AWS_SECRET_ACCESS_KEY: sim-secret-key}}\n\
         ---\napiVersion: concordkv.io/v1alpha1\nkind: ConcordBackup\n\
         metadata: {{name: nightly, namespace: default}}\n\
         spec:\n  cluster: example\n  destination:\n    s3: {{bucket: backups, prefix: concordkv, \
         endpoint: \"{endpoint}\", forcePathStyle: true, credentialsSecret: s3-credentials}}\n"
    ))
    .expect("apply");
    let t = Instant::now();
    let backup = c
        .until("the backup has succeeded", Duration::from_secs(120), |c| {
            let b =
                c.get("/apis/concordkv.io/v1alpha1/namespaces/default/concordbackups/nightly")?;
            assert_ne!(b["status"]["phase"], "Failed", "{}", b["status"]);
            (b["status"]["phase"] == "Succeeded").then(|| b["status"].clone())
        })
        .await
        .expect("backup");
    assert!(backup["keys"].as_u64() >= Some(200), "{backup}");
    report("story 6b", "ConcordBackup to S3 Succeeded", t.elapsed());

    let t = Instant::now();
    c.apply(serde_json::json!({
        "apiVersion": "concordkv.io/v1alpha1", "kind": "ConcordCluster",
        "metadata": {"name": "restored", "namespace": "default"},
        "spec": {"replicas": 3, "restoreFrom": {"backup": "nightly"}},
    }))
    .expect("restored");
    let restored = "/apis/concordkv.io/v1alpha1/namespaces/default/concordclusters/restored";
    c.until(
        "the restored cluster is Running",
        Duration::from_secs(180),
        |c| {
            let st = c.get(restored)?["status"].clone();
            (st["phase"] == "Running" && st["readyReplicas"] == 3).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nstatus: {}",
            c.get(restored)
                .map(|r| r["status"].clone())
                .unwrap_or_default()
        )
    });
    let source_id = c.get(CR).expect("cr")["status"]["clusterId"].clone();
    let new_id = c.get(restored).expect("restored")["status"]["clusterId"].clone();
    assert_ne!(source_id, new_id, "a new cluster id");
    report("story 6b", "restoreFrom: 3 members Running", t.elapsed());

    // The restored cluster's own client certificate, through its own Service name.
    let rhttp = secret_client(&c.api, "restored-client-tls").expect("the restored client Secret");
    for i in 0..200 {
        let body: Value = rhttp
            .get(format!(
                "https://restored.default.svc:8081/api/get?key=b{i}"
            ))
            .send()
            .await
            .expect("read")
            .json()
            .await
            .expect("json");
        assert_eq!(body["value"], format!("v{i}"), "b{i}: {body}");
    }
    report(
        "story 6b",
        "every key read back from the restored cluster",
        t.elapsed(),
    );
    let _ = moto.kill();
    let _ = moto.wait();
}

/// Story 5: a rolling upgrade from the previous release's `concord-node` (built from a git
/// revision by `scripts/e2e-sim.sh`, which passes its binaries in `CONCORD_SIM_PREVIOUS`) to
/// this build, with an application writing throughout: no quorum loss, every acknowledged write
/// kept, the leader restarted last, and the write stall around each pod's restart reported
/// (goal: under 0.5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the previous release's binaries: run scripts/e2e-sim.sh"]
async fn story_5_a_rolling_upgrade_from_the_previous_release_under_writes() {
    let Some((_one, dir)) = begin().await else {
        return;
    };
    let previous = PathBuf::from(std::env::var("CONCORD_SIM_PREVIOUS").expect(
        "CONCORD_SIM_PREVIOUS: the previous release's bin directory (scripts/e2e-sim.sh sets it)",
    ));
    assert!(
        previous.join("concord-node").exists(),
        "{}",
        previous.display()
    );
    let bins = bin_dir();
    let images = Images {
        default: bins.clone(),
        by_reference: vec![("concord-node:previous".into(), previous.clone())],
    };
    let mut c = SimCluster::start(dir.path(), images).await.expect("sim");
    c.start_operator(&bins.join("concord-operator"))
        .expect("operator");
    let spec = |image: &str| {
        serde_json::json!({
            "apiVersion": "concordkv.io/v1alpha1", "kind": "ConcordCluster",
            "metadata": {"name": "example", "namespace": "default"},
            "spec": {"replicas": 3, "image": image},
        })
    };
    c.apply(spec("example.registry/concord-node:previous"))
        .expect("apply");
    wait_running(&c, 3, Duration::from_secs(120)).await;
    let leader_before = c.get(CR).expect("cr")["status"]["leader"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let http = app_client(&c);
    let (stop, writes) = start_writer(&c, false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = Instant::now();
    c.apply(spec("example.registry/concord-node:current"))
        .expect("upgrade");
    // Each pod's restart: when it went down (terminating) and when its successor was ready;
    // and whether the phase ever said the quorum was lost.
    let mut down: std::collections::BTreeMap<String, (Instant, Option<Instant>, String)> =
        Default::default();
    let mut order = Vec::new();
    let mut quorum_lost = false;
    let deadline = Instant::now() + Duration::from_secs(400);
    loop {
        assert!(
            Instant::now() < deadline,
            "the upgrade did not finish; status: {}",
            c.get(CR).map(|cr| cr["status"].clone()).unwrap_or_default()
        );
        let cr = c.get(CR).expect("cr");
        quorum_lost |= cr["status"]["phase"] == "QuorumLost";
        for p in c.api.list_path(
            "/api/v1/namespaces/default/pods",
            "app.kubernetes.io/instance=example",
        ) {
            let name = p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let uid = p["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if !p["metadata"]["deletionTimestamp"].is_null() && !down.contains_key(&name) {
                down.insert(name.clone(), (Instant::now(), None, uid.clone()));
                order.push(name.clone());
            }
            if let Some(entry) = down.get_mut(&name) {
                if entry.1.is_none() && entry.2 != uid && concord_sim::statefulset::is_ready(&p) {
                    entry.1 = Some(Instant::now());
                }
            }
        }
        let done = cr["status"]["phase"] == "Running"
            && cr["status"]["members"].as_array().is_some_and(|m| {
                m.len() == 3
                    && m.iter().all(|m| {
                        m["image"] == "example.registry/concord-node:current"
                            && m["healthy"] == true
                    })
            })
            && down.len() == 3
            && down.values().all(|d| d.1.is_some());
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report(
        "story 5",
        "rolled from the previous release to this build",
        t.elapsed(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let w = writes.await.expect("writer");
    read_back(&http, &w.keys()).await;
    assert!(!quorum_lost, "the quorum was never lost");
    assert_eq!(
        order.last(),
        Some(&leader_before),
        "the leader last: {order:?}"
    );
    let mut worst = Duration::ZERO;
    for name in &order {
        let (from, to, _) = &down[name];
        let (from, to) = (
            *from - Duration::from_millis(500),
            to.unwrap_or(*from) + Duration::from_millis(500),
        );
        // The longest gap between acknowledgements that overlaps this pod's restart.
        let stall = w.longest_gap(from, to);
        worst = worst.max(stall);
        eprintln!(
            "[e2e-sim] story 5: {name}{} restarted: write stall {} ms (goal 500 ms)",
            if *name == leader_before {
                " (leader, after a transfer)"
            } else {
                ""
            },
            stall.as_millis()
        );
    }
    eprintln!(
        "[e2e-sim] story 5: {} writes acknowledged and read back; no quorum loss; worst stall {} ms",
        w.acked.len(),
        worst.as_millis()
    );
    assert!(worst < Duration::from_secs(5), "a stall of {worst:?}");
    c.kill_operator();
}
