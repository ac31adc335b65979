//! The membership planner: from what is observed right now (pods, what each node says about
//! itself, the leader's view of the membership) to the single next step. Pure: no clock, no
//! client, no memory of earlier steps — an operator restarted mid-operation recomputes the
//! same plan from the same cluster.

use std::time::Duration;

/// What one node's admin API says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeObs {
    pub id: u64,
    pub initialized: bool,
    /// Empty until the node belongs to a cluster.
    pub cluster_id: String,
    /// Address peers reach it at (what it advertises).
    pub address: String,
    pub ready: bool,
    pub applied_index: u64,
}

/// One pod of the StatefulSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodObs {
    pub ordinal: u32,
    pub name: String,
    /// Kubernetes readiness (the node's /readyz).
    pub ready: bool,
    /// Runs the StatefulSet's current template (image, config).
    pub up_to_date: bool,
    pub terminating: bool,
    /// How long the pod has existed.
    pub age: Duration,
    /// None when its admin API did not answer.
    pub node: Option<NodeObs>,
}

/// One Raft member, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberObs {
    pub id: u64,
    pub name: String,
    pub voter: bool,
    pub leader: bool,
    /// The leader heard from it recently.
    pub reachable: bool,
    /// Entries behind the leader's log.
    pub lag: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// spec.replicas.
    pub desired: u32,
    /// The StatefulSet's current size.
    pub sts_replicas: u32,
    /// Pods by ordinal (only those that exist).
    pub pods: Vec<PodObs>,
    /// The membership, read through any initialized node; None when no leader answered.
    pub members: Option<Vec<MemberObs>>,
    /// The Raft cluster id the operator recorded when it initialised the cluster.
    pub recorded_cluster_id: Option<String>,
    /// Promote a learner only within this many entries of the leader.
    pub max_promote_lag: u64,
    /// A pod restarted for an upgrade that is not back after this long stops the rollout.
    pub stall_after: Duration,
}

/// Why a member is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveReason {
    /// Above spec.replicas.
    ScaleDown,
    /// Its pod came back with an empty volume, as a new member.
    Replaced,
    /// A learner nobody wants any more (left over from an interrupted scale-up).
    Abandoned,
}

/// One membership or pod change. At most one is in flight: the planner returns one, the
/// executor runs it, and the next plan starts from a fresh observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Initialize {
        pod: String,
    },
    ScaleStatefulSet {
        from: u32,
        to: u32,
    },
    AddLearner {
        pod: String,
        id: u64,
        address: String,
    },
    Promote {
        pod: String,
        id: u64,
    },
    TransferLeadership {
        from: String,
        to: u64,
    },
    RemoveMember {
        name: String,
        id: u64,
        reason: RemoveReason,
    },
    /// Delete the pod so the StatefulSet recreates it from the current template.
    RestartPod {
        pod: String,
    },
}

/// Why nothing is done now. `blocking` ones need a human (or time) and make the cluster
/// Degraded; the others are the normal pauses of a healthy operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    PodsStarting,
    CatchingUp,
    PodRestarting,
    QuorumLost,
    QuorumAtRisk,
    DataLost,
    ForeignCluster,
    UpgradeStalled,
    /// A new pod has not started its node for longer than `stall_after` (unschedulable,
    /// image pull failing, crash loop).
    PodNotStarting,
}

