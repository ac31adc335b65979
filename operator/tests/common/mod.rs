//! A fake Kubernetes API server (an object store behind tower-test's mock service, with list
//! and watch) and an in-memory Raft cluster behind the operator's admin trait, shared by the
//! reconcile and controller tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use concord_operator::admin::{AdminCallError, NodeAdmin};
use concord_operator::crd::ConcordCluster;
use concord_operator::metrics::Metrics;
use concord_operator::reconcile::{reconcile, Context};
use concord_proto::{AdminResult, Member, MemberSpec, MembersResponse, NodeStatusResponse};
use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::events::Reporter;
use kube::Client;
use parking_lot::Mutex;
use serde_json::{json, Value};

pub const NS: &str = "default";
pub const CR: &str = "/apis/concordkv.io/v1alpha1/namespaces/default/concordclusters/kv";
pub const STS: &str = "/apis/apps/v1/namespaces/default/statefulsets/kv";
pub const PODS: &str = "/api/v1/namespaces/default/pods";

// ---------------------------------------------------------------- fake API server

#[derive(Default)]
pub struct Store {
    pub objects: BTreeMap<String, Value>,
    pub calls: Vec<String>,
    /// Resource version of the last write; every write is also a watch event.
    rv: u64,
    events: Vec<(u64, &'static str, String, Value)>,
}

impl Store {
    /// Stores an object as the API server would: a new resourceVersion and a watch event.
    pub fn put(&mut self, path: String, mut obj: Value) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = self.rv.to_string().into();
        let kind = if self.objects.contains_key(&path) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.events.push((self.rv, kind, path.clone(), obj.clone()));
        self.objects.insert(path, obj.clone());
        obj
    }

    pub fn delete(&mut self, path: &str) -> Option<Value> {
        let obj = self.objects.remove(path)?;
        self.rv += 1;
        self.events
            .push((self.rv, "DELETED", path.to_string(), obj.clone()));
        Some(obj)
    }
}

/// `/api/v1/namespaces/ns/pods` or `/apis/g/v/namespaces/ns/res` (not one object in it).
fn is_collection(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    matches!(
        (parts.first(), parts.len()),
        (Some(&"api"), 5) | (Some(&"apis"), 6)
    )
}

