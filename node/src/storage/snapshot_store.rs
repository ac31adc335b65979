//! Snapshot files: `snapshots/snapshot-<index>.snap`, each made complete and durable under a
//! temporary name and then renamed into place.
//!
//! Format: `[magic 8 bytes][crc32 u32 LE][meta_len u64 LE][meta (bincode)][data]`, the checksum
//! covering everything after it; the magic's last byte is the format (`codec`). Only the newest
//! snapshot is kept.
//!
//! A snapshot is never one buffer in memory: it is written through a [`SnapshotWriter`] (by the
//! builder serializing the state, or by the peer service as chunks arrive from the leader) and
//! read back through a [`SnapshotFile`] (to restore the state, or to send it in chunks).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use super::fsutil::{invalid_data, sync_dir};
use crate::codec;
use crate::raft::SnapshotMeta;

/// Bytes before the meta: magic, checksum, meta length.
const HEADER_LEN: u64 = 8 + 4 + 8;
/// Temporary files being written start with this; leftovers from a crash are removed at open.
const PARTIAL_PREFIX: &str = "partial-";

#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
}

/// A complete, checksummed snapshot on disk, open for reading. It is either installed (the
/// store's current snapshot) or still a temporary file, which is deleted if dropped before
/// [`SnapshotStore::install`].
#[derive(Debug)]
pub struct SnapshotFile {
    file: Backing,
    data_start: u64,
    data_len: u64,
    /// The format of the data (`codec::SNAPSHOT_FORMAT` or an older one the node still reads).
    format: u8,
}

#[derive(Debug)]
enum Backing {
    Pending(NamedTempFile),
    Installed { file: File, path: PathBuf },
}

impl SnapshotFile {
    fn file(&self) -> &File {
        match &self.file {
            Backing::Pending(tmp) => tmp.as_file(),
            Backing::Installed { file, .. } => file,
        }
    }

    /// Names the snapshot in messages: its file once installed.
    pub fn describe(&self) -> String {
        match &self.file {
            Backing::Pending(tmp) => {
                format!("the snapshot being received ({})", tmp.path().display())
            }
            Backing::Installed { path, .. } => format!("snapshot {}", path.display()),
        }
    }

    /// The format its data is in.
    pub fn format(&self) -> u8 {
        self.format
    }

    /// Size of the data (the state) in bytes.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Size of the whole file in bytes.
    pub fn file_len(&self) -> u64 {
        self.data_start + self.data_len
    }

    /// Reads data bytes starting at `offset` into `buf`; returns how many were read (0 at the end).
    pub fn read_data_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.data_len.saturating_sub(offset);
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        self.file()
            .read_at(&mut buf[..want], self.data_start + offset)
    }

    /// A buffered reader over the data, from its start.
    pub fn data_reader(&self) -> impl Read + '_ {
        BufReader::with_capacity(
            1 << 20,
            DataReader {
                snapshot: self,
                offset: 0,
            },
        )
    }
}

struct DataReader<'a> {
    snapshot: &'a SnapshotFile,
    offset: u64,
}

impl Read for DataReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.snapshot.read_data_at(self.offset, buf)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// Writes one snapshot's data to a temporary file; [`finish`](SnapshotWriter::finish) makes it
/// a durable [`SnapshotFile`]. Dropped unfinished, the temporary file is deleted.
pub struct SnapshotWriter {
    out: BufWriter<NamedTempFile>,
    crc: crc32fast::Hasher,
    data_start: u64,
    data_len: u64,
    format: u8,
    /// Data bytes written since writeback was last started.
    unpushed: u64,
    /// The file's bytes whose writeback was started last and not yet waited for.
    in_flight: (u64, u64),
}

