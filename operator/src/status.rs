//! The status written back to the ConcordCluster: phase, members and conditions, computed
//! purely from the observation and the planned step.

use crate::crd::{ConcordClusterStatus, Condition, MemberRole, MemberStatus, Phase};
use crate::plan::{quorum, Action, Observed, RemoveReason, Step, WaitReason};

pub struct StatusInput<'a> {
    pub generation: Option<i64>,
    pub previous: Option<&'a ConcordClusterStatus>,
    pub selector: String,
    pub image: String,
    /// Spec errors (nothing was changed) and warnings.
    pub errors: &'a [String],
    pub warnings: &'a [String],
    pub paused: bool,
    pub observed: Option<&'a Observed>,
    pub cluster_id: Option<String>,
    pub step: Option<&'a Step>,
    /// What stops the cluster from being created as specified (reason, message): its
    /// `restoreFrom` backup cannot be restored.
    pub failure: Option<(&'a str, &'a str)>,
    /// Pod image by pod name.
    pub pod_images: &'a [(String, String)],
    pub now: String,
}

pub fn compute(i: &StatusInput<'_>) -> ConcordClusterStatus {
    let prev = i.previous.cloned().unwrap_or_default();
    let mut s = ConcordClusterStatus {
        selector: Some(i.selector.clone()),
        observed_generation: i.generation,
        cluster_id: i.cluster_id.clone().or(prev.cluster_id.clone()),
        current_image: prev.current_image.clone(),
        ..Default::default()
    };
    let mut conds: Vec<Condition> = Vec::new();
    let cond = |t: &str, ok: bool, reason: &str, message: String| Condition {
        type_: t.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: None,
        observed_generation: i.generation,
    };

    if let Some(o) = i.observed {
        s.replicas = o.pods.len() as i32;
        s.ready_replicas = o.pods.iter().filter(|p| p.ready).count() as i32;
        if let Some(members) = &o.members {
            s.leader = members.iter().find(|m| m.leader).map(|m| m.name.clone());
            s.members = members
                .iter()
                .map(|m| {
                    let pod = o.pods.iter().find(|p| p.name == m.name);
                    MemberStatus {
                        name: m.name.clone(),
                        id: m.id.to_string(),
                        role: if m.voter {
                            MemberRole::Voter
                        } else {
                            MemberRole::Learner
                        },
                        healthy: m.reachable && pod.is_some_and(|p| p.ready),
                        leader: m.leader,
                        applied_index: pod
                            .and_then(|p| p.node.as_ref())
                            .map_or(0, |n| n.applied_index),
                        image: i
                            .pod_images
                            .iter()
                            .find(|(p, _)| *p == m.name)
                            .map(|(_, img)| img.clone()),
                    }
                })
                .collect();
            // The image is "current" once every member runs it.
            if !s.members.is_empty()
                && s.members
                    .iter()
                    .all(|m| m.image.as_deref() == Some(&i.image))
            {
                s.current_image = Some(i.image.clone());
            }
        }
    }

    let voters: Vec<&MemberStatus> = s
        .members
        .iter()
        .filter(|m| m.role == MemberRole::Voter)
        .collect();
    let healthy_voters = voters.iter().filter(|m| m.healthy).count();
    let has_leader = s.leader.is_some();
    let available = has_leader && !voters.is_empty() && healthy_voters >= quorum(voters.len());

    let (progress_reason, progress_msg): (Option<&str>, String) = match i.step {
        Some(Step::Act(a)) => (
            Some(progress_reason(a, i.observed)),
            crate::membership::describe(a),
        ),
        Some(Step::Wait { reason, message }) if !reason.blocking() => {
            let r = match reason {
                WaitReason::CatchingUp => "ScalingUp",
                WaitReason::PodRestarting => "Upgrading",
                _ => "Creating",
            };
            (Some(r), message.clone())
        }
        _ => (None, String::new()),
    };
    let blocked = match i.step {
        Some(Step::Wait { reason, message }) if reason.blocking() => {
            Some((reason.as_str(), message.clone()))
        }
        _ => None,
    };

    let phase;
    if !i.errors.is_empty() {
        phase = Phase::Failed;
        conds.push(cond("Degraded", true, "InvalidSpec", i.errors.join("; ")));
        conds.push(cond(
            "Progressing",
            false,
            "InvalidSpec",
            "the spec is invalid; nothing was changed".into(),
        ));
    } else if let Some((reason, message)) = i.failure {
        phase = Phase::Failed;
        conds.push(cond("Degraded", true, reason, message.to_string()));
        conds.push(cond(
            "Progressing",
            false,
            reason,
            "the first member was not initialized; fix spec.restoreFrom or the backup".into(),
        ));
    } else if i.paused {
        phase = Phase::Paused;
        conds.push(cond(
            "Progressing",
            false,
            "Paused",
            "spec.paused is true".into(),
        ));
    } else {
        match &blocked {
            Some((reason, message)) => {
                conds.push(cond("Degraded", true, reason, message.clone()));
            }
            None => {
                let unhealthy: Vec<&str> = voters
                    .iter()
                    .filter(|m| !m.healthy)
                    .map(|m| m.name.as_str())
                    .collect();
                if unhealthy.is_empty() {
                    conds.push(cond(
                        "Degraded",
                        false,
                        "AsExpected",
                        "all members healthy".into(),
                    ));
                } else {
                    conds.push(cond(
                        "Degraded",
                        true,
                        "MemberUnhealthy",
                        format!("unhealthy voter(s): {}", unhealthy.join(", ")),
                    ));
                }
            }
        }
        match progress_reason {
            Some(r) => conds.push(cond("Progressing", true, r, progress_msg)),
            None => conds.push(cond(
                "Progressing",
                false,
                "Converged",
                "no change in progress".into(),
            )),
        }
        phase = if matches!(blocked, Some(("QuorumLost", _)) | Some(("DataLost", _))) {
            Phase::QuorumLost
        } else if blocked.is_some() {
            Phase::Degraded
        } else if s.cluster_id.is_none() || voters.is_empty() {
            Phase::Creating
        } else {
            match progress_reason {
                Some("Upgrading") => Phase::Upgrading,
                Some("ScalingUp") | Some("ScalingDown") | Some("MemberReplaced") => Phase::Scaling,
                _ if !available => Phase::Degraded,
                _ => Phase::Running,
            }
        };
    }
    conds.insert(
        0,
        cond(
            "Available",
            available,
            if available {
                "QuorumHealthy"
            } else if has_leader {
                "QuorumAtRisk"
            } else if s.cluster_id.is_some() {
                "QuorumLost"
            } else {
                "Initializing"
            },
            if available {
                format!(
                    "leader {}, {healthy_voters}/{} voters healthy",
                    s.leader.clone().unwrap_or_default(),
                    voters.len()
                )
            } else {
                format!(
                    "{healthy_voters}/{} voters healthy, leader: {}",
                    voters.len(),
                    s.leader.clone().unwrap_or_else(|| "none".into())
                )
            },
        ),
    );
    for w in i.warnings {
        conds.push(cond("Warning", true, "SpecWarning", w.clone()));
    }
    // A condition keeps its transition time while its status does not change.
    for c in &mut conds {
        let before = prev
            .conditions
            .iter()
            .find(|p| p.type_ == c.type_)
            .filter(|p| p.status == c.status)
            .and_then(|p| p.last_transition_time.clone());
        c.last_transition_time = Some(before.unwrap_or_else(|| i.now.clone()));
    }
    s.conditions = conds;
    s.phase = Some(phase);
    s
}

