//! What keeping the state machine in an embedded engine would cost, next to keeping it in
//! memory as ConcordKV does: the state machine's job alone (no Raft, no network), on one
//! machine, the same keys. Each engine applies N puts in batches of 64 (as Raft applies), then
//! a steady phase of more puts with the data in place; durability comes from the Raft log in
//! every case, so an engine commits without fsync per batch and durably at checkpoints (what
//! lets the log be purged), and the in-memory store writes a snapshot by ConcordKV's rule (log
//! since the last snapshot at least its size). Prints one JSON line per engine.
//!
//!     concord-engine-bench ENGINE DIR [KEYS]     # ENGINE: memory | redb | fjall

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const VALUE: usize = 100;
const BATCH: u64 = 64;
/// Entries between durable checkpoints of an engine (ConcordKV's default snapshotThreshold).
const CHECKPOINT: u64 = 10_000;
const STEADY: u64 = 100_000;

fn key(i: u64) -> Vec<u8> {
    format!("k-{i:08}").into_bytes()
}

fn proc_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("write_bytes:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn du(path: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            let p = e.path();
            total += if p.is_dir() {
                du(&p)
            } else {
                std::os::unix::fs::MetadataExt::blocks(&e.metadata().unwrap()) * 512
            };
        }
    }
    total
}

trait Engine {
    /// Applies one batch of puts; `index` is the Raft index of the last one.
    fn apply(&mut self, batch: &[(Vec<u8>, Vec<u8>)], index: u64);
    /// Waits for background work (a snapshot being written).
    fn settle(&mut self);
}

// --- in memory: a persistent map, snapshots by size --------------------------------------

type Map = imbl::OrdMap<Arc<[u8]>, Arc<[u8]>>;

struct Memory {
    map: Map,
    dir: std::path::PathBuf,
    log_since: u64,
    last_snapshot: u64,
    writer: Option<std::thread::JoinHandle<u64>>,
}

impl Memory {
    fn snapshot(map: &Map, path: &std::path::Path) -> u64 {
        let tmp = path.with_extension("tmp");
        let f = std::fs::File::create(&tmp).unwrap();
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let entries: Vec<(&[u8], &[u8])> = map.iter().map(|(k, v)| (&**k, &**v)).collect();
        bincode::serialize_into(&mut w, &entries).unwrap();
        w.flush().unwrap();
        let f = w.into_inner().unwrap();
        f.sync_all().unwrap();
        let len = f.metadata().unwrap().len();
        std::fs::rename(&tmp, path).unwrap();
        len
    }

    fn open(dir: &std::path::Path) -> Memory {
        let path = dir.join("snapshot");
        let mut map = Map::new();
        if let Ok(bytes) = std::fs::read(&path) {
            let entries: Vec<(Vec<u8>, Vec<u8>)> = bincode::deserialize(&bytes).unwrap();
            for (k, v) in entries {
                map.insert(k.into(), v.into());
            }
        }
        Memory {
            map,
            dir: dir.to_path_buf(),
            log_since: 0,
            last_snapshot: 0,
            writer: None,
        }
    }
}

impl Engine for Memory {
    fn apply(&mut self, batch: &[(Vec<u8>, Vec<u8>)], _index: u64) {
        for (k, v) in batch {
            self.log_since += (k.len() + v.len() + 40) as u64;
            self.map.insert(k.as_slice().into(), v.as_slice().into());
        }
        if let Some(done) = self.writer.as_ref().map(|w| w.is_finished()) {
            if done {
                self.last_snapshot = self.writer.take().unwrap().join().unwrap();
            } else {
                return;
            }
        }
        if self.log_since >= self.last_snapshot.max(1) {
            let copy = self.map.clone();
            let path = self.dir.join("snapshot");
            self.log_since = 0;
            self.writer = Some(std::thread::spawn(move || Memory::snapshot(&copy, &path)));
        }
    }

    fn settle(&mut self) {
        if let Some(w) = self.writer.take() {
            self.last_snapshot = w.join().unwrap();
        }
    }
}

