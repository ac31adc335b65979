//! Leases: keys that vanish when their owner stops renewing.
//!
//! Which leases exist and which keys they hold is replicated state (`store::leases`), changed
//! by `LeaseGrant` and `LeaseRevoke` entries. When a lease expires is the leader's call alone
//! ([`clock`]): renewals go to the leader (followers forward them), and when a lease's TTL has
//! passed without one the leader proposes its revoke — so every member deletes the same keys
//! at the same revision, and a member's clock never decides anything by itself.
//!
//! - [`clock`]: deadlines, pure.
//! - here: the operations the APIs call, and the leader's expiry loop.

pub mod clock;

use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_proto::{LeaseAnswer, LeaseRequest};
use openraft::async_runtime::watch::WatchReceiver;

use crate::app::App;
use crate::requests::{classify, ServiceError, Written};
use crate::store::leases::{LeaseId, MAX_TTL_SECONDS};
use crate::store::mvcc::MvccError;
use crate::store::{Command, CommandResult};

pub use clock::LeaseClock;

/// How often the leader looks for expired leases.
const EXPIRY_TICK: Duration = Duration::from_millis(100);

/// Revokes proposed per tick at most (etcd limits expiry to 1,000 leases a second).
const MAX_REVOKES_PER_TICK: usize = 100;

/// A lease's time to live, as `LeaseTimeToLive` answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeToLive {
    /// Seconds left, rounded up.
    pub remaining: i64,
    pub granted: i64,
    pub keys: Vec<Vec<u8>>,
}

impl App {
    /// The shortest TTL granted: a lease must outlive an election (etcd's minimum, 1.5
    /// election timeouts, in whole seconds).
    pub fn min_lease_ttl(&self) -> i64 {
        let ms = self.config.raft.election_timeout_max.as_millis() as i64 * 3 / 2;
        ((ms + 999) / 1000).max(1)
    }

    /// Grants a lease of `ttl` seconds (raised to [`App::min_lease_ttl`]); `id` 0 lets the
    /// cluster choose. Returns the id and the TTL granted.
    pub async fn lease_grant(
        &self,
        id: LeaseId,
        ttl: i64,
    ) -> Result<Result<(LeaseId, i64), MvccError>, ServiceError> {
        if ttl > MAX_TTL_SECONDS {
            return Ok(Err(MvccError::LeaseTtlTooLarge));
        }
        let ttl = ttl.max(self.min_lease_ttl());
        loop {
            let chosen = if id == 0 {
                // Positive, below 2^53 so JSON clients read it exactly.
                (rand::random::<u64>() & ((1 << 53) - 1)).max(1) as i64
            } else {
                id
            };
            let written = self.write(Command::LeaseGrant { id: chosen, ttl }).await?;
            match written.result {
                CommandResult::LeaseGrant(Ok(())) => return Ok(Ok((chosen, ttl))),
                // A random id that happens to be taken: choose again.
                CommandResult::LeaseGrant(Err(MvccError::LeaseExists)) if id == 0 => continue,
                CommandResult::LeaseGrant(Err(e)) => return Ok(Err(e)),
                other => {
                    return Err(ServiceError::Internal(format!(
                        "a lease grant produced {other:?}"
                    )))
                }
            }
        }
    }

    /// Revokes a lease: it and its keys go, in one revision (returned).
    pub async fn lease_revoke(&self, id: LeaseId) -> Result<Result<u64, MvccError>, ServiceError> {
        let written = self.write(Command::LeaseRevoke { id }).await?;
        match written.result {
            CommandResult::LeaseRevoke { result, revision } => Ok(result.map(|()| revision)),
            other => Err(ServiceError::Internal(format!(
                "a lease revoke produced {other:?}"
            ))),
        }
    }

    /// Confirms, as leader, that it still leads: by its leader lease (no round trip) while
    /// that holds, else by a quorum round. A leader cut off from the others must not renew: the
    /// one that replaces it does not know of its renewals.
    async fn confirm_leading(&self, deadline: tokio::time::Instant) -> Result<(), ServiceError> {
        if !self.is_leader() {
            return Err(ServiceError::NotLeader);
        }
        let by_lease = self
            .raft
            .ensure_linearizable(openraft::raft::ReadPolicy::LeaseRead)
            .await;
        if by_lease.is_ok() {
            return Ok(());
        }
        self.read_barrier(deadline).await
    }

    /// The renewal itself, once leadership is confirmed.
    fn renew_on_leader(&self, id: LeaseId) -> Option<i64> {
        let granted = self.state.read().kv.leases().get(id).map(|l| l.ttl);
        self.lease_clock
            .lock()
            .renew_existing(id, granted, Instant::now())
    }

    /// Renews a lease on the leader (forwarded there from a follower). `None`: no such lease
    /// (or one already expiring).
    pub async fn lease_keep_alive(&self, id: LeaseId) -> Result<Option<i64>, ServiceError> {
        self.on_leader(
            "lease_keepalive",
            |deadline| async move {
                self.confirm_leading(deadline).await?;
                Ok(self.renew_on_leader(id))
            },
            |addr, deadline| async move {
                let answer = self
                    .lease_at_leader(&addr, id, false, deadline, true)
                    .await?;
                Ok(answer.found.then_some(answer.ttl))
            },
        )
        .await
    }

