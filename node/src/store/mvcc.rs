//! The multi-version key-value store: every write keeps the versions before it until they are
//! compacted, so reads can ask for the state as of any revision since the compaction point, and
//! every change is an event a watcher can be given (etcd's `server/storage/mvcc` model).
//!
//! **Revisions.** A change's revision is the Raft log index of the entry that made it (`main`),
//! plus its position among the changes of that entry (`sub`: a transaction's operations). So
//! one modifying request is one revision, revisions only grow across restarts, snapshots and
//! leader changes, and every member computes the same ones; they are not contiguous (a Raft
//! entry that changes nothing — a failed compare, a membership change — leaves a gap). The
//! store's revision is that of its last change. Pre-MVCC data dirs used the same rule for a
//! key's revision, so their keys keep their revisions when they are upgraded.
//!
//! Pure data: no I/O, no locking, deterministic. The state machine applies each committed
//! entry here; the API layers read from here.

use std::ops::Bound;
use std::sync::Arc;

use imbl::{OrdMap, Vector};
use smallvec::SmallVec;

use serde::{Deserialize, Serialize};

use super::leases::{LeaseId, Leases};

/// A change's place in history: the Raft index of its entry and its position in that entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rev {
    pub main: u64,
    pub sub: u32,
}

/// A key's versions, oldest first. The usual one version lives inline, in the same allocation
/// as the `Arc` that shares it.
type History = SmallVec<[Version; 1]>;

/// Every key with its versions.
type KeyMap = OrdMap<Arc<[u8]>, Arc<History>>;

/// Which key each change since the compaction point changed, in revision order: how history
/// is read without visiting every key (a watcher catching up on a large range). Revisions only
/// grow, so this is an append-only sequence; a persistent vector keeps the store's O(1) clone
/// and drops a compacted prefix in O(log n).
type Changes = Vector<(Rev, Arc<[u8]>)>;

/// A key as a reader sees it at some revision.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    /// Writes since the key was (last) created: 1 for the first.
    pub version: u64,
    pub value: Vec<u8>,
    /// The lease the key is attached to (0: none).
    pub lease: i64,
}

/// One stored version of a key: a value, or a tombstone marking its deletion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Version {
    rev: Rev,
    create_revision: u64,
    version: u64,
    /// `None`: deleted at `rev`. Boxed, not a `Vec`: no capacity word, for a million of them.
    /// Encoded as bytes, not as a sequence of u8 (the same bytes in bincode, one call not one
    /// per byte: most of a snapshot is values).
    #[serde(with = "serde_bytes")]
    value: Option<Box<[u8]>>,
    lease: i64,
}

impl Version {
    fn as_kv(&self, key: &[u8], keys_only: bool) -> Option<KeyValue> {
        let value = self.value.as_ref()?;
        Some(KeyValue {
            key: key.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.rev.main,
            version: self.version,
            value: if keys_only {
                Vec::new()
            } else {
                value.to_vec()
            },
            lease: self.lease,
        })
    }

    fn bytes(&self, key: &[u8]) -> u64 {
        // A version's cost: its key (each version holds it in events and snapshots), its value
        // and the fixed fields.
        (key.len() + self.value.as_ref().map_or(0, |v| v.len())) as u64 + VERSION_OVERHEAD
    }
}

/// Why a request was refused. The messages are etcd's: clients match on them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MvccError {
    #[error("mvcc: required revision has been compacted")]
    Compacted { compacted: u64 },
    #[error("mvcc: required revision is a future revision")]
    FutureRevision { current: u64 },
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
}

/// Which keys: one key, a range `[key, range_end)`, or every key from `key` on (etcd's
/// `range_end = "\0"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyRange {
    One(Vec<u8>),
    Range { from: Vec<u8>, to: Vec<u8> },
    From(Vec<u8>),
}

impl KeyRange {
    /// From etcd's (key, range_end) pair.
    pub fn from_etcd(key: Vec<u8>, range_end: Vec<u8>) -> KeyRange {
        match range_end.as_slice() {
            [] => KeyRange::One(key),
            [0] => KeyRange::From(key),
            _ => KeyRange::Range {
                from: key,
                to: range_end,
            },
        }
    }

    /// Every key that starts with `prefix` (etcd's `--prefix`).
    pub fn prefix(prefix: &[u8]) -> KeyRange {
        match prefix_end(prefix) {
            Some(to) => KeyRange::Range {
                from: prefix.to_vec(),
                to,
            },
            None => KeyRange::From(prefix.to_vec()),
        }
    }

    fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        match self {
            KeyRange::One(k) => (Bound::Included(k), Bound::Included(k)),
            KeyRange::Range { from, to } => (Bound::Included(from), Bound::Excluded(to)),
            KeyRange::From(k) => (Bound::Included(k), Bound::Unbounded),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, KeyRange::Range { from, to } if from >= to)
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::One(k) => k == key,
            KeyRange::Range { from, to } => from.as_slice() <= key && key < to.as_slice(),
            KeyRange::From(k) => k.as_slice() <= key,
        }
    }
}

