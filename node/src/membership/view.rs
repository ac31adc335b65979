//! The leader's view of its members: role, matched index, last contact, health.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::{Instant as _, RaftMetrics};

use crate::raft::{NodeId, TypeConfig};

/// Role, matched index and health of each member, as the leader sees them.
pub struct View {
    pub metrics: RaftMetrics<TypeConfig>,
    pub reachable_within: Duration,
    pub caught_up_within: u64,
}

impl View {
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.metrics
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    pub fn learners(&self) -> BTreeSet<NodeId> {
        self.metrics
            .membership_config
            .membership()
            .learner_ids()
            .collect()
    }

    pub fn last_log(&self) -> u64 {
        self.metrics.last_log_index.unwrap_or(0)
    }

    pub fn matched(&self, id: NodeId) -> Option<u64> {
        if id == self.metrics.id {
            return self.metrics.last_log_index;
        }
        self.metrics
            .replication
            .as_ref()?
            .get(&id)?
            .as_ref()
            .map(|l| l.index)
    }

    pub fn last_contact(&self, id: NodeId) -> Option<Duration> {
        if id == self.metrics.id {
            return Some(Duration::ZERO);
        }
        let hb = self.metrics.heartbeat.as_ref()?.get(&id)?.as_ref()?;
        Some(hb.elapsed())
    }

    pub fn healthy(&self, id: NodeId) -> bool {
        match self.last_contact(id) {
            Some(d) => d <= self.reachable_within,
            // openraft resets its acknowledgement clock for a member when the membership
            // changes (e.g. right after a promotion); until the next acknowledgement, a member
            // whose replication is caught up is taken as healthy, since only its acknowledgements
            // could have moved its matched index.
            None => self
                .matched(id)
                .is_some_and(|m| self.last_log().saturating_sub(m) <= self.caught_up_within),
        }
    }
}
