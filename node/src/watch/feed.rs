//! One stream's watches turned into the updates its client is sent, in revision order per
//! watch, with nothing missed and nothing repeated: the transport-independent half of etcd's
//! Watch stream, the JSON gateway's watch and the seed API's Server-Sent Events.
//!
//! Each watch remembers the first revision it has not been sent (`next`). A new watch, and one
//! that fell behind, is first made live in the hub (so what is published from then on is
//! queued for it) and then read from the store's history up to the store's revision; queued
//! batches at or below what history covered are skipped. History is read from an O(1) copy of
//! the store, never under its lock, in pieces of bounded bytes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::hub::{Batch, Delivery, Stream, TooManyWatchers, WatchHub, WatchId};
use crate::storage::state_machine::SharedState;
use crate::store::mvcc::{Event, KeyRange, MvccError};

/// What a client asked to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSpec {
    pub range: KeyRange,
    /// The first revision to send; 0: the next one.
    pub start_revision: u64,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
    pub progress_notify: bool,
}

/// What a client is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Changes, in order; every change to the watch's keys up to `revision` has been sent.
    Events {
        watch: WatchId,
        events: Vec<Event>,
        revision: u64,
    },
    /// Nothing changed for the watch up to `revision` (a progress notification).
    Progress { watch: WatchId, revision: u64 },
    /// The watch ended: its next revision was compacted away (`compact_revision` set, as etcd).
    Canceled {
        watch: WatchId,
        compact_revision: u64,
        reason: String,
    },
}

struct Watch {
    spec: WatchSpec,
    /// The first revision not sent yet.
    next: u64,
    catching_up: bool,
}

impl Watch {
    /// The events of `events` this watch is sent: its keys, its filters, prev only if asked.
    fn select(&self, events: &[Event]) -> Vec<Event> {
        events
            .iter()
            .filter(|e| e.revision() >= self.next && self.spec.range.contains(&e.kv().key))
            .filter(|e| match e {
                Event::Put { .. } => !self.spec.no_put,
                Event::Delete { .. } => !self.spec.no_delete,
            })
            .map(|e| {
                if self.spec.prev_kv {
                    e.clone()
                } else {
                    match e {
                        Event::Put { kv, .. } => Event::Put {
                            kv: kv.clone(),
                            prev: None,
                        },
                        Event::Delete { kv, .. } => Event::Delete {
                            kv: kv.clone(),
                            prev: None,
                        },
                    }
                }
            })
            .collect()
    }
}

pub struct Feed {
    stream: Stream,
    hub: Arc<WatchHub>,
    state: SharedState,
    watches: HashMap<WatchId, Watch>,
    catching_up: VecDeque<WatchId>,
    ready: VecDeque<Update>,
    /// Bytes of events in one update at most (more revisions go in the next).
    max_update_bytes: usize,
    progress_every: Duration,
    next_progress: tokio::time::Instant,
    progress_requested: bool,
}

/// The watch id of a progress update for the whole stream (etcd's `InvalidWatchID`).
pub const STREAM_PROGRESS: WatchId = -1;

impl Feed {
    pub fn new(
        hub: &Arc<WatchHub>,
        state: SharedState,
        max_update_bytes: usize,
        progress_every: Duration,
    ) -> Feed {
        Feed {
            stream: hub.stream(),
            hub: hub.clone(),
            state,
            watches: HashMap::new(),
            catching_up: VecDeque::new(),
            ready: VecDeque::new(),
            max_update_bytes,
            progress_every,
            next_progress: tokio::time::Instant::now() + progress_every,
            progress_requested: false,
        }
    }

    pub fn contains(&self, id: WatchId) -> bool {
        self.watches.contains_key(&id)
    }

    pub fn len(&self) -> usize {
        self.watches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.watches.is_empty()
    }

    /// Starts watch `id`. Returns the revision it starts from. Events before it come from
    /// history, so a start at any revision not compacted away misses nothing.
    pub fn create(&mut self, id: WatchId, spec: WatchSpec) -> Result<u64, TooManyWatchers> {
        self.stream.add(id, spec.range.clone())?;
        let next = match spec.start_revision {
            0 => self.state.read().kv.revision() + 1,
            n => n,
        };
        self.watches.insert(
            id,
            Watch {
                spec,
                next,
                catching_up: true,
            },
        );
        self.catching_up.retain(|w| *w != id);
        self.catching_up.push_back(id);
        Ok(next)
    }

