//! The replicated state machine's data: the MVCC store ([`mvcc`]) and the commands the Raft log
//! carries to change it. The seed API's commands (`Set`, `Delete`, `Cas`) are applied as the
//! transactions they are; etcd's requests arrive as transactions themselves.

pub mod leases;
pub mod mvcc;
pub mod retention;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use leases::LeaseId;

use crate::auth::{AuthCommand, AuthError, AuthStore};

use mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRequest, KeyRange, MvccError, MvccStore, Op,
    PutRequest, TxnRequest, TxnResult,
};

/// A write, exactly as stored in the Raft log. Variants are only ever added at the end: logs
/// written by older releases must keep decoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Set {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    /// Swap in `value` only if the current value equals `expected` (`None` = must be absent).
    Cas {
        key: String,
        expected: Option<String>,
        value: String,
    },
    /// etcd's Txn (and Put and DeleteRange, as transactions of one operation).
    Txn(TxnRequest),
    /// Forget history before `revision` (etcd's Compact), on every member alike.
    Compact {
        revision: u64,
    },
    /// A lease of `ttl` seconds (etcd's LeaseGrant; the id is chosen before proposing).
    LeaseGrant {
        id: LeaseId,
        ttl: i64,
    },
    /// The lease ends and its keys are deleted, in one revision: a client's revoke, or the
    /// leader's decision that it expired.
    LeaseRevoke {
        id: LeaseId,
    },
    /// A change to users, roles or the auth switch (passwords already hashed).
    Auth(AuthCommand),
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys and values are user data; log only their sizes.
        match self {
            Command::Set { key, value } => {
                write!(f, "set(key {}B, value {}B)", key.len(), value.len())
            }
            Command::Delete { key } => write!(f, "delete(key {}B)", key.len()),
            Command::Cas { key, value, .. } => {
                write!(f, "cas(key {}B, value {}B)", key.len(), value.len())
            }
            Command::Txn(t) => write!(
                f,
                "txn({} compares, {}/{} ops, {}B)",
                t.compare.len(),
                t.success.len(),
                t.failure.len(),
                t.payload_bytes()
            ),
            Command::Compact { revision } => write!(f, "compact({revision})"),
            Command::LeaseGrant { id, ttl } => write!(f, "lease_grant({id}, {ttl}s)"),
            Command::LeaseRevoke { id } => write!(f, "lease_revoke({id})"),
            Command::Auth(a) => write!(f, "auth({})", a.name()),
        }
    }
}

impl Command {
    /// Whether it can add data to the store (a put anywhere in it): what a full store refuses,
    /// while deletes and compactions, which free space, still go through.
    pub fn adds_data(&self) -> bool {
        match self {
            Command::Set { .. } | Command::Cas { .. } => true,
            Command::Txn(t) => t.puts(),
            Command::Delete { .. }
            | Command::Compact { .. }
            | Command::LeaseGrant { .. }
            | Command::LeaseRevoke { .. }
            | Command::Auth(_) => false,
        }
    }

    /// The user bytes it carries (keys and values), which is what its log entry, its forwarded
    /// copy and its place in the store cost.
    pub fn payload_bytes(&self) -> u64 {
        let bytes = match self {
            Command::Set { key, value } => key.len() + value.len(),
            Command::Delete { key } => key.len(),
            Command::Cas {
                key,
                expected,
                value,
            } => key.len() + value.len() + expected.as_ref().map_or(0, String::len),
            Command::Txn(t) => return t.payload_bytes(),
            Command::Compact { .. }
            | Command::LeaseGrant { .. }
            | Command::LeaseRevoke { .. }
            | Command::Auth(_) => 0,
        };
        bytes as u64
    }
}

/// A value and the revision that last wrote it, as the seed API shows a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    pub value: String,
    pub revision: u64,
}

