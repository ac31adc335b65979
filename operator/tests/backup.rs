//! Backups to a real S3-compatible server (moto, started on loopback by the test): a real
//! member's backup streamed through the operator's upload into the store and read back intact;
//! then the ConcordBackup reconcile against the fake API server, to Succeeded with its
//! location, revision and checksum in the status, and to Failed with the reason when the
//! cluster or the credentials are missing. The credentials appear in no status, event or log.

mod common;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use concord_operator::admin::{GrpcAdmin, NodeAdmin};
use concord_operator::backup::location::object_key;
use concord_operator::backup::upload::{self, Credentials};
use concord_operator::backup::{ConcordBackup, S3Destination};
use futures::TryStreamExt;
use object_store::ObjectStore;
use serde_json::json;

const ACCESS_KEY: &str = "AKIAEXAMPLEOPERATOR1";
const SECRET_KEY: &str = "s3cr3t-never-shown-anywhere-0123456789";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// moto's S3 server on a free loopback port, with bucket `backups`.
async fn s3_server() -> (Killed, String) {
    let tools =
        std::env::var("CONCORD_TOOLS_DIR").unwrap_or_else(|_| "/var/tmp/concord-tools".into());
    let bin = format!("{tools}/venv/bin/moto_server");
    assert!(
        std::path::Path::new(&bin).exists(),
        "{bin} is missing: run `bash scripts/deploy-tools.sh` (scripts/test.sh does)"
    );
    let port = free_port();
    let child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let server = Killed(child);
    let endpoint = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.put(format!("{endpoint}/backups")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "moto_server did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (server, endpoint)
}

fn destination(endpoint: &str) -> S3Destination {
    S3Destination {
        bucket: "backups".into(),
        prefix: Some("concordkv".into()),
        endpoint: Some(endpoint.into()),
        region: None,
        force_path_style: true,
        credentials_secret: "s3-credentials".into(),
    }
}

fn creds() -> Credentials {
    Credentials {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: SECRET_KEY.into(),
        session_token: None,
    }
}

/// A single real member with some keys, and its peer address.
async fn member(dir: &std::path::Path) -> (Killed, String) {
    let (peer, api, etcd) = (free_port(), free_port(), free_port());
    let child = Command::new(node_binary())
        .args([
            "--node-id",
            "kv-0",
            "--listen",
            &format!("127.0.0.1:{peer}"),
            "--api",
            &format!("127.0.0.1:{api}"),
            "--etcd-listen",
            &format!("127.0.0.1:{etcd}"),
            "--data-dir",
        ])
        .arg(dir.join("kv-0"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start concord-node");
    let node = Killed(child);
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut written = 0;
    while written < 300 {
        let r = http
            .post(format!("http://127.0.0.1:{api}/api/set"))
            .json(&json!({"key": format!("key{written}"), "value": "v".repeat(100)}))
            .send()
            .await;
        if r.is_ok_and(|r| r.status().is_success()) {
            written += 1;
        } else {
            assert!(Instant::now() < deadline, "the member never took writes");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    (node, format!("127.0.0.1:{peer}"))
}

/// The member's whole backup, as its admin API streams it.
async fn member_backup(addr: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut chunks = GrpcAdmin::default().snapshot(addr).await.expect("snapshot");
    while let Some(c) = chunks.try_next().await.expect("chunk") {
        bytes.extend_from_slice(&c);
    }
    bytes
}

/// A member's backup, streamed through the operator's upload into S3, comes back intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_backup_streams_into_s3_intact() {
    let dir = tempfile::tempdir().expect("dir");
    let (_s3, endpoint) = s3_server().await;
    let (_node, addr) = member(dir.path()).await;
    let store = upload::s3_store(&destination(&endpoint), &creds()).expect("store");
    let chunks = GrpcAdmin::default()
        .snapshot(&addr)
        .await
        .expect("snapshot");
    let done = upload::upload(store.as_ref(), chunks, |h| {
        object_key(Some("concordkv"), "default", "kv", h)
    })
    .await
    .expect("upload");
    assert_eq!(done.header.keys, 300);
    assert!(
        done.key.starts_with("concordkv/default/kv/kv-r"),
        "{}",
        done.key
    );
    // Read back and checked by concordctl, as an operator restoring it would.
    let bytes = store
        .get(&object_store::path::Path::from(done.key.as_str()))
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(bytes.len() as u64, done.bytes);
    let file = dir.path().join("downloaded.backup");
    std::fs::File::create(&file)
        .and_then(|mut f| f.write_all(&bytes))
        .expect("write");
    let status = snapshot_status(&file);
    assert_eq!(status["checksum"], done.checksum.as_str());

    // A stream cut short is not completed into an object.
    let short: Vec<Result<Vec<u8>, String>> = vec![Ok(bytes[..bytes.len() / 2].to_vec())];
    let cut = upload::upload(store.as_ref(), futures::stream::iter(short), |_| {
        "concordkv/cut.backup".into()
    })
    .await;
    assert!(cut.is_err());
    let listed: Vec<_> = store
        .list(Some(&object_store::path::Path::from("concordkv")))
        .try_collect()
        .await
        .expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
}

/// `concordctl snapshot status` of `file`: the backup checked end to end, as JSON.
fn snapshot_status(file: &std::path::Path) -> serde_json::Value {
    let out = Command::new(ctl_binary())
        .args(["-o", "json", "snapshot", "status"])
        .arg(file)
        .output()
        .expect("concordctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// Captures the operator's log lines for the test.
#[derive(Clone, Default)]
struct Logs(Arc<parking_lot::Mutex<Vec<u8>>>);
impl Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const BACKUPS: &str = "/apis/concordkv.io/v1alpha1/namespaces/default/concordbackups";

fn backup_object(name: &str, cluster: &str, endpoint: &str) -> serde_json::Value {
    json!({
        "apiVersion": "concordkv.io/v1alpha1", "kind": "ConcordBackup",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"), "generation": 1},
        "spec": {"cluster": cluster, "destination": {"s3": destination(endpoint)}},
    })
}

fn put_secret(h: &Harness, secret: &k8s_openapi::api::core::v1::Secret) {
    h.store.lock().put(
        format!("/api/v1/namespaces/{NS}/secrets/s3-credentials"),
        serde_json::to_value(secret).expect("json"),
    );
}

async fn reconcile_backup(h: &Harness, name: &str) -> serde_json::Value {
    let path = format!("{BACKUPS}/{name}");
    let b: ConcordBackup =
        serde_json::from_value(h.store.lock().objects[&path].clone()).expect("backup");
    concord_operator::backup::reconcile::reconcile(Arc::new(b), h.ctx.clone())
        .await
        .expect("reconcile");
    h.store.lock().objects[&path].clone()
}

/// The ConcordBackup reconcile, against the fake API server and the real S3 server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concord_backup_goes_to_succeeded_and_keeps_credentials_out_of_sight() {
    let logs = Logs::default();
    let writer = logs.clone();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::DEBUG)
            .finish(),
    );
    let dir = tempfile::tempdir().expect("dir");
    let (_s3, endpoint) = s3_server().await;
    let (_node, addr) = member(dir.path()).await;
    // The member's real backup is what the fake admin API streams.
    let bytes = member_backup(&addr).await;

    let h = Harness::new(json!({"replicas": 3, "tls": {"mode": "disabled"}}));
    h.reconcile().await;
    h.settle().await;
    h.admin.0.lock().backup = bytes;
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("s3-credentials".into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        data: Some(
            [
                ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
                ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ]
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    k8s_openapi::ByteString(v.as_bytes().to_vec()),
                )
            })
            .collect(),
        ),
        ..Default::default()
    };
    put_secret(&h, &secret);

    h.store.lock().put(
        format!("{BACKUPS}/nightly"),
        backup_object("nightly", "kv", &endpoint),
    );
    let done = reconcile_backup(&h, "nightly").await;
    let status = &done["status"];
    assert_eq!(status["phase"], "Succeeded", "{status}");
    assert_eq!(status["keys"], 300);
    assert!(status["revision"].as_u64().unwrap_or(0) > 0);
    let location = status["location"].as_str().expect("location");
    assert!(
        location.starts_with("s3://backups/concordkv/default/kv/kv-r"),
        "{location}"
    );
    assert_eq!(status["checksum"].as_str().map(str::len), Some(64));
    assert!(
        status["member"].as_str().is_some_and(|m| m != "kv-0"),
        "a follower: {status}"
    );
    // The object is there.
    let store = upload::s3_store(&destination(&endpoint), &creds()).expect("store");
    let key = location.trim_start_matches("s3://backups/");
    let meta = store
        .head(&object_store::path::Path::from(key))
        .await
        .expect("the object");
    assert_eq!(Some(meta.size), status["sizeBytes"].as_u64());
    // Finished: reconciling again changes nothing.
    assert_eq!(reconcile_backup(&h, "nightly").await["status"], *status);

    // A new cluster restored from it (by the ConcordBackup's name): the first member is sent
    // exactly the stored object, the others join.
    let restored = Harness::new(json!({"replicas": 3, "tls": {"mode": "disabled"},
        "restoreFrom": {"backup": "nightly"}}));
    let nightly = h.store.lock().objects[&format!("{BACKUPS}/nightly")].clone();
    restored
        .store
        .lock()
        .put(format!("{BACKUPS}/nightly"), nightly);
    put_secret(&restored, &secret);
    let log = restored.settle().await;
    let sent = restored.admin.0.lock().restored.clone();
    assert_eq!(
        sent,
        h.admin.0.lock().backup,
        "the stored backup, byte for byte"
    );
    assert!(
        log.first().is_some_and(|l| l.starts_with("restore kv-0")),
        "{log:?}"
    );
    assert!(!log.iter().any(|l| l.starts_with("init")), "{log:?}");
    assert_eq!(
        restored.cr()["status"]["members"].as_array().map(Vec::len),
        Some(3)
    );

    // Restoring an object that is not there fails the cluster and initializes nothing.
    let missing = Harness::new(json!({"replicas": 3, "tls": {"mode": "disabled"},
        "restoreFrom": {"s3": {"bucket": "backups", "key": "concordkv/nope.backup",
            "endpoint": endpoint, "forcePathStyle": true, "credentialsSecret": "s3-credentials"}}}));
    put_secret(&missing, &secret);
    for _ in 0..4 {
        missing.run_statefulset_controller();
        missing.reconcile().await;
    }
    let st = missing.cr()["status"].clone();
    assert_eq!(st["phase"], "Failed", "{st}");
    let degraded = st["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Degraded").cloned())
        .expect("Degraded");
    assert_eq!(degraded["reason"], "BackupNotFound", "{degraded}");
    assert!(
        degraded["message"]
            .as_str()
            .is_some_and(|m| m.contains("s3://backups/concordkv/nope.backup")),
        "{degraded}"
    );
    assert!(missing.admin_log().is_empty(), "nothing was initialized");
    assert!(st["clusterId"].is_null());

    // A backup of a cluster that does not exist, and one without its credentials, fail at once
    // with the reason.
    h.store.lock().put(
        format!("{BACKUPS}/lost"),
        backup_object("lost", "nope", &endpoint),
    );
    let lost = reconcile_backup(&h, "lost").await;
    assert_eq!(lost["status"]["phase"], "Failed");
    assert_eq!(lost["status"]["reason"], "ClusterNotFound");
    h.store
        .lock()
        .delete(&format!("/api/v1/namespaces/{NS}/secrets/s3-credentials"));
    h.store.lock().put(
        format!("{BACKUPS}/nocreds"),
        backup_object("nocreds", "kv", &endpoint),
    );
    let nocreds = reconcile_backup(&h, "nocreds").await;
    assert_eq!(nocreds["status"]["phase"], "Failed");
    assert_eq!(nocreds["status"]["reason"], "CredentialsMissing");
    assert!(nocreds["status"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("s3-credentials")));

    // The secret key is nowhere: not in any object (statuses, events), not in the logs.
    let everything = serde_json::to_string(&h.store.lock().objects).expect("json");
    let outside_secret =
        everything.replace(&serde_json::to_string(&secret.data).unwrap_or_default(), "");
    let reasons: Vec<String> = h
        .store
        .lock()
        .objects
        .values()
        .filter(|o| o["kind"] == "Event" && o["regarding"]["kind"] == "ConcordBackup")
        .filter_map(|o| o["reason"].as_str().map(String::from))
        .collect();
    for reason in ["BackupSucceeded", "ClusterNotFound", "CredentialsMissing"] {
        assert!(reasons.iter().any(|r| r == reason), "{reason}: {reasons:?}");
    }
    for secret_text in [SECRET_KEY, ACCESS_KEY] {
        assert!(
            !outside_secret.contains(secret_text),
            "{secret_text} leaked into an object"
        );
        let log = String::from_utf8_lossy(&logs.0.lock()).into_owned();
        assert!(
            !log.contains(secret_text),
            "{secret_text} leaked into the log"
        );
    }
    assert!(
        !String::from_utf8_lossy(&logs.0.lock()).is_empty(),
        "the log was captured"
    );
}

