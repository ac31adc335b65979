//! When each lease expires, as the leader counts it. Pure: time comes in as an argument (a
//! monotonic `Instant`, so a wall-clock jump changes nothing), and the caller turns what is
//! due into revoke entries.
//!
//! Rules:
//! 1. A lease granted (applied) expires its TTL after it was applied here.
//! 2. A renewal (keepalive) moves the deadline to now + TTL.
//! 3. A new leader starts every lease's TTL afresh (etcd's rule): it cannot know when the old
//!    leader last renewed, and must not expire a lease its owner has been renewing.
//! 4. A due lease is handed out once; again only if its revoke has not applied after
//!    [`RETRY_REVOKE`] (the proposal may have been lost to a leader change).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::store::leases::LeaseId;

/// How long a proposed revoke may take to apply before the lease is handed out again.
pub const RETRY_REVOKE: Duration = Duration::from_secs(3);

#[derive(Debug, Default)]
pub struct LeaseClock {
    /// Each lease's deadline and granted TTL (seconds).
    leases: HashMap<LeaseId, (Instant, i64)>,
    /// The same deadlines, soonest first.
    order: BTreeSet<(Instant, LeaseId)>,
    /// Leases handed out for revoking, and when.
    revoking: HashMap<LeaseId, Instant>,
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

impl LeaseClock {
    fn set(&mut self, id: LeaseId, deadline: Instant, ttl: i64) {
        if let Some((old, _)) = self.leases.insert(id, (deadline, ttl)) {
            self.order.remove(&(old, id));
        }
        self.order.insert((deadline, id));
    }

    /// Rule 1.
    pub fn granted(&mut self, id: LeaseId, ttl: i64, now: Instant) {
        self.set(id, now + ttl_duration(ttl), ttl);
    }

    /// The lease is gone (revoked or expired, applied).
    pub fn removed(&mut self, id: LeaseId) {
        if let Some((deadline, _)) = self.leases.remove(&id) {
            self.order.remove(&(deadline, id));
        }
        self.revoking.remove(&id);
    }

    /// Rule 2. Returns the granted TTL, or `None` for a lease this clock does not know. A lease
    /// already handed out for revoking is not renewed: its owner was too late.
    pub fn renew(&mut self, id: LeaseId, now: Instant) -> Option<i64> {
        if self.revoking.contains_key(&id) {
            return None;
        }
        let ttl = self.leases.get(&id)?.1;
        self.set(id, now + ttl_duration(ttl), ttl);
        Some(ttl)
    }

    /// Rule 2 for a lease that exists (`granted`: its TTL in the replicated table, `None` if it
    /// does not): a lease this clock has not heard of yet — a leader whose table came from a
    /// snapshot, before it restarted its TTLs — is renewed all the same. The table says whether
    /// a lease exists; the clock only when it expires.
    pub fn renew_existing(
        &mut self,
        id: LeaseId,
        granted: Option<i64>,
        now: Instant,
    ) -> Option<i64> {
        if self.revoking.contains_key(&id) {
            return None;
        }
        if let Some(ttl) = self.renew(id, now) {
            return Some(ttl);
        }
        let ttl = granted?;
        self.granted(id, ttl, now);
        Some(ttl)
    }

    /// Time left and granted TTL.
    pub fn remaining(&self, id: LeaseId, now: Instant) -> Option<(Duration, i64)> {
        let (deadline, ttl) = self.leases.get(&id)?;
        Some((deadline.saturating_duration_since(now), *ttl))
    }

    /// Rule 3: every lease of `leases` (id, TTL) starts its TTL now; others are forgotten.
    pub fn restart(&mut self, leases: impl IntoIterator<Item = (LeaseId, i64)>, now: Instant) {
        self.leases.clear();
        self.order.clear();
        self.revoking.clear();
        for (id, ttl) in leases {
            self.set(id, now + ttl_duration(ttl), ttl);
        }
    }

