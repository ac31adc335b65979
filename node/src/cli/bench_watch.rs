//! `concordctl bench-watch`: watch and lease load through etcd's gRPC API, so the same tool
//! measures ConcordKV and etcd alike.
//!
//! - `delivery`: W watchers on a prefix (spread over streams), writers putting keys under it
//!   with their send time in the value; reports how long each change took from the writer's
//!   send to each watcher (commit and delivery), p50/p99, and changes delivered per second.
//! - `idle`: opens W watchers and holds them, printing `ready` once all are created (the
//!   caller measures the server's memory then) and exiting after `--hold-secs`.
//! - `keepalive`: L leases renewed as fast as C connections can, one LeaseKeepAlive stream
//!   each; reports renewals per second.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use concord_proto::etcd::etcdserverpb as pb;
use concord_proto::etcd::etcdserverpb::watch_request::RequestUnion;
use serde_json::{json, Value};
use tonic::transport::Channel;

#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum Mode {
    Delivery,
    Idle,
    Keepalive,
}

#[derive(Clone, Debug, clap::Args)]
pub struct BenchWatchArgs {
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// etcd gRPC endpoints (host:port), watchers and connections spread over them.
    #[arg(long = "bench-endpoints", value_delimiter = ',', required = true)]
    pub endpoints: Vec<String>,
    #[arg(long, default_value = "1000")]
    pub watchers: usize,
    /// Watches per gRPC stream.
    #[arg(long, default_value = "10")]
    pub per_stream: usize,
    /// Writers (delivery) or connections (keepalive).
    #[arg(long, default_value = "1")]
    pub writers: usize,
    /// Changes written (delivery).
    #[arg(long, default_value = "2000")]
    pub changes: usize,
    #[arg(long, default_value = "1000")]
    pub leases: usize,
    #[arg(long, default_value = "10")]
    pub seconds: u64,
    #[arg(long, default_value = "30")]
    pub hold_secs: u64,
    #[arg(long)]
    pub label: Option<String>,
}

async fn channel(endpoint: &str) -> anyhow::Result<Channel> {
    let url = if endpoint.starts_with("http") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    tonic::transport::Endpoint::from_shared(url)?
        .connect()
        .await
        .with_context(|| format!("connecting to {endpoint}"))
}

/// Opens one stream of `n` watches on `prefix`; returns once every watch is created.
async fn open_stream(
    endpoint: &str,
    prefix: &[u8],
    n: usize,
) -> anyhow::Result<(
    tokio::sync::mpsc::Sender<pb::WatchRequest>,
    tonic::Streaming<pb::WatchResponse>,
)> {
    let mut client = pb::watch_client::WatchClient::new(channel(endpoint).await?);
    let (tx, rx) = tokio::sync::mpsc::channel(n.max(1));
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    for _ in 0..n {
        tx.send(pb::WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(pb::WatchCreateRequest {
                key: prefix.to_vec(),
                range_end: end.clone(),
                ..Default::default()
            })),
        })
        .await?;
    }
    let mut stream = client
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut created = 0;
    while created < n {
        match stream.message().await? {
            Some(r) if r.created => created += 1,
            Some(_) => {}
            None => bail!("the watch stream ended before its watches were created"),
        }
    }
    Ok((tx, stream))
}

fn micros_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

