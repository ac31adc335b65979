//! Who watches what, and the hand-off from apply to the watchers.
//!
//! Apply publishes each revision's events once ([`WatchHub::publish`]); the hub finds the
//! watchers whose keys they touch through an index (exact keys and prefixes by hash lookup,
//! other ranges by a scan of the few there are) and puts a shared reference to the batch in
//! each one's stream queue. A queue is bounded by bytes; a watcher whose queue is full is not
//! waited for: it is marked *lagging* and its stream catches it up from the store's history
//! (`feed`). So apply never blocks on a watcher and memory never grows with a slow one.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::store::mvcc::{prefix_end, Event, KeyRange};
use crate::telemetry::metrics::metrics;

/// A watch, as its client named it (etcd's `watch_id`), within one stream.
pub type WatchId = i64;

/// One revision's changes, in the order apply made them.
#[derive(Debug)]
pub struct Batch {
    pub revision: u64,
    pub events: Vec<Event>,
    /// What holding it costs (keys and values of its events).
    pub bytes: usize,
}

impl Batch {
    pub fn new(revision: u64, events: Vec<Event>) -> Batch {
        let bytes = events.iter().map(Event::bytes).sum::<usize>() + 64;
        Batch {
            revision,
            events,
            bytes,
        }
    }
}

/// What a stream receives: batches for its watches (in revision order per watch), and the
/// watches that fell behind and must be caught up from history.
#[derive(Debug, Default)]
pub struct Delivery {
    pub batches: Vec<(WatchId, Arc<Batch>)>,
    pub lagging: Vec<WatchId>,
}

#[derive(Debug, Default)]
struct Queue {
    batches: VecDeque<(WatchId, Arc<Batch>)>,
    bytes: usize,
    lagging: Vec<WatchId>,
}

/// One stream's queue, shared by the hub (which fills it) and the stream (which drains it).
#[derive(Debug)]
struct Sink {
    queue: Mutex<Queue>,
    notify: Notify,
    max_bytes: usize,
}

impl Sink {
    /// Queues a batch for `watch`, or says it does not fit.
    fn offer(&self, watch: WatchId, batch: &Arc<Batch>) -> bool {
        let mut q = self.queue.lock();
        // An empty queue takes any batch, so one larger than the bound still goes through.
        if !q.batches.is_empty() && q.bytes + batch.bytes > self.max_bytes {
            return false;
        }
        q.bytes += batch.bytes;
        q.batches.push_back((watch, batch.clone()));
        true
    }

    fn lag(&self, watch: WatchId) {
        self.queue.lock().lagging.push(watch);
    }
}

/// How a watcher's range is found from a changed key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Interest {
    Key(Vec<u8>),
    Prefix(Vec<u8>),
    /// Any other range: checked against each changed key.
    Other,
}

impl Interest {
    fn of(range: &KeyRange) -> Interest {
        match range {
            KeyRange::One(k) => Interest::Key(k.clone()),
            KeyRange::Range { from, to } if prefix_end(from).as_deref() == Some(to.as_slice()) => {
                Interest::Prefix(from.clone())
            }
            KeyRange::From(k) if k.is_empty() => Interest::Prefix(Vec::new()),
            _ => Interest::Other,
        }
    }
}

type WatcherKey = (u64, WatchId);

struct Watcher {
    interest: Interest,
    range: KeyRange,
    /// Queued batches reach it; false once it lags, until its stream has caught it up.
    live: bool,
    sink: Arc<Sink>,
}

#[derive(Default)]
struct Registry {
    watchers: HashMap<WatcherKey, Watcher>,
    by_key: HashMap<Vec<u8>, Vec<WatcherKey>>,
    by_prefix: HashMap<Vec<u8>, Vec<WatcherKey>>,
    /// How many prefixes of each length are watched: a key is looked up only at those.
    prefix_lengths: BTreeMap<usize, usize>,
    others: Vec<WatcherKey>,
}

impl Registry {
    fn index(&mut self, key: WatcherKey, interest: &Interest) {
        match interest {
            Interest::Key(k) => self.by_key.entry(k.clone()).or_default().push(key),
            Interest::Prefix(p) => {
                self.by_prefix.entry(p.clone()).or_default().push(key);
                *self.prefix_lengths.entry(p.len()).or_default() += 1;
            }
            Interest::Other => self.others.push(key),
        }
    }