impl WaitReason {
    pub fn blocking(self) -> bool {
        matches!(
            self,
            WaitReason::QuorumLost
                | WaitReason::QuorumAtRisk
                | WaitReason::DataLost
                | WaitReason::ForeignCluster
                | WaitReason::UpgradeStalled
                | WaitReason::PodNotStarting
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            WaitReason::PodsStarting => "PodsStarting",
            WaitReason::CatchingUp => "CatchingUp",
            WaitReason::PodRestarting => "PodRestarting",
            WaitReason::QuorumLost => "QuorumLost",
            WaitReason::QuorumAtRisk => "QuorumAtRisk",
            WaitReason::DataLost => "DataLost",
            WaitReason::ForeignCluster => "ForeignCluster",
            WaitReason::UpgradeStalled => "UpgradeStalled",
            WaitReason::PodNotStarting => "PodNotStarting",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Act(Action),
    Wait { reason: WaitReason, message: String },
    Converged,
}

fn wait(reason: WaitReason, message: impl Into<String>) -> Step {
    Step::Wait {
        reason,
        message: message.into(),
    }
}

pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// A view of the observation with the lookups the rules need.
struct View<'a> {
    o: &'a Observed,
    members: &'a [MemberObs],
    cluster_id: Option<&'a str>,
}

impl<'a> View<'a> {
    fn pod(&self, name: &str) -> Option<&'a PodObs> {
        self.o.pods.iter().find(|p| p.name == name)
    }
    fn pod_at(&self, ordinal: u32) -> Option<&'a PodObs> {
        self.o.pods.iter().find(|p| p.ordinal == ordinal)
    }
    fn member_named(&self, name: &str) -> Option<&'a MemberObs> {
        self.members.iter().find(|m| m.name == name)
    }
    fn voters(&self) -> impl Iterator<Item = &'a MemberObs> {
        self.members.iter().filter(|m| m.voter)
    }
    fn learners(&self) -> impl Iterator<Item = &'a MemberObs> {
        self.members.iter().filter(|m| !m.voter)
    }
    fn ordinal(&self, m: &MemberObs) -> Option<u32> {
        // Member names are pod names; the pods we list tell which ordinal a name has, and a
        // name without a pod is parsed from its `-<n>` suffix.
        self.pod(&m.name).map(|p| p.ordinal).or_else(|| {
            m.name
                .rsplit_once('-')
                .and_then(|(_, n)| n.parse::<u32>().ok())
        })
    }
    /// The member's pod now runs a different member (its volume was replaced).
    fn is_stale(&self, m: &MemberObs) -> bool {
        self.pod(&m.name)
            .and_then(|p| p.node.as_ref())
            .is_some_and(|n| n.id != m.id)
    }
    fn wanted(&self, m: &MemberObs) -> bool {
        self.ordinal(m).is_some_and(|o| o < self.o.desired) && !self.is_stale(m)
    }
    fn foreign(&self, n: &NodeObs) -> bool {
        !n.cluster_id.is_empty() && self.cluster_id.is_some_and(|c| c != n.cluster_id)
    }
    /// Healthy voters left if `without` were removed, and the quorum they would need.
    fn healthy_after_removing(&self, without: u64) -> (usize, usize) {
        let remaining: Vec<_> = self.voters().filter(|v| v.id != without).collect();
        let healthy = remaining.iter().filter(|v| v.reachable).count();
        (healthy, quorum(remaining.len()))
    }
    fn leader(&self) -> Option<&'a MemberObs> {
        self.members.iter().find(|m| m.leader)
    }
    /// The healthiest voter other than `not`, preferring up-to-date pods and low ordinals.
    fn transfer_target(&self, not: u64) -> Option<&'a MemberObs> {
        self.voters()
            .filter(|v| v.id != not && v.reachable && self.wanted(v))
            .min_by_key(|v| {
                let outdated = self.pod(&v.name).is_none_or(|p| !p.up_to_date);
                (outdated, v.lag, self.ordinal(v))
            })
    }
}

