//! The running node: what the HTTP API, the peer service and shutdown all share.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::{RaftMetrics, ServerState};

use crate::config::Config;
use crate::storage::{LogReader, SharedState};
use crate::transport::Channels;
use crate::types::{Member, NodeId, Raft, TypeConfig};

pub struct App {
    pub config: Config,
    pub raft: Raft,
    pub state: SharedState,
    pub cluster_id: Arc<str>,
    pub channels: Channels,
    pub log: LogReader,
    pub started: Instant,
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
        raft: Raft,
        state: SharedState,
        cluster_id: Arc<str>,
        channels: Channels,
        log: LogReader,
    ) -> App {
        App {
            config,
            raft,
            state,
            cluster_id,
            channels,
            log,
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
        }
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

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}
