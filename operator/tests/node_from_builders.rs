//! The objects the operator builds, run for real: a `concord-node` process started from exactly
//! the ConfigMap, container command, env (field refs resolved, `$(VAR)` expanded as the kubelet
//! does), volume mounts and probes of the StatefulSet's pod template, on a host of its own (a
//! network namespace, so it binds the ports the template names) whose resolver knows the pod's
//! DNS name. A wrong env var, a ConfigMap key the node refuses, a probe path that does not exist
//! or a port mismatch fails here, not on a customer's cluster.
//!
//! Mount paths are mapped into a per-pod directory (as a container runtime would); nothing else
//! in what the builders produced is changed. Needs root for the namespace; skipped otherwise.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use concord_operator::admin::{GrpcAdmin, NodeAdmin};
use concord_operator::build;
use concord_operator::crd::ConcordCluster;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The image's entrypoint (docker/node.Dockerfile), which the pod template does not override.
fn image_entrypoint() -> Vec<String> {
    let dockerfile = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker/node.Dockerfile");
    let text = std::fs::read_to_string(dockerfile).expect("node Dockerfile");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("an ENTRYPOINT");
    serde_json::from_str(line).expect("exec-form ENTRYPOINT")
}

fn fixture(name: &str) -> ConcordCluster {
    let path = format!("{}/tests/fixtures/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("cluster")
}

/// `$(NAME)` references to variables defined earlier in the list, as the kubelet expands them.
fn expand(value: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = value.to_string();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

/// The container's environment as the kubelet would give it to pod `pod` in `namespace`.
fn pod_env(c: &Container, pod: &str, namespace: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for e in c.env.clone().unwrap_or_default() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => expand(v, &env),
            (None, Some(from)) => {
                let field = from
                    .field_ref
                    .as_ref()
                    .unwrap_or_else(|| panic!("{}: only fieldRef sources are used", e.name));
                match field.field_path.as_str() {
                    "metadata.name" => pod.to_string(),
                    "metadata.namespace" => namespace.to_string(),
                    other => panic!("{}: fieldRef {other} not simulated", e.name),
                }
            }
            (None, None) => String::new(),
        };
        env.insert(e.name.clone(), value);
    }
    env
}

fn port_of(c: &Container, port: &IntOrString) -> u16 {
    match port {
        IntOrString::Int(p) => *p as u16,
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port as u16)
            .unwrap_or_else(|| panic!("probe names port {name:?}, which the container lacks")),
    }
}

/// Runs an HTTP GET probe once, as the kubelet would: success is a 2xx/3xx answer.
async fn probe(http: &reqwest::Client, ip: &str, c: &Container, p: &Probe) -> bool {
    let get = p.http_get.as_ref().expect("an httpGet probe");
    let url = format!(
        "http://{ip}:{}{}",
        port_of(c, &get.port),
        get.path.as_deref().unwrap_or("/")
    );
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1) as u64);
    match http.get(url).timeout(timeout).send().await {
        Ok(r) => r.status().is_success() || r.status().is_redirection(),
        Err(_) => false,
    }
}

