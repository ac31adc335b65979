//! `concordctl bench`: a closed-loop load generator. Each connection is one worker issuing one
//! request at a time; it reports throughput and latency percentiles. The same load can be aimed
//! at etcd (through its JSON gateway) so the two are measured with one tool.

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
    Concord,
    /// etcd v3 JSON gateway (`/v3/kv/put`, `/v3/kv/range`).
    Etcd,
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
}

#[derive(Debug)]
pub struct Report {
    pub op: BenchOp,
    pub target: Target,
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
            "target": format!("{:?}", self.target).to_lowercase(),
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
            "{:?} {:?} conns={} ok={} errors={} in {:.2}s: {:.0} ops/s, p50 {:.2}ms p90 {:.2}ms p99 {:.2}ms max {:.2}ms",
            self.target,
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

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

struct Op {
    target: Target,
    http: reqwest::Client,
    endpoint: String,
}

impl Op {
    async fn write(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let req = match self.target {
            Target::Concord => self
                .http
                .post(format!("{}/api/set", self.endpoint))
                .json(&json!({ "key": key, "value": value })),
            Target::Etcd => self
                .http
                .post(format!("{}/v3/kv/put", self.endpoint))
                .json(&json!({ "key": b64(key), "value": b64(value) })),
        };
        let resp = req.send().await?;
        if !resp.status().is_success() {
            bail!("HTTP {}", resp.status());
        }
        resp.bytes().await?;
        Ok(())
    }

    async fn read(&self, key: &str) -> anyhow::Result<()> {
        let req = match self.target {
            Target::Concord => self.http.get(format!(
                "{}/api/get?key={}",
                self.endpoint,
                crate::client::encode(key)
            )),
            Target::Etcd => self
                .http
                .post(format!("{}/v3/kv/range", self.endpoint))
                .json(&json!({ "key": b64(key) })),
        };
        let resp = req.send().await?;
        if !resp.status().is_success() {
            bail!("HTTP {}", resp.status());
        }
        resp.bytes().await?;
        Ok(())
    }
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
    let run_id = format!("{:08x}", rand::random::<u32>());
    let value = "x".repeat(args.value_size);
    let mut ops = Vec::new();
    for i in 0..args.connections {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()?;
        ops.push(Arc::new(Op {
            target: args.target,
            http,
            endpoint: normalize(&endpoints[i % endpoints.len()]),
        }));
    }
    let read_keys = args.requests.min(1000);
    if args.op == BenchOp::Read {
        for i in 0..read_keys {
            ops[0]
                .write(&format!("bench-{run_id}-{i}"), &value)
                .await
                .context("preloading keys for the read benchmark")?;
        }
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for op in ops {
        let next = next.clone();
        let run_id = run_id.clone();
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
                    BenchOp::Write => op.write(&format!("bench-{run_id}-w{n}"), &value).await,
                    BenchOp::Read => op.read(&format!("bench-{run_id}-{}", n % read_keys)).await,
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
        connections: args.connections,
        ok: latencies_us.len(),
        errors,
        elapsed,
        latencies_us,
    })
}
