//! openraft's `RaftLogStorage` over our segmented log.
//!
//! Entries since the last purge are held in memory for replication reads; the segment files are
//! the durable copy. Appends are handed to one writer thread that writes and fsyncs them; every
//! append queued while an fsync is running is flushed by the next one, so concurrent proposals
//! share fsyncs (group commit) and an entry is reported flushed only once it is on disk.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use parking_lot::Mutex;

use super::fsutil::{atomic_write, invalid_data};
use super::segments::SegmentedLog;
use crate::codec::{self, LegacyStateFile};
use crate::raft::{Entry, LogId, TypeConfig, Vote};
use crate::telemetry::metrics::metrics;

const VOTE_FILE: &str = "vote";
const META_FILE: &str = "log.meta";

#[derive(Debug, Default)]
struct MemLog {
    entries: VecDeque<Entry>,
    /// Where each entry in `entries` ends in a running total of encoded sizes, and where the
    /// first one starts: sizes, and the bytes after any index, without a pass.
    ends: VecDeque<u64>,
    start: u64,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
}

impl MemLog {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.log_id.index)
    }

    fn end(&self) -> u64 {
        self.ends.back().copied().unwrap_or(self.start)
    }

    /// Encoded bytes of the entries held: what the mirror costs.
    fn bytes(&self) -> u64 {
        self.end() - self.start
    }

    /// Encoded bytes of the entries after `index`.
    fn bytes_after(&self, index: u64) -> u64 {
        let Some(first) = self.first_index() else {
            return 0;
        };
        match index.checked_sub(first) {
            None => self.bytes(),
            Some(pos) => self
                .ends
                .get(usize::try_from(pos).unwrap_or(usize::MAX))
                .map_or(0, |e| self.end() - e),
        }
    }

    fn push_back(&mut self, entry: Entry, size: u64) {
        self.entries.push_back(entry);
        let end = self.end() + size;
        self.ends.push_back(end);
    }

    fn pop_back(&mut self) {
        self.entries.pop_back();
        self.ends.pop_back();
    }

    fn pop_front(&mut self) {
        self.entries.pop_front();
        if let Some(end) = self.ends.pop_front() {
            self.start = end;
        }
    }
}

#[derive(Debug)]
struct Shared {
    mem: Mutex<MemLog>,
    dir: PathBuf,
}

enum WriterCmd {
    Append(Vec<(u64, Vec<u8>)>, IOFlushed<TypeConfig>),
    TruncateFrom(u64, tokio::sync::oneshot::Sender<io::Result<()>>),
    PurgeUpto(u64),
}

/// The Raft log store handed to openraft.
pub struct LogStore {
    /// Bytes cut off a damaged tail when the log was opened (0 after a clean shutdown).
    pub repaired_tail_bytes: u64,
    shared: Arc<Shared>,
    writer: mpsc::Sender<WriterCmd>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogStore {
    /// Lets the writer finish what is queued, so nothing else opens the log while it still runs.
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.writer, closed));
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

/// A cheap read handle for replication.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

/// Replaces a state file off the async runtime: the fsyncs take milliseconds, and openraft
/// calls this from its core task, which must keep serving heartbeats meanwhile.
async fn write_state_file(path: std::path::PathBuf, payload: Vec<u8>) -> io::Result<()> {
    tokio::task::spawn_blocking(move || atomic_write(&path, &codec::state_file(&payload)))
        .await
        .map_err(|e| io::Error::other(format!("state file writer: {e}")))?
}