fn in_collection(collection: &str, path: &str) -> bool {
    path.strip_prefix(collection)
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// What the fake server answers: JSON, or a (finite) watch stream; `idle` asks the transport
/// to hold an empty watch a moment, as a real server would, instead of spinning.
pub struct Reply {
    pub code: u16,
    pub body: Vec<u8>,
    pub idle: bool,
}

fn json_reply(code: u16, v: Value) -> Reply {
    Reply {
        code,
        body: serde_json::to_vec(&v).unwrap_or_default(),
        idle: false,
    }
}

pub type Shared = Arc<Mutex<Store>>;

pub fn status_body(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": reason})
}

pub fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                if v.is_null() {
                    a.remove(k);
                } else {
                    merge(a.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (a, b) => *a = b.clone(),
    }
}

pub fn handle(
    store: &Shared,
    method: &str,
    path: &str,
    query: &str,
    content_type: &str,
    body: &[u8],
) -> Reply {
    let mut s = store.lock();
    let is_list = method == "GET" && is_collection(path);
    if is_list && matches!(query_param(query, "watch"), Some("true" | "1")) {
        let since: u64 = query_param(query, "resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut out = Vec::new();
        for (rv, kind, p, obj) in &s.events {
            if *rv > since && in_collection(path, p) {
                out.extend(
                    serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap_or_default(),
                );
                out.push(b'\n');
            }
        }
        let idle = out.is_empty();
        return Reply {
            code: 200,
            body: out,
            idle,
        };
    }
    s.calls.push(format!(
        "{method} {path}{}",
        if is_list { " (list)" } else { "" }
    ));
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match method {
        "GET" if is_list => {
            let items: Vec<Value> = s
                .objects
                .iter()
                .filter(|(k, _)| in_collection(path, k))
                .map(|(_, v)| v.clone())
                .collect();
            json_reply(
                200,
                json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
            )
        }
        "GET" => match s.objects.get(path) {
            Some(v) => json_reply(200, v.clone()),
            None => json_reply(404, status_body(404, "NotFound")),
        },
        "PATCH" => {
            let (target, subresource) = match path.strip_suffix("/status") {
                Some(p) => (p.to_string(), true),
                None => (path.to_string(), false),
            };
            let current = s.objects.get(&target).cloned();
            let updated = if content_type.contains("apply-patch") {
                let mut obj = current.unwrap_or_else(|| json!({}));
                if subresource {
                    obj["status"] = body["status"].clone();
                } else {
                    let status = obj.get("status").cloned();
                    let meta = obj.get("metadata").cloned();
                    obj = body.clone();
                    if let Some(st) = status {
                        obj["status"] = st;
                    }
                    if let Some(Value::Object(m)) = meta {
                        for (k, v) in m {
                            obj["metadata"]
                                .as_object_mut()
                                .map(|o| o.entry(k).or_insert(v));
                        }
                    }
                }
                obj
            } else if content_type.contains("json-patch") {
                let Some(mut obj) = current else {
                    return json_reply(404, status_body(404, "NotFound"));
                };
                // The API server's JSON patch tests an absent field as null; json-patch does not.
                if obj["metadata"].get("finalizers").is_none() {
                    obj["metadata"]["finalizers"] = Value::Null;
                }
                let p: json_patch::Patch = match serde_json::from_value(body) {
                    Ok(p) => p,
                    Err(_) => return json_reply(422, status_body(422, "Invalid")),
                };
                if json_patch::patch(&mut obj, &p).is_err() {
                    return json_reply(422, status_body(422, "Invalid"));
                }
                obj
            } else {
                let Some(mut obj) = current else {
                    return json_reply(404, status_body(404, "NotFound"));
                };
                merge(&mut obj, &body);
                obj
            };
            let updated = s.put(target, updated);
            json_reply(200, updated)
        }
        "DELETE" => {
            // DeleteOptions.preconditions: the API server refuses a delete whose UID (or
            // resourceVersion) no longer matches the object.
            let pre = &body["preconditions"];
            if let Some(obj) = s.objects.get(path) {
                let meta = &obj["metadata"];
                let mismatch = |k: &str| pre[k].is_string() && pre[k] != meta[k];
                if mismatch("uid") || mismatch("resourceVersion") {
                    return json_reply(409, status_body(409, "Conflict"));
                }
            }
            match s.delete(path) {
                Some(v) => json_reply(200, v),
                None => json_reply(404, status_body(404, "NotFound")),
            }
        }
        "POST" => {
            // Created objects are kept (events among them), named as the API server would.
            let name = body["metadata"]["name"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| {
                    format!(
                        "{}{}",
                        body["metadata"]["generateName"]
                            .as_str()
                            .unwrap_or("object-"),
                        s.rv + 1
                    )
                });
            let mut body = body;
            if body["metadata"]["uid"].is_null() {
                body["metadata"]["uid"] = format!("uid-{name}-{}", s.rv + 1).into();
            }
            let created = s.put(format!("{path}/{name}"), body);
            json_reply(201, created)
        }
        _ => json_reply(405, status_body(405, "MethodNotAllowed")),
    }
}

pub fn fake_client(store: Shared) -> Client {
    let (service, mut handle_rx) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((request, send)) = handle_rx.next_request().await {
            let store = store.clone();
            // One task per request: an idle watch waits without holding up the others.
            tokio::spawn(async move {
                let method = request.method().to_string();
                let path = request.uri().path().to_string();
                let query = request.uri().query().unwrap_or("").to_string();
                let ct = request
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let body = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .unwrap_or_default();
                let reply = handle(&store, &method, &path, &query, &ct, &body);
                if reply.idle {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                let response = Response::builder()
                    .status(
                        StatusCode::from_u16(reply.code)
                            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    )
                    .header("content-type", "application/json")
                    .body(Body::from(reply.body))
                    .expect("response");
                send.send_response(response);
            });
        }
    });
    Client::new(service, NS)
}

// ---------------------------------------------------------------- fake Raft cluster

#[derive(Default)]
pub struct Raft {
    /// addr -> (id, name, initialized)
    nodes: BTreeMap<String, (u64, String, bool)>,
    members: Vec<Member>,
    leader: u64,
    log: Vec<String>,
    /// What `snapshot` streams (a real backup file, in the tests that take one).
    pub backup: Vec<u8>,
    /// What the last `restore` received.
    pub restored: Vec<u8>,
}

impl Raft {
    /// The node at `addr` becomes the one voter and leader of a new cluster; its name.
    fn start_cluster(&mut self, addr: &str) -> String {
        let node = self.nodes.get_mut(addr).expect("known node");
        node.2 = true;
        let (id, name) = (node.0, node.1.clone());
        self.members = vec![member(id, &name, "voter")];
        self.leader = id;
        name
    }
}

#[derive(Default, Clone)]
pub struct FakeAdmin(pub Arc<Mutex<Raft>>);

pub fn ok(message: &str) -> Result<AdminResult, AdminCallError> {
    Ok(AdminResult {
        message: message.into(),
        log_index: 1,
    })
}

#[tonic::async_trait]
impl NodeAdmin for FakeAdmin {
    async fn node_status(&self, addr: &str) -> Result<NodeStatusResponse, AdminCallError> {
        let r = self.0.lock();
        let (id, name, init) = r
            .nodes
            .get(addr)
            .cloned()
            .ok_or(AdminCallError::Unreachable {
                addr: addr.into(),
                message: "down".into(),
            })?;
        Ok(NodeStatusResponse {
            id,
            name,
            cluster_id: if init {
                "ckv-fake".into()
            } else {
                String::new()
            },
            initialized: init,
            ready: init,
            address: format!("{addr}-dns"),
            ..Default::default()
        })
    }
    async fn members(&self, _addr: &str) -> Result<MembersResponse, AdminCallError> {
        let r = self.0.lock();
        Ok(MembersResponse {
            members: r
                .members
                .iter()
                .map(|m| Member {
                    leader: m.id == r.leader,
                    ..m.clone()
                })
                .collect(),
            leader_id: r.leader,
            last_log_index: 10,
        })
    }
    async fn init(&self, addr: &str) -> Result<AdminResult, AdminCallError> {
        let mut r = self.0.lock();
        let name = r.start_cluster(addr);
        r.log.push(format!("init {name}"));
        ok("initialized")
    }
    async fn add_learner(&self, _addr: &str, m: MemberSpec) -> Result<AdminResult, AdminCallError> {
        let mut r = self.0.lock();
        r.members.push(member(m.id, &m.name, "learner"));
        for n in r.nodes.values_mut() {
            if n.0 == m.id {
                n.2 = true;
            }
        }
        r.log.push(format!("add-learner {}", m.name));
        ok("added")
    }
    async fn promote(&self, _addr: &str, id: u64) -> Result<AdminResult, AdminCallError> {
        let mut r = self.0.lock();
        let name = {
            let m = r.members.iter_mut().find(|m| m.id == id).expect("learner");
            m.role = "voter".into();
            m.member_role = concord_proto::MemberRole::Voter.into();
            m.name.clone()
        };
        r.log.push(format!("promote {name}"));
        ok("promoted")
    }
    async fn remove(&self, _addr: &str, id: u64) -> Result<AdminResult, AdminCallError> {
        let mut r = self.0.lock();
        let name = r
            .members
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.name.clone())
            .unwrap_or_default();
        r.members.retain(|m| m.id != id);
        r.log.push(format!("remove {name}"));
        ok("removed")
    }
    async fn transfer_leader(&self, _addr: &str, to: u64) -> Result<AdminResult, AdminCallError> {
        let mut r = self.0.lock();
        r.leader = to;
        r.log.push(format!("transfer {to}"));
        ok("transferred")
    }
    async fn snapshot(
        &self,
        addr: &str,
    ) -> Result<concord_operator::admin::ByteStream, AdminCallError> {
        let mut raft = self.0.lock();
        if !raft.nodes.contains_key(addr) {
            return Err(AdminCallError::Unreachable {
                addr: addr.into(),
                message: "no such node".into(),
            });
        }
        raft.log.push(format!("snapshot {addr}"));
        let chunks: Vec<Result<Vec<u8>, AdminCallError>> = raft
            .backup
            .chunks(64 * 1024)
            .map(|c| Ok(c.to_vec()))
            .collect();
        Ok(Box::pin(futures::stream::iter(chunks)))
    }
    async fn restore(
        &self,
        addr: &str,
        mut chunks: concord_operator::admin::ByteStream,
    ) -> Result<AdminResult, AdminCallError> {
        let mut bytes = Vec::new();
        while let Some(chunk) = futures::StreamExt::next(&mut chunks).await {
            match chunk {
                Ok(c) => bytes.extend_from_slice(&c),
                // As a member does: a stream cut short is not a backup.
                Err(e) => {
                    return Err(AdminCallError::Refused {
                        addr: addr.into(),
                        reason: concord_proto::errors::ErrorReason::InvalidArgument,
                        message: format!("the backup stream broke off: {e}"),
                    })
                }
            }
        }
        let mut r = self.0.lock();
        let name = r.start_cluster(addr);
        r.log.push(format!("restore {name} {} bytes", bytes.len()));
        r.restored = bytes;
        ok("restored")
    }
    fn scoped(&self, _tls: Option<concord_operator::admin::AdminTls>) -> Arc<dyn NodeAdmin> {
        Arc::new(self.clone())
    }
}

