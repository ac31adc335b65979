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
use concord_operator::tls::{self, certs, objects};
use k8s_openapi::api::core::v1::{Container, Probe, Secret, Volume};
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

/// Runs an HTTP GET probe once, as the kubelet would: success is a 2xx/3xx answer; over HTTPS
/// when the probe says so, without checking the certificate (the kubelet does not).
async fn probe(http: &reqwest::Client, ip: &str, c: &Container, p: &Probe) -> bool {
    let get = p.http_get.as_ref().expect("an httpGet probe");
    let scheme = get.scheme.as_deref().unwrap_or("HTTP").to_lowercase();
    let url = format!(
        "{scheme}://{ip}:{}{}",
        port_of(c, &get.port),
        get.path.as_deref().unwrap_or("/")
    );
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1) as u64);
    match http.get(url).timeout(timeout).send().await {
        Ok(r) => r.status().is_success() || r.status().is_redirection(),
        Err(_) => false,
    }
}

/// The Secrets a running cluster would have: the operator's own minted ones for `mode:
/// operator`, the user's one Secret (minted here with the names the docs ask for) for `mode:
/// secrets`.
fn cluster_secrets(valid: &concord_operator::validate::ValidatedCluster) -> Vec<Secret> {
    let ca = certs::Ca::generate(&valid.name).expect("ca");
    let mut out = vec![objects::ca_secret(valid, &ca)];
    for w in objects::wanted(valid, 1) {
        let issued = ca.issue(&w.leaf, valid.tls.lifetime).expect("issue");
        out.push(objects::tls_secret(valid, &w.secret, &issued, &ca.cert_pem));
    }
    out
}

fn secret_text(secrets: &[Secret], name: &str, key: &str) -> String {
    let s = secrets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no Secret {name}"));
    let bytes = s.data.as_ref().and_then(|d| d.get(key)).expect("key");
    String::from_utf8(bytes.0.clone()).expect("text")
}

/// A Secret or projected volume's files, as the kubelet writes them (missing optional Secrets
/// contribute nothing).
fn write_secret_volume(volume: &Volume, secrets: &[Secret], dir: &Path) {
    let mut sources = Vec::new();
    if let Some(s) = &volume.secret {
        sources.push((s.secret_name.clone().expect("secretName"), None, false));
    }
    for p in volume
        .projected
        .iter()
        .flat_map(|p| p.sources.iter().flatten())
    {
        let s = p.secret.as_ref().expect("only Secret projections are used");
        sources.push((s.name.clone(), s.items.clone(), s.optional == Some(true)));
    }
    for (name, items, optional) in sources {
        let Some(secret) = secrets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(&name))
        else {
            assert!(optional, "Secret {name} is mounted but missing");
            continue;
        };
        let data = secret.data.clone().unwrap_or_default();
        let files: Vec<(String, String)> = match items {
            Some(items) => items.into_iter().map(|i| (i.key, i.path)).collect(),
            None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
        };
        for (key, path) in files {
            let bytes = data
                .get(&key)
                .unwrap_or_else(|| panic!("{name} has no {key}"));
            let file = dir.join(path);
            std::fs::create_dir_all(file.parent().expect("parent")).expect("dir");
            std::fs::write(file, &bytes.0).expect("secret file");
        }
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

use concord_sim::kubelet::map_mounts;

async fn run_pod_0(fixture_name: &str) {
    let cluster = fixture(fixture_name);
    let name = cluster.metadata.name.clone().expect("name");
    let namespace = cluster.metadata.namespace.clone().expect("namespace");
    let valid = concord_operator::validate::check(&cluster, &namespace).expect("valid fixture");
    let peer = tls::current_peer(&cluster, valid.tls.wants_tls());
    let d = build::desired(&valid, 1, peer);
    let secrets = cluster_secrets(&valid);
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
        if let Some(v) = volume.filter(|v| v.secret.is_some() || v.projected.is_some()) {
            write_secret_volume(v, &secrets, &dir);
            mounts.push((m.mount_path.clone(), dir));
            continue;
        }
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

    // The kubelet's prober, and a client of the cluster as an application would be: trusting
    // the cluster CA, presenting the client Secret, dialing the client Service's name.
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("prober");
    let wants_tls = valid.tls.wants_tls();
    let client_host = format!("{name}.{namespace}.svc");
    let api_port = port_of(&c, &IntOrString::String("http".into()));
    let app = {
        let mut b = reqwest::Client::builder().resolve(
            &client_host,
            std::net::SocketAddr::new(ip.parse().expect("ip"), api_port),
        );
        if wants_tls {
            let client = concord_operator::naming::client_secret(&name);
            let pem = format!(
                "{}{}",
                secret_text(&secrets, &client, "tls.crt"),
                secret_text(&secrets, &client, "tls.key")
            );
            b = b
                .add_root_certificate(
                    reqwest::Certificate::from_pem(
                        secret_text(&secrets, &client, "ca.crt").as_bytes(),
                    )
                    .expect("ca"),
                )
                .identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
        }
        b.build().expect("application client")
    };
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
            .get(format!(
                "{}://{ip}:8081/readyz?verbose",
                if wants_tls { "https" } else { "http" }
            ))
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
    // The operator's identity, as it reads it from its Secret.
    let identity = tls::admin_over_tls(peer).then(|| {
        let secret = concord_operator::naming::operator_secret(&name);
        concord_operator::admin::AdminTls {
            ca_pem: secret_text(&secrets, &secret, "ca.crt"),
            cert_pem: secret_text(&secrets, &secret, "tls.crt"),
            key_pem: secret_text(&secrets, &secret, "tls.key"),
            domain: concord_operator::naming::peers_host(&name, &namespace),
        }
    });
    let admin = GrpcAdmin::default().scoped(identity);
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
    let scheme = if wants_tls { "https" } else { "http" };
    if wants_tls {
        let plain = reqwest::Client::new()
            .get(format!("http://{ip}:{api_port}/livez"))
            .send()
            .await;
        assert!(
            plain.is_err(),
            "{fixture_name}: plaintext answered on a TLS port"
        );
        let anonymous = http
            .post(format!("https://{ip}:{api_port}/api/set"))
            .json(&serde_json::json!({"key": "k", "value": "v"}))
            .send()
            .await;
        assert!(
            anonymous.is_err() || anonymous.is_ok_and(|r| !r.status().is_success()),
            "{fixture_name}: a client without a certificate wrote"
        );
    }
    let put = app
        .post(format!("{scheme}://{client_host}:{api_port}/api/set"))
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
    for f in ["minimal", "full", "disabled"] {
        run_pod_0(f).await;
    }
}
