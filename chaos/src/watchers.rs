//! Watches and leases under the same faults as the clients.
//!
//! One watcher per member records every change to every key through etcd's Watch API, from
//! the first revision; when its stream breaks (the member killed, paused, cut off) it
//! reconnects to the same member and resumes from the revision after the last change it saw,
//! as etcd's clients do. At the end each watcher's sequence must equal the committed history —
//! no gap, no duplicate, no reordering — and contain every write a client was told succeeded.
//!
//! A lease keeper renews one lease through a member chosen in turn every 500 ms for the whole
//! run: its key must never be deleted. A second lease is never renewed: its key must be gone.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_proto::etcd::etcdserverpb::watch_client::WatchClient;
use concord_proto::etcd::etcdserverpb::watch_request::RequestUnion;
use concord_proto::etcd::etcdserverpb::{WatchCreateRequest, WatchRequest};
use serde::Serialize;
use serde_json::json;

/// One change, as a watcher saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub key: String,
    pub revision: i64,
    pub put: bool,
    pub value: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Recorded {
    pub member: usize,
    pub changes: Vec<Change>,
    pub reconnects: usize,
    /// What must never happen: a cancel, a change out of order.
    pub anomalies: Vec<String>,
}

/// Ends the watchers once they have seen `target` (set after the run), or at `deadline`.
#[derive(Default)]
pub struct Finish {
    pub target: AtomicI64,
    pub abandon: AtomicBool,
}

/// Records every change through `addr`'s Watch API from `start` until told to finish.
pub async fn record(
    clients: crate::security::Clients,
    member: usize,
    addr: String,
    start: i64,
    finish: Arc<Finish>,
) -> Recorded {
    let mut r = Recorded {
        member,
        ..Recorded::default()
    };
    let mut next = start;
    loop {
        let target = finish.target.load(Ordering::SeqCst);
        if (target > 0 && next > target) || finish.abandon.load(Ordering::SeqCst) {
            return r;
        }
        if let Err(e) = follow(&clients, &addr, &mut next, &mut r, &finish).await {
            r.anomalies.push(e);
            return r;
        }
        r.reconnects += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One watch stream, until it breaks (Ok) or says something a watcher must never hear (Err).
async fn follow(
    clients: &crate::security::Clients,
    addr: &str,
    next: &mut i64,
    r: &mut Recorded,
    finish: &Finish,
) -> Result<(), String> {
    let Ok(endpoint) = clients.endpoint(addr) else {
        return Err(format!("bad address {addr}"));
    };
    let Ok(channel) = endpoint
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
    else {
        return Ok(());
    };
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: vec![0],
            range_end: vec![0],
            start_revision: *next,
            ..Default::default()
        })),
    };
    let requests = futures_stream(create);
    let Ok(resp) = WatchClient::new(channel).watch(requests).await else {
        return Ok(());
    };
    let mut stream = resp.into_inner();
    loop {
        let target = finish.target.load(Ordering::SeqCst);
        if (target > 0 && *next > target) || finish.abandon.load(Ordering::SeqCst) {
            return Ok(());
        }
        let msg = match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
            Err(_) => continue, // quiet: look at the finish line again
            Ok(Ok(Some(m))) => m,
            Ok(_) => return Ok(()),
        };
        if msg.canceled {
            return Err(format!(
                "member {}: watch canceled at revision {next} (compact_revision {}, {:?})",
                r.member, msg.compact_revision, msg.cancel_reason
            ));
        }
        for e in msg.events {
            let Some(kv) = e.kv else { continue };
            if kv.mod_revision < *next {
                return Err(format!(
                    "member {}: change at revision {} after resuming from {next}",
                    r.member, kv.mod_revision
                ));
            }
            if let Some(last) = r.changes.last() {
                if kv.mod_revision < last.revision {
                    return Err(format!(
                        "member {}: revision {} after {}",
                        r.member, kv.mod_revision, last.revision
                    ));
                }
            }
            r.changes.push(Change {
                key: String::from_utf8_lossy(&kv.key).into_owned(),
                revision: kv.mod_revision,
                put: e.r#type == 0,
                value: String::from_utf8_lossy(&kv.value).into_owned(),
            });
            *next = kv.mod_revision + 1;
        }
    }
}

/// The create request, then nothing: the stream stays open.
fn futures_stream(
    first: WatchRequest,
) -> impl tonic::codegen::tokio_stream::Stream<Item = WatchRequest> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let _ = tx.send(first).await;
        tx.closed().await;
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[derive(Debug, Default, Serialize)]
pub struct LeaseReport {
    pub kept: Option<u64>,
    pub abandoned: Option<u64>,
    pub renewals: usize,
    pub renewals_failed: usize,
    /// The first few failed renewals' answers, to tell an election from a fault.
    pub failures: Vec<String>,
    pub anomalies: Vec<String>,
}

