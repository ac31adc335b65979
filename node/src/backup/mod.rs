//! Backups: a consistent, point-in-time copy of a member's whole state as one self-describing
//! file, streamed as it is written (`serve`), checked before it is trusted (`verify`), and
//! turned into the data dirs of a new cluster (`restore`).
//!
//! Format 1, all integers little-endian:
//!
//! | bytes | what |
//! |---|---|
//! | 8 | magic `CKVBACK` and the format as one ASCII digit |
//! | 4 | header length |
//! | n | header, JSON ([`BackupHeader`]): cluster, revision, Raft index, time, version |
//! | d | the state, exactly as a snapshot file holds it (format `dataFormat`) |
//! | 0..511 | zeros, so that the file's size is 32 more than a multiple of 512 |
//! | 8 | `CKVBKEND` |
//! | 8 | d, the state's length |
//! | 32 | SHA-256 of everything before it |
//!
//! Everything that is only known once the state is written (its length, the checksum) comes
//! last, so the file is streamed in one pass over the store; a reader checks it in one pass too
//! ([`Verifier`]) and refuses the whole file, before using any of it, when it ends early, holds
//! another digest or lengths that do not add up. The padding and the final 32-byte SHA-256 are
//! etcd's snapshot convention, which `etcdctl snapshot save` checks (by the size) before it
//! keeps a file: served as etcd's `Maintenance.Snapshot`, a backup is saved by etcdctl as is.

pub mod bootstrap;
pub mod restore;
pub mod serve;

use std::io::{self, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::AuthStore;
use crate::store::mvcc::MvccStore;

/// The backup format this build writes and the newest it reads.
pub const BACKUP_FORMAT: u8 = 1;
pub const MAGIC_PREFIX: &[u8; 7] = b"CKVBACK";
const TRAILER_MAGIC: &[u8; 8] = b"CKVBKEND";
/// Trailer magic, state length, checksum.
const TRAILER_LEN: usize = 8 + 8 + 32;
/// A header is a few hundred bytes; anything near this is not one.
const MAX_HEADER_BYTES: u32 = 64 * 1024;

/// What a backup says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupHeader {
    /// The backup format (`BACKUP_FORMAT` when written by this build).
    pub format: u8,
    /// The cluster it was taken from.
    pub cluster_id: String,
    /// The member that wrote it.
    pub member: String,
    /// The store's revision and compaction point at the moment of the copy.
    pub revision: u64,
    pub compacted: u64,
    /// Keys that exist at `revision`.
    pub keys: u64,
    /// The last Raft entry the copy includes, and its term.
    pub raft_index: u64,
    pub raft_term: u64,
    /// When the copy was taken (RFC 3339, UTC).
    pub created: String,
    /// The concord-node version that wrote it.
    pub node_version: String,
    /// The format of the state inside (a snapshot file's data format).
    pub data_format: u8,
}

/// Zeros between the state and the trailer, for a file of `before` bytes up to them.
fn padding(before: u64) -> u64 {
    (512 - (before + 16) % 512) % 512
}

