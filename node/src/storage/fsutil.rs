//! Crash-safe file helpers shared by the vote, meta and snapshot files (their formats are in
//! `codec`).

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

pub use crate::codec::invalid_data;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{load_state_file, state_file, LegacyStateFile};

    #[test]
    fn atomic_write_round_trips_and_detects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let read = |p: &Path| load_state_file(p, LegacyStateFile::Checksummed);
        atomic_write(&path, &state_file(b"hello")).unwrap();
        assert_eq!(read(&path).unwrap().as_deref(), Some(&b"hello"[..]));
        let mut raw = fs::read(&path).unwrap();
        raw[12] ^= 0xff;
        fs::write(&path, raw).unwrap();
        assert_eq!(read(&path).unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert!(read(&dir.path().join("absent")).unwrap().is_none());
    }
}