// --- redb ----------------------------------------------------------------------------------

const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("kv");

struct Redb(redb::Database);

impl Engine for Redb {
    fn apply(&mut self, batch: &[(Vec<u8>, Vec<u8>)], index: u64) {
        let mut tx = self.0.begin_write().unwrap();
        let durable = index % CHECKPOINT < BATCH;
        tx.set_durability(if durable {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        });
        {
            let mut t = tx.open_table(TABLE).unwrap();
            for (k, v) in batch {
                t.insert(k.as_slice(), v.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }

    fn settle(&mut self) {}
}

// --- fjall -----------------------------------------------------------------------------------

struct Fjall {
    keyspace: fjall::Keyspace,
    kv: fjall::PartitionHandle,
}

impl Engine for Fjall {
    fn apply(&mut self, batch: &[(Vec<u8>, Vec<u8>)], index: u64) {
        let mut b = self.keyspace.batch();
        for (k, v) in batch {
            b.insert(&self.kv, k.as_slice(), v.as_slice());
        }
        b.commit().unwrap();
        if index % CHECKPOINT < BATCH {
            self.keyspace.persist(fjall::PersistMode::SyncData).unwrap();
        }
    }

    fn settle(&mut self) {}
}

fn open(engine: &str, dir: &std::path::Path) -> Box<dyn Engine> {
    match engine {
        "memory" => Box::new(Memory::open(dir)),
        "redb" => {
            let db = redb::Database::create(dir.join("db.redb")).unwrap();
            Box::new(Redb(db))
        }
        "fjall" => {
            let keyspace = fjall::Config::new(dir.join("fjall")).open().unwrap();
            let kv = keyspace
                .open_partition("kv", fjall::PartitionCreateOptions::default())
                .unwrap();
            Box::new(Fjall { keyspace, kv })
        }
        other => panic!("unknown engine {other}: memory, redb or fjall"),
    }
}

/// A value that does not compress (fjall compresses its blocks; real values mostly don't).
fn value(i: u64) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..VALUE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn run(e: &mut dyn Engine, from: u64, to: u64, lat: &mut Vec<Duration>) {
    let mut i = from;
    while i < to {
        let end = (i + BATCH).min(to);
        let batch: Vec<(Vec<u8>, Vec<u8>)> = (i..end).map(|j| (key(j), value(j))).collect();
        let t = Instant::now();
        e.apply(&batch, end);
        lat.push(t.elapsed());
        i = end;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let engine = args.get(1).expect("ENGINE").clone();
    let dir = std::path::PathBuf::from(args.get(2).expect("DIR"));
    let n: u64 = args
        .get(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    std::fs::create_dir_all(&dir).unwrap();
    let rss0 = proc_kb("VmRSS");
    let mut e = open(&engine, &dir);
    let t = Instant::now();
    run(e.as_mut(), 0, n, &mut Vec::new());
    e.settle();
    let load = n as f64 / t.elapsed().as_secs_f64();
    let mut lat = Vec::new();
    run(e.as_mut(), n, n + STEADY, &mut lat);
    e.settle();
    lat.sort();
    let stored = (n + STEADY) * (key(0).len() + VALUE) as u64;
    let written = written_bytes();
    let rss = proc_kb("VmRSS").saturating_sub(rss0) / 1024;
    drop(e);
    let disk = du(&dir);
    let t = Instant::now();
    let e = open(&engine, &dir);
    let reopen = t.elapsed();
    drop(e);
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    println!(
        "{{\"engine\": \"{engine}\", \"keys\": {n}, \"load_puts_per_s\": {load:.0}, \
         \"batch_p99_ms\": {:.3}, \"batch_max_ms\": {:.3}, \"written_per_stored\": {:.2}, \
         \"rss_mb\": {rss}, \"disk_mb\": {}, \"reopen_s\": {:.2}}}",
        pct(0.99),
        pct(1.0),
        written as f64 / stored as f64,
        disk >> 20,
        reopen.as_secs_f64()
    );
}