/// The smallest key greater than every key with this prefix; `None` if there is none (the
/// prefix is empty or all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RangeRequest {
    pub keys: Option<KeyRange>,
    /// 0: the current revision.
    pub revision: u64,
    /// 0: no limit.
    pub limit: u64,
    pub keys_only: bool,
    pub count_only: bool,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    /// 0: no bound.
    pub min_mod_revision: u64,
    pub max_mod_revision: u64,
    pub min_create_revision: u64,
    pub max_create_revision: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// More keys matched than `limit` let through.
    pub more: bool,
    /// Keys in the range at that revision, before `limit` and the revision filters.
    pub count: u64,
    /// The store revision the range was read at.
    pub revision: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub lease: i64,
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRequest {
    pub keys: KeyRange,
    pub prev_kv: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Version(u64),
    Create(u64),
    Mod(u64),
    Value(Vec<u8>),
    Lease(i64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub keys: KeyRange,
    pub result: CompareResult,
    pub target: CompareTarget,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Range(RangeRequest),
    Put(PutRequest),
    Delete(DeleteRequest),
    Txn(TxnRequest),
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

impl TxnRequest {
    /// Whether any branch, nested ones included, changes anything (a put or a delete).
    pub fn writes(&self) -> bool {
        self.success.iter().chain(&self.failure).any(|op| match op {
            Op::Put(_) | Op::Delete(_) => true,
            Op::Txn(t) => t.writes(),
            Op::Range(_) => false,
        })
    }

    /// Whether any branch, nested ones included, puts a key.
    pub fn puts(&self) -> bool {
        self.success.iter().chain(&self.failure).any(|op| match op {
            Op::Put(_) => true,
            Op::Txn(t) => t.puts(),
            Op::Range(_) | Op::Delete(_) => false,
        })
    }
}

impl KeyRange {
    fn payload_bytes(&self) -> usize {
        match self {
            KeyRange::One(k) | KeyRange::From(k) => k.len(),
            KeyRange::Range { from, to } => from.len() + to.len(),
        }
    }
}

impl TxnRequest {
    /// The user bytes it carries: keys, values, compared values, nested transactions' too.
    pub fn payload_bytes(&self) -> u64 {
        let compares: usize = self
            .compare
            .iter()
            .map(|c| {
                c.keys.payload_bytes()
                    + match &c.target {
                        CompareTarget::Value(v) => v.len(),
                        _ => 0,
                    }
            })
            .sum();
        let ops: u64 = self
            .success
            .iter()
            .chain(&self.failure)
            .map(|op| match op {
                Op::Range(r) => r.keys.as_ref().map_or(0, KeyRange::payload_bytes) as u64,
                Op::Put(p) => (p.key.len() + p.value.len()) as u64,
                Op::Delete(d) => d.keys.payload_bytes() as u64,
                Op::Txn(t) => t.payload_bytes(),
            })
            .sum();
        compares as u64 + ops
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    Range(RangeResult),
    Put {
        prev_kv: Option<KeyValue>,
    },
    Delete {
        deleted: u64,
        prev_kvs: Vec<KeyValue>,
    },
    Txn(TxnResult),
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TxnResult {
    pub succeeded: bool,
    pub responses: Vec<OpResult>,
}

/// One change, in the order apply made it: what a watcher is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The key as written; `prev` is what it was before (if it existed).
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    /// `kv` is the key and the deletion's revision (value empty); `prev` what was deleted
    /// (unknown only when read from history whose deleted version was compacted away).
    Delete {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
}

impl Event {
    /// The changed key, as written or deleted.
    pub fn kv(&self) -> &KeyValue {
        match self {
            Event::Put { kv, .. } | Event::Delete { kv, .. } => kv,
        }
    }

    /// Its revision.
    pub fn revision(&self) -> u64 {
        self.kv().mod_revision
    }

    /// Bytes of keys and values it carries (its previous version included): what holding it
    /// in a queue costs, for the bounds that are in bytes.
    pub fn bytes(&self) -> usize {
        let kv_bytes = |kv: &KeyValue| kv.key.len() + kv.value.len() + 48;
        match self {
            Event::Put { kv, prev } | Event::Delete { kv, prev } => {
                kv_bytes(kv) + prev.as_ref().map_or(0, kv_bytes)
            }
        }
    }
}

/// What a version costs besides its key and value (revisions, version, lease, vector slot).
const VERSION_OVERHEAD: u64 = 40;

/// What an entry of the change index costs (a revision and a shared pointer to its key).
const CHANGE_OVERHEAD: u64 = 32;

/// A history read walks the keys of its range (merging their versions) rather than the change
/// index when the range holds at most 1/this of the changes in the window: the key walk costs
/// a step per key for every piece a catch-up reads, the change walk one per change in all.
const KEY_WALK_RATIO: usize = 16;

/// How [`MvccStore::history_by`] finds the changes it returns. The results are the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryWalk {
    /// Whichever costs less for this range and window (what [`MvccStore::history`] does).
    Cheaper,
    /// The keys of the range, their versions merged in revision order.
    Keys,
    /// The change index over the window, filtered by the range.
    Changes,
}

/// The largest number of operations etcd takes in one transaction (`--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

/// The store. Cloning is O(1) and the clone is a frozen point-in-time copy: the map is a
/// persistent B-tree whose nodes are shared until either side changes them (then only the
/// changed path is copied). That is how a snapshot is written while writes go on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredMvcc")]
pub struct MvccStore {
    /// Each key's versions, oldest first; a key whose versions are all compacted away is gone.
    /// Keys and version lists are shared (`Arc`): copying a tree node for a write during a
    /// snapshot then costs reference counts, not copies of the keys and values it holds.
    #[serde(serialize_with = "serialize_keys")]
    keys: KeyMap,
    /// The revision of the last change.
    revision: u64,
    /// Revisions before this one may be gone; reading at one is refused.
    compacted: u64,
    /// Keys that exist now, and the bytes of their keys and current values.
    live_keys: u64,
    live_bytes: u64,
    /// Bytes of every version kept (history included): what compaction frees.
    total_bytes: u64,
    /// The leases and their keys. Not in this struct's encoding: a snapshot carries the
    /// leases' TTLs after the store (format 3) and the keys are found again from the versions
    /// (`restore_leases`).
    #[serde(skip)]
    leases: Leases,
    /// Every change at or after the compaction point, in revision order. Derived from the
    /// versions: not in the encoding, rebuilt when a store is read back.
    #[serde(skip)]
    changes: Changes,
}

/// The store as it is encoded (every field but those derived from the versions).
#[derive(Deserialize)]
struct StoredMvcc {
    #[serde(deserialize_with = "deserialize_keys")]
    keys: KeyMap,
    revision: u64,
    compacted: u64,
    live_keys: u64,
    live_bytes: u64,
    total_bytes: u64,
}

impl From<StoredMvcc> for MvccStore {
    fn from(s: StoredMvcc) -> MvccStore {
        let mut store = MvccStore {
            keys: s.keys,
            revision: s.revision,
            compacted: s.compacted,
            live_keys: s.live_keys,
            live_bytes: s.live_bytes,
            total_bytes: s.total_bytes,
            leases: Leases::default(),
            changes: Changes::new(),
        };
        store.rebuild_changes();
        store
    }
}

impl MvccStore {
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Keys that exist at the current revision.
    pub fn len(&self) -> u64 {
        self.live_keys
    }

    pub fn is_empty(&self) -> bool {
        self.live_keys == 0
    }

    /// Bytes of the keys and values that exist now.
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// Bytes of everything kept, history and its index included.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes + self.changes.len() as u64 * CHANGE_OVERHEAD
    }

    /// Bytes of the versions that are not current and of the change index: what compacting to
    /// now would free (but for the index entries of the current versions).
    pub fn history_bytes(&self) -> u64 {
        self.total_bytes()
            .saturating_sub(self.live_bytes + self.live_keys * VERSION_OVERHEAD)
    }

    /// The change index from the versions: every version at or after the compaction point.
    fn rebuild_changes(&mut self) {
        let mut changes: Vec<(Rev, Arc<[u8]>)> = Vec::new();
        for (key, versions) in self.keys.iter() {
            let start = versions.partition_point(|v| v.rev.main < self.compacted);
            changes.extend(versions[start..].iter().map(|v| (v.rev, key.clone())));
        }
        changes.sort_unstable_by_key(|(rev, _)| *rev);
        self.changes = changes.into_iter().collect();
    }

    /// Records a change just made to `key` (its revision is the newest so far).
    fn record_change(&mut self, rev: Rev, key: &[u8]) {
        if let Some((k, _)) = self.keys.get_key_value(key) {
            self.changes.push_back((rev, k.clone()));
        }
    }

    /// The revision a read at `revision` (0: `current`) sees, or why it cannot be read.
    fn read_revision(&self, revision: u64, current: u64) -> Result<u64, MvccError> {
        if revision == 0 {
            return Ok(current);
        }
        if revision > current {
            return Err(MvccError::FutureRevision { current });
        }
        if revision < self.compacted {
            return Err(MvccError::Compacted {
                compacted: self.compacted,
            });
        }
        Ok(revision)
    }

    /// A key's version visible at `at`, if the key exists then.
    fn visible(versions: &[Version], at: u64) -> Option<&Version> {
        let after = versions.partition_point(|v| v.rev.main <= at);
        let v = versions.get(after.checked_sub(1)?)?;
        v.value.as_ref().map(|_| v)
    }

    /// The key as it is now.
    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        let versions = self.keys.get(key)?;
        Self::visible(versions, self.revision)?.as_kv(key, false)
    }

    /// The seed API's listing: keys that exist now, start with `prefix` and sort after
    /// `start_after`, at most `limit`, and whether more follow.
    pub fn list_keys(
        &self,
        prefix: &[u8],
        start_after: &[u8],
        limit: usize,
    ) -> (Vec<Vec<u8>>, bool) {
        let lower = if start_after.is_empty() || start_after < prefix {
            Bound::Included(prefix)
        } else {
            Bound::Excluded(start_after)
        };
        let mut keys = Vec::new();
        let live = self
            .keys
            .range::<_, [u8]>((lower, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, vs)| Self::visible(vs, self.revision).is_some());
        for (k, _) in live {
            if keys.len() == limit {
                return (keys, true);
            }
            keys.push(k.to_vec());
        }
        (keys, false)
    }

    /// Keys in `keys` as of `at`, in key order, each with its visible version.
    fn scan<'a>(
        &'a self,
        keys: &'a KeyRange,
        at: u64,
    ) -> impl Iterator<Item = (&'a [u8], &'a Version)> + 'a {
        let range = if keys.is_empty() {
            None
        } else {
            Some(self.keys.range::<_, [u8]>(keys.bounds()))
        };
        range
            .into_iter()
            .flatten()
            .filter_map(move |(k, vs)| Self::visible(vs, at).map(|v| (&**k, v)))
    }

    pub fn range(&self, req: &RangeRequest) -> Result<RangeResult, MvccError> {
        self.range_in(req, self.revision)
    }

    /// A range read in a view whose latest revision is `current` (a transaction's own writes
    /// are at a revision the store has not reached yet).
    fn range_in(&self, req: &RangeRequest, current: u64) -> Result<RangeResult, MvccError> {
        let at = self.read_revision(req.revision, current)?;
        let Some(keys) = &req.keys else {
            return Ok(RangeResult {
                revision: current,
                ..RangeResult::default()
            });
        };
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        // etcd sorts by key ascending when another target is asked without an order.
        let order = match (req.sort_order, req.sort_target) {
            (SortOrder::None, SortTarget::Key) => SortOrder::None,
            (SortOrder::None, _) => SortOrder::Ascend,
            (o, _) => o,
        };
        let keep = |v: &Version| {
            (req.min_mod_revision == 0 || v.rev.main >= req.min_mod_revision)
                && (req.max_mod_revision == 0 || v.rev.main <= req.max_mod_revision)
                && (req.min_create_revision == 0 || v.create_revision >= req.min_create_revision)
                && (req.max_create_revision == 0 || v.create_revision <= req.max_create_revision)
        };
        let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
        let mut count = 0u64;
        let mut kvs = Vec::new();
        let mut more = false;
        // Without sorting or filters the scan can stop collecting at the limit (it still
        // counts, as etcd's `count` is every key in the range).
        let streaming = order == SortOrder::None
            || (order == SortOrder::Ascend && req.sort_target == SortTarget::Key);
        for (k, v) in self.scan(keys, at) {
            count += 1;
            if req.count_only || !keep(v) {
                continue;
            }
            if streaming && !filtered && limit != 0 && kvs.len() == limit {
                more = true;
                continue;
            }
            // Values are dropped for keys_only after sorting: a sort by value needs them.
            kvs.extend(v.as_kv(k, req.keys_only && req.sort_target != SortTarget::Value));
        }
        if req.count_only {
            return Ok(RangeResult {
                kvs: Vec::new(),
                more: false,
                count,
                revision: current,
            });
        }
        match (order, req.sort_target) {
            (SortOrder::None, _) | (SortOrder::Ascend, SortTarget::Key) => {}
            (SortOrder::Descend, SortTarget::Key) => kvs.reverse(),
            (o, t) => {
                // Stable: equal targets stay in key order, as in etcd.
                kvs.sort_by(|a, b| {
                    let c = match t {
                        SortTarget::Key => a.key.cmp(&b.key),
                        SortTarget::Version => a.version.cmp(&b.version),
                        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                        SortTarget::Value => a.value.cmp(&b.value),
                    };
                    if o == SortOrder::Descend {
                        c.reverse()
                    } else {
                        c
                    }
                });
            }
        }
        if limit != 0 && kvs.len() > limit {
            kvs.truncate(limit);
            more = true;
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value = Vec::new();
            }
        }
        Ok(RangeResult {
            kvs,
            more,
            count,
            revision: current,
        })
    }

    /// Refuses what etcd refuses before proposing: too many operations, or a key written twice
    /// (put twice, or put and deleted) in one branch.
    pub fn check_txn(txn: &TxnRequest) -> Result<(), MvccError> {
        if txn.success.len() > MAX_TXN_OPS
            || txn.failure.len() > MAX_TXN_OPS
            || txn.compare.len() > MAX_TXN_OPS
        {
            return Err(MvccError::TooManyOps);
        }
        branch_writes(&txn.success)?;
        branch_writes(&txn.failure)?;
        Ok(())
    }

    fn compare(&self, c: &Compare) -> bool {
        let matching: Vec<&Version> = self.scan(&c.keys, self.revision).map(|(_, v)| v).collect();
        if matching.is_empty() {
            // An absent key has version, create and mod revision 0 and no lease; a value
            // compare against it always fails (etcd's rule).
            if matches!(c.target, CompareTarget::Value(_)) {
                return false;
            }
            let absent = Version {
                rev: Rev { main: 0, sub: 0 },
                create_revision: 0,
                version: 0,
                value: Some(Box::default()),
                lease: 0,
            };
            return compare_one(&absent, c);
        }
        matching.into_iter().all(|v| compare_one(v, c))
    }

    /// Applies a transaction (a plain put or delete is a transaction of one operation) as the
    /// Raft entry at `index`, which must be above every index applied before. Its changes get
    /// revision `index`; the events are returned in order. All compares, nested ones included,
    /// see the state before the transaction, and every check runs before the first change, so
    /// a transaction is applied whole or not at all (etcd's rules). A request refused by
    /// [`MvccStore::check_txn`] must not get here; if one does (a log written by a buggy
    /// proposer), it is applied all the same, deterministically.
    pub fn apply_txn(
        &mut self,
        index: u64,
        txn: &TxnRequest,
    ) -> (Result<TxnResult, MvccError>, Vec<Event>) {
        debug_assert!(
            index > self.revision,
            "entry {index} applied after {}",
            self.revision
        );
        if let Err(e) = self.precheck_txn(txn) {
            return (Err(e), Vec::new());
        }
        let mut w = Writer {
            index,
            sub: 0,
            events: Vec::new(),
        };
        let result = self.run_txn(&mut w, txn);
        if !w.events.is_empty() {
            self.revision = index;
        }
        (Ok(result), w.events)
    }

    /// A transaction that changes nothing ([`TxnRequest::writes`] is false), answered from the
    /// store as it is: exactly what applying it would answer, without a Raft entry (etcd serves
    /// read-only transactions the same way, after a read index).
    pub fn read_txn(&self, txn: &TxnRequest) -> Result<TxnResult, MvccError> {
        // On an O(1) copy: applying changes nothing, but takes `&mut`.
        let mut view = self.clone();
        view.apply_txn(self.revision + 1, txn).0
    }

    /// What the transaction would refuse, found on the path its compares choose.
    fn precheck_txn(&self, txn: &TxnRequest) -> Result<(), MvccError> {
        let ops = if txn.compare.iter().all(|c| self.compare(c)) {
            &txn.success
        } else {
            &txn.failure
        };
        for op in ops {
            match op {
                Op::Put(p) if (p.ignore_value || p.ignore_lease) && self.get(&p.key).is_none() => {
                    return Err(MvccError::KeyNotFound)
                }
                Op::Put(p) if !p.ignore_lease && p.lease != 0 && !self.leases.contains(p.lease) => {
                    return Err(MvccError::LeaseNotFound)
                }
                Op::Range(r) if r.revision > self.revision => {
                    return Err(MvccError::FutureRevision {
                        current: self.revision,
                    })
                }
                Op::Range(r) if r.revision != 0 && r.revision < self.compacted => {
                    return Err(MvccError::Compacted {
                        compacted: self.compacted,
                    })
                }
                Op::Txn(t) => self.precheck_txn(t)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn run_txn(&mut self, w: &mut Writer, txn: &TxnRequest) -> TxnResult {
        // Compares read at the store's revision, which this transaction's changes (at a later
        // revision) are not part of yet.
        let succeeded = txn.compare.iter().all(|c| self.compare(c));
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let responses = ops.iter().map(|op| self.run_op(w, op)).collect();
        TxnResult {
            succeeded,
            responses,
        }
    }

    fn run_op(&mut self, w: &mut Writer, op: &Op) -> OpResult {
        match op {
            Op::Range(r) => {
                // Reads inside a transaction see its earlier writes. Its revision was checked
                // beforehand, so this cannot fail.
                let current = self.revision_seen(w);
                OpResult::Range(self.range_in(r, current).unwrap_or_default())
            }
            Op::Put(p) => {
                let prev = self.latest(w, &p.key);
                let value = match (&prev, p.ignore_value) {
                    (Some(prev), true) => prev.value.clone(),
                    _ => p.value.clone(),
                };
                let lease = match (&prev, p.ignore_lease) {
                    (Some(prev), true) => prev.lease,
                    _ => p.lease,
                };
                let kv = self.put_version(w.next(), &p.key, value, lease);
                w.events.push(Event::Put {
                    kv,
                    prev: prev.clone(),
                });
                OpResult::Put {
                    prev_kv: if p.prev_kv { prev } else { None },
                }
            }
            Op::Delete(d) => {
                let at = self.revision_seen(w);
                let doomed: Vec<KeyValue> = self
                    .scan(&d.keys, at)
                    .filter_map(|(k, v)| v.as_kv(k, false))
                    .collect();
                for prev in &doomed {
                    let rev = w.next();
                    self.tombstone(rev, &prev.key);
                    w.events.push(Event::Delete {
                        kv: KeyValue {
                            key: prev.key.clone(),
                            mod_revision: rev.main,
                            ..KeyValue::default()
                        },
                        prev: Some(prev.clone()),
                    });
                }
                OpResult::Delete {
                    deleted: doomed.len() as u64,
                    prev_kvs: if d.prev_kv { doomed } else { Vec::new() },
                }
            }
            Op::Txn(t) => OpResult::Txn(self.run_txn(w, t)),
        }
    }

    /// The key as this transaction sees it, its own earlier writes included.
    fn latest(&self, w: &Writer, key: &[u8]) -> Option<KeyValue> {
        let versions = self.keys.get(key)?;
        Self::visible(versions, self.revision_seen(w))?.as_kv(key, false)
    }

    /// The revision at which this transaction's own writes are visible.
    fn revision_seen(&self, w: &Writer) -> u64 {
        if w.events.is_empty() {
            self.revision
        } else {
            w.index
        }
    }

    fn put_version(&mut self, rev: Rev, key: &[u8], value: Vec<u8>, lease: i64) -> KeyValue {
        let versions = Arc::make_mut(self.keys.entry(Arc::from(key)).or_default());
        let (create_revision, version, old_live, old_lease) = match versions.last() {
            Some(last) if last.value.is_some() => (
                last.create_revision,
                last.version + 1,
                last.value.as_ref().map(|v| v.len()),
                last.lease,
            ),
            _ => (rev.main, 1, None, 0),
        };
        let v = Version {
            rev,
            create_revision,
            version,
            value: Some(value.into_boxed_slice()),
            lease,
        };
        let kv = v.as_kv(key, false).unwrap_or_default();
        self.total_bytes += v.bytes(key);
        match old_live {
            Some(old) => {
                self.live_bytes -= old as u64;
                self.live_bytes += kv.value.len() as u64;
            }
            None => {
                self.live_keys += 1;
                self.live_bytes += (key.len() + kv.value.len()) as u64;
            }
        }
        push_exact(versions, v);
        self.record_change(rev, key);
        if old_lease != lease {
            if let Some((k, _)) = self.keys.get_key_value(key) {
                let k = k.clone();
                self.leases.reattach(&k, old_lease, lease);
            }
        }
        kv
    }

    fn tombstone(&mut self, rev: Rev, key: &[u8]) {
        let Some(versions) = self.keys.get_mut(key).map(Arc::make_mut) else {
            return;
        };
        let Some((old, old_lease)) = versions
            .last()
            .and_then(|l| l.value.as_ref().map(|v| (v.len(), l.lease)))
        else {
            return;
        };
        let v = Version {
            rev,
            create_revision: 0,
            version: 0,
            value: None,
            lease: 0,
        };
        self.total_bytes += v.bytes(key);
        self.live_keys -= 1;
        self.live_bytes -= (key.len() + old) as u64;
        push_exact(versions, v);
        self.record_change(rev, key);
        if old_lease != 0 {
            if let Some((k, _)) = self.keys.get_key_value(key) {
                let k = k.clone();
                self.leases.reattach(&k, old_lease, 0);
            }
        }
    }

    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    /// Applies a lease grant; refused if the id is taken. Changes no revision (as etcd).
    pub fn grant_lease(&mut self, id: LeaseId, ttl: i64) -> Result<(), MvccError> {
        if self.leases.grant(id, ttl) {
            Ok(())
        } else {
            Err(MvccError::LeaseExists)
        }
    }

    /// Applies a lease revoke (or expiry) as the Raft entry at `index`: the lease goes and
    /// every key attached to it is deleted, all at revision `index` (one revision, as etcd).
    pub fn revoke_lease(&mut self, index: u64, id: LeaseId) -> (Result<(), MvccError>, Vec<Event>) {
        let Some(keys) = self.leases.remove(id) else {
            return (Err(MvccError::LeaseNotFound), Vec::new());
        };
        let mut w = Writer {
            index,
            sub: 0,
            events: Vec::new(),
        };
        for key in keys {
            let Some(prev) = self.get(&key) else { continue };
            let rev = w.next();
            self.tombstone(rev, &key);
            w.events.push(Event::Delete {
                kv: KeyValue {
                    key: key.to_vec(),
                    mod_revision: rev.main,
                    ..KeyValue::default()
                },
                prev: Some(prev),
            });
        }
        if !w.events.is_empty() {
            self.revision = index;
        }
        (Ok(()), w.events)
    }

    /// Puts back the leases a snapshot carried, and finds their keys from the versions.
    pub fn restore_leases(&mut self, ttls: impl IntoIterator<Item = (LeaseId, i64)>) {
        let mut leases = Leases::default();
        for (id, ttl) in ttls {
            leases.grant(id, ttl);
        }
        for (key, versions) in self.keys.iter() {
            if let Some(last) = versions
                .last()
                .filter(|v| v.value.is_some() && v.lease != 0)
            {
                leases.reattach(key, 0, last.lease);
            }
        }
        self.leases = leases;
    }

    /// The changes to `keys` at revisions `from..=to`, in the order apply made them, as the
    /// events apply returned (a watcher catching up reads these): whole revisions only, and
    /// no more revisions once `max_bytes` of keys and values is reached (at least one revision
    /// is returned whatever its size, so a caller always progresses). Returns the events and
    /// the last revision they cover (`to`, or less when cut short). Refused when `from` is
    /// compacted away.
    ///
    /// Cost: O(log n) to find the window in the change index, then the cheaper of walking the
    /// changes in the window (each once over a whole catch-up, whatever the range) or the keys
    /// of the range (when it holds far fewer keys than the window has changes), plus the
    /// events returned.
    pub fn history(
        &self,
        keys: &KeyRange,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> Result<(Vec<Event>, u64), MvccError> {
        self.history_by(HistoryWalk::Cheaper, keys, from, to, max_bytes)
    }

    /// [`MvccStore::history`], walking as told (for tests that hold the walks to each other).
    pub fn history_by(
        &self,
        walk: HistoryWalk,
        keys: &KeyRange,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> Result<(Vec<Event>, u64), MvccError> {
        if from < self.compacted {
            return Err(MvccError::Compacted {
                compacted: self.compacted,
            });
        }
        let to = to.min(self.revision);
        if from > to || keys.is_empty() {
            return Ok((Vec::new(), to));
        }
        let start = self.change_position(from);
        let window = self.change_position(to + 1) - start;
        let mut out = HistoryOut::new(to, max_bytes);
        let by_keys = match walk {
            HistoryWalk::Keys => true,
            HistoryWalk::Changes => false,
            HistoryWalk::Cheaper => {
                let few = window / KEY_WALK_RATIO;
                self.keys.range::<_, [u8]>(keys.bounds()).nth(few).is_none()
            }
        };
        if by_keys {
            self.history_by_keys(keys, from, to, &mut out);
        } else {
            for (rev, key) in self.changes.skip(start).iter().take(window) {
                if !keys.contains(key) {
                    continue;
                }
                let Some(versions) = self.keys.get(&**key) else {
                    continue;
                };
                // A tombstone at the compaction point itself is gone from the versions (it
                // answers no read); the key walk does not see it either.
                let Ok(i) = versions.binary_search_by_key(rev, |v| v.rev) else {
                    continue;
                };
                if !out.add(key, versions, i) {
                    break;
                }
            }
        }
        Ok((out.events, out.last))
    }

    /// History by merging, in revision order, the versions in the window of every key in the
    /// range.
    fn history_by_keys(&self, keys: &KeyRange, from: u64, to: u64, out: &mut HistoryOut) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let cursors: Vec<(&[u8], &History)> = self
            .keys
            .range::<_, [u8]>(keys.bounds())
            .map(|(k, vs)| (&**k, &**vs))
            .collect();
        let in_window = |c: usize, i: usize| {
            cursors[c]
                .1
                .get(i)
                .filter(|v| v.rev.main <= to)
                .map(|v| Reverse((v.rev, c, i)))
        };
        let mut next: BinaryHeap<Reverse<(Rev, usize, usize)>> = cursors
            .iter()
            .enumerate()
            .filter_map(|(c, (_, vs))| in_window(c, vs.partition_point(|v| v.rev.main < from)))
            .collect();
        while let Some(Reverse((_, c, i))) = next.pop() {
            let (key, versions) = cursors[c];
            if !out.add(key, versions, i) {
                return;
            }
            next.extend(in_window(c, i + 1));
        }
    }

    /// Where the first change at revision `main` or later is (or would be) in the index.
    fn change_position(&self, main: u64) -> usize {
        let (Ok(at) | Err(at)) = self.changes.binary_search_by(|(rev, _)| {
            if rev.main < main {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            }
        });
        at
    }

    /// For a restore into a new cluster: the store's revision moves up to `revision` (the new
    /// cluster's writes come after it) and, with `compact`, everything before it is compacted
    /// away (a reader or watcher at an older revision is told so).
    pub fn move_revision_to(&mut self, revision: u64, compact: bool) {
        self.revision = self.revision.max(revision);
        if compact && revision > self.compacted {
            // Within [compacted, revision] by the line above: cannot be refused.
            let _ = self.compact(revision);
        }
    }

    /// Checks a compaction request before it is proposed.
    pub fn check_compact(&self, revision: u64) -> Result<(), MvccError> {
        if revision > self.revision {
            return Err(MvccError::FutureRevision {
                current: self.revision,
            });
        }
        if revision <= self.compacted {
            return Err(MvccError::Compacted {
                compacted: self.compacted,
            });
        }
        Ok(())
    }

    /// Forgets history before `revision`: afterwards reads at `revision` and later are as
    /// before, earlier ones are refused. Each key keeps its newest version at or before
    /// `revision` unless that is a deletion. Cost: one pass over the keys.
    pub fn compact(&mut self, revision: u64) -> Result<(), MvccError> {
        self.check_compact(revision)?;
        // Keys with something to drop are found by reading first, so a key that keeps its
        // versions is not touched (a snapshot being written keeps sharing its node).
        let doomed: Vec<(Arc<[u8]>, usize)> = self
            .keys
            .iter()
            .filter_map(|(key, versions)| {
                let n = Self::droppable(versions, revision);
                (n > 0).then(|| (key.clone(), n))
            })
            .collect();
        let mut freed = 0u64;
        for (key, n) in doomed {
            let Some(versions) = self.keys.get_mut(&key).map(Arc::make_mut) else {
                continue;
            };
            for v in versions.drain(..n) {
                freed += v.bytes(&key);
            }
            versions.shrink_to_fit();
            if versions.is_empty() {
                self.keys.remove(&*key);
            }
        }
        self.total_bytes -= freed;
        self.compacted = revision;
        let kept = self.changes.split_off(self.change_position(revision));
        self.changes = kept;
        // The compaction point's own revision stays, but for tombstones it dropped.
        let mut at_point = Vec::new();
        while let Some((rev, key)) = self.changes.front().filter(|(r, _)| r.main == revision) {
            let kept = self
                .keys
                .get(&**key)
                .is_some_and(|vs| vs.iter().any(|v| v.rev == *rev));
            at_point.extend(kept.then(|| (*rev, key.clone())));
            self.changes.pop_front();
        }
        for change in at_point.into_iter().rev() {
            self.changes.push_front(change);
        }
        Ok(())
    }

    /// How many of a key's oldest versions a compaction at `revision` drops: all before the one
    /// visible at `revision` (the last at or before it), and that one too if it is a deletion
    /// (a visible tombstone answers no read).
    fn droppable(versions: &[Version], revision: u64) -> usize {
        let visible = versions.partition_point(|v| v.rev.main <= revision);
        let mut drop = visible.saturating_sub(1);
        if versions
            .get(drop)
            .is_some_and(|v| v.value.is_none() && drop < visible)
        {
            drop += 1;
        }
        drop
    }

    /// The store from a pre-MVCC map: each key written once, at the revision it had (the same
    /// rule: the index of the entry that wrote it). The store's revision is the newest of them;
    /// the history before it is gone, so it is also the compaction point.
    pub fn from_legacy<'a>(entries: impl Iterator<Item = (&'a str, &'a str, u64)>) -> MvccStore {
        let mut store = MvccStore::default();
        for (key, value, revision) in entries {
            let rev = Rev {
                main: revision,
                sub: 0,
            };
            store.put_version(rev, key.as_bytes(), value.as_bytes().to_vec(), 0);
            store.revision = store.revision.max(revision);
        }
        store.compacted = store.revision;
        // The keys came in key order, not revision order.
        store.rebuild_changes();
        store
    }
}

/// Appends without spare capacity (a `Vec` reserves four slots on a first push): most keys hold
/// one or two versions, and a million keys would carry hundreds of MB of empty slots.
fn push_exact(versions: &mut History, v: Version) {
    versions.reserve_exact(1);
    versions.push(v);
}

/// Reads the key map without trusting its length prefix: imbl's own `Deserialize` allocates
/// for the length a snapshot claims, so a corrupt one could ask for any amount of memory (the
/// decoder fuzz test found it); this inserts entry by entry, as `BTreeMap`'s does.
/// The keys as a map of byte strings (see `Version::value` for why bytes).
fn serialize_keys<S: serde::Serializer>(keys: &KeyMap, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(keys.len()))?;
    for (k, v) in keys.iter() {
        map.serialize_entry(serde_bytes::Bytes::new(k), v.as_ref())?;
    }
    map.end()
}

fn deserialize_keys<'de, D>(d: D) -> Result<KeyMap, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Keys;
    impl<'de> serde::de::Visitor<'de> for Keys {
        type Value = KeyMap;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of keys to their versions")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Self::Value, A::Error> {
            let mut keys = KeyMap::new();
            while let Some((k, v)) = a.next_entry::<serde_bytes::ByteBuf, History>()? {
                keys.insert(Arc::from(k.into_vec()), Arc::new(v));
            }
            Ok(keys)
        }
    }
    d.deserialize_map(Keys)
}

