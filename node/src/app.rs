//! The running node: what the HTTP API, the peer and admin services and shutdown all share.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::{RaftMetrics, ServerState};
use parking_lot::Mutex;

use crate::config::Config;
use crate::identity::{ClusterId, Identity};
use crate::storage::{LogReader, SharedState};
use crate::transport::Channels;
use crate::types::{Member, NodeId, Raft, TypeConfig};

pub struct App {
    pub config: Config,
    pub identity: Identity,
    pub raft: Raft,
    pub state: SharedState,
    pub cluster_id: ClusterId,
    pub channels: Channels,
    pub log: LogReader,
    pub started: Instant,
    /// Held while a membership change runs on this node (as leader): one change at a time.
    pub membership_lock: tokio::sync::Mutex<()>,
    /// Peer messages refused (wrong cluster or wrong member), and the last reason.
    pub refused_messages: AtomicU64,
    pub last_refusal: Mutex<Option<String>>,
    shutting_down: AtomicBool,
}

/// The leader as this node currently sees it.
#[derive(Debug, Clone)]
pub struct LeaderInfo {
    pub id: NodeId,
    pub member: Option<Member>,
}

impl App {
    pub fn new(
        config: Config,
        identity: Identity,
        raft: Raft,
        state: SharedState,
        cluster_id: ClusterId,
        channels: Channels,
        log: LogReader,
    ) -> App {
        App {
            config,
            identity,
            raft,
            state,
            cluster_id,
            channels,
            log,
            started: Instant::now(),
            membership_lock: tokio::sync::Mutex::new(()),
            refused_messages: AtomicU64::new(0),
            last_refusal: Mutex::new(None),
            shutting_down: AtomicBool::new(false),
        }
    }

    pub fn id(&self) -> NodeId {
        self.identity.node_id
    }

    pub fn metrics(&self) -> RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    pub fn leader(&self) -> Option<LeaderInfo> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let id = m.current_leader?;
        let member = m.membership_config.membership().get_node(&id).cloned();
        Some(LeaderInfo { id, member })
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    pub fn record_refusal(&self, reason: String) {
        self.refused_messages.fetch_add(1, Ordering::Relaxed);
        *self.last_refusal.lock() = Some(reason);
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}
