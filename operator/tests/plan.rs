//! The membership planner, table-tested case by case and property-tested for its safety
//! invariants. No Kubernetes, no processes: observed state in, one step out.

use std::time::Duration;

use concord_operator::plan::{
    plan, quorum, Action, MemberObs, NodeObs, Observed, PodObs, RemoveReason, Step, WaitReason,
};
use proptest::prelude::*;

const CID: &str = "ckv-test";

fn id(ordinal: u32) -> u64 {
    100 + u64::from(ordinal)
}

fn pod(ordinal: u32, initialized: bool) -> PodObs {
    PodObs {
        ordinal,
        name: format!("kv-{ordinal}"),
        ready: initialized,
        up_to_date: true,
        terminating: false,
        age: Duration::from_secs(60),
        node: Some(NodeObs {
            id: id(ordinal),
            initialized,
            cluster_id: if initialized {
                CID.into()
            } else {
                String::new()
            },
            address: format!("kv-{ordinal}.kv-peers.default.svc:8080"),
            ready: initialized,
            applied_index: 10,
        }),
    }
}

fn voter(ordinal: u32) -> MemberObs {
    MemberObs {
        id: id(ordinal),
        name: format!("kv-{ordinal}"),
        voter: true,
        leader: ordinal == 0,
        reachable: true,
        lag: 0,
    }
}

/// A healthy cluster of `members` voters (kv-0 leads) with spec.replicas = `desired`.
fn healthy(desired: u32, members: u32) -> Observed {
    Observed {
        desired,
        sts_replicas: members,
        pods: (0..members).map(|o| pod(o, true)).collect(),
        members: Some((0..members).map(voter).collect()),
        recorded_cluster_id: Some(CID.into()),
        max_promote_lag: 100,
        stall_after: Duration::from_secs(600),
    }
}

fn member<'a>(o: &'a mut Observed, name: &str) -> &'a mut MemberObs {
    o.members
        .as_mut()
        .and_then(|m| m.iter_mut().find(|m| m.name == name))
        .expect("member")
}

fn drop_member(o: &mut Observed, name: &str) {
    o.members
        .as_mut()
        .expect("members")
        .retain(|m| m.name != name);
}

fn pod_mut<'a>(o: &'a mut Observed, name: &str) -> &'a mut PodObs {
    o.pods.iter_mut().find(|p| p.name == name).expect("pod")
}

fn waits(step: &Step, reason: WaitReason) -> bool {
    matches!(step, Step::Wait { reason: r, .. } if *r == reason)
}

fn act(a: Action) -> Step {
    Step::Act(a)
}

#[test]
fn create_initialises_pod_zero_then_adds_and_promotes_one_at_a_time() {
    // A fresh cluster: three pods in join mode, nothing initialised.
    let mut o = healthy(3, 3);
    o.members = None;
    o.recorded_cluster_id = None;
    o.pods = (0..3).map(|i| pod(i, false)).collect();
    assert_eq!(plan(&o), act(Action::Initialize { pod: "kv-0".into() }));

    // Pod 0 not answering yet: wait, never initialise another pod.
    let mut starting = o.clone();
    starting.pods[0].node = None;
    assert!(waits(&plan(&starting), WaitReason::PodsStarting));

    // Initialised: kv-0 alone. kv-1 is added as a learner.
    o.pods[0] = pod(0, true);
    o.members = Some(vec![voter(0)]);
    assert_eq!(
        plan(&o),
        act(Action::AddLearner {
            pod: "kv-1".into(),
            id: id(1),
            address: "kv-1.kv-peers.default.svc:8080".into()
        })
    );

    // The learner is behind: wait; caught up: promote. kv-2 waits its turn.
    let mut learner = voter(1);
    learner.voter = false;
    learner.lag = 5000;
    o.members = Some(vec![voter(0), learner.clone()]);
    assert!(waits(&plan(&o), WaitReason::CatchingUp));
    learner.lag = 3;
    o.members = Some(vec![voter(0), learner]);
    assert_eq!(
        plan(&o),
        act(Action::Promote {
            pod: "kv-1".into(),
            id: id(1)
        })
    );
}

