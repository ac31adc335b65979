//! Spec validation beyond what the CRD schema enforces: cross-field rules and names. Errors
//! stop the reconcile before anything is changed; warnings become a condition.

use kube::ResourceExt;

use crate::crd::{ConcordCluster, ConcordClusterSpec};
use crate::naming::MAX_NAME_LEN;
use crate::tls::{self, TlsPlan};

/// Default learner promotion threshold (the node's own default).
const DEFAULT_MAX_PROMOTE_LAG: u64 = 1000;

/// A cluster whose spec passed validation, with what the later steps read, typed: nothing
/// after [`check`] re-checks the raw spec's ranges, and the builders take only this.
#[derive(Debug, Clone)]
pub struct ValidatedCluster {
    /// The object as validated (the builders read its overrides and owner identity).
    pub cluster: ConcordCluster,
    pub name: String,
    pub namespace: String,
    /// Wanted voters, 1..=9.
    pub replicas: u32,
    pub max_promote_lag: u64,
    pub paused: bool,
    pub tls: TlsPlan,
    pub warnings: Vec<String>,
}

/// Why a spec cannot be acted on: every error found, and the warnings beside them.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Validates `cluster` into a [`ValidatedCluster`], or says everything that is wrong.
pub fn check(cluster: &ConcordCluster, namespace: &str) -> Result<ValidatedCluster, Invalid> {
    let name = cluster.name_any();
    let mut v = validate(&name, &cluster.spec);
    let tls = tls::plan(cluster, &mut v.errors);
    if !v.is_ok() {
        return Err(Invalid {
            errors: v.errors,
            warnings: v.warnings,
        });
    }
    Ok(ValidatedCluster {
        cluster: cluster.clone(),
        name,
        namespace: namespace.to_string(),
        // validate() checked 1..=9.
        replicas: cluster.spec.replicas.clamp(1, 9) as u32,
        max_promote_lag: cluster
            .spec
            .raft
            .max_promote_lag
            .unwrap_or(DEFAULT_MAX_PROMOTE_LAG),
        paused: cluster.spec.paused,
        tls,
        warnings: v.warnings,
    })
}

