//! The MVCC store against a reference model that keeps a full copy of the key space after every
//! revision: random sequences of puts, deletes (single keys and ranges), transactions (nested
//! ones included), compactions and range reads at any revision must give identical answers.
//! The model is as simple as it can be, so that it is obviously right; the store is built to be
//! fast.

use std::collections::BTreeMap;

use concord_node::store::mvcc::*;
use proptest::prelude::*;

#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelKv {
    create: u64,
    modified: u64,
    version: u64,
    value: Vec<u8>,
    lease: i64,
}

type Space = BTreeMap<Vec<u8>, ModelKv>;

/// Every revision's complete key space, and the compaction point.
#[derive(Default)]
struct Model {
    history: Vec<(u64, Space)>,
    revision: u64,
    compacted: u64,
}

impl Model {
    fn now(&self) -> Space {
        self.history
            .last()
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    }

    fn at(&self, rev: u64) -> Space {
        self.history
            .iter()
            .rev()
            .find(|(r, _)| *r <= rev)
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    }

    fn read_revision(&self, rev: u64, current: u64) -> Result<u64, MvccError> {
        if rev == 0 {
            return Ok(current);
        }
        if rev > current {
            return Err(MvccError::FutureRevision { current });
        }
        if rev < self.compacted {
            return Err(MvccError::Compacted {
                compacted: self.compacted,
            });
        }
        Ok(rev)
    }
}

fn in_range(keys: &KeyRange, k: &[u8]) -> bool {
    match keys {
        KeyRange::One(x) => x.as_slice() == k,
        KeyRange::Range { from, to } => from.as_slice() <= k && k < to.as_slice(),
        KeyRange::From(x) => x.as_slice() <= k,
    }
}

fn to_kv(k: &[u8], m: &ModelKv) -> KeyValue {
    KeyValue {
        key: k.to_vec(),
        create_revision: m.create,
        mod_revision: m.modified,
        version: m.version,
        value: m.value.clone(),
        lease: m.lease,
    }
}

