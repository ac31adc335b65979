//! What catching a watcher up from history costs on a large store, walking the keys of its
//! range (the way history was read before the change index) and walking the change index.
//!
//! Loads KEYS keys (100-byte values), then CHANGES more puts spread over them, then reads the
//! window of those changes from history in 1 MiB pieces, as a lagging watcher's feed does: for
//! a watcher on every key and for one on a prefix of 100 keys. Prints the apply rate and, for
//! each walk, the time the whole catch-up took.
//!
//!     cargo run --release -p concord-node --example history_cost -- [KEYS] [CHANGES]
//!
//! `scripts/history-cost.sh` runs it at 100k and 1M keys.

use std::time::Instant;

use concord_node::store::mvcc::{HistoryWalk, KeyRange, MvccStore, Op, PutRequest, TxnRequest};

fn put(key: Vec<u8>, value: Vec<u8>) -> TxnRequest {
    TxnRequest {
        compare: vec![],
        success: vec![Op::Put(PutRequest {
            key,
            value,
            lease: 0,
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
        })],
        failure: vec![],
    }
}

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .map(|a| a.parse().expect("a number"))
        .unwrap_or(default)
}

fn main() {
    let keys = arg(1, 1_000_000);
    let changes = arg(2, 200_000);
    let key = |i: u64| format!("key-{i:08}").into_bytes();
    let mut store = MvccStore::default();
    let mut index = 0;
    let started = Instant::now();
    for i in 0..keys {
        index += 1;
        store
            .apply_txn(index, &put(key(i), vec![b'v'; 100]))
            .0
            .expect("applied");
    }
    let load = started.elapsed();
    let from = index + 1;
    // A fixed odd multiplier modulo the key count: every change lands on some key, spread out.
    let started = Instant::now();
    for n in 0..changes {
        index += 1;
        let k = n.wrapping_mul(2_654_435_761) % keys;
        store
            .apply_txn(index, &put(key(k), vec![b'w'; 100]))
            .0
            .expect("applied");
    }
    let update = started.elapsed();
    println!(
        "{keys} keys: load {:.0} puts/s; {changes} updates {:.0} puts/s; store {} MB counted",
        keys as f64 / load.as_secs_f64(),
        changes as f64 / update.as_secs_f64(),
        store.total_bytes() / 1_000_000
    );
    let ranges = [
        ("every key", KeyRange::From(Vec::new())),
        ("100-key prefix", KeyRange::prefix(b"key-000001")),
    ];
    for (name, range) in ranges {
        for walk in [
            HistoryWalk::Keys,
            HistoryWalk::Changes,
            HistoryWalk::Cheaper,
        ] {
            let started = Instant::now();
            let (mut next, mut events, mut pieces) = (from, 0usize, 0usize);
            while next <= store.revision() {
                let (got, last) = store
                    .history_by(walk, &range, next, u64::MAX, 1 << 20)
                    .expect("history");
                events += got.len();
                pieces += 1;
                next = last + 1;
            }
            println!(
                "  catch-up of a watcher on {name}, {walk:?} walk: {:.3} s ({events} events, {pieces} pieces)",
                started.elapsed().as_secs_f64()
            );
        }
    }
}
