//! The concord-operator binary: `run` (default) or `crd`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use clap::{Parser, Subcommand};
use kube::runtime::events::Reporter;

use concord_operator::admin::GrpcAdmin;
use concord_operator::metrics::Metrics;
use concord_operator::naming::MANAGER;
use concord_operator::reconcile::Context;
use kube::Client;

#[derive(Parser)]
#[command(
    name = "concord-operator",
    version,
    about = "Kubernetes operator for ConcordKV"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator (the default).
    Run,
    /// Print the ConcordCluster CRD YAML.
    Crd,
}

#[derive(Parser)]
struct RunArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "CONCORD_OPERATOR_HTTP", default_value = "0.0.0.0:8080")]
    http: SocketAddr,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Elect a leader through a Lease, so several replicas can run (only one acts).
    #[arg(long, env = "CONCORD_OPERATOR_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the leader-election Lease (default: the pod's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Stop a rollout when a restarted pod is not ready after this many seconds.
    #[arg(long, env = "CONCORD_OPERATOR_STALL_SECONDS", default_value_t = 600)]
    stall_seconds: u64,
    /// Log format: text or json.
    #[arg(long, env = "CONCORD_OPERATOR_LOG_FORMAT", default_value = "json")]
    log_format: String,
}

#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    ready: Arc<std::sync::atomic::AtomicBool>,
}

async fn serve_http(addr: SocketAddr, state: HttpState) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|State(s): State<HttpState>| async move { s.metrics.render() }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<HttpState>| async move {
                if s.ready.load(std::sync::atomic::Ordering::Relaxed) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting")
                }
            }),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    axum::serve(listener, app).await?;
    Ok(())
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONCORD_OPERATOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Crd) = cli.command {
        print!("{}", concord_operator::crd_yaml());
        return Ok(());
    }
    let args = cli.run;
    init_logging(&args.log_format);
    let client = Client::try_default()
        .await
        .context("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let http = tokio::spawn(serve_http(
        args.http,
        HttpState {
            metrics: metrics.clone(),
            ready: ready.clone(),
        },
    ));

    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("concord-operator-{}", std::process::id()));
    // Standby replicas wait here; the Lease holder runs the controller. Losing the Lease ends
    // the process so that two replicas never act at once (Kubernetes restarts it).
    let lease = if args.leader_elect {
        let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), MANAGER)
            .with_namespace(&args.lease_namespace)
            .with_identity(&identity)
            .with_duration(15)
            .with_grace(5)
            .build()
            .await
            .context("cannot set up the leader-election Lease")?;
        let (mut rx, task) = manager.watch().await;
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(%identity, "waiting for the leader-election Lease");
        while !*rx.borrow_and_update() {
            rx.changed().await.context("lease manager stopped")?;
        }
        tracing::info!(%identity, "leading");
        Some((rx, task))
    } else {
        None
    };
    ready.store(true, std::sync::atomic::Ordering::Relaxed);

    let ctx = Arc::new(Context {
        client: client.clone(),
        admin: Arc::new(GrpcAdmin::default()),
        metrics,
        reporter: Reporter {
            controller: MANAGER.into(),
            instance: Some(identity),
        },
        stall_after: Duration::from_secs(args.stall_seconds),
        status_writes: Default::default(),
    });
    let controller = concord_operator::controller::run(client, ctx, args.namespace.clone());
    match lease {
        Some((mut rx, _task)) => {
            let lost = async move {
                loop {
                    if rx.changed().await.is_err() || !*rx.borrow() {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = controller => {}
                _ = lost => {
                    tracing::error!("lost the leader-election Lease; exiting");
                    std::process::exit(1);
                }
                r = http => { r??; }
            }
        }
        None => {
            tokio::select! {
                _ = controller => {}
                r = http => { r??; }
            }
        }
    }
    Ok(())
}
