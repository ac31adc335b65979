//! Field ownership for server-side apply. A field is a JSON pointer to a leaf: maps are
//! walked into, while lists and scalars are owned whole (atomic lists — a simplification of
//! Kubernetes' keyed lists, documented in docs/testing.md). Each manager owns the fields it
//! last applied or changed; applying again removes the fields it no longer applies (unless
//! another manager owns them too), and applying a field another manager set to a different
//! value is a conflict unless forced.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

pub type Fields = BTreeSet<String>;

/// Who owns which fields of one object, and how (`Apply` or `Update`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Managed(pub BTreeMap<String, (String, Fields)>);

fn escape(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

/// The leaves of `v` under `prefix`. Identity and server-set metadata are nobody's.
pub fn leaves(v: &Value, prefix: &str, out: &mut Fields) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                let p = format!("{prefix}/{}", escape(k));
                if SERVER_OWNED.contains(&p.as_str()) {
                    continue;
                }
                leaves(child, &p, out);
            }
        }
        _ if prefix.is_empty() => {}
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

const SERVER_OWNED: &[&str] = &[
    "/apiVersion",
    "/kind",
    "/metadata/name",
    "/metadata/namespace",
    "/metadata/uid",
    "/metadata/resourceVersion",
    "/metadata/generation",
    "/metadata/creationTimestamp",
    "/metadata/deletionTimestamp",
    "/metadata/deletionGracePeriodSeconds",
    "/metadata/managedFields",
];

pub fn fields_of(v: &Value) -> Fields {
    let mut out = Fields::new();
    leaves(v, "", &mut out);
    out
}

/// The leaves that differ between `old` and `new` (set, changed or removed).
pub fn changed(old: &Value, new: &Value) -> Fields {
    let (a, b) = (fields_of(old), fields_of(new));
    a.union(&b)
        .filter(|p| old.pointer(p) != new.pointer(p))
        .cloned()
        .collect()
}

/// Sets `value` at pointer `p`, creating maps on the way.
pub fn set(obj: &mut Value, p: &str, value: Value) {
    let mut cur = obj;
    let keys: Vec<String> = p[1..]
        .split('/')
        .map(|k| k.replace("~1", "/").replace("~0", "~"))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let map = cur.as_object_mut().expect("an object");
        if i + 1 == keys.len() {
            map.insert(k.clone(), value);
            return;
        }
        cur = map
            .entry(k.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// Removes the leaf at `p`, and maps left empty by it.
pub fn remove(obj: &mut Value, p: &str) {
    let Some((parent, key)) = p.rsplit_once('/') else {
        return;
    };
    let key = key.replace("~1", "/").replace("~0", "~");
    let target = if parent.is_empty() {
        Some(&mut *obj)
    } else {
        obj.pointer_mut(parent)
    };
    if let Some(Value::Object(m)) = target {
        m.remove(&key);
        if m.is_empty() && !parent.is_empty() {
            remove(obj, parent);
        }
    }
}

/// Why an apply was refused: fields another manager set to other values.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflicts(pub Vec<(String, String)>);

impl std::fmt::Display for Conflicts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self
            .0
            .iter()
            .map(|(field, manager)| format!("conflict with \"{manager}\": {field}"))
            .collect();
        write!(
            f,
            "Apply failed with {} conflicts: {}",
            list.len(),
            list.join("; ")
        )
    }
}

impl Managed {
    /// Applies `applied` (the manager's whole intent for `scope`, a pointer prefix: "" for the
    /// object, "/status" for the status) to `obj` as `manager`.
    pub fn apply(
        &mut self,
        obj: &mut Value,
        applied: &Value,
        manager: &str,
        force: bool,
        scope: &str,
    ) -> Result<(), Conflicts> {
        let in_scope = |p: &String| match scope {
            "" => !p.starts_with("/status/") && p != "/status",
            s => p.starts_with(s),
        };
        let wanted: Fields = fields_of(applied).into_iter().filter(in_scope).collect();
        let mut conflicts = Vec::new();
        for (other, (_, owned)) in self.0.iter().filter(|(m, _)| m.as_str() != manager) {
            for p in wanted.intersection(owned) {
                if obj.pointer(p) != applied.pointer(p) {
                    conflicts.push((p.clone(), other.clone()));
                }
            }
        }
        if !conflicts.is_empty() && !force {
            return Err(Conflicts(conflicts));
        }
        let before = self
            .0
            .get(manager)
            .map(|(_, f)| f.clone())
            .unwrap_or_default();
        for p in before.difference(&wanted).filter(|p| in_scope(p)) {
            let shared = self
                .0
                .iter()
                .any(|(m, (_, f))| m != manager && f.contains(p));
            if !shared {
                remove(obj, p);
            }
        }
        for p in &wanted {
            if let Some(v) = applied.pointer(p) {
                set(obj, p, v.clone());
            }
        }
        for (p, other) in &conflicts {
            if let Some((_, f)) = self.0.get_mut(other) {
                f.remove(p);
            }
        }
        let mut owned: Fields = before.into_iter().filter(|p| !in_scope(p)).collect();
        owned.extend(wanted);
        self.0.insert(manager.to_string(), ("Apply".into(), owned));
        self.0.retain(|_, (_, f)| !f.is_empty());
        Ok(())
    }

