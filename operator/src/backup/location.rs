//! Pure pieces of a backup's journey: the object name it gets, what its first bytes say
//! (the header concord-node writes, `node/src/backup`), and its checksum checked as it passes.

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The backup file's magic (`CKVBACK` and the format digit) and the largest header.
const MAGIC_PREFIX: &[u8; 7] = b"CKVBACK";
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Newest backup format this operator understands.
pub const BACKUP_FORMAT: u8 = 1;

/// What the operator reads from a backup's header.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    pub format: u8,
    pub cluster_id: String,
    pub member: String,
    pub revision: u64,
    pub keys: u64,
    pub created: String,
}

/// The header at the start of `bytes`: None while more bytes are needed, an error when they
/// are not a backup this operator can handle.
pub fn parse_header(bytes: &[u8]) -> Option<Result<Header, String>> {
    if bytes.len() < 12 {
        return None;
    }
    if &bytes[..7] != MAGIC_PREFIX {
        return Some(Err(
            "not a ConcordKV backup (it does not start with CKVBACK)".into(),
        ));
    }
    let format = bytes[7].wrapping_sub(b'0');
    if format == 0 || format > BACKUP_FORMAT {
        return Some(Err(format!(
            "backup format {format} is newer than this operator handles (up to {BACKUP_FORMAT}): upgrade the operator"
        )));
    }
    let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    if len > MAX_HEADER_BYTES {
        return Some(Err(format!("a {len}-byte backup header is not one")));
    }
    let end = 12 + len;
    if bytes.len() < end {
        return None;
    }
    Some(
        serde_json::from_slice(&bytes[12..end])
            .map_err(|e| format!("unreadable backup header: {e}")),
    )
}

/// `2026-12-05T11:37:55Z` -> `20261205T113755Z` (object names without colons).
fn compact_time(rfc3339: &str) -> String {
    rfc3339
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect()
}

/// The object key of a backup: `<prefix>/<namespace>/<cluster>/<cluster>-r<revision>-<time>.backup`.
pub fn object_key(prefix: Option<&str>, namespace: &str, cluster: &str, h: &Header) -> String {
    let mut key = String::new();
    if let Some(p) = prefix
        .map(|p| p.trim_matches('/'))
        .filter(|p| !p.is_empty())
    {
        key.push_str(p);
        key.push('/');
    }
    key.push_str(&format!(
        "{namespace}/{cluster}/{cluster}-r{}-{}.backup",
        h.revision,
        compact_time(&h.created)
    ));
    key
}

/// Checks a backup's trailing SHA-256 as the bytes pass: everything but the last 32 bytes is
/// hashed; the last 32 must be that hash.
pub struct Checksum {
    hash: Sha256,
    /// The most recent bytes, up to 32: not yet known to be content rather than the digest.
    tail: Vec<u8>,
    pub bytes: u64,
}

impl Default for Checksum {
    fn default() -> Self {
        Checksum {
            hash: Sha256::new(),
            tail: Vec::with_capacity(64),
            bytes: 0,
        }
    }
}

impl Checksum {
    pub fn update(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        self.tail.extend_from_slice(chunk);
        if self.tail.len() > 32 {
            let cut = self.tail.len() - 32;
            self.hash.update(&self.tail[..cut]);
            self.tail.drain(..cut);
        }
    }

    /// The checksum (hex) if the stream ended with the digest of what came before it.
    pub fn finish(self) -> Result<String, String> {
        let found: String = self
            .hash
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let recorded: String = self.tail.iter().map(|b| format!("{b:02x}")).collect();
        if self.tail.len() == 32 && found == recorded {
            Ok(found)
        } else {
            Err(format!(
                "the backup's checksum did not match ({} bytes received): the stream was cut or damaged",
                self.bytes
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_bytes(json: &str) -> Vec<u8> {
        let mut b = b"CKVBACK1".to_vec();
        b.extend_from_slice(&(json.len() as u32).to_le_bytes());
        b.extend_from_slice(json.as_bytes());
        b
    }

    const HEADER: &str = r#"{"format":1,"clusterId":"c","member":"kv-1","revision":42,"compacted":0,"keys":7,"raftIndex":42,"raftTerm":2,"created":"2026-12-05T11:37:55Z","nodeVersion":"0.1.0","dataFormat":4}"#;

    #[test]
    fn headers_are_read_once_complete() {
        let b = header_bytes(HEADER);
        for cut in 0..b.len() {
            assert!(parse_header(&b[..cut]).is_none(), "cut {cut}");
        }
        let h = parse_header(&b).expect("complete").expect("valid");
        assert_eq!((h.revision, h.keys, h.member.as_str()), (42, 7, "kv-1"));
        let mut newer = b.clone();
        newer[7] = b'2';
        assert!(parse_header(&newer).expect("complete").is_err());
        assert!(parse_header(b"SQLite format 3 ....")
            .expect("enough")
            .is_err());
    }

    #[test]
    fn keys_name_cluster_revision_and_time() {
        let h = parse_header(&header_bytes(HEADER)).expect("c").expect("v");
        let key = object_key(Some("/backups/"), "prod", "kv", &h);
        assert_eq!(key, "backups/prod/kv/kv-r42-20261205T113755Z.backup");
        assert_eq!(
            object_key(None, "ns", "kv", &h),
            "ns/kv/kv-r42-20261205T113755Z.backup"
        );
        assert_eq!(
            object_key(Some("/"), "ns", "kv", &h),
            "ns/kv/kv-r42-20261205T113755Z.backup"
        );
    }

    #[test]
    fn the_trailing_checksum_is_checked_across_any_chunking() {
        let body = b"some backup content that is long enough".repeat(20);
        let mut file = body.clone();
        file.extend_from_slice(&Sha256::digest(&body));
        for chunk in [1, 7, 31, 32, 33, 100, file.len()] {
            let mut c = Checksum::default();
            for part in file.chunks(chunk) {
                c.update(part);
            }
            assert!(c.finish().is_ok(), "chunks of {chunk}");
        }
        let mut c = Checksum::default();
        c.update(&file[..file.len() - 1]);
        assert!(c.finish().is_err(), "cut short");
        let mut bad = file.clone();
        bad[10] ^= 1;
        let mut c = Checksum::default();
        c.update(&bad);
        assert!(c.finish().is_err(), "damaged");
    }
}
