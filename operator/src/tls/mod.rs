//! TLS for a cluster: what the spec asks for (validated into a [`TlsPlan`]), where the switch
//! of a running cluster stands ([`PeerTls`]) and its next step, both pure. Certificates are
//! minted in `certs`; the objects that carry them are built in `objects`.

pub mod certs;
pub mod materials;
pub mod objects;

use std::time::Duration;

use crate::crd::{ConcordCluster, IssuerRef, PeerTls, TlsMode};

/// Who provides the members' certificates.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The operator's own cluster CA.
    Operator,
    /// cert-manager, through this issuer.
    CertManager(IssuerRef),
    /// The user's Secrets.
    Secrets { members: String, operator: String },
}

/// TLS as validated: `source` None means plaintext everywhere.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsPlan {
    pub mode: TlsMode,
    pub source: Option<Source>,
    pub client_cert_auth: bool,
    pub client_user: String,
    pub lifetime: Duration,
    pub renew_before: Duration,
}

const DAY: Duration = Duration::from_secs(86_400);
const DEFAULT_DAYS: u32 = 90;

impl TlsPlan {
    pub fn wants_tls(&self) -> bool {
        self.source.is_some()
    }
}

/// The TLS mode in force: the spec's; unset, the one recorded in the status; else `operator`
/// for a cluster not yet initialized and `disabled` for one that was initialized before the
/// operator knew TLS (its clients speak plaintext, and only its owner may change that).
pub fn effective_mode(cluster: &ConcordCluster) -> TlsMode {
    if let Some(mode) = cluster.spec.tls.as_ref().and_then(|t| t.mode) {
        return mode;
    }
    let status = cluster.status.as_ref();
    if let Some(mode) = status.and_then(|s| s.tls.as_ref()).and_then(|t| t.mode) {
        return mode;
    }
    if status.is_some_and(|s| s.cluster_id.is_some()) {
        TlsMode::Disabled
    } else {
        TlsMode::Operator
    }
}

/// Validates `spec.tls` into a plan, or says what is missing.
pub fn plan(cluster: &ConcordCluster, errors: &mut Vec<String>) -> TlsPlan {
    let spec = cluster.spec.tls.clone().unwrap_or_default();
    let mode = effective_mode(cluster);
    let days = spec.certificate_days.unwrap_or(DEFAULT_DAYS);
    let renew_days = spec.renew_before_days.unwrap_or(days / 3).max(1);
    if renew_days >= days {
        errors.push(format!(
            "spec.tls.renewBeforeDays ({renew_days}) must be below certificateDays ({days})"
        ));
    }
    let source = match mode {
        TlsMode::Disabled => None,
        TlsMode::Operator => Some(Source::Operator),
        TlsMode::CertManager => match spec.issuer_ref.clone() {
            Some(issuer) if !issuer.name.is_empty() => Some(Source::CertManager(issuer)),
            _ => {
                errors.push("spec.tls.mode certManager needs spec.tls.issuerRef.name".into());
                None
            }
        },
        TlsMode::Secrets => match spec.secret_name.clone() {
            Some(members) if !members.is_empty() => Some(Source::Secrets {
                operator: spec.operator_secret_name.clone().unwrap_or(members.clone()),
                members,
            }),
            _ => {
                errors.push("spec.tls.mode secrets needs spec.tls.secretName".into());
                None
            }
        },
    };
    let client_user = spec.client_user.clone().unwrap_or_else(|| "client".into());
    if client_user.is_empty() || client_user.contains(char::is_control) {
        errors.push(format!(
            "spec.tls.clientUser {client_user:?} is not a user name"
        ));
    }
    TlsPlan {
        mode,
        source,
        client_cert_auth: spec.client_cert_auth || cluster.spec.tls.is_none(),
        client_user,
        lifetime: DAY * days,
        renew_before: DAY * renew_days,
    }
}

/// Where the members' configuration starts: the step recorded in the status; for a cluster
/// not yet initialized, straight at the target; for one initialized without a record, off
/// (it was plaintext).
pub fn current_peer(cluster: &ConcordCluster, wants_tls: bool) -> PeerTls {
    let status = cluster.status.as_ref();
    if let Some(peer) = status.and_then(|s| s.tls.as_ref()).and_then(|t| t.peer) {
        return peer;
    }
    match (status.is_some_and(|s| s.cluster_id.is_some()), wants_tls) {
        (false, true) => PeerTls::On,
        _ => PeerTls::Off,
    }
}

/// The next step of a switch, taken only once every member runs the current one (`settled`:
/// the planner found nothing to do, so every pod is on the current template and ready).
/// Rules: (1) one step at a time, in order, either way; (2) never while a roll is under way;
/// (3) a cluster not yet initialized jumps to the target (no member has to keep talking).
pub fn next_peer(current: PeerTls, wants_tls: bool, settled: bool, initialized: bool) -> PeerTls {
    let target = if wants_tls { PeerTls::On } else { PeerTls::Off };
    if !initialized {
        return target;
    }
    if current == target || !settled {
        return current;
    }
    match (current, wants_tls) {
        (PeerTls::Off, true) => PeerTls::Accept,
        (PeerTls::Accept, true) => PeerTls::Prefer,
        (PeerTls::Prefer, true) => PeerTls::On,
        (PeerTls::On, false) => PeerTls::Prefer,
        (PeerTls::Prefer, false) => PeerTls::Accept,
        (PeerTls::Accept, false) => PeerTls::Off,
        (same, _) => same,
    }
}

