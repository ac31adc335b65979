//! One membership step: observe (pods + every node's admin API + the leader's membership),
//! plan (pure, `plan.rs`), execute the single action. The pods come from a `PodRuntime`:
//! Kubernetes in production, local processes in the tests.

use std::sync::Arc;
use std::time::Duration;

use concord_proto::MemberSpec;

use crate::admin::{AdminCallError, NodeAdmin};
use crate::backup::restore::{restore_into, BackupSource, RestoreFailure};
use crate::plan::{self, Action, MemberObs, NodeObs, Observed, PodObs, Step};

/// A pod as the runtime sees it, before asking its node anything.
#[derive(Debug, Clone)]
pub struct RuntimePod {
    pub pod: PodObs,
    /// `host:port` of its admin (peer) endpoint, once it has an address.
    pub admin_addr: Option<String>,
    /// The image its node runs, when the runtime knows it (for the status).
    pub image: Option<String>,
    /// The pod object's UID: a restart deletes this pod, never one recreated under its name.
    pub uid: Option<String>,
    /// Hash of the node config its template carried (`concordkv.io/config-hash`).
    pub config_hash: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RuntimeView {
    pub sts_replicas: u32,
    pub pods: Vec<RuntimePod>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
}

/// Where the member pods live.
#[tonic::async_trait]
pub trait PodRuntime: Send + Sync {
    async fn view(&self) -> Result<RuntimeView, RuntimeError>;
    async fn scale(&self, replicas: u32) -> Result<(), RuntimeError>;
    /// Delete the pod; it comes back from the current template with the same volume. With
    /// `uid`, only if the pod is still the one observed: a pod recreated since is left alone.
    async fn restart(&self, pod: &str, uid: Option<&str>) -> Result<(), RuntimeError>;
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("{action}: {source}")]
    Admin {
        action: String,
        source: AdminCallError,
    },
    #[error("{0}")]
    Missing(String),
    #[error("restoring the first member from a backup: {0}")]
    Restore(#[from] RestoreFailure),
}

/// What the planner needs besides the cluster itself.
#[derive(Debug, Clone)]
pub struct Policy {
    pub desired: u32,
    pub recorded_cluster_id: Option<String>,
    pub max_promote_lag: u64,
    pub stall_after: Duration,
    /// The backup the first member starts from instead of an empty store (`spec.restoreFrom`),
    /// looked up only when the first member is initialized.
    pub restore_from: Option<Arc<dyn BackupSource>>,
}

pub struct Observation {
    pub observed: Observed,
    pub runtime: RuntimeView,
    /// Address of a node that answered the membership query (for the next call).
    pub via: Option<String>,
}

pub async fn observe(
    runtime: &dyn PodRuntime,
    admin: &dyn NodeAdmin,
    policy: &Policy,
) -> Result<Observation, RuntimeError> {
    let mut view = runtime.view().await?;
    view.pods.sort_by_key(|p| p.pod.ordinal);
    let statuses = futures::future::join_all(view.pods.iter().map(|p| async {
        match &p.admin_addr {
            Some(a) => admin.node_status(a).await.ok(),
            None => None,
        }
    }))
    .await;
    let mut pods = Vec::new();
    for (rp, status) in view.pods.iter_mut().zip(statuses) {
        rp.pod.node = status.map(|s| NodeObs {
            id: s.id,
            initialized: s.initialized,
            cluster_id: s.cluster_id,
            address: s.address,
            ready: s.ready,
            applied_index: s.applied_index,
        });
        pods.push(rp.pod.clone());
    }
    // Ask initialized nodes for the membership; any of them forwards to the leader.
    let mut members = None;
    let mut via = None;
    for rp in view
        .pods
        .iter()
        .filter(|p| p.pod.node.as_ref().is_some_and(|n| n.initialized))
    {
        let Some(addr) = &rp.admin_addr else { continue };
        if let Ok(m) = admin.members(addr).await {
            members = Some(
                m.members
                    .into_iter()
                    .map(|m| MemberObs {
                        voter: is_voter(&m),
                        id: m.id,
                        name: m.name,
                        leader: m.leader,
                        reachable: m.reachable,
                        lag: m.lag,
                    })
                    .collect(),
            );
            via = Some(addr.clone());
            break;
        }
    }
    Ok(Observation {
        observed: Observed {
            desired: policy.desired,
            sts_replicas: view.sts_replicas,
            pods,
            members,
            recorded_cluster_id: policy.recorded_cluster_id.clone(),
            max_promote_lag: policy.max_promote_lag,
            stall_after: policy.stall_after,
        },
        runtime: view,
        via,
    })
}

/// A member's role, typed; from a node that predates the typed field, its text.
fn is_voter(m: &concord_proto::Member) -> bool {
    match m.member_role() {
        concord_proto::MemberRole::Unspecified => m.role == "voter",
        role => role == concord_proto::MemberRole::Voter,
    }
}

impl Observation {
    fn addr_of(&self, pod: &str) -> Result<String, StepError> {
        self.runtime
            .pods
            .iter()
            .find(|p| p.pod.name == pod)
            .and_then(|p| p.admin_addr.clone())
            .ok_or_else(|| StepError::Missing(format!("{pod} has no address")))
    }

    fn uid_of(&self, pod: &str) -> Option<&str> {
        self.runtime
            .pods
            .iter()
            .find(|p| p.pod.name == pod)
            .and_then(|p| p.uid.as_deref())
    }