async fn until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Pod {
    child: Child,
    hosts_file: PathBuf,
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = self.hosts_file.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn map_mounts(text: &str, mounts: &[(String, PathBuf)]) -> String {
    mounts.iter().fold(text.to_string(), |t, (from, to)| {
        t.replace(from.as_str(), &to.display().to_string())
    })
}

async fn run_pod_0(fixture_name: &str) {
    let cluster = fixture(fixture_name);
    let name = cluster.metadata.name.clone().expect("name");
    let namespace = cluster.metadata.namespace.clone().expect("namespace");
    let valid = concord_operator::validate::check(&cluster, &namespace).expect("valid fixture");
    let d = build::desired(&valid, 1);
    let sts = d.stateful_set.spec.clone().expect("sts spec");
    let claims: Vec<String> = sts
        .volume_claim_templates
        .iter()
        .flatten()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    let template = sts.template;
    let pod_spec = template.spec.expect("pod spec");
    let c = pod_spec.containers.first().expect("a container").clone();
    let pod = format!("{name}-0");
    let root = tempfile::tempdir().expect("pod root");

    // Volumes at their mount paths, mapped under the pod's root.
    let mut mounts = Vec::new();
    for m in c.volume_mounts.clone().unwrap_or_default() {
        let dir = root.path().join(m.mount_path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).expect("mount dir");
        let volume = pod_spec.volumes.iter().flatten().find(|v| v.name == m.name);
        match volume.and_then(|v| v.config_map.as_ref()) {
            Some(cm) => {
                assert_eq!(
                    cm.name,
                    d.config_map.metadata.name.clone().expect("cm name")
                );
                for (file, text) in d.config_map.data.clone().unwrap_or_default() {
                    std::fs::write(dir.join(file), &text).expect("config file");
                }
            }
            // Not a pod volume: the StatefulSet's volume claim (an empty directory here).
            None => assert!(
                claims.contains(&m.name),
                "mount {} is neither a volume nor a claim",
                m.name
            ),
        }
        mounts.push((m.mount_path.clone(), dir));
    }
    // Paths inside the config files and the env point into the mounts.
    for (_, dir) in &mounts {
        for entry in std::fs::read_dir(dir).expect("mount") {
            let path = entry.expect("entry").path();
            if path.is_file() {
                let text = std::fs::read_to_string(&path).expect("read");
                std::fs::write(&path, map_mounts(&text, &mounts)).expect("write");
            }
        }
    }
    let env: BTreeMap<String, String> = pod_env(&c, &pod, &namespace)
        .into_iter()
        .map(|(k, v)| (k, map_mounts(&v, &mounts)))
        .collect();

    let hosts = concord_chaos::netns::Hosts::create(1).expect("network namespace");
    let (ns, ip) = (hosts.namespaces[0].clone(), hosts.ips[0].clone());
    // The pod's resolver: `ip netns exec` bind-mounts this file over /etc/hosts.
    let netns_etc = PathBuf::from("/etc/netns").join(&ns);
    std::fs::create_dir_all(&netns_etc).expect("netns etc");
    let fqdn = format!("{pod}.{name}-peers.{namespace}.svc");
    std::fs::write(
        netns_etc.join("hosts"),
        format!("127.0.0.1 localhost\n{ip} {fqdn} {fqdn}.cluster.local {pod}\n"),
    )
    .expect("hosts");

    let mut argv = image_entrypoint();
    argv.extend(c.command.clone().unwrap_or_default());
    argv.extend(c.args.clone().unwrap_or_default());
    assert_eq!(argv[0], "/usr/local/bin/concord-node");
    let log = root.path().join("node.log");
    let child = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(common::node_binary())
        .args(&argv[1..])
        .env_clear()
        .envs(&env)
        .stdout(Stdio::from(std::fs::File::create(&log).expect("log")))
        .stderr(Stdio::from(
            std::fs::File::create(root.path().join("node.err")).expect("log"),
        ))
        .spawn()
        .expect("start the pod's container");
    let mut pod_proc = Pod {
        child,
        hosts_file: netns_etc.join("hosts"),
    };
    let logs = || {
        format!(
            "{}{}",
            std::fs::read_to_string(root.path().join("node.err")).unwrap_or_default(),
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    };

    let http = reqwest::Client::new();
    let startup = c.startup_probe.clone().expect("startup probe");
    let liveness = c.liveness_probe.clone().expect("liveness probe");
    let readiness = c.readiness_probe.clone().expect("readiness probe");
    let started = Instant::now();
    while !probe(&http, &ip, &c, &startup).await {
        if let Ok(Some(status)) = pod_proc.child.try_wait() {
            panic!(
                "{fixture_name}: the node exited ({status}) before its startup probe passed:\n{}",
                logs()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "startup probe never passed:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(probe(&http, &ip, &c, &liveness).await, "liveness");
    // Join mode: not ready until the operator initialises it, as the operator does.
    if probe(&http, &ip, &c, &readiness).await {
        let body = http
            .get(format!("http://{ip}:8081/readyz?verbose"))
            .send()
            .await
            .map(|r| format!("{r:?}"));
        panic!("ready before initialisation: {body:?}\n{}", logs());
    }
    let peer_port = c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("peer"))
        .expect("peer port")
        .container_port;
    let admin = GrpcAdmin::default();
    let addr = format!("{ip}:{peer_port}");
    admin.init(&addr).await.expect("init through the admin API");
    until("the pod is ready", Duration::from_secs(20), async || {
        probe(&http, &ip, &c, &readiness).await
    })
    .await;
    let status = admin.node_status(&addr).await.expect("status");
    assert_eq!(status.name, pod, "CONCORD_NODE_ID reached the node");
    assert_eq!(
        status.address,
        format!("{fqdn}:{peer_port}"),
        "advertised peer address"
    );
    let api = port_of(&c, &IntOrString::String("http".into()));
    let put = http
        .post(format!("http://{ip}:{api}/api/set"))
        .json(&serde_json::json!({"key": "from", "value": fixture_name}))
        .send()
        .await
        .expect("write");
    assert!(put.status().is_success(), "{:?}", put.text().await);
    let data_dir = &mounts
        .iter()
        .find(|(from, _)| from == concord_operator::naming::DATA_DIR)
        .expect("data volume")
        .1;
    assert!(
        Path::new(data_dir).join("node/raft").is_dir(),
        "the node keeps its data on the volume"
    );
    drop(pod_proc);
    drop(hosts);
}

#[tokio::test]
async fn a_node_runs_from_exactly_what_the_builders_produce() {
    // Only root can make network namespaces (CI runs as root).
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n");
    if !matches!(root, Ok(true)) {
        eprintln!("skipped: needs root for a network namespace");
        return;
    }
    for f in ["minimal", "full"] {
        run_pod_0(f).await;
    }
}