const SCHEDULES: &str = "/apis/concordkv.io/v1alpha1/namespaces/default/concordbackupschedules";

/// A schedule with a fake clock: backups created when due (once per time), taken into the real
/// S3 server, the older one pruned (its object and its ConcordBackup) once a newer one has
/// succeeded — and never because a newer one failed; paused takes none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_and_prunes_only_after_success() {
    use chrono::{DateTime, Utc};
    use concord_operator::backup::schedule::ConcordBackupSchedule;
    let dir = tempfile::tempdir().expect("dir");
    let (_s3, endpoint) = s3_server().await;
    let (_node, addr) = member(dir.path()).await;
    let bytes = member_backup(&addr).await;
    let h = Harness::new(json!({"replicas": 3, "tls": {"mode": "disabled"}}));
    h.reconcile().await;
    h.settle().await;
    h.admin.0.lock().backup = bytes;
    h.store.lock().put(
        format!("/api/v1/namespaces/{NS}/secrets/s3-credentials"),
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "s3-credentials", "namespace": NS},
               "stringData": {},
               "data": {"AWS_ACCESS_KEY_ID": base64(ACCESS_KEY), "AWS_SECRET_ACCESS_KEY": base64(SECRET_KEY)}}),
    );
    h.store.lock().put(
        format!("{SCHEDULES}/nightly"),
        json!({
            "apiVersion": "concordkv.io/v1alpha1", "kind": "ConcordBackupSchedule",
            "metadata": {"name": "nightly", "namespace": NS, "uid": "uid-nightly", "generation": 1,
                         "creationTimestamp": "2026-12-05T00:00:00Z"},
            "spec": {"cluster": "kv", "schedule": "*/10 * * * *", "retention": {"keep": 1},
                     "destination": {"s3": destination(&endpoint)}},
        }),
    );
    let at = |t: &str| -> DateTime<Utc> { t.parse().expect("time") };
    let schedule = |h: &Harness| -> ConcordBackupSchedule {
        serde_json::from_value(h.store.lock().objects[&format!("{SCHEDULES}/nightly")].clone())
            .expect("schedule")
    };
    let backups = |h: &Harness| -> Vec<String> {
        h.store
            .lock()
            .objects
            .keys()
            .filter_map(|k| k.strip_prefix(&format!("{BACKUPS}/")).map(String::from))
            .collect()
    };
    let tick = |t: &'static str| {
        let s = schedule(&h);
        let ctx = h.ctx.clone();
        async move {
            concord_operator::backup::scheduler::reconcile_at(&s, &ctx, at(t))
                .await
                .expect("schedule reconcile");
        }
    };

    tick("2026-12-05T00:05:00Z").await;
    assert!(backups(&h).is_empty(), "nothing due before 00:10");
    tick("2026-12-05T00:10:00Z").await;
    assert_eq!(backups(&h), ["nightly-202612050010"]);
    tick("2026-12-05T00:10:30Z").await;
    assert_eq!(backups(&h).len(), 1, "once per time");
    let first = reconcile_backup(&h, "nightly-202612050010").await;
    assert_eq!(first["status"]["phase"], "Succeeded", "{}", first["status"]);
    // The member's next backup (a second later: its own time, its own object).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = member_backup(&addr).await;
    h.admin.0.lock().backup = again;
    tick("2026-12-05T00:20:00Z").await;
    assert_eq!(backups(&h).len(), 2);
    let second = reconcile_backup(&h, "nightly-202612050020").await;
    assert_eq!(second["status"]["phase"], "Succeeded");
    let store = upload::s3_store(&destination(&endpoint), &creds()).expect("store");
    let count = |store: Arc<dyn ObjectStore>| async move {
        store
            .list(Some(&object_store::path::Path::from("concordkv")))
            .try_collect::<Vec<_>>()
            .await
            .expect("list")
            .len()
    };
    assert_eq!(count(store.clone()).await, 2);

    // keep: 1 — the older success goes, object first, once the newer one has succeeded.
    tick("2026-12-05T00:21:00Z").await;
    assert_eq!(backups(&h), ["nightly-202612050020"]);
    assert_eq!(count(store.clone()).await, 1);
    let status = &h.store.lock().objects[&format!("{SCHEDULES}/nightly")]["status"].clone();
    assert_eq!(status["pruned"], 1);
    assert_eq!(status["recent"][0]["name"], "nightly-202612050020");
    assert!(status["lastSuccessfulTime"].is_string());
    assert_eq!(status["nextScheduleTime"], "2026-12-05T00:30:00+00:00");

    // A failing run never prunes the last good backup.
    let mut sched = h.store.lock().objects[&format!("{SCHEDULES}/nightly")].clone();
    sched["spec"]["cluster"] = "nope".into();
    h.store.lock().put(format!("{SCHEDULES}/nightly"), sched);
    tick("2026-12-05T00:30:00Z").await;
    let failed = reconcile_backup(&h, "nightly-202612050030").await;
    assert_eq!(failed["status"]["phase"], "Failed");
    tick("2026-12-05T00:31:00Z").await;
    assert!(backups(&h).contains(&"nightly-202612050020".to_string()));
    assert_eq!(count(store.clone()).await, 1);

    // Paused: nothing new.
    let mut sched = h.store.lock().objects[&format!("{SCHEDULES}/nightly")].clone();
    sched["spec"]["paused"] = true.into();
    h.store.lock().put(format!("{SCHEDULES}/nightly"), sched);
    tick("2026-12-05T00:40:00Z").await;
    assert_eq!(backups(&h).len(), 2);
}

