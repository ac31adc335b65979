//! `concordctl bench`: a closed-loop load generator. Each connection is one worker issuing one
//! request at a time; it reports throughput and latency percentiles. The same load can be aimed
//! at etcd (through its JSON gateway or its gRPC API) so the two are measured with one tool:
//! `--target etcd-grpc` speaks etcd's own protocol to ConcordKV's etcd port and to etcd alike.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine;
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum BenchOp {
    /// Unique keys, one write each.
    Write,
    /// Linearizable reads of pre-written keys.
    Read,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum Target {
    /// ConcordKV's seed HTTP API (`/api/set`, `/api/get`).
    Concord,
    /// etcd v3 JSON gateway (`/v3/kv/put`, `/v3/kv/range`).
    Etcd,
    /// etcd v3 gRPC (`KV.Put`, `KV.Range`), one HTTP/2 connection per worker.
    EtcdGrpc,
}

#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "write")]
    pub op: BenchOp,
    /// Concurrent connections (one in-flight request each).
    #[arg(long, default_value = "16")]
    pub connections: usize,
    /// Total requests.
    #[arg(long, default_value = "10000")]
    pub requests: usize,
    /// Value size in bytes.
    #[arg(long, default_value = "64")]
    pub value_size: usize,
    #[arg(long, value_enum, default_value = "concord")]
    pub target: Target,
    /// Endpoints to spread connections over (default: the global --endpoints).
    #[arg(long = "bench-endpoints", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Name of the system measured, for the report (default: the target).
    #[arg(long)]
    pub label: Option<String>,
    /// Key prefix (default: `bench-<random>-`); a fixed one lets a later run read what an
    /// earlier one wrote.
    #[arg(long)]
    pub key_prefix: Option<String>,
    /// TLS for https endpoints: concordctl's global --cacert/--cert/--key.
    #[arg(skip)]
    pub tls: crate::client::ClientTls,
}

#[derive(Debug)]
pub struct Report {
    pub op: BenchOp,
    pub target: Target,
    pub label: String,
    pub connections: usize,
    pub ok: usize,
    pub errors: usize,
    pub elapsed: Duration,
    /// Sorted latencies in microseconds.
    pub latencies_us: Vec<u64>,
}

impl Report {
    fn pct(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let idx = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[idx] as f64 / 1000.0
    }

    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "target": self.label,
            "protocol": target_name(self.target),
            "op": format!("{:?}", self.op).to_lowercase(),
            "connections": self.connections,
            "ok": self.ok,
            "errors": self.errors,
            "seconds": self.elapsed.as_secs_f64(),
            "throughput": self.throughput(),
            "p50_ms": self.pct(0.50),
            "p90_ms": self.pct(0.90),
            "p99_ms": self.pct(0.99),
            "max_ms": self.pct(1.0),
        })
    }

    pub fn to_text(&self) -> String {
        format!(
            "{} ({}) {:?} conns={} ok={} errors={} in {:.2}s: {:.0} ops/s, p50 {:.2}ms p90 {:.2}ms p99 {:.2}ms max {:.2}ms",
            self.label,
            target_name(self.target),
            self.op,
            self.connections,
            self.ok,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.throughput(),
            self.pct(0.5),
            self.pct(0.9),
            self.pct(0.99),
            self.pct(1.0)
        )
    }
}

