//! Starting, bootstrapping and stopping a node.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use concord_proto::admin_server::AdminServer;
use concord_proto::raft_peer_server::RaftPeerServer;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::{ServerState, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use crate::api::http::listener::{serve as serve_http, ConnectionLimits};
use crate::app::App;
use crate::app::StorageHandles;
use crate::config::{bind_addr, Config};
use crate::lease::LeaseClock;
use crate::membership::AdminService;
use crate::raft::channels::Channels;
use crate::raft::channels::MAX_MESSAGE_BYTES;
use crate::raft::network::NetworkFactory;
use crate::raft::peer_service::PeerService;
use crate::raft::{node_id_for_name, Member, NodeId, Raft};
use crate::storage::identity::{self, ClusterId};
use crate::storage::state_machine::ApplyHooks;
use crate::storage::{LogStore, SnapshotStore, StateMachineStore};
use crate::telemetry::metrics::metrics;
use crate::watch::{HubLimits, WatchHub};

const LOCK_FILE: &str = "LOCK";

/// A statically configured cluster's id is derived from its peer list, so every node agrees
/// without talking; a single node gets a random one. A joining node has none until it joins.
fn initial_cluster_id(config: &Config) -> Option<String> {
    if config.join {
        return None;
    }
    if config.peers.is_empty() {
        return Some(format!("single-{:016x}", rand::random::<u64>()));
    }
    let mut names: Vec<String> = config
        .peers
        .iter()
        .map(|p| format!("{}={}", p.member.name, p.member.addr))
        .collect();
    names.sort();
    Some(format!(
        "static-{:013x}",
        node_id_for_name(&names.join(","))
    ))
}

/// Holds an exclusive lock on the data dir for the life of the process, so two nodes can
/// never write one log.
fn lock_data_dir(dir: &Path) -> anyhow::Result<fs::File> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))?;
    file.try_lock().map_err(|e| {
        anyhow::anyhow!(
            "data dir {} is in use by another concord-node process ({e})",
            dir.display()
        )
    })?;
    Ok(file)
}

fn raft_config(config: &Config) -> anyhow::Result<openraft::Config> {
    let r = &config.raft;
    let c = openraft::Config {
        cluster_name: "concordkv".into(),
        heartbeat_interval: r.heartbeat.as_millis() as u64,
        election_timeout_min: r.election_timeout_min.as_millis() as u64,
        election_timeout_max: r.election_timeout_max.as_millis() as u64,
        install_snapshot_timeout: 30_000,
        // Snapshots are taken by `snapshot_and_purge`, by entries and bytes (`snapshot_policy`).
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: r.logs_to_keep_after_snapshot,
        enable_pre_vote: Some(true),
        // A follower whose log lost its tail to a disk fault (a torn or corrupt tail cut off at
        // start) must not panic the leader's replication: without this openraft aborts the
        // leader, then the next one, and one bad disk takes the whole cluster down (found by the
        // chaos suite's disk nemesis). With it the leader re-replicates from what the follower
        // really has.
        allow_log_reversion: Some(true),
        // openraft's default lets a restarted leader resume its term without an election. Our
        // state machine is rebuilt from the log at start and the commit index is not persisted,
        // so a resumed leader could serve reads from a stale map, and one whose log tail was
        // damaged would overwrite followers' copies of entries it lost. Always elect.
        enable_leader_restore: Some(false),
        ..Default::default()
    };
    c.validate().context("raft configuration")
}

/// A started node. Dropping it does not stop it; call [`Node::shutdown`].
pub struct Node {
    pub app: Arc<App>,
    stop_tx: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    listener_failed: tokio::sync::mpsc::Receiver<String>,
    _lock: fs::File,
}

