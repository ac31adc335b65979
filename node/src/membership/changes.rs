//! The membership changes, run on the leader: checks first, then one Raft change at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use concord_proto::admin_client::AdminClient;
use concord_proto::{
    AddLearnerRequest, AdminResult, InitRequest, MemberRole, MemberSpec, MembersRequest,
    MembersResponse, NodeRole, NodeStatusResponse, PromoteRequest, RemoveMemberRequest,
    TransferLeaderRequest,
};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::RaftError;
use openraft::{ChangeMembers, RaftMetrics, ServerState};

use super::error::{from_status, result, write_error, AdminError};
use super::view::View;
use super::Hop;
use crate::app::App;
use crate::raft::{Member, NodeId, TypeConfig};

/// How long a change waits for its effect (replication to start, a leader to move).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

impl App {
    fn view(&self) -> View {
        View {
            metrics: self.metrics(),
            // A busy or briefly slow member can miss a few acknowledgements; a member silent for
            // several election timeouts is down.
            reachable_within: (self.config.raft.election_timeout_max * 3)
                .max(Duration::from_secs(2)),
            caught_up_within: self.config.raft.max_promote_lag,
        }
    }

    /// A client for the leader, to forward a change this node cannot make. Only one hop: a
    /// request that was itself forwarded here is refused (retryable) instead of forwarded
    /// again, so a call cannot bounce between nodes while leadership moves.
    async fn leader_admin_client(
        &self,
        hop: Hop,
    ) -> Result<AdminClient<tonic::transport::Channel>, AdminError> {
        if hop == Hop::Forwarded {
            return Err(AdminError::NoLeader(format!(
                "{} was forwarded this request as the leader but is not the leader; \
                 leadership is moving, retry",
                self.identity.name
            )));
        }
        let leader = self.leader().ok_or_else(|| {
            AdminError::NoLeader("no leader is known; is the cluster initialized?".into())
        })?;
        let member = leader
            .member
            .ok_or_else(|| AdminError::NoLeader(format!("leader {} has no address", leader.id)))?;
        let channel = self
            .channels
            .channel(&member.addr)
            .map_err(|e| AdminError::Internal(e.message().to_string()))?;
        Ok(AdminClient::new(channel))
    }

    pub(crate) fn lock_membership(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, AdminError> {
        self.membership_lock
            .try_lock()
            .map_err(|_| AdminError::Busy)
    }

    /// Refuses to start a cluster on a member that is already in one (`why` says what was
    /// asked).
    pub(crate) async fn check_uninitialized(&self, why: &str) -> Result<(), AdminError> {
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| AdminError::Internal(e.to_string()))?
        {
            return Err(AdminError::AlreadyInitialized(format!(
                "node {} is already a member of cluster {}{why}",
                self.identity.name,
                self.cluster_id.wire()
            )));
        }
        Ok(())
    }

    pub async fn admin_init(&self, req: InitRequest) -> Result<AdminResult, AdminError> {
        self.check_uninitialized("").await?;
        let _guard = self.lock_membership()?;
        let mut members: BTreeMap<NodeId, Member> = BTreeMap::new();
        for m in &req.members {
            let (id, member) = check_spec(m)?;
            members.insert(id, member);
        }
        if members.is_empty() {
            members.insert(self.id(), self.config.own_member());
        }
        if !members.contains_key(&self.id()) {
            return Err(AdminError::Invalid(format!(
                "the initial members must include this node (id {})",
                self.id()
            )));
        }
        let cluster = self
            .cluster_id
            .set_if_unset(&format!("ckv-{:016x}", rand::random::<u64>()))
            .map_err(|e| AdminError::Internal(e.to_string()))?;
        match self.raft.initialize(members.clone()).await {
            Ok(()) => {
                tracing::info!(cluster = %cluster, members = members.len(), "cluster initialized");
                // Return once a leader has committed the initial membership, so the next change
                // (adding a learner) is accepted straight away.
                let ready = self
                    .wait_metrics(SETTLE_TIMEOUT, |m| {
                        m.current_leader.is_some()
                            && m.membership_config.log_id().is_some()
                            && m.membership_config.log_id() <= &m.cluster_committed
                    })
                    .await;
                let note = if ready {
                    ""
                } else {
                    "; no leader yet (are a quorum of the members running?)"
                };
                Ok(result(
                    format!(
                        "initialized cluster {cluster} with {} member(s){note}",
                        members.len()
                    ),
                    0,
                ))
            }
            Err(RaftError::APIError(e)) => Err(AdminError::AlreadyInitialized(e.to_string())),
            Err(e) => Err(AdminError::Internal(e.to_string())),
        }
    }

