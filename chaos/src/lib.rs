//! Jepsen-style testing for ConcordKV: a driver that runs real `concord-node` processes under
//! faults while clients record every operation, and a linearizability checker for the history.

pub mod checker;
pub mod cluster;
pub mod driver;
pub mod etcd_ops;
pub mod history;
pub mod nemesis;
pub mod netns;
pub mod security;
pub mod watchers;
