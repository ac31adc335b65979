//! Prometheus metrics. One registry per process (one node per process).
//!
//! Label values are always from small fixed sets (route templates, status classes, RPC method
//! names, member names), never keys, values or client addresses.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    // server
    pub has_leader: IntGauge,
    pub is_leader: IntGauge,
    pub leader_changes: IntCounter,
    pub current_term: IntGauge,
    pub commit_index: IntGauge,
    pub applied_index: IntGauge,
    pub snapshot_index: IntGauge,
    pub last_log_index: IntGauge,
    pub proposals_committed: IntCounter,
    pub proposals_applied: IntCounter,
    pub proposals_failed: IntCounterVec,
    pub proposals_pending: IntGauge,
    pub members: IntGaugeVec,
    pub forwarded: IntCounterVec,
    // disk
    pub log_fsync_seconds: Histogram,
    pub log_fsync_batch_entries: Histogram,
    pub log_bytes_written: IntCounter,
    pub log_segments: IntGauge,
    pub log_bytes: IntGauge,
    pub log_memory_bytes: IntGauge,
    pub snapshot_save_seconds: Histogram,
    pub snapshot_load_seconds: Histogram,
    pub snapshot_size_bytes: IntGauge,
    pub data_dir_bytes: IntGauge,
    // peers
    pub peer_rpc_seconds: HistogramVec,
    pub peer_rpc_failures: IntCounterVec,
    pub peer_lag_entries: IntGaugeVec,
    // client API
    pub http_seconds: HistogramVec,
    pub http_in_flight: IntGauge,
    pub http_rejected: IntCounterVec,
    pub http_connections: IntGauge,
    pub http_in_flight_bytes: IntGauge,
    pub http_connections_refused: IntCounterVec,
    pub http_connections_closed: IntCounterVec,
    pub tls_handshake_failures: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub tls_reload_failures: IntCounterVec,
    pub cert_expiry_timestamp_seconds: IntGaugeVec,
    pub keys: IntGauge,
    pub key_bytes: IntGauge,
    pub store_history_bytes: IntGauge,
    pub store_revision: IntGauge,
    pub store_compacted_revision: IntGauge,
    pub watchers: IntGauge,
    pub watchers_lagging: IntCounter,
    pub leases: IntGauge,
    pub leases_expired: IntCounter,
    pub build_info: IntGaugeVec,
}