fn base64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

const JOBS: &str = "/apis/batch/v1/namespaces/default/jobs";

/// Plays the Job controller and the kubelet for Job `name`: runs its container's command —
/// the real concordctl of this build — with the claim's mount at `claim` and the member's
/// name resolved to `member`, then records its pod (owned by the Job, with the termination
/// message the container wrote) and the Job's outcome as Kubernetes would.
fn run_job(h: &Harness, name: &str, claim: &std::path::Path, member: &str) -> bool {
    let path = format!("{JOBS}/{name}");
    let mut job = h.store.lock().objects[&path].clone();
    let c = job["spec"]["template"]["spec"]["containers"][0].clone();
    assert_eq!(c["command"][0], "/usr/local/bin/concordctl");
    let log = claim.with_file_name(format!("{name}.termination-log"));
    let mut args = Vec::new();
    let mut after_member = false;
    for a in c["args"].as_array().expect("args") {
        let a = a.as_str().expect("arg");
        args.push(if after_member {
            member.to_string()
        } else if a == "/dev/termination-log" {
            log.display().to_string()
        } else if let Some(rest) = a.strip_prefix("/backup/") {
            claim.join(rest).display().to_string()
        } else {
            a.to_string()
        });
        after_member = a == "--member";
    }
    let out = Command::new(ctl_binary())
        .args(&args)
        .output()
        .expect("concordctl");
    let ok = out.status.success();
    // FallbackToLogsOnError: the file, else (on failure) the log.
    let message = std::fs::read_to_string(&log)
        .ok()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).to_string());
    let _ = std::fs::remove_file(&log);
    // In the pod the claim is at /backup: the paths the container reports say so.
    let message = message.replace(&claim.display().to_string(), "/backup");
    let uid = job["metadata"]["uid"].clone();
    h.store.lock().put(
        format!("{PODS}/{name}-x7k2p"),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{name}-x7k2p"), "namespace": NS,
                         "labels": {"job-name": name},
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                              "uid": uid, "controller": true}]},
            "status": {"phase": if ok { "Succeeded" } else { "Failed" },
                       "containerStatuses": [{"name": "concordctl", "image": c["image"], "imageID": "",
                                              "ready": false, "restartCount": 0,
                                              "state": {"terminated": {"exitCode": i32::from(!ok), "message": message}}}]},
        }),
    );
    job["status"] = if ok {
        json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
    } else {
        json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]})
    };
    h.store.lock().put(path, job);
    ok
}

