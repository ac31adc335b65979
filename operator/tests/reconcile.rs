//! The reconciler against a mocked Kubernetes API (tower-test) and an in-memory Raft cluster
//! behind the admin trait: the API calls it makes for create, scale up, scale down, status and
//! deletion. The fake API server is a small object store; a helper plays the StatefulSet
//! controller (pods appear for the StatefulSet's size).

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

const NS: &str = "default";
const CR: &str = "/apis/concordkv.io/v1alpha1/namespaces/default/concordclusters/kv";
const STS: &str = "/apis/apps/v1/namespaces/default/statefulsets/kv";
const PODS: &str = "/api/v1/namespaces/default/pods";

// ---------------------------------------------------------------- fake API server

#[derive(Default)]
struct Store {
    objects: BTreeMap<String, Value>,
    calls: Vec<String>,
}

type Shared = Arc<Mutex<Store>>;

fn status_body(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": reason})
}

fn merge(into: &mut Value, patch: &Value) {
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

fn handle(
    store: &Shared,
    method: &str,
    path: &str,
    query: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, Value) {
    let mut s = store.lock();
    let is_list =
        method == "GET" && !s.objects.contains_key(path) && query.contains("labelSelector");
    s.calls.push(format!(
        "{method} {path}{}",
        if is_list { " (list)" } else { "" }
    ));
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match method {
        "GET" if is_list => {
            let prefix = format!("{path}/");
            let items: Vec<Value> = s
                .objects
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
                .map(|(_, v)| v.clone())
                .collect();
            (
                200,
                json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}),
            )
        }
        "GET" => match s.objects.get(path) {
            Some(v) => (200, v.clone()),
            None => (404, status_body(404, "NotFound")),
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
                    return (404, status_body(404, "NotFound"));
                };
                // The API server's JSON patch tests an absent field as null; json-patch does not.
                if obj["metadata"].get("finalizers").is_none() {
                    obj["metadata"]["finalizers"] = Value::Null;
                }
                let p: json_patch::Patch = match serde_json::from_value(body) {
                    Ok(p) => p,
                    Err(_) => return (422, status_body(422, "Invalid")),
                };
                if json_patch::patch(&mut obj, &p).is_err() {
                    return (422, status_body(422, "Invalid"));
                }
                obj
            } else {
                let Some(mut obj) = current else {
                    return (404, status_body(404, "NotFound"));
                };
                merge(&mut obj, &body);
                obj
            };
            s.objects.insert(target, updated.clone());
            (200, updated)
        }
        "DELETE" => match s.objects.remove(path) {
            Some(v) => (200, v),
            None => (404, status_body(404, "NotFound")),
        },
        "POST" => (201, body),
        _ => (405, status_body(405, "MethodNotAllowed")),
    }
}

fn fake_client(store: Shared) -> Client {
    let (service, mut handle_rx) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((request, send)) = handle_rx.next_request().await {
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
            let (code, value) = handle(&store, &method, &path, &query, &ct, &body);
            let response = Response::builder()
                .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&value).unwrap_or_default()))
                .expect("response");
            send.send_response(response);
        }
    });
    Client::new(service, NS)
}

// ---------------------------------------------------------------- fake Raft cluster

#[derive(Default)]
struct Raft {
    /// addr -> (id, name, initialized)
    nodes: BTreeMap<String, (u64, String, bool)>,
    members: Vec<Member>,
    leader: u64,
    log: Vec<String>,
}

#[derive(Default, Clone)]
struct FakeAdmin(Arc<Mutex<Raft>>);

fn ok(message: &str) -> Result<AdminResult, AdminCallError> {
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
        let node = r.nodes.get_mut(addr).expect("known node");
        node.2 = true;
        let (id, name) = (node.0, node.1.clone());
        r.members = vec![member(id, &name, "voter")];
        r.leader = id;
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
}

fn member(id: u64, name: &str, role: &str) -> Member {
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
    }
}

// ---------------------------------------------------------------- harness

struct Harness {
    store: Shared,
    admin: FakeAdmin,
    ctx: Arc<Context>,
}

