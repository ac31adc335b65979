//! The kubelet: every pod the API server holds runs here, its one container a real process
//! (an image maps to a directory of binaries) inside the pod's own network namespace, with the
//! container's `command`/`args`/`env` (field, Secret and ConfigMap references resolved, `$(VAR)`
//! expanded), its ConfigMap, Secret and projected volumes written as files, its claims as
//! directories that outlive the pod, and its mount paths mapped into a per-pod root (in the
//! arguments, the environment and the mounted files, since there is no chroot). Probes run as
//! declared and drive `Ready` and restarts; a deleted pod gets SIGTERM, its grace period, then
//! SIGKILL; a pod that ends (restartPolicy Never) reports its termination message.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, Probe, Volume};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::apiserver::{now, ApiServer, DeleteOptions, WriteOptions};
use crate::network::Network;

const MANAGER: &str = "kubelet";
/// Where an image's default entrypoint lives (docker/node.Dockerfile's ENTRYPOINT).
const ENTRYPOINT: &str = "/usr/local/bin/concord-node";
const TERMINATION_LOG: &str = "/dev/termination-log";

/// Image references and the directory of binaries each runs (`concord-node`, `concordctl`):
/// the first pattern the reference contains wins; otherwise the default.
#[derive(Debug, Clone)]
pub struct Images {
    pub default: PathBuf,
    pub by_reference: Vec<(String, PathBuf)>,
}

impl Images {
    pub fn bin_dir(&self, image: &str) -> &Path {
        self.by_reference
            .iter()
            .find(|(pattern, _)| image.contains(pattern.as_str()))
            .map(|(_, d)| d.as_path())
            .unwrap_or(&self.default)
    }
}

pub struct Kubelet {
    api: ApiServer,
    net: Arc<Network>,
    images: Images,
    root: PathBuf,
    /// Pods being run, by uid.
    running: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// The process of each pod (`namespace/name`) now.
    pids: Mutex<HashMap<String, u32>>,
    /// Pods whose process is stopped and kept down, as on a node that went away.
    held: Mutex<std::collections::HashSet<String>>,
}

/// Mount paths in `text` mapped under the pod's root, each once, the longest first
/// (`/etc/concord-tls` is not `/etc/concord` followed by `-tls`).
pub fn map_mounts(text: &str, mounts: &[(String, PathBuf)]) -> String {
    let mut order: Vec<usize> = (0..mounts.len()).collect();
    order.sort_by_key(|i| std::cmp::Reverse(mounts[*i].0.len()));
    let marked = order.iter().fold(text.to_string(), |t, i| {
        t.replace(mounts[*i].0.as_str(), &format!("\u{0}{i}\u{0}"))
    });
    order.iter().fold(marked, |t, i| {
        t.replace(
            &format!("\u{0}{i}\u{0}"),
            &mounts[*i].1.display().to_string(),
        )
    })
}