/// Backups into a PVC: each ConcordBackup runs a Job (played here by the real concordctl
/// against a real member), its report becomes the status; a Job that fails leaves its error
/// in the status and is replaced on the next attempt; a schedule prunes by a Job that removes
/// the old file, and deletes its ConcordBackup only once that Job has succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_to_a_pvc_run_as_jobs_and_a_schedule_prunes_their_files() {
    use chrono::{DateTime, Utc};
    use concord_operator::backup::schedule::ConcordBackupSchedule;
    let dir = tempfile::tempdir().expect("dir");
    let claim = dir.path().join("claim");
    let (node, addr) = member(dir.path()).await;
    let h = Harness::new(json!({"replicas": 3, "tls": {"mode": "disabled"}}));
    h.reconcile().await;
    h.settle().await;
    h.store.lock().put(
        format!("{SCHEDULES}/nightly"),
        json!({
            "apiVersion": "concordkv.io/v1alpha1", "kind": "ConcordBackupSchedule",
            "metadata": {"name": "nightly", "namespace": NS, "uid": "uid-nightly", "generation": 1,
                         "creationTimestamp": "2026-12-05T00:00:00Z"},
            "spec": {"cluster": "kv", "schedule": "*/10 * * * *", "retention": {"keep": 1},
                     "destination": {"pvc": {"claimName": "backups", "directory": "concordkv"}}},
        }),
    );
    let tick = |t: &'static str| {
        let s: ConcordBackupSchedule =
            serde_json::from_value(h.store.lock().objects[&format!("{SCHEDULES}/nightly")].clone())
                .expect("schedule");
        let ctx = h.ctx.clone();
        let at: DateTime<Utc> = t.parse().expect("time");
        async move {
            concord_operator::backup::scheduler::reconcile_at(&s, &ctx, at)
                .await
                .expect("schedule reconcile");
        }
    };
    let exists = |p: &str| h.store.lock().objects.contains_key(p);

    tick("2026-12-05T00:10:00Z").await;
    let running = reconcile_backup(&h, "nightly-202612050010").await;
    assert_eq!(
        running["status"]["phase"], "Running",
        "{}",
        running["status"]
    );
    let job_name = "nightly-202612050010-backup";
    let job = h.store.lock().objects[&format!("{JOBS}/{job_name}")].clone();
    assert_eq!(
        job["metadata"]["ownerReferences"][0]["kind"],
        "ConcordBackup"
    );
    let args = job["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("\"--member\",\"kv-1.kv-peers.default.svc:8080\""),
        "a follower, by the name its certificate carries: {args}"
    );
    // Still running: the same attempt, no second Job.
    let again = reconcile_backup(&h, "nightly-202612050010").await;
    assert_eq!(again["status"]["attempts"], 1);
    assert!(run_job(&h, job_name, &claim, &addr));
    let done = reconcile_backup(&h, "nightly-202612050010").await;
    let status = &done["status"];
    assert_eq!(status["phase"], "Succeeded", "{status}");
    assert_eq!(status["keys"], 300);
    let location = status["location"].as_str().expect("location").to_string();
    let file = claim.join(
        location
            .strip_prefix("pvc://backups/")
            .expect("in the claim"),
    );
    assert!(
        location.starts_with("pvc://backups/concordkv/default/kv/kv-r"),
        "{location}"
    );
    assert_eq!(
        std::fs::metadata(&file).expect("the file").len(),
        status["sizeBytes"].as_u64().expect("size")
    );
    let checked = snapshot_status(&file);
    assert_eq!(checked["checksum"], status["checksum"]);
    assert_eq!(checked["revision"], status["revision"]);

    // Its second run, a minute of member time later.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    tick("2026-12-05T00:20:00Z").await;
    reconcile_backup(&h, "nightly-202612050020").await;
    assert!(run_job(&h, "nightly-202612050020-backup", &claim, &addr));
    let second = reconcile_backup(&h, "nightly-202612050020").await;
    assert_eq!(second["status"]["phase"], "Succeeded");

    // keep: 1 — the older file goes by a Job; its ConcordBackup only once that succeeded.
    tick("2026-12-05T00:21:00Z").await;
    let prune = h
        .store
        .lock()
        .objects
        .keys()
        .find_map(|k| {
            k.strip_prefix(&format!("{JOBS}/nightly-prune-"))
                .map(String::from)
        })
        .map(|suffix| format!("nightly-prune-{suffix}"))
        .expect("a prune Job");
    assert!(exists(&format!("{BACKUPS}/nightly-202612050010")));
    assert!(file.exists());
    assert!(run_job(&h, &prune, &claim, &addr));
    tick("2026-12-05T00:22:00Z").await;
    assert!(!exists(&format!("{BACKUPS}/nightly-202612050010")));
    assert!(!file.exists(), "the pruned file is gone");
    let kept = second["status"]["location"].as_str().expect("location");
    assert!(claim
        .join(kept.strip_prefix("pvc://backups/").expect("claim"))
        .exists());
    assert_eq!(
        h.store.lock().objects[&format!("{SCHEDULES}/nightly")]["status"]["pruned"],
        1
    );

    // A Job that fails (the member is gone): its error in the status, retried with a new Job.
    drop(node);
    h.store.lock().put(
        format!("{BACKUPS}/adhoc"),
        json!({
            "apiVersion": "concordkv.io/v1alpha1", "kind": "ConcordBackup",
            "metadata": {"name": "adhoc", "namespace": NS, "uid": "uid-adhoc", "generation": 1},
            "spec": {"cluster": "kv", "destination": {"pvc": {"claimName": "backups"}}},
        }),
    );
    reconcile_backup(&h, "adhoc").await;
    assert!(!run_job(&h, "adhoc-backup", &claim, &addr));
    let failed = reconcile_backup(&h, "adhoc").await;
    let status = &failed["status"];
    assert_eq!(status["phase"], "Pending", "{status}");
    assert_eq!(status["reason"], "BackupJobFailed");
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains(&addr)),
        "the Job's own error: {status}"
    );
    assert!(
        !exists(&format!("{JOBS}/adhoc-backup")),
        "the failed Job makes way for the next attempt"
    );

    // Exactly one destination.
    h.store.lock().put(
        format!("{BACKUPS}/both"),
        json!({
            "apiVersion": "concordkv.io/v1alpha1", "kind": "ConcordBackup",
            "metadata": {"name": "both", "namespace": NS, "uid": "uid-both", "generation": 1},
            "spec": {"cluster": "kv", "destination": {"pvc": {"claimName": "backups"},
                                                       "s3": destination("http://127.0.0.1:1")}},
        }),
    );
    let both = reconcile_backup(&h, "both").await;
    assert_eq!(both["status"]["phase"], "Failed");
    assert_eq!(both["status"]["reason"], "InvalidDestination");
}