#[derive(Debug, Default, PartialEq)]
pub struct Validation {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl Validation {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

pub fn validate(name: &str, spec: &ConcordClusterSpec) -> Validation {
    let mut v = Validation::default();
    if name.len() > MAX_NAME_LEN {
        v.errors.push(format!(
            "metadata.name {name:?} is {} characters; at most {MAX_NAME_LEN} are allowed so that pod and service names stay valid",
            name.len()
        ));
    }
    if !(1..=9).contains(&spec.replicas) {
        v.errors.push(format!(
            "spec.replicas is {}; it must be between 1 and 9",
            spec.replicas
        ));
    } else if spec.replicas % 2 == 0 {
        let tolerated = (spec.replicas - 1) / 2;
        v.warnings.push(format!(
            "spec.replicas is {}, an even number: it tolerates {tolerated} failure(s), like {} replicas, at a higher cost",
            spec.replicas,
            spec.replicas - 1
        ));
    }
    let image = spec.image();
    if image.trim().is_empty() || image.contains(char::is_whitespace) {
        v.errors
            .push(format!("spec.image {image:?} is not an image reference"));
    }
    if !is_quantity(&spec.storage.size) {
        v.errors.push(format!(
            "spec.storage.size {:?} is not a quantity such as 10Gi",
            spec.storage.size
        ));
    }
    let r = &spec.raft;
    if let (Some(min), Some(max)) = (r.election_timeout_min_ms, r.election_timeout_max_ms) {
        if min >= max {
            v.errors.push(format!(
                "spec.raft.electionTimeoutMinMs ({min}) must be below electionTimeoutMaxMs ({max})"
            ));
        }
    }
    if let (Some(hb), Some(min)) = (r.heartbeat_interval_ms, r.election_timeout_min_ms) {
        if hb * 2 > min {
            v.errors.push(format!(
                "spec.raft.heartbeatIntervalMs ({hb}) must be at most half of electionTimeoutMinMs ({min}), or followers time out between heartbeats"
            ));
        }
    }
    if let Some(r) = &spec.restore_from {
        match (&r.backup, &r.s3) {
            (Some(_), Some(_)) | (None, None) => v.errors.push(
                "spec.restoreFrom names exactly one of backup (a ConcordBackup) and s3 (an object)"
                    .into(),
            ),
            (Some(name), None) if name.trim().is_empty() => {
                v.errors.push("spec.restoreFrom.backup is empty".into())
            }
            (None, Some(o)) if o.key.trim().is_empty() || o.bucket.trim().is_empty() => v
                .errors
                .push("spec.restoreFrom.s3 needs a bucket and the object's key".into()),
            _ => {}
        }
    }
    v
}

/// A Kubernetes resource quantity as used for volume sizes: digits, optional fraction, and an
/// optional binary or decimal suffix.
fn is_quantity(s: &str) -> bool {
    let suffixes = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E", "",
    ];
    suffixes.iter().any(|suffix| {
        s.strip_suffix(suffix).is_some_and(|num| {
            let mut parts = num.splitn(2, '.');
            let int = parts.next().unwrap_or("");
            let frac = parts.next();
            !int.is_empty()
                && int.chars().all(|c| c.is_ascii_digit())
                && frac.is_none_or(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_digit()))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> ConcordClusterSpec {
        serde_yaml_ng::from_str(yaml).expect("fixture spec")
    }

    #[test]
    fn a_minimal_spec_is_valid() {
        assert_eq!(validate("kv", &spec("replicas: 3")), Validation::default());
        for restore in [
            "restoreFrom: {backup: nightly}",
            "restoreFrom: {s3: {bucket: b, key: ns/kv/kv-r9-x.backup, credentialsSecret: s3}}",
        ] {
            let yaml = format!("replicas: 3\n{restore}");
            assert_eq!(
                validate("kv", &spec(&yaml)),
                Validation::default(),
                "{yaml}"
            );
        }
    }

    #[test]
    fn even_replicas_warn() {
        let v = validate("kv", &spec("replicas: 4"));
        assert!(v.is_ok());
        assert_eq!(v.warnings.len(), 1);
        assert!(v.warnings[0].contains("tolerates 1 failure"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("replicas: 0", "spec.replicas"),
            ("replicas: 11", "spec.replicas"),
            ("replicas: 3\nstorage: {size: lots}", "spec.storage.size"),
            ("replicas: 3\nimage: 'a b'", "spec.image"),
            (
                "replicas: 3\nraft: {electionTimeoutMinMs: 900, electionTimeoutMaxMs: 500}",
                "electionTimeoutMinMs",
            ),
            (
                "replicas: 3\nraft: {heartbeatIntervalMs: 400, electionTimeoutMinMs: 500}",
                "heartbeatIntervalMs",
            ),
            ("replicas: 3\nrestoreFrom: {}", "spec.restoreFrom"),
            (
                "replicas: 3\nrestoreFrom: {backup: b, s3: {bucket: x, key: k, credentialsSecret: s}}",
                "spec.restoreFrom",
            ),
            (
                "replicas: 3\nrestoreFrom: {s3: {bucket: x, key: '', credentialsSecret: s}}",
                "spec.restoreFrom.s3",
            ),
        ];
        for (yaml, field) in cases {
            let v = validate("kv", &spec(yaml));
            assert_eq!(v.errors.len(), 1, "{yaml}: {v:?}");
            assert!(v.errors[0].contains(field), "{yaml}: {v:?}");
        }
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert!(validate(&long, &spec("replicas: 3")).errors[0].contains("metadata.name"));
    }

    #[test]
    fn quantities() {
        for ok in ["1Gi", "500Mi", "10", "1.5Gi", "2T"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "Gi", "1.Gi", "-1Gi", "1 Gi", "1GB"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn check_types_what_the_later_steps_read() {
        let cluster = |yaml: &str| -> ConcordCluster {
            serde_yaml_ng::from_str(&format!(
                "apiVersion: concordkv.io/v1alpha1\nkind: ConcordCluster\nmetadata: {{name: kv}}\nspec:\n  {}",
                yaml.replace('\n', "\n  ")
            ))
            .expect("cluster")
        };
        let ok = check(&cluster("replicas: 4"), "ns").expect("valid");
        assert_eq!(
            (ok.replicas, ok.max_promote_lag),
            (4, DEFAULT_MAX_PROMOTE_LAG)
        );
        assert_eq!((ok.name.as_str(), ok.namespace.as_str()), ("kv", "ns"));
        assert_eq!(ok.warnings.len(), 1, "an even size is a warning");
        let lag = check(&cluster("replicas: 3\nraft: {maxPromoteLag: 7}"), "ns").expect("valid");
        assert_eq!(lag.max_promote_lag, 7);
        let bad = check(&cluster("replicas: 12"), "ns").expect_err("invalid");
        assert!(bad.errors[0].contains("spec.replicas"), "{bad:?}");
    }
}