impl LogStore {
    /// Opens the log in `dir`, recovering entries, vote and purge point.
    pub fn open(dir: &Path, max_segment_bytes: u64) -> io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let vote_path = dir.join(VOTE_FILE);
        let vote = match codec::load_state_file(&vote_path, LegacyStateFile::Checksummed)? {
            Some(b) => Some(codec::from_bytes::<Vote>(&b, vote_path.display())?),
            None => None,
        };
        let meta_path = dir.join(META_FILE);
        let last_purged = match codec::load_state_file(&meta_path, LegacyStateFile::Checksummed)? {
            Some(b) => codec::from_bytes::<Option<LogId>>(&b, meta_path.display())?,
            None => None,
        };
        let (mut seglog, recovery) = SegmentedLog::open(&dir.join("segments"), max_segment_bytes)?;
        if let Some((path, offset, bytes)) = &recovery.dropped_tail {
            tracing::warn!(segment = %path.display(), offset, bytes, "raft log: dropped torn tail on recovery");
        }
        let purged_index = last_purged.as_ref().map(|l| l.index);
        let mut mem = MemLog {
            last_purged,
            vote,
            ..MemLog::default()
        };
        for (index, payload) in recovery.records {
            if purged_index.is_some_and(|p| index <= p) {
                continue;
            }
            let entry: Entry = codec::from_bytes(
                &payload,
                format_args!("log entry {index} in {}", dir.display()),
            )?;
            if entry.log_id.index != index {
                return Err(invalid_data(format!(
                    "log record {index} holds entry {}",
                    entry.log_id
                )));
            }
            mem.push_back(entry, payload.len() as u64);
        }
        let entries = &mem.entries;
        if let (Some(p), Some(first)) = (purged_index, entries.front()) {
            if first.log_id.index != p + 1 {
                return Err(invalid_data(format!(
                    "raft log starts at {} but was purged only up to {p}; entries are missing",
                    first.log_id.index
                )));
            }
        }
        if let (Some(p), Some(next)) = (purged_index, seglog.next_index()) {
            if next <= p + 1 && entries.is_empty() {
                seglog.reset()?;
            }
        }
        tracing::info!(
            entries = entries.len(),
            first = ?entries.front().map(|e| e.log_id.index),
            last = ?entries.back().map(|e| e.log_id.index),
            purged = ?purged_index,
            "raft log recovered"
        );
        let shared = Arc::new(Shared {
            mem: Mutex::new(mem),
            dir: dir.to_path_buf(),
        });
        let (tx, rx) = mpsc::channel();
        let writer_thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer_loop(seglog, rx))?;
        Ok(LogStore {
            repaired_tail_bytes: recovery
                .dropped_tail
                .as_ref()
                .map(|(_, _, b)| *b)
                .unwrap_or(0),
            shared,
            writer: tx,
            writer_thread: Some(writer_thread),
        })
    }

    fn send(&self, cmd: WriterCmd) -> io::Result<()> {
        self.writer
            .send(cmd)
            .map_err(|_| io::Error::other("raft log writer has stopped after an I/O error"))
    }
}

/// Owns the segment files. Batches every queued append into one fsync.
fn writer_loop(mut log: SegmentedLog, rx: mpsc::Receiver<WriterCmd>) {
    let mut failed: Option<String> = None;
    let mut pending_other: Option<WriterCmd> = None;
    loop {
        let first = match pending_other.take() {
            Some(cmd) => cmd,
            None => match rx.recv() {
                Ok(cmd) => cmd,
                Err(_) => return,
            },
        };
        let mut callbacks = Vec::new();
        let mut cmd = Some(first);
        // Drain appends into one batch; stop at the first non-append to keep ordering.
        while let Some(c) = cmd.take() {
            match c {
                WriterCmd::Append(records, cb) => {
                    if failed.is_none() {
                        for (index, payload) in &records {
                            metrics().log_bytes_written.inc_by(payload.len() as u64);
                            if let Err(e) = log.append(*index, payload) {
                                failed = Some(format!("append failed: {e}"));
                                break;
                            }
                        }
                    }
                    callbacks.push(cb);
                    cmd = rx.try_recv().ok();
                }
                other => pending_other = Some(other),
            }
        }
        if !callbacks.is_empty() {
            if failed.is_none() {
                let started = Instant::now();
                if let Err(e) = log.sync() {
                    failed = Some(format!("fsync failed: {e}"));
                }
                metrics()
                    .log_fsync_seconds
                    .observe(started.elapsed().as_secs_f64());
                metrics()
                    .log_fsync_batch_entries
                    .observe(callbacks.len() as f64);
            }
            for cb in callbacks {
                match &failed {
                    None => cb.io_completed(Ok(())),
                    Some(msg) => cb.io_completed(Err(io::Error::other(msg.clone()))),
                }
            }
            if let Some(msg) = &failed {
                // After a failed fsync the page cache no longer tells what is on disk; the only
                // safe course is to stop accepting writes (openraft turns this into a fatal error).
                tracing::error!(%msg, "raft log writer stopped");
            }
        }
        match pending_other.take() {
            Some(WriterCmd::TruncateFrom(index, done)) => {
                let res = match &failed {
                    Some(msg) => Err(io::Error::other(msg.clone())),
                    None => log.truncate_from(index),
                };
                let _ = done.send(res);
            }
            Some(WriterCmd::PurgeUpto(index)) => {
                if failed.is_none() {
                    let res = if log.next_index().is_some_and(|n| n <= index + 1) {
                        log.reset().map(|_| 0)
                    } else {
                        log.purge_upto(index)
                    };
                    if let Err(e) = res {
                        tracing::warn!(error = %e, "raft log: purging old segments failed; will retry on the next purge");
                    }
                }
                metrics().log_segments.set(log.segment_count() as i64);
                metrics().log_bytes.set(log.bytes_on_disk() as i64);
            }
            Some(append @ WriterCmd::Append(..)) => pending_other = Some(append),
            None => {}
        }
        metrics().log_segments.set(log.segment_count() as i64);
    }
}