/// Outgoing peer RPCs, the `method` label's values.
pub const PEER_METHODS: &[&str] = &[
    "append_entries",
    "vote",
    "pre_vote",
    "transfer_leader",
    "install_snapshot",
];

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new_custom(Some("concord".into()), None)?;
    macro_rules! reg {
        ($m:expr) => {{
            let m = $m;
            registry.register(Box::new(m.clone()))?;
            m
        }};
    }
    let hist = |name: &str, help: &str, buckets: &[f64]| {
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
    };
    let m = Metrics {
        has_leader: reg!(IntGauge::new(
            "server_has_leader",
            "1 if this node knows a leader"
        )?),
        is_leader: reg!(IntGauge::new(
            "server_is_leader",
            "1 if this node is the leader"
        )?),
        leader_changes: reg!(IntCounter::new(
            "server_leader_changes_seen_total",
            "Leader changes seen by this node"
        )?),
        current_term: reg!(IntGauge::new("server_current_term", "Current Raft term")?),
        commit_index: reg!(IntGauge::new(
            "server_commit_index",
            "Highest committed log index"
        )?),
        applied_index: reg!(IntGauge::new(
            "server_applied_index",
            "Highest applied log index"
        )?),
        snapshot_index: reg!(IntGauge::new(
            "server_snapshot_index",
            "Log index of the latest snapshot"
        )?),
        last_log_index: reg!(IntGauge::new(
            "server_last_log_index",
            "Last index in the local log"
        )?),
        proposals_committed: reg!(IntCounter::new(
            "server_proposals_committed_total",
            "Client proposals committed by this node as leader"
        )?),
        proposals_applied: reg!(IntCounter::new(
            "server_proposals_applied_total",
            "Log entries applied to the state machine"
        )?),
        proposals_failed: reg!(IntCounterVec::new(
            Opts::new(
                "server_proposals_failed_total",
                "Client proposals that failed, by reason"
            ),
            &["reason"]
        )?),
        proposals_pending: reg!(IntGauge::new(
            "server_proposals_pending",
            "Client proposals waiting for commit on this node"
        )?),
        members: reg!(IntGaugeVec::new(
            Opts::new("server_members", "Cluster members by role"),
            &["role"]
        )?),
        forwarded: reg!(IntCounterVec::new(
            Opts::new(
                "server_forwarded_requests_total",
                "Client requests forwarded to the leader, by kind"
            ),
            &["kind"]
        )?),
        log_fsync_seconds: reg!(hist(
            "disk_log_fsync_duration_seconds",
            "Raft log fsync latency",
            LATENCY_BUCKETS
        )?),
        log_fsync_batch_entries: reg!(hist(
            "disk_log_fsync_batch_appends",
            "Append batches made durable by one fsync (group commit)",
            &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]
        )?),
        log_bytes_written: reg!(IntCounter::new(
            "disk_log_written_bytes_total",
            "Bytes of log entries written"
        )?),
        log_segments: reg!(IntGauge::new(
            "disk_log_segments",
            "Raft log segment files"
        )?),
        log_bytes: reg!(IntGauge::new(
            "disk_log_bytes",
            "Bytes in Raft log segment files"
        )?),
        log_memory_bytes: reg!(IntGauge::new(
            "server_log_memory_bytes",
            "Bytes of Raft log entries held in memory for replication"
        )?),
        snapshot_save_seconds: reg!(hist(
            "disk_snapshot_save_duration_seconds",
            "Time to build and durably save a snapshot",
            LATENCY_BUCKETS
        )?),
        snapshot_load_seconds: reg!(hist(
            "disk_snapshot_load_duration_seconds",
            "Time to load a snapshot at start",
            LATENCY_BUCKETS
        )?),
        snapshot_size_bytes: reg!(IntGauge::new(
            "disk_snapshot_size_bytes",
            "Size of the latest snapshot file"
        )?),
        data_dir_bytes: reg!(IntGauge::new(
            "disk_data_dir_bytes",
            "Bytes used by the data directory (log, snapshots, metadata)"
        )?),
        peer_rpc_seconds: reg!(HistogramVec::new(
            HistogramOpts::new("peer_rpc_duration_seconds", "Outgoing peer RPC latency")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["method"]
        )?),
        peer_rpc_failures: reg!(IntCounterVec::new(
            Opts::new("peer_rpc_failures_total", "Failed outgoing peer RPCs"),
            &["method"]
        )?),
        peer_lag_entries: reg!(IntGaugeVec::new(
            Opts::new(
                "peer_replication_lag_entries",
                "Entries a member is behind the leader's last log index (leader only)"
            ),
            &["peer"]
        )?),
        http_seconds: reg!(HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Client API request latency"
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "status_class"]
        )?),
        http_in_flight: reg!(IntGauge::new(
            "http_requests_in_flight",
            "Client API requests being served"
        )?),
        http_rejected: reg!(IntCounterVec::new(
            Opts::new(
                "http_rejected_requests_total",
                "Client API requests rejected, by reason"
            ),
            &["reason"]
        )?),
        http_in_flight_bytes: reg!(IntGauge::new(
            "http_request_bytes_in_flight",
            "Bytes charged to client requests being served (limits.maxInFlightBytes bounds it)"
        )?),
        http_connections: reg!(IntGauge::new(
            "http_connections",
            "Client API connections open"
        )?),
        http_connections_refused: reg!(IntCounterVec::new(
            Opts::new(
                "http_connections_refused_total",
                "Client API connections refused at accept, by reason"
            ),
            &["reason"]
        )?),
        http_connections_closed: reg!(IntCounterVec::new(
            Opts::new(
                "http_connections_timed_out_total",
                "Client API connections closed by the server for a timeout, by reason"
            ),
            &["reason"]
        )?),
        tls_handshake_failures: reg!(IntCounterVec::new(
            Opts::new(
                "tls_handshake_failures_total",
                "TLS handshakes refused (untrusted, expired or missing certificate, plaintext to a TLS-only port, timeout), by port"
            ),
            &["port"]
        )?),
        auth_failures: reg!(IntCounterVec::new(
            Opts::new(
                "auth_failures_total",
                "Requests refused by authentication or authorization, by reason (bad_password, rate_limited, no_credentials, invalid_token, denied)"
            ),
            &["reason"]
        )?),
        tls_reload_failures: reg!(IntCounterVec::new(
            Opts::new(
                "tls_reload_failures_total",
                "Changed certificate files that could not be loaded (the previous certificate stays in use), by certificate"
            ),
            &["certificate"]
        )?),
        cert_expiry_timestamp_seconds: reg!(IntGaugeVec::new(
            Opts::new(
                "cert_expiry_timestamp_seconds",
                "When the certificate in use expires (seconds since the Unix epoch), by certificate (client ports, peer port)"
            ),
            &["certificate"]
        )?),
        keys: reg!(IntGauge::new("store_keys", "Keys held")?),
        key_bytes: reg!(IntGauge::new(
            "store_bytes",
            "Bytes of keys and values held"
        )?),
        store_history_bytes: reg!(IntGauge::new(
            "store_history_bytes",
            "Bytes of the versions kept besides the current ones (freed by compaction)"
        )?),
        store_revision: reg!(IntGauge::new("store_revision", "The store's revision")?),
        store_compacted_revision: reg!(IntGauge::new(
            "store_compacted_revision",
            "Revisions before this one have been compacted away"
        )?),
        watchers: reg!(IntGauge::new(
            "watchers",
            "Watches this member serves (etcd Watch streams and Server-Sent Events)"
        )?),
        watchers_lagging: reg!(IntCounter::new(
            "watchers_lagging_total",
            "Times a watcher could not keep up (its queue full) and was caught up from history"
        )?),
        leases: reg!(IntGauge::new("leases", "Leases that exist")?),
        leases_expired: reg!(IntCounter::new(
            "leases_expired_total",
            "Leases this member, as leader, revoked because their TTL passed without renewal"
        )?),
        build_info: reg!(IntGaugeVec::new(
            Opts::new("build_info", "Build information"),
            &["version", "revision"]
        )?),
        registry,
    };
    // Label values from fixed sets are created up front, so every series exists (at zero)
    // before the first event and alerts can rely on it.
    for reason in [
        "timeout",
        "leader_changed",
        "rejected",
        "fatal",
        "overloaded",
    ] {
        m.proposals_failed.with_label_values(&[reason]);
    }
    for kind in ["write", "read", "list"] {
        m.forwarded.with_label_values(&[kind]);
    }
    for reason in [
        "bad_request",
        "too_large",
        "no_leader",
        "outcome_unknown",
        "unavailable",
        "internal",
        "overloaded",
    ] {
        m.http_rejected.with_label_values(&[reason]);
    }
    for reason in ["max_connections", "accept_error"] {
        m.http_connections_refused.with_label_values(&[reason]);
    }
    for reason in ["header_timeout", "idle_timeout"] {
        m.http_connections_closed.with_label_values(&[reason]);
    }
    for port in ["api", "etcd", "peer"] {
        m.tls_handshake_failures.with_label_values(&[port]);
    }
    for reason in [
        "bad_password",
        "rate_limited",
        "no_credentials",
        "invalid_token",
        "denied",
    ] {
        m.auth_failures.with_label_values(&[reason]);
    }
    for certificate in ["client", "peer"] {
        m.tls_reload_failures.with_label_values(&[certificate]);
    }
    for method in PEER_METHODS {
        m.peer_rpc_seconds.with_label_values(&[method]);
        m.peer_rpc_failures.with_label_values(&[method]);
    }
    m.build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("CONCORD_GIT_REV")])
        .set(1);
    #[cfg(target_os = "linux")]
    {
        let pc = prometheus::process_collector::ProcessCollector::for_self();
        m.registry.register(Box::new(pc))?;
    }
    Ok(m)
}