pub async fn run(args: BenchWatchArgs) -> anyhow::Result<Value> {
    let label = args.label.clone().unwrap_or_else(|| "target".into());
    let eps = &args.endpoints;
    match args.mode {
        Mode::Delivery | Mode::Idle => {
            let prefix = format!("bw-{:x}/", rand::random::<u32>()).into_bytes();
            let streams = args.watchers.div_ceil(args.per_stream.max(1));
            let mut opened = Vec::new();
            for s in 0..streams {
                let n = args.per_stream.min(args.watchers - s * args.per_stream);
                opened.push(open_stream(&eps[s % eps.len()], &prefix, n).await?);
            }
            if args.mode == Mode::Idle {
                println!("ready {} watchers", args.watchers);
                tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
                return Ok(json!({ "target": label, "mode": "idle", "watchers": args.watchers }));
            }
            let epoch = Instant::now();
            let expected = args.changes * args.watchers;
            let seen = Arc::new(AtomicUsize::new(0));
            let mut readers = Vec::new();
            for (_tx, mut stream) in opened {
                let seen = seen.clone();
                readers.push(tokio::spawn(async move {
                    let _keep = _tx;
                    let mut lat = Vec::new();
                    while seen.load(Ordering::Relaxed) < expected {
                        let Ok(Ok(Some(r))) =
                            tokio::time::timeout(Duration::from_secs(10), stream.message()).await
                        else {
                            break;
                        };
                        let now = micros_since(epoch);
                        for e in &r.events {
                            let sent: u64 =
                                e.kv.as_ref()
                                    .and_then(|kv| std::str::from_utf8(&kv.value).ok())
                                    .and_then(|v| v.parse().ok())
                                    .unwrap_or(now);
                            lat.push(now.saturating_sub(sent));
                        }
                        seen.fetch_add(r.events.len(), Ordering::Relaxed);
                    }
                    lat
                }));
            }
            let next = Arc::new(AtomicUsize::new(0));
            let started = Instant::now();
            let mut writers = Vec::new();
            for w in 0..args.writers {
                let mut kv = pb::kv_client::KvClient::new(channel(&eps[w % eps.len()]).await?);
                let (next, prefix, total) = (next.clone(), prefix.clone(), args.changes);
                writers.push(tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            return Ok::<_, tonic::Status>(());
                        }
                        let mut key = prefix.clone();
                        key.extend_from_slice(format!("{i}").as_bytes());
                        let value = micros_since(epoch).to_string().into_bytes();
                        kv.put(pb::PutRequest {
                            key,
                            value,
                            ..Default::default()
                        })
                        .await?;
                    }
                }));
            }
            for w in writers {
                w.await??;
            }
            let written = started.elapsed();
            let mut all = Vec::with_capacity(expected);
            for r in readers {
                all.extend(r.await?);
            }
            let delivered = started.elapsed();
            all.sort_unstable();
            Ok(json!({
                "target": label, "mode": "delivery", "watchers": args.watchers,
                "writers": args.writers, "changes": args.changes,
                "delivered": all.len(), "expected": expected,
                "writes_per_s": args.changes as f64 / written.as_secs_f64(),
                "events_per_s": all.len() as f64 / delivered.as_secs_f64(),
                "p50_ms": pct(&all, 0.5), "p99_ms": pct(&all, 0.99), "max_ms": pct(&all, 1.0),
            }))
        }
        Mode::Keepalive => {
            let mut lease = pb::lease_client::LeaseClient::new(channel(&eps[0]).await?);
            let mut ids = Vec::new();
            for _ in 0..args.leases {
                let g = lease
                    .lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 0 })
                    .await?
                    .into_inner();
                ids.push(g.id);
            }
            let ids = Arc::new(ids);
            let stop = Arc::new(AtomicBool::new(false));
            let renewed = Arc::new(AtomicUsize::new(0));
            let mut tasks = Vec::new();
            for c in 0..args.writers {
                let mut client =
                    pb::lease_client::LeaseClient::new(channel(&eps[c % eps.len()]).await?);
                let (ids, stop, renewed, conns) =
                    (ids.clone(), stop.clone(), renewed.clone(), args.writers);
                tasks.push(tokio::spawn(async move {
                    let (tx, rx) = tokio::sync::mpsc::channel(1);
                    let mut i = c;
                    let mut next = || {
                        let id = ids[i % ids.len()];
                        i += conns;
                        pb::LeaseKeepAliveRequest { id }
                    };
                    // The first request before the call: a gRPC server may send its response
                    // headers only with its first answer (etcd's does).
                    if tx.send(next()).await.is_err() {
                        return Ok(());
                    }
                    let mut answers = client
                        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                        .await?
                        .into_inner();
                    loop {
                        let answer =
                            tokio::time::timeout(Duration::from_secs(5), answers.message()).await;
                        match answer {
                            Ok(Ok(Some(a))) if a.ttl > 0 => {
                                renewed.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => break,
                        }
                        if stop.load(Ordering::Relaxed) || tx.send(next()).await.is_err() {
                            break;
                        }
                    }
                    Ok::<_, tonic::Status>(())
                }));
            }
            let started = Instant::now();
            tokio::time::sleep(Duration::from_secs(args.seconds)).await;
            stop.store(true, Ordering::Relaxed);
            let elapsed = started.elapsed();
            for t in tasks {
                t.await??;
            }
            let n = renewed.load(Ordering::Relaxed);
            Ok(json!({
                "target": label, "mode": "keepalive", "leases": args.leases,
                "connections": args.writers, "renewals": n,
                "renewals_per_s": n as f64 / elapsed.as_secs_f64(),
            }))
        }
    }
}
