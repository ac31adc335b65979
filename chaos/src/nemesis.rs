//! Faults, chosen from a seeded schedule so a failing run can be replayed.

use std::str::FromStr;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum NemesisKind {
    /// kill -9 a node (the leader half of the time), restart it shortly after.
    Kill,
    /// SIGSTOP a node (often the leader), SIGCONT it shortly after.
    Pause,
    /// Remove a follower from the membership and add it back (learner, then voter).
    Membership,
    /// Stop a node, cut or corrupt its log tail, restart it: it must repair and rejoin.
    DiskTail,
    /// Fill a node's disk (its data dir is a small tmpfs) for a while, then free it; a node
    /// whose Raft stopped on the write error fails `/livez` and is restarted, as a kubelet would.
    DiskFull,
    /// Cut the network: isolate the leader, split one node from the rest, or a bridge (cut one
    /// pair; the third node still talks to both). Needs network namespaces (root).
    Partition,
}

impl FromStr for NemesisKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kill" => Ok(NemesisKind::Kill),
            "pause" => Ok(NemesisKind::Pause),
            "membership" => Ok(NemesisKind::Membership),
            "disk" | "disk-tail" => Ok(NemesisKind::DiskTail),
            "partition" => Ok(NemesisKind::Partition),
            "disk-full" => Ok(NemesisKind::DiskFull),
            other => Err(format!(
                "unknown nemesis {other:?}; known: kill, pause, membership, disk, disk-full, partition"
            )),
        }
    }
}

pub const ALL: &[NemesisKind] = &[
    NemesisKind::Kill,
    NemesisKind::Pause,
    NemesisKind::Membership,
    NemesisKind::DiskTail,
    NemesisKind::Partition,
    NemesisKind::DiskFull,
];

/// One thing the nemesis did, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct NemesisEvent {
    pub at_ms: u64,
    pub what: String,
}
