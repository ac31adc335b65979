//! The short run of the fault-injection suite that every test run includes: three real nodes,
//! concurrent clients on a few keys through the seed API and etcd's gRPC API (Range, Put, Txn
//! compare-and-swap), every nemesis, and a linearizability check of the history; a watcher on
//! every member that must see exactly the committed history, and a lease renewed throughout
//! that must never expire.
//! `CONCORD_CHAOS_SEED` replays a schedule; `concord-chaos --duration N` runs longer.

use std::time::Duration;

use concord_chaos::driver::{run, RunConfig};
use concord_chaos::nemesis::ALL;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_chaos_run_is_linearizable() {
    let seed = std::env::var("CONCORD_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261125);
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("chaos-report.json");
    let cfg = RunConfig {
        nodes: 3,
        clients: 6,
        keys: 4,
        duration: Duration::from_secs(45),
        seed,
        nemeses: ALL.to_vec(),
        interval: Duration::from_secs(3),
        node_bin: env!("CARGO_BIN_EXE_concord-node").into(),
        report_path: Some(report_path.clone()),
        secure: false,
    };
    let report = run(cfg).await.expect("chaos run");
    eprintln!(
        "chaos seed {seed}: {} operations {:?}; {} faults",
        report.operations,
        report.by_outcome,
        report.nemesis_events.len()
    );
    for e in &report.nemesis_events {
        eprintln!("  {:>7}ms {}", e.at_ms, e.what);
    }
    eprintln!("watchers: {:?}; lease: {:?}", report.watchers, report.lease);
    for a in &report.anomalies {
        eprintln!("anomaly: {a}");
    }
    // Every member's watcher saw the run's changes (their exact agreement with the committed
    // history is checked by the run: a difference is an anomaly).
    assert_eq!(report.watchers.len(), 3, "{:?}", report.watchers);
    for w in &report.watchers {
        assert!(w["changes"].as_u64().is_some_and(|n| n > 500), "{w}");
    }
    let lease = report.lease.as_ref().expect("the lease keeper ran");
    assert!(lease.renewals > 20, "{lease:?}");
    assert!(
        report.operations > 1000,
        "too few operations: {}",
        report.operations
    );
    // Both APIs carried real traffic, so the check covers each and their agreement.
    for api in ["seed", "etcd"] {
        for what in ["read-ok", "write-ok"] {
            let n = report
                .by_outcome
                .get(&format!("{api}:{what}"))
                .copied()
                .unwrap_or(0);
            assert!(n > 100, "only {n} {api}:{what}: {:?}", report.by_outcome);
        }
    }
    assert!(
        report.passed(),
        "seed {seed} failed:\n{}",
        std::fs::read_to_string(&report_path).unwrap_or_default()
    );
}

/// A shorter run with TLS on every port (client certificates required, peers mutually
/// authenticated) and auth on: every operation goes through the handshakes and the permission
/// checks while the faults run, and the history must still be linearizable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_chaos_run_with_tls_and_auth_is_linearizable() {
    let seed = 20261205;
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("chaos-report.json");
    let cfg = RunConfig {
        nodes: 3,
        clients: 4,
        keys: 4,
        duration: Duration::from_secs(20),
        seed,
        nemeses: ALL.to_vec(),
        interval: Duration::from_secs(3),
        node_bin: env!("CARGO_BIN_EXE_concord-node").into(),
        report_path: Some(report_path.clone()),
        secure: true,
    };
    let report = run(cfg).await.expect("chaos run with TLS and auth");
    eprintln!(
        "secure chaos seed {seed}: {} operations {:?}; {} faults",
        report.operations,
        report.by_outcome,
        report.nemesis_events.len()
    );
    for a in &report.anomalies {
        eprintln!("anomaly: {a}");
    }
    assert!(
        report.operations > 300,
        "too few operations: {}",
        report.operations
    );
    for api in ["seed", "etcd"] {
        let n = report
            .by_outcome
            .get(&format!("{api}:write-ok"))
            .copied()
            .unwrap_or(0);
        assert!(n > 30, "only {n} {api}:write-ok: {:?}", report.by_outcome);
    }
    assert!(
        report.passed(),
        "seed {seed} failed:\n{}",
        std::fs::read_to_string(&report_path).unwrap_or_default()
    );
}