    fn unindex(&mut self, key: WatcherKey, interest: &Interest) {
        fn drop_from(map: &mut HashMap<Vec<u8>, Vec<WatcherKey>>, k: &[u8], key: WatcherKey) {
            if let Some(list) = map.get_mut(k) {
                list.retain(|w| *w != key);
                if list.is_empty() {
                    map.remove(k);
                }
            }
        }
        match interest {
            Interest::Key(k) => drop_from(&mut self.by_key, k, key),
            Interest::Prefix(p) => {
                drop_from(&mut self.by_prefix, p, key);
                if let Some(n) = self.prefix_lengths.get_mut(&p.len()) {
                    *n -= 1;
                    if *n == 0 {
                        self.prefix_lengths.remove(&p.len());
                    }
                }
            }
            Interest::Other => self.others.retain(|w| *w != key),
        }
    }

    /// The watchers of `key`, each once per call site (the caller dedups across events).
    fn matching(&self, key: &[u8], out: &mut Vec<WatcherKey>) {
        if let Some(list) = self.by_key.get(key) {
            out.extend_from_slice(list);
        }
        for &len in self.prefix_lengths.keys() {
            if len > key.len() {
                break;
            }
            if let Some(list) = self.by_prefix.get(&key[..len]) {
                out.extend_from_slice(list);
            }
        }
        for w in &self.others {
            if self.watchers.get(w).is_some_and(|x| x.range.contains(key)) {
                out.push(*w);
            }
        }
    }
}

/// Limits, from the `watch:` settings.
#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    /// Bytes of batches one stream may have queued before its watchers lag.
    pub stream_queue_bytes: usize,
    /// Watchers on this member at most; more are refused.
    pub max_watchers: usize,
}

impl Default for HubLimits {
    fn default() -> Self {
        let d = crate::config::WatchSettings::default();
        HubLimits {
            stream_queue_bytes: d.stream_queue_bytes,
            max_watchers: d.max_watchers,
        }
    }
}

impl Default for WatchHub {
    fn default() -> Self {
        WatchHub::new(HubLimits::default())
    }
}

/// Refused: too many watchers on this member.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("this member already serves {0} watchers (watch.maxWatchers); watch through another member or raise the limit")]
pub struct TooManyWatchers(pub usize);

pub struct WatchHub {
    registry: Mutex<Registry>,
    limits: HubLimits,
    next_stream: AtomicU64,
    /// The newest revision whose batch every matching queue has been offered.
    published: AtomicU64,
}

impl WatchHub {
    pub fn new(limits: HubLimits) -> WatchHub {
        WatchHub {
            registry: Mutex::default(),
            limits,
            next_stream: AtomicU64::new(1),
            published: AtomicU64::new(0),
        }
    }

    /// A new stream, to which watches are added.
    pub fn stream(self: &Arc<Self>) -> Stream {
        Stream {
            hub: self.clone(),
            id: self.next_stream.fetch_add(1, Ordering::Relaxed),
            sink: Arc::new(Sink {
                queue: Mutex::default(),
                notify: Notify::new(),
                max_bytes: self.limits.stream_queue_bytes,
            }),
            watches: Mutex::default(),
        }
    }

    pub fn watchers(&self) -> usize {
        self.registry.lock().watchers.len()
    }

    /// The newest revision handed to the watchers: a stream whose queue is empty after
    /// reading this has every event up to it.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// Hands one revision's changes to the watchers of the keys they touch. Called by apply,
    /// in revision order, after the store shows them. Never waits for a watcher.
    pub fn publish(&self, batch: Batch) {
        let revision = batch.revision;
        let mut registry = self.registry.lock();
        if !registry.watchers.is_empty() && !batch.events.is_empty() {
            let mut hit = Vec::new();
            for e in &batch.events {
                registry.matching(&e.kv().key, &mut hit);
            }
            hit.sort_unstable();
            hit.dedup();
            let batch = Arc::new(batch);
            for key in hit {
                let Some(w) = registry.watchers.get_mut(&key) else {
                    continue;
                };
                if !w.live {
                    continue;
                }
                if !w.sink.offer(key.1, &batch) {
                    w.live = false;
                    w.sink.lag(key.1);
                    metrics().watchers_lagging.inc();
                }
                // One stored permit however many of its watches the batch reaches.
                w.sink.notify.notify_one();
            }
        }
        drop(registry);
        self.published.fetch_max(revision, Ordering::AcqRel);
    }

