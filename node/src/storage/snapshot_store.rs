//! Snapshot files: `snapshots/snapshot-<index>.snap`, each written atomically.
//!
//! Format: `[magic 8 bytes][crc32 u32 LE][meta_len u64 LE][meta (bincode)][data]`, the checksum
//! covering everything after it; the magic's last byte is the format (`codec`). Only the newest
//! snapshot is kept.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::fsutil::{atomic_write, invalid_data, sync_dir};
use crate::codec;
use crate::raft::SnapshotMeta;

#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
}

impl SnapshotStore {
    pub fn open(dir: &Path) -> io::Result<SnapshotStore> {
        fs::create_dir_all(dir)?;
        Ok(SnapshotStore {
            dir: dir.to_path_buf(),
        })
    }

    fn path_for(&self, index: u64) -> PathBuf {
        self.dir.join(format!("snapshot-{index:020}.snap"))
    }

    /// Durably stores a snapshot, then removes older ones.
    pub fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<u64> {
        let meta_bytes = codec::to_bytes(meta)?;
        let mut body = Vec::with_capacity(8 + meta_bytes.len() + data.len());
        body.extend_from_slice(&(meta_bytes.len() as u64).to_le_bytes());
        body.extend_from_slice(&meta_bytes);
        body.extend_from_slice(data);
        let mut file = Vec::with_capacity(12 + body.len());
        file.extend_from_slice(&codec::snapshot_magic());
        file.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        file.extend_from_slice(&body);
        let index = meta.last_log_id.as_ref().map(|l| l.index).unwrap_or(0);
        let path = self.path_for(index);
        atomic_write(&path, &file)?;
        for (old_index, old_path) in self.list()? {
            if old_index < index {
                fs::remove_file(old_path)?;
            }
        }
        sync_dir(&self.dir)?;
        Ok(file.len() as u64)
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

    /// The newest snapshot, verified. A corrupt newest snapshot is an error, not a fallback:
    /// the log before it may already be purged.
    pub fn load_latest(&self) -> io::Result<Option<(SnapshotMeta, Vec<u8>)>> {
        let Some((_, path)) = self.list()?.pop() else {
            return Ok(None);
        };
        let bytes = fs::read(&path)?;
        let corrupt = |why: &str| {
            invalid_data(format!(
                "snapshot {} is corrupt ({why}); refusing to start",
                path.display()
            ))
        };
        codec::check_snapshot_magic(&bytes, &path)?;
        if bytes.len() < 20 {
            return Err(corrupt("truncated header"));
        }
        let crc = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        let body = &bytes[12..];
        if crc32fast::hash(body) != crc {
            return Err(corrupt("checksum mismatch"));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&body[..8]);
        let meta_len = u64::from_le_bytes(len) as usize;
        if 8 + meta_len > body.len() {
            return Err(corrupt("meta length out of range"));
        }
        let meta: SnapshotMeta = codec::from_bytes(&body[8..8 + meta_len], "snapshot meta")
            .map_err(|e| corrupt(&e.to_string()))?;
        Ok(Some((meta, body[8 + meta_len..].to_vec())))
    }
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

    #[test]
    fn save_load_keeps_only_latest() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        assert!(store.load_latest().unwrap().is_none());
        store.save(&meta(10), b"ten").unwrap();
        store.save(&meta(20), b"twenty").unwrap();
        let (m, data) = store.load_latest().unwrap().unwrap();
        assert_eq!(m.last_log_id.unwrap().index, 20);
        assert_eq!(data, b"twenty");
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[test]
    fn corrupt_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        store.save(&meta(5), b"data").unwrap();
        let path = store.list().unwrap()[0].1.clone();
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert!(store.load_latest().is_err());
    }
}