    /// Ends watch `id`; false if there is none.
    pub fn cancel(&mut self, id: WatchId) -> bool {
        self.stream.remove(id);
        self.catching_up.retain(|w| *w != id);
        self.ready.retain(|u| match u {
            Update::Events { watch, .. }
            | Update::Progress { watch, .. }
            | Update::Canceled { watch, .. } => *watch != id,
        });
        self.watches.remove(&id).is_some()
    }

    /// Asks for one [`Update::Progress`] for the whole stream (watch [`STREAM_PROGRESS`]),
    /// sent once every watch is caught up, as etcd answers a `WatchProgressRequest`.
    pub fn request_progress(&mut self) {
        self.progress_requested = true;
    }

    /// The revision every watch of this stream has been sent all changes up to, if they are
    /// all caught up.
    fn progress(&self) -> Option<u64> {
        let published = self.hub.published();
        let idle = self.catching_up.is_empty() && self.ready.is_empty() && self.stream.is_idle();
        idle.then_some(published)
    }

    /// The next update, waiting for one.
    pub async fn next(&mut self) -> Update {
        loop {
            if let Some(u) = self.ready.pop_front() {
                return u;
            }
            if let Some(&id) = self.catching_up.front() {
                self.catch_up(id).await;
                continue;
            }
            if self.progress_requested {
                if let Some(revision) = self.progress() {
                    self.progress_requested = false;
                    return Update::Progress {
                        watch: STREAM_PROGRESS,
                        revision,
                    };
                }
            }
            let wants_progress = self.watches.values().any(|w| w.spec.progress_notify);
            tokio::select! {
                d = self.stream.recv() => self.deliver(d),
                _ = tokio::time::sleep_until(self.next_progress), if wants_progress => {
                    self.next_progress = tokio::time::Instant::now() + self.progress_every;
                    self.notify_progress();
                }
            }
        }
    }

    fn deliver(&mut self, d: Delivery) {
        for (id, batch) in d.batches {
            self.live(id, &batch);
        }
        for id in d.lagging {
            if let Some(w) = self.watches.get_mut(&id) {
                if !w.catching_up {
                    w.catching_up = true;
                    self.catching_up.push_back(id);
                }
            }
        }
    }

    fn live(&mut self, id: WatchId, batch: &Batch) {
        let Some(w) = self.watches.get_mut(&id) else {
            return;
        };
        if batch.revision < w.next {
            return;
        }
        let events = w.select(&batch.events);
        w.next = batch.revision + 1;
        self.push_events(id, events, batch.revision);
    }

    /// Queues events for `id`, joined to the update before if that is the same watch's and
    /// still small.
    fn push_events(&mut self, id: WatchId, mut new: Vec<Event>, revision: u64) {
        if new.is_empty() {
            return;
        }
        if let Some(Update::Events {
            watch,
            events,
            revision: upto,
        }) = self.ready.back_mut()
        {
            let bytes: usize = events.iter().map(Event::bytes).sum();
            if *watch == id && bytes < self.max_update_bytes {
                events.append(&mut new);
                *upto = revision;
                return;
            }
        }
        self.ready.push_back(Update::Events {
            watch: id,
            events: new,
            revision,
        });
    }

    /// One piece of history for a watch that is behind.
    async fn catch_up(&mut self, id: WatchId) {
        let Some(w) = self.watches.get(&id) else {
            self.catching_up.retain(|x| *x != id);
            return;
        };
        // Live first, then read: a batch published in between is both queued and read, and
        // the copy queued is skipped (its revision is below `next` by then).
        self.stream.relive(id);
        let store = self.state.read().kv.clone();
        let (range, from, max) = (w.spec.range.clone(), w.next, self.max_update_bytes);
        // Reading history scans the watched range's keys: on a large store that takes a while,
        // so not on the runtime's threads (they carry heartbeats and clients). The copy is
        // dropped there too.
        let read = tokio::task::spawn_blocking(move || {
            let current = store.revision();
            (store.history(&range, from, u64::MAX, max), current)
        })
        .await;
        let (result, current) = match read {
            Ok(r) => r,
            Err(e) => {
                self.cancel(id);
                self.ready.push_back(Update::Canceled {
                    watch: id,
                    compact_revision: 0,
                    reason: format!("reading the watch's history failed: {e}"),
                });
                return;
            }
        };
        let Some(w) = self.watches.get_mut(&id) else {
            return;
        };
        match result {
            Err(MvccError::Compacted { compacted }) => {
                let reason = format!(
                    "the watch's start revision {} has been compacted (compacted revision {compacted}); \
                     read the keys again and watch from after that read",
                    w.next
                );
                self.cancel(id);
                self.ready.push_back(Update::Canceled {
                    watch: id,
                    compact_revision: compacted,
                    reason,
                });
            }
            Err(e) => {
                let reason = e.to_string();
                self.cancel(id);
                self.ready.push_back(Update::Canceled {
                    watch: id,
                    compact_revision: 0,
                    reason,
                });
            }
            Ok((events, last)) => {
                let events = w.select(&events);
                w.next = w.next.max(last + 1);
                if last >= current {
                    w.catching_up = false;
                    self.catching_up.retain(|x| *x != id);
                }
                self.push_events(id, events, last);
            }
        }
    }