    pub async fn admin_add_learner(
        &self,
        req: AddLearnerRequest,
        hop: Hop,
    ) -> Result<AdminResult, AdminError> {
        if !self.is_leader() {
            let mut c = self.leader_admin_client(hop).await?;
            return Ok(c
                .add_learner(self.forwarded(req))
                .await
                .map_err(from_status)?
                .into_inner());
        }
        let spec = req
            .member
            .as_ref()
            .ok_or_else(|| AdminError::Invalid("missing member".into()))?;
        let (id, member) = check_spec(spec)?;
        let _guard = self.lock_membership()?;
        let view = self.view();
        if view.voters().contains(&id) {
            return Err(AdminError::Refused(format!("{id} is already a voter")));
        }
        if let Some(existing) = view.metrics.membership_config.membership().get_node(&id) {
            if *existing == member {
                return Ok(result(format!("{id} is already a learner"), 0));
            }
        }
        let resp = self
            .raft
            .add_learner(id, member.clone(), false)
            .await
            .map_err(write_error)?;
        tracing::info!(learner = id, name = %member.name, addr = %member.addr, "learner added");
        if req.no_wait {
            return Ok(result(
                format!("added learner {id} ({})", member.name),
                resp.log_id().index,
            ));
        }
        // Return once replication to it has started (or say that it has not, yet).
        let started = self
            .wait_metrics(SETTLE_TIMEOUT, |m| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&id))
                    .is_some_and(|matched| matched.is_some())
            })
            .await;
        let note = if started {
            "replication started"
        } else {
            "replication has not started yet (is the node running and reachable?)"
        };
        Ok(result(
            format!("added learner {id} ({}): {note}", member.name),
            resp.log_id().index,
        ))
    }

    pub async fn admin_promote(
        &self,
        req: PromoteRequest,
        hop: Hop,
    ) -> Result<AdminResult, AdminError> {
        if !self.is_leader() {
            let mut c = self.leader_admin_client(hop).await?;
            return Ok(c
                .promote(self.forwarded(req))
                .await
                .map_err(from_status)?
                .into_inner());
        }
        let id = req.id;
        let _guard = self.lock_membership()?;
        let view = self.view();
        if view.voters().contains(&id) {
            return Ok(result(format!("{id} is already a voter"), 0));
        }
        if !view.learners().contains(&id) {
            return Err(AdminError::NotFound(format!(
                "{id} is not a learner of this cluster"
            )));
        }
        let limit = self.config.raft.max_promote_lag;
        let lag = match view.matched(id) {
            Some(m) => view.last_log().saturating_sub(m),
            None => {
                return Err(AdminError::Refused(format!(
                "learner {id} has not received any entries yet; lag is {} entries (limit {limit})",
                view.last_log()
            )))
            }
        };
        if lag > limit {
            return Err(AdminError::Refused(format!(
                "learner {id} is {lag} entries behind the leader (limit {limit}); wait for it to catch up"
            )));
        }
        let resp = self
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(write_error)?;
        tracing::info!(voter = id, lag, "learner promoted");
        Ok(result(
            format!("promoted {id} to voter (lag was {lag})"),
            resp.log_id().index,
        ))
    }

    pub async fn admin_remove(
        &self,
        req: RemoveMemberRequest,
        hop: Hop,
    ) -> Result<AdminResult, AdminError> {
        if !self.is_leader() {
            let mut c = self.leader_admin_client(hop).await?;
            return Ok(c
                .remove_member(self.forwarded(req))
                .await
                .map_err(from_status)?
                .into_inner());
        }
        let id = req.id;
        let guard = self.lock_membership()?;
        let view = self.view();
        let voters = view.voters();
        if view.learners().contains(&id) {
            let resp = self
                .raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(write_error)?;
            tracing::info!(learner = id, "learner removed");
            return Ok(result(format!("removed learner {id}"), resp.log_id().index));
        }
        if !voters.contains(&id) {
            return Err(AdminError::NotFound(format!(
                "{id} is not a member of this cluster"
            )));
        }
        if voters.len() == 1 {
            return Err(AdminError::Refused(format!(
                "{id} is the only voter; a cluster cannot remove its last voter"
            )));
        }
        let remaining: BTreeSet<NodeId> = voters.iter().copied().filter(|v| *v != id).collect();
        // A leader that has just taken over has not heard from anyone yet; give the members
        // one health window to answer before judging them.
        let unheard = |m: &RaftMetrics<TypeConfig>| {
            remaining.iter().any(|v| {
                *v != m.id
                    && !m
                        .heartbeat
                        .as_ref()
                        .and_then(|h| h.get(v))
                        .is_some_and(|t| t.is_some())
            })
        };
        let view = if unheard(&view.metrics) {
            self.wait_metrics(view.reachable_within, |m| !unheard(m))
                .await;
            self.view()
        } else {
            view
        };
        let quorum = remaining.len() / 2 + 1;
        let healthy = remaining.iter().filter(|v| view.healthy(**v)).count();
        if healthy < quorum && !req.force {
            let contacts: Vec<String> = remaining
                .iter()
                .map(|v| match view.last_contact(*v) {
                    Some(d) => format!("{v}: last heard {}ms ago", d.as_millis()),
                    None => format!("{v}: never heard from"),
                })
                .collect();
            return Err(AdminError::Refused(format!(
                "removing {id} would leave {} voter(s) of which only {healthy} are healthy, fewer than the quorum of {quorum} ({}); \
                 bring members back first, or pass force",
                remaining.len(),
                contacts.join(", ")
            )));
        }
        if id == self.id() {
            // The leader cannot safely remove itself while it leads: hand over first, then let
            // the new leader do the removal.
            drop(guard);
            let to = self.best_transfer_target(&view, None)?;
            self.transfer_leadership_to(to).await?;
            let mut c = self.leader_admin_client(Hop::Client).await?;
            let mut r = c
                .remove_member(self.forwarded(req))
                .await
                .map_err(from_status)?
                .into_inner();
            r.message = format!("transferred leadership to {to}, then {}", r.message);
            return Ok(r);
        }
        let resp = self
            .raft
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            .await
            .map_err(write_error)?;
        tracing::info!(voter = id, forced = req.force, "voter removed");
        Ok(result(format!("removed voter {id}"), resp.log_id().index))
    }

    pub async fn admin_transfer_leader(
        &self,
        req: TransferLeaderRequest,
        hop: Hop,
    ) -> Result<AdminResult, AdminError> {
        if !self.is_leader() {
            let mut c = self.leader_admin_client(hop).await?;
            return Ok(c
                .transfer_leader(self.forwarded(req))
                .await
                .map_err(from_status)?
                .into_inner());
        }
        let _guard = self.lock_membership()?;
        let view = self.view();
        let want = (req.to != 0).then_some(req.to);
        if want == Some(self.id()) {
            return Ok(result(format!("{} is already the leader", self.id()), 0));
        }
        let to = self.best_transfer_target(&view, want)?;
        self.transfer_leadership_to(to).await?;
        Ok(result(format!("leadership transferred to {to}"), 0))
    }

    /// The named voter, or the most up-to-date voter other than this node.
    fn best_transfer_target(
        &self,
        view: &View,
        want: Option<NodeId>,
    ) -> Result<NodeId, AdminError> {
        let voters = view.voters();
        if let Some(to) = want {
            if !voters.contains(&to) {
                return Err(AdminError::Invalid(format!("{to} is not a voter")));
            }
            return Ok(to);
        }
        voters
            .iter()
            .copied()
            .filter(|v| *v != self.id() && view.healthy(*v))
            .max_by_key(|v| view.matched(*v))
            .ok_or_else(|| {
                AdminError::Refused("no other healthy voter to transfer leadership to".into())
            })
    }

    /// Asks `to` to take over and waits until it has.
    pub async fn transfer_leadership_to(&self, to: NodeId) -> Result<(), AdminError> {
        tracing::info!(to, "transferring leadership");
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| AdminError::Internal(e.to_string()))?;
        if self
            .wait_metrics(SETTLE_TIMEOUT, |m| m.current_leader == Some(to))
            .await
        {
            Ok(())
        } else {
            Err(AdminError::NoLeader(format!(
                "{to} did not take over within {SETTLE_TIMEOUT:?}"
            )))
        }
    }

    pub(crate) async fn wait_metrics(
        &self,
        timeout: Duration,
        done: impl Fn(&RaftMetrics<TypeConfig>) -> bool,
    ) -> bool {
        let mut rx = self.raft.metrics();
        let wait = async {
            loop {
                if done(&rx.borrow_watched()) {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }

    pub async fn admin_members(&self, hop: Hop) -> Result<MembersResponse, AdminError> {
        if !self.is_leader() {
            let mut c = self.leader_admin_client(hop).await?;
            return Ok(c
                .members(self.forwarded(MembersRequest {}))
                .await
                .map_err(from_status)?
                .into_inner());
        }
        let view = self.view();
        let membership = view.metrics.membership_config.membership();
        let voters = view.voters();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = view.matched(*id).unwrap_or(0);
                let (role, text) = if voters.contains(id) {
                    (MemberRole::Voter, "voter")
                } else {
                    (MemberRole::Learner, "learner")
                };
                concord_proto::Member {
                    id: *id,
                    name: node.name.clone(),
                    address: node.addr.clone(),
                    role: text.into(),
                    member_role: role.into(),
                    leader: *id == self.id(),
                    matched_index: matched,
                    lag: view.last_log().saturating_sub(matched),
                    last_contact_ms: view.last_contact(*id).map(|d| d.as_millis() as u64),
                    reachable: view.healthy(*id),
                }
            })
            .collect();
        Ok(MembersResponse {
            members,
            leader_id: self.id(),
            last_log_index: view.last_log(),
        })
    }

    pub async fn admin_node_status(&self) -> NodeStatusResponse {
        let m = self.metrics();
        let initialized = self.raft.is_initialized().await.unwrap_or(false);
        let (role, node_role) = match m.state {
            ServerState::Leader => ("leader", NodeRole::Leader),
            ServerState::Follower => ("follower", NodeRole::Follower),
            ServerState::Candidate => ("candidate", NodeRole::Candidate),
            ServerState::Learner if initialized => ("learner", NodeRole::Learner),
            ServerState::Learner => ("uninitialized", NodeRole::Uninitialized),
            ServerState::Shutdown => ("shutdown", NodeRole::Shutdown),
        };
        NodeStatusResponse {
            id: self.id(),
            name: self.identity.name.clone(),
            cluster_id: self.cluster_id.wire(),
            initialized,
            role: role.into(),
            term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
            commit_index: m.cluster_committed.as_ref().map(|l| l.index).unwrap_or(0),
            applied_index: m.last_applied.as_ref().map(|l| l.index).unwrap_or(0),
            snapshot_index: m.snapshot.as_ref().map(|l| l.index).unwrap_or(0),
            incarnation: self.identity.incarnation.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            address: self.config.advertise_addr.clone(),
            ready: crate::api::http::status::readiness(self).is_ok(),
            node_role: node_role.into(),
        }
    }
}

fn check_spec(m: &MemberSpec) -> Result<(NodeId, Member), AdminError> {
    if m.id == 0 {
        return Err(AdminError::Invalid("member id must be non-zero".into()));
    }
    if m.name.is_empty() {
        return Err(AdminError::Invalid("member name must not be empty".into()));
    }
    let port_ok = m
        .address
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if !port_ok {
        return Err(AdminError::Invalid(format!(
            "member address {:?} is not host:port",
            m.address
        )));
    }
    Ok((
        m.id,
        Member {
            name: m.name.clone(),
            addr: m.address.clone(),
        },
    ))
}
