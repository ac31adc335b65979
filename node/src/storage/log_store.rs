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

/// The log since the purge point: every entry's size, and the newest entries themselves.
/// Older entries that are applied and durable are evicted from memory to keep it within
/// `raft.maxLogMemoryBytes`, and read back from the segments when asked for (a follower
/// catching up, the debug endpoint).
#[derive(Debug, Default)]
struct MemLog {
    /// The newest entries: the last `entries.len()` of the log.
    entries: VecDeque<Entry>,
    /// Index of the first entry after the purge point (meaningful while `ends` is not empty).
    first: u64,
    /// Where each entry since the purge point ends in a running total of encoded sizes, and
    /// where the first one starts: sizes, and the bytes after any index, without a pass.
    ends: VecDeque<u64>,
    start: u64,
    /// The newest evicted entry's id: the log's last id if a truncation removes every entry
    /// still in memory (those after the applied index may be truncated; evicted ones not).
    last_evicted: Option<LogId>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
}

impl MemLog {
    fn first_index(&self) -> Option<u64> {
        (!self.ends.is_empty()).then_some(self.first)
    }

    /// How many of the oldest entries are on disk only.
    fn evicted(&self) -> usize {
        self.ends.len() - self.entries.len()
    }

    /// Index of the first entry held in memory.
    fn mem_first(&self) -> u64 {
        self.first + self.evicted() as u64
    }

    fn end(&self) -> u64 {
        self.ends.back().copied().unwrap_or(self.start)
    }

    /// Encoded bytes of the log since the purge point.
    fn bytes(&self) -> u64 {
        self.end() - self.start
    }

    /// Encoded bytes of the entries held in memory.
    fn mem_bytes(&self) -> u64 {
        match self.evicted() {
            0 => self.bytes(),
            n => self.end() - self.ends[n - 1],
        }
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
        if self.ends.is_empty() {
            self.first = entry.log_id.index;
        }
        self.entries.push_back(entry);
        let end = self.end() + size;
        self.ends.push_back(end);
    }

    /// Drops the newest entry (a truncation; never reaches evicted entries, which are applied).
    fn pop_back(&mut self) {
        self.entries.pop_back();
        self.ends.pop_back();
    }

    /// Removes the entries up to `index` (a purge) and returns those that were in memory.
    fn split_front(&mut self, index: u64) -> Vec<Entry> {
        let Some(first) = self.first_index() else {
            return Vec::new();
        };
        let n = usize::try_from((index + 1).saturating_sub(first))
            .unwrap_or(usize::MAX)
            .min(self.ends.len());
        if n == 0 {
            return Vec::new();
        }
        let in_memory = n.saturating_sub(self.evicted());
        let purged = self.split_entries(in_memory);
        self.start = self.ends[n - 1];
        self.ends.drain(..n);
        self.first = first + n as u64;
        if self.last_evicted.is_some_and(|l| l.index <= index) {
            self.last_evicted = None;
        }
        purged
    }

    /// Evicts the oldest entries held in memory while they are over `budget` bytes, are at or
    /// below `upto` (applied and durable), and are not the newest entry; returns them.
    fn evict(&mut self, upto: u64, budget: u64) -> Vec<Entry> {
        let mut n = 0;
        let mut kept = self.mem_bytes();
        let base = self.evicted();
        let mem_first = self.mem_first();
        while kept > budget && n + 1 < self.entries.len() && mem_first + (n as u64) <= upto {
            let before = if base + n == 0 {
                self.start
            } else {
                self.ends[base + n - 1]
            };
            kept -= self.ends[base + n] - before;
            n += 1;
        }
        let evicted = self.split_entries(n);
        if let Some(last) = evicted.last() {
            self.last_evicted = Some(last.log_id);
        }
        evicted
    }

    /// The id of the log's last entry, in memory or not.
    fn last_log_id(&self) -> Option<LogId> {
        self.entries
            .back()
            .map(|e| e.log_id)
            .or(self.last_evicted)
            .or(self.last_purged)
    }

    /// Takes the `n` oldest entries out of memory. Moves only those: the window kept can be
    /// a hundred thousand entries, and copying it under the lock stalled appends for tens of
    /// milliseconds.
    fn split_entries(&mut self, n: usize) -> Vec<Entry> {
        let n = n.min(self.entries.len());
        self.entries.drain(..n).collect()
    }
}

#[derive(Debug)]
struct Shared {
    mem: Mutex<MemLog>,
    dir: PathBuf,
    /// The writer, for reads of evicted entries; taken when the store is dropped so the
    /// writer thread can end.
    reads: Mutex<Option<mpsc::Sender<WriterCmd>>>,
    /// The newest index the writer has made durable.
    synced: std::sync::atomic::AtomicU64,
}

