//! Durable storage: the Raft log, the vote, snapshots and the state machine.

pub mod fsutil;
pub mod identity;
pub mod log_store;
pub mod segments;
pub mod snapshot_store;
pub mod state_machine;

pub use log_store::{LogReader, LogStore};
pub use snapshot_store::{SnapshotFile, SnapshotStore, SnapshotWriter};
pub use state_machine::{
    read_data as read_state, write_data as write_state, SharedState, StateData, StateMachineStore,
};

#[cfg(test)]
mod suite;
