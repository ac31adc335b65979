//! The resources the simulated API server serves, and how a request path names one.

/// One kind of object.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    /// `api/v1` or `apis/<group>/<version>`.
    pub prefix: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Has a `/status` subresource: writes to the object leave `status` alone, and writes to
    /// `/status` change nothing else.
    pub status: bool,
    /// Has a `/scale` subresource (`spec.replicas`).
    pub scale: bool,
}

impl Resource {
    pub fn api_version(&self) -> &'static str {
        self.prefix
            .strip_prefix("apis/")
            .or_else(|| self.prefix.strip_prefix("api/"))
            .unwrap_or(self.prefix)
    }
}

const fn res(
    prefix: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    status: bool,
    scale: bool,
) -> Resource {
    Resource {
        prefix,
        plural,
        kind,
        namespaced,
        status,
        scale,
    }
}

pub static RESOURCES: &[Resource] = &[
    res("api/v1", "namespaces", "Namespace", false, true, false),
    res("api/v1", "pods", "Pod", true, true, false),
    res("api/v1", "services", "Service", true, true, false),
    res("api/v1", "endpoints", "Endpoints", true, false, false),
    res("api/v1", "configmaps", "ConfigMap", true, false, false),
    res("api/v1", "secrets", "Secret", true, false, false),
    res(
        "api/v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        true,
        true,
        false,
    ),
    res("api/v1", "events", "Event", true, false, false),
    res(
        "api/v1",
        "serviceaccounts",
        "ServiceAccount",
        true,
        false,
        false,
    ),
    res(
        "apis/apps/v1",
        "statefulsets",
        "StatefulSet",
        true,
        true,
        true,
    ),
    res(
        "apis/apps/v1",
        "controllerrevisions",
        "ControllerRevision",
        true,
        false,
        false,
    ),
    res(
        "apis/policy/v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        true,
        true,
        false,
    ),
    res("apis/batch/v1", "jobs", "Job", true, true, false),
    res(
        "apis/coordination.k8s.io/v1",
        "leases",
        "Lease",
        true,
        false,
        false,
    ),
    res(
        "apis/events.k8s.io/v1",
        "events",
        "Event",
        true,
        false,
        false,
    ),
    res(
        "apis/cert-manager.io/v1",
        "certificates",
        "Certificate",
        true,
        true,
        false,
    ),
    res(
        "apis/concordkv.io/v1alpha1",
        "concordclusters",
        "ConcordCluster",
        true,
        true,
        false,
    ),
    res(
        "apis/concordkv.io/v1alpha1",
        "concordbackups",
        "ConcordBackup",
        true,
        true,
        false,
    ),
    res(
        "apis/concordkv.io/v1alpha1",
        "concordbackupschedules",
        "ConcordBackupSchedule",
        true,
        true,
        false,
    ),
];

/// What a request path names: a collection (no `name`), possibly across namespaces (no
/// `namespace` for a namespaced resource), or one object and perhaps its subresource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub res: &'static Resource,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

impl Target {
    /// The key an object is stored under (and its collection's keys start with).
    pub fn key(&self) -> String {
        object_key(
            self.res,
            self.namespace.as_deref(),
            self.name.as_deref().unwrap_or(""),
        )
    }

    /// Whether `key` (an object's) is in this collection.
    pub fn contains(&self, key: &str) -> bool {
        let (prefix, rest) = match &self.namespace {
            Some(ns) => (
                format!("/{}/namespaces/{ns}/{}/", self.res.prefix, self.res.plural),
                None,
            ),
            None if self.res.namespaced => (
                format!("/{}/namespaces/", self.res.prefix),
                Some(format!("/{}/", self.res.plural)),
            ),
            None => (format!("/{}/{}/", self.res.prefix, self.res.plural), None),
        };
        let Some(tail) = key.strip_prefix(&prefix) else {
            return false;
        };
        match rest {
            // <ns>/<plural>/<name>
            Some(mid) => tail.split_once('/').is_some_and(|(_, after)| {
                after
                    .strip_prefix(&mid[1..])
                    .is_some_and(|n| !n.contains('/'))
            }),
            None => !tail.is_empty() && !tail.contains('/'),
        }
    }
}

pub fn object_key(res: &Resource, namespace: Option<&str>, name: &str) -> String {
    match namespace.filter(|_| res.namespaced) {
        Some(ns) => format!("/{}/namespaces/{ns}/{}/{name}", res.prefix, res.plural),
        None => format!("/{}/{}/{name}", res.prefix, res.plural),
    }
}

fn find(prefix: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.prefix == prefix && r.plural == plural)
}

/// Parses `/api/v1/...` or `/apis/<g>/<v>/...`.
pub fn parse(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match *parts.first()? {
        "api" if parts.len() >= 2 => (format!("api/{}", parts[1]), &parts[2..]),
        "apis" if parts.len() >= 3 => (format!("apis/{}/{}", parts[1], parts[2]), &parts[3..]),
        _ => return None,
    };
    let owned = |s: &&str| Some(s.to_string());
    match rest {
        // namespaces/<ns>/<plural>[/<name>[/<sub>]]
        ["namespaces", ns, plural, tail @ ..] if tail.len() <= 2 => {
            let res = find(&prefix, plural).filter(|r| r.namespaced)?;
            Some(Target {
                res,
                namespace: Some(ns.to_string()),
                name: tail.first().and_then(owned),
                sub: tail.get(1).and_then(owned),
            })
        }
        [plural, tail @ ..] if tail.len() <= 2 => {
            let res = find(&prefix, plural)?;
            if res.namespaced && !tail.is_empty() {
                return None;
            }
            Some(Target {
                res,
                namespace: None,
                name: tail.first().and_then(owned),
                sub: tail.get(1).and_then(owned),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_collections_objects_and_subresources() {
        let t = parse("/apis/apps/v1/namespaces/db/statefulsets/kv/scale").expect("parsed");
        assert_eq!(t.res.kind, "StatefulSet");
        assert_eq!(
            (t.namespace.as_deref(), t.name.as_deref(), t.sub.as_deref()),
            (Some("db"), Some("kv"), Some("scale"))
        );
        assert_eq!(t.key(), "/apis/apps/v1/namespaces/db/statefulsets/kv");
        let all = parse("/api/v1/pods").expect("all pods");
        assert!(all.contains("/api/v1/namespaces/db/pods/kv-0"));
        assert!(!all.contains("/api/v1/namespaces/db/services/kv"));
        let ns = parse("/api/v1/namespaces/db/pods").expect("pods in db");
        assert!(ns.contains("/api/v1/namespaces/db/pods/kv-0"));
        assert!(!ns.contains("/api/v1/namespaces/other/pods/kv-0"));
        let namespace = parse("/api/v1/namespaces/db").expect("a namespace");
        assert_eq!(namespace.res.kind, "Namespace");
        assert_eq!(namespace.name.as_deref(), Some("db"));
        assert!(parse("/api/v1/namespaces/db/widgets").is_none());
        assert!(
            parse("/apis/apps/v1/statefulsets/kv").is_none(),
            "namespaced"
        );
    }
}