#[test]
fn a_new_statefulset_is_created_at_full_size() {
    let mut o = healthy(3, 0);
    o.members = None;
    o.recorded_cluster_id = None;
    assert_eq!(plan(&o), act(Action::ScaleStatefulSet { from: 0, to: 3 }));
}

#[test]
fn scale_up_grows_the_statefulset_then_adds_members() {
    let o = healthy(5, 3);
    assert_eq!(plan(&o), act(Action::ScaleStatefulSet { from: 3, to: 5 }));
    let mut o = healthy(5, 3);
    o.sts_replicas = 5;
    o.pods.push(pod(3, false));
    o.pods.push(pod(4, false));
    assert!(matches!(plan(&o), Step::Act(Action::AddLearner { ref pod, .. }) if pod == "kv-3"));
    // kv-3's pod not started yet: wait for it rather than add kv-4 first.
    o.pods[3].node = None;
    o.pods[3].age = Duration::from_secs(30);
    assert!(waits(&plan(&o), WaitReason::PodsStarting));
    // Still not started long after: say so (Degraded), still without skipping ahead.
    o.pods[3].age = Duration::from_secs(601);
    assert!(waits(&plan(&o), WaitReason::PodNotStarting));
}

#[test]
fn scale_down_removes_the_highest_ordinal_before_shrinking() {
    let mut o = healthy(3, 5);
    assert_eq!(
        plan(&o),
        act(Action::RemoveMember {
            name: "kv-4".into(),
            id: id(4),
            reason: RemoveReason::ScaleDown
        })
    );
    // The leader hands over before it is removed.
    member(&mut o, "kv-0").leader = false;
    member(&mut o, "kv-4").leader = true;
    assert_eq!(
        plan(&o),
        act(Action::TransferLeadership {
            from: "kv-4".into(),
            to: id(0)
        })
    );
    // kv-4 out; kv-3 still a member: it goes next, the StatefulSet stays at 5.
    let mut o = healthy(3, 5);
    drop_member(&mut o, "kv-4");
    assert!(matches!(plan(&o), Step::Act(Action::RemoveMember { ref name, .. }) if name == "kv-3"));
    // Both out: now the StatefulSet shrinks.
    drop_member(&mut o, "kv-3");
    assert_eq!(plan(&o), act(Action::ScaleStatefulSet { from: 5, to: 3 }));
}

#[test]
fn scale_down_never_breaks_quorum() {
    let mut o = healthy(3, 5);
    member(&mut o, "kv-1").reachable = false;
    member(&mut o, "kv-2").reachable = false;
    // Removing kv-4 leaves 4 voters needing 3 healthy; only kv-0 and kv-3 are.
    let step = plan(&o);
    assert!(waits(&step, WaitReason::QuorumAtRisk), "{step:?}");
}

#[test]
fn a_member_back_with_an_empty_volume_is_replaced() {
    let mut o = healthy(3, 3);
    let p = pod_mut(&mut o, "kv-1");
    p.ready = false;
    let node = p.node.as_mut().expect("node");
    node.id = 999;
    node.initialized = false;
    node.cluster_id.clear();
    member(&mut o, "kv-1").reachable = false;
    assert_eq!(
        plan(&o),
        act(Action::RemoveMember {
            name: "kv-1".into(),
            id: id(1),
            reason: RemoveReason::Replaced
        })
    );
    // Stale member gone: the new one is added under its new id.
    drop_member(&mut o, "kv-1");
    assert!(matches!(
        plan(&o),
        Step::Act(Action::AddLearner { id: 999, .. })
    ));
}

#[test]
fn replacement_waits_when_it_would_drop_below_quorum() {
    let mut o = healthy(3, 3);
    let node = pod_mut(&mut o, "kv-1").node.as_mut().expect("node");
    node.id = 999;
    node.initialized = false;
    member(&mut o, "kv-1").reachable = false;
    member(&mut o, "kv-2").reachable = false;
    // One of three voters reachable: the quorum is already lost, which says more than "at
    // risk" (removing an unreachable voter costs no healthy one, and a quorum grows by at most
    // one voter per promotion: only a lost quorum can stop either).
    assert!(waits(&plan(&o), WaitReason::QuorumLost));
}