impl Harness {
    fn new(spec: Value) -> Harness {
        let store: Shared = Arc::default();
        let cr = json!({
            "apiVersion": "concordkv.io/v1alpha1",
            "kind": "ConcordCluster",
            "metadata": {"name": "kv", "namespace": NS, "uid": "uid-kv", "generation": 1, "resourceVersion": "1"},
            "spec": spec,
        });
        store.lock().objects.insert(CR.into(), cr);
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

    async fn reconcile(&self) -> Vec<String> {
        let cr: ConcordCluster =
            serde_json::from_value(self.store.lock().objects[CR].clone()).expect("cr");
        self.store.lock().calls.clear();
        reconcile(Arc::new(cr), self.ctx.clone())
            .await
            .expect("reconcile");
        std::mem::take(&mut self.store.lock().calls)
    }

    fn cr(&self) -> Value {
        self.store.lock().objects[CR].clone()
    }

    fn edit_spec(&self, f: impl FnOnce(&mut Value)) {
        let mut s = self.store.lock();
        let cr = s.objects.get_mut(CR).expect("cr");
        f(&mut cr["spec"]);
        let g = cr["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
        cr["metadata"]["generation"] = g.into();
    }

    /// Plays the StatefulSet controller and the kubelet: pods exist for every ordinal below
    /// the StatefulSet's size, each with an address its (fake) node answers on.
    fn run_statefulset_controller(&self) {
        let mut s = self.store.lock();
        let Some(sts) = s.objects.get(STS).cloned() else {
            return;
        };
        let replicas = sts["spec"]["replicas"].as_u64().unwrap_or(0) as u32;
        if let Some(st) = s.objects.get_mut(STS) {
            st["status"] = json!({"observedGeneration": st["metadata"]["generation"].clone(), "updateRevision": "rev1", "replicas": replicas});
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
                            "labels": {"app.kubernetes.io/name": "concordkv", "app.kubernetes.io/instance": "kv", "controller-revision-hash": "rev1"},
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

    fn admin_log(&self) -> Vec<String> {
        std::mem::take(&mut self.admin.0.lock().log)
    }

    /// Reconciles (with the StatefulSet controller running in between) until the cluster is
    /// Running and converged.
    async fn settle(&self) -> Vec<String> {
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

fn apply_calls() -> Vec<String> {
    [
        "PATCH /api/v1/namespaces/default/configmaps/kv-config",
        "PATCH /api/v1/namespaces/default/services/kv-peers",
        "PATCH /api/v1/namespaces/default/services/kv",
        "PATCH /apis/apps/v1/namespaces/default/statefulsets/kv",
        "PATCH /apis/policy/v1/namespaces/default/poddisruptionbudgets/kv",
    ]
    .map(String::from)
    .to_vec()
}

#[tokio::test]
async fn create_applies_objects_then_initialises_and_grows_membership() {
    let h = Harness::new(json!({"replicas": 3, "version": "test"}));

    // First pass: only the finalizer is added.
    assert_eq!(h.reconcile().await, [format!("PATCH {CR}")]);
    assert_eq!(
        h.cr()["metadata"]["finalizers"],
        json!(["concordkv.io/cleanup"])
    );

    // Second pass: read the StatefulSet, apply every object, observe, write status.
    let calls = h.reconcile().await;
    let mut expected = vec![format!("GET {STS}")];
    expected.extend(apply_calls());
    expected.extend([
        format!("GET {STS}"),
        format!("GET {PODS} (list)"),
        format!("GET {PODS} (list)"),
        format!("PATCH {CR}/status"),
    ]);
    assert_eq!(calls, expected);
    let status = &h.cr()["status"];
    assert_eq!(status["phase"], "Creating");
    assert_eq!(
        status["selector"],
        "app.kubernetes.io/instance=kv,app.kubernetes.io/name=concordkv"
    );

    // Pods appear: pod 0 initialises, the others join one at a time; each step is an event.
    h.run_statefulset_controller();
    let calls = h.reconcile().await;
    assert!(
        calls.contains(&"POST /apis/events.k8s.io/v1/namespaces/default/events".to_string()),
        "{calls:?}"
    );
    assert_eq!(h.admin_log(), ["init kv-0"]);
    let log = h.settle().await;
    assert_eq!(
        log,
        [
            "add-learner kv-1",
            "promote kv-1",
            "add-learner kv-2",
            "promote kv-2"
        ]
    );

    // Status: members, leader, conditions, observed generation.
    let status = h.cr()["status"].clone();
    assert_eq!(status["phase"], "Running");
    assert_eq!(status["leader"], "kv-0");
    assert_eq!(status["readyReplicas"], 3);
    assert_eq!(status["clusterId"], "ckv-fake");
    assert_eq!(
        status["currentImage"],
        "ghcr.io/concordkv/concord-node:test"
    );
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));
    let available = status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Available")
        .cloned()
        .expect("Available");
    assert_eq!(available["status"], "True");
    assert_eq!(available["reason"], "QuorumHealthy");

    // Converged and unchanged: no status write.
    let calls = h.reconcile().await;
    assert!(!calls.contains(&format!("PATCH {CR}/status")), "{calls:?}");
}

#[tokio::test]
async fn scale_up_then_down_goes_through_membership_one_step_at_a_time() {
    let h = Harness::new(json!({"replicas": 3}));
    h.reconcile().await;
    h.settle().await;

    // 3 -> 5: the StatefulSet grows (a merge patch of spec.replicas), then members join.
    h.edit_spec(|s| s["replicas"] = 5.into());
    let calls = h.reconcile().await;
    assert_eq!(
        calls
            .iter()
            .filter(|c| *c == &format!("PATCH {STS}"))
            .count(),
        2,
        "apply + scale: {calls:?}"
    );
    assert_eq!(h.store.lock().objects[STS]["spec"]["replicas"], 5);
    let log = h.settle().await;
    assert_eq!(
        log,
        [
            "add-learner kv-3",
            "promote kv-3",
            "add-learner kv-4",
            "promote kv-4"
        ]
    );

    // 5 -> 3: members leave Raft first; only then does the StatefulSet shrink.
    h.edit_spec(|s| s["replicas"] = 3.into());
    h.reconcile().await;
    assert_eq!(h.admin_log(), ["remove kv-4"]);
    assert_eq!(
        h.store.lock().objects[STS]["spec"]["replicas"],
        5,
        "not shrunk while kv-3 is a member"
    );
    h.reconcile().await;
    assert_eq!(h.admin_log(), ["remove kv-3"]);
    assert_eq!(h.store.lock().objects[STS]["spec"]["replicas"], 5);
    h.reconcile().await;
    assert_eq!(h.store.lock().objects[STS]["spec"]["replicas"], 3);
    h.settle().await;
    assert_eq!(
        h.cr()["status"]["members"].as_array().map(Vec::len),
        Some(3)
    );
}

#[tokio::test]
async fn deletion_removes_volumes_per_policy_and_the_finalizer() {
    let h = Harness::new(json!({"replicas": 1, "storage": {"onDelete": "Delete"}}));
    h.reconcile().await;
    h.settle().await;
    h.store.lock().objects.insert(
        "/api/v1/namespaces/default/persistentvolumeclaims/data-kv-0".into(),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data-kv-0", "namespace": NS}}),
    );
    {
        let mut s = h.store.lock();
        let cr = s.objects.get_mut(CR).expect("cr");
        cr["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
    }
    let calls = h.reconcile().await;
    assert_eq!(
        calls,
        [
            "GET /api/v1/namespaces/default/persistentvolumeclaims (list)".to_string(),
            "DELETE /api/v1/namespaces/default/persistentvolumeclaims/data-kv-0".to_string(),
            "POST /apis/events.k8s.io/v1/namespaces/default/events".to_string(),
            format!("PATCH {CR}"),
        ]
    );
    assert_eq!(h.cr()["metadata"]["finalizers"], json!([]));
}

#[tokio::test]
async fn an_invalid_spec_changes_nothing_and_says_why() {
    let h = Harness::new(json!({"replicas": 3, "storage": {"size": "lots"}}));
    h.reconcile().await;
    let calls = h.reconcile().await;
    assert_eq!(
        calls,
        [
            "POST /apis/events.k8s.io/v1/namespaces/default/events".to_string(),
            format!("PATCH {CR}/status"),
        ]
    );
    let status = h.cr()["status"].clone();
    assert_eq!(status["phase"], "Failed");
    let degraded = status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Degraded")
        .cloned()
        .expect("Degraded");
    assert_eq!(degraded["reason"], "InvalidSpec");
    assert!(degraded["message"]
        .as_str()
        .unwrap_or("")
        .contains("spec.storage.size"));
}

#[tokio::test]
async fn a_paused_cluster_is_observed_but_not_changed() {
    let h = Harness::new(json!({"replicas": 3}));
    h.reconcile().await;
    h.settle().await;
    h.edit_spec(|s| {
        s["paused"] = true.into();
        s["replicas"] = 5.into();
    });
    let calls = h.reconcile().await;
    assert!(
        calls
            .iter()
            .all(|c| c.starts_with("GET ") || c == &format!("PATCH {CR}/status")),
        "a paused cluster only reads (and reports): {calls:?}"
    );
    assert_eq!(h.store.lock().objects[STS]["spec"]["replicas"], 3);
    assert!(h.admin_log().is_empty());
    let status = h.cr()["status"].clone();
    assert_eq!(status["phase"], "Paused");
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));
}