/// A snapshot's pages are pushed to the disk in steps of this many bytes as it is written,
/// each step waited for once the next one is under way. Left to one fsync at the end, a large
/// snapshot's dirty pages reach the disk in one burst that the Raft log's own fsyncs queue
/// behind (measured: write max 76-88 ms at 1M keys while a member snapshotted, 7-27 ms
/// otherwise). Pushed with `sync_file_range` rather than synced: an fdatasync of a growing
/// file commits the filesystem's journal, which the log's next fsync then waits for, and on
/// ext4 a journal commit also waits for every data page already being written back, so the
/// less the snapshot has in flight, the less a log fsync can wait behind it.
const WRITEBACK_STEP: u64 = 1 << 20;

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.crc.update(&buf[..n]);
        self.data_len += n as u64;
        self.unpushed += n as u64;
        if self.unpushed >= WRITEBACK_STEP {
            self.out.flush()?;
            let end = self.data_start + self.data_len;
            let step = (self.in_flight.1, end);
            writeback(self.out.get_ref().as_file(), step, self.in_flight)?;
            self.in_flight = step;
            self.unpushed = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl SnapshotWriter {
    /// Data bytes written so far.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Writes the checksum into the header and fsyncs the file.
    pub fn finish(self) -> io::Result<SnapshotFile> {
        let SnapshotWriter {
            out,
            crc,
            data_start,
            data_len,
            format,
            unpushed: _,
            in_flight: _,
        } = self;
        let mut tmp = out.into_inner().map_err(|e| e.into_error())?;
        let file = tmp.as_file_mut();
        file.seek(SeekFrom::Start(8))?;
        file.write_all(&crc.finalize().to_le_bytes())?;
        file.sync_all()?;
        Ok(SnapshotFile {
            file: Backing::Pending(tmp),
            data_start,
            data_len,
            format,
        })
    }
}

/// Starts writing back the file's bytes `step` (start, end) and waits for the bytes `previous`
/// to be on the disk. Durability still comes from the fsync that finishes the snapshot; this
/// only spreads the writing out.
#[cfg(target_os = "linux")]
fn writeback(file: &File, step: (u64, u64), previous: (u64, u64)) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let range = |(from, to): (u64, u64)| -> (libc::off64_t, libc::off64_t) {
        let from = libc::off64_t::try_from(from).unwrap_or(libc::off64_t::MAX);
        let to = libc::off64_t::try_from(to).unwrap_or(libc::off64_t::MAX);
        (from, to.saturating_sub(from))
    };
    let call = |(offset, len): (libc::off64_t, libc::off64_t), flags| {
        // SAFETY: sync_file_range only reads the descriptor, which `file` keeps open.
        let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    call(range(step), libc::SYNC_FILE_RANGE_WRITE)?;
    if previous.1 > previous.0 {
        call(
            range(previous),
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        )?;
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn writeback(file: &File, _step: (u64, u64), _previous: (u64, u64)) -> io::Result<()> {
    file.sync_data()
}

impl SnapshotStore {
    /// Opens (creating) the directory and removes temporary files a crash left behind.
    pub fn open(dir: &Path) -> io::Result<SnapshotStore> {
        fs::create_dir_all(dir)?;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // `.tmp` is what releases before streaming snapshots left behind.
            if name.starts_with(PARTIAL_PREFIX) || name.ends_with(".tmp") {
                tracing::info!(file = %entry.path().display(), "removing an unfinished snapshot");
                fs::remove_file(entry.path())?;
            }
        }
        Ok(SnapshotStore {
            dir: dir.to_path_buf(),
        })
    }

    fn path_for(&self, index: u64) -> PathBuf {
        self.dir.join(format!("snapshot-{index:020}.snap"))
    }

    /// Starts a snapshot with this meta; the caller writes its data, in this build's format.
    pub fn create(&self, meta: &SnapshotMeta) -> io::Result<SnapshotWriter> {
        self.create_in(meta, codec::SNAPSHOT_FORMAT)
    }

    /// Starts a snapshot whose data is in `format`: one received from a leader is stored in the
    /// format the leader wrote it in.
    pub fn create_in(&self, meta: &SnapshotMeta, format: u8) -> io::Result<SnapshotWriter> {
        let meta_bytes = codec::to_bytes(meta)?;
        let tmp = tempfile::Builder::new()
            .prefix(PARTIAL_PREFIX)
            .tempfile_in(&self.dir)?;
        let mut out = BufWriter::with_capacity(1 << 20, tmp);
        let meta_len = (meta_bytes.len() as u64).to_le_bytes();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&meta_len);
        crc.update(&meta_bytes);
        out.write_all(&codec::snapshot_magic(format))?;
        out.write_all(&[0; 4])?; // the checksum, written by `finish`
        out.write_all(&meta_len)?;
        out.write_all(&meta_bytes)?;
        Ok(SnapshotWriter {
            out,
            crc,
            data_start: HEADER_LEN + meta_bytes.len() as u64,
            data_len: 0,
            format,
            unpushed: 0,
            in_flight: (0, 0),
        })
    }

    /// Makes a finished snapshot the current one, then removes older ones.
    pub fn install(&self, meta: &SnapshotMeta, snapshot: SnapshotFile) -> io::Result<SnapshotFile> {
        let index = meta.last_log_id.as_ref().map(|l| l.index).unwrap_or(0);
        let path = self.path_for(index);
        let (data_start, data_len, format) =
            (snapshot.data_start, snapshot.data_len, snapshot.format);
        let file = match snapshot.file {
            Backing::Pending(tmp) => tmp.persist(&path).map_err(|e| e.error)?,
            // Already in place (restored at start and installed again by openraft).
            Backing::Installed { file, path: from } if from == path => file,
            // Another store's file: copied, never moved out from under it.
            Backing::Installed { file, .. } => {
                let source = SnapshotFile {
                    file: Backing::Installed {
                        file,
                        path: PathBuf::new(),
                    },
                    data_start,
                    data_len,
                    format,
                };
                let mut copy = self.create_in(meta, format)?;
                io::copy(&mut source.data_reader(), &mut copy)?;
                return self.install(meta, copy.finish()?);
            }
        };
        for (old_index, old_path) in self.list()? {
            if old_index != index {
                fs::remove_file(old_path)?;
            }
        }
        sync_dir(&self.dir)?;
        Ok(SnapshotFile {
            file: Backing::Installed { file, path },
            data_start,
            data_len,
            format,
        })
    }

    fn list(&self) -> io::Result<Vec<(u64, PathBuf)>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(idx) = name
                .strip_prefix("snapshot-")
                .and_then(|s| s.strip_suffix(".snap"))
                .and_then(|s| s.parse::<u64>().ok())
            {
                found.push((idx, entry.path()));
            }
        }
        found.sort();
        Ok(found)
    }

    /// Size of the newest snapshot's file (0: none), unverified: for the snapshot policy.
    pub fn latest_len(&self) -> io::Result<u64> {
        match self.list()?.pop() {
            Some((_, path)) => Ok(fs::metadata(path)?.len()),
            None => Ok(0),
        }
    }

    /// The newest snapshot, verified. A corrupt newest snapshot is an error, not a fallback:
    /// the log before it may already be purged.
    pub fn load_latest(&self) -> io::Result<Option<(SnapshotMeta, SnapshotFile)>> {
        let Some((_, path)) = self.list()?.pop() else {
            return Ok(None);
        };
        let file = OpenOptions::new().read(true).open(&path)?;
        let (meta, data_start, data_len, format) = verify(&file, &path)?;
        Ok(Some((
            meta,
            SnapshotFile {
                file: Backing::Installed { file, path },
                data_start,
                data_len,
                format,
            },
        )))
    }
}