async fn post(
    http: &reqwest::Client,
    apis: &[String],
    path: &str,
    body: &serde_json::Value,
) -> Option<serde_json::Value> {
    for _ in 0..20 {
        for api in apis {
            if let Ok(r) = http.post(format!("{api}{path}")).json(body).send().await {
                if r.status().is_success() {
                    return r.json().await.ok();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Grants the kept and abandoned leases with a key each, then renews the kept one until `stop`.
pub async fn keep_lease(
    clients: crate::security::Clients,
    apis: Vec<String>,
    stop: Arc<AtomicBool>,
) -> LeaseReport {
    let mut r = LeaseReport::default();
    let http = match clients.http(Duration::from_secs(2)) {
        Ok(h) => h,
        Err(e) => {
            r.anomalies.push(e.to_string());
            return r;
        }
    };
    let granted = |v: Option<serde_json::Value>| v.and_then(|v| v["id"].as_u64());
    r.kept = granted(post(&http, &apis, "/api/lease/grant", &json!({ "ttl": 6 })).await);
    r.abandoned = granted(post(&http, &apis, "/api/lease/grant", &json!({ "ttl": 2 })).await);
    let (Some(kept), Some(abandoned)) = (r.kept, r.abandoned) else {
        r.anomalies.push("could not grant the leases".into());
        return r;
    };
    for (key, lease) in [("lease/kept", kept), ("lease/abandoned", abandoned)] {
        if post(
            &http,
            &apis,
            "/api/set",
            &json!({ "key": key, "value": "x", "lease": lease }),
        )
        .await
        .is_none()
        {
            r.anomalies.push(format!("could not put {key}"));
        }
    }
    let mut turn = 0usize;
    let mut last_renewed = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let api = &apis[turn % apis.len()];
        turn += 1;
        let sent = http
            .post(format!("{api}/api/lease/keepalive"))
            .json(&json!({ "id": kept }))
            .send()
            .await;
        let sent = match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp.text().await.unwrap_or_default();
                Ok((status, body))
            }
            Err(e) => Err(e.to_string()),
        };
        if !matches!(sent, Ok((200, _))) && r.failures.len() < 8 {
            r.failures.push(format!("{api}: {sent:?}"));
        }
        match sent.as_ref().map(|(s, _)| *s) {
            Ok(200) => {
                r.renewals += 1;
                last_renewed = Instant::now();
            }
            Ok(404) => {
                r.anomalies.push(format!(
                    "the kept lease was gone {:?} after its last renewal",
                    last_renewed.elapsed()
                ));
                return r;
            }
            _ => {
                r.renewals_failed += 1;
                continue; // straight to the next member
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    r
}

/// What the watchers' records must satisfy, given the committed history `reference`.
pub fn check(
    records: &[Recorded],
    reference: &[Change],
    acked: &[(String, String)],
    leases: &LeaseReport,
) -> Vec<String> {
    let mut problems = Vec::new();
    for r in records {
        problems.extend(r.anomalies.iter().cloned());
        if r.changes != reference {
            let at = r
                .changes
                .iter()
                .zip(reference)
                .position(|(a, b)| a != b)
                .unwrap_or(r.changes.len().min(reference.len()));
            problems.push(format!(
                "member {}'s watcher differs from the committed history at change {at} of {} (it saw {}): {:?} vs {:?}",
                r.member,
                reference.len(),
                r.changes.len(),
                r.changes.get(at),
                reference.get(at)
            ));
        }
    }
    let written: std::collections::HashSet<(&str, &str)> = reference
        .iter()
        .filter(|c| c.put)
        .map(|c| (c.key.as_str(), c.value.as_str()))
        .collect();
    for (key, value) in acked {
        if !written.contains(&(key.as_str(), value.as_str())) {
            problems.push(format!(
                "acknowledged write {key}={value} is in no watcher's history"
            ));
        }
    }
    if reference.iter().any(|c| c.key == "lease/kept" && !c.put) {
        problems
            .push("the key of the lease renewed throughout was deleted (the lease expired)".into());
    }
    if leases.abandoned.is_some()
        && !reference
            .iter()
            .any(|c| c.key == "lease/abandoned" && !c.put)
    {
        problems.push("the key of the lease nobody renewed was never deleted".into());
    }
    problems.extend(leases.anomalies.iter().cloned());
    problems
}
