//! The on-disk Raft log: a directory of append-only segment files.
//!
//! Each segment is named after the index of its first record (`00000000000000000042.log`),
//! starts with an 8-byte header naming its format (`codec::segment_header`; segments from
//! before versioning have none), and holds records framed as
//!
//! ```text
//! [payload_len u32 LE][crc32 u32 LE over index+payload][index u64 LE][payload]
//! ```
//!
//! Writes are buffered and made durable by [`SegmentedLog::sync`]; callers batch many appends
//! into one sync (group commit). On open, a torn or corrupt *tail* (the crash case) is cut off
//! and reported; corruption anywhere else is refused, because silently dropping entries in the
//! middle of a log would lose acknowledged writes.
//!
//! This module knows nothing about Raft: records are opaque bytes with an index.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::fsutil::{invalid_data, sync_dir};
use crate::codec::{self, SegmentStart, SEGMENT_HEADER_LEN};

const HEADER_LEN: u64 = 16;
/// Upper bound for one record; anything larger in a header is corruption, not data.
pub const MAX_RECORD_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug)]
struct Segment {
    first_index: u64,
    path: PathBuf,
    /// Byte offset of each record; record `i` has index `first_index + i`.
    offsets: Vec<u64>,
    /// Bytes in the file, including unflushed buffered bytes for the active segment.
    len: u64,
}

impl Segment {
    fn next_index(&self) -> u64 {
        self.first_index + self.offsets.len() as u64
    }
}

/// What [`SegmentedLog::open`] found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Every record in index order.
    pub records: Vec<(u64, Vec<u8>)>,
    /// A torn tail that was cut off: segment, offset, bytes dropped.
    pub dropped_tail: Option<(PathBuf, u64, u64)>,
}

#[derive(Debug)]
pub struct SegmentedLog {
    dir: PathBuf,
    max_segment_bytes: u64,
    segments: Vec<Segment>,
    active: Option<File>,
    buf: Vec<u8>,
}

/// Deleting a segment that is already gone is not an error (a crash between unlink and the
/// directory sync, or a repeated purge).
fn remove_segment(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}.log"))
}