/// Checks a snapshot file's header and checksum, reading it once in bounded pieces; returns
/// its meta, where the data lies and its format.
fn verify(file: &File, path: &Path) -> io::Result<(SnapshotMeta, u64, u64, u8)> {
    let corrupt = |why: &str| {
        invalid_data(format!(
            "snapshot {} is corrupt ({why}); refusing to start",
            path.display()
        ))
    };
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    read_full(&mut reader, &mut magic)?;
    let format = codec::check_snapshot_magic(&magic, path)?;
    if file_len < HEADER_LEN {
        return Err(corrupt("truncated header"));
    }
    let mut word = [0u8; 4];
    reader.read_exact(&mut word)?;
    let crc = u32::from_le_bytes(word);
    let mut len = [0u8; 8];
    reader.read_exact(&mut len)?;
    let meta_len = u64::from_le_bytes(len);
    if meta_len > file_len - HEADER_LEN || meta_len > 1 << 30 {
        return Err(corrupt("meta length out of range"));
    }
    let mut meta_bytes = vec![0u8; meta_len as usize];
    reader.read_exact(&mut meta_bytes)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len);
    hasher.update(&meta_bytes);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    if hasher.finalize() != crc {
        return Err(corrupt("checksum mismatch"));
    }
    let meta: SnapshotMeta =
        codec::from_bytes(&meta_bytes, "snapshot meta").map_err(|e| corrupt(&e.to_string()))?;
    let data_start = HEADER_LEN + meta_len;
    Ok((meta, data_start, file_len - data_start, format))
}