pub fn plan(o: &Observed) -> Step {
    let Some(members) = o.members.as_deref() else {
        return plan_without_leader(o);
    };
    let cluster_id = o.recorded_cluster_id.as_deref().or_else(|| {
        o.pods
            .iter()
            .filter_map(|p| p.node.as_ref())
            .find(|n| !n.cluster_id.is_empty())
            .map(|n| n.cluster_id.as_str())
    });
    let v = View {
        o,
        members,
        cluster_id,
    };

    // 0. A leader that cannot reach a quorum of voters (it has not stepped down yet) leads a
    //    cluster that can commit nothing: report it, change nothing, wait for them to return.
    let voters = v.voters().count();
    let reachable = v.voters().filter(|m| m.reachable).count();
    if voters > 0 && reachable < quorum(voters) {
        return wait(
            WaitReason::QuorumLost,
            format!(
                "the leader reaches {reachable} of {voters} voters and a quorum is {}: nothing is changed until enough of them return",
                quorum(voters)
            ),
        );
    }

    // 1. Learners nobody wants: removing a learner never touches the quorum.
    if let Some(l) = v.learners().find(|l| !v.wanted(l)) {
        return Step::Act(Action::RemoveMember {
            name: l.name.clone(),
            id: l.id,
            reason: RemoveReason::Abandoned,
        });
    }

    // 2. Voters whose pod came back empty: out first (their address now reaches a different
    //    member), as long as the healthy rest still form a quorum.
    if let Some(s) = v.voters().find(|m| v.is_stale(m)) {
        return remove_voter(&v, s, RemoveReason::Replaced);
    }

    // 3. Scale down, highest ordinal first; the leader hands over before it goes.
    let mut excess: Vec<&MemberObs> = v.voters().filter(|m| !v.wanted(m)).collect();
    excess.sort_by_key(|m| std::cmp::Reverse(v.ordinal(m)));
    if let Some(m) = excess.first() {
        // The last voter stays until a wanted pod has joined to take over (a replaced pod 0
        // while scaling to 1, say): fall through to adding members.
        if v.voters().count() > 1 {
            return remove_voter(&v, m, RemoveReason::ScaleDown);
        }
    }

    // 4. Shrink the StatefulSet only past pods that are no longer members.
    let top_member = members.iter().filter_map(|m| v.ordinal(m)).max();
    let floor = o.desired.max(top_member.map_or(0, |t| t + 1));
    if o.sts_replicas > floor {
        return Step::Act(Action::ScaleStatefulSet {
            from: o.sts_replicas,
            to: floor,
        });
    }
    // 5. Grow it: new pods start in join mode and wait to be added one at a time.
    if o.sts_replicas < o.desired {
        return Step::Act(Action::ScaleStatefulSet {
            from: o.sts_replicas,
            to: o.desired,
        });
    }

    // 6. A learner being brought up: promote once caught up and only if the bigger voter set
    //    keeps a healthy quorum.
    if let Some(l) = v.learners().min_by_key(|l| v.ordinal(l)) {
        let voters = v.voters().count();
        let healthy = v.voters().filter(|m| m.reachable).count();
        if !l.reachable || l.lag > o.max_promote_lag {
            return wait(
                WaitReason::CatchingUp,
                format!(
                    "learner {} is {} entries behind (promoted at {} or fewer)",
                    l.name, l.lag, o.max_promote_lag
                ),
            );
        }
        if healthy + 1 < quorum(voters + 1) {
            return wait(
                WaitReason::QuorumAtRisk,
                format!(
                    "promoting {} would need {} healthy voters; {healthy} of {voters} are",
                    l.name,
                    quorum(voters + 1)
                ),
            );
        }
        return Step::Act(Action::Promote {
            pod: l.name.clone(),
            id: l.id,
        });
    }

    // 7. Add the lowest missing ordinal as a learner.
    for ordinal in 0..o.desired {
        let Some(pod) = v.pod_at(ordinal) else {
            return wait(
                WaitReason::PodsStarting,
                format!("waiting for pod ordinal {ordinal} to be created"),
            );
        };
        if v.member_named(&pod.name).is_some() {
            continue;
        }
        let Some(node) = pod.node.as_ref().filter(|_| !pod.terminating) else {
            if pod.age > o.stall_after {
                return wait(
                    WaitReason::PodNotStarting,
                    format!(
                        "{} has not started for {}s (unschedulable, image pull or crash loop? see kubectl describe pod {})",
                        pod.name,
                        pod.age.as_secs(),
                        pod.name
                    ),
                );
            }
            return wait(
                WaitReason::PodsStarting,
                format!("waiting for {} to start", pod.name),
            );
        };
        if v.foreign(node) {
            return wait(
                WaitReason::ForeignCluster,
                format!(
                    "{} holds data of cluster {}, not this one; it is left alone (delete its volume to reuse it)",
                    pod.name, node.cluster_id
                ),
            );
        }
        return Step::Act(Action::AddLearner {
            pod: pod.name.clone(),
            id: node.id,
            address: node.address.clone(),
        });
    }

    // 8. Rolling restart onto the current template, one pod at a time, when everything is
    //    healthy: all members reachable and ready, nothing else in progress.
    plan_rollout(&v)
}

/// Removes one voter safely: never the last, never below a healthy quorum, and a leader
/// hands over first.
fn remove_voter(v: &View<'_>, m: &MemberObs, reason: RemoveReason) -> Step {
    if v.voters().count() <= 1 {
        return wait(
            WaitReason::QuorumAtRisk,
            format!("{} is the last voter and cannot be removed", m.name),
        );
    }
    let (healthy, need) = v.healthy_after_removing(m.id);
    if healthy < need {
        let why = match reason {
            RemoveReason::Replaced => format!("{} lost its volume and must be replaced", m.name),
            _ => format!("scale-down paused at {}", m.name),
        };
        return wait(
            WaitReason::QuorumAtRisk,
            format!(
                "{why}, but removing it would leave {healthy} healthy voter(s), fewer than the quorum of {need}"
            ),
        );
    }
    if m.leader {
        return match v.transfer_target(m.id) {
            Some(to) => Step::Act(Action::TransferLeadership {
                from: m.name.clone(),
                to: to.id,
            }),
            None => wait(
                WaitReason::QuorumAtRisk,
                format!("{} leads and no healthy voter can take over", m.name),
            ),
        };
    }
    Step::Act(Action::RemoveMember {
        name: m.name.clone(),
        id: m.id,
        reason,
    })
}

