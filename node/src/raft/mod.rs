//! Consensus: openraft's type configuration for ConcordKV, the node's start-up and shutdown,
//! and the peer transport (openraft's network on the sending side, the peer gRPC service on the
//! receiving side, one channel pool for both).

pub mod channels;
pub mod network;
pub mod peer_service;
pub mod snapshot_policy;
pub mod startup;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::store::{Command, CommandResult};

/// Raft node id. Derived from the member's name (see [`node_id_for_name`]).
pub type NodeId = u64;

/// What the cluster membership records about each member.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Member {
    /// Human name, e.g. `node1` or a pod name.
    pub name: String,
    /// Peer (gRPC) address, `host:port`.
    pub addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

openraft::declare_raft_types!(
    /// ConcordKV's Raft types.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = Member,
);

pub type Raft = openraft::Raft<TypeConfig, crate::storage::StateMachineStore>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, crate::storage::SnapshotFile>;

/// Maps a member name to its Raft node id.
///
/// Names are what users write (`node1`, `concord-0`); Raft wants an integer. FNV-1a over the
/// name is stable across versions and platforms; zero is avoided because some tooling treats
/// it as "unset". Collisions inside one peer list are rejected by config validation.
pub fn node_id_for_name(name: &str) -> NodeId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Keep ids within JavaScript's safe integer range so JSON clients never lose precision.
    let id = hash & ((1u64 << 53) - 1);
    if id == 0 {
        1
    } else {
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(node_id_for_name("node1"), node_id_for_name("node1"));
        assert_ne!(node_id_for_name("node1"), node_id_for_name("node2"));
        assert!(node_id_for_name("node1") < (1 << 53));
    }
}
