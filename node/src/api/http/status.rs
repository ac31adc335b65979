//! Node status, the JSON metrics summary and readiness, computed from openraft's metrics.

use openraft::ServerState;
use serde_json::{json, Value};

use crate::app::App;
use crate::telemetry::metrics::metrics;

fn role(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

pub fn status_json(app: &App) -> Value {
    let m = app.metrics();
    let membership = m.membership_config.membership();
    let member = |id: u64| {
        let node = membership.get_node(&id);
        json!({
            "id": id,
            "name": node.map(|n| n.name.clone()),
            "addr": node.map(|n| n.addr.clone()),
        })
    };
    let voters: Vec<Value> = membership.voter_ids().map(member).collect();
    let learners: Vec<Value> = membership.learner_ids().map(member).collect();
    let leader = m.current_leader.map(member);
    json!({
        "nodeId": app.config.name,
        "id": app.id(),
        "incarnation": app.identity.incarnation,
        "initialized": m.membership_config.membership().voter_ids().next().is_some(),
        "clusterId": app.cluster_id.get().map(|s| s.to_string()),
        "refusedPeerMessages": app.refused_messages.load(std::sync::atomic::Ordering::Relaxed),
        "lastRefusal": app.last_refusal.lock().clone(),
        "role": role(m.state),
        "term": m.current_term,
        "leader": leader,
        "commitIndex": m.cluster_committed.as_ref().map(|l| l.index),
        "appliedIndex": m.last_applied.as_ref().map(|l| l.index),
        "lastLogIndex": m.last_log_index,
        "voters": voters,
        "learners": learners,
        "lastSnapshot": m.snapshot.as_ref().map(|l| json!({ "index": l.index, "term": l.leader_id.term })),
        "purgedIndex": m.purged.as_ref().map(|l| l.index),
        "ready": readiness(app).is_ok(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptimeSeconds": app.started.elapsed().as_secs(),
    })
}

pub fn metrics_json(app: &App) -> Value {
    let m = app.metrics();
    let pm = metrics();
    let replication = m.replication.as_ref().map(|r| {
        r.iter()
            .map(|(id, matched)| {
                let lag = m
                    .last_log_index
                    .unwrap_or(0)
                    .saturating_sub(matched.as_ref().map(|l| l.index).unwrap_or(0));
                json!({ "id": id, "matchedIndex": matched.as_ref().map(|l| l.index), "lagEntries": lag })
            })
            .collect::<Vec<_>>()
    });
    let fsync = &pm.log_fsync_seconds;
    json!({
        "nodeId": app.config.name,
        "role": role(m.state),
        "term": m.current_term,
        "hasLeader": m.current_leader.is_some(),
        "leaderChangesSeen": pm.leader_changes.get(),
        "commitIndex": m.cluster_committed.as_ref().map(|l| l.index),
        "appliedIndex": m.last_applied.as_ref().map(|l| l.index),
        "snapshotIndex": m.snapshot.as_ref().map(|l| l.index),
        "proposals": {
            "committed": pm.proposals_committed.get(),
            "applied": pm.proposals_applied.get(),
            "pending": pm.proposals_pending.get(),
        },
        "disk": {
            "fsyncCount": fsync.get_sample_count(),
            "fsyncSecondsTotal": fsync.get_sample_sum(),
            "logBytesWritten": pm.log_bytes_written.get(),
            "logSegments": pm.log_segments.get(),
        },
        "store": { "keys": pm.keys.get(), "bytes": pm.key_bytes.get() },
        "replication": replication,
        "http": { "inFlight": pm.http_in_flight.get() },
    })
}

pub use super::probes::readiness;
