//! The running node: what the HTTP API, the peer and admin services and shutdown all share.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::budget::ByteBudget;
use std::time::Instant;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::{RaftMetrics, ServerState};
use parking_lot::Mutex;

use crate::config::Config;
use crate::lease::LeaseClock;
use crate::raft::channels::Channels;
use crate::raft::{Member, NodeId, Raft, TypeConfig};
use crate::storage::identity::{ClusterId, Identity};
use crate::storage::{LogReader, SharedState, SnapshotStore};
use crate::watch::WatchHub;

pub struct App {
    pub config: Config,
    pub identity: Identity,
    pub raft: Raft,
    pub state: SharedState,
    pub cluster_id: ClusterId,
    pub channels: Channels,
    /// The ports' TLS (certificates re-read as they change).
    pub tls: Arc<crate::tls::Tls>,
    /// Failed sign-ins per source address, to hold guessers back.
    pub failed_logins: crate::auth::FailedLogins,
    pub log: LogReader,
    /// Where snapshots received from a leader are written as they arrive.
    pub snapshots: SnapshotStore,
    /// This member's watchers; apply hands them its changes.
    pub watches: Arc<WatchHub>,
    /// When each lease expires, as this member would count it as leader (`lease::clock`).
    pub lease_clock: Arc<Mutex<LeaseClock>>,
    pub started: Instant,
    /// Held while a membership change runs on this node (as leader): one change at a time.
    pub membership_lock: tokio::sync::Mutex<()>,
    /// Peer messages refused (wrong cluster or wrong member), and the last reason.
    pub refused_messages: AtomicU64,
    pub last_refusal: Mutex<Option<String>>,
    /// When a leader last replicated to (or heartbeat) this node.
    last_leader_contact: Mutex<Option<Instant>>,
    /// Until when this node refuses to vote (after cutting a damaged log tail at start).
    abstain_until: Mutex<Option<Instant>>,
    shutting_down: AtomicBool,
    /// Request bytes being served: HTTP requests and writes forwarded here by followers
    /// (`limits.maxInFlightBytes`).
    pub request_bytes: ByteBudget,
    /// Bytes of the writes proposed here and not yet committed (`limits.maxPendingProposalBytes`).
    pub pending_proposal_bytes: ByteBudget,
}

/// The leader as this node currently sees it.
#[derive(Debug, Clone)]
pub struct LeaderInfo {
    pub id: NodeId,
    pub member: Option<Member>,
}

/// The storage handles the API layer and the peer service read or write beside openraft.
pub struct StorageHandles {
    pub state: SharedState,
    pub log: LogReader,
    pub snapshots: SnapshotStore,
    pub watches: Arc<WatchHub>,
    pub lease_clock: Arc<Mutex<LeaseClock>>,
}

impl App {
    pub fn new(
        config: Config,
        identity: Identity,
        raft: Raft,
        cluster_id: ClusterId,
        channels: Channels,
        tls: Arc<crate::tls::Tls>,
        storage: StorageHandles,
    ) -> App {
        let StorageHandles {
            state,
            log,
            snapshots,
            watches,
            lease_clock,
        } = storage;
        App {
            identity,
            raft,
            state,
            cluster_id,
            channels,
            tls,
            failed_logins: crate::auth::FailedLogins::default(),
            log,
            snapshots,
            watches,
            lease_clock,
            started: Instant::now(),
            membership_lock: tokio::sync::Mutex::new(()),
            refused_messages: AtomicU64::new(0),
            last_refusal: Mutex::new(None),
            last_leader_contact: Mutex::new(None),
            abstain_until: Mutex::new(None),
            shutting_down: AtomicBool::new(false),
            request_bytes: ByteBudget::new(config.limits.max_in_flight_bytes),
            pending_proposal_bytes: ByteBudget::new(config.limits.max_pending_proposal_bytes),
            config,
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

    pub fn note_leader_contact(&self) {
        *self.last_leader_contact.lock() = Some(Instant::now());
        // A leader is replicating to us: we are repairing from it, and may vote again.
        *self.abstain_until.lock() = None;
    }

    /// After start-up cut a damaged tail off the log, this node may have lost entries it had
    /// acknowledged. Its vote could then elect a leader that lacks them, so it abstains until a
    /// leader replicates to it or `window` passes (so a whole cluster restarting after a crash,
    /// where every node cut a torn tail, still elects someone).
    pub fn abstain_from_votes_for(&self, window: std::time::Duration) {
        *self.abstain_until.lock() = Some(Instant::now() + window);
    }

    /// Why this node will not vote right now, if it will not.
    pub fn abstaining(&self) -> Option<String> {
        let mut until = self.abstain_until.lock();
        match *until {
            Some(t) if Instant::now() < t => Some(format!(
                "abstaining from votes for {}ms: recovered from a damaged log tail and not yet caught up with a leader",
                t.saturating_duration_since(Instant::now()).as_millis()
            )),
            Some(_) => {
                *until = None;
                None
            }
            None => None,
        }
    }

    /// Whether this node is in touch with a leader right now: openraft keeps the last leader's
    /// id after losing contact, so "a leader id is known" alone would say yes on a partitioned
    /// node. A leader must have heard from a quorum recently; anyone else from the leader.
    pub fn leader_contact(&self, m: &RaftMetrics<TypeConfig>) -> Result<(), String> {
        let window = self.config.raft.election_timeout_max * 2;
        let Some(leader) = m.current_leader else {
            return Err("no leader known".into());
        };
        if leader == self.id() {
            if m.membership_config.membership().voter_ids().count() <= 1 {
                return Ok(());
            }
            return match m
                .last_quorum_acked
                .as_ref()
                .map(|t| openraft::Instant::elapsed(&**t))
            {
                Some(d) if d <= window => Ok(()),
                Some(d) => Err(format!(
                    "leader has not heard from a quorum for {}ms",
                    d.as_millis()
                )),
                None => Err("leader has not heard from a quorum yet".into()),
            };
        }
        match *self.last_leader_contact.lock() {
            Some(t) if t.elapsed() <= window => Ok(()),
            Some(t) => Err(format!(
                "no contact with leader {leader} for {}ms",
                t.elapsed().as_millis()
            )),
            None => Err(format!("no contact with leader {leader} since start")),
        }
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}
