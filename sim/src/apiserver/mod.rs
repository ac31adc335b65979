//! The simulated API server's state: objects by key, each write a new resourceVersion and a
//! watch event, server-side apply with field managers, the status and scale subresources,
//! finalizers and deletion timestamps, graceful pod deletion, and garbage collection by owner
//! references. `http` serves it; the controllers and kubelets of the simulation call it
//! directly, as the real ones call the API.

pub mod fields;
pub mod http;
pub mod resources;
pub mod selector;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{json, Value};

use fields::Managed;
use resources::{Resource, Target};
use selector::Selector;

/// Watch events kept for watches that resume; older resume points get 410 Gone.
const EVENTS_KEPT: usize = 50_000;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    #[error("{kind} {name:?} not found")]
    NotFound { kind: String, name: String },
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: String, name: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("too old resource version: {0}")]
    Gone(u64),
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
}

impl ApiError {
    pub fn code(&self) -> u16 {
        match self {
            ApiError::NotFound { .. } => 404,
            ApiError::AlreadyExists { .. } | ApiError::Conflict(_) => 409,
            ApiError::Invalid(_) => 422,
            ApiError::BadRequest(_) => 400,
            ApiError::Gone(_) => 410,
            ApiError::MethodNotAllowed => 405,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict(_) => "Conflict",
            ApiError::Invalid(_) => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Gone(_) => "Expired",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
        }
    }

    /// The `Status` object the API returns for it.
    pub fn status(&self) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.to_string(), "reason": self.reason(), "code": self.code()})
    }
}

/// A change, as watches deliver it; `previous` lets a filtered watch turn a change that makes
/// an object stop (or start) matching into DELETED (or ADDED).
#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub kind: &'static str,
    pub key: String,
    pub object: Value,
    pub previous: Option<Value>,
}

/// A watch event as delivered: its type and the object.
pub type Delivered = (&'static str, Value);

struct Stored {
    obj: Value,
    managed: Managed,
}

#[derive(Default)]
struct Store {
    objects: BTreeMap<String, Stored>,
    rv: u64,
    events: VecDeque<Event>,
    uids: u64,
}

/// How a write is made.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    pub manager: String,
    pub force: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            manager: "unknown".into(),
            force: false,
        }
    }
}

/// How a delete is made.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// Pods: seconds the kubelet gives the process (None: the pod's own setting; 0: now).
    pub grace_seconds: Option<i64>,
    /// `Orphan` leaves dependents in place (their owner reference removed).
    pub orphan: bool,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
}

#[derive(Clone, Default)]
pub struct ApiServer {
    store: Arc<Mutex<Store>>,
    changed: Arc<tokio::sync::Notify>,
}

/// Now, as the API writes times (RFC 3339, whole seconds).
pub fn now() -> String {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_string()
}

fn not_found(t: &Target) -> ApiError {
    ApiError::NotFound {
        kind: t.res.plural.to_string(),
        name: t.name.clone().unwrap_or_default(),
    }
}

/// Everything but metadata and status: what a change of bumps `metadata.generation`.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

fn strip_output_fields(obj: &mut Value) {
    if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("managedFields");
    }
}

impl Store {
    fn commit(
        &mut self,
        key: &str,
        res: &Resource,
        obj: Option<(Value, Managed)>,
    ) -> Option<Value> {
        self.rv += 1;
        let previous = self.objects.get(key).map(|s| s.obj.clone());
        let (kind, object) = match obj {
            Some((mut obj, managed)) => {
                obj["metadata"]["resourceVersion"] = self.rv.to_string().into();
                obj["metadata"]["managedFields"] = managed.render(res.api_version());
                let kind = if previous.is_some() {
                    "MODIFIED"
                } else {
                    "ADDED"
                };
                self.objects.insert(
                    key.to_string(),
                    Stored {
                        obj: obj.clone(),
                        managed,
                    },
                );
                (kind, obj)
            }
            None => {
                let mut gone = self.objects.remove(key)?.obj;
                gone["metadata"]["resourceVersion"] = self.rv.to_string().into();
                ("DELETED", gone)
            }
        };
        self.events.push_back(Event {
            rv: self.rv,
            kind,
            key: key.to_string(),
            object: object.clone(),
            previous,
        });
        while self.events.len() > EVENTS_KEPT {
            self.events.pop_front();
        }
        Some(object)
    }