fn frame(index: u64, payload: &[u8], out: &mut Vec<u8>) {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.update(payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&hasher.finalize().to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(payload);
}

enum Parsed {
    Record {
        index: u64,
        payload_at: usize,
        next: usize,
    },
    /// The bytes from here cannot be a valid record.
    Bad {
        reason: String,
        torn: bool,
    },
    End,
}

fn parse_at(bytes: &[u8], off: usize) -> Parsed {
    let rest = &bytes[off..];
    if rest.is_empty() {
        return Parsed::End;
    }
    if (rest.len() as u64) < HEADER_LEN {
        return Parsed::Bad {
            reason: format!("partial record header ({} bytes)", rest.len()),
            torn: true,
        };
    }
    let word = |at: usize| u32::from_le_bytes([rest[at], rest[at + 1], rest[at + 2], rest[at + 3]]);
    let len = u64::from(word(0));
    let crc = word(4);
    let mut idx = [0u8; 8];
    idx.copy_from_slice(&rest[8..16]);
    let index = u64::from_le_bytes(idx);
    if len == 0 && crc == 0 && index == 0 {
        // Zero-filled space is a torn tail only if nothing but zeros follows (the file system
        // extended the file but the write never landed). Zeros with data after them are a hole
        // in the middle of the log.
        return Parsed::Bad {
            reason: "zero-filled record header".into(),
            torn: rest.iter().all(|b| *b == 0),
        };
    }
    if len > MAX_RECORD_BYTES {
        return Parsed::Bad {
            reason: format!("record length {len} exceeds the {MAX_RECORD_BYTES}-byte limit"),
            torn: false,
        };
    }
    let end = HEADER_LEN + len;
    if (rest.len() as u64) < end {
        return Parsed::Bad {
            reason: format!("record of {len} bytes cut short at end of file"),
            torn: true,
        };
    }
    let payload = &rest[HEADER_LEN as usize..end as usize];
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.update(payload);
    if hasher.finalize() != crc {
        // A bad last record is a write torn by a crash; a bad record followed by more data is
        // corruption of something that was once durable.
        return Parsed::Bad {
            reason: format!("checksum mismatch in record with index {index}"),
            torn: rest.len() as u64 == end,
        };
    }
    Parsed::Record {
        index,
        payload_at: off + HEADER_LEN as usize,
        next: off + end as usize,
    }
}

impl SegmentedLog {
    /// Opens (creating if needed) the log in `dir`, repairing a torn tail.
    pub fn open(dir: &Path, max_segment_bytes: u64) -> io::Result<(Self, Recovery)> {
        fs::create_dir_all(dir)?;
        let mut firsts = Vec::new();
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".log") {
                if let Ok(first) = stem.parse::<u64>() {
                    firsts.push(first);
                }
            }
        }
        firsts.sort_unstable();

        let mut recovery = Recovery::default();
        let mut segments = Vec::with_capacity(firsts.len());
        let count = firsts.len();
        for (pos, first_index) in firsts.into_iter().enumerate() {
            let path = segment_path(dir, first_index);
            let mut bytes = fs::read(&path)?;
            let is_last = pos + 1 == count;
            let mut seg = Segment {
                first_index,
                path: path.clone(),
                offsets: Vec::new(),
                len: 0,
            };
            let mut off = match codec::segment_start(&bytes, &path)? {
                SegmentStart::Versioned(_) => SEGMENT_HEADER_LEN,
                SegmentStart::Legacy => 0,
                // The newest segment, cut by a crash before its header was whole: nothing in it
                // was ever acknowledged. Start it again.
                SegmentStart::TornHeader if is_last => {
                    bytes = codec::segment_header().to_vec();
                    let mut f = OpenOptions::new().write(true).truncate(true).open(&path)?;
                    f.write_all(&bytes)?;
                    f.sync_all()?;
                    SEGMENT_HEADER_LEN
                }
                // An older segment was complete once: a partial header there is corruption.
                SegmentStart::TornHeader => {
                    return Err(invalid_data(format!(
                        "log segment {} has a partial header but is not the newest segment; \
                         refusing to start rather than lose data",
                        path.display()
                    )))
                }
            };
            loop {
                match parse_at(&bytes, off) {
                    Parsed::End => break,
                    Parsed::Record {
                        index,
                        payload_at,
                        next,
                    } => {
                        if index != seg.next_index() {
                            return Err(invalid_data(format!(
                                "log segment {} holds index {index} at offset {off} where {} was expected; \
                                 refusing to start on a log with a gap",
                                path.display(),
                                seg.next_index()
                            )));
                        }
                        seg.offsets.push(off as u64);
                        recovery
                            .records
                            .push((index, bytes[payload_at..next].to_vec()));
                        off = next;
                    }
                    Parsed::Bad { reason, torn } => {
                        if torn && is_last {
                            let dropped = bytes.len() as u64 - off as u64;
                            let f = OpenOptions::new().write(true).open(&path)?;
                            f.set_len(off as u64)?;
                            f.sync_all()?;
                            recovery.dropped_tail = Some((path.clone(), off as u64, dropped));
                            tracing::warn!(
                                segment = %path.display(),
                                offset = off,
                                dropped_bytes = dropped,
                                %reason,
                                "truncated torn tail of the Raft log (an unacknowledged write cut by a crash)"
                            );
                            break;
                        }
                        return Err(invalid_data(format!(
                            "log segment {} is corrupt at offset {off}: {reason}; refusing to start \
                             rather than lose data. If this node's peers hold the data, move this \
                             node's data dir aside and re-add it as a new member.",
                            path.display()
                        )));
                    }
                }
            }
            seg.len = off as u64;
            if let Some(prev) = segments.last() {
                let prev: &Segment = prev;
                if prev.next_index() != seg.first_index {
                    return Err(invalid_data(format!(
                        "log segments {} and {} are not contiguous (expected first index {})",
                        prev.path.display(),
                        seg.path.display(),
                        prev.next_index()
                    )));
                }
            }
            segments.push(seg);
        }

        let active = match segments.last() {
            Some(seg) => Some(OpenOptions::new().append(true).open(&seg.path)?),
            None => None,
        };
        Ok((
            SegmentedLog {
                dir: dir.to_path_buf(),
                max_segment_bytes: max_segment_bytes.max(HEADER_LEN + 1),
                segments,
                active,
                buf: Vec::new(),
            },
            recovery,
        ))
    }

    /// Index the next appended record must have, if the log is non-empty.
    pub fn next_index(&self) -> Option<u64> {
        self.segments.last().map(Segment::next_index)
    }

    /// Buffers a record. Not durable until [`sync`](Self::sync).
    pub fn append(&mut self, index: u64, payload: &[u8]) -> io::Result<()> {
        if let Some(expected) = self.next_index() {
            if index != expected {
                return Err(io::Error::other(format!(
                    "append of index {index} but the log expects {expected}"
                )));
            }
        }
        let record_len = HEADER_LEN + payload.len() as u64;
        let roll = match self.segments.last() {
            None => true,
            Some(seg) => !seg.offsets.is_empty() && seg.len + record_len > self.max_segment_bytes,
        };
        if roll {
            self.start_segment(index)?;
        }
        let seg = self
            .segments
            .last_mut()
            .ok_or_else(|| io::Error::other("no active segment"))?;
        seg.offsets.push(seg.len);
        seg.len += record_len;
        frame(index, payload, &mut self.buf);
        Ok(())
    }

    fn start_segment(&mut self, first_index: u64) -> io::Result<()> {
        // The old segment must be complete on disk before records live in the next one.
        self.sync()?;
        let path = segment_path(&self.dir, first_index);
        // Append mode: every write lands at the current end of file, including after a
        // truncation made through another handle.
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        // A leftover file of that name (from a truncated-away earlier life) starts empty.
        file.set_len(0)?;
        sync_dir(&self.dir)?;
        self.active = Some(file);
        // The header goes out with the segment's first records, in the same sync.
        self.buf.extend_from_slice(&codec::segment_header());
        self.segments.push(Segment {
            first_index,
            path,
            offsets: Vec::new(),
            len: SEGMENT_HEADER_LEN as u64,
        });
        Ok(())
    }

    /// Writes buffered records and fsyncs: everything appended so far is durable on return.
    pub fn sync(&mut self) -> io::Result<()> {
        if let Some(file) = self.active.as_mut() {
            if !self.buf.is_empty() {
                file.write_all(&self.buf)?;
                self.buf.clear();
            }
            file.sync_data()?;
        }
        Ok(())
    }

    /// Removes every record with index >= `index`, durably.
    pub fn truncate_from(&mut self, index: u64) -> io::Result<()> {
        self.sync()?;
        while let Some(seg) = self.segments.last() {
            if seg.first_index < index {
                break;
            }
            remove_segment(&seg.path)?;
            self.segments.pop();
            self.active = None;
        }
        if let Some(seg) = self.segments.last_mut() {
            let keep = (index.saturating_sub(seg.first_index)) as usize;
            if keep < seg.offsets.len() {
                let cut = seg.offsets[keep];
                seg.offsets.truncate(keep);
                seg.len = cut;
                let f = OpenOptions::new().write(true).open(&seg.path)?;
                f.set_len(cut)?;
                f.sync_all()?;
            }
            // Reopen so the next write goes to the new end of file whatever the old handle was.
            self.active = Some(OpenOptions::new().append(true).open(&seg.path)?);
        }
        sync_dir(&self.dir)
    }

    /// Deletes segments whose records all have index <= `index`. The segment being written to
    /// is kept even when fully purged, so appends continue in place.
    pub fn purge_upto(&mut self, index: u64) -> io::Result<u64> {
        let mut removed = 0;
        while self.segments.len() > 1 {
            let seg = &self.segments[0];
            if seg.next_index() > index + 1 {
                break;
            }
            remove_segment(&seg.path)?;
            self.segments.remove(0);
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Drops everything and starts the next record at `first_index` (after a snapshot install
    /// that is ahead of the whole log).
    pub fn reset(&mut self) -> io::Result<()> {
        self.buf.clear();
        while let Some(seg) = self.segments.last() {
            remove_segment(&seg.path)?;
            self.segments.pop();
        }
        self.active = None;
        sync_dir(&self.dir)
    }

    /// Reads back the records with indexes in `[start, end)`, each checked as at recovery.
    /// One read per segment touched.
    pub fn read(&mut self, start: u64, end: u64) -> io::Result<Vec<(u64, Vec<u8>)>> {
        use std::os::unix::fs::FileExt;
        if let (Some(file), false) = (self.active.as_mut(), self.buf.is_empty()) {
            // Written (not yet synced): the file then holds every record asked for.
            file.write_all(&self.buf)?;
            self.buf.clear();
        }
        let mut out = Vec::new();
        for seg in &self.segments {
            let from = start.max(seg.first_index);
            let to = end.min(seg.next_index());
            if from >= to {
                continue;
            }
            let at = |index: u64| -> u64 {
                let i = (index - seg.first_index) as usize;
                seg.offsets.get(i).copied().unwrap_or(seg.len)
            };
            let (a, b) = (at(from), at(to));
            let mut bytes = vec![0u8; usize::try_from(b - a).map_err(io::Error::other)?];
            File::open(&seg.path)?.read_exact_at(&mut bytes, a)?;
            let mut off = 0;
            for want in from..to {
                match parse_at(&bytes, off) {
                    Parsed::Record {
                        index,
                        payload_at,
                        next,
                    } if index == want => {
                        out.push((index, bytes[payload_at..next].to_vec()));
                        off = next;
                    }
                    Parsed::Record { index, .. } => {
                        return Err(invalid_data(format!(
                            "log segment {} holds index {index} where {want} was expected",
                            seg.path.display()
                        )))
                    }
                    Parsed::Bad { reason, .. } => {
                        return Err(invalid_data(format!(
                            "log segment {} is corrupt at offset {}: {reason}",
                            seg.path.display(),
                            a + off as u64
                        )))
                    }
                    Parsed::End => {
                        return Err(invalid_data(format!(
                            "log segment {} ends before index {want}",
                            seg.path.display()
                        )))
                    }
                }
            }
        }
        Ok(out)
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub fn bytes_on_disk(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(i: u64) -> Vec<u8> {
        format!("entry-{i}").into_bytes()
    }

    fn fill(log: &mut SegmentedLog, range: std::ops::RangeInclusive<u64>) {
        for i in range {
            log.append(i, &payload(i)).unwrap();
        }
        log.sync().unwrap();
    }

    fn indexes(rec: &Recovery) -> Vec<u64> {
        rec.records.iter().map(|(i, _)| *i).collect()
    }

    #[test]
    fn append_and_recover_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, rec) = SegmentedLog::open(dir.path(), 100).unwrap();
        assert!(rec.records.is_empty());
        fill(&mut log, 1..=20);
        assert!(log.segment_count() > 3, "small segments roll");
        drop(log);
        let (log, rec) = SegmentedLog::open(dir.path(), 100).unwrap();
        assert_eq!(indexes(&rec), (1..=20).collect::<Vec<_>>());
        assert_eq!(rec.records[4].1, payload(5));
        assert!(rec.dropped_tail.is_none());
        assert_eq!(log.next_index(), Some(21));
    }

    #[test]
    fn torn_tail_is_truncated_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentedLog::open(dir.path(), 1 << 20).unwrap();
        fill(&mut log, 1..=5);
        drop(log);
        let seg = segment_path(dir.path(), 1);
        let full = fs::read(&seg).unwrap();
        // Cut the last record in half, as a crash mid-write would.
        fs::write(&seg, &full[..full.len() - 4]).unwrap();
        let (mut log, rec) = SegmentedLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(indexes(&rec), vec![1, 2, 3, 4]);
        let (_, _, dropped) = rec.dropped_tail.unwrap();
        assert!(dropped > 0);
        // The repaired log accepts the next index and recovers cleanly.
        fill(&mut log, 5..=6);
        drop(log);
        let (_, rec) = SegmentedLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(indexes(&rec), vec![1, 2, 3, 4, 5, 6]);
        assert!(rec.dropped_tail.is_none());
    }

    #[test]
    fn corrupt_last_record_is_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentedLog::open(dir.path(), 1 << 20).unwrap();
        fill(&mut log, 1..=3);
        drop(log);
        let seg = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&seg).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&seg, bytes).unwrap();
        let (_, rec) = SegmentedLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(indexes(&rec), vec![1, 2]);
    }

    #[test]
    fn corrupt_middle_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentedLog::open(dir.path(), 1 << 20).unwrap();
        fill(&mut log, 1..=5);
        drop(log);
        let seg = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&seg).unwrap();
        bytes[HEADER_LEN as usize + 2] ^= 0xff; // payload of record 1
        fs::write(&seg, bytes).unwrap();
        let err = SegmentedLog::open(dir.path(), 1 << 20).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("refusing to start"), "{err}");
    }

    #[test]
    fn a_zero_hole_followed_by_records_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentedLog::open(dir.path(), 1 << 20).unwrap();
        fill(&mut log, 1..=2);
        drop(log);
        let seg = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&seg).unwrap();
        let mut third = Vec::new();
        frame(3, b"after-the-hole", &mut third);
        bytes.extend_from_slice(&[0u8; 64]);
        bytes.extend_from_slice(&third);
        fs::write(&seg, bytes).unwrap();
        let err = SegmentedLog::open(dir.path(), 1 << 20).unwrap_err();
        assert!(err.to_string().contains("zero-filled"), "{err}");
    }

    #[test]
    fn corruption_in_an_older_segment_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentedLog::open(dir.path(), 60).unwrap();
        fill(&mut log, 1..=10);
        drop(log);
        let seg = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&seg).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff; // last record of a non-final segment
        fs::write(&seg, bytes).unwrap();
        assert!(SegmentedLog::open(dir.path(), 60).is_err());
    }

    #[test]
    fn truncate_removes_suffix_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentedLog::open(dir.path(), 100).unwrap();
        fill(&mut log, 1..=20);
        log.truncate_from(7).unwrap();
        assert_eq!(log.next_index(), Some(7));
        fill(&mut log, 7..=9);
        drop(log);
        let (_, rec) = SegmentedLog::open(dir.path(), 100).unwrap();
        assert_eq!(indexes(&rec), (1..=9).collect::<Vec<_>>());
    }

    /// Regression: after truncating inside a segment this process created, later appends must
    /// land at the cut, not at the old end of file (which leaves a zero-filled hole that
    /// recovery would mistake for a torn tail and cut off — with acknowledged entries after it).
    #[test]
    fn appends_after_truncating_a_fresh_segment_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentedLog::open(dir.path(), 1 << 20).unwrap();
        fill(&mut log, 1..=5);
        log.truncate_from(3).unwrap();
        log.append(3, b"new-3").unwrap();
        log.append(4, b"new-4").unwrap();
        log.sync().unwrap();
        drop(log);
        let (_, rec) = SegmentedLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(indexes(&rec), vec![1, 2, 3, 4]);
        assert_eq!(rec.records[2].1, b"new-3");
        assert!(rec.dropped_tail.is_none(), "{:?}", rec.dropped_tail);
    }

    #[test]
    fn purge_deletes_whole_old_segments_only() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentedLog::open(dir.path(), 100).unwrap();
        fill(&mut log, 1..=20);
        let before = log.segment_count();
        let removed = log.purge_upto(10).unwrap();
        assert!(removed > 0 && log.segment_count() < before);
        drop(log);
        let (_, rec) = SegmentedLog::open(dir.path(), 100).unwrap();
        let idx = indexes(&rec);
        assert!(idx[0] <= 11, "entries after the purge point stay: {idx:?}");
        assert_eq!(*idx.last().unwrap(), 20);
    }

    #[test]
    fn reset_empties_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentedLog::open(dir.path(), 100).unwrap();
        fill(&mut log, 1..=5);
        log.reset().unwrap();
        fill(&mut log, 50..=51);
        drop(log);
        let (_, rec) = SegmentedLog::open(dir.path(), 100).unwrap();
        assert_eq!(indexes(&rec), vec![50, 51]);
    }

    #[test]
    fn a_segment_from_before_versioning_still_opens_and_new_segments_get_a_header() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = Vec::new();
        for i in 1..=3 {
            frame(i, &payload(i), &mut old);
        }
        fs::write(segment_path(dir.path(), 1), &old).unwrap();
        let (mut log, rec) = SegmentedLog::open(dir.path(), 100).unwrap();
        assert_eq!(indexes(&rec), vec![1, 2, 3]);
        fill(&mut log, 4..=12);
        drop(log);
        let (_, rec) = SegmentedLog::open(dir.path(), 100).unwrap();
        assert_eq!(indexes(&rec), (1..=12).collect::<Vec<_>>());
        let newest = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .max()
            .unwrap();
        assert!(fs::read(newest)
            .unwrap()
            .starts_with(&codec::segment_header()));
    }

    #[test]
    fn a_segment_in_a_newer_format_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut header = codec::segment_header();
        header[6] = 200;
        fs::write(segment_path(dir.path(), 1), header).unwrap();
        let e = SegmentedLog::open(dir.path(), 100).unwrap_err().to_string();
        assert!(
            e.contains("00000000000000000001.log") && e.contains("format 200"),
            "{e}"
        );
    }

    #[test]
    fn a_segment_cut_while_its_header_was_written_starts_again() {
        let dir = tempfile::tempdir().unwrap();
        fill(&mut SegmentedLog::open(dir.path(), 1000).unwrap().0, 1..=2);
        fs::write(segment_path(dir.path(), 3), &codec::segment_header()[..5]).unwrap();
        let (mut log, rec) = SegmentedLog::open(dir.path(), 1000).unwrap();
        assert_eq!(indexes(&rec), vec![1, 2]);
        fill(&mut log, 3..=4);
        drop(log);
        let (_, rec) = SegmentedLog::open(dir.path(), 1000).unwrap();
        assert_eq!(indexes(&rec), vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_partial_header_in_an_older_segment_refuses_to_open_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let torn = &codec::segment_header()[..5];
        fs::write(segment_path(dir.path(), 1), torn).unwrap();
        let mut later = codec::segment_header().to_vec();
        frame(1, &payload(1), &mut later);
        fs::write(segment_path(dir.path(), 2), &later).unwrap();
        let e = SegmentedLog::open(dir.path(), 1000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("partial header"), "{e}");
        assert_eq!(fs::read(segment_path(dir.path(), 1)).unwrap(), torn);
    }
}