/// Why a file is not a backup this build can use. Each says what is wrong with the file, not
/// only that something is.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not a ConcordKV backup: it starts with {found:?}, not CKVBACK (an etcd snapshot is restored with etcdutl, not concordctl)")]
    NotABackup { found: String },
    #[error("backup format {found}, but this concordctl ({}) reads formats up to {BACKUP_FORMAT}: it was written by a newer release; use that release (or newer) to restore it", env!("CARGO_PKG_VERSION"))]
    TooNew { found: u8 },
    #[error("the backup's header is unreadable: {0}")]
    BadHeader(String),
    #[error("the backup is truncated: {0}")]
    Truncated(String),
    #[error("the backup is corrupt: its checksum is {found}, but it records {recorded} (the file was changed or damaged after it was written)")]
    ChecksumMismatch { recorded: String, found: String },
    #[error("the backup is corrupt: {0}")]
    Corrupt(String),
    #[error("reading the backup: {0}")]
    Io(#[from] io::Error),
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A writer that hashes what passes through and counts it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    written: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn encoded(header: &BackupHeader) -> io::Result<Vec<u8>> {
    serde_json::to_vec(header).map_err(io::Error::other)
}

/// Writes a backup of `kv` and `auth` described by `header` to `out`, in one pass over the
/// store; returns the checksum, hex.
pub fn write(
    out: impl Write,
    header: &BackupHeader,
    kv: &MvccStore,
    auth: &AuthStore,
) -> io::Result<String> {
    let mut w = Hashing {
        inner: out,
        hash: Sha256::new(),
        written: 0,
    };
    let head = encoded(header)?;
    w.write_all(MAGIC_PREFIX)?;
    w.write_all(&[b'0' + BACKUP_FORMAT])?;
    w.write_all(&(head.len() as u32).to_le_bytes())?;
    w.write_all(&head)?;
    let before = w.written;
    crate::storage::write_state(&mut w, kv, auth)?;
    let data = w.written - before;
    let zeros = vec![0u8; padding(w.written) as usize];
    w.write_all(&zeros)?;
    w.write_all(TRAILER_MAGIC)?;
    w.write_all(&data.to_le_bytes())?;
    let digest = w.hash.finalize();
    let mut out = w.inner;
    out.write_all(&digest)?;
    out.flush()?;
    Ok(hex(&digest))
}

/// A backup whose every byte was read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub header: BackupHeader,
    /// SHA-256, hex.
    pub checksum: String,
    /// Bytes of the whole file.
    pub file_bytes: u64,
    /// Where the state starts in the file, and its length.
    pub data_offset: u64,
    pub data_bytes: u64,
}

/// Checks a backup as its bytes pass, in constant memory: feed it with [`Verifier::update`]
/// (a download as it arrives, a file as it is read), then [`Verifier::finish`].
pub struct Verifier {
    /// Bytes before the header has been read whole.
    head: Vec<u8>,
    header: Option<(BackupHeader, u64)>,
    hash: Sha256,
    /// The latest bytes, not hashed yet: they may be the trailer and its padding.
    tail: Vec<u8>,
    bytes: u64,
}

/// Bytes held back from the hash: the largest padding and the trailer.
const HELD: usize = 511 + TRAILER_LEN;

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            head: Vec::new(),
            header: None,
            hash: Sha256::new(),
            tail: Vec::with_capacity(2 * HELD),
            bytes: 0,
        }
    }
}

