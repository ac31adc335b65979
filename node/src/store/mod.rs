//! The replicated state machine's data: an ordered map of string keys to string values, each
//! with the revision (Raft log index) of its last change.

pub mod mvcc;
use std::collections::BTreeMap;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

/// A write, exactly as stored in the Raft log.
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
        }
    }
}

impl Command {
    /// The user bytes it carries (keys and values), which is what its log entry, its forwarded
    /// copy and its place in the map cost.
    pub fn payload_bytes(&self) -> u64 {
        let bytes = match self {
            Command::Set { key, value } => key.len() + value.len(),
            Command::Delete { key } => key.len(),
            Command::Cas {
                key,
                expected,
                value,
            } => key.len() + value.len() + expected.as_ref().map_or(0, String::len),
        };
        bytes as u64
    }

    pub fn key(&self) -> &str {
        match self {
            Command::Set { key, .. } | Command::Delete { key } | Command::Cas { key, .. } => key,
        }
    }
}

/// A stored value and the revision that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    pub value: String,
    pub revision: u64,
}

/// What applying a [`Command`] produced.
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
        /// The value found when the swap was refused.
        current: Option<Versioned>,
    },
}

/// The key-value map itself. Pure data: no I/O, no locking.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvMap {
    entries: BTreeMap<String, Versioned>,
    /// Total bytes of keys and values, kept for metrics and limits.
    bytes: u64,
}

impl KvMap {
    /// Applies `cmd` at log index `revision`.
    pub fn apply(&mut self, revision: u64, cmd: &Command) -> CommandResult {
        match cmd {
            Command::Set { key, value } => {
                self.put(key, value, revision);
                CommandResult::Set { revision }
            }
            Command::Delete { key } => {
                let found = match self.entries.remove(key) {
                    Some(old) => {
                        self.bytes -= (key.len() + old.value.len()) as u64;
                        true
                    }
                    None => false,
                };
                CommandResult::Delete { found, revision }
            }
            Command::Cas {
                key,
                expected,
                value,
            } => {
                let current = self.entries.get(key);
                let matches = match (current, expected) {
                    (None, None) => true,
                    (Some(cur), Some(exp)) => &cur.value == exp,
                    _ => false,
                };
                if matches {
                    self.put(key, value, revision);
                    CommandResult::Cas {
                        swapped: true,
                        revision,
                        current: None,
                    }
                } else {
                    CommandResult::Cas {
                        swapped: false,
                        revision,
                        current: current.cloned(),
                    }
                }
            }
        }
    }

    fn put(&mut self, key: &str, value: &str, revision: u64) {
        let new = Versioned {
            value: value.to_string(),
            revision,
        };
        match self.entries.insert(key.to_string(), new) {
            Some(old) => {
                self.bytes -= old.value.len() as u64;
                self.bytes += value.len() as u64;
            }
            None => self.bytes += (key.len() + value.len()) as u64,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Versioned> {
        self.entries.get(key)
    }

    /// Keys starting with `prefix` and greater than `start_after`, at most `limit` of them, and
    /// whether more follow.
    pub fn list(&self, prefix: &str, start_after: &str, limit: usize) -> (Vec<String>, bool) {
        let lower = if start_after.is_empty() || start_after < prefix {
            Bound::Included(prefix)
        } else {
            Bound::Excluded(start_after)
        };
        let mut keys = Vec::new();
        let mut iter = self
            .entries
            .range::<str, _>((lower, Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix));
        for key in iter.by_ref() {
            if keys.len() == limit {
                return (keys, true);
            }
            keys.push(key.clone());
        }
        (keys, false)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
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
    fn set_get_delete_track_revision_and_bytes() {
        let mut m = KvMap::default();
        assert_eq!(
            m.apply(3, &set("a", "xy")),
            CommandResult::Set { revision: 3 }
        );
        assert_eq!(m.get("a").map(|v| v.revision), Some(3));
        assert_eq!(m.bytes(), 3);
        m.apply(4, &set("a", "xyz"));
        assert_eq!(m.bytes(), 4);
        assert_eq!(
            m.apply(5, &Command::Delete { key: "a".into() }),
            CommandResult::Delete {
                found: true,
                revision: 5
            }
        );
        assert_eq!(m.bytes(), 0);
        assert!(m.is_empty());
    }

    #[test]
    fn cas_swaps_only_on_match() {
        let mut m = KvMap::default();
        let cas = |exp: Option<&str>, v: &str| Command::Cas {
            key: "k".into(),
            expected: exp.map(String::from),
            value: v.into(),
        };
        assert!(matches!(
            m.apply(1, &cas(None, "a")),
            CommandResult::Cas { swapped: true, .. }
        ));
        match m.apply(2, &cas(None, "b")) {
            CommandResult::Cas {
                swapped: false,
                current: Some(cur),
                ..
            } => assert_eq!(cur.value, "a"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            m.apply(3, &cas(Some("a"), "c")),
            CommandResult::Cas { swapped: true, .. }
        ));
        assert_eq!(m.get("k").map(|v| v.value.as_str()), Some("c"));
    }

    #[test]
    fn list_pages_by_prefix() {
        let mut m = KvMap::default();
        for (i, k) in ["a1", "a2", "a3", "b1"].iter().enumerate() {
            m.apply(i as u64 + 1, &set(k, "v"));
        }
        assert_eq!(m.list("a", "", 2), (vec!["a1".into(), "a2".into()], true));
        assert_eq!(m.list("a", "a2", 2), (vec!["a3".into()], false));
        assert_eq!(m.list("", "", 10).0.len(), 4);
        assert_eq!(m.list("c", "", 10), (vec![], false));
    }
}