/// The process-wide metrics.
/// Holds one unit of a gauge for as long as it lives: incremented when made, decremented when
/// dropped. A request future dropped half-way (the client went away, a timeout fired) gives its
/// unit back, which an `inc()` … `dec()` pair around an `.await` would not.
#[must_use = "the gauge goes back down when this is dropped"]
pub struct GaugeGuard(&'static IntGauge);

impl GaugeGuard {
    pub fn hold(gauge: &'static IntGauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    // Registration only fails on duplicate names, which is a programming error caught by tests.
    METRICS.get_or_init(|| build().expect("metric definitions are valid"))
}

/// Renders the Prometheus text exposition.
pub fn render() -> String {
    let mut buf = Vec::new();
    let families = metrics().registry.gather();
    if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
        return format!("# error encoding metrics: {e}\n");
    }
    String::from_utf8(buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn exposition_has_prefixed_names() {
        super::metrics().keys.set(3);
        let text = super::render();
        assert!(text.contains("concord_store_keys 3"), "{text}");
        assert!(text.contains("concord_build_info"));
    }

    #[tokio::test]
    async fn a_cancelled_future_gives_its_gauge_unit_back() {
        let gauge: &'static prometheus::IntGauge =
            Box::leak(Box::new(prometheus::IntGauge::new("g", "g").unwrap()));
        let before = gauge.get();
        let task = tokio::spawn(async move {
            let _held = super::GaugeGuard::hold(gauge);
            std::future::pending::<()>().await;
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(gauge.get(), before + 1);
        task.abort();
        let _ = task.await;
        assert_eq!(gauge.get(), before);
    }
}