impl Verifier {
    pub fn update(&mut self, mut chunk: &[u8]) -> Result<(), BackupError> {
        self.bytes += chunk.len() as u64;
        if self.header.is_none() {
            let take = chunk.len().min(12 + MAX_HEADER_BYTES as usize);
            self.head.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            match parse_head(&self.head)? {
                None => {
                    self.tail.extend_from_slice(chunk);
                    return Ok(());
                }
                Some((header, len)) => {
                    self.hash.update(&self.head[..len]);
                    let rest = self.head.split_off(len);
                    self.header = Some((header, len as u64));
                    self.head = Vec::new();
                    self.tail.extend_from_slice(&rest);
                }
            }
        }
        self.tail.extend_from_slice(chunk);
        if self.tail.len() > 2 * HELD {
            let cut = self.tail.len() - HELD;
            self.hash.update(&self.tail[..cut]);
            self.tail.drain(..cut);
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<Verified, BackupError> {
        let Some((header, prefix)) = self.header.take() else {
            let head = std::mem::take(&mut self.head);
            return match parse_head(&head)? {
                Some(_) => Err(BackupError::Truncated("it ends after its header".into())),
                None => Err(BackupError::Truncated("it ends inside its header".into())),
            };
        };
        let total = self.bytes;
        if total < prefix + TRAILER_LEN as u64 || self.tail.len() < TRAILER_LEN {
            return Err(BackupError::Truncated(format!(
                "{total} bytes, too few to hold the state and the checksum trailer"
            )));
        }
        let t = &self.tail[self.tail.len() - TRAILER_LEN..];
        let cut_short = || {
            BackupError::Truncated(format!(
                "it does not end with its checksum trailer ({total} bytes: cut short, or bytes added after the end)"
            ))
        };
        if &t[..8] != TRAILER_MAGIC {
            return Err(cut_short());
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&t[8..16]);
        let data_bytes = u64::from_le_bytes(len);
        let pad = padding(prefix.saturating_add(data_bytes));
        let expected = prefix
            .checked_add(data_bytes)
            .and_then(|n| n.checked_add(pad + TRAILER_LEN as u64));
        if expected != Some(total) {
            return Err(cut_short());
        }
        let zeros_from = self.tail.len() - TRAILER_LEN - pad as usize;
        if self.tail[zeros_from..self.tail.len() - TRAILER_LEN]
            .iter()
            .any(|b| *b != 0)
        {
            return Err(BackupError::Corrupt(
                "the padding before the trailer is not zeros".into(),
            ));
        }
        let keep = self.tail.len() - 32;
        self.hash.update(&self.tail[..keep]);
        let found = hex(&self.hash.finalize());
        let recorded = hex(&self.tail[keep..]);
        if found != recorded {
            return Err(BackupError::ChecksumMismatch { recorded, found });
        }
        Ok(Verified {
            header,
            checksum: found,
            file_bytes: total,
            data_offset: prefix,
            data_bytes,
        })
    }
}

/// The header at the start of `bytes` and the length of everything up to its end; None while
/// more bytes are needed.
fn parse_head(bytes: &[u8]) -> Result<Option<(BackupHeader, usize)>, BackupError> {
    let n = bytes.len().min(7);
    if bytes[..n] != MAGIC_PREFIX[..n] {
        return Err(BackupError::NotABackup {
            found: String::from_utf8_lossy(&bytes[..bytes.len().min(8)]).into_owned(),
        });
    }
    if bytes.len() < 12 {
        return Ok(None);
    }
    let format = bytes[7].wrapping_sub(b'0');
    if format == 0 || format > 9 {
        return Err(BackupError::BadHeader(format!(
            "format byte {:?} is not a digit",
            bytes[7] as char
        )));
    }
    if format > BACKUP_FORMAT {
        return Err(BackupError::TooNew { found: format });
    }
    let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if len > MAX_HEADER_BYTES {
        return Err(BackupError::BadHeader(format!(
            "it claims a {len}-byte header; headers are under {MAX_HEADER_BYTES} bytes"
        )));
    }
    let end = 12 + len as usize;
    if bytes.len() < end {
        return Ok(None);
    }
    let header: BackupHeader = serde_json::from_slice(&bytes[12..end])
        .map_err(|e| BackupError::BadHeader(e.to_string()))?;
    Ok(Some((header, end)))
}

/// Reads a backup from start to end and checks it (see [`Verifier`]).
pub fn verify(mut r: impl Read) -> Result<Verified, BackupError> {
    let mut v = Verifier::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return v.finish();
        }
        v.update(&buf[..n])?;
    }
}

/// Verifies the backup at `path`.
pub fn verify_file(path: &Path) -> Result<Verified, BackupError> {
    let file = std::fs::File::open(path)?;
    verify(file)
}