/// Records read back from the segments: `(index, payload)` in index order.
type Records = Vec<(u64, Vec<u8>)>;

enum WriterCmd {
    Append(Vec<(u64, Vec<u8>)>, IOFlushed<TypeConfig>),
    TruncateFrom(u64, tokio::sync::oneshot::Sender<io::Result<()>>),
    PurgeUpto(u64),
    Read(u64, u64, tokio::sync::oneshot::Sender<io::Result<Records>>),
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
        self.shared.reads.lock().take();
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
        let (tx, rx) = mpsc::channel();
        let synced = seglog.next_index().map_or(0, |n| n.saturating_sub(1));
        let shared = Arc::new(Shared {
            mem: Mutex::new(mem),
            dir: dir.to_path_buf(),
            reads: Mutex::new(Some(tx.clone())),
            synced: std::sync::atomic::AtomicU64::new(synced),
        });
        let writer_shared = shared.clone();
        let writer_thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer_loop(seglog, rx, &writer_shared))?;
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
fn writer_loop(mut log: SegmentedLog, rx: mpsc::Receiver<WriterCmd>, shared: &Shared) {
    use std::sync::atomic::Ordering;
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
                match log.sync() {
                    Err(e) => failed = Some(format!("fsync failed: {e}")),
                    Ok(()) => {
                        if let Some(next) = log.next_index() {
                            shared
                                .synced
                                .store(next.saturating_sub(1), Ordering::Release);
                        }
                    }
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
                shared
                    .synced
                    .fetch_min(index.saturating_sub(1), Ordering::AcqRel);
                let _ = done.send(res);
            }
            Some(WriterCmd::Read(start, end, done)) => {
                let res = match &failed {
                    Some(msg) => Err(io::Error::other(msg.clone())),
                    None => log.read(start, end),
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
    /// Entries in `range` that the log holds: the evicted ones read back from the segments
    /// (through the writer, which owns them), the rest cloned from memory.
    async fn read_range<RB: RangeBounds<u64>>(&self, range: RB) -> io::Result<Vec<Entry>> {
        let (start, end) = range_indexes(&range);
        let (start, disk_end, from_memory) = {
            let mem = self.mem.lock();
            let Some(first) = mem.first_index() else {
                return Ok(Vec::new());
            };
            let start = start.max(first);
            let end = end.min(first + mem.ends.len() as u64);
            if end <= start {
                return Ok(Vec::new());
            }
            let mem_first = mem.mem_first();
            let from = (start.max(mem_first) - mem_first) as usize;
            let to = (end.saturating_sub(mem_first) as usize).min(mem.entries.len());
            let from_memory: Vec<Entry> = if from < to {
                mem.entries.range(from..to).cloned().collect()
            } else {
                Vec::new()
            };
            (start, end.min(mem_first), from_memory)
        };
        if start >= disk_end {
            return Ok(from_memory);
        }
        let Some(writer) = self.reads.lock().clone() else {
            return Err(io::Error::other("raft log is closed"));
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        writer
            .send(WriterCmd::Read(start, disk_end, tx))
            .map_err(|_| io::Error::other("raft log writer has stopped after an I/O error"))?;
        let records = rx
            .await
            .map_err(|_| io::Error::other("raft log writer stopped"))??;
        let mut out = Vec::with_capacity(records.len() + from_memory.len());
        for (index, payload) in records {
            let entry: Entry = codec::from_bytes(
                &payload,
                format_args!("log entry {index} in {}", self.dir.display()),
            )?;
            out.push(entry);
        }
        if out.len() as u64 != disk_end - start {
            return Err(invalid_data(format!(
                "raft log: read {} entries from disk for [{start}, {disk_end})",
                out.len()
            )));
        }
        out.extend(from_memory);
        Ok(out)
    }
}

impl LogReader {
    /// First and last index held in the log (after the purge point).
    pub fn bounds(&self) -> Option<(u64, u64)> {
        let mem = self.shared.mem.lock();
        let first = mem.first_index()?;
        Some((first, first + mem.ends.len() as u64 - 1))
    }

    /// Bytes of log entries held in memory (encoded entry sizes).
    pub fn memory_bytes(&self) -> u64 {
        self.shared.mem.lock().mem_bytes()
    }

    /// Keeps the entries held in memory within `budget` bytes by evicting the oldest that are
    /// applied (at or below `applied`) and durable; they are read back from disk if needed.
    /// The newest entry always stays.
    pub fn evict(&self, applied: u64, budget: u64) {
        let synced = self
            .shared
            .synced
            .load(std::sync::atomic::Ordering::Acquire);
        let evicted = self.shared.mem.lock().evict(applied.min(synced), budget);
        if !evicted.is_empty() {
            // Freeing many entries takes a while: not under the lock, not on the runtime.
            tokio::task::spawn_blocking(move || drop(evicted));
        }
    }

    /// Encoded bytes of the entries after `index` (all of them if `index` is before the first).
    pub fn bytes_after(&self, index: u64) -> u64 {
        self.shared.mem.lock().bytes_after(index)
    }

    /// Entries in `[start, end)`, for debugging endpoints.
    pub async fn entries(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        self.shared.read_range(start..end).await
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        self.shared.read_range(range).await
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
        self.shared.read_range(range).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.shared.mem.lock().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let mem = self.shared.mem.lock();
        let last_log_id = mem.last_log_id();
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
                if let Some(last) = mem.last_log_id().filter(|_| !mem.ends.is_empty()) {
                    if entry.log_id.index != last.index + 1 {
                        return Err(io::Error::other(format!(
                            "non-contiguous append: {} after {last}",
                            entry.log_id
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
        let purged = {
            let mut mem = self.shared.mem.lock();
            let purged = mem.split_front(log_id.index);
            mem.last_purged = Some(log_id);
            purged
        };
        // A purge after a snapshot can drop a million entries: freeing them takes tens of
        // milliseconds, which must hold up neither appends (the lock) nor the runtime.
        tokio::task::spawn_blocking(move || drop(purged));
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
    async fn entries_over_the_memory_budget_are_evicted_and_read_back_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        // Small segments, so reads back cross segment files.
        let mut store = LogStore::open(dir.path(), 300).unwrap();
        append(&mut store, (1..=9).map(|i| entry(1, i)).collect()).await;
        let mut reader = store.get_log_reader().await;
        let total = reader.memory_bytes();
        let each = total / 9;
        assert!(total > 0 && total % 9 == 0, "equal entries: {total}");
        // Within budget, or nothing applied: nothing leaves memory.
        reader.evict(9, total);
        reader.evict(0, 0);
        assert_eq!(reader.memory_bytes(), total);
        // Keep 3 entries' worth, but only applied ones go: up to 4, then up to 6.
        reader.evict(4, 3 * each);
        assert_eq!(reader.memory_bytes(), 5 * each);
        reader.evict(9, 3 * each);
        assert_eq!(reader.memory_bytes(), 3 * each);
        // The newest entry always stays, whatever the budget.
        reader.evict(9, 0);
        assert_eq!(reader.memory_bytes(), each);
        // Every entry still reads, from disk and from memory, in order.
        let all = reader.try_get_log_entries(1..10).await.unwrap();
        let indexes: Vec<u64> = all.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, (1..=9).collect::<Vec<_>>());
        assert_eq!(all, (1..=9).map(|i| entry(1, i)).collect::<Vec<_>>());
        assert_eq!(reader.try_get_log_entries(3..5).await.unwrap().len(), 2);
        assert_eq!(reader.bytes_after(6), 3 * each);
        // Truncating the unapplied tail and purging the head keep the accounting.
        store.truncate_after(Some(log_id(1, 8))).await.unwrap();
        store.purge(log_id(1, 5)).await.unwrap();
        assert_eq!(reader.bounds(), Some((6, 8)));
        assert_eq!(reader.bytes_after(5), 3 * each);
        let rest = reader.try_get_log_entries(0..100).await.unwrap();
        assert_eq!(rest, (6..=8).map(|i| entry(1, i)).collect::<Vec<_>>());
        drop(store);
        // Reopened, the log is in memory again, measured from the records on disk.
        let mut store = LogStore::open(dir.path(), 300).unwrap();
        assert_eq!(store.get_log_reader().await.memory_bytes(), 3 * each);
    }

    #[tokio::test]
    async fn truncating_every_entry_left_in_memory_keeps_the_last_evicted_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path(), 1 << 20).unwrap();
        append(&mut store, (1..=6).map(|i| entry(1, i)).collect()).await;
        let mut reader = store.get_log_reader().await;
        // 1..=4 applied and evicted; 5 and 6 (not applied) stay, then are truncated away.
        reader.evict(4, 0);
        store.truncate_after(Some(log_id(1, 4))).await.unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 4)));
        // A new leader's entries follow on, and everything reads back in order.
        append(&mut store, vec![entry(2, 5)]).await;
        let all = reader.try_get_log_entries(1..6).await.unwrap();
        let ids: Vec<LogId> = all.iter().map(|e| e.log_id).collect();
        let mut want: Vec<LogId> = (1..=4).map(|i| log_id(1, i)).collect();
        want.push(log_id(2, 5));
        assert_eq!(ids, want);
    }
}