    fn via(&self) -> Result<String, StepError> {
        self.via
            .clone()
            .ok_or_else(|| StepError::Missing("no member answered".into()))
    }

    /// Pod name -> image, for the status.
    pub fn images(&self) -> Vec<(String, String)> {
        self.runtime
            .pods
            .iter()
            .filter_map(|p| Some((p.pod.name.clone(), p.image.clone()?)))
            .collect()
    }

    /// Every pod the StatefulSet should have exists and was created with config `hash`: a
    /// config change has rolled through (a StatefulSet that has not yet seen its new template
    /// still calls its pods up to date; their config hash does not).
    pub fn all_run_config(&self, hash: &str) -> bool {
        self.runtime.pods.len() as u32 >= self.runtime.sts_replicas
            && self
                .runtime
                .pods
                .iter()
                .all(|p| p.config_hash.as_deref() == Some(hash))
    }

    /// The cluster id the initialized nodes report (to record once).
    pub fn cluster_id(&self) -> Option<String> {
        self.observed
            .pods
            .iter()
            .filter_map(|p| p.node.as_ref())
            .find(|n| n.initialized && !n.cluster_id.is_empty())
            .map(|n| n.cluster_id.clone())
    }
}

/// Runs one action; returns the node's own description of what it did.
pub async fn execute(
    action: &Action,
    obs: &Observation,
    runtime: &dyn PodRuntime,
    admin: &dyn NodeAdmin,
    restore_from: Option<&dyn BackupSource>,
) -> Result<String, StepError> {
    let wrap = |source| StepError::Admin {
        action: describe(action),
        source,
    };
    let message = match action {
        Action::Initialize { pod } => match restore_from {
            Some(source) => {
                let backup = source.backup().await?;
                restore_into(admin, &obs.addr_of(pod)?, &backup).await?
            }
            None => admin.init(&obs.addr_of(pod)?).await.map_err(wrap)?.message,
        },
        Action::ScaleStatefulSet { to, .. } => {
            runtime.scale(*to).await?;
            format!("StatefulSet scaled to {to}")
        }
        Action::AddLearner { pod, id, address } => {
            let spec = MemberSpec {
                id: *id,
                name: pod.clone(),
                address: address.clone(),
            };
            admin
                .add_learner(&obs.via()?, spec)
                .await
                .map_err(wrap)?
                .message
        }
        Action::Promote { id, .. } => admin.promote(&obs.via()?, *id).await.map_err(wrap)?.message,
        Action::TransferLeadership { to, .. } => {
            admin
                .transfer_leader(&obs.via()?, *to)
                .await
                .map_err(wrap)?
                .message
        }
        Action::RemoveMember { id, .. } => {
            admin.remove(&obs.via()?, *id).await.map_err(wrap)?.message
        }
        Action::RestartPod { pod } => {
            runtime.restart(pod, obs.uid_of(pod)).await?;
            format!("deleted pod {pod} to restart it on the current template")
        }
    };
    Ok(message)
}

pub fn describe(action: &Action) -> String {
    match action {
        Action::Initialize { pod } => format!("initialize the cluster on {pod}"),
        Action::ScaleStatefulSet { from, to } => format!("scale the StatefulSet {from} -> {to}"),
        Action::AddLearner { pod, id, .. } => format!("add {pod} (id {id}) as a learner"),
        Action::Promote { pod, id } => format!("promote {pod} (id {id}) to voter"),
        Action::TransferLeadership { from, to } => {
            format!("transfer leadership from {from} to member {to}")
        }
        Action::RemoveMember { name, id, reason } => {
            format!("remove {name} (id {id}) from the Raft membership ({reason:?})")
        }
        Action::RestartPod { pod } => format!("restart {pod}"),
    }
}

/// Short CamelCase name of an action, for events and metrics.
pub fn action_kind(action: &Action) -> &'static str {
    match action {
        Action::Initialize { .. } => "Initialize",
        Action::ScaleStatefulSet { .. } => "ScaleStatefulSet",
        Action::AddLearner { .. } => "AddLearner",
        Action::Promote { .. } => "Promote",
        Action::TransferLeadership { .. } => "TransferLeadership",
        Action::RemoveMember { .. } => "RemoveMember",
        Action::RestartPod { .. } => "RestartPod",
    }
}

/// Observe, plan and run at most one action.
pub async fn step(
    runtime: &dyn PodRuntime,
    admin: &dyn NodeAdmin,
    policy: &Policy,
) -> Result<(Observation, Step, Option<Result<String, StepError>>), RuntimeError> {
    let obs = observe(runtime, admin, policy).await?;
    let step = plan::plan(&obs.observed);
    let outcome = match &step {
        Step::Act(action) => {
            let restore_from = policy.restore_from.as_deref();
            Some(execute(action, &obs, runtime, admin, restore_from).await)
        }
        _ => None,
    };
    Ok((obs, step, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_typed_role_wins_and_old_nodes_are_read_by_their_text() {
        let member = |role: &str, typed: concord_proto::MemberRole| concord_proto::Member {
            role: role.into(),
            member_role: typed.into(),
            ..Default::default()
        };
        use concord_proto::MemberRole::*;
        assert!(is_voter(&member("voter", Voter)));
        assert!(!is_voter(&member("learner", Learner)));
        assert!(
            !is_voter(&member("voter", Learner)),
            "the typed field decides"
        );
        assert!(
            is_voter(&member("voter", Unspecified)),
            "a node from before the field"
        );
        assert!(!is_voter(&member("learner", Unspecified)));
    }
}