fn range_indexes<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl Shared {
    fn read_range<RB: RangeBounds<u64>>(&self, range: RB) -> Vec<Entry> {
        let mem = self.mem.lock();
        let Some(first) = mem.first_index() else {
            return Vec::new();
        };
        let (start, end) = range_indexes(&range);
        let start = start.max(first);
        if end <= start {
            return Vec::new();
        }
        let from = (start - first) as usize;
        let to = ((end - first) as usize).min(mem.entries.len());
        if from >= to {
            return Vec::new();
        }
        mem.entries.range(from..to).cloned().collect()
    }
}

impl LogReader {
    /// First and last index held in the log (after the purge point).
    pub fn bounds(&self) -> Option<(u64, u64)> {
        let mem = self.shared.mem.lock();
        Some((
            mem.entries.front()?.log_id.index,
            mem.entries.back()?.log_id.index,
        ))
    }

    /// Bytes the in-memory mirror of the log holds (encoded entry sizes).
    pub fn memory_bytes(&self) -> u64 {
        self.shared.mem.lock().bytes()
    }

    /// Encoded bytes of the entries after `index` (all of them if `index` is before the first).
    pub fn bytes_after(&self, index: u64) -> u64 {
        self.shared.mem.lock().bytes_after(index)
    }

    /// The lowest purge point, at most `upto`, that leaves at most `budget` bytes of entries
    /// after it (or the nearest to that which `upto` allows); `None` when the mirror is within
    /// `budget` already.
    pub fn purge_point_for(&self, budget: u64, upto: u64) -> Option<u64> {
        let mem = self.shared.mem.lock();
        let first = mem.first_index()?;
        let end = mem.end();
        let mut kept = mem.bytes();
        let mut point = None;
        for (i, e) in mem.ends.iter().enumerate() {
            let index = first + i as u64;
            if kept <= budget || index > upto {
                break;
            }
            kept = end - e;
            point = Some(index);
        }
        point
    }

