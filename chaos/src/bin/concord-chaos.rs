//! `concord-chaos`: run a ConcordKV cluster under faults and check the history.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use concord_chaos::driver::{run, RunConfig};
use concord_chaos::nemesis::{NemesisKind, ALL};

#[derive(Parser)]
#[command(
    name = "concord-chaos",
    about = "Fault injection + linearizability checking for ConcordKV"
)]
struct Args {
    #[arg(long, default_value = "3")]
    nodes: usize,
    #[arg(long, default_value = "6")]
    clients: usize,
    /// A small key set, so clients contend.
    #[arg(long, default_value = "4")]
    keys: usize,
    /// Seconds of load and faults.
    #[arg(long, default_value = "60")]
    duration: u64,
    /// Seed of the fault schedule (default: random; printed so a failure can be replayed).
    #[arg(long)]
    seed: Option<u64>,
    /// Comma-separated: kill, pause, membership, disk (default: all).
    #[arg(long, value_delimiter = ',')]
    nemesis: Vec<String>,
    /// Seconds between faults.
    #[arg(long, default_value = "3")]
    interval: u64,
    /// The concord-node binary (default: next to this one).
    #[arg(long)]
    node_bin: Option<PathBuf>,
    /// Where to write the JSON report.
    #[arg(long, default_value = "chaos-report.json")]
    report: PathBuf,
    /// TLS on every port (client certificates required) and auth on; the clients act as root.
    #[arg(long)]
    secure: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let a = Args::parse();
    let nemeses: Result<Vec<NemesisKind>, String> = if a.nemesis.is_empty() {
        Ok(ALL.to_vec())
    } else {
        a.nemesis.iter().map(|s| s.parse()).collect()
    };
    let nemeses = match nemeses {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let node_bin = a.node_bin.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("concord-node")))
            .unwrap_or_else(|| PathBuf::from("concord-node"))
    });
    let seed = a.seed.unwrap_or_else(rand::random);
    println!(
        "seed {seed}; nemeses {nemeses:?}; {}s; report {}",
        a.duration,
        a.report.display()
    );
    let cfg = RunConfig {
        nodes: a.nodes,
        clients: a.clients,
        keys: a.keys,
        duration: Duration::from_secs(a.duration),
        seed,
        nemeses,
        interval: Duration::from_secs(a.interval),
        node_bin,
        report_path: Some(a.report.clone()),
        secure: a.secure,
    };
    match run(cfg).await {
        Ok(r) => {
            println!("operations: {} {:?}", r.operations, r.by_outcome);
            for e in &r.nemesis_events {
                println!("  {:>7}ms  {}", e.at_ms, e.what);
            }
            for a in &r.anomalies {
                println!("ANOMALY: {a}");
            }
            for (k, why) in &r.inconclusive {
                println!("INCONCLUSIVE: key {k}: {why}");
            }
            println!(
                "verdict: {}",
                if r.linearizable {
                    "linearizable"
                } else {
                    "NOT LINEARIZABLE (see the report)"
                }
            );
            if r.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("chaos run failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
