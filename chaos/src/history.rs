//! The recorded history: one entry per client operation, with invoke and completion times and
//! what the client learned.

use serde::{Deserialize, Serialize};

/// What a client asked for, on one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Read,
    Write(String),
    /// Swap in `new` if the value is `expected` (`None`: must be absent).
    Cas {
        expected: Option<String>,
        new: String,
    },
}

/// What the client learned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A read's value (`None`: absent).
    Read(Option<String>),
    /// A write or a successful compare-and-set took effect.
    Ok,
    /// A compare-and-set was refused: the value was not `expected`.
    CasFailed,
    /// Definitely did not take effect (e.g. 503: refused before proposing).
    Failed,
    /// May or may not have taken effect (timeout, 504, connection lost mid-request).
    Unknown,
}

/// Which API a client used: both reach the same store, so one history mixes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Api {
    /// The seed HTTP API: `/api/get`, `/api/set`, `/api/cas`.
    Seed,
    /// etcd's v3 gRPC API: `Range`, `Put`, and `Txn` as compare-and-swap.
    Etcd,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub client: usize,
    pub key: String,
    pub op: Op,
    /// Microseconds since the run started.
    pub invoke_us: u64,
    /// `None` when the outcome is unknown: the op may take effect at any later time.
    pub complete_us: Option<u64>,
    pub outcome: Outcome,
    /// Which node served it, and through which API (for the report).
    pub node: usize,
    pub api: Api,
}

impl Event {
    /// Whether this event constrains the history: failed ops and unknown reads never do.
    pub fn matters(&self) -> bool {
        !matches!(
            (&self.op, &self.outcome),
            (_, Outcome::Failed) | (Op::Read, Outcome::Unknown)
        )
    }
}