    /// Every watcher lags: the store was replaced (a snapshot installed), so what was queued
    /// may not follow on from it; each stream catches its watches up from the new store.
    pub fn resync_all(&self) {
        let mut registry = self.registry.lock();
        for (key, w) in registry.watchers.iter_mut() {
            if w.live {
                w.live = false;
                w.sink.lag(key.1);
                w.sink.notify.notify_one();
            }
        }
    }
}

/// A stream of watches (etcd's Watch stream, one SSE response). Dropping it removes them.
pub struct Stream {
    hub: Arc<WatchHub>,
    id: u64,
    sink: Arc<Sink>,
    /// Its watches, so dropping it does not search every watcher of the member.
    watches: Mutex<BTreeSet<WatchId>>,
}

impl Stream {
    /// Adds (or replaces) watch `id` on `range`, live from now: batches published from here on
    /// are queued for it. Events before must be read from history by the caller.
    pub fn add(&self, id: WatchId, range: KeyRange) -> Result<(), TooManyWatchers> {
        let mut registry = self.hub.registry.lock();
        let key = (self.id, id);
        if let Some(old) = registry.watchers.remove(&key) {
            registry.unindex(key, &old.interest);
        } else if registry.watchers.len() >= self.hub.limits.max_watchers {
            return Err(TooManyWatchers(registry.watchers.len()));
        }
        let interest = Interest::of(&range);
        registry.index(key, &interest);
        self.watches.lock().insert(id);
        metrics().watchers.inc();
        registry.watchers.insert(
            key,
            Watcher {
                interest,
                range,
                live: true,
                sink: self.sink.clone(),
            },
        );
        Ok(())
    }

    /// Makes a lagging watch live again; the caller then reads what it missed from history.
    pub fn relive(&self, id: WatchId) {
        if let Some(w) = self.hub.registry.lock().watchers.get_mut(&(self.id, id)) {
            w.live = true;
        }
    }

    pub fn remove(&self, id: WatchId) {
        let mut registry = self.hub.registry.lock();
        let key = (self.id, id);
        if let Some(old) = registry.watchers.remove(&key) {
            registry.unindex(key, &old.interest);
            metrics().watchers.dec();
        }
        drop(registry);
        self.watches.lock().remove(&id);
        let mut q = self.sink.queue.lock();
        let before = q.batches.len();
        let mut freed = 0;
        q.batches.retain(|(w, b)| {
            let keep = *w != id;
            if !keep {
                freed += b.bytes;
            }
            keep
        });
        if q.batches.len() != before {
            q.bytes -= freed;
        }
        q.lagging.retain(|w| *w != id);
    }

    /// What has been queued since the last call; waits while there is nothing.
    pub async fn recv(&self) -> Delivery {
        loop {
            let notified = self.sink.notify.notified();
            if let Some(d) = self.try_recv() {
                return d;
            }
            notified.await;
        }
    }

    /// Whether nothing is queued for it.
    pub fn is_idle(&self) -> bool {
        let q = self.sink.queue.lock();
        q.batches.is_empty() && q.lagging.is_empty()
    }

    /// What has been queued, if anything.
    pub fn try_recv(&self) -> Option<Delivery> {
        let mut q = self.sink.queue.lock();
        if q.batches.is_empty() && q.lagging.is_empty() {
            return None;
        }
        q.bytes = 0;
        Some(Delivery {
            batches: q.batches.drain(..).collect(),
            lagging: std::mem::take(&mut q.lagging),
        })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut registry = self.hub.registry.lock();
        for id in std::mem::take(&mut *self.watches.lock()) {
            if let Some(old) = registry.watchers.remove(&(self.id, id)) {
                registry.unindex((self.id, id), &old.interest);
                metrics().watchers.dec();
            }
        }
    }
}