fn progress_reason(a: &Action, o: Option<&Observed>) -> &'static str {
    // A leadership transfer precedes either removing the leader (scale-down) or restarting it.
    let shrinking = o.is_some_and(|o| {
        o.members
            .as_ref()
            .is_some_and(|m| m.iter().filter(|m| m.voter).count() as u32 > o.desired)
    });
    match a {
        Action::TransferLeadership { .. } if shrinking => "ScalingDown",
        Action::Initialize { .. } => "Creating",
        Action::ScaleStatefulSet { from, to } if to < from => "ScalingDown",
        Action::ScaleStatefulSet { .. } | Action::AddLearner { .. } | Action::Promote { .. } => {
            "ScalingUp"
        }
        Action::RemoveMember {
            reason: RemoveReason::Replaced,
            ..
        } => "MemberReplaced",
        Action::RemoveMember { .. } => "ScalingDown",
        Action::TransferLeadership { .. } | Action::RestartPod { .. } => "Upgrading",
    }
}

/// How often a status whose only change is the members' applied indexes is rewritten: every
/// write is a watch event that triggers another reconcile, so a cluster taking writes must not
/// rewrite its status on every pass.
pub const PROGRESS_REFRESH: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether `new` is worth writing over `previous`, given the time since our last write.
pub fn needs_write(
    previous: Option<&ConcordClusterStatus>,
    new: &ConcordClusterStatus,
    since_last_write: Option<std::time::Duration>,
) -> bool {
    let Some(previous) = previous else {
        return true;
    };
    if previous == new {
        return false;
    }
    let without_progress = |s: &ConcordClusterStatus| {
        let mut s = s.clone();
        for m in &mut s.members {
            m.applied_index = 0;
        }
        s
    };
    without_progress(previous) != without_progress(new)
        || since_last_write.is_none_or(|d| d >= PROGRESS_REFRESH)
}

