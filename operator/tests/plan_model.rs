//! The planner driven against a model of a cluster through random histories: spec changes
//! (scale, new template), pod crashes and wiped volumes between steps. Checked at every
//! step: the operator's own action never takes a healthy quorum away, never restarts a pod
//! while another member is down, never shrinks past a member. Checked at the end: once faults
//! stop, the plan converges to exactly the spec.

use std::collections::BTreeMap;
use std::time::Duration;

use concord_operator::plan::{plan, quorum, Action, MemberObs, NodeObs, Observed, PodObs, Step};
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct ModelPod {
    id: u64,
    initialized: bool,
    up: bool,
    revision: u64,
}

#[derive(Clone, Debug)]
struct Model {
    desired: u32,
    sts: u32,
    revision: u64,
    pods: BTreeMap<u32, ModelPod>,
    /// (id, name, voter)
    members: Vec<(u64, String, bool)>,
    leader: Option<u64>,
    next_id: u64,
    cluster_id: Option<String>,
}

impl Model {
    fn new(desired: u32) -> Model {
        Model {
            desired,
            sts: 0,
            revision: 1,
            pods: BTreeMap::new(),
            members: Vec::new(),
            leader: None,
            next_id: 1,
            cluster_id: None,
        }
    }

    fn fresh_pod(&mut self) -> ModelPod {
        self.next_id += 1;
        ModelPod {
            id: self.next_id,
            initialized: false,
            up: true,
            revision: self.revision,
        }
    }

    fn name_up(&self, name: &str) -> bool {
        self.pods
            .iter()
            .any(|(o, p)| format!("kv-{o}") == name && p.up)
    }

    fn member_up(&self, id: u64, name: &str) -> bool {
        self.pods
            .iter()
            .any(|(o, p)| format!("kv-{o}") == name && p.up && p.id == id)
    }

    fn voters(&self) -> Vec<&(u64, String, bool)> {
        self.members.iter().filter(|m| m.2).collect()
    }

    fn healthy_voters(&self) -> usize {
        self.voters()
            .iter()
            .filter(|m| self.member_up(m.0, &m.1))
            .count()
    }

    fn has_quorum(&self) -> bool {
        let v = self.voters().len();
        v > 0 && self.healthy_voters() >= quorum(v)
    }

    /// Raft elects someone among the healthy voters whenever a quorum is up.
    fn elect(&mut self) {
        let leader_ok = self.leader.is_some_and(|l| {
            self.voters()
                .iter()
                .any(|m| m.0 == l && self.member_up(m.0, &m.1))
        });
        if !self.has_quorum() {
            self.leader = None;
        } else if !leader_ok {
            self.leader = self
                .voters()
                .iter()
                .find(|m| self.member_up(m.0, &m.1))
                .map(|m| m.0);
        }
    }

    fn observe(&self) -> Observed {
        let pods = self
            .pods
            .iter()
            .map(|(o, p)| {
                let name = format!("kv-{o}");
                let member = self.members.iter().any(|m| m.0 == p.id && m.1 == name);
                PodObs {
                    ordinal: *o,
                    name,
                    ready: p.up && p.initialized && member && self.leader.is_some(),
                    up_to_date: p.revision == self.revision,
                    terminating: false,
                    age: Duration::from_secs(30),
                    node: p.up.then(|| NodeObs {
                        id: p.id,
                        initialized: p.initialized,
                        cluster_id: if p.initialized {
                            "ckv-model".into()
                        } else {
                            String::new()
                        },
                        address: format!("kv-{o}:8080"),
                        ready: p.initialized,
                        applied_index: 0,
                    }),
                }
            })
            .collect();
        let members = self.leader.map(|l| {
            self.members
                .iter()
                .map(|(id, name, voter)| MemberObs {
                    id: *id,
                    name: name.clone(),
                    voter: *voter,
                    leader: *id == l,
                    reachable: self.member_up(*id, name),
                    lag: 0,
                })
                .collect()
        });
        Observed {
            desired: self.desired,
            sts_replicas: self.sts,
            pods,
            members,
            recorded_cluster_id: self.cluster_id.clone(),
            max_promote_lag: 100,
            stall_after: Duration::from_secs(600),
        }
    }

