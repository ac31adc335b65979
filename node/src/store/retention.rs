//! Which revision the leader compacts the store to, and when: the policy behind automatic
//! compaction (`compaction.*`, etcd's `--auto-compaction-mode/-retention`), as pure code over
//! what the leader has observed. The leader proposes the compaction through Raft, so every
//! member compacts at the same revision.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::{Compaction, Retention};

/// The store's revision as the leader saw it over time, oldest first: periodic retention
/// compacts to the revision that was current `retention` ago.
#[derive(Debug, Default)]
pub struct Samples {
    seen: VecDeque<(Instant, u64)>,
}

impl Samples {
    /// Records the revision at `now`; keeps what a retention of `keep` can still need.
    pub fn record(&mut self, now: Instant, revision: u64, keep: Duration) {
        if self.seen.back().is_some_and(|(_, r)| *r == revision) {
            return;
        }
        self.seen.push_back((now, revision));
        // Keep the newest sample at or before now - keep: it is the one compaction needs.
        while self.seen.len() >= 2 && now.duration_since(self.seen[1].0) >= keep {
            self.seen.pop_front();
        }
    }

    /// The newest revision seen at least `age` ago.
    fn as_of(&self, now: Instant, age: Duration) -> Option<u64> {
        self.seen
            .iter()
            .rev()
            .find(|(t, _)| now.duration_since(*t) >= age)
            .map(|(_, r)| *r)
    }
}

/// What the store looks like to the policy.
#[derive(Debug, Clone, Copy)]
pub struct StoreView {
    pub revision: u64,
    pub compacted: u64,
    /// Bytes of versions that are not current (what compaction frees).
    pub history_bytes: u64,
}

/// The revision to compact to now, if any.
///
/// 1. History over `max_history_bytes` compacts to the current revision, whatever the
///    retention: memory is bounded by bytes.
/// 2. Periodic: the revision that was current `retention` ago (as this leader saw it; a new
///    leader starts observing afresh, as etcd's does).
/// 3. Revision: the current revision minus `retention`.
/// 4. Never backwards, never to what is already compacted.
pub fn target(
    policy: &Compaction,
    samples: &Samples,
    now: Instant,
    store: StoreView,
) -> Option<u64> {
    let wanted = if store.history_bytes > policy.max_history_bytes {
        Some(store.revision)
    } else {
        match policy.retention {
            Retention::Off => None,
            Retention::Periodic(age) => samples.as_of(now, age),
            Retention::Revisions(n) => store.revision.checked_sub(n),
        }
    };
    wanted.filter(|r| *r > store.compacted && *r <= store.revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(retention: Retention) -> Compaction {
        Compaction {
            retention,
            max_history_bytes: 1000,
        }
    }

    fn view(revision: u64, compacted: u64, history_bytes: u64) -> StoreView {
        StoreView {
            revision,
            compacted,
            history_bytes,
        }
    }

    #[test]
    fn periodic_compacts_to_what_was_current_a_retention_ago() {
        let p = policy(Retention::Periodic(Duration::from_secs(60)));
        let t0 = Instant::now();
        let mut s = Samples::default();
        s.record(t0, 10, Duration::from_secs(60));
        s.record(t0 + Duration::from_secs(30), 20, Duration::from_secs(60));
        s.record(t0 + Duration::from_secs(70), 35, Duration::from_secs(60));
        // 59 s after the first sample: nothing is old enough.
        assert_eq!(
            target(&p, &s, t0 + Duration::from_secs(59), view(35, 0, 0)),
            None
        );
        assert_eq!(
            target(&p, &s, t0 + Duration::from_secs(60), view(35, 0, 0)),
            Some(10)
        );
        assert_eq!(
            target(&p, &s, t0 + Duration::from_secs(95), view(35, 0, 0)),
            Some(20)
        );
        // Already compacted there: nothing to do.
        assert_eq!(
            target(&p, &s, t0 + Duration::from_secs(95), view(35, 20, 0)),
            None
        );
    }

    #[test]
    fn samples_keep_only_what_the_retention_can_need() {
        let keep = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut s = Samples::default();
        for i in 0..1000u64 {
            s.record(t0 + Duration::from_secs(i), i + 1, keep);
        }
        assert!(s.seen.len() <= 12, "{} samples kept", s.seen.len());
        assert_eq!(s.as_of(t0 + Duration::from_secs(999), keep), Some(990));
    }

    #[test]
    fn revision_retention_keeps_that_many_and_history_bytes_override_everything() {
        let s = Samples::default();
        let now = Instant::now();
        let p = policy(Retention::Revisions(100));
        assert_eq!(target(&p, &s, now, view(50, 0, 0)), None);
        assert_eq!(target(&p, &s, now, view(150, 0, 0)), Some(50));
        assert_eq!(target(&p, &s, now, view(150, 50, 0)), None);
        for p in [policy(Retention::Off), p] {
            assert_eq!(target(&p, &s, now, view(150, 50, 1001)), Some(150));
            assert_eq!(target(&p, &s, now, view(150, 150, 1001)), None);
        }
        assert_eq!(
            target(&policy(Retention::Off), &s, now, view(150, 0, 10)),
            None
        );
    }
}