pub fn member(id: u64, name: &str, role: &str) -> Member {
    Member {
        id,
        name: name.into(),
        address: format!("{name}:8080"),
        role: role.into(),
        leader: false,
        matched_index: 10,
        lag: 0,
        last_contact_ms: Some(10),
        reachable: true,
        // Unset, as from a node that predates the typed role: the text is read instead.
        member_role: 0,
    }
}

// ---------------------------------------------------------------- harness

pub struct Harness {
    pub store: Shared,
    pub admin: FakeAdmin,
    pub ctx: Arc<Context>,
}

impl Harness {
    pub fn new(spec: Value) -> Harness {
        let store: Shared = Arc::default();
        let cr = json!({
            "apiVersion": "concordkv.io/v1alpha1",
            "kind": "ConcordCluster",
            "metadata": {"name": "kv", "namespace": NS, "uid": "uid-kv", "generation": 1, "resourceVersion": "1"},
            "spec": spec,
        });
        store.lock().put(CR.into(), cr);
        let admin = FakeAdmin::default();
        let ctx = Arc::new(Context {
            client: fake_client(store.clone()),
            admin: Arc::new(admin.clone()),
            metrics: Arc::new(Metrics::new()),
            reporter: Reporter {
                controller: "concord-operator".into(),
                instance: None,
            },
            stall_after: Duration::from_secs(600),
            status_writes: Default::default(),
        });
        Harness { store, admin, ctx }
    }