    /// Rule 4: up to `max` leases whose deadline has passed, to be revoked.
    pub fn due(&mut self, now: Instant, max: usize) -> Vec<LeaseId> {
        let mut out = Vec::new();
        for &(deadline, id) in &self.order {
            if deadline > now || out.len() >= max {
                break;
            }
            let retry = self
                .revoking
                .get(&id)
                .is_none_or(|since| now.duration_since(*since) >= RETRY_REVOKE);
            if retry {
                out.push(id);
            }
        }
        for id in &out {
            self.revoking.insert(*id, now);
        }
        out
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_lease_expires_its_ttl_after_its_last_renewal_and_is_handed_out_once() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut c = LeaseClock::default();
        c.granted(1, 10, t0);
        c.granted(2, 5, t0);
        assert_eq!(c.due(t0 + s(4), 10), Vec::<LeaseId>::new());
        assert_eq!(c.renew(2, t0 + s(4)), Some(5));
        assert_eq!(c.due(t0 + s(8), 10), Vec::<LeaseId>::new());
        assert_eq!(c.due(t0 + s(10), 10), vec![2, 1], "soonest deadline first");
        // Handed out: not again until the retry time, and no longer renewable.
        assert_eq!(c.due(t0 + s(11), 10), Vec::<LeaseId>::new());
        assert_eq!(c.renew(1, t0 + s(11)), None);
        assert_eq!(c.due(t0 + s(10) + RETRY_REVOKE, 10), vec![2, 1]);
        c.removed(1);
        c.removed(2);
        assert!(c.is_empty());
        assert_eq!(c.renew(9, t0), None);
    }

    #[test]
    fn a_lease_the_table_has_and_the_clock_not_is_renewed() {
        let t0 = Instant::now();
        let mut c = LeaseClock::default();
        assert_eq!(c.renew_existing(4, Some(6), t0), Some(6));
        assert_eq!(c.remaining(4, t0), Some((Duration::from_secs(6), 6)));
        assert_eq!(c.renew_existing(5, None, t0), None);
        // One handed out for revoking stays refused.
        c.due(t0 + Duration::from_secs(6), 10);
        assert_eq!(
            c.renew_existing(4, Some(6), t0 + Duration::from_secs(6)),
            None
        );
    }

    #[test]
    fn a_new_leader_gives_every_lease_its_full_ttl() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut c = LeaseClock::default();
        c.granted(1, 10, t0);
        c.restart([(1, 10), (3, 2)], t0 + s(9));
        assert_eq!(c.remaining(1, t0 + s(9)), Some((s(10), 10)));
        assert_eq!(c.due(t0 + s(12), 10), vec![3]);
    }

    proptest! {
        /// Whatever the operations, a lease is due exactly when its last grant, renewal or
        /// restart is at least its TTL ago, and never while it is being renewed in time.
        #[test]
        fn due_means_not_renewed_for_its_ttl(ops in prop::collection::vec((0u8..4, 1i64..4, 0u64..5), 1..60)) {
            let t0 = Instant::now();
            let mut c = LeaseClock::default();
            let mut model: HashMap<LeaseId, (u64, i64)> = HashMap::new();
            let mut now = 0u64;
            for (op, id, dt) in ops {
                now += dt;
                let at = t0 + Duration::from_secs(now);
                match op {
                    0 => { c.granted(id, id * 2, at); model.insert(id, (now, id * 2)); }
                    1 => {
                        let renewed = c.renew(id, at);
                        let alive = model.get(&id).is_some_and(|(since, ttl)| now < since + *ttl as u64);
                        if alive { prop_assert_eq!(renewed, Some(id * 2)); model.insert(id, (now, id * 2)); }
                    }
                    2 => { c.removed(id); model.remove(&id); }
                    _ => {
                        let due: BTreeSet<LeaseId> = c.due(at, 100).into_iter().collect();
                        for (l, (since, ttl)) in &model {
                            if now < since + *ttl as u64 {
                                prop_assert!(!due.contains(l), "lease {} due early", l);
                            }
                        }
                        for l in &due {
                            model.remove(l);
                            c.removed(*l);
                        }
                    }
                }
            }
        }
    }
}