    /// Records a plain write (create, update, patch) by `manager`: the fields it changed are
    /// now its own, and no longer anyone else's.
    pub fn update(&mut self, old: &Value, new: &Value, manager: &str) {
        let changed = changed(old, new);
        if changed.is_empty() {
            return;
        }
        for (m, (_, f)) in self.0.iter_mut() {
            if m != manager {
                f.retain(|p| !changed.contains(p));
            }
        }
        let entry = self
            .0
            .entry(manager.to_string())
            .or_insert_with(|| ("Update".into(), Fields::new()));
        for p in changed {
            if new.pointer(&p).is_some() {
                entry.1.insert(p);
            } else {
                entry.1.remove(&p);
            }
        }
        self.0.retain(|_, (_, f)| !f.is_empty());
    }

    /// `metadata.managedFields` as the API shows it (fieldsV1 in Kubernetes' `f:` notation).
    pub fn render(&self, api_version: &str) -> Value {
        let entries: Vec<Value> = self
            .0
            .iter()
            .map(|(manager, (operation, fields))| {
                let mut tree = Value::Object(Map::new());
                for p in fields {
                    let path: String = p.split('/').skip(1).map(|k| format!("/f:{k}")).collect();
                    set(&mut tree, &path, Value::Object(Map::new()));
                }
                serde_json::json!({
                    "manager": manager, "operation": operation, "apiVersion": api_version,
                    "fieldsType": "FieldsV1", "fieldsV1": tree,
                })
            })
            .collect();
        Value::Array(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn apply_merges_removes_what_it_no_longer_applies_and_detects_conflicts() {
        let mut obj = json!({"metadata": {"name": "kv"}});
        let mut m = Managed::default();
        let first = json!({"metadata": {"name": "kv", "labels": {"a": "1", "b": "2"}},
                           "spec": {"replicas": 3, "image": "x"}});
        m.apply(&mut obj, &first, "op", false, "")
            .expect("first apply");
        assert_eq!(obj["spec"]["replicas"], 3);
        // Someone else scales by an update: now theirs.
        let mut scaled = obj.clone();
        scaled["spec"]["replicas"] = 5.into();
        m.update(&obj, &scaled, "kubectl");
        obj = scaled;
        // The operator applies again without label b and with replicas 3: a conflict...
        let second = json!({"metadata": {"name": "kv", "labels": {"a": "1"}},
                            "spec": {"replicas": 3, "image": "y"}});
        let e = m
            .apply(&mut obj.clone(), &second, "op", false, "")
            .expect_err("conflict");
        assert_eq!(
            e.0,
            vec![("/spec/replicas".to_string(), "kubectl".to_string())]
        );
        // ...unless forced: replicas taken back, label b removed, image changed.
        m.apply(&mut obj, &second, "op", true, "").expect("forced");
        assert_eq!(obj["spec"], json!({"replicas": 3, "image": "y"}));
        assert_eq!(obj["metadata"]["labels"], json!({"a": "1"}));
        assert!(!m.0.contains_key("kubectl"));
        // A field only the applier owned and no longer applies goes; the status is apart.
        let third = json!({"metadata": {"name": "kv"}, "spec": {"replicas": 3}});
        m.apply(&mut obj, &third, "op", true, "").expect("third");
        assert_eq!(
            obj,
            json!({"metadata": {"name": "kv"}, "spec": {"replicas": 3}})
        );
        m.apply(
            &mut obj,
            &json!({"status": {"phase": "Running"}}),
            "op",
            true,
            "/status",
        )
        .expect("status");
        assert_eq!(
            obj["spec"]["replicas"], 3,
            "a status apply keeps the spec's fields"
        );
        assert_eq!(obj["status"]["phase"], "Running");
        let rendered = m.render("v1");
        assert_eq!(rendered[0]["fieldsV1"]["f:spec"]["f:replicas"], json!({}));
    }
}