    /// A lease's time left (from the leader, which times it) and, if asked, its keys.
    pub async fn lease_time_to_live(
        &self,
        id: LeaseId,
        keys: bool,
    ) -> Result<Option<TimeToLive>, ServiceError> {
        self.on_leader(
            "lease_ttl",
            |_| async move {
                if !self.is_leader() {
                    return Err(ServiceError::NotLeader);
                }
                Ok(self.local_time_to_live(id, keys))
            },
            |addr, deadline| async move {
                let a = self
                    .lease_at_leader(&addr, id, keys, deadline, false)
                    .await?;
                Ok(a.found.then_some(TimeToLive {
                    remaining: a.ttl,
                    granted: a.granted_ttl,
                    keys: a.keys,
                }))
            },
        )
        .await
    }

    /// Every lease's id (linearizable).
    pub async fn lease_list(&self) -> Result<Vec<LeaseId>, ServiceError> {
        self.linearize().await?;
        Ok(self
            .state
            .read()
            .kv
            .leases()
            .ttls()
            .map(|(id, _)| id)
            .collect())
    }

    /// Answers for the leader itself (the peer service calls this for a follower).
    pub fn local_time_to_live(&self, id: LeaseId, keys: bool) -> Option<TimeToLive> {
        let state = self.state.read();
        let lease = state.kv.leases().get(id)?;
        let (left, granted) = self
            .lease_clock
            .lock()
            .remaining(id, Instant::now())
            .unwrap_or((Duration::from_secs(lease.ttl as u64), lease.ttl));
        Some(TimeToLive {
            remaining: left.as_millis().div_ceil(1000) as i64,
            granted,
            keys: if keys {
                lease.keys.iter().map(|k| k.to_vec()).collect()
            } else {
                Vec::new()
            },
        })
    }

    /// The peer service's answer to a forwarded renewal or TTL query, as the leader.
    pub async fn lease_answer(
        &self,
        req: &LeaseRequest,
        renew: bool,
    ) -> Result<LeaseAnswer, ServiceError> {
        if renew {
            let deadline = tokio::time::Instant::now() + self.config.limits.request_timeout;
            self.confirm_leading(deadline).await?;
            let ttl = self.renew_on_leader(req.id);
            return Ok(LeaseAnswer {
                found: ttl.is_some(),
                ttl: ttl.unwrap_or(0),
                granted_ttl: ttl.unwrap_or(0),
                keys: Vec::new(),
            });
        }
        if !self.is_leader() {
            return Err(ServiceError::NotLeader);
        }
        Ok(match self.local_time_to_live(req.id, req.keys) {
            Some(t) => LeaseAnswer {
                found: true,
                ttl: t.remaining,
                granted_ttl: t.granted,
                keys: t.keys,
            },
            None => LeaseAnswer::default(),
        })
    }

    async fn lease_at_leader(
        &self,
        addr: &str,
        id: LeaseId,
        keys: bool,
        deadline: tokio::time::Instant,
        renew: bool,
    ) -> Result<LeaseAnswer, crate::requests::ForwardFailure> {
        let msg = LeaseRequest {
            cluster_id: self.cluster_id.wire(),
            id,
            keys,
        };
        let (mut client, req) = self.to_leader(addr, msg, deadline)?;
        let answer = if renew {
            client.lease_keep_alive(req).await
        } else {
            client.lease_time_to_live(req).await
        };
        answer
            .map(|r| r.into_inner())
            .map_err(|s| classify(s, false))
    }
}

/// The leader's expiry loop: on becoming leader, every lease's TTL starts afresh (once this
/// leader has applied everything committed before it, so its table is complete); then every
/// tick, leases past their deadline are revoked through Raft. Runs until `stop`.
pub async fn expire_leases(app: Arc<App>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut leading_term: Option<u64> = None;
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let term = {
            let m = app.raft.metrics();
            let m = m.borrow_watched();
            (m.current_leader == Some(app.id())).then_some(m.current_term)
        };
        let Some(term) = term else {
            leading_term = None;
            continue;
        };
        if leading_term != Some(term) {
            let deadline = tokio::time::Instant::now() + app.config.limits.request_timeout;
            if app.read_barrier(deadline).await.is_err() {
                continue;
            }
            let ttls: Vec<(LeaseId, i64)> = app.state.read().kv.leases().ttls().collect();
            tracing::info!(
                leases = ttls.len(),
                term,
                "leading: every lease's TTL starts now"
            );
            app.lease_clock.lock().restart(ttls, Instant::now());
            leading_term = Some(term);
            continue;
        }
        // Decided only while this node still leads (a leader that was paused or cut off
        // must not act on its stale clock), and proposed here, never forwarded: a decision
        // made under an old term must not be carried out by the leader of a new one, which
        // has restarted every TTL.
        let deadline = tokio::time::Instant::now() + app.config.limits.request_timeout;
        if app.confirm_leading(deadline).await.is_err() {
            continue;
        }
        if app.metrics().current_term != term {
            continue; // a new term meanwhile: its TTLs restart first
        }
        let due = app
            .lease_clock
            .lock()
            .due(Instant::now(), MAX_REVOKES_PER_TICK);
        for id in due {
            let app = app.clone();
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + app.config.limits.request_timeout;
                match app.propose(Command::LeaseRevoke { id }, deadline).await {
                    Ok(Written {
                        result:
                            CommandResult::LeaseRevoke {
                                result: Ok(()),
                                revision,
                            },
                        ..
                    }) => {
                        crate::telemetry::metrics::metrics().leases_expired.inc();
                        tracing::info!(lease = id, revision, "lease expired and revoked")
                    }
                    Ok(_) => {} // already gone
                    Err(e) => {
                        tracing::debug!(lease = id, error = %e, "an expired lease's revoke was not committed here; the leader retries")
                    }
                }
            });
        }
    }
}