fn model_range(space: &Space, req: &RangeRequest, current: u64) -> RangeResult {
    let Some(keys) = &req.keys else {
        return RangeResult {
            revision: current,
            ..RangeResult::default()
        };
    };
    let all: Vec<KeyValue> = space
        .iter()
        .filter(|(k, _)| in_range(keys, k))
        .map(|(k, m)| to_kv(k, m))
        .collect();
    let count = all.len() as u64;
    if req.count_only {
        return RangeResult {
            kvs: vec![],
            more: false,
            count,
            revision: current,
        };
    }
    let mut kvs: Vec<KeyValue> = all
        .into_iter()
        .filter(|kv| req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
        .filter(|kv| req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
        .filter(|kv| req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
        .filter(|kv| req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
        .collect();
    let order = match (req.sort_order, req.sort_target) {
        (SortOrder::None, SortTarget::Key) => SortOrder::None,
        (SortOrder::None, _) => SortOrder::Ascend,
        (o, _) => o,
    };
    if order != SortOrder::None {
        kvs.sort_by(|a, b| {
            let c = match req.sort_target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            };
            if order == SortOrder::Descend {
                c.reverse()
            } else {
                c
            }
        });
    }
    let mut more = false;
    if req.limit != 0 && kvs.len() as u64 > req.limit {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    RangeResult {
        kvs,
        more,
        count,
        revision: current,
    }
}

fn model_compare(space: &Space, c: &Compare) -> bool {
    let hits: Vec<&ModelKv> = space
        .iter()
        .filter(|(k, _)| in_range(&c.keys, k))
        .map(|(_, m)| m)
        .collect();
    let zero = ModelKv {
        create: 0,
        modified: 0,
        version: 0,
        value: vec![],
        lease: 0,
    };
    let check = |m: &ModelKv| {
        let ord = match &c.target {
            CompareTarget::Version(x) => m.version.cmp(x),
            CompareTarget::Create(x) => m.create.cmp(x),
            CompareTarget::Mod(x) => m.modified.cmp(x),
            CompareTarget::Value(x) => m.value.cmp(x),
            CompareTarget::Lease(x) => m.lease.cmp(x),
        };
        match c.result {
            CompareResult::Equal => ord.is_eq(),
            CompareResult::NotEqual => ord.is_ne(),
            CompareResult::Greater => ord.is_gt(),
            CompareResult::Less => ord.is_lt(),
        }
    };
    if hits.is_empty() {
        return !matches!(c.target, CompareTarget::Value(_)) && check(&zero);
    }
    hits.into_iter().all(check)
}

/// Checks and then runs a transaction on a working copy, as one revision.
fn model_txn(
    m: &Model,
    before: &Space,
    work: &mut Space,
    changed: &mut bool,
    index: u64,
    txn: &TxnRequest,
) -> TxnResult {
    let succeeded = txn.compare.iter().all(|c| model_compare(before, c));
    let ops = if succeeded {
        &txn.success
    } else {
        &txn.failure
    };
    let mut responses = vec![];
    for op in ops {
        responses.push(match op {
            Op::Range(r) => {
                let current = if *changed { index } else { m.revision };
                let space = if r.revision == 0 || r.revision == current {
                    work.clone()
                } else {
                    m.at(r.revision)
                };
                OpResult::Range(model_range(&space, r, current))
            }
            Op::Put(p) => {
                let prev = work.get(&p.key).cloned();
                let kv = ModelKv {
                    create: prev.as_ref().map_or(index, |x| x.create),
                    modified: index,
                    version: prev.as_ref().map_or(1, |x| x.version + 1),
                    value: match (&prev, p.ignore_value) {
                        (Some(x), true) => x.value.clone(),
                        _ => p.value.clone(),
                    },
                    lease: match (&prev, p.ignore_lease) {
                        (Some(x), true) => x.lease,
                        _ => p.lease,
                    },
                };
                work.insert(p.key.clone(), kv);
                *changed = true;
                OpResult::Put {
                    prev_kv: if p.prev_kv {
                        prev.map(|x| to_kv(&p.key, &x))
                    } else {
                        None
                    },
                }
            }
            Op::Delete(d) => {
                let doomed: Vec<Vec<u8>> = work
                    .keys()
                    .filter(|k| in_range(&d.keys, k))
                    .cloned()
                    .collect();
                let prevs: Vec<KeyValue> = doomed
                    .iter()
                    .map(|k| to_kv(k, &work[k.as_slice()]))
                    .collect();
                for k in &doomed {
                    work.remove(k);
                }
                *changed |= !doomed.is_empty();
                OpResult::Delete {
                    deleted: doomed.len() as u64,
                    prev_kvs: if d.prev_kv { prevs } else { vec![] },
                }
            }
            Op::Txn(t) => OpResult::Txn(model_txn(m, before, work, changed, index, t)),
        });
    }
    TxnResult {
        succeeded,
        responses,
    }
}

fn model_precheck(m: &Model, space: &Space, txn: &TxnRequest) -> Result<(), MvccError> {
    let ops = if txn.compare.iter().all(|c| model_compare(space, c)) {
        &txn.success
    } else {
        &txn.failure
    };
    for op in ops {
        match op {
            Op::Put(p) if (p.ignore_value || p.ignore_lease) && !space.contains_key(&p.key) => {
                return Err(MvccError::KeyNotFound)
            }
            Op::Range(r) if r.revision != 0 => {
                m.read_revision(r.revision, m.revision)?;
            }
            Op::Txn(t) => model_precheck(m, space, t)?,
            _ => {}
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Step {
    Txn(TxnRequest),
    Range(RangeRequest),
    Compact(u64),
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![
        b"a".to_vec(),
        b"ab".to_vec(),
        b"abc".to_vec(),
        b"b".to_vec(),
        b"ba".to_vec(),
        b"c".to_vec(),
        vec![0xff],
        vec![0xff, 0x00],
    ])
}

fn keys() -> impl Strategy<Value = KeyRange> {
    prop_oneof![
        key().prop_map(KeyRange::One),
        (key(), key()).prop_map(|(a, b)| KeyRange::Range { from: a, to: b }),
        key().prop_map(KeyRange::From),
        key().prop_map(|k| KeyRange::prefix(&k)),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![
        b"".to_vec(),
        b"x".to_vec(),
        b"y".to_vec(),
        b"zz".to_vec(),
    ])
}

fn range_req() -> impl Strategy<Value = RangeRequest> {
    (
        keys(),
        0u64..40,
        0u64..4,
        any::<bool>(),
        any::<bool>(),
        prop::sample::select(vec![SortOrder::None, SortOrder::Ascend, SortOrder::Descend]),
        prop::sample::select(vec![
            SortTarget::Key,
            SortTarget::Version,
            SortTarget::Create,
            SortTarget::Mod,
            SortTarget::Value,
        ]),
        prop::sample::select(vec![0u64, 0, 5, 12]),
        prop::sample::select(vec![0u64, 0, 8, 20]),
    )
        .prop_map(
            |(keys, revision, limit, keys_only, count_only, sort_order, sort_target, min, max)| {
                RangeRequest {
                    keys: Some(keys),
                    revision,
                    limit,
                    keys_only,
                    count_only,
                    sort_order,
                    sort_target,
                    min_mod_revision: min,
                    max_mod_revision: max,
                    min_create_revision: min / 2,
                    max_create_revision: 0,
                }
            },
        )
}

fn put() -> impl Strategy<Value = Op> {
    (
        key(),
        value(),
        0i64..3,
        any::<bool>(),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(key, value, lease, prev_kv, ignore_value, ignore_lease)| {
            Op::Put(PutRequest {
                key,
                value,
                lease,
                prev_kv,
                ignore_value,
                ignore_lease,
            })
        })
}

fn delete() -> impl Strategy<Value = Op> {
    (keys(), any::<bool>()).prop_map(|(keys, prev_kv)| Op::Delete(DeleteRequest { keys, prev_kv }))
}

fn compare() -> impl Strategy<Value = Compare> {
    (
        keys(),
        prop::sample::select(vec![
            CompareResult::Equal,
            CompareResult::NotEqual,
            CompareResult::Greater,
            CompareResult::Less,
        ]),
        prop_oneof![
            (0u64..4).prop_map(CompareTarget::Version),
            (0u64..30).prop_map(CompareTarget::Create),
            (0u64..30).prop_map(CompareTarget::Mod),
            value().prop_map(CompareTarget::Value),
            (0i64..3).prop_map(CompareTarget::Lease),
        ],
    )
        .prop_map(|(keys, result, target)| Compare {
            keys,
            result,
            target,
        })
}

fn flat_op() -> impl Strategy<Value = Op> {
    prop_oneof![3 => put(), 2 => delete(), 1 => range_req().prop_map(Op::Range)]
}

fn txn() -> impl Strategy<Value = TxnRequest> {
    let leaf = (
        prop::collection::vec(compare(), 0..3),
        prop::collection::vec(flat_op(), 0..4),
        prop::collection::vec(flat_op(), 0..4),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        });
    leaf.prop_recursive(2, 16, 3, |inner| {
        (
            prop::collection::vec(compare(), 0..2),
            prop::collection::vec(
                prop_oneof![3 => flat_op(), 1 => inner.clone().prop_map(Op::Txn)],
                0..4,
            ),
            prop::collection::vec(
                prop_oneof![3 => flat_op(), 1 => inner.prop_map(Op::Txn)],
                0..3,
            ),
        )
            .prop_map(|(compare, success, failure)| TxnRequest {
                compare,
                success,
                failure,
            })
    })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => put().prop_map(|op| Step::Txn(TxnRequest { compare: vec![], success: vec![op], failure: vec![] })),
        1 => delete().prop_map(|op| Step::Txn(TxnRequest { compare: vec![], success: vec![op], failure: vec![] })),
        2 => txn().prop_map(Step::Txn),
        3 => range_req().prop_map(Step::Range),
        1 => (0u64..40).prop_map(Step::Compact),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn the_store_answers_as_the_model_does(
        steps in prop::collection::vec(step(), 1..40),
        watched in keys(),
    ) {
        let mut store = MvccStore::default();
        // The leases puts name exist (refusing a missing one is tested on its own).
        for id in 1..3 {
            store.grant_lease(id, 60).expect("grant");
        }
        let mut model = Model::default();
        // Raft indexes with gaps, as entries that change nothing leave.
        let mut index = 0u64;
        // Every event apply returned: what a watcher from the start would have been sent.
        let mut applied: Vec<Event> = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            index += 1 + (i as u64 % 2);
            match step {
                Step::Txn(t) => {
                    let checked = MvccStore::check_txn(t);
                    if checked.is_err() {
                        // Refused before proposing: never applied.
                        continue;
                    }
                    // A transaction that changes nothing is answered without applying it,
                    // and the answer must be the one applying gives.
                    let read_only = (!t.writes()).then(|| store.read_txn(t));
                    let (got, events) = store.apply_txn(index, t);
                    if let Some(answer) = read_only {
                        prop_assert_eq!(&answer, &got, "read-only step {}: {:?}", i, t);
                    }
                    let before = model.now();
                    let expected = model_precheck(&model, &before, t).map(|()| {
                        let mut work = before.clone();
                        let mut changed = false;
                        let r = model_txn(&model, &before, &mut work, &mut changed, index, t);
                        if changed {
                            model.history.push((index, work));
                            model.revision = index;
                        }
                        r
                    });
                    prop_assert_eq!(&got, &expected, "step {}: {:?}", i, t);
                    prop_assert_eq!(events.is_empty(), store.revision() != index || got.is_err());
                    applied.extend(events);
                }
                Step::Range(r) => {
                    let got = store.range(r);
                    let expected = model
                        .read_revision(r.revision, model.revision)
                        .map(|at| model_range(&model.at(at), r, model.revision));
                    prop_assert_eq!(&got, &expected, "step {}: {:?}", i, r);
                }
                Step::Compact(rev) => {
                    let got = store.compact(*rev);
                    let expected = if *rev > model.revision {
                        Err(MvccError::FutureRevision { current: model.revision })
                    } else if *rev <= model.compacted {
                        Err(MvccError::Compacted { compacted: model.compacted })
                    } else {
                        model.compacted = *rev;
                        Ok(())
                    };
                    prop_assert_eq!(got, expected, "step {}: compact {}", i, rev);
                }
            }
            prop_assert_eq!(store.revision(), model.revision);
            let now = model.now();
            prop_assert_eq!(store.len(), now.len() as u64);
            let live: u64 = now.iter().map(|(k, v)| (k.len() + v.value.len()) as u64).sum();
            prop_assert_eq!(store.live_bytes(), live);
        }
        // History replays what apply returned, whole or read in small pieces (whole revisions
        // each), for every revision after the compaction point, over every key or a range,
        // whichever way it walks; before the compaction point it is refused.
        let from = store.compacted() + 1;
        for range in [KeyRange::From(Vec::new()), watched.clone()] {
            let expected: Vec<Event> = applied
                .iter()
                .filter(|e| e.revision() >= from && range.contains(&e.kv().key))
                .cloned()
                .collect();
            for walk in [HistoryWalk::Cheaper, HistoryWalk::Keys, HistoryWalk::Changes] {
                let (whole, last) = store
                    .history_by(walk, &range, from, u64::MAX, usize::MAX)
                    .expect("history");
                prop_assert_eq!(&whole, &expected, "{:?} over {:?}", walk, range);
                prop_assert_eq!(last, store.revision());
                let mut pieces = Vec::new();
                let mut next = from;
                while next <= store.revision() {
                    let (got, last) = store
                        .history_by(walk, &range, next, u64::MAX, 1)
                        .expect("history");
                    prop_assert!(got.iter().all(|e| e.revision() <= last));
                    prop_assert!(last >= next, "no progress at {}", next);
                    pieces.extend(got);
                    next = last + 1;
                }
                prop_assert_eq!(&pieces, &expected, "{:?} in pieces over {:?}", walk, range);
            }
        }
        if store.compacted() > 1 {
            let all = KeyRange::From(Vec::new());
            prop_assert!(store.history(&all, store.compacted() - 1, u64::MAX, usize::MAX).is_err());
        }
        // A store read back from its encoding (a snapshot) is the same store, the index of its
        // changes rebuilt.
        let encoded = bincode::serialize(&store).expect("encode");
        let mut decoded: MvccStore = bincode::deserialize(&encoded).expect("decode");
        decoded.restore_leases(store.leases().ttls());
        prop_assert!(decoded == store, "decoded store differs");
    }
}

#[test]
fn a_transaction_that_puts_a_key_twice_or_puts_what_it_deletes_is_refused() {
    let p = |k: &[u8]| {
        Op::Put(PutRequest {
            key: k.to_vec(),
            value: b"v".to_vec(),
            lease: 0,
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
        })
    };
    let d = |k: &[u8]| {
        Op::Delete(DeleteRequest {
            keys: KeyRange::prefix(k),
            prev_kv: false,
        })
    };
    let txn = |success: Vec<Op>| TxnRequest {
        compare: vec![],
        success,
        failure: vec![],
    };
    assert_eq!(
        MvccStore::check_txn(&txn(vec![p(b"a"), p(b"a")])),
        Err(MvccError::DuplicateKey)
    );
    assert_eq!(
        MvccStore::check_txn(&txn(vec![d(b"a"), p(b"ab")])),
        Err(MvccError::DuplicateKey)
    );
    assert_eq!(MvccStore::check_txn(&txn(vec![d(b"a"), d(b"ab")])), Ok(()));
    // A nested transaction's two branches exclude each other; the outer branch does not.
    let nested = Op::Txn(TxnRequest {
        compare: vec![],
        success: vec![p(b"k")],
        failure: vec![p(b"k")],
    });
    assert_eq!(MvccStore::check_txn(&txn(vec![nested.clone()])), Ok(()));
    assert_eq!(
        MvccStore::check_txn(&txn(vec![nested, p(b"k")])),
        Err(MvccError::DuplicateKey)
    );
    assert_eq!(
        MvccStore::check_txn(&txn((0..129)
            .map(|i| p(format!("k{i}").as_bytes()))
            .collect())),
        Err(MvccError::TooManyOps)
    );
}

#[test]
fn compaction_keeps_the_state_at_its_revision_and_frees_the_history_before_it() {
    let mut s = MvccStore::default();
    let put = |k: &str, v: &str| TxnRequest {
        compare: vec![],
        success: vec![Op::Put(PutRequest {
            key: k.into(),
            value: v.into(),
            lease: 0,
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
        })],
        failure: vec![],
    };
    for i in 1..=1000u64 {
        let _ = s.apply_txn(i, &put("hot", &format!("v{i}")));
    }
    let _ = s.apply_txn(1001, &put("cold", "c"));
    let before = s.total_bytes();
    s.compact(1000).expect("compact");
    assert!(
        s.total_bytes() * 100 < before,
        "{} of {before} bytes left",
        s.total_bytes()
    );
    let at = |rev| {
        s.range(&RangeRequest {
            keys: Some(KeyRange::From(vec![])),
            revision: rev,
            ..RangeRequest::default()
        })
    };
    assert_eq!(at(999), Err(MvccError::Compacted { compacted: 1000 }));
    let r = at(1000).expect("readable");
    assert_eq!(r.kvs.len(), 1);
    assert_eq!(r.kvs[0].value, b"v1000");
    assert_eq!(r.kvs[0].version, 1000);
    assert_eq!(r.kvs[0].create_revision, 1);
    assert_eq!(at(0).expect("now").kvs.len(), 2);
    assert_eq!(at(1002), Err(MvccError::FutureRevision { current: 1001 }));
}

#[test]
fn leases_attach_keys_and_a_revoke_deletes_them_all_in_one_revision() {
    let put = |k: &str, lease: i64| TxnRequest {
        compare: vec![],
        success: vec![Op::Put(PutRequest {
            key: k.as_bytes().to_vec(),
            value: b"v".to_vec(),
            lease,
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
        })],
        failure: vec![],
    };
    let mut s = MvccStore::default();
    // A put with a lease that does not exist is refused whole.
    assert_eq!(
        s.apply_txn(1, &put("a", 7)).0,
        Err(MvccError::LeaseNotFound)
    );
    assert_eq!(s.revision(), 0);
    assert_eq!(s.grant_lease(7, 10), Ok(()));
    assert_eq!(s.grant_lease(7, 10), Err(MvccError::LeaseExists));
    s.grant_lease(8, 10).unwrap();
    s.apply_txn(2, &put("a", 7)).0.unwrap();
    s.apply_txn(3, &put("b", 7)).0.unwrap();
    s.apply_txn(4, &put("c", 7)).0.unwrap();
    // Moved to another lease, and put without one: no longer the first lease's.
    s.apply_txn(5, &put("b", 8)).0.unwrap();
    s.apply_txn(6, &put("c", 0)).0.unwrap();
    let keys = |s: &MvccStore, id| -> Vec<Vec<u8>> {
        s.leases()
            .get(id)
            .map(|l| l.keys.iter().map(|k| k.to_vec()).collect())
            .unwrap_or_default()
    };
    assert_eq!(keys(&s, 7), [b"a".to_vec()]);
    assert_eq!(keys(&s, 8), [b"b".to_vec()]);
    // A snapshot carries the TTLs; the keys are found again from the versions.
    let mut restored = s.clone();
    restored.restore_leases(s.leases().ttls().collect::<Vec<_>>());
    assert_eq!(restored.leases(), s.leases());
    // Revoke: its keys go, in one revision, as deletes a watcher sees.
    s.apply_txn(7, &put("d", 8)).0.unwrap();
    let (r, events) = s.revoke_lease(9, 8);
    assert_eq!(r, Ok(()));
    let deleted: Vec<(&[u8], u64)> = events
        .iter()
        .map(|e| match e {
            Event::Delete { kv, .. } => (kv.key.as_slice(), kv.mod_revision),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(deleted, [(&b"b"[..], 9), (&b"d"[..], 9)]);
    assert_eq!(s.revision(), 9);
    assert!(s.get(b"b").is_none() && s.get(b"a").is_some());
    assert!(!s.leases().contains(8));
    assert_eq!(s.revoke_lease(10, 8).0, Err(MvccError::LeaseNotFound));
    // A deleted key leaves its lease.
    let del = TxnRequest {
        compare: vec![],
        success: vec![Op::Delete(DeleteRequest {
            keys: KeyRange::One(b"a".to_vec()),
            prev_kv: false,
        })],
        failure: vec![],
    };
    s.apply_txn(11, &del).0.unwrap();
    assert!(keys(&s, 7).is_empty());
}