#[test]
fn a_spec_change_mid_scale_converges_safely() {
    // 3 -> 5 was under way (kv-3 a learner, kv-4 pod started), then spec went back to 3.
    let mut o = healthy(3, 3);
    o.sts_replicas = 5;
    o.pods.push(pod(3, true));
    o.pods.push(pod(4, false));
    let mut l = voter(3);
    l.voter = false;
    o.members.as_mut().expect("members").push(l);
    assert_eq!(
        plan(&o),
        act(Action::RemoveMember {
            name: "kv-3".into(),
            id: id(3),
            reason: RemoveReason::Abandoned
        })
    );
    drop_member(&mut o, "kv-3");
    assert_eq!(plan(&o), act(Action::ScaleStatefulSet { from: 5, to: 3 }));
}

#[test]
fn rolling_upgrade_goes_follower_by_follower_and_the_leader_last() {
    let mut o = healthy(3, 3);
    for p in &mut o.pods {
        p.up_to_date = false;
    }
    assert_eq!(plan(&o), act(Action::RestartPod { pod: "kv-2".into() }));

    // kv-2 restarted onto the new template and not ready yet: nothing else restarts.
    let p = pod_mut(&mut o, "kv-2");
    p.up_to_date = true;
    p.ready = false;
    p.age = Duration::from_secs(5);
    assert!(waits(&plan(&o), WaitReason::PodRestarting));

    // Back, but still catching up: wait.
    pod_mut(&mut o, "kv-2").ready = true;
    member(&mut o, "kv-2").lag = 5000;
    assert!(waits(&plan(&o), WaitReason::PodRestarting));
    member(&mut o, "kv-2").lag = 0;
    assert_eq!(plan(&o), act(Action::RestartPod { pod: "kv-1".into() }));

    // Only the leader is left: hand over first.
    pod_mut(&mut o, "kv-1").up_to_date = true;
    assert_eq!(
        plan(&o),
        act(Action::TransferLeadership {
            from: "kv-0".into(),
            to: id(1)
        })
    );
    member(&mut o, "kv-0").leader = false;
    member(&mut o, "kv-1").leader = true;
    assert_eq!(plan(&o), act(Action::RestartPod { pod: "kv-0".into() }));
    pod_mut(&mut o, "kv-0").up_to_date = true;
    assert_eq!(plan(&o), Step::Converged);
}

#[test]
fn a_pod_that_does_not_come_back_stops_the_rollout() {
    let mut o = healthy(3, 3);
    for p in &mut o.pods {
        p.up_to_date = false;
    }
    let p = pod_mut(&mut o, "kv-2");
    p.up_to_date = true;
    p.ready = false;
    p.node = None;
    p.age = Duration::from_secs(601);
    member(&mut o, "kv-2").reachable = false;
    let step = plan(&o);
    assert!(waits(&step, WaitReason::UpgradeStalled), "{step:?}");
    assert!(WaitReason::UpgradeStalled.blocking());
}

#[test]
fn a_rollout_waits_while_a_members_admin_api_does_not_answer() {
    // Found by the property test: the pod is Ready and Raft sees it, but the operator cannot
    // read its admin API, so it cannot know the member is caught up — no other pod restarts.
    let mut o = healthy(3, 3);
    for p in &mut o.pods {
        p.up_to_date = false;
    }
    pod_mut(&mut o, "kv-1").node = None;
    let step = plan(&o);
    assert!(waits(&step, WaitReason::PodRestarting), "{step:?}");
    pod_mut(&mut o, "kv-1").node = Some(pod(1, true).node.expect("a node"));
    assert_eq!(plan(&o), act(Action::RestartPod { pod: "kv-2".into() }));
}

#[test]
fn a_single_member_restarts_in_place() {
    let mut o = healthy(1, 1);
    o.pods[0].up_to_date = false;
    assert_eq!(plan(&o), act(Action::RestartPod { pod: "kv-0".into() }));
}