    pub async fn reconcile(&self) -> Vec<String> {
        let cr: ConcordCluster =
            serde_json::from_value(self.store.lock().objects[CR].clone()).expect("cr");
        self.store.lock().calls.clear();
        reconcile(Arc::new(cr), self.ctx.clone())
            .await
            .expect("reconcile");
        std::mem::take(&mut self.store.lock().calls)
    }

    pub fn cr(&self) -> Value {
        self.store.lock().objects[CR].clone()
    }

    pub fn edit_spec(&self, f: impl FnOnce(&mut Value)) {
        let mut s = self.store.lock();
        let mut cr = s.objects.get(CR).cloned().expect("cr");
        f(&mut cr["spec"]);
        let g = cr["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
        cr["metadata"]["generation"] = g.into();
        s.put(CR.into(), cr);
    }

    /// Plays the StatefulSet controller and the kubelet: pods exist for every ordinal below
    /// the StatefulSet's size, each with an address its (fake) node answers on.
    pub fn run_statefulset_controller(&self) {
        let mut s = self.store.lock();
        let Some(sts) = s.objects.get(STS).cloned() else {
            return;
        };
        let replicas = sts["spec"]["replicas"].as_u64().unwrap_or(0) as u32;
        // The template's revision: its config hash, which is what the operator changes.
        let config_hash = sts["spec"]["template"]["metadata"]["annotations"]
            ["concordkv.io/config-hash"]
            .as_str()
            .unwrap_or("none")
            .to_string();
        let revision = format!("rev-{config_hash}");
        let status = json!({"observedGeneration": sts["metadata"]["generation"].clone(), "updateRevision": revision, "replicas": replicas});
        if sts["status"] != status {
            let mut sts = sts.clone();
            sts["status"] = status;
            s.put(STS.into(), sts);
        }
        let mut raft = self.admin.0.lock();
        for o in 0..9u32 {
            let path = format!("{PODS}/kv-{o}");
            let addr = format!("10.0.0.{o}:8080");
            if o < replicas {
                if let std::collections::btree_map::Entry::Vacant(e) = s.objects.entry(path) {
                    e.insert(json!({
                        "apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": format!("kv-{o}"), "namespace": NS,
                            "labels": {"app.kubernetes.io/name": "concordkv", "app.kubernetes.io/instance": "kv", "controller-revision-hash": revision},
                            "annotations": {"concordkv.io/config-hash": config_hash},
                            "creationTimestamp": "2026-01-01T00:00:00Z"},
                        "spec": {"containers": [{"name": "concord-node", "image": "ghcr.io/concordkv/concord-node:test"}]},
                        "status": {"podIP": format!("10.0.0.{o}"), "conditions": [{"type": "Ready", "status": "True"}]}
                    }));
                    raft.nodes.entry(addr).or_insert((
                        1000 + u64::from(o),
                        format!("kv-{o}"),
                        false,
                    ));
                }
            } else {
                s.objects.remove(&path);
                raft.nodes.remove(&addr);
            }
        }
    }

    pub fn admin_log(&self) -> Vec<String> {
        std::mem::take(&mut self.admin.0.lock().log)
    }

    /// Reconciles (with the StatefulSet controller running in between) until the cluster is
    /// Running and converged.
    pub async fn settle(&self) -> Vec<String> {
        let mut log = Vec::new();
        for _ in 0..30 {
            self.run_statefulset_controller();
            self.reconcile().await;
            log.extend(self.admin_log());
            let cr = self.cr();
            let converged = cr["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Progressing" && c["status"] == "False")
            });
            if converged && cr["status"]["phase"] == "Running" {
                return log;
            }
        }
        panic!("did not settle: {}", self.cr()["status"]);
    }
}

/// The concord-node binary of this build. Tests run from <target>/debug/deps, and
/// `cargo test --workspace` builds concord-node into <target>/debug before any test runs.
pub fn node_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("concord-node"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build -p concord-node) or run cargo test --workspace",
        bin.display()
    );
    bin
}

/// concordctl of this build (built with concord-node).
pub fn ctl_binary() -> std::path::PathBuf {
    node_binary().with_file_name("concordctl")
}
