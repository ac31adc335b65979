//! A harness that runs real `concord-node` processes on loopback.
#![allow(dead_code)]

use std::fs;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const NODE_BIN: &str = env!("CARGO_BIN_EXE_concord-node");
pub const CTL_BIN: &str = env!("CARGO_BIN_EXE_concordctl");

/// A port nothing listens on now and that this process has not handed out before: a port is
/// free again once its probe closes, and three per node (peer, HTTP, etcd) handed out before
/// the nodes bind them would otherwise collide now and then.
pub fn free_port() -> u16 {
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

pub struct NodeProc {
    pub name: String,
    pub peer_port: u16,
    pub api_port: u16,
    /// etcd's v3 API (gRPC).
    pub etcd_port: u16,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// `http`, or `https` once the cluster's API speaks TLS ([`Cluster::use_tls`]).
    pub scheme: &'static str,
    child: Option<Child>,
}

impl NodeProc {
    pub fn api(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.api_port)
    }
    /// The etcd API endpoint, as etcd clients are given it.
    pub fn etcd(&self) -> String {
        format!("127.0.0.1:{}", self.etcd_port)
    }
    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeProc>,
    pub http: reqwest::Client,
    /// Extra environment for every node process.
    pub env: Vec<(String, String)>,
}

/// Raft timing for tests: fast elections so failover tests stay short.
pub const FAST_RAFT: &str =
    "raft:\n  heartbeatIntervalMs: 50\n  electionTimeoutMinMs: 500\n  electionTimeoutMaxMs: 1000\n";

impl Cluster {
    /// Writes seed-format YAML for `n` nodes (plus `extra` YAML sections) and starts them.
    pub fn start(n: usize, extra: &str) -> Cluster {
        Self::start_with_env(n, extra, Vec::new())
    }

    pub fn start_with_env(n: usize, extra: &str, env: Vec<(String, String)>) -> Cluster {
        let mut cluster = Self::configure(n, extra, env);
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster
    }