/// Verifies the backup at `path`, then reads its state (the second pass reads only what the
/// first proved intact).
pub fn load_file(path: &Path) -> Result<(Verified, MvccStore, AuthStore), BackupError> {
    use std::io::Seek;
    let verified = verify_file(path)?;
    let mut file = std::fs::File::open(path)?;
    file.seek(io::SeekFrom::Start(verified.data_offset))?;
    // Buffered outermost: bincode reads field by field, each read then served from the buffer.
    let reader = io::BufReader::with_capacity(1 << 20, file.take(verified.data_bytes));
    let (kv, auth) = crate::storage::read_state(
        reader,
        verified.header.data_format,
        verified.data_bytes,
        format_args!("the state in backup {}", path.display()),
    )
    .map_err(|e| BackupError::Corrupt(e.to_string()))?;
    Ok((verified, kv, auth))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::mvcc::{Op, PutRequest, TxnRequest};

    fn store(keys: u64) -> MvccStore {
        let mut kv = MvccStore::default();
        for i in 0..keys {
            let put = PutRequest {
                key: format!("k{i:05}").into_bytes(),
                value: vec![b'v'; 100],
                lease: 0,
                prev_kv: false,
                ignore_value: false,
                ignore_lease: false,
            };
            let txn = TxnRequest {
                success: vec![Op::Put(put)],
                ..Default::default()
            };
            let _ = kv.apply_txn(i + 1, &txn);
        }
        kv
    }

    fn backup(kv: &MvccStore) -> (Vec<u8>, BackupHeader) {
        let auth = AuthStore::default();
        let header = BackupHeader {
            format: BACKUP_FORMAT,
            cluster_id: "c".into(),
            member: "n1".into(),
            revision: kv.revision(),
            compacted: kv.compacted(),
            keys: kv.len(),
            raft_index: kv.revision(),
            raft_term: 1,
            created: "2026-12-05T00:00:00Z".into(),
            node_version: "test".into(),
            data_format: crate::codec::SNAPSHOT_FORMAT,
        };
        let mut out = Vec::new();
        write(&mut out, &header, kv, &auth).expect("write");
        (out, header)
    }

    #[test]
    fn a_backup_reads_back_as_written() {
        let kv = store(500);
        let (bytes, header) = backup(&kv);
        let v = verify(&bytes[..]).expect("valid");
        assert_eq!(v.header, header);
        // etcd's convention, which etcdctl checks: the size, and a SHA-256 of the rest last.
        assert_eq!(bytes.len() % 512, 32);
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        assert_eq!(hex(&Sha256::digest(body)), hex(sum));
        assert_eq!(v.checksum, hex(sum));
        assert_eq!(v.file_bytes, bytes.len() as u64);
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("b");
        std::fs::write(&path, &bytes).expect("write");
        let (_, back, _) = load_file(&path).expect("load");
        assert_eq!(back, kv);
    }

    #[test]
    fn damaged_files_are_refused_with_what_is_wrong() {
        let (bytes, _) = backup(&store(200));
        let err = |b: &[u8]| verify(b).expect_err("refused").to_string();
        // Every truncation.
        for cut in [
            0,
            3,
            8,
            10,
            40,
            bytes.len() / 2,
            bytes.len() - 20,
            bytes.len() - 1,
        ] {
            let e = err(&bytes[..cut]);
            assert!(
                e.contains("truncated") || e.contains("not a ConcordKV backup"),
                "cut at {cut}: {e}"
            );
        }
        // A flipped byte in the state.
        let mut flipped = bytes.clone();
        let at = bytes.len() / 2;
        flipped[at] ^= 0x40;
        assert!(err(&flipped).contains("checksum"), "{}", err(&flipped));
        // Bytes after the end.
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(
            err(&longer).contains("added after the end"),
            "{}",
            err(&longer)
        );
        // Checked the same whatever the pieces it arrives in.
        for piece in [1, 13, 511, 4096] {
            let mut v = Verifier::default();
            for p in bytes.chunks(piece) {
                v.update(p).expect("no early refusal");
            }
            assert!(v.finish().is_ok(), "pieces of {piece}");
        }
        // A newer format, and something else entirely.
        let mut newer = bytes.clone();
        newer[7] = b'2';
        assert!(err(&newer).contains("newer release"), "{}", err(&newer));
        assert!(err(b"SQLite format 3\0").contains("not a ConcordKV backup"));
    }
}