    /// Entries in `[start, end)`, for debugging endpoints.
    pub fn entries(&self, start: u64, end: u64) -> Vec<Entry> {
        self.shared.read_range(start..end)
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self.shared.read_range(range))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.shared.mem.lock().vote)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self.shared.read_range(range))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.shared.mem.lock().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let mem = self.shared.mem.lock();
        let last_log_id = mem
            .entries
            .back()
            .map(|e| e.log_id)
            .or_else(|| mem.last_purged);
        Ok(LogState {
            last_purged_log_id: mem.last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        // Durable before returning: a vote forgotten in a crash could let this node vote twice
        // in one term.
        write_state_file(self.shared.dir.join(VOTE_FILE), codec::to_bytes(vote)?).await?;
        self.shared.mem.lock().vote = Some(*vote);
        Ok(())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut records = Vec::new();
        {
            let mut mem = self.shared.mem.lock();
            for entry in entries {
                if let Some(last) = mem.entries.back() {
                    if entry.log_id.index != last.log_id.index + 1 {
                        return Err(io::Error::other(format!(
                            "non-contiguous append: {} after {}",
                            entry.log_id, last.log_id
                        )));
                    }
                }
                let record = codec::to_bytes(&entry)?;
                let size = record.len() as u64;
                records.push((entry.log_id.index, record));
                mem.push_back(entry, size);
            }
        }
        self.send(WriterCmd::Append(records, callback))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.as_ref().map(|l| l.index + 1).unwrap_or(0);
        {
            let mut mem = self.shared.mem.lock();
            while mem.entries.back().is_some_and(|e| e.log_id.index >= from) {
                mem.pop_back();
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(WriterCmd::TruncateFrom(from, tx))?;
        rx.await
            .map_err(|_| io::Error::other("raft log writer stopped"))?
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // Record the purge point before deleting anything, so a crash in between leaves old
        // segments that recovery skips rather than a gap it cannot explain.
        write_state_file(
            self.shared.dir.join(META_FILE),
            codec::to_bytes(&Some(log_id))?,
        )
        .await?;
        {
            let mut mem = self.shared.mem.lock();
            while mem
                .entries
                .front()
                .is_some_and(|e| e.log_id.index <= log_id.index)
            {
                mem.pop_front();
            }
            mem.last_purged = Some(log_id);
        }
        self.send(WriterCmd::PurgeUpto(log_id.index))
    }
}

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry;
    use openraft::impls::leader_id_adv::LeaderId;
    use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};

    use super::*;
    use crate::store::Command;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(LeaderId { term, node_id: 1 }, index)
    }

    fn entry(term: u64, index: u64) -> Entry {
        Entry::new_normal(
            log_id(term, index),
            Command::Set {
                key: format!("k{index}"),
                value: "v".into(),
            },
        )
    }

    async fn append(store: &mut LogStore, entries: Vec<Entry>) {
        let (tx, rx) = <TypeConfig as openraft::type_config::TypeConfigExt>::oneshot();
        store.append(entries, IOFlushed::signal(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn vote_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let vote = Vote::new(7, 3);
        {
            let mut s = LogStore::open(dir.path(), 1 << 20).unwrap();
            s.save_vote(&vote).await.unwrap();
        }
        let mut s = LogStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.read_vote().await.unwrap(), Some(vote));
    }

    #[tokio::test]
    async fn flushed_entries_survive_reopen_and_truncate_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = LogStore::open(dir.path(), 256).unwrap();
            append(&mut s, (1..=10).map(|i| entry(1, i)).collect()).await;
            s.truncate_after(Some(log_id(1, 6))).await.unwrap();
            append(&mut s, (7..=8).map(|i| entry(2, i)).collect()).await;
        }
        let mut s = LogStore::open(dir.path(), 256).unwrap();
        let state = s.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(2, 8)));
        let got = s.try_get_log_entries(1..=8).await.unwrap();
        assert_eq!(got.len(), 8);
        assert_eq!(got[6].log_id, log_id(2, 7));
    }

    #[tokio::test]
    async fn purge_is_remembered_and_a_log_behind_a_snapshot_restarts_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = LogStore::open(dir.path(), 256).unwrap();
            append(&mut s, (1..=20).map(|i| entry(1, i)).collect()).await;
            s.purge(log_id(1, 15)).await.unwrap();
        }
        let mut s = LogStore::open(dir.path(), 256).unwrap();
        let state = s.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 15)));
        assert_eq!(state.last_log_id, Some(log_id(1, 20)));
        assert_eq!(s.try_get_log_entries(0..100).await.unwrap().len(), 5);
        // A follower that installs a snapshot beyond its whole log purges everything and
        // continues from the snapshot.
        s.purge(log_id(3, 100)).await.unwrap();
        append(&mut s, vec![entry(3, 101)]).await;
        drop(s);
        let mut s = LogStore::open(dir.path(), 256).unwrap();
        let state = s.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(3, 100)));
        assert_eq!(state.last_log_id, Some(log_id(3, 101)));
    }

    #[tokio::test]
    async fn the_mirror_counts_its_bytes_and_finds_a_purge_point_within_a_budget() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path(), 1 << 20).unwrap();
        append(&mut store, (1..=9).map(|i| entry(1, i)).collect()).await;
        let reader = store.get_log_reader().await;
        let total = reader.memory_bytes();
        let each = total / 9;
        assert!(total > 0 && total % 9 == 0, "equal entries: {total}");
        assert_eq!(reader.purge_point_for(total, 9), None, "within budget");
        // Keep at most 3 entries' worth: purge up to 6.
        assert_eq!(reader.purge_point_for(3 * each, 9), Some(6));
        // Never past what `upto` allows.
        assert_eq!(reader.purge_point_for(3 * each, 4), Some(4));
        store.truncate_after(Some(log_id(1, 7))).await.unwrap();
        assert_eq!(reader.memory_bytes(), 7 * each);
        store.purge(log_id(1, 5)).await.unwrap();
        assert_eq!(reader.memory_bytes(), 2 * each);
        drop(store);
        // Reopened, the mirror is measured from the records on disk.
        let mut store = LogStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(store.get_log_reader().await.memory_bytes(), 2 * each);
    }
}