fn target_name(t: Target) -> &'static str {
    match t {
        Target::Concord => "concord",
        Target::Etcd => "etcd",
        Target::EtcdGrpc => "etcd-grpc",
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

type EtcdKv = concord_proto::etcd::etcdserverpb::kv_client::KvClient<tonic::transport::Channel>;

/// One worker's connection: HTTP (the seed API or etcd's JSON gateway) or etcd's gRPC.
enum Op {
    Http(HttpOp),
    Grpc(EtcdKv),
}

struct HttpOp {
    target: Target,
    http: reqwest::Client,
    endpoint: String,
}

impl Op {
    async fn connect(
        target: Target,
        endpoint: &str,
        tls: &crate::client::ClientTls,
    ) -> anyhow::Result<Op> {
        let endpoint = normalize(endpoint);
        if target == Target::EtcdGrpc {
            // Over TLS the connection is ours (rustls); tonic speaks HTTP/2 over it.
            let (url, tls_config) = match endpoint.strip_prefix("https://") {
                Some(rest) => (format!("http://{rest}"), tls.grpc_config()?),
                None => (endpoint.clone(), None),
            };
            let ep = tonic::transport::Endpoint::from_shared(url)
                .with_context(|| format!("endpoint {endpoint}"))?
                .tcp_nodelay(true)
                .timeout(Duration::from_secs(30));
            let channel = match tls_config {
                Some(config) => {
                    ep.connect_with_connector(crate::tls::TlsConnector {
                        config: crate::tls::DialConfig::Fixed(config),
                        connect_timeout: Duration::from_secs(10),
                    })
                    .await
                }
                None => ep.connect().await,
            }
            .with_context(|| format!("connecting to {endpoint}"))?;
            return Ok(Op::Grpc(EtcdKv::new(channel)));
        }
        let http = tls
            .http_builder()?
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Op::Http(HttpOp {
            target,
            http,
            endpoint,
        }))
    }

    async fn write(&self, key: &str, value: &str) -> anyhow::Result<()> {
        match self {
            Op::Grpc(kv) => {
                let req = concord_proto::etcd::etcdserverpb::PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.as_bytes().to_vec(),
                    ..Default::default()
                };
                kv.clone().put(req).await?;
                Ok(())
            }
            Op::Http(h) => {
                let req = match h.target {
                    Target::Concord => h
                        .http
                        .post(format!("{}/api/set", h.endpoint))
                        .json(&json!({ "key": key, "value": value })),
                    _ => h
                        .http
                        .post(format!("{}/v3/kv/put", h.endpoint))
                        .json(&json!({ "key": b64(key), "value": b64(value) })),
                };
                send(req).await
            }
        }
    }

    async fn read(&self, key: &str) -> anyhow::Result<()> {
        match self {
            Op::Grpc(kv) => {
                let req = concord_proto::etcd::etcdserverpb::RangeRequest {
                    key: key.as_bytes().to_vec(),
                    ..Default::default()
                };
                kv.clone().range(req).await?;
                Ok(())
            }
            Op::Http(h) => {
                let req = match h.target {
                    Target::Concord => h.http.get(format!(
                        "{}/api/get?key={}",
                        h.endpoint,
                        crate::client::encode(key)
                    )),
                    _ => h
                        .http
                        .post(format!("{}/v3/kv/range", h.endpoint))
                        .json(&json!({ "key": b64(key) })),
                };
                send(req).await
            }
        }
    }
}

/// Sends and reads the whole answer; anything but a 2xx is an error.
async fn send(req: reqwest::RequestBuilder) -> anyhow::Result<()> {
    let resp = req.send().await?;
    if !resp.status().is_success() {
        bail!("HTTP {}", resp.status());
    }
    resp.bytes().await?;
    Ok(())
}

fn normalize(e: &str) -> String {
    let e = e.trim().trim_end_matches('/');
    if e.starts_with("http") {
        e.to_string()
    } else {
        format!("http://{e}")
    }
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    run_against(args, &args.endpoints).await
}

pub async fn run_against(args: &BenchArgs, endpoints: &[String]) -> anyhow::Result<Report> {
    if endpoints.is_empty() {
        bail!("no endpoints: pass --bench-endpoints");
    }
    if args.connections == 0 || args.requests == 0 {
        bail!("connections and requests must be positive");
    }
    let prefix = match &args.key_prefix {
        Some(p) => p.clone(),
        None => format!("bench-{:08x}-", rand::random::<u32>()),
    };
    let value = "x".repeat(args.value_size);
    let mut ops = Vec::new();
    for i in 0..args.connections {
        let op = Op::connect(args.target, &endpoints[i % endpoints.len()], &args.tls).await?;
        ops.push(Arc::new(op));
    }
    let read_keys = args.requests.min(1000);
    if args.op == BenchOp::Read {
        for i in 0..read_keys {
            ops[0]
                .write(&format!("{prefix}{i}"), &value)
                .await
                .context("preloading keys for the read benchmark")?;
        }
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for op in ops {
        let next = next.clone();
        let prefix = prefix.clone();
        let value = value.clone();
        let kind = args.op;
        let total = args.requests;
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let t = Instant::now();
                let res = match kind {
                    BenchOp::Write => op.write(&format!("{prefix}w{n}"), &value).await,
                    BenchOp::Read => op.read(&format!("{prefix}{}", n % read_keys)).await,
                };
                match res {
                    Ok(()) => lat.push(t.elapsed().as_micros() as u64),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut latencies_us = Vec::with_capacity(args.requests);
    let mut errors = 0;
    for w in workers {
        let (lat, e) = w.await?;
        latencies_us.extend(lat);
        errors += e;
    }
    let elapsed = started.elapsed();
    latencies_us.sort_unstable();
    Ok(Report {
        op: args.op,
        target: args.target,
        label: args
            .label
            .clone()
            .unwrap_or_else(|| target_name(args.target).to_string()),
        connections: args.connections,
        ok: latencies_us.len(),
        errors,
        elapsed,
        latencies_us,
    })
}