impl Node {
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let lock = lock_data_dir(&config.data_dir)?;
        let identity = identity::load_or_create(
            &config.data_dir,
            &config.name,
            match (config.join, config.member_id) {
                (true, Some(id)) => identity::NewId::Assigned(id),
                (true, None) => identity::NewId::Incarnation,
                (false, _) => identity::NewId::FromName,
            },
        )?;
        crate::telemetry::set_log_node_id(identity.node_id);
        let cluster_id = ClusterId::load(&config.data_dir)?;
        if let Some(id) = initial_cluster_id(&config) {
            cluster_id.set_if_unset(&id)?;
        }
        let mut log = LogStore::open(&config.data_dir.join("raft"), config.raft.segment_bytes)
            .context("opening the raft log")?;
        let snapshots = SnapshotStore::open(&config.data_dir.join("snapshots"))?;
        let watches = Arc::new(WatchHub::new(HubLimits {
            stream_queue_bytes: config.watch.stream_queue_bytes,
            max_watchers: config.watch.max_watchers,
        }));
        let lease_clock = Arc::new(parking_lot::Mutex::new(LeaseClock::default()));
        let sm = StateMachineStore::open(
            snapshots.clone(),
            ApplyHooks {
                watches: watches.clone(),
                lease_clock: lease_clock.clone(),
            },
        )
        .context("opening snapshots")?;
        let state = sm.shared();
        let repaired_tail_bytes = log.repaired_tail_bytes;
        // A read handle for /api/logs; openraft owns the store itself.
        let reader = openraft::storage::RaftLogStorage::get_log_reader(&mut log).await;
        let tls =
            Arc::new(crate::tls::Tls::load(&config.tls).context("loading the TLS certificates")?);
        let channels = Channels::with_tls(tls.clone());
        let network = NetworkFactory {
            channels: channels.clone(),
            cluster_id: cluster_id.clone(),
        };
        // Raft's tasks inherit this span, so every openraft log line names the node.
        let raft_span = tracing::info_span!("raft", node = %config.name, id = identity.node_id);
        let raft: Raft = Raft::new(
            identity.node_id,
            Arc::new(raft_config(&config)?),
            network,
            log,
            sm,
        )
        .instrument(raft_span)
        .await
        .context("starting raft")?;

        let grpc_listener = TcpListener::bind(bind_addr(&config.listen_addr))
            .await
            .with_context(|| format!("binding peer address {}", config.listen_addr))?;
        let http_listener = TcpListener::bind(bind_addr(&config.api_addr))
            .await
            .with_context(|| format!("binding API address {}", config.api_addr))?;
        let etcd_listener = TcpListener::bind(bind_addr(&config.etcd_addr))
            .await
            .with_context(|| format!("binding etcd API address {}", config.etcd_addr))?;