#[test]
fn lost_quorum_is_reported_and_nothing_is_done() {
    let mut o = healthy(3, 3);
    o.members = None;
    o.pods[1].node = None;
    o.pods[2].node = None;
    let step = plan(&o);
    assert!(waits(&step, WaitReason::QuorumLost), "{step:?}");
}

#[test]
fn a_leader_that_reaches_no_quorum_is_quorum_lost_and_nothing_is_done() {
    // Found by the simulated cluster (story 7): two of three pods down, the third still
    // believes it leads and answers, so the members are known — but nothing can commit.
    let mut o = healthy(3, 3);
    for name in ["kv-1", "kv-2"] {
        member(&mut o, name).reachable = false;
        let p = pod_mut(&mut o, name);
        p.ready = false;
        p.node = None;
    }
    let step = plan(&o);
    assert!(waits(&step, WaitReason::QuorumLost), "{step:?}");
    // Even with a template change or a scale pending.
    o.desired = 5;
    for p in &mut o.pods {
        p.up_to_date = false;
    }
    assert!(waits(&plan(&o), WaitReason::QuorumLost));
}

#[test]
fn a_cluster_whose_every_volume_is_empty_is_not_recreated() {
    let mut o = healthy(3, 3);
    o.members = None;
    o.pods = (0..3).map(|i| pod(i, false)).collect();
    assert!(waits(&plan(&o), WaitReason::DataLost));
}

#[test]
fn a_pod_with_another_clusters_data_is_left_alone() {
    let mut o = healthy(3, 2);
    o.sts_replicas = 3;
    let mut p = pod(2, true);
    p.node.as_mut().expect("node").cluster_id = "ckv-other".into();
    o.pods.push(p);
    assert!(waits(&plan(&o), WaitReason::ForeignCluster));
}

#[test]
fn promotion_waits_when_the_larger_quorum_is_not_healthy() {
    let mut o = healthy(4, 3);
    o.sts_replicas = 4;
    o.pods.push(pod(3, true));
    let mut l = voter(3);
    l.voter = false;
    o.members.as_mut().expect("members").push(l);
    member(&mut o, "kv-1").reachable = false;
    member(&mut o, "kv-2").reachable = false;
    // One of three voters reachable: the quorum is already lost, which says more than "at
    // risk" (removing an unreachable voter costs no healthy one, and a quorum grows by at most
    // one voter per promotion: only a lost quorum can stop either).
    assert!(waits(&plan(&o), WaitReason::QuorumLost));
}

#[test]
fn a_healthy_cluster_at_its_size_is_converged() {
    assert_eq!(plan(&healthy(3, 3)), Step::Converged);
    assert_eq!(plan(&healthy(1, 1)), Step::Converged);
}

// ---- invariants over arbitrary observations ----

fn arb_observed() -> impl Strategy<Value = Observed> {
    (1u32..=9, 0u32..=10, any::<u64>()).prop_map(|(desired, sts, seed)| {
        let mut rng = seed;
        let mut next = move |n: u64| {
            // xorshift: deterministic per case, shrinks with the seed.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n.max(1)
        };
        let initialized_cluster = next(4) != 0;
        let present: Vec<u32> = (0..sts).filter(|_| next(8) != 0).collect();
        let pods: Vec<PodObs> = present
            .into_iter()
            .map(|o| {
                let mut p = pod(o, initialized_cluster && next(5) != 0);
                p.ready = next(4) != 0;
                p.up_to_date = next(3) != 0;
                p.terminating = next(10) == 0;
                p.age = Duration::from_secs(next(1200));
                if next(6) == 0 {
                    p.node = None;
                } else if next(8) == 0 {
                    p.node.as_mut().expect("node").id = 900 + u64::from(o);
                }
                p
            })
            .collect();
        let members = if initialized_cluster && next(6) != 0 {
            let n = 1 + next(10) as u32;
            let leader = next(u64::from(n)) as u32;
            let chosen: Vec<u32> = (0..n).filter(|o| *o == leader || next(6) != 0).collect();
            Some(
                chosen
                    .into_iter()
                    .map(|o| MemberObs {
                        id: id(o),
                        name: format!("kv-{o}"),
                        voter: o == leader || next(5) != 0,
                        leader: o == leader,
                        reachable: o == leader || next(4) != 0,
                        lag: if next(3) == 0 { 5000 } else { next(50) },
                    })
                    .collect(),
            )
        } else {
            None
        };
        Observed {
            desired,
            sts_replicas: sts,
            pods,
            members,
            recorded_cluster_id: initialized_cluster.then(|| CID.to_string()),
            max_promote_lag: 100,
            stall_after: Duration::from_secs(600),
        }
    })
}

