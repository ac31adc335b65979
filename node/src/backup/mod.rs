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
//! | n | header, JSON ([`BackupHeader`]): cluster, revision, Raft index, time, version, sizes |
//! | `dataBytes` | the state, exactly as a snapshot file holds it (format `dataFormat`) |
//! | 0..511 | zeros, so that the file's size is 32 more than a multiple of 512 |
//! | 8 | `CKVBKEND` |
//! | 32 | SHA-256 of everything before it |
//!
//! The checksum comes last because the file is streamed: a reader that hits the end early, or
//! finds another digest, refuses the whole file before using any of it. The padding and the
//! final 32-byte SHA-256 are etcd's snapshot convention, which `etcdctl snapshot save` checks
//! (by the size) before it keeps a file: served as etcd's `Maintenance.Snapshot`, a backup is
//! saved by etcdctl unchanged.

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
const MAGIC_PREFIX: &[u8; 7] = b"CKVBACK";
const TRAILER_MAGIC: &[u8; 8] = b"CKVBKEND";
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
    /// Size of the state inside.
    pub data_bytes: u64,
}

/// Zeros between the state and the trailer, for a file of `before` bytes up to them.
fn padding(before: u64) -> u64 {
    (512 - (before + 8) % 512) % 512
}

impl BackupHeader {
    /// Bytes of the whole file: magic, header, data, padding, trailer.
    pub fn file_bytes(&self) -> io::Result<u64> {
        let before = 8 + 4 + self.encoded()?.len() as u64 + self.data_bytes;
        Ok(before + padding(before) + 8 + 32)
    }

    fn encoded(&self) -> io::Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(io::Error::other)
    }
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

/// Writes a backup of `kv` and `auth` described by `header` (whose `data_bytes` must be the
/// encoded size of that state) to `out`; returns the checksum, hex.
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
    let encoded = header.encoded()?;
    w.write_all(MAGIC_PREFIX)?;
    w.write_all(&[b'0' + BACKUP_FORMAT])?;
    w.write_all(&(encoded.len() as u32).to_le_bytes())?;
    w.write_all(&encoded)?;
    let before = w.written;
    crate::storage::write_state(&mut w, kv, auth)?;
    let data = w.written - before;
    if data != header.data_bytes {
        return Err(io::Error::other(format!(
            "the state encoded to {data} bytes, not the {} its header announced",
            header.data_bytes
        )));
    }
    let zeros = vec![0u8; padding(w.written) as usize];
    w.write_all(&zeros)?;
    w.write_all(TRAILER_MAGIC)?;
    let digest = w.hash.finalize();
    let mut out = w.inner;
    out.write_all(&digest)?;
    out.flush()?;
    Ok(hex(&digest))
}

/// The encoded size of the state a backup of `kv` and `auth` carries, without encoding it.
pub fn data_bytes(kv: &MvccStore, auth: &AuthStore) -> u64 {
    crate::storage::state_len(kv, auth)
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), BackupError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => {
            BackupError::Truncated(format!("it ends inside the {what}"))
        }
        _ => BackupError::Io(e),
    })
}

/// Reads the magic and the header.
fn read_header(r: &mut impl Read) -> Result<(BackupHeader, Vec<u8>), BackupError> {
    let mut magic = [0u8; 8];
    let mut got = 0;
    while got < magic.len() {
        match r.read(&mut magic[got..])? {
            0 => break,
            n => got += n,
        }
    }
    if got < 7 || &magic[..7] != MAGIC_PREFIX {
        return Err(BackupError::NotABackup {
            found: String::from_utf8_lossy(&magic[..got]).into_owned(),
        });
    }
    if got < 8 {
        return Err(BackupError::Truncated("it ends inside the magic".into()));
    }
    let format = magic[7].wrapping_sub(b'0');
    if format == 0 || format > 9 {
        return Err(BackupError::BadHeader(format!(
            "format byte {:?} is not a digit",
            magic[7] as char
        )));
    }
    if format > BACKUP_FORMAT {
        return Err(BackupError::TooNew { found: format });
    }
    let mut len = [0u8; 4];
    read_exact(r, &mut len, "header length")?;
    let len = u32::from_le_bytes(len);
    if len > MAX_HEADER_BYTES {
        return Err(BackupError::BadHeader(format!(
            "it claims a {len}-byte header; headers are under {MAX_HEADER_BYTES} bytes"
        )));
    }
    let mut header = vec![0u8; len as usize];
    read_exact(r, &mut header, "header")?;
    let parsed: BackupHeader =
        serde_json::from_slice(&header).map_err(|e| BackupError::BadHeader(e.to_string()))?;
    let mut prefix = magic.to_vec();
    prefix.extend_from_slice(&(len).to_le_bytes());
    prefix.extend_from_slice(&header);
    Ok((parsed, prefix))
}