/// The condition that says whether the cluster has quorum, for metrics and events.
pub fn quorum_lost(s: &ConcordClusterStatus) -> bool {
    s.phase == Some(Phase::QuorumLost)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{MemberObs, PodObs};
    use std::time::Duration;

    fn observed(reachable: [bool; 3]) -> Observed {
        Observed {
            desired: 3,
            sts_replicas: 3,
            pods: (0..3)
                .map(|o| PodObs {
                    ordinal: o,
                    name: format!("kv-{o}"),
                    ready: reachable[o as usize],
                    up_to_date: true,
                    terminating: false,
                    age: Duration::from_secs(1),
                    node: None,
                })
                .collect(),
            members: Some(
                (0..3)
                    .map(|o| MemberObs {
                        id: o as u64 + 1,
                        name: format!("kv-{o}"),
                        voter: true,
                        leader: o == 0,
                        reachable: reachable[o as usize],
                        lag: 0,
                    })
                    .collect(),
            ),
            recorded_cluster_id: Some("c".into()),
            max_promote_lag: 10,
            stall_after: Duration::from_secs(60),
        }
    }

    fn input<'a>(o: &'a Observed, step: &'a Step) -> StatusInput<'a> {
        StatusInput {
            generation: Some(2),
            previous: None,
            selector: "s".into(),
            image: "img".into(),
            errors: &[],
            warnings: &[],
            paused: false,
            observed: Some(o),
            cluster_id: Some("c".into()),
            step: Some(step),
            failure: None,
            pod_images: &[],
            now: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn condition<'a>(s: &'a ConcordClusterStatus, t: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .expect("condition")
    }

    #[test]
    fn an_unhealthy_member_degrades_but_keeps_availability() {
        let o = observed([true, true, false]);
        let s = compute(&input(&o, &Step::Converged));
        assert_eq!(s.phase, Some(Phase::Running));
        assert_eq!(condition(&s, "Available").status, "True");
        assert_eq!(condition(&s, "Degraded").reason, "MemberUnhealthy");
        assert!(condition(&s, "Degraded").message.contains("kv-2"));
    }

    #[test]
    fn a_backup_that_cannot_be_restored_fails_the_cluster_naming_the_cause() {
        let mut o = observed([true, true, true]);
        o.members = None;
        let step = Step::Act(crate::plan::Action::Initialize { pod: "kv-0".into() });
        let mut i = input(&o, &step);
        i.cluster_id = None;
        i.failure = Some(("BackupCorrupt", "s3://b/k: checksum did not match"));
        let s = compute(&i);
        assert_eq!(s.phase, Some(Phase::Failed));
        let d = condition(&s, "Degraded");
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "BackupCorrupt")
        );
        assert!(d.message.contains("s3://b/k"));
        assert_eq!(condition(&s, "Progressing").status, "False");
        assert_eq!(condition(&s, "Available").status, "False");
    }

    #[test]
    fn lost_quorum_is_its_own_phase() {
        let mut o = observed([true, false, false]);
        o.members = None;
        let step = Step::Wait {
            reason: WaitReason::QuorumLost,
            message: "no leader".into(),
        };
        let s = compute(&input(&o, &step));
        assert_eq!(s.phase, Some(Phase::QuorumLost));
        assert!(quorum_lost(&s));
        assert_eq!(condition(&s, "Available").status, "False");
        assert_eq!(condition(&s, "Available").reason, "QuorumLost");
        assert_eq!(condition(&s, "Degraded").reason, "QuorumLost");
    }

    #[test]
    fn applied_index_progress_alone_is_written_at_most_every_refresh() {
        let o = observed([true, true, true]);
        let before = compute(&input(&o, &Step::Converged));
        let mut after = before.clone();
        after.members[0].applied_index += 100;
        let soon = Some(std::time::Duration::from_secs(1));
        assert!(!needs_write(Some(&before), &before, None));
        assert!(!needs_write(Some(&before), &after, soon));
        assert!(needs_write(Some(&before), &after, Some(PROGRESS_REFRESH)));
        assert!(needs_write(Some(&before), &after, None));
        // Anything else is written straight away.
        let mut leader_moved = after.clone();
        leader_moved.leader = Some("kv-1".into());
        assert!(needs_write(Some(&before), &leader_moved, soon));
        assert!(needs_write(None, &before, soon));
    }

    #[test]
    fn transition_times_survive_unchanged_conditions() {
        let o = observed([true, true, true]);
        let first = compute(&input(&o, &Step::Converged));
        let mut i = input(&o, &Step::Converged);
        i.previous = Some(&first);
        i.now = "2026-01-02T00:00:00Z".into();
        let second = compute(&i);
        assert_eq!(
            condition(&second, "Available")
                .last_transition_time
                .as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
        assert_eq!(first, second);
    }
}