/// What applying a [`Command`] produced. Variants are only ever added at the end (a leader
/// sends it to the follower that forwarded the write).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum CommandResult {
    /// Blank and membership entries produce nothing.
    #[default]
    None,
    Set {
        revision: u64,
    },
    Delete {
        found: bool,
        revision: u64,
    },
    Cas {
        swapped: bool,
        revision: u64,
        /// The value found when the swap was refused (`value` lossily decoded if a client of
        /// the etcd API stored bytes that are not UTF-8; the seed API refuses to show those).
        current: Option<Versioned>,
    },
    /// `revision`: the store's revision once the transaction is applied.
    Txn {
        result: Result<TxnResult, MvccError>,
        revision: u64,
    },
    Compact(Result<(), MvccError>),
    LeaseGrant(Result<(), MvccError>),
    /// `revision`: the store's revision once the lease's keys are deleted.
    LeaseRevoke {
        result: Result<(), MvccError>,
        revision: u64,
    },
    Auth(Result<(), AuthError>),
}

fn put(key: &str, value: &str) -> Op {
    Op::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        lease: 0,
        prev_kv: false,
        ignore_value: false,
        ignore_lease: false,
    })
}

fn one(op: Op) -> TxnRequest {
    TxnRequest {
        compare: Vec::new(),
        success: vec![op],
        failure: Vec::new(),
    }
}

/// Applies a command as the Raft entry at `index` to the key space or the auth state; returns
/// its result and the changes it made to keys, in order (what watchers are sent).
pub fn apply(
    store: &mut MvccStore,
    auth: &mut AuthStore,
    index: u64,
    cmd: &Command,
) -> (CommandResult, Vec<mvcc::Event>) {
    match cmd {
        Command::Auth(a) => (CommandResult::Auth(auth.apply(a)), Vec::new()),
        Command::Set { key, value } => {
            let (_, events) = store.apply_txn(index, &one(put(key, value)));
            (CommandResult::Set { revision: index }, events)
        }
        Command::Delete { key } => {
            let delete = Op::Delete(DeleteRequest {
                keys: KeyRange::One(key.as_bytes().to_vec()),
                prev_kv: false,
            });
            let (_, events) = store.apply_txn(index, &one(delete));
            let found = !events.is_empty();
            (
                CommandResult::Delete {
                    found,
                    revision: index,
                },
                events,
            )
        }
        Command::Cas {
            key,
            expected,
            value,
        } => {
            let keys = KeyRange::One(key.as_bytes().to_vec());
            // Absent: version 0; present with this value: equal value.
            let compare = match expected {
                None => Compare {
                    keys,
                    result: CompareResult::Equal,
                    target: CompareTarget::Version(0),
                },
                Some(v) => Compare {
                    keys,
                    result: CompareResult::Equal,
                    target: CompareTarget::Value(v.as_bytes().to_vec()),
                },
            };
            let txn = TxnRequest {
                compare: vec![compare],
                success: vec![put(key, value)],
                failure: Vec::new(),
            };
            let (result, events) = store.apply_txn(index, &txn);
            let swapped = result.is_ok_and(|r| r.succeeded);
            let current = if swapped {
                None
            } else {
                store.get(key.as_bytes()).map(|kv| Versioned {
                    value: String::from_utf8_lossy(&kv.value).into_owned(),
                    revision: kv.mod_revision,
                })
            };
            (
                CommandResult::Cas {
                    swapped,
                    revision: index,
                    current,
                },
                events,
            )
        }
        Command::Txn(t) => {
            let (result, events) = store.apply_txn(index, t);
            let revision = store.revision();
            (CommandResult::Txn { result, revision }, events)
        }
        Command::Compact { revision } => {
            (CommandResult::Compact(store.compact(*revision)), Vec::new())
        }
        Command::LeaseGrant { id, ttl } => (
            CommandResult::LeaseGrant(store.grant_lease(*id, *ttl)),
            Vec::new(),
        ),
        Command::LeaseRevoke { id } => {
            let (result, events) = store.revoke_lease(index, *id);
            let revision = store.revision();
            (CommandResult::LeaseRevoke { result, revision }, events)
        }
    }
}

/// The state as releases before the MVCC store kept it (snapshot format 1): read only, to
/// upgrade a data dir.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvMap {
    entries: BTreeMap<String, Versioned>,
    bytes: u64,
}