/// Fills `buf` as far as the file goes; a short file leaves zeros, which the magic check refuses.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = reader.read(&mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{LogId, StoredMembership};

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(LogId::new(
                openraft::impls::leader_id_adv::LeaderId {
                    term: 1,
                    node_id: 1,
                },
                index,
            )),
            last_membership: StoredMembership::default(),
        }
    }

    fn save(store: &SnapshotStore, index: u64, data: &[u8]) -> SnapshotFile {
        let mut w = store.create(&meta(index)).unwrap();
        w.write_all(data).unwrap();
        let file = w.finish().unwrap();
        store.install(&meta(index), file).unwrap()
    }

    fn read_all(file: &SnapshotFile) -> Vec<u8> {
        let mut out = Vec::new();
        file.data_reader().read_to_end(&mut out).unwrap();
        out
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn save_load_keeps_only_latest() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        assert!(store.load_latest().unwrap().is_none());
        save(&store, 10, b"ten");
        let installed = save(&store, 20, b"twenty");
        assert_eq!(read_all(&installed), b"twenty");
        let (m, file) = store.load_latest().unwrap().unwrap();
        assert_eq!(m.last_log_id.unwrap().index, 20);
        assert_eq!(read_all(&file), b"twenty");
        assert_eq!(file.data_len(), 6);
        assert_eq!(store.list().unwrap().len(), 1);
        // Installing the current snapshot again (openraft does at start) changes nothing.
        store.install(&m, file).unwrap();
        assert_eq!(entries(dir.path()).len(), 1);
    }

    #[test]
    fn data_larger_than_the_buffers_round_trips_and_reads_at_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        save(&store, 3, &data);
        let (_, file) = store.load_latest().unwrap().unwrap();
        assert_eq!(read_all(&file), data);
        let mut buf = [0u8; 10];
        assert_eq!(file.read_data_at(2_999_995, &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], &data[2_999_995..]);
        assert_eq!(file.read_data_at(3_000_000, &mut buf).unwrap(), 0);
    }

    #[test]
    fn a_snapshot_of_another_store_is_copied_not_moved() {
        let a_dir = tempfile::tempdir().unwrap();
        let b_dir = tempfile::tempdir().unwrap();
        let a = SnapshotStore::open(a_dir.path()).unwrap();
        let b = SnapshotStore::open(b_dir.path()).unwrap();
        save(&a, 7, b"seven");
        let (m, file) = a.load_latest().unwrap().unwrap();
        b.install(&m, file).unwrap();
        for store in [&a, &b] {
            let (m, file) = store.load_latest().unwrap().unwrap();
            assert_eq!(m.last_log_id.unwrap().index, 7);
            assert_eq!(read_all(&file), b"seven");
        }
    }

    #[test]
    fn unfinished_snapshots_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        save(&store, 1, b"one");
        // Abandoned while writing (a leader's stream cut off).
        let mut w = store.create(&meta(2)).unwrap();
        w.write_all(b"half").unwrap();
        drop(w);
        // Finished but never installed (openraft refused it).
        let mut w = store.create(&meta(3)).unwrap();
        w.write_all(b"whole").unwrap();
        drop(w.finish().unwrap());
        assert_eq!(entries(dir.path()).len(), 1);
        // A crash leaves a temporary file; the next open removes it.
        fs::write(dir.path().join(format!("{PARTIAL_PREFIX}x")), b"junk").unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        assert_eq!(entries(dir.path()).len(), 1);
        let (m, _) = store.load_latest().unwrap().unwrap();
        assert_eq!(m.last_log_id.unwrap().index, 1);
    }

    #[test]
    fn corrupt_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        save(&store, 5, b"data");
        let path = store.list().unwrap()[0].1.clone();
        let good = fs::read(&path).unwrap();
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        fs::write(&path, &flipped).unwrap();
        assert!(store.load_latest().is_err());
        for cut in [0, 5, 8, 15, 21, good.len() - 1] {
            fs::write(&path, &good[..cut]).unwrap();
            let e = store.load_latest().unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "cut at {cut}: {e}");
        }
    }
}