    /// Writes the configs of [`Cluster::start`] without starting anything, so a test can lay
    /// out data dirs first.
    pub fn configure(n: usize, extra: &str, env: Vec<(String, String)>) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let peers: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (p, _, _))| format!("    - \"node{}:127.0.0.1:{p}\"", i + 1))
            .collect();
        let mut nodes = Vec::new();
        for (i, (peer_port, api_port, etcd_port)) in ports.iter().enumerate() {
            let name = format!("node{}", i + 1);
            let data_dir = dir.path().join(&name);
            let config = dir.path().join(format!("{name}.yaml"));
            let peers_yaml = if n > 1 {
                format!("  peers:\n{}\n", peers.join("\n"))
            } else {
                String::new()
            };
            fs::write(
                &config,
                format!(
                    "server:\n  nodeId: \"{name}\"\n  listenAddr: \"127.0.0.1:{peer_port}\"\n  apiAddr: \"127.0.0.1:{api_port}\"\n  etcdAddr: \"127.0.0.1:{etcd_port}\"\n  dataDir: \"{}\"\n{peers_yaml}{FAST_RAFT}{extra}",
                    data_dir.display()
                ),
            )
            .expect("write config");
            nodes.push(NodeProc {
                log: dir.path().join(format!("{name}.log")),
                name,
                peer_port: *peer_port,
                api_port: *api_port,
                etcd_port: *etcd_port,
                config,
                data_dir,
                scheme: "http",
                child: None,
            });
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        Cluster {
            dir,
            nodes,
            http,
            env,
        }
    }

    /// `n` nodes in join mode: uninitialized, waiting for the admin API.
    pub fn start_join(n: usize) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let mut cluster = Cluster {
            dir,
            nodes: Vec::new(),
            http,
            env: Vec::new(),
        };
        for _ in 0..n {
            cluster.add_join_node();
        }
        cluster
    }

    /// Configures and starts one more join-mode node; returns its index.
    pub fn add_join_node(&mut self) -> usize {
        let i = self.configure_join_node();
        self.spawn(i);
        i
    }

    /// Configures one more join-mode node without starting it; returns its index.
    pub fn configure_join_node(&mut self) -> usize {
        let i = self.nodes.len();
        let name = format!("node{}", i + 1);
        let (peer_port, api_port, etcd_port) = (free_port(), free_port(), free_port());
        let data_dir = self.dir.path().join(&name);
        let config = self.dir.path().join(format!("{name}.yaml"));
        fs::write(
            &config,
            format!(
                "server:\n  nodeId: \"{name}\"\n  listenAddr: \"127.0.0.1:{peer_port}\"\n  apiAddr: \"127.0.0.1:{api_port}\"\n  etcdAddr: \"127.0.0.1:{etcd_port}\"\n  dataDir: \"{}\"\n  join: true\n{FAST_RAFT}  maxPromoteLag: 50\n",
                data_dir.display()
            ),
        )
        .expect("write config");
        self.nodes.push(NodeProc {
            log: self.dir.path().join(format!("{name}.log")),
            name,
            peer_port,
            api_port,
            etcd_port,
            config,
            data_dir,
            scheme: "http",
            child: None,
        });
        i
    }

    /// The nodes' HTTP API speaks TLS: the harness uses `client` (which trusts the nodes' CA
    /// and may present a client certificate) and `https` URLs.
    pub fn use_tls(&mut self, client: reqwest::Client) {
        self.http = client;
        for n in &mut self.nodes {
            n.scheme = "https";
        }
    }

    /// kill -9 and delete the node's data dir (a lost volume).
    pub fn wipe(&mut self, i: usize) {
        self.kill9(i);
        let _ = fs::remove_dir_all(&self.nodes[i].data_dir);
    }

    /// The node's admin status, once it answers.
    pub async fn admin_status(&self, i: usize) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (s, body) = self.get(i, "/admin/status").await;
            if s == 200 {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} admin status: {s} {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn member_id(&self, i: usize) -> u64 {
        self.admin_status(i).await["id"].as_u64().expect("id")
    }

    pub async fn voters(&self, i: usize) -> Vec<u64> {
        let (s, body) = self.get(i, "/admin/members").await;
        assert_eq!(s, 200, "{body}");
        let mut v: Vec<u64> = body["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "voter")
            .map(|m| m["id"].as_u64().unwrap())
            .collect();
        v.sort();
        v
    }

    /// add learner → wait until caught up → promote, through node `via`.
    pub async fn add_voter(&self, via: usize, new: usize) {
        let id = self.member_id(new).await;
        let spec = json!({
            "id": id,
            "name": self.nodes[new].name,
            "address": format!("127.0.0.1:{}", self.nodes[new].peer_port),
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (s, body) = self.post(via, "/admin/learners", &spec).await;
            if s == 200 {
                break;
            }
            // Only documented retryable refusals (busy, no leader) may be retried.
            assert_eq!(body["retryable"], true, "add learner {new}: {s} {body}");
            assert!(Instant::now() < deadline, "add learner {new}: {s} {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (s, body) = self.post(via, "/admin/promote", &json!({ "id": id })).await;
            if s == 200 {
                return;
            }
            assert!(s == 409 || s == 503, "promote {new}: unexpected {s} {body}");
            assert!(
                Instant::now() < deadline,
                "learner {new} never caught up: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn remove_member(&self, via: usize, id: u64) -> (u16, Value) {
        self.post(via, "/admin/remove", &json!({ "id": id })).await
    }

    pub fn spawn(&mut self, i: usize) {
        self.spawn_with_args(i, &[]);
    }

    /// Starts node `i` with more command-line flags after its config.
    pub fn spawn_with_args(&mut self, i: usize, args: &[&str]) {
        let node = &mut self.nodes[i];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("log file");
        let child = Command::new(NODE_BIN)
            .arg("-config")
            .arg(&node.config)
            .args(args)
            .env("CONCORD_LOG", "info,openraft=warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn concord-node");
        node.child = Some(child);
    }

    /// kill -9: no chance to flush or hand over anything.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self, i: usize) -> Option<i32> {
        let mut c = self.nodes[i].child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self, i: usize) -> String {
        fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    pub async fn status(&self, i: usize) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}/api/status", self.nodes[i].api()))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// Waits until every running node agrees on one leader; returns its index.
    pub async fn wait_leader(&mut self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaders = Vec::new();
            let mut all = true;
            for i in 0..self.nodes.len() {
                if !self.nodes[i].is_running() {
                    continue;
                }
                match self.status(i).await {
                    Some(s) => leaders.push(s["leader"]["name"].as_str().map(String::from)),
                    None => all = false,
                }
            }
            if all && !leaders.is_empty() && leaders.iter().all(|l| l.is_some() && *l == leaders[0])
            {
                let name = leaders[0].clone().unwrap_or_default();
                if let Some(idx) = self.nodes.iter().position(|n| n.name == name) {
                    if self.nodes[idx].is_running() {
                        return idx;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the nodes in `among` agree on a leader; returns its index.
    pub async fn wait_leader_among(&self, among: &[usize], timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let mut seen = Vec::new();
            for &i in among {
                if let Some(s) = self.status(i).await {
                    seen.push(s["leader"]["id"].as_u64());
                }
            }
            if seen.len() == among.len() && seen[0].is_some() && seen.iter().all(|l| *l == seen[0])
            {
                for &i in among {
                    let id = self.admin_status(i).await["id"].as_u64();
                    if id == seen[0] {
                        return i;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader among {among:?}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn set(&self, i: usize, key: &str, value: &str) -> (u16, Value) {
        self.post(i, "/api/set", &json!({ "key": key, "value": value }))
            .await
    }

    pub async fn post(&self, i: usize, path: &str, body: &Value) -> (u16, Value) {
        self.send(
            self.http
                .post(format!("{}{path}", self.nodes[i].api()))
                .json(body),
        )
        .await
    }

    pub async fn post_raw(&self, i: usize, path: &str, body: Vec<u8>) -> (u16, Value) {
        self.send(
            self.http
                .post(format!("{}{path}", self.nodes[i].api()))
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    pub async fn get(&self, i: usize, path: &str) -> (u16, Value) {
        self.send(self.http.get(format!("{}{path}", self.nodes[i].api())))
            .await
    }

    pub async fn delete(&self, i: usize, path: &str) -> (u16, Value) {
        self.send(self.http.delete(format!("{}{path}", self.nodes[i].api())))
            .await
    }

    /// Sends a request built on [`Cluster::http`]; (status, JSON body or its text), status 0
    /// when nothing answered.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                (
                    status,
                    serde_json::from_str(&text).unwrap_or(Value::String(text)),
                )
            }
            Err(e) => (0, Value::String(e.to_string())),
        }
    }

    /// Retries a write on any node until it is acknowledged (only on retryable answers).
    pub async fn set_retry(&self, key: &str, value: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let mut i = 0;
        loop {
            let (s, body) = self.set(i % self.nodes.len(), key, value).await;
            if s == 200 {
                return body;
            }
            assert!(
                s == 0 || s == 503,
                "set {key} got non-retryable {s}: {body}"
            );
            assert!(
                Instant::now() < deadline,
                "set {key} not acknowledged in {timeout:?}: {s} {body}"
            );
            i += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls a node's local (stale) view until `key` has `value`.
    pub async fn wait_value(&self, i: usize, key: &str, value: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (s, body) = self
                .get(i, &format!("/api/get?key={key}&consistency=stale"))
                .await;
            if s == 200 && body["value"] == value {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} never showed {key}={value}: last {s} {body}\n--- log ---\n{}",
                self.nodes[i].name,
                self.log_text(i)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
        // CONCORD_TEST_KEEP=1 keeps data dirs and logs of failed tests for inspection.
        if std::thread::panicking() && std::env::var_os("CONCORD_TEST_KEEP").is_some() {
            let kept = std::env::temp_dir().join(format!("concord-test-{}", std::process::id()));
            let _ = fs::rename(self.dir.path(), &kept);
            eprintln!("kept test data in {}", kept.display());
        }
    }
}

/// Runs etcdctl against `endpoint`; returns stdout, or panics with stderr.
pub fn etcdctl(endpoint: &str, args: &[&str]) -> String {
    etcdctl_stdin(endpoint, args, None).expect("etcdctl succeeds")
}

pub fn etcdctl_stdin(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("etcdctl is installed (Debian package etcd-client; scripts/test.sh installs it)");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().expect("etcdctl runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

pub fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A client process left running (etcdctl watch/lock/elect, curl -N, concordctl watch): its
/// stdout lines as they come, read on a thread of their own. Killed when dropped.
pub struct Streamed {
    pub child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Streamed {
    pub fn spawn(cmd: &mut Command) -> Streamed {
        use std::io::{BufRead, BufReader};
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Streamed { child, lines }
    }

    /// `etcdctl --endpoints=ENDPOINT ARGS...`.
    pub fn etcdctl(endpoint: &str, args: &[&str]) -> Streamed {
        Streamed::spawn(
            Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={endpoint}"))
                .args(args),
        )
    }

    /// The next line, if one comes within `within`.
    pub fn line(&self, within: Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