fn plan_rollout(v: &View<'_>) -> Step {
    let o = v.o;
    let member_pods: Vec<&PodObs> = v
        .voters()
        .filter_map(|m| v.pod(&m.name))
        .collect::<Vec<_>>();
    let outdated: Vec<&PodObs> = member_pods
        .iter()
        .copied()
        .filter(|p| !p.up_to_date)
        .collect();
    if outdated.is_empty() {
        // Converged means every member is back and serving, not just restarted.
        return match member_pods.iter().find(|p| !p.ready || p.node.is_none()) {
            Some(p) => wait(
                WaitReason::PodRestarting,
                format!("waiting for {} to be ready", p.name),
            ),
            None => Step::Converged,
        };
    }
    // A pod already restarted onto the new template that is not back: wait for it, and stop
    // the rollout if it stays down.
    if let Some(p) = member_pods
        .iter()
        .find(|p| p.up_to_date && (!p.ready || p.node.is_none() || p.terminating))
    {
        if p.age > o.stall_after {
            return wait(
                WaitReason::UpgradeStalled,
                format!(
                    "rollout stopped: {} runs the new template but has not been ready for {}s; {} pod(s) still on the old one",
                    p.name,
                    p.age.as_secs(),
                    outdated.len()
                ),
            );
        }
        return wait(
            WaitReason::PodRestarting,
            format!("waiting for {} to come back", p.name),
        );
    }
    let unhealthy = v
        .voters()
        .find(|m| !m.reachable || m.lag > o.max_promote_lag)
        .map(|m| m.name.clone())
        .or_else(|| {
            member_pods
                .iter()
                .find(|p| !p.ready || p.terminating || p.node.is_none())
                .map(|p| p.name.clone())
        });
    if let Some(name) = unhealthy {
        return wait(
            WaitReason::PodRestarting,
            format!("rollout waits for {name} to be healthy and caught up"),
        );
    }
    let leader = v.leader();
    let is_leader = |p: &PodObs| leader.is_some_and(|l| l.name == p.name);
    // Followers first, highest ordinal first; the leader last, after handing over.
    if let Some(p) = outdated
        .iter()
        .filter(|p| !is_leader(p))
        .max_by_key(|p| p.ordinal)
    {
        return Step::Act(Action::RestartPod {
            pod: p.name.clone(),
        });
    }
    let Some(l) = leader else {
        return wait(WaitReason::QuorumLost, "no leader");
    };
    match v.transfer_target(l.id) {
        Some(to) => Step::Act(Action::TransferLeadership {
            from: l.name.clone(),
            to: to.id,
        }),
        // A single-member cluster has nobody to hand over to: restarting is the only way.
        None if v.voters().count() == 1 => Step::Act(Action::RestartPod {
            pod: l.name.clone(),
        }),
        None => wait(
            WaitReason::PodRestarting,
            format!("{} leads and no healthy voter can take over yet", l.name),
        ),
    }
}

/// No leader answered: a new cluster, or one that lost its quorum (or its data).
fn plan_without_leader(o: &Observed) -> Step {
    let initialized: Vec<&PodObs> = o
        .pods
        .iter()
        .filter(|p| p.node.as_ref().is_some_and(|n| n.initialized))
        .collect();
    if !initialized.is_empty() {
        return wait(
            WaitReason::QuorumLost,
            format!(
                "no leader: {} initialized member(s) answer ({}), but no leader is elected; no automatic action is taken",
                initialized.len(),
                initialized
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    if o.sts_replicas == 0 && o.desired > 0 {
        return Step::Act(Action::ScaleStatefulSet {
            from: 0,
            to: o.desired,
        });
    }
    let answering = o.pods.iter().filter(|p| p.node.is_some()).count();
    if o.recorded_cluster_id.is_some() {
        if answering > 0 && answering == o.pods.len() && o.pods.len() as u32 >= o.sts_replicas {
            return wait(
                WaitReason::DataLost,
                "every pod reports an empty volume although the cluster was initialised: its data is gone; the operator does not re-create it (see docs/operations.md: recovering from quorum loss)",
            );
        }
        return wait(
            WaitReason::QuorumLost,
            "no member answers; waiting for pods to start",
        );
    }
    match o.pods.iter().find(|p| p.ordinal == 0) {
        Some(p) if !p.terminating => match &p.node {
            Some(n) if !n.initialized => Step::Act(Action::Initialize {
                pod: p.name.clone(),
            }),
            _ => wait(
                WaitReason::PodsStarting,
                format!("waiting for {} to start", p.name),
            ),
        },
        _ => wait(WaitReason::PodsStarting, "waiting for pod ordinal 0"),
    }
}
