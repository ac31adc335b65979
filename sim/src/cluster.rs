//! A whole simulated cluster in one process: the network, the API server (on the bridge, so
//! every namespace reaches it), the StatefulSet controller, the kubelet and DNS as tasks; the
//! real `concord-operator` binary as a process in a namespace of its own, connected with a
//! kubeconfig; and a client namespace for applications.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use crate::apiserver::{http, ApiServer, WriteOptions};
use crate::kubelet::{Images, Kubelet};
use crate::network::{Host, Network};

pub struct SimCluster {
    pub api: ApiServer,
    pub net: Arc<Network>,
    pub kubelet: Arc<Kubelet>,
    pub api_addr: std::net::SocketAddr,
    pub root: PathBuf,
    pub client: Host,
    operator_host: Host,
    operator: Option<Child>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SimCluster {
    /// Starts everything but the operator; `root` holds the pods' files and volumes.
    pub async fn start(root: &Path, images: Images) -> anyhow::Result<SimCluster> {
        crate::network::available().map_err(anyhow::Error::msg)?;
        let net = Arc::new(Network::create()?);
        let api = ApiServer::new();
        let (api_addr, server) = http::listen(api.clone(), format!("{}:0", net.gateway()).parse()?)
            .await
            .context("the API server")?;
        let kubelet = Kubelet::new(api.clone(), net.clone(), images, root.to_path_buf());
        let tasks = vec![
            server,
            tokio::spawn(crate::statefulset::run(api.clone())),
            tokio::spawn(kubelet.clone().run()),
            tokio::spawn(crate::dns::run(api.clone(), net.clone())),
        ];
        let operator_host = net.add_host()?;
        let client = net.add_host()?;
        Ok(SimCluster {
            api,
            net,
            kubelet,
            api_addr,
            root: root.to_path_buf(),
            client,
            operator_host,
            operator: None,
            tasks,
        })
    }

    /// Starts the operator binary, as its Deployment would, in its own namespace.
    pub fn start_operator(&mut self, binary: &Path) -> anyhow::Result<()> {
        let kubeconfig = self.root.join("kubeconfig");
        std::fs::write(&kubeconfig, http::kubeconfig(self.api_addr, "default"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("operator.log"))?;
        let child = Network::command_in(&self.operator_host, binary)
            .env_clear()
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAME", "concord-operator-0")
            .env("POD_NAMESPACE", "default")
            .env("CONCORD_OPERATOR_LOG", "info")
            .env("CONCORD_OPERATOR_LOG_FORMAT", "text")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting concord-operator")?;
        self.operator = Some(child);
        Ok(())
    }

    /// Kills the operator (kill -9).
    pub fn kill_operator(&mut self) {
        if let Some(mut c) = self.operator.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `kubectl apply --server-side` of every document in `yaml`.
    pub fn apply_yaml(&self, yaml: &str) -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
            let v: Value = serde::Deserialize::deserialize(doc)?;
            if v.is_null() {
                continue;
            }
            out.push(self.apply(v)?);
        }
        Ok(out)
    }

    pub fn apply(&self, v: Value) -> anyhow::Result<Value> {
        let api_version = v["apiVersion"].as_str().unwrap_or_default();
        let kind = v["kind"].as_str().unwrap_or_default();
        let res = crate::apiserver::resources::RESOURCES
            .iter()
            .find(|r| r.api_version() == api_version && r.kind == kind)
            .with_context(|| format!("{api_version} {kind} is not served"))?;
        let ns = v["metadata"]["namespace"].as_str().unwrap_or("default");
        let name = v["metadata"]["name"].as_str().unwrap_or_default();
        let key = crate::apiserver::resources::object_key(res, Some(ns), name);
        let t = ApiServer::target(&key)?;
        let o = WriteOptions {
            manager: "kubectl".into(),
            force: true,
        };
        Ok(self.api.patch(&t, "application/apply-patch+yaml", v, &o)?)
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.api.get_path(path)
    }

    /// A command run from the client namespace (an application in the cluster).
    pub fn client_command(&self, program: &Path) -> Command {
        Network::command_in(&self.client, program)
    }

    /// Polls `check` every 200 ms until it gives Some, or fails after `timeout` naming `what`.
    pub async fn until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&SimCluster) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check(self) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "timed out after {timeout:?} waiting until {what}; operator log tail:\n{}",
                    self.operator_log_tail(3000)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn operator_log_tail(&self, bytes: usize) -> String {
        let text = std::fs::read(self.root.join("operator.log")).unwrap_or_default();
        String::from_utf8_lossy(&text[text.len().saturating_sub(bytes)..]).to_string()
    }
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        self.kill_operator();
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.kubelet.shutdown();
        self.net.cleanup();
    }
}