impl KvMap {
    /// A map of these keys (for tests that write old-format data).
    pub fn from_entries(entries: impl IntoIterator<Item = (String, Versioned)>) -> KvMap {
        let entries: BTreeMap<String, Versioned> = entries.into_iter().collect();
        let bytes = entries
            .iter()
            .map(|(k, v)| (k.len() + v.value.len()) as u64)
            .sum();
        KvMap { entries, bytes }
    }

    /// The MVCC store holding the same keys with the same revisions.
    pub fn upgrade(&self) -> MvccStore {
        MvccStore::from_legacy(
            self.entries
                .iter()
                .map(|(k, v)| (k.as_str(), v.value.as_str(), v.revision)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(k: &str, v: &str) -> Command {
        Command::Set {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn seed_commands_keep_their_results_on_the_mvcc_store() {
        let mut s = MvccStore::default();
        assert_eq!(
            apply(&mut s, &mut AuthStore::default(), 3, &set("a", "xy")).0,
            CommandResult::Set { revision: 3 }
        );
        assert_eq!(s.get(b"a").map(|kv| kv.mod_revision), Some(3));
        assert_eq!(s.live_bytes(), 3);
        apply(&mut s, &mut AuthStore::default(), 4, &set("a", "xyz"));
        assert_eq!(s.live_bytes(), 4);
        let (r, events) = apply(
            &mut s,
            &mut AuthStore::default(),
            5,
            &Command::Delete { key: "a".into() },
        );
        assert_eq!(
            r,
            CommandResult::Delete {
                found: true,
                revision: 5
            }
        );
        assert_eq!(events.len(), 1);
        let (r, events) = apply(
            &mut s,
            &mut AuthStore::default(),
            6,
            &Command::Delete { key: "a".into() },
        );
        assert_eq!(
            r,
            CommandResult::Delete {
                found: false,
                revision: 6
            }
        );
        assert!(events.is_empty());
        assert!(s.is_empty());
        assert_eq!(s.revision(), 5, "a delete of nothing is no revision");
    }

    #[test]
    fn cas_swaps_only_on_match() {
        let mut s = MvccStore::default();
        let cas = |exp: Option<&str>, v: &str| Command::Cas {
            key: "k".into(),
            expected: exp.map(String::from),
            value: v.into(),
        };
        assert!(matches!(
            apply(&mut s, &mut AuthStore::default(), 1, &cas(None, "a")).0,
            CommandResult::Cas { swapped: true, .. }
        ));
        match apply(&mut s, &mut AuthStore::default(), 2, &cas(None, "b")).0 {
            CommandResult::Cas {
                swapped: false,
                current: Some(cur),
                ..
            } => assert_eq!((cur.value.as_str(), cur.revision), ("a", 1)),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            apply(&mut s, &mut AuthStore::default(), 3, &cas(Some("a"), "c")).0,
            CommandResult::Cas { swapped: true, .. }
        ));
        assert!(matches!(
            apply(&mut s, &mut AuthStore::default(), 4, &cas(Some("zz"), "d")).0,
            CommandResult::Cas { swapped: false, .. }
        ));
        let kv = s.get(b"k").expect("present");
        assert_eq!(
            (kv.value.as_slice(), kv.version, kv.create_revision),
            (&b"c"[..], 2, 1)
        );
    }

    #[test]
    fn a_legacy_map_upgrades_with_its_revisions_and_new_writes_go_above_them() {
        let legacy = KvMap::from_entries([
            (
                "a".to_string(),
                Versioned {
                    value: "1".into(),
                    revision: 7,
                },
            ),
            (
                "b".to_string(),
                Versioned {
                    value: "2".into(),
                    revision: 12,
                },
            ),
        ]);
        let mut s = legacy.upgrade();
        assert_eq!(s.revision(), 12);
        assert_eq!(s.get(b"a").map(|kv| kv.mod_revision), Some(7));
        apply(&mut s, &mut AuthStore::default(), 20, &set("a", "3"));
        let kv = s.get(b"a").expect("a");
        assert_eq!(
            (kv.mod_revision, kv.create_revision, kv.version),
            (20, 7, 2)
        );
        assert_eq!(s.revision(), 20);
    }
}