        let app = Arc::new(App::new(
            config,
            identity,
            raft,
            cluster_id,
            channels,
            tls.clone(),
            StorageHandles {
                state,
                log: reader,
                snapshots,
                watches,
                lease_clock,
            },
        ));
        if repaired_tail_bytes > 0 {
            let window = (app.config.raft.election_timeout_max * 3).max(Duration::from_secs(3));
            tracing::warn!(
                bytes = repaired_tail_bytes,
                window_ms = window.as_millis() as u64,
                "the log tail was damaged and cut off at start; not voting until a leader has replicated to this node"
            );
            app.abstain_from_votes_for(window);
            // Nor campaign: its own vote for itself plus one peer as stale as it is would elect
            // a leader without the lost entries. Elections resume once a leader has replicated
            // to it, or after the window.
            app.raft.runtime_config().elect(false);
            let a = app.clone();
            tokio::spawn(async move {
                while a.abstaining().is_some() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                a.raft.runtime_config().elect(true);
                tracing::info!("caught up after log repair: voting and elections resumed");
            });
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();

        let admin = tonic::service::interceptor::InterceptedService::new(
            AdminServer::new(AdminService { app: app.clone() }),
            crate::membership::admin_service::admin_gate(app.clone()),
        );
        let svc = tonic::service::interceptor::InterceptedService::new(
            RaftPeerServer::new(PeerService { app: app.clone() })
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            super::peer_service::charge_forwarded_writes(app.clone()),
        );
        // A listener that dies leaves a node that looks alive but serves nothing: its failure
        // is reported here, and the process exits non-zero so the supervisor restarts it.
        let (failed_tx, failed_rx) = tokio::sync::mpsc::channel::<String>(2);
        let mut grpc_stop = stop_rx.clone();
        let grpc_failed = failed_tx.clone();
        tasks.push(tokio::spawn(async move {
            // TLS (or plaintext, as the peer TLS mode takes it) before tonic sees a connection.
            let incoming =
                crate::tls::PeerIncoming::spawn(grpc_listener, tls.clone(), grpc_stop.clone());
            let res = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .add_service(svc)
                .add_service(admin)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = grpc_stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = res {
                let _ = grpc_failed
                    .send(format!("peer gRPC server failed: {e}"))
                    .await;
            }
        }));

        let router = crate::api::http::router(app.clone());
        let http_stop = stop_rx.clone();
        let http_failed = failed_tx.clone();
        let connection_limits = ConnectionLimits::from_limits(&app.config.limits);
        let http_tls = app.tls.clone();
        tasks.push(tokio::spawn(async move {
            let port = (http_tls, crate::tls::ClientPort::Http);
            let res = serve_http(http_listener, router, connection_limits, port, http_stop).await;
            if let Err(e) = res {
                let _ = http_failed
                    .send(format!("HTTP API server failed: {e}"))
                    .await;
            }
        }));

        let etcd_stop = stop_rx.clone();
        let etcd_app = app.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = crate::api::etcd::serve(etcd_app, etcd_listener, etcd_stop).await {
                let _ = failed_tx.send(format!("etcd API server failed: {e}")).await;
            }
        }));

        tasks.push(tokio::spawn(export_raft_metrics(
            app.clone(),
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(snapshot_and_purge(
            app.clone(),
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(crate::lease::expire_leases(
            app.clone(),
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(auto_compact(app.clone(), stop_rx.clone())));
        tasks.push(tokio::spawn(app.tls.clone().reload_until(stop_rx.clone())));
        tasks.push(tokio::spawn(measure_data_dir(
            app.config.data_dir.clone(),
            stop_rx.clone(),
        )));

        if !app.config.join {
            bootstrap(&app).await?;
        }
        tracing::info!(
            node = %app.config.name,
            id = app.id(),
            cluster = %app.cluster_id.wire(),
            join_mode = app.config.join,
            peer_addr = %app.config.listen_addr,
            api_addr = %app.config.api_addr,
            etcd_addr = %app.config.etcd_addr,
            data_dir = %app.config.data_dir.display(),
            "concord-node started"
        );
        Ok(Node {
            app,
            stop_tx,
            tasks,
            listener_failed: failed_rx,
            _lock: lock,
        })
    }

    /// Resolves when a listener (peer gRPC or HTTP) has stopped on its own, with why. A node
    /// without one of them must not keep running: it would pass for alive while serving nothing.
    pub async fn listener_failure(&mut self) -> String {
        match self.listener_failed.recv().await {
            Some(reason) => reason,
            // Both senders gone without a word: the listeners ended because shutdown began.
            None => std::future::pending().await,
        }
    }

    /// Graceful stop: refuse new requests, hand leadership to a caught-up peer, drain, stop Raft.
    pub async fn shutdown(self) {
        let app = &self.app;
        app.begin_shutdown();
        transfer_leadership_away(app).await;
        let _ = self.stop_tx.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        let span = tracing::info_span!("raft", node = %app.config.name, id = app.id());
        if let Err(e) = app.raft.shutdown().instrument(span).await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        tracing::info!("concord-node stopped");
    }
}

/// Forms the cluster on first start: from the static peer list, or as a single node. Raft
/// refuses to initialize twice, so restarts never re-initialize; every node of a static cluster
/// proposes the same membership, which openraft allows.
async fn bootstrap(app: &App) -> anyhow::Result<()> {
    if app.raft.is_initialized().await? {
        return Ok(());
    }
    let members: BTreeMap<NodeId, Member> = if app.config.peers.is_empty() {
        BTreeMap::from([(app.id(), app.config.own_member())])
    } else {
        app.config
            .peers
            .iter()
            .map(|p| (p.id, p.member.clone()))
            .collect()
    };
    tracing::info!(members = members.len(), "initializing a new cluster");
    match app.raft.initialize(members).await {
        Ok(()) => Ok(()),
        Err(openraft::errors::RaftError::APIError(e)) => {
            tracing::info!(reason = %e, "cluster already initialized");
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("initializing the cluster: {e}")),
    }
}

async fn transfer_leadership_away(app: &App) {
    if !app.is_leader()
        || app
            .metrics()
            .membership_config
            .membership()
            .voter_ids()
            .count()
            < 2
    {
        return;
    }
    tracing::info!("shutting down: transferring leadership");
    let req = concord_proto::TransferLeaderRequest { to: 0 };
    match tokio::time::timeout(
        Duration::from_secs(3),
        app.admin_transfer_leader(req, crate::membership::Hop::Client),
    )
    .await
    {
        Ok(Ok(r)) => tracing::info!(outcome = %r.message, "leadership handed over"),
        Ok(Err(e)) => tracing::warn!(error = %e, "leadership transfer failed; stopping anyway"),
        Err(_) => tracing::warn!("leadership did not move within 3s; stopping anyway"),
    }
}

/// Takes snapshots as `raft::snapshot_policy` decides (entries and log bytes since the last
/// one against its size), and keeps the log entries held in memory within
/// `raft.maxLogMemoryBytes` by evicting applied ones to disk (read back if a follower needs
/// them).
async fn snapshot_and_purge(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    use super::snapshot_policy::{LogView, SnapshotPolicy};
    const EVERY: Duration = Duration::from_millis(200);
    let r = &app.config.raft;
    let policy = SnapshotPolicy {
        min_entries: r.snapshot_threshold,
        size_ratio: r.snapshot_log_ratio,
    };
    let budget = r.max_log_memory_bytes;
    let mut requested: Option<(u64, std::time::Instant)> = None;
    let mut last_size: Option<(u64, u64)> = None;
    loop {
        let m = app.metrics();
        let applied = m.last_applied.as_ref().map(|l| l.index).unwrap_or(0);
        let snapshot = m.snapshot.as_ref().map(|l| l.index).unwrap_or(0);
        app.log.evict(applied, budget);
        metrics()
            .log_memory_bytes
            .set(app.log.memory_bytes() as i64);
        // The snapshot's size is looked up once per snapshot, not every round.
        let snapshot_bytes = match last_size {
            Some((index, size)) if index == snapshot => size,
            _ => {
                let snapshots = app.snapshots.clone();
                let size = tokio::task::spawn_blocking(move || snapshots.latest_len())
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .unwrap_or(0);
                last_size = Some((snapshot, size));
                size
            }
        };
        let view = LogView {
            entries_since: applied.saturating_sub(snapshot),
            log_bytes_since: app.log.bytes_after(snapshot),
            last_snapshot_bytes: snapshot_bytes,
        };
        // One request at a time: a new one once the last is done (the snapshot index passed
        // it) or has had a minute.
        let pending =
            requested.is_some_and(|(at, t)| snapshot < at && t.elapsed() < Duration::from_secs(60));
        if !pending && policy.due(&view) {
            tracing::debug!(?view, "taking a snapshot");
            requested = Some((applied, std::time::Instant::now()));
            if app.raft.trigger().snapshot().await.is_err() {
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Compacts the store's history automatically (`compaction.*`): the leader decides with
/// `store::retention` and proposes the compaction through Raft, so every member compacts at the
/// same revision. A new leader starts observing afresh.
async fn auto_compact(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    use crate::config::Retention;
    use crate::store::retention::{self, Samples, StoreView};
    // Often enough that history over its byte bound is compacted before much more arrives.
    const EVERY: Duration = Duration::from_millis(250);
    let policy = app.config.compaction.clone();
    let keep = match policy.retention {
        Retention::Periodic(age) => age,
        _ => Duration::ZERO,
    };
    let mut samples = Samples::default();
    let mut was_leader = false;
    loop {
        let leader = app.is_leader();
        if leader != was_leader {
            samples = Samples::default();
            was_leader = leader;
        }
        if leader {
            let view = {
                let s = app.state.read();
                StoreView {
                    revision: s.kv.revision(),
                    compacted: s.kv.compacted(),
                    history_bytes: s.kv.history_bytes(),
                }
            };
            let now = std::time::Instant::now();
            samples.record(now, view.revision, keep);
            if let Some(revision) = retention::target(&policy, &samples, now, view) {
                let deadline = tokio::time::Instant::now() + app.config.limits.request_timeout;
                let cmd = crate::store::Command::Compact { revision };
                match app.propose(cmd, deadline).await {
                    Ok(w) => {
                        tracing::info!(revision, result = ?w.result, history_bytes = view.history_bytes, "compacted the store's history")
                    }
                    Err(e) => {
                        tracing::warn!(revision, error = %e, "automatic compaction failed; retrying")
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Total size of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Refreshes the data dir size gauge; walking the directory is cheap but not free.
async fn measure_data_dir(dir: std::path::PathBuf, mut stop: watch::Receiver<bool>) {
    loop {
        let d = dir.clone();
        if let Ok(bytes) = tokio::task::spawn_blocking(move || dir_bytes(&d)).await {
            metrics().data_dir_bytes.set(bytes as i64);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(15)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Mirrors openraft's metrics into Prometheus gauges as they change.
async fn export_raft_metrics(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    // openraft's metrics change on every commit. The cheap gauges follow every change; the
    // per-member ones (label lookups, membership walk) at most twice a second.
    const SLOW_EVERY: Duration = Duration::from_millis(500);
    let mut rx = app.raft.metrics();
    let mut last_leader = None;
    let mut last_slow: Option<std::time::Instant> = None;
    loop {
        {
            let m = rx.borrow_watched();
            let pm = metrics();
            pm.has_leader.set(i64::from(app.leader_contact(&m).is_ok()));
            pm.is_leader.set(i64::from(m.state == ServerState::Leader));
            if m.current_leader.is_some() && m.current_leader != last_leader {
                pm.leader_changes.inc();
            }
            last_leader = m.current_leader;
            pm.current_term.set(m.current_term as i64);
            crate::telemetry::set_log_term(m.current_term);
            pm.commit_index
                .set(m.cluster_committed.as_ref().map(|l| l.index).unwrap_or(0) as i64);
            pm.applied_index
                .set(m.last_applied.as_ref().map(|l| l.index).unwrap_or(0) as i64);
            pm.snapshot_index
                .set(m.snapshot.as_ref().map(|l| l.index).unwrap_or(0) as i64);
            pm.last_log_index.set(m.last_log_index.unwrap_or(0) as i64);
            if last_slow.is_none_or(|t| t.elapsed() >= SLOW_EVERY) {
                last_slow = Some(std::time::Instant::now());
                let membership = m.membership_config.membership();
                pm.members
                    .with_label_values(&["voter"])
                    .set(membership.voter_ids().count() as i64);
                pm.members
                    .with_label_values(&["learner"])
                    .set(membership.learner_ids().count() as i64);
                pm.peer_lag_entries.reset();
                if let Some(rep) = &m.replication {
                    let last = m.last_log_index.unwrap_or(0);
                    for (id, matched) in rep {
                        let name = membership
                            .get_node(id)
                            .map(|n| n.name.clone())
                            .unwrap_or_else(|| id.to_string());
                        let lag =
                            last.saturating_sub(matched.as_ref().map(|l| l.index).unwrap_or(0));
                        pm.peer_lag_entries
                            .with_label_values(&[name.as_str()])
                            .set(lag as i64);
                    }
                }
            }
        }
        tokio::select! {
            changed = tokio::time::timeout(SLOW_EVERY, rx.changed()) => {
                if matches!(changed, Ok(Err(_))) { return }
            }
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