/// The events a history read collects, in revision order, up to its byte budget.
struct HistoryOut {
    events: Vec<Event>,
    bytes: usize,
    max_bytes: usize,
    /// The last revision covered: the window's end until the budget cuts it short.
    last: u64,
}

impl HistoryOut {
    fn new(to: u64, max_bytes: usize) -> HistoryOut {
        HistoryOut {
            events: Vec::new(),
            bytes: 0,
            max_bytes,
            last: to,
        }
    }

    /// Adds the change that made `versions[i]`; false (and nothing added) when the budget is
    /// spent and the change starts a new revision: the read ends with whole revisions.
    fn add(&mut self, key: &[u8], versions: &[Version], i: usize) -> bool {
        let v = &versions[i];
        if let Some(prev) = self.events.last().map(Event::revision) {
            if self.bytes >= self.max_bytes && prev != v.rev.main {
                self.last = prev;
                return false;
            }
        }
        let prev = i.checked_sub(1).and_then(|p| versions[p].as_kv(key, false));
        let event = match v.as_kv(key, false) {
            Some(kv) => Event::Put { kv, prev },
            None => Event::Delete {
                kv: KeyValue {
                    key: key.to_vec(),
                    mod_revision: v.rev.main,
                    ..KeyValue::default()
                },
                prev,
            },
        };
        self.bytes += event.bytes();
        self.events.push(event);
        true
    }
}

