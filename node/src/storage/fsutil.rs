//! Crash-safe file helpers shared by the vote, meta and snapshot files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Replaces `path` with `bytes` so that after a crash the file holds either the old or the new
/// contents in full: write a temp file, fsync it, rename over, fsync the directory.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no parent directory", path.display())))?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Makes directory entry changes (create, rename, unlink) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Frames `payload` as `[crc32 u32 LE][payload]`.
pub fn with_checksum(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Undoes [`with_checksum`], failing with `InvalidData` on a mismatch.
pub fn verify_checksum<'a>(framed: &'a [u8], what: &Path) -> io::Result<&'a [u8]> {
    if framed.len() < 4 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is truncated ({} bytes)", what.display(), framed.len()),
        ));
    }
    let (crc, payload) = framed.split_at(4);
    let expected = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(payload) != expected {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} fails its checksum: the file is corrupt", what.display()),
        ));
    }
    Ok(payload)
}

/// Reads a checksummed file written by [`atomic_write`]`(with_checksum(..))`; `None` if absent.
pub fn read_checked(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(verify_checksum(&bytes, path)?.to_vec())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn invalid_data(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_round_trips_and_detects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        atomic_write(&path, &with_checksum(b"hello")).unwrap();
        assert_eq!(read_checked(&path).unwrap().as_deref(), Some(&b"hello"[..]));
        let mut raw = fs::read(&path).unwrap();
        raw[5] ^= 0xff;
        fs::write(&path, raw).unwrap();
        assert_eq!(
            read_checked(&path).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert!(read_checked(&dir.path().join("absent")).unwrap().is_none());
    }
}
