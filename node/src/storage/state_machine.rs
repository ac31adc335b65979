//! openraft's `RaftStateMachine`: applies committed commands to the in-memory MVCC store and
//! persists it as snapshots. The store is shared with the API layer for reads.
//! A snapshot is written from an O(1) copy of the store, so it never holds writes up.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::snapshot_store::{SnapshotFile, SnapshotStore};
use crate::auth::AuthStore;
use crate::lease::LeaseClock;
use crate::raft::{LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::store::leases::LeaseId;
use crate::store::mvcc::MvccStore;
use crate::store::{Command, CommandResult, KvMap};
use crate::telemetry::metrics::metrics;
use crate::watch::{Batch, WatchHub};

/// Everything the state machine holds; what a snapshot captures.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct StateData {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub kv: MvccStore,
    /// Users, roles and whether auth is on.
    pub auth: AuthStore,
}

/// Read access for the API layer.
pub type SharedState = Arc<RwLock<StateData>>;

pub struct StateMachineStore {
    state: SharedState,
    snapshots: SnapshotStore,
    hooks: ApplyHooks,
}

/// Who else hears of what apply does: watchers get its changes, the lease clock its grants
/// and revokes.
#[derive(Clone, Default)]
pub struct ApplyHooks {
    pub watches: Arc<WatchHub>,
    pub lease_clock: Arc<parking_lot::Mutex<LeaseClock>>,
}

impl StateMachineStore {
    /// Opens the snapshot directory and restores the newest snapshot, if any.
    pub fn open(snapshots: SnapshotStore, hooks: ApplyHooks) -> io::Result<StateMachineStore> {
        let mut data = StateData::default();
        if let Some((meta, file)) = snapshots.load_latest()? {
            let started = Instant::now();
            data = restore(&meta, &file)?;
            metrics()
                .snapshot_load_seconds
                .observe(started.elapsed().as_secs_f64());
            tracing::info!(last_applied = ?data.last_applied, keys = data.kv.len(), "restored snapshot");
        }
        // The leases of the snapshot start their TTL now (as on a leader change): the clock
        // must know every lease the table holds.
        let ttls: Vec<(LeaseId, i64)> = data.kv.leases().ttls().collect();
        hooks.lease_clock.lock().restart(ttls, Instant::now());
        Ok(StateMachineStore {
            state: Arc::new(RwLock::new(data)),
            snapshots,
            hooks,
        })
    }

    pub fn shared(&self) -> SharedState {
        self.state.clone()
    }
}

/// A snapshot's data (format 4): the store, each lease's id and TTL (their keys are in the
/// store's versions), then users and roles.
#[derive(Serialize)]
struct SnapshotOut<'a> {
    kv: &'a MvccStore,
    leases: Vec<(LeaseId, i64)>,
    auth: &'a AuthStore,
}

#[derive(Deserialize)]
struct SnapshotIn {
    kv: MvccStore,
    leases: Vec<(LeaseId, i64)>,
    auth: AuthStore,
}

/// Format 3: from before auth.
#[derive(Deserialize)]
struct SnapshotInV3 {
    kv: MvccStore,
    leases: Vec<(LeaseId, i64)>,
}

/// Writes the data of a snapshot of `kv` and `auth` in the current format (also the state
/// inside a backup).
pub fn write_data(out: impl io::Write, kv: &MvccStore, auth: &AuthStore) -> io::Result<()> {
    let data = SnapshotOut {
        kv,
        leases: kv.leases().ttls().collect(),
        auth,
    };
    // bincode writes field by field; `out` checksums what it is given (a snapshot's CRC, a
    // backup's SHA-256), which costs per call: it gets large writes instead.
    let mut out = io::BufWriter::with_capacity(256 * 1024, out);
    crate::codec::to_writer(&mut out, &data)?;
    out.flush()
}