fn ordinal(name: &str) -> Option<u32> {
    name.strip_prefix("kv-")?.parse().ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn plans_keep_their_invariants(o in arb_observed()) {
        let step = plan(&o);
        let members = o.members.clone().unwrap_or_default();
        let voters: Vec<&MemberObs> = members.iter().filter(|m| m.voter).collect();
        // A leader that reaches no quorum of voters: nothing is acted on.
        if !voters.is_empty() && voters.iter().filter(|v| v.reachable).count() < quorum(voters.len()) {
            prop_assert!(!matches!(step, Step::Act(_)), "{o:?} -> {step:?}");
        }
        let learners = members.iter().filter(|m| !m.voter).count();
        match &step {
            Step::Act(Action::RemoveMember { id, .. }) => {
                let target = members.iter().find(|m| m.id == *id).expect("removes a member");
                if target.voter {
                    // Never remove a voter if the remaining healthy voters fall below quorum,
                    // never the last voter, never the leader itself.
                    let remaining: Vec<_> = voters.iter().filter(|v| v.id != *id).collect();
                    let healthy = remaining.iter().filter(|v| v.reachable).count();
                    prop_assert!(!remaining.is_empty());
                    prop_assert!(healthy >= quorum(remaining.len()), "{o:?}");
                    prop_assert!(!target.leader);
                }
            }
            Step::Act(Action::ScaleStatefulSet { from, to }) => {
                prop_assert_eq!(*from, o.sts_replicas);
                if to < from {
                    // Never shrink past a pod that is still a member.
                    prop_assert!(members.iter().all(|m| ordinal(&m.name).is_none_or(|n| n < *to)), "{o:?}");
                    prop_assert!(*to >= o.desired);
                }
            }
            Step::Act(Action::RestartPod { pod }) => {
                // Only when every other member pod is back, ready and caught up.
                if voters.len() > 1 {
                    for v in &voters {
                        prop_assert!(v.reachable && v.lag <= o.max_promote_lag, "{o:?}");
                        let p = o.pods.iter().find(|p| p.name == v.name).expect("member pod");
                        prop_assert!(p.ready && !p.terminating && p.node.is_some(), "{o:?}");
                    }
                    prop_assert!(!voters.iter().any(|v| v.leader && v.name == *pod));
                }
                prop_assert_eq!(learners, 0);
            }
            Step::Act(Action::Promote { id, .. }) => {
                let l = members.iter().find(|m| m.id == *id).expect("a learner");
                prop_assert!(!l.voter && l.reachable && l.lag <= o.max_promote_lag);
                let healthy = voters.iter().filter(|v| v.reachable).count();
                prop_assert!(healthy + 1 >= quorum(voters.len() + 1));
            }
            Step::Act(Action::AddLearner { pod, .. }) => {
                // One learner at a time.
                prop_assert_eq!(learners, 0);
                prop_assert!(ordinal(pod).is_some_and(|n| n < o.desired));
            }
            Step::Act(Action::Initialize { .. }) => {
                prop_assert!(o.members.is_none() && o.recorded_cluster_id.is_none());
                prop_assert!(o.pods.iter().all(|p| p.node.as_ref().is_none_or(|n| !n.initialized)));
            }
            Step::Act(Action::TransferLeadership { to, .. }) => {
                let t = voters.iter().find(|v| v.id == *to).expect("to a voter");
                prop_assert!(t.reachable && !t.leader);
            }
            Step::Wait { .. } | Step::Converged => {}
        }
    }
}