/// Hands out the revisions of one Raft entry's changes, and collects their events.
struct Writer {
    index: u64,
    sub: u32,
    events: Vec<Event>,
}

impl Writer {
    fn next(&mut self) -> Rev {
        let rev = Rev {
            main: self.index,
            sub: self.sub,
        };
        self.sub += 1;
        rev
    }
}

fn compare_one(v: &Version, c: &Compare) -> bool {
    use std::cmp::Ordering;
    let ord: Ordering = match &c.target {
        CompareTarget::Version(x) => v.version.cmp(x),
        CompareTarget::Create(x) => v.create_revision.cmp(x),
        CompareTarget::Mod(x) => v.rev.main.cmp(x),
        CompareTarget::Value(x) => v.value.as_deref().unwrap_or_default().cmp(x.as_slice()),
        CompareTarget::Lease(x) => v.lease.cmp(x),
    };
    match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}

/// The keys a branch puts and the ranges it deletes, refusing a key put twice or put and
/// deleted (etcd's `checkIntervals`: a nested transaction's two branches exclude each other,
/// so a key put in both is fine; deletes may overlap deletes).
fn branch_writes(ops: &[Op]) -> Result<(Vec<Vec<u8>>, Vec<KeyRange>), MvccError> {
    let mut dels: Vec<KeyRange> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Delete(d) => Some(d.keys.clone()),
            _ => None,
        })
        .collect();
    let deleted = |dels: &[KeyRange], k: &[u8]| dels.iter().any(|r| r.contains(k));
    let mut puts: Vec<Vec<u8>> = Vec::new();
    for op in ops {
        let Op::Txn(t) = op else { continue };
        let (then_puts, then_dels) = branch_writes(&t.success)?;
        let (else_puts, else_dels) = branch_writes(&t.failure)?;
        for k in &then_puts {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(MvccError::DuplicateKey);
            }
            puts.push(k.clone());
        }
        for k in else_puts {
            if (puts.contains(&k) && !then_puts.contains(&k)) || deleted(&dels, &k) {
                return Err(MvccError::DuplicateKey);
            }
            if !puts.contains(&k) {
                puts.push(k);
            }
        }
        dels.extend(then_dels);
        dels.extend(else_dels);
    }
    for op in ops {
        let Op::Put(p) = op else { continue };
        if puts.contains(&p.key) || deleted(&dels, &p.key) {
            return Err(MvccError::DuplicateKey);
        }
        puts.push(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod encoding_tests {
    use super::*;

    /// The store as it was encoded before keys and values were written as bytes: every byte
    /// string a sequence of u8. Snapshots travel between releases (an upgrade's mixed cluster,
    /// a backup restored by a newer one), so the bytes must be the same.
    #[derive(Serialize)]
    struct OldVersion {
        rev: Rev,
        create_revision: u64,
        version: u64,
        value: Option<Vec<u8>>,
        lease: i64,
    }

    #[test]
    fn keys_and_values_encode_as_they_did_as_sequences() {
        let versions = |value: Option<&[u8]>| Version {
            rev: Rev { main: 7, sub: 1 },
            create_revision: 3,
            version: 2,
            value: value.map(Box::from),
            lease: -5,
        };
        let old = |value: Option<&[u8]>| OldVersion {
            rev: Rev { main: 7, sub: 1 },
            create_revision: 3,
            version: 2,
            value: value.map(<[u8]>::to_vec),
            lease: -5,
        };
        for value in [Some(&b"value \x00\xff"[..]), Some(&b""[..]), None] {
            let new = crate::codec::to_bytes(&versions(value)).expect("encode");
            assert_eq!(new, crate::codec::to_bytes(&old(value)).expect("encode"));
            let back: Version = crate::codec::from_bytes(&new, "a version").expect("decode");
            assert_eq!(back, versions(value));
        }
        let mut keys = KeyMap::new();
        let history: History = smallvec::smallvec![versions(Some(b"v"))];
        keys.insert(Arc::from(&b"key\x01"[..]), Arc::new(history.clone()));
        let as_map: std::collections::BTreeMap<Vec<u8>, Vec<OldVersion>> =
            [(b"key\x01".to_vec(), vec![old(Some(b"v"))])].into();
        #[derive(Serialize)]
        struct Keys(#[serde(serialize_with = "serialize_keys")] KeyMap);
        let new = crate::codec::to_bytes(&Keys(keys)).expect("encode");
        assert_eq!(new, crate::codec::to_bytes(&as_map).expect("encode"));
    }
}