/// A backup whose every byte was read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub header: BackupHeader,
    /// SHA-256, hex.
    pub checksum: String,
    /// Bytes of the whole file.
    pub file_bytes: u64,
    /// Where the state starts in the file.
    pub data_offset: u64,
}

/// Reads a backup from start to end and checks it: magic and format, header, the announced
/// length of the state, the trailer and the checksum, and that nothing follows. Reads in
/// constant memory whatever the backup's size.
pub fn verify(mut r: impl Read) -> Result<Verified, BackupError> {
    let (header, prefix) = read_header(&mut r)?;
    let mut hash = Sha256::new();
    hash.update(&prefix);
    let mut left = header.data_bytes;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(BackupError::Truncated(format!(
                "the header announces {} bytes of state, the file holds {}",
                header.data_bytes,
                header.data_bytes - left
            )));
        }
        hash.update(&buf[..n]);
        left -= n as u64;
    }
    let before = prefix.len() as u64 + header.data_bytes;
    let pad = padding(before) as usize;
    let mut trailer = vec![0u8; pad + 8];
    read_exact(&mut r, &mut trailer, "checksum trailer")?;
    if trailer[..pad].iter().any(|b| *b != 0) || &trailer[pad..] != TRAILER_MAGIC {
        return Err(BackupError::Corrupt(
            "the trailer after the state is not where the header says the state ends".into(),
        ));
    }
    hash.update(&trailer);
    let mut digest = [0u8; 32];
    read_exact(&mut r, &mut digest, "checksum")?;
    let found = hex(&hash.finalize());
    let recorded = hex(&digest);
    if found != recorded {
        return Err(BackupError::ChecksumMismatch { recorded, found });
    }
    let mut extra = [0u8; 1];
    if r.read(&mut extra)? != 0 {
        return Err(BackupError::Corrupt(
            "there are bytes after the checksum trailer".into(),
        ));
    }
    Ok(Verified {
        data_offset: prefix.len() as u64,
        file_bytes: before + pad as u64 + 40,
        header,
        checksum: found,
    })
}

/// Verifies the backup at `path`.
pub fn verify_file(path: &Path) -> Result<Verified, BackupError> {
    let file = std::fs::File::open(path)?;
    verify(io::BufReader::with_capacity(1 << 20, file))
}

/// Verifies the backup at `path`, then reads its state (the second pass reads only what the
/// first proved intact).
pub fn load_file(path: &Path) -> Result<(Verified, MvccStore, AuthStore), BackupError> {
    use std::io::Seek;
    let verified = verify_file(path)?;
    let mut file = std::fs::File::open(path)?;
    file.seek(io::SeekFrom::Start(verified.data_offset))?;
    let reader = io::BufReader::with_capacity(1 << 20, file).take(verified.header.data_bytes);
    let (kv, auth) = crate::storage::read_state(
        reader,
        verified.header.data_format,
        verified.header.data_bytes,
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
            data_bytes: data_bytes(kv, &auth),
        };
        let mut out = Vec::new();
        write(&mut out, &header, kv, &auth).expect("write");
        assert_eq!(out.len() as u64, header.file_bytes().expect("size"));
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
        assert!(err(&longer).contains("after the checksum"));
        // A newer format, and something else entirely.
        let mut newer = bytes.clone();
        newer[7] = b'2';
        assert!(err(&newer).contains("newer release"), "{}", err(&newer));
        assert!(err(b"SQLite format 3\0").contains("not a ConcordKV backup"));
    }
}