    /// Applies the operator's action and checks it kept the cluster safe.
    fn apply(&mut self, action: &Action) -> Result<(), String> {
        let had_quorum = self.has_quorum();
        match action {
            Action::Initialize { pod } => {
                let o: u32 = pod[3..].parse().map_err(|_| "bad pod")?;
                let p = self.pods.get_mut(&o).ok_or("no pod")?;
                p.initialized = true;
                self.members = vec![(p.id, pod.clone(), true)];
                self.leader = Some(p.id);
                self.cluster_id = Some("ckv-model".into());
            }
            Action::ScaleStatefulSet { to, .. } => {
                for o in *to..self.sts {
                    let name = format!("kv-{o}");
                    if self.members.iter().any(|m| m.1 == name) {
                        return Err(format!("shrank the StatefulSet past member {name}"));
                    }
                    // storage.onScaleDown: Delete
                    self.pods.remove(&o);
                }
                for o in self.sts..*to {
                    let p = self.fresh_pod();
                    self.pods.insert(o, p);
                }
                self.sts = *to;
            }
            Action::AddLearner { pod, id, .. } => {
                if self.members.iter().any(|m| !m.2) {
                    return Err("a second learner while one is in progress".into());
                }
                self.members.push((*id, pod.clone(), false));
                for p in self.pods.values_mut() {
                    if p.id == *id {
                        p.initialized = true;
                    }
                }
            }
            Action::Promote { id, .. } => {
                let m = self
                    .members
                    .iter_mut()
                    .find(|m| m.0 == *id)
                    .ok_or("promote unknown")?;
                m.2 = true;
            }
            Action::TransferLeadership { to, .. } => {
                let ok = self
                    .voters()
                    .iter()
                    .any(|m| m.0 == *to && self.member_up(m.0, &m.1));
                if !ok {
                    return Err("transfer to a voter that is down".into());
                }
                self.leader = Some(*to);
            }
            Action::RemoveMember { id, .. } => {
                if self.leader == Some(*id) {
                    return Err("removed the leader without handing over".into());
                }
                self.members.retain(|m| m.0 != *id);
            }
            Action::RestartPod { pod } => {
                let others_down = self
                    .members
                    .iter()
                    .filter(|m| m.2 && &m.1 != pod)
                    .any(|m| !self.name_up(&m.1));
                if others_down {
                    return Err(format!("restarted {pod} while another member is down"));
                }
                let o: u32 = pod[3..].parse().map_err(|_| "bad pod")?;
                let rev = self.revision;
                let p = self.pods.get_mut(&o).ok_or("no pod")?;
                p.up = false;
                p.revision = rev;
            }
        }
        // A 1- or 2-voter cluster tolerates no failure: restarting any member for an upgrade
        // is an outage there, and the one accepted (docs/kubernetes.md: upgrades).
        let single = self.voters().len() <= 2 && matches!(action, Action::RestartPod { .. });
        if had_quorum && !self.has_quorum() && !single {
            return Err(format!("{action:?} lost the quorum: {self:?}"));
        }
        self.elect();
        Ok(())
    }

    fn converged_to_spec(&self) -> bool {
        let mut voters: Vec<String> = self.voters().iter().map(|m| m.1.clone()).collect();
        voters.sort();
        let mut want: Vec<String> = (0..self.desired).map(|o| format!("kv-{o}")).collect();
        want.sort();
        voters == want
            && self.members.iter().all(|m| m.2)
            && self.sts == self.desired
            && self
                .pods
                .values()
                .all(|p| p.up && p.revision == self.revision)
    }
}

#[derive(Clone, Debug)]
enum Event {
    /// The operator takes one step.
    Step,
    SetReplicas(u32),
    NewTemplate,
    /// A pod's process dies; Kubernetes restarts it a few events later.
    Crash(u32),
    /// A pod comes back with an empty volume.
    Wipe(u32),
    /// Crashed pods restart.
    Heal,
}

fn arb_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        12 => Just(Event::Step),
        1 => (1u32..=7).prop_map(Event::SetReplicas),
        1 => Just(Event::NewTemplate),
        1 => (0u32..7).prop_map(Event::Crash),
        1 => (0u32..7).prop_map(Event::Wipe),
        3 => Just(Event::Heal),
    ]
}

fn run(initial: u32, events: &[Event], final_replicas: u32) -> Result<(), String> {
    let mut m = Model::new(initial);
    let mut wiped = 0;
    for e in events {
        match e {
            Event::Step => {
                if let Step::Act(a) = plan(&m.observe()) {
                    m.apply(&a)?;
                }
            }
            Event::SetReplicas(n) => m.desired = *n,
            Event::NewTemplate => m.revision += 1,
            Event::Crash(o) => {
                if let Some(p) = m.pods.get_mut(o) {
                    p.up = false;
                }
                m.elect();
            }
            Event::Wipe(o) => {
                // One lost volume per history: more can genuinely destroy the data, which
                // the operator reports rather than repairs.
                if wiped == 0 && m.pods.contains_key(o) {
                    wiped += 1;
                    let p = m.fresh_pod();
                    m.pods.insert(*o, p);
                    m.elect();
                }
            }
            Event::Heal => {
                for p in m.pods.values_mut() {
                    p.up = true;
                }
                m.elect();
            }
        }
    }
    // Faults stop; the spec settles; the operator must converge to it.
    m.desired = final_replicas;
    for _ in 0..300 {
        for p in m.pods.values_mut() {
            p.up = true;
        }
        m.elect();
        match plan(&m.observe()) {
            Step::Act(a) => m.apply(&a)?,
            Step::Converged => {
                return if m.converged_to_spec() {
                    Ok(())
                } else {
                    Err(format!("converged but not to the spec: {m:?}"))
                };
            }
            Step::Wait { reason, message } if reason.blocking() => {
                // Only acceptable when the faults really destroyed the quorum's data.
                if m.cluster_id.is_some() && !m.has_quorum() {
                    return Ok(());
                }
                return Err(format!(
                    "blocked ({reason:?}: {message}) on a recoverable cluster: {m:?}"
                ));
            }
            Step::Wait { .. } => {}
        }
    }
    Err(format!("no convergence: {:?} {m:?}", plan(&m.observe())))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn random_histories_stay_safe_and_converge(
        initial in 1u32..=5,
        events in prop::collection::vec(arb_event(), 0..120),
        final_replicas in 1u32..=7,
    ) {
        if let Err(e) = run(initial, &events, final_replicas) {
            prop_assert!(false, "{}", e);
        }
    }
}

#[test]
fn create_scale_and_roll_without_faults() {
    let steps = vec![Event::Step; 40];
    run(3, &steps, 5).expect("3 -> 5");
    let mut events = vec![Event::Step; 40];
    events.push(Event::NewTemplate);
    events.extend(vec![Event::Step; 40]);
    run(5, &events, 3).expect("5, roll, -> 3");
}
