//! The replicated half of leases: which leases exist, their granted TTL, and the keys attached
//! to each. Changed only by applying Raft entries, so every member holds the same table.
//! When a lease expires is not here: that is the leader's clock (`crate::lease`), which turns
//! an expiry into a revoke entry.
//!
//! Persistent maps, as the key map: cloning the store for a snapshot or a watcher stays O(1).

use std::sync::Arc;

use imbl::{OrdMap, OrdSet};

/// A lease id, as etcd's (positive; 0 means "no lease").
pub type LeaseId = i64;

/// The longest TTL etcd grants (`MaxLeaseTTL`, seconds).
pub const MAX_TTL_SECONDS: i64 = 9_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lease {
    /// Seconds, as granted.
    pub ttl: i64,
    pub keys: OrdSet<Arc<[u8]>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Leases {
    table: OrdMap<LeaseId, Lease>,
}

impl Leases {
    pub fn get(&self, id: LeaseId) -> Option<&Lease> {
        self.table.get(&id)
    }

    pub fn contains(&self, id: LeaseId) -> bool {
        self.table.contains_key(&id)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Every lease with its TTL, in id order.
    pub fn ttls(&self) -> impl Iterator<Item = (LeaseId, i64)> + '_ {
        self.table.iter().map(|(id, l)| (*id, l.ttl))
    }

    /// Adds a lease; false if the id is taken.
    pub fn grant(&mut self, id: LeaseId, ttl: i64) -> bool {
        if self.table.contains_key(&id) {
            return false;
        }
        self.table.insert(
            id,
            Lease {
                ttl,
                keys: OrdSet::new(),
            },
        );
        true
    }

    /// Removes a lease; its keys (which the caller deletes), or `None` if there was none.
    pub fn remove(&mut self, id: LeaseId) -> Option<OrdSet<Arc<[u8]>>> {
        self.table.remove(&id).map(|l| l.keys)
    }

    /// Moves `key` from lease `from` to lease `to` (0: none).
    pub fn reattach(&mut self, key: &Arc<[u8]>, from: LeaseId, to: LeaseId) {
        if from == to {
            return;
        }
        if from != 0 {
            if let Some(l) = self.table.get_mut(&from) {
                l.keys.remove(key);
            }
        }
        if to != 0 {
            if let Some(l) = self.table.get_mut(&to) {
                l.keys.insert(key.clone());
            }
        }
    }
}