fn restore(meta: &SnapshotMeta, file: &SnapshotFile) -> io::Result<StateData> {
    let what = format_args!("the data of {}", file.describe());
    let (kv, auth) = read_data(file.data_reader(), file.format(), file.data_len(), what)?;
    Ok(StateData {
        last_applied: meta.last_log_id,
        membership: meta.last_membership.clone(),
        kv,
        auth,
    })
}

/// Reads a snapshot's data of format `format` (`len` bytes) from `reader`, upgrading older
/// formats.
pub fn read_data(
    reader: impl io::Read,
    format: u8,
    len: u64,
    what: impl std::fmt::Display,
) -> io::Result<(MvccStore, AuthStore)> {
    if format == 0 || format > crate::codec::SNAPSHOT_FORMAT {
        return Err(crate::codec::invalid_data(format!(
            "{what} is in state format {format}; this concord-node ({}) reads formats 1 to {}",
            env!("CARGO_PKG_VERSION"),
            crate::codec::SNAPSHOT_FORMAT
        )));
    }
    Ok(match format {
        1 => {
            let legacy: KvMap = crate::codec::from_reader(reader, len, &what)?;
            tracing::info!(data = %what, "upgrading a pre-MVCC snapshot");
            (legacy.upgrade(), AuthStore::default())
        }
        // From before leases: none existed.
        2 => (
            crate::codec::from_reader(reader, len, what)?,
            AuthStore::default(),
        ),
        // From before auth: no users, auth off.
        3 => {
            let SnapshotInV3 { mut kv, leases } = crate::codec::from_reader(reader, len, what)?;
            kv.restore_leases(leases);
            (kv, AuthStore::default())
        }
        _ => {
            let SnapshotIn {
                mut kv,
                leases,
                auth,
            } = crate::codec::from_reader(reader, len, what)?;
            kv.restore_leases(leases);
            (kv, auth)
        }
    })
}

/// Builds a snapshot from a point-in-time copy of the state.
pub struct SnapshotBuilder {
    state: SharedState,
    snapshots: SnapshotStore,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let started = Instant::now();
        // The state is cloned under the read lock, which is O(1) (the store is a persistent
        // map, see `MvccStore`), and serialized from the clone on a blocking thread: writes go
        // on meanwhile, each copying only the tree path it changes, and the async runtime,
        // which carries heartbeats and client requests, never waits for the serialization.
        let copy = self.state.read().clone();
        let snapshots = self.snapshots.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A thread of its own rather than the blocking pool, so it can run at a lower CPU
        // priority (idle; a priority cannot be raised back without privileges, and pool
        // threads are reused): on a busy machine serializing a large store otherwise takes
        // CPU from the threads that answer clients and replicate.
        std::thread::Builder::new()
            .name("snapshot-writer".into())
            .spawn(move || {
                lower_priority();
                let res = (|| {
                    let meta = SnapshotMeta {
                        last_log_id: copy.last_applied,
                        last_membership: copy.membership.clone(),
                    };
                    let mut writer = snapshots.create(&meta)?;
                    write_data(&mut writer, &copy.kv, &copy.auth)?;
                    drop(copy);
                    let file = snapshots.install(&meta, writer.finish()?)?;
                    Ok::<_, io::Error>((meta, file))
                })();
                let _ = tx.send(res);
            })?;
        let (meta, file) = rx
            .await
            .map_err(|_| io::Error::other("snapshot thread ended without an answer"))??;
        let m = metrics();
        m.snapshot_save_seconds
            .observe(started.elapsed().as_secs_f64());
        m.snapshot_size_bytes.set(file.file_len() as i64);
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = file.file_len(), "snapshot saved");
        Ok(Snapshot {
            meta,
            snapshot: file,
        })
    }
}