    fn resource_of(key: &str) -> Option<&'static Resource> {
        let t = resources::parse(key)?;
        Some(t.res)
    }

    /// Removes the object at `key` for good, and then whatever it owned (unless `orphan`).
    fn remove(&mut self, key: &str, orphan: bool) -> Option<Value> {
        let res = Self::resource_of(key)?;
        let gone = self.commit(key, res, None)?;
        let uid = gone["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if uid.is_empty() {
            return Some(gone);
        }
        let dependents: Vec<String> = self
            .objects
            .iter()
            .filter(|(_, s)| {
                s.obj["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid.as_str()))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for dep in dependents {
            if orphan {
                if let Some(s) = self.objects.get(&dep) {
                    let mut obj = s.obj.clone();
                    let managed = s.managed.clone();
                    if let Some(refs) = obj["metadata"]["ownerReferences"].as_array_mut() {
                        refs.retain(|r| r["uid"] != uid.as_str());
                    }
                    if let Some(r) = Self::resource_of(&dep) {
                        self.commit(&dep, r, Some((obj, managed)));
                    }
                }
            } else {
                self.delete_key(&dep, &DeleteOptions::default());
            }
        }
        Some(gone)
    }

    /// Deletes `key`: marks it when finalizers (or, for a pod, a grace period) hold it,
    /// removes it otherwise.
    fn delete_key(&mut self, key: &str, o: &DeleteOptions) -> Option<Value> {
        let res = Self::resource_of(key)?;
        let stored = self.objects.get(key)?;
        let mut obj = stored.obj.clone();
        let managed = stored.managed.clone();
        let finalizers = obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        let grace = if res.kind == "Pod" {
            o.grace_seconds
                .or_else(|| obj["spec"]["terminationGracePeriodSeconds"].as_i64())
                .unwrap_or(30)
        } else {
            0
        };
        if finalizers || grace > 0 {
            if obj["metadata"]["deletionTimestamp"].is_null() {
                obj["metadata"]["deletionTimestamp"] = now().into();
                obj["metadata"]["deletionGracePeriodSeconds"] = grace.into();
                return self.commit(key, res, Some((obj, managed)));
            }
            if finalizers || grace > 0 {
                return Some(obj);
            }
        }
        self.remove(key, o.orphan)
    }
}

impl ApiServer {
    pub fn new() -> ApiServer {
        ApiServer::default()
    }

    /// Resolves at the next write (watches and controllers sleep on it); `enable` it before
    /// reading, so a write in between is not missed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    fn notify(&self) {
        self.changed.notify_waiters();
    }

    pub fn resource_version(&self) -> u64 {
        self.store.lock().rv
    }

    pub fn get(&self, t: &Target) -> Result<Value, ApiError> {
        let s = self.store.lock();
        let obj = s
            .objects
            .get(&t.key())
            .ok_or_else(|| not_found(t))?
            .obj
            .clone();
        match t.sub.as_deref() {
            None | Some("status") => Ok(obj),
            Some("scale") if t.res.scale => Ok(scale_of(&obj)),
            Some(_) => Err(ApiError::NotFound {
                kind: t.res.plural.into(),
                name: t.name.clone().unwrap_or_default(),
            }),
        }
    }

    /// The collection's objects that match, and the resourceVersion they are as of.
    pub fn list(&self, t: &Target, labels: &Selector, fields: &Selector) -> (Vec<Value>, u64) {
        let s = self.store.lock();
        let items = s
            .objects
            .iter()
            .filter(|(k, _)| t.contains(k))
            .map(|(_, v)| &v.obj)
            .filter(|o| labels.matches_labels(o) && fields.matches_fields(o))
            .cloned()
            .collect();
        (items, s.rv)
    }

    /// Events after `since` in the collection, as a filtered watch sees them; Gone when
    /// `since` is older than the events kept.
    pub fn events_since(
        &self,
        t: &Target,
        since: u64,
        labels: &Selector,
        fields: &Selector,
    ) -> Result<(Vec<Delivered>, u64), ApiError> {
        let s = self.store.lock();
        if let Some(first) = s.events.front() {
            if since + 1 < first.rv && since < s.rv {
                return Err(ApiError::Gone(since));
            }
        }
        let matches = |o: &Value| labels.matches_labels(o) && fields.matches_fields(o);
        let mut out = Vec::new();
        for e in s
            .events
            .iter()
            .filter(|e| e.rv > since && t.contains(&e.key))
        {
            let now = e.kind != "DELETED" && matches(&e.object);
            let before = e.previous.as_ref().is_some_and(matches);
            let kind = match (e.kind, before, now) {
                ("DELETED", true, _) => "DELETED",
                (_, false, true) => "ADDED",
                (_, true, true) => "MODIFIED",
                (_, true, false) => "DELETED",
                _ => continue,
            };
            out.push((kind, e.object.clone()));
        }
        Ok((out, s.rv))
    }

    pub fn create(&self, t: &Target, mut body: Value, manager: &str) -> Result<Value, ApiError> {
        if !body.is_object() {
            return Err(ApiError::BadRequest("the body is not an object".into()));
        }
        let name = match body["metadata"]["name"].as_str().filter(|n| !n.is_empty()) {
            Some(n) => n.to_string(),
            None => match body["metadata"]["generateName"].as_str() {
                Some(g) => {
                    let n = self.store.lock().uids + 1;
                    format!("{g}{:05x}", n * 7919 % 0xfffff)
                }
                None => return Err(ApiError::Invalid("metadata.name: Required value".into())),
            },
        };
        let target = Target {
            name: Some(name.clone()),
            sub: None,
            namespace: t
                .namespace
                .clone()
                .or_else(|| body["metadata"]["namespace"].as_str().map(String::from)),
            res: t.res,
        };
        let key = target.key();
        let mut s = self.store.lock();
        if s.objects.contains_key(&key) {
            return Err(ApiError::AlreadyExists {
                kind: t.res.plural.into(),
                name,
            });
        }
        s.uids += 1;
        let meta = &mut body["metadata"];
        meta["name"] = name.into();
        if t.res.namespaced {
            meta["namespace"] = target.namespace.clone().unwrap_or_default().into();
        }
        meta["uid"] = format!("{:08x}-sim-{}", s.uids, s.uids).into();
        meta["creationTimestamp"] = now().into();
        meta["generation"] = 1.into();
        body["apiVersion"] = t.res.api_version().into();
        body["kind"] = t.res.kind.into();
        fold_string_data(&mut body);
        if t.res.status && t.res.kind != "Pod" {
            // Status is written through its subresource, never at creation.
            if let Some(m) = body.as_object_mut() {
                m.remove("status");
            }
        }
        let mut managed = Managed::default();
        managed.update(&json!({}), &body, manager);
        let out = s.commit(&key, t.res, Some((body, managed)));
        drop(s);
        self.notify();
        out.ok_or_else(|| ApiError::Conflict("not stored".into()))
    }

    /// Writes `candidate` as the object's next version: through `/status`, only its status
    /// changes; otherwise everything but its status (for resources that have one).
    fn write(
        &self,
        t: &Target,
        candidate: Value,
        managed: Option<Managed>,
        manager: &str,
        check_rv: bool,
    ) -> Result<Value, ApiError> {
        let key = t.key();
        let mut s = self.store.lock();
        let stored = s.objects.get(&key).ok_or_else(|| not_found(t))?;
        let old = stored.obj.clone();
        if check_rv {
            if let Some(rv) = candidate["metadata"]["resourceVersion"].as_str() {
                if rv
                    != old["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or_default()
                {
                    return Err(ApiError::Conflict(format!(
                        "Operation cannot be fulfilled on {} {:?}: the object has been modified; please apply your changes to the latest version and try again",
                        t.res.plural,
                        t.name.clone().unwrap_or_default()
                    )));
                }
            }
        }
        let mut next = match t.sub.as_deref() {
            Some("status") => {
                let mut n = old.clone();
                n["status"] = candidate["status"].clone();
                n
            }
            _ => {
                let mut n = candidate;
                if t.res.status {
                    n["status"] = old["status"].clone();
                    if n["status"].is_null() {
                        if let Some(m) = n.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                // Identity and server-set metadata stay the server's.
                for k in [
                    "name",
                    "namespace",
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                ] {
                    n["metadata"][k] = old["metadata"][k].clone();
                    if n["metadata"][k].is_null() {
                        if let Some(m) = n["metadata"].as_object_mut() {
                            m.remove(k);
                        }
                    }
                }
                n["apiVersion"] = old["apiVersion"].clone();
                n["kind"] = old["kind"].clone();
                if spec_part(&n) != spec_part(&old) {
                    let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
                    n["metadata"]["generation"] = g.into();
                }
                n
            }
        };
        fold_string_data(&mut next);
        strip_output_fields(&mut next);
        let mut old_cmp = old.clone();
        strip_output_fields(&mut old_cmp);
        let managed = managed.unwrap_or_else(|| {
            let mut m = stored.managed.clone();
            m.update(&old_cmp, &next, manager);
            m
        });
        if next == old_cmp {
            return Ok(old);
        }
        // A last finalizer removed from an object being deleted: it goes now.
        let finalized = !next["metadata"]["deletionTimestamp"].is_null()
            && next["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty())
            && t.res.kind != "Pod";
        let out = if finalized {
            s.commit(&key, t.res, Some((next, managed)));
            s.remove(&key, false)
        } else {
            s.commit(&key, t.res, Some((next, managed)))
        };
        drop(s);
        self.notify();
        out.ok_or_else(|| not_found(t))
    }

    /// PUT: the whole object (or its status, or its scale).
    pub fn replace(&self, t: &Target, body: Value, manager: &str) -> Result<Value, ApiError> {
        if t.sub.as_deref() == Some("scale") {
            return self.scale(t, &body, manager);
        }
        self.write(t, body, None, manager, true)
    }

    fn scale(&self, t: &Target, body: &Value, manager: &str) -> Result<Value, ApiError> {
        let replicas = body["spec"]["replicas"]
            .as_i64()
            .ok_or_else(|| ApiError::Invalid("spec.replicas: Required value".into()))?;
        let main = Target {
            sub: None,
            ..t.clone()
        };
        let mut obj = self.get(&main)?;
        obj["spec"]["replicas"] = replicas.into();
        let out = self.write(&main, obj, None, manager, false)?;
        Ok(scale_of(&out))
    }

    /// PATCH, by content type: apply (server-side apply), merge, strategic merge (as a merge:
    /// the simulation's objects are patched with maps), or JSON patch.
    pub fn patch(
        &self,
        t: &Target,
        content_type: &str,
        body: Value,
        o: &WriteOptions,
    ) -> Result<Value, ApiError> {
        if t.sub.as_deref() == Some("scale") {
            let current = self.get(t)?;
            let mut patched = current;
            fields::set(
                &mut patched,
                "/spec/replicas",
                body["spec"]["replicas"].clone(),
            );
            return self.scale(t, &patched, &o.manager);
        }
        if content_type.contains("apply-patch") {
            return self.apply(t, body, o);
        }
        let current = {
            let s = self.store.lock();
            s.objects
                .get(&t.key())
                .ok_or_else(|| not_found(t))?
                .obj
                .clone()
        };
        let mut patched = current.clone();
        let check_rv = !body["metadata"]["resourceVersion"].is_null();
        if content_type.contains("json-patch") {
            // The API server's JSON patch takes an absent field as null in a `test` (kube-rs's
            // finalizer helper tests `/metadata/finalizers` for null on a fresh object).
            let body = match body {
                Value::Array(ops) => Value::Array(
                    ops.into_iter()
                        .filter(|op| {
                            !(op["op"] == "test"
                                && op["value"].is_null()
                                && op["path"]
                                    .as_str()
                                    .is_some_and(|p| current.pointer(p).is_none()))
                        })
                        .collect(),
                ),
                other => other,
            };
            let p: json_patch::Patch = serde_json::from_value(body)
                .map_err(|e| ApiError::BadRequest(format!("bad JSON patch: {e}")))?;
            json_patch::patch(&mut patched, &p)
                .map_err(|e| ApiError::Invalid(format!("the JSON patch does not apply: {e}")))?;
        } else {
            json_patch::merge(&mut patched, &body);
        }
        self.write(t, patched, None, &o.manager, check_rv)
    }

    fn apply(&self, t: &Target, body: Value, o: &WriteOptions) -> Result<Value, ApiError> {
        if o.manager.is_empty() || o.manager == "unknown" {
            return Err(ApiError::BadRequest(
                "fieldManager is required for apply requests".into(),
            ));
        }
        let existing = {
            let s = self.store.lock();
            s.objects
                .get(&t.key())
                .map(|st| (st.obj.clone(), st.managed.clone()))
        };
        let scope = if t.sub.as_deref() == Some("status") {
            "/status"
        } else {
            ""
        };
        match existing {
            None if scope.is_empty() => {
                let mut obj = json!({"metadata": body["metadata"].clone()});
                let mut managed = Managed::default();
                managed
                    .apply(&mut obj, &body, &o.manager, o.force, "")
                    .map_err(|c| ApiError::Conflict(c.to_string()))?;
                let created = self.create(t, obj, &o.manager)?;
                // Ownership is the applier's, as an Apply.
                let mut s = self.store.lock();
                if let Some(st) = s.objects.get_mut(&t.key()) {
                    st.managed = managed;
                }
                Ok(created)
            }
            None => Err(not_found(t)),
            Some((mut obj, mut managed)) => {
                strip_output_fields(&mut obj);
                managed
                    .apply(&mut obj, &body, &o.manager, o.force, scope)
                    .map_err(|c| ApiError::Conflict(c.to_string()))?;
                self.write(t, obj, Some(managed), &o.manager, false)
            }
        }
    }

    pub fn delete(&self, t: &Target, o: &DeleteOptions) -> Result<Value, ApiError> {
        let key = t.key();
        let mut s = self.store.lock();
        let stored = s.objects.get(&key).ok_or_else(|| not_found(t))?;
        let meta = &stored.obj["metadata"];
        let mismatch = |want: &Option<String>, field: &str| {
            want.as_deref()
                .is_some_and(|w| meta[field].as_str() != Some(w))
        };
        if mismatch(&o.precondition_uid, "uid") || mismatch(&o.precondition_rv, "resourceVersion") {
            return Err(ApiError::Conflict(format!(
                "Precondition failed for {} {:?}",
                t.res.plural,
                t.name.clone().unwrap_or_default()
            )));
        }
        let out = s.delete_key(&key, o);
        drop(s);
        self.notify();
        out.ok_or_else(|| not_found(t))
    }
}

/// A Secret's `stringData` is write-only: the API server folds it into `data` (base64).
fn fold_string_data(obj: &mut Value) {
    if obj["kind"] != "Secret" {
        return;
    }
    let Some(Value::Object(strings)) = obj.as_object_mut().and_then(|m| m.remove("stringData"))
    else {
        return;
    };
    use base64::Engine;
    for (k, v) in strings {
        let encoded = base64::engine::general_purpose::STANDARD
            .encode(v.as_str().unwrap_or_default().as_bytes());
        fields::set(
            obj,
            &format!("/data/{}", k.replace('~', "~0").replace('/', "~1")),
            encoded.into(),
        );
    }
}

/// `autoscaling/v1` Scale of an object with `spec.replicas`.
fn scale_of(obj: &Value) -> Value {
    let selector = obj["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {"name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"],
                     "resourceVersion": obj["metadata"]["resourceVersion"], "uid": obj["metadata"]["uid"]},
        "spec": {"replicas": obj["spec"]["replicas"]},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

/// In-process access by path, for the simulation's own controllers and tests.
impl ApiServer {
    pub fn target(path: &str) -> Result<Target, ApiError> {
        resources::parse(path).ok_or_else(|| ApiError::NotFound {
            kind: "path".into(),
            name: path.into(),
        })
    }

    pub fn get_path(&self, path: &str) -> Option<Value> {
        self.get(&Self::target(path).ok()?).ok()
    }

    pub fn list_path(&self, path: &str, labels: &str) -> Vec<Value> {
        let (Ok(t), Ok(sel)) = (Self::target(path), Selector::parse(labels)) else {
            return Vec::new();
        };
        self.list(&t, &sel, &Selector::default()).0
    }
}

/// Keys of a map of labels as a selector string.
pub fn selector_string(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