fn port_of(c: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// One HTTP GET probe: a 2xx or 3xx answer within its timeout (certificates unchecked, as the
/// kubelet does).
async fn probe_once(http: &reqwest::Client, ip: &str, c: &Container, p: &Probe) -> bool {
    let Some(get) = p.http_get.as_ref() else {
        return true;
    };
    let Some(port) = port_of(c, &get.port) else {
        return false;
    };
    let scheme = get.scheme.as_deref().unwrap_or("HTTP").to_lowercase();
    let url = format!(
        "{scheme}://{ip}:{port}{}",
        get.path.as_deref().unwrap_or("/")
    );
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    match http.get(url).timeout(timeout).send().await {
        Ok(r) => r.status().is_success() || r.status().is_redirection(),
        Err(_) => false,
    }
}

/// A probe's schedule and its run of results.
struct ProbeState {
    probe: Probe,
    next: Instant,
    failures: i32,
    successes: i32,
}

impl ProbeState {
    fn new(probe: Probe) -> ProbeState {
        let delay = probe.initial_delay_seconds.unwrap_or(0).max(0) as u64;
        ProbeState {
            next: Instant::now() + Duration::from_secs(delay),
            probe,
            failures: 0,
            successes: 0,
        }
    }

    fn period(&self) -> Duration {
        Duration::from_secs(self.probe.period_seconds.unwrap_or(10).max(1) as u64)
    }

    /// Runs it if due; Some(true) once it has succeeded `successThreshold` times in a row,
    /// Some(false) once it has failed `failureThreshold` times in a row.
    async fn tick(&mut self, http: &reqwest::Client, ip: &str, c: &Container) -> Option<bool> {
        if Instant::now() < self.next {
            return None;
        }
        self.next = Instant::now() + self.period();
        if probe_once(http, ip, c, &self.probe).await {
            self.failures = 0;
            self.successes += 1;
            (self.successes >= self.probe.success_threshold.unwrap_or(1)).then_some(true)
        } else {
            self.successes = 0;
            self.failures += 1;
            (self.failures >= self.probe.failure_threshold.unwrap_or(3)).then_some(false)
        }
    }
}

/// Where a volume's files come from: `secret` or `configmap`, its name, which keys to which
/// paths (None: every key under its own name), and whether it may be missing.
type Source = (&'static str, String, Option<Vec<(String, String)>>, bool);

fn signal(child: &Child, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .output();
}

impl Kubelet {
    pub fn new(api: ApiServer, net: Arc<Network>, images: Images, root: PathBuf) -> Arc<Kubelet> {
        Arc::new(Kubelet {
            api,
            net,
            images,
            root,
            running: Mutex::default(),
            pids: Mutex::default(),
            held: Mutex::default(),
        })
    }

    /// Starts every new pod and forgets those that are gone, until dropped.
    pub async fn run(self: Arc<Self>) {
        loop {
            let changed = self.api.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            self.sync();
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    fn sync(self: &Arc<Self>) {
        let pods = self.api.list_path("/api/v1/pods", "");
        let mut running = self.running.lock();
        running.retain(|_, task| !task.is_finished());
        for pod in pods {
            let uid = pod["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if uid.is_empty() || running.contains_key(&uid) {
                continue;
            }
            // A pod already finished (Succeeded/Failed) stays as it is.
            let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
            if phase == "Succeeded" || phase == "Failed" {
                if !pod["metadata"]["deletionTimestamp"].is_null() {
                    self.forget(&pod);
                }
                continue;
            }
            let me = self.clone();
            running.insert(uid, tokio::spawn(async move { me.run_pod(pod).await }));
        }
        drop(running);
        self.collect_volumes();
    }

    fn pod_path(pod: &Value) -> String {
        format!(
            "/api/v1/namespaces/{}/pods/{}",
            pod["metadata"]["namespace"].as_str().unwrap_or_default(),
            pod["metadata"]["name"].as_str().unwrap_or_default()
        )
    }

    fn claim_dir(&self, ns: &str, claim: &str) -> PathBuf {
        self.root.join("volumes").join(ns).join(claim)
    }

    /// A claim's directory goes with its PersistentVolumeClaim.
    fn collect_volumes(&self) {
        let Ok(namespaces) = std::fs::read_dir(self.root.join("volumes")) else {
            return;
        };
        for ns in namespaces.flatten() {
            let ns_name = ns.file_name().to_string_lossy().to_string();
            for claim in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                let name = claim.file_name().to_string_lossy().to_string();
                let path = format!("/api/v1/namespaces/{ns_name}/persistentvolumeclaims/{name}");
                if self.api.get_path(&path).is_none() {
                    let _ = std::fs::remove_dir_all(claim.path());
                }
            }
        }
    }

    fn write_status(&self, pod: &Value, status: Value) {
        let Ok(t) = ApiServer::target(&format!("{}/status", Self::pod_path(pod))) else {
            return;
        };
        let o = WriteOptions {
            manager: MANAGER.into(),
            force: false,
        };
        let _ = self.api.patch(
            &t,
            "application/merge-patch+json",
            json!({ "status": status }),
            &o,
        );
    }

    /// Removes a pod whose deletion its process has finished.
    fn forget(&self, pod: &Value) {
        if let Ok(t) = ApiServer::target(&Self::pod_path(pod)) {
            let _ = self.api.delete(
                &t,
                &DeleteOptions {
                    grace_seconds: Some(0),
                    ..Default::default()
                },
            );
        }
    }

    fn secret_or_map(&self, ns: &str, kind: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let (plural, field) = match kind {
            "secret" => ("secrets", "data"),
            _ => ("configmaps", "data"),
        };
        let obj = self
            .api
            .get_path(&format!("/api/v1/namespaces/{ns}/{plural}/{name}"))?;
        let mut out = BTreeMap::new();
        for (k, v) in obj[field].as_object().into_iter().flatten() {
            let text = v.as_str().unwrap_or_default();
            let bytes = if kind == "secret" {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .unwrap_or_default()
            } else {
                text.as_bytes().to_vec()
            };
            out.insert(k.clone(), bytes);
        }
        if kind == "secret" {
            for (k, v) in obj["stringData"].as_object().into_iter().flatten() {
                out.insert(
                    k.clone(),
                    v.as_str().unwrap_or_default().as_bytes().to_vec(),
                );
            }
        }
        Some(out)
    }

    /// Writes a volume's files into `dir`; false when a Secret or ConfigMap it needs (and that
    /// is not optional) does not exist yet.
    fn write_volume(&self, ns: &str, v: &Volume, dir: &Path) -> bool {
        let mut sources: Vec<Source> = Vec::new();
        let items = |i: &Option<Vec<k8s_openapi::api::core::v1::KeyToPath>>| {
            i.as_ref()
                .map(|i| i.iter().map(|k| (k.key.clone(), k.path.clone())).collect())
        };
        if let Some(s) = &v.secret {
            sources.push((
                "secret",
                s.secret_name.clone().unwrap_or_default(),
                items(&s.items),
                s.optional == Some(true),
            ));
        }
        if let Some(c) = &v.config_map {
            sources.push((
                "configmap",
                c.name.clone(),
                items(&c.items),
                c.optional == Some(true),
            ));
        }
        for p in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(s) = &p.secret {
                sources.push((
                    "secret",
                    s.name.clone(),
                    items(&s.items),
                    s.optional == Some(true),
                ));
            }
            if let Some(c) = &p.config_map {
                sources.push((
                    "configmap",
                    c.name.clone(),
                    items(&c.items),
                    c.optional == Some(true),
                ));
            }
        }
        for (kind, name, items, optional) in sources {
            let Some(data) = self.secret_or_map(ns, kind, &name) else {
                if optional {
                    continue;
                }
                return false;
            };
            let files: Vec<(String, String)> =
                items.unwrap_or_else(|| data.keys().map(|k| (k.clone(), k.clone())).collect());
            for (key, path) in files {
                let Some(bytes) = data.get(&key) else {
                    continue;
                };
                let file = dir.join(path);
                if std::fs::read(&file).is_ok_and(|now| now == *bytes) {
                    continue;
                }
                if let Some(parent) = file.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                // Replaced whole, as the kubelet's atomic writer does: a reader never sees half.
                let tmp = file.with_extension("sim-tmp");
                if std::fs::write(&tmp, bytes).is_ok() {
                    let _ = std::fs::rename(&tmp, &file);
                }
            }
        }
        true
    }

    /// The container's environment as the kubelet gives it.
    fn env(&self, pod: &Value, c: &Container, ip: &str) -> BTreeMap<String, String> {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for e in c.env.clone().unwrap_or_default() {
            let value = match (&e.value, &e.value_from) {
                (Some(v), _) => {
                    let mut out = v.clone();
                    for (k, val) in &env {
                        out = out.replace(&format!("$({k})"), val);
                    }
                    out
                }
                (None, Some(from)) => {
                    if let Some(f) = &from.field_ref {
                        match f.field_path.as_str() {
                            "metadata.name" => pod["metadata"]["name"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                            "metadata.namespace" => ns.to_string(),
                            "metadata.uid" => pod["metadata"]["uid"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                            "status.podIP" => ip.to_string(),
                            "spec.nodeName" => "sim-node".to_string(),
                            _ => String::new(),
                        }
                    } else if let Some(r) = &from.secret_key_ref {
                        self.secret_or_map(ns, "secret", &r.name)
                            .and_then(|d| d.get(&r.key).cloned())
                            .map(|b| String::from_utf8_lossy(&b).to_string())
                            .unwrap_or_default()
                    } else if let Some(r) = &from.config_map_key_ref {
                        self.secret_or_map(ns, "configmap", &r.name)
                            .and_then(|d| d.get(&r.key).cloned())
                            .map(|b| String::from_utf8_lossy(&b).to_string())
                            .unwrap_or_default()
                    } else {
                        String::new()
                    }
                }
                (None, None) => String::new(),
            };
            env.insert(e.name.clone(), value);
        }
        env
    }

    async fn run_pod(self: Arc<Self>, pod_json: Value) {
        let Ok(pod) = serde_json::from_value::<Pod>(pod_json.clone()) else {
            self.write_status(
                &pod_json,
                json!({"phase": "Failed", "reason": "InvalidPod"}),
            );
            return;
        };
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let Some(c) = spec.containers.first().cloned() else {
            return;
        };
        let dir = self
            .root
            .join("pods")
            .join(&ns)
            .join(format!("{name}-{uid}"));
        let key = format!("{ns}/{name}");
        let host = match self.net.add_host() {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(pod = %name, error = %e, "no network for the pod");
                return;
            }
        };
        let started = now();
        let base_status = |ready: bool, restarts: u32, state: Value| {
            json!({
                "phase": "Running", "podIP": host.ip, "podIPs": [{"ip": host.ip}],
                "hostIP": self.net.gateway(), "startTime": started,
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Initialized", "status": "True"},
                    {"type": "ContainersReady", "status": if ready { "True" } else { "False" }},
                    {"type": "Ready", "status": if ready { "True" } else { "False" },
                     "lastTransitionTime": now()},
                ],
                "containerStatuses": [{"name": c.name, "image": c.image, "imageID": "",
                    "ready": ready, "restartCount": restarts, "started": true, "state": state}],
            })
        };
        self.write_status(
            &pod_json,
            base_status(
                false,
                0,
                json!({"waiting": {"reason": "ContainerCreating"}}),
            ),
        );
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap_or_default();
        let mut restarts = 0u32;
        let outcome = loop {
            // Volumes (refreshed at each start) at their mount paths, under the pod's root.
            let mut mounts: Vec<(String, PathBuf)> = Vec::new();
            let mut waiting_for = None;
            for m in c.volume_mounts.clone().unwrap_or_default() {
                let volume = spec.volumes.iter().flatten().find(|v| v.name == m.name);
                let target = match volume.and_then(|v| v.persistent_volume_claim.as_ref()) {
                    Some(pvc) => self.claim_dir(&ns, &pvc.claim_name),
                    None => dir
                        .join("mounts")
                        .join(m.mount_path.trim_start_matches('/')),
                };
                let _ = std::fs::create_dir_all(&target);
                if let Some(v) = volume {
                    if !self.write_volume(&ns, v, &target) {
                        waiting_for = Some(m.name.clone());
                    }
                }
                mounts.push((m.mount_path.clone(), target));
            }
            let log = dir.join("termination-log");
            let _ = std::fs::write(&log, b"");
            mounts.push((TERMINATION_LOG.into(), log.clone()));
            if let Some(v) = waiting_for {
                self.write_status(&pod_json, base_status(false, restarts, json!({"waiting": {"reason": "ContainerCreating", "message": format!("volume {v} is not ready")}})));
                if self.deleted(&pod_json) {
                    break None;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            for (path, target) in &mounts {
                if path == TERMINATION_LOG {
                    continue;
                }
                for entry in walk(target) {
                    if let Ok(text) = std::fs::read_to_string(&entry) {
                        let mapped = map_mounts(&text, &mounts);
                        if mapped != text {
                            let _ = std::fs::write(&entry, mapped);
                        }
                    }
                }
            }
            let env: BTreeMap<String, String> = self
                .env(&pod_json, &c, &host.ip)
                .into_iter()
                .map(|(k, v)| (k, map_mounts(&v, &mounts)))
                .collect();
            let mut argv: Vec<String> = match &c.command {
                Some(cmd) if !cmd.is_empty() => cmd.clone(),
                _ => vec![ENTRYPOINT.to_string()],
            };
            argv.extend(c.args.clone().unwrap_or_default());
            let argv: Vec<String> = argv
                .iter()
                .map(|a| {
                    let mut a = a.clone();
                    for (k, v) in &env {
                        a = a.replace(&format!("$({k})"), v);
                    }
                    map_mounts(&a, &mounts)
                })
                .collect();
            let image = c.image.clone().unwrap_or_default();
            let program = self
                .images
                .bin_dir(&image)
                .join(Path::new(&argv[0]).file_name().unwrap_or_default());
            let _ = std::fs::create_dir_all(&dir);
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("stdout.log"));
            let err = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("stderr.log"));
            let mut child = match (out, err) {
                (Ok(out), Ok(err)) => match Network::command_in(&host, &program)
                    .args(&argv[1..])
                    .env_clear()
                    .envs(&env)
                    .stdout(Stdio::from(out))
                    .stderr(Stdio::from(err))
                    .spawn()
                {
                    Ok(child) => child,
                    Err(e) => {
                        tracing::error!(pod = %name, error = %e, "cannot start the container");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
                _ => return,
            };
            self.pids.lock().insert(key.clone(), child.id());
            self.write_status(
                &pod_json,
                base_status(false, restarts, json!({"running": {"startedAt": now()}})),
            );
            let mut startup = c.startup_probe.clone().map(ProbeState::new);
            let mut liveness = c.liveness_probe.clone().map(ProbeState::new);
            let mut readiness = c.readiness_probe.clone().map(ProbeState::new);
            let mut ready = false;
            let mut ticks = 0u64;
            let exit = loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                // Secret volumes follow their Secrets while the pod runs (certificate renewal).
                ticks += 1;
                if ticks.is_multiple_of(10) {
                    for m in c.volume_mounts.iter().flatten() {
                        let volume = spec.volumes.iter().flatten().find(|v| v.name == m.name);
                        if let Some(v) =
                            volume.filter(|v| v.secret.is_some() || v.projected.is_some())
                        {
                            let target = dir
                                .join("mounts")
                                .join(m.mount_path.trim_start_matches('/'));
                            self.write_volume(&ns, v, &target);
                        }
                    }
                }
                if let Ok(Some(status)) = child.try_wait() {
                    break Some(status.code().unwrap_or(137));
                }
                if self.deleted(&pod_json) {
                    self.terminate(&mut child, &pod_json).await;
                    break None;
                }
                if self.held.lock().contains(&key) {
                    signal(&child, "-KILL");
                    let _ = child.wait();
                    break Some(137);
                }
                if let Some(s) = startup.as_mut() {
                    match s.tick(&http, &host.ip, &c).await {
                        Some(true) => startup = None,
                        Some(false) => {
                            signal(&child, "-KILL");
                            let _ = child.wait();
                            break Some(137);
                        }
                        None => {}
                    }
                    continue;
                }
                if let Some(l) = liveness.as_mut() {
                    if l.tick(&http, &host.ip, &c).await == Some(false) {
                        signal(&child, "-KILL");
                        let _ = child.wait();
                        break Some(137);
                    }
                }
                let now_ready = match readiness.as_mut() {
                    Some(r) => match r.tick(&http, &host.ip, &c).await {
                        Some(v) => v,
                        None => ready,
                    },
                    None => true,
                };
                if now_ready != ready {
                    ready = now_ready;
                    self.write_status(
                        &pod_json,
                        base_status(ready, restarts, json!({"running": {"startedAt": now()}})),
                    );
                }
            };
            let Some(code) = exit else {
                break None;
            };
            let message = std::fs::read_to_string(&log).unwrap_or_default();
            let message = if message.is_empty()
                && code != 0
                && c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError")
            {
                tail(&dir.join("stderr.log"), 2048)
            } else {
                message
            };
            let restart = match spec.restart_policy.as_deref().unwrap_or("Always") {
                "Never" => false,
                "OnFailure" => code != 0,
                _ => true,
            };
            if !restart {
                break Some((code, message));
            }
            restarts += 1;
            self.write_status(
                &pod_json,
                base_status(
                    false,
                    restarts,
                    json!({"waiting": {"reason": "CrashLoopBackOff"}}),
                ),
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
            // A held pod stays down (its node is away) until released or deleted.
            while self.held.lock().contains(&key) && !self.deleted(&pod_json) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        self.pids.lock().remove(&key);
        match outcome {
            Some((code, message)) => {
                let phase = if code == 0 { "Succeeded" } else { "Failed" };
                self.write_status(&pod_json, json!({
                    "phase": phase, "podIP": host.ip,
                    "conditions": [{"type": "Ready", "status": "False"}],
                    "containerStatuses": [{"name": c.name, "image": c.image, "imageID": "",
                        "ready": false, "restartCount": restarts,
                        "state": {"terminated": {"exitCode": code, "message": message,
                                                 "reason": if code == 0 { "Completed" } else { "Error" },
                                                 "finishedAt": now()}}}],
                }));
                self.net.remove_host(&host);
            }
            None => {
                self.net.remove_host(&host);
                self.forget(&pod_json);
            }
        }
    }

    /// Whether the pod is being deleted (or gone).
    fn deleted(&self, pod: &Value) -> bool {
        match self.api.get_path(&Self::pod_path(pod)) {
            Some(p) => {
                !p["metadata"]["deletionTimestamp"].is_null()
                    || p["metadata"]["uid"] != pod["metadata"]["uid"]
            }
            None => true,
        }
    }

    /// SIGTERM, the pod's grace period, then SIGKILL.
    async fn terminate(&self, child: &mut Child, pod: &Value) {
        let grace = self
            .api
            .get_path(&Self::pod_path(pod))
            .and_then(|p| p["metadata"]["deletionGracePeriodSeconds"].as_i64())
            .unwrap_or(30)
            .max(0) as u64;
        signal(child, "-TERM");
        let deadline = Instant::now() + Duration::from_secs(grace);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        signal(child, "-KILL");
        let _ = child.wait();
    }

    /// Stops a pod's process and keeps it down (its node lost) until [`Kubelet::release`].
    pub fn hold(&self, namespace: &str, pod: &str) {
        self.held.lock().insert(format!("{namespace}/{pod}"));
    }

    pub fn release(&self, namespace: &str, pod: &str) {
        self.held.lock().remove(&format!("{namespace}/{pod}"));
    }

    /// Kills a pod's process at once, as a crash would (the kubelet then restarts it).
    pub fn kill_container(&self, namespace: &str, pod: &str) -> bool {
        let Some(pid) = self.pids.lock().get(&format!("{namespace}/{pod}")).copied() else {
            return false;
        };
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }
}

/// The files under `dir` (not following links).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out
}

fn tail(path: &Path, bytes: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(bytes);
    String::from_utf8_lossy(&text[start..]).to_string()
}

impl Kubelet {
    /// Stops every pod's task and kills its process (the simulation is ending).
    pub fn shutdown(&self) {
        for (_, task) in self.running.lock().drain() {
            task.abort();
        }
        // The processes outlive their tasks otherwise.
        for (_, pid) in self.pids.lock().drain() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.shutdown();
    }
}