/// Lowers the calling thread's CPU priority to the least there is: Linux's SCHED_IDLE, which
/// runs it only on CPU time no other thread wants and lets any waking thread take its CPU at
/// once (a nice 10 thread still holds a core for a scheduler slice, which a write waiting on a
/// busy two-core machine felt as tens of milliseconds). A snapshot is never urgent: the log
/// goes on growing on disk, its memory bounded by eviction. Falls back to nice 10.
pub(crate) fn lower_priority() {
    lower_priority_to(true)
}

/// Lowers the calling thread's priority: to SCHED_IDLE when `idle` (snapshots: never urgent),
/// else to nice 10 (backups: a client waits for them, so they take a share of a busy CPU
/// rather than only its leftovers).
pub(crate) fn lower_priority_to(idle: bool) {
    #[cfg(target_os = "linux")]
    if idle {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_setscheduler on the calling thread (pid 0) only changes its scheduling.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0 {
            return;
        }
    }
    // SAFETY: setpriority on the calling thread (who = 0) only changes its scheduling.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "could not lower the snapshot thread's priority");
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let state = self.state.read();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let index = entry.log_id.index;
            let (result, events) = {
                let mut state = self.state.write();
                state.last_applied = Some(entry.log_id);
                match &entry.payload {
                    EntryPayload::Blank => (CommandResult::None, Vec::new()),
                    EntryPayload::Normal(cmd) => {
                        let StateData { kv, auth, .. } = &mut *state;
                        crate::store::apply(kv, auth, index, cmd)
                    }
                    EntryPayload::Membership(m) => {
                        state.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        (CommandResult::None, Vec::new())
                    }
                }
            };
            // After the store shows them (a watcher starting now reads them from history and
            // skips the queued copy), outside its lock.
            match (&entry.payload, &result) {
                (
                    EntryPayload::Normal(Command::LeaseGrant { id, ttl }),
                    CommandResult::LeaseGrant(Ok(())),
                ) => self
                    .hooks
                    .lease_clock
                    .lock()
                    .granted(*id, *ttl, Instant::now()),
                (
                    EntryPayload::Normal(Command::LeaseRevoke { id }),
                    CommandResult::LeaseRevoke { result: Ok(()), .. },
                ) => self.hooks.lease_clock.lock().removed(*id),
                _ => {}
            }
            if !events.is_empty() {
                self.hooks.watches.publish(Batch::new(index, events));
            }
            metrics().proposals_applied.inc();
            if let Some(responder) = responder {
                responder.send(result);
            }
        }
        let state = self.state.read();
        let m = metrics();
        m.keys.set(state.kv.len() as i64);
        m.key_bytes.set(state.kv.live_bytes() as i64);
        m.store_history_bytes.set(state.kv.history_bytes() as i64);
        m.store_revision.set(state.kv.revision() as i64);
        m.store_compacted_revision.set(state.kv.compacted() as i64);
        m.leases.set(state.kv.leases().len() as i64);
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            state: self.state.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        // Decoded before it is installed, so a snapshot that does not decode replaces nothing;
        // durable before it is applied: once installed, the log before it may be purged.
        let snapshots = self.snapshots.clone();
        let meta_owned = meta.clone();
        let data = tokio::task::spawn_blocking(move || {
            let data = restore(&meta_owned, &snapshot)?;
            snapshots.install(&meta_owned, snapshot)?;
            Ok::<_, io::Error>(data)
        })
        .await
        .map_err(|e| io::Error::other(format!("snapshot task: {e}")))??;
        tracing::info!(last_log_id = ?meta.last_log_id, keys = data.kv.len(), "installed snapshot");
        let old = std::mem::replace(&mut *self.state.write(), data);
        // What watchers were queued may not follow on from the new store: they catch up.
        self.hooks.watches.resync_all();
        let ttls: Vec<(LeaseId, i64)> = self.state.read().kv.leases().ttls().collect();
        self.hooks.lease_clock.lock().restart(ttls, Instant::now());
        // Freeing a large store takes a while: not under the lock, not on the runtime.
        tokio::task::spawn_blocking(move || drop(old));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let snapshots = self.snapshots.clone();
        let loaded = tokio::task::spawn_blocking(move || snapshots.load_latest())
            .await
            .map_err(|e| io::Error::other(format!("snapshot task: {e}")))??;
        Ok(loaded.map(|(meta, snapshot)| Snapshot { meta, snapshot }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{apply, Command};

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(openraft::testing::log_id::<TypeConfig>(1, 1, index)),
            last_membership: StoredMembership::default(),
        }
    }

    fn store_with_a_leased_key() -> MvccStore {
        let mut kv = MvccStore::default();
        let auth = &mut AuthStore::default();
        apply(&mut kv, auth, 1, &Command::LeaseGrant { id: 5, ttl: 30 });
        let txn = crate::store::mvcc::TxnRequest {
            compare: vec![],
            success: vec![crate::store::mvcc::Op::Put(
                crate::store::mvcc::PutRequest {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    lease: 5,
                    prev_kv: false,
                    ignore_value: false,
                    ignore_lease: false,
                },
            )],
            failure: vec![],
        };
        apply(&mut kv, auth, 2, &Command::Txn(txn));
        kv
    }

    #[test]
    fn a_snapshot_keeps_leases_and_users_and_older_formats_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = SnapshotStore::open(dir.path()).unwrap();
        let kv = store_with_a_leased_key();
        let mut auth = AuthStore::default();
        auth.apply(&crate::auth::AuthCommand::UserAdd {
            name: "app".into(),
            password_hash: Some("$argon2id$stand-in".into()),
        })
        .unwrap();
        let m = meta(2);
        let mut w = snapshots.create(&m).unwrap();
        write_data(&mut w, &kv, &auth).unwrap();
        snapshots.install(&m, w.finish().unwrap()).unwrap();
        let sm = StateMachineStore::open(snapshots, Default::default()).unwrap();
        let state = sm.shared();
        let loaded = &state.read();
        assert_eq!(loaded.kv.leases(), kv.leases());
        assert_eq!(loaded.kv.leases().get(5).map(|l| l.keys.len()), Some(1));
        assert_eq!(loaded.auth, auth);

        // Format 3: without users and roles.
        let dir = tempfile::tempdir().unwrap();
        let snapshots = SnapshotStore::open(dir.path()).unwrap();
        let mut w = snapshots.create_in(&m, 3).unwrap();
        #[derive(Serialize)]
        struct V3<'a> {
            kv: &'a MvccStore,
            leases: Vec<(LeaseId, i64)>,
        }
        let v3 = V3 {
            kv: &kv,
            leases: kv.leases().ttls().collect(),
        };
        crate::codec::to_writer(&mut w, &v3).unwrap();
        snapshots.install(&m, w.finish().unwrap()).unwrap();
        let sm = StateMachineStore::open(snapshots, Default::default()).unwrap();
        let state = sm.shared();
        assert_eq!(state.read().kv.leases(), kv.leases());
        assert_eq!(state.read().auth, AuthStore::default());

        // Format 2: the store alone.
        let dir = tempfile::tempdir().unwrap();
        let snapshots = SnapshotStore::open(dir.path()).unwrap();
        let mut plain = MvccStore::default();
        apply(
            &mut plain,
            &mut AuthStore::default(),
            3,
            &Command::Set {
                key: "a".into(),
                value: "b".into(),
            },
        );
        let m = meta(3);
        let mut w = snapshots.create_in(&m, 2).unwrap();
        crate::codec::to_writer(&mut w, &plain).unwrap();
        snapshots.install(&m, w.finish().unwrap()).unwrap();
        let sm = StateMachineStore::open(snapshots, Default::default()).unwrap();
        let state = sm.shared();
        assert_eq!(
            state.read().kv.get(b"a").map(|kv| kv.value),
            Some(b"b".to_vec())
        );
        assert!(state.read().kv.leases().is_empty());
    }
}