    fn notify_progress(&mut self) {
        let Some(published) = self.progress() else {
            return;
        };
        let mut ids: Vec<(WatchId, u64)> = self
            .watches
            .iter()
            .filter(|(_, w)| w.spec.progress_notify)
            .map(|(id, w)| (*id, published.max(w.next.saturating_sub(1))))
            .collect();
        ids.sort_unstable();
        for (watch, revision) in ids {
            self.ready.push_back(Update::Progress { watch, revision });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::state_machine::StateData;
    use crate::store::{apply, Command};
    use crate::watch::hub::HubLimits;

    struct World {
        state: SharedState,
        hub: Arc<WatchHub>,
        index: u64,
    }

    impl World {
        fn new(queue_bytes: usize) -> World {
            World {
                state: Arc::new(parking_lot::RwLock::new(StateData::default())),
                hub: Arc::new(WatchHub::new(HubLimits {
                    stream_queue_bytes: queue_bytes,
                    max_watchers: 100,
                })),
                index: 0,
            }
        }

        /// Applies `cmd` as apply does: store first, then the watchers.
        fn run(&mut self, cmd: Command) -> u64 {
            self.index += 1;
            let events = {
                let mut state = self.state.write();
                let state = &mut *state;
                apply(&mut state.kv, &mut state.auth, self.index, &cmd).1
            };
            if !events.is_empty() {
                self.hub.publish(Batch::new(self.index, events));
            }
            self.index
        }

        fn set(&mut self, key: &str, value: &str) -> u64 {
            self.run(Command::Set {
                key: key.into(),
                value: value.into(),
            })
        }

        fn feed(&self) -> Feed {
            Feed::new(
                &self.hub,
                self.state.clone(),
                1024,
                Duration::from_secs(3600),
            )
        }
    }

    fn spec(prefix: &str, start: u64) -> WatchSpec {
        WatchSpec {
            range: KeyRange::prefix(prefix.as_bytes()),
            start_revision: start,
            prev_kv: false,
            no_put: false,
            no_delete: false,
            progress_notify: false,
        }
    }

    /// Every update ready now, without waiting.
    async fn drain(feed: &mut Feed) -> Vec<Update> {
        let mut out = Vec::new();
        while let Ok(u) = tokio::time::timeout(Duration::from_millis(20), feed.next()).await {
            out.push(u);
        }
        out
    }

    /// (key, revision) of every event of watch `id`, in order.
    fn seen(updates: &[Update], id: WatchId) -> Vec<(String, u64)> {
        updates
            .iter()
            .filter_map(|u| match u {
                Update::Events { watch, events, .. } if *watch == id => Some(events),
                _ => None,
            })
            .flatten()
            .map(|e| {
                (
                    String::from_utf8_lossy(&e.kv().key).into_owned(),
                    e.revision(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn a_watch_from_the_past_gets_history_then_live_changes_once_each() {
        let mut w = World::new(1 << 20);
        w.set("a/1", "x");
        w.set("b/1", "x");
        w.set("a/2", "x");
        let mut feed = w.feed();
        assert_eq!(feed.create(7, spec("a/", 1)), Ok(1));
        // A change applied between the watch's creation and its history read is in both;
        // it is sent once.
        w.set("a/3", "x");
        let mut got = drain(&mut feed).await;
        w.set("a/4", "x");
        w.set("b/2", "x");
        got.extend(drain(&mut feed).await);
        assert_eq!(
            seen(&got, 7),
            [
                ("a/1".into(), 1),
                ("a/2".into(), 3),
                ("a/3".into(), 4),
                ("a/4".into(), 5)
            ]
        );
        // From now on (0): only what comes next.
        let mut now = w.feed();
        now.create(1, spec("", 0)).expect("create");
        w.set("c", "x");
        assert_eq!(seen(&drain(&mut now).await, 1), [("c".into(), 7)]);
    }

    #[tokio::test]
    async fn a_watch_that_cannot_keep_up_is_caught_up_from_history_without_gaps() {
        // A queue of 4 KiB holds a few dozen changes; 2,000 arrive before the feed is read.
        let mut w = World::new(4096);
        let mut feed = w.feed();
        feed.create(1, spec("k/", 0)).expect("create");
        let mut expected = Vec::new();
        let mut got = Vec::new();
        for round in 0..4 {
            for i in 0..500 {
                let key = format!("k/{round}/{i}");
                let rev = w.set(&key, "v");
                expected.push((key, rev));
            }
            got.extend(drain(&mut feed).await);
        }
        assert_eq!(seen(&got, 1), expected);
        assert!(
            got.iter().all(|u| matches!(u, Update::Events { events, .. } if events.iter().map(Event::bytes).sum::<usize>() <= 1024 + 200)),
            "updates stay near the byte bound"
        );
    }

    #[tokio::test]
    async fn a_start_before_the_compaction_point_is_canceled_with_it() {
        let mut w = World::new(1 << 20);
        for i in 0..5 {
            w.set("k", &i.to_string());
        }
        w.run(Command::Compact { revision: 4 });
        let mut feed = w.feed();
        feed.create(3, spec("k", 2)).expect("create");
        let got = drain(&mut feed).await;
        assert!(
            matches!(
                &got[..],
                [Update::Canceled {
                    watch: 3,
                    compact_revision: 4,
                    ..
                }]
            ),
            "{got:?}"
        );
        assert!(!feed.contains(3));
        // At the compaction point itself: allowed.
        feed.create(4, spec("k", 4)).expect("create");
        assert_eq!(
            seen(&drain(&mut feed).await, 4),
            [("k".into(), 4), ("k".into(), 5)]
        );
    }

    #[tokio::test]
    async fn filters_and_prev_kv_are_applied_and_a_canceled_watch_gets_nothing_more() {
        let mut w = World::new(1 << 20);
        w.set("k", "old");
        let mut feed = w.feed();
        let mut s = spec("k", 0);
        s.prev_kv = true;
        s.no_delete = true;
        feed.create(1, s).expect("create");
        feed.create(2, spec("k", 0)).expect("create");
        w.set("k", "new");
        w.run(Command::Delete { key: "k".into() });
        let got = drain(&mut feed).await;
        let one: Vec<&Event> = got
            .iter()
            .filter_map(|u| match u {
                Update::Events {
                    watch: 1, events, ..
                } => Some(events),
                _ => None,
            })
            .flatten()
            .collect();
        assert!(
            matches!(one[..], [Event::Put { kv, prev: Some(prev) }] if kv.value == b"new" && prev.value == b"old"),
            "{one:?}"
        );
        let two = seen(&got, 2);
        assert_eq!(two, [("k".into(), 2), ("k".into(), 3)]);
        assert!(feed.cancel(2));
        w.set("k", "again");
        assert_eq!(seen(&drain(&mut feed).await, 2), []);
    }

    #[tokio::test]
    async fn a_progress_request_is_answered_once_caught_up_with_the_published_revision() {
        let mut w = World::new(1 << 20);
        let mut feed = w.feed();
        feed.create(1, spec("a/", 0)).expect("create");
        w.set("b", "x");
        w.set("b", "y");
        feed.request_progress();
        let got = drain(&mut feed).await;
        assert_eq!(
            got,
            [Update::Progress {
                watch: super::STREAM_PROGRESS,
                revision: 2
            }]
        );
    }

    #[tokio::test]
    async fn a_replaced_store_makes_every_watch_catch_up_from_the_new_one() {
        let mut w = World::new(1 << 20);
        let mut feed = w.feed();
        feed.create(1, spec("", 0)).expect("create");
        w.set("a", "1");
        assert_eq!(seen(&drain(&mut feed).await, 1), [("a".into(), 1)]);
        // A snapshot from the leader: the store jumps ahead with changes never published here.
        let mut leader = crate::store::mvcc::MvccStore::default();
        apply(
            &mut leader,
            &mut crate::auth::AuthStore::default(),
            1,
            &Command::Set {
                key: "a".into(),
                value: "1".into(),
            },
        );
        apply(
            &mut leader,
            &mut crate::auth::AuthStore::default(),
            2,
            &Command::Set {
                key: "b".into(),
                value: "2".into(),
            },
        );
        apply(
            &mut leader,
            &mut crate::auth::AuthStore::default(),
            3,
            &Command::Set {
                key: "c".into(),
                value: "3".into(),
            },
        );
        w.state.write().kv = leader;
        w.index = 3;
        w.hub.resync_all();
        w.set("d", "4");
        assert_eq!(
            seen(&drain(&mut feed).await, 1),
            [("b".into(), 2), ("c".into(), 3), ("d".into(), 4)]
        );
    }
}