/// The operator dials members' admin API over TLS once every member accepts it: from
/// `prefer` (members at accept or prefer take both) through `on`.
pub fn admin_over_tls(peer: PeerTls) -> bool {
    matches!(peer, PeerTls::Prefer | PeerTls::On)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_peer() -> impl Strategy<Value = PeerTls> {
        prop_oneof![
            Just(PeerTls::Off),
            Just(PeerTls::Accept),
            Just(PeerTls::Prefer),
            Just(PeerTls::On)
        ]
    }

    /// What a member at `a` and one at `b` can do together: a dialer's choice must be accepted.
    fn talk(a: PeerTls, b: PeerTls) -> bool {
        let accepts = |m: PeerTls, tls: bool| match m {
            PeerTls::Off => !tls,
            PeerTls::Accept | PeerTls::Prefer => true,
            PeerTls::On => tls,
        };
        let dials_tls = |m: PeerTls| matches!(m, PeerTls::Prefer | PeerTls::On);
        accepts(b, dials_tls(a)) && accepts(a, dials_tls(b))
    }

    proptest! {
        /// During any roll from one step to the next, members on the old and the new step
        /// (and the operator) can all reach each other, whichever way the switch goes.
        #[test]
        fn every_roll_keeps_members_and_operator_talking(
            start in any_peer(), wants in any::<bool>(), steps in 0usize..8
        ) {
            let mut current = start;
            for _ in 0..steps {
                let next = next_peer(current, wants, true, true);
                prop_assert!(talk(current, next), "{current:?} -> {next:?}");
                prop_assert!(talk(next, next));
                // The operator dials by the recorded (new) step; old-step members take it.
                let op_tls = admin_over_tls(next);
                let accepts = |m: PeerTls| match m {
                    PeerTls::Off => !op_tls,
                    PeerTls::On => op_tls,
                    _ => true,
                };
                prop_assert!(accepts(current) && accepts(next), "{current:?} -> {next:?}");
                current = next;
            }
            if steps >= 3 {
                prop_assert_eq!(current, if wants { PeerTls::On } else { PeerTls::Off });
            }
        }

        #[test]
        fn nothing_moves_during_a_roll(start in any_peer(), wants in any::<bool>()) {
            prop_assert_eq!(next_peer(start, wants, false, true), start);
        }
    }

    #[test]
    fn a_new_cluster_starts_at_the_target() {
        assert_eq!(next_peer(PeerTls::Off, true, false, false), PeerTls::On);
        assert_eq!(next_peer(PeerTls::On, false, false, false), PeerTls::Off);
    }

    fn cluster(yaml: &str) -> ConcordCluster {
        serde_yaml_ng::from_str(yaml).expect("cluster")
    }

    #[test]
    fn the_mode_defaults_to_operator_only_for_new_clusters() {
        let new = cluster("metadata: {name: kv}\nspec: {replicas: 3}");
        assert_eq!(effective_mode(&new), TlsMode::Operator);
        assert_eq!(current_peer(&new, true), PeerTls::On);
        let old = cluster("metadata: {name: kv}\nspec: {replicas: 3}\nstatus: {clusterId: abc}");
        assert_eq!(effective_mode(&old), TlsMode::Disabled);
        assert_eq!(current_peer(&old, true), PeerTls::Off);
        let asked = cluster(
            "metadata: {name: kv}\nspec: {replicas: 3, tls: {mode: operator}}\nstatus: {clusterId: abc, tls: {mode: disabled, peer: accept}}",
        );
        assert_eq!(effective_mode(&asked), TlsMode::Operator);
        assert_eq!(current_peer(&asked, true), PeerTls::Accept);
    }

    #[test]
    fn plans_name_what_is_missing() {
        let mut errors = Vec::new();
        let p = plan(
            &cluster("metadata: {name: kv}\nspec: {replicas: 3, tls: {mode: certManager}}"),
            &mut errors,
        );
        assert!(p.source.is_none());
        assert!(errors[0].contains("issuerRef"), "{errors:?}");
        let mut errors = Vec::new();
        plan(
            &cluster("metadata: {name: kv}\nspec: {replicas: 3, tls: {mode: secrets}}"),
            &mut errors,
        );
        assert!(errors[0].contains("secretName"), "{errors:?}");
        let mut errors = Vec::new();
        plan(
            &cluster("metadata: {name: kv}\nspec: {replicas: 3, tls: {certificateDays: 10, renewBeforeDays: 10}}"),
            &mut errors,
        );
        assert!(errors[0].contains("renewBeforeDays"), "{errors:?}");
        let mut errors = Vec::new();
        let p = plan(
            &cluster(
                "metadata: {name: kv}\nspec: {replicas: 3, tls: {mode: secrets, secretName: mine}}",
            ),
            &mut errors,
        );
        assert!(errors.is_empty());
        assert_eq!(
            p.source,
            Some(Source::Secrets {
                members: "mine".into(),
                operator: "mine".into()
            })
        );
        assert_eq!(p.renew_before, DAY * 30);
    }
}
