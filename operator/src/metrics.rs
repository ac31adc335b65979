//! The operator's own Prometheus metrics (names documented in docs/kubernetes.md).

use std::collections::BTreeMap;

use parking_lot::Mutex;

use crate::crd::Phase;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: IntCounterVec,
    pub errors: IntCounterVec,
    pub duration: HistogramVec,
    pub steps: IntCounterVec,
    clusters_by_phase: IntGaugeVec,
    quorum_lost: IntGaugeVec,
    phases: Mutex<BTreeMap<(String, String), Phase>>,
}

/// Every `reason` of the errors counter (`reconcile::Error::metric_reason`), pre-created so the
/// series exist at zero.
pub const ERROR_REASONS: [&str; 6] = [
    "kube_api",
    "apply",
    "pods",
    "status",
    "finalizer",
    "no_namespace",
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "concord_operator_reconciles_total",
                "Reconciles run, by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "concord_operator_reconcile_errors_total",
                "Failed reconciles, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "concord_operator_reconcile_duration_seconds",
                "Time one reconcile took.",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &[],
        )
        .expect("valid metric");
        let steps = IntCounterVec::new(
            Opts::new(
                "concord_operator_membership_steps_total",
                "Membership steps executed, by action and result.",
            ),
            &["action", "result"],
        )
        .expect("valid metric");
        let clusters_by_phase = IntGaugeVec::new(
            Opts::new("concord_operator_clusters", "ConcordClusters by phase."),
            &["phase"],
        )
        .expect("valid metric");
        let quorum_lost = IntGaugeVec::new(
            Opts::new(
                "concord_operator_cluster_quorum_lost",
                "1 while a cluster has no leader although initialized.",
            ),
            &["namespace", "cluster"],
        )
        .expect("valid metric");
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(duration.clone()),
            Box::new(steps.clone()),
            Box::new(clusters_by_phase.clone()),
            Box::new(quorum_lost.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        for p in Phase::ALL {
            clusters_by_phase.with_label_values(&[p.as_str()]).set(0);
        }
        for r in ["ok", "error"] {
            reconciles.with_label_values(&[r]);
        }
        for r in ERROR_REASONS {
            errors.with_label_values(&[r]);
        }
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
            steps,
            clusters_by_phase,
            quorum_lost,
            phases: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records a cluster's phase (None: the cluster is gone).
    pub fn set_phase(&self, namespace: &str, name: &str, phase: Option<Phase>) {
        let mut phases = self.phases.lock();
        let key = (namespace.to_string(), name.to_string());
        match phase {
            Some(p) => {
                phases.insert(key, p);
                self.quorum_lost
                    .with_label_values(&[namespace, name])
                    .set(i64::from(p == Phase::QuorumLost));
            }
            None => {
                phases.remove(&key);
                let _ = self.quorum_lost.remove_label_values(&[namespace, name]);
            }
        }
        for p in Phase::ALL {
            let n = phases.values().filter(|v| **v == p).count();
            self.clusters_by_phase
                .with_label_values(&[p.as_str()])
                .set(n as i64);
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
