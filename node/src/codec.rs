//! Every byte format a node writes to disk or sends to a peer, and its version.
//!
//! openraft is pinned to a pre-release whose types may change shape, and most of what we store
//! is bincode of those types. So every format carries a version, a reader refuses a version it
//! does not know (naming the file and the number) instead of misreading it, and every
//! encode/decode goes through this module, so a format change is made in one place.
//!
//! | what                          | where the version is              | current | also read |
//! |-------------------------------|-----------------------------------|---------|-----------|
//! | log segments (`storage/segments`)| 8-byte segment header             | 1       | 0: no header (before versioning) |
//! | state files (vote, log meta, identity, cluster id) | 10-byte file header | 1  | 0: `[crc32][payload]` (cluster id: bare text) |
//! | snapshot files                | last byte of the 8-byte magic     | 4       | 3: without users and roles; 2: the store without leases; 1: the pre-MVCC map |
//! | peer messages                 | the `wire_version` field          | 1       | 0: sender from before versioning |
//!
//! Versions 0 and 1 encode payloads identically (bincode 1 of openraft 0.10.0-alpha.37's types,
//! JSON for the identity): version 1 only adds the marker. A later format that changes a
//! payload bumps its number here, keeps reading the older ones, and adds a fixture under
//! `node/tests/fixtures/` (see `datadir_fixture.rs`).

use std::fmt::Display;
use std::io;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Log segment format written by this build.
pub const LOG_FORMAT: u16 = 1;
/// State file format written by this build.
pub const STATE_FILE_FORMAT: u16 = 1;
/// Snapshot file format written by this build.
/// Snapshot format written by this build: 4, the data is the MVCC store (`store::mvcc`), its
/// leases' ids and TTLs, then the auth state (`auth::store`); 3 was the first two (from before
/// auth), 2 the store alone (from before leases) and 1 the pre-MVCC map (`store::KvMap`), all
/// still read, and upgraded as they are loaded.
pub const SNAPSHOT_FORMAT: u8 = 4;
/// Peer message encoding sent by this build. Receivers accept 0 (same encoding) up to this.
pub const WIRE_VERSION: u32 = 1;

/// Starts every log segment: magic, then the format as u16 LE. A segment from before
/// versioning starts with a record header, whose first word (a length ≤ 256 MiB) can never
/// read as this magic.
pub const SEGMENT_MAGIC: &[u8; 6] = b"CKVLOG";
pub const SEGMENT_HEADER_LEN: usize = 8;

/// Starts every state file: magic, format u16 LE, crc32 LE of the payload, payload.
const STATE_MAGIC: &[u8; 4] = b"CKVF";
const STATE_HEADER_LEN: usize = 10;

/// Snapshot files start with these seven bytes and then the format as one ASCII digit.
pub const SNAPSHOT_MAGIC_PREFIX: &[u8; 7] = b"CKVSNAP";

pub fn invalid_data(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// The error for a format newer than this build knows.
fn too_new(what: impl Display, found: u64, newest: u64) -> io::Error {
    invalid_data(format!(
        "{what} is in format {found}, but this concord-node ({}) reads formats up to {newest}: \
         it was written by a newer release; run that release (or newer) on this data",
        env!("CARGO_PKG_VERSION")
    ))
}

/// Encodes a value stored in the log, a snapshot or a state file (bincode 1).
pub fn to_bytes<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    bincode::serialize(v).map_err(|e| io::Error::other(format!("encode: {e}")))
}

/// How many bytes [`to_bytes`] would produce, without producing them.
pub fn encoded_len<T: Serialize>(v: &T) -> u64 {
    // Sizing only fails where encoding would (a map with an unknown length), which our types
    // never are; count such a value as huge so a caller budgeting bytes sends it alone.
    bincode::serialized_size(v).unwrap_or(u64::MAX)
}

/// Decodes what [`to_bytes`] wrote; `what` names it in the error.
pub fn from_bytes<T: DeserializeOwned>(bytes: &[u8], what: impl Display) -> io::Result<T> {
    bincode::deserialize(bytes).map_err(|e| invalid_data(format!("cannot decode {what}: {e}")))
}

/// Encodes like [`to_bytes`], streaming into `out` instead of building a buffer.
pub fn to_writer<T: Serialize>(out: impl io::Write, v: &T) -> io::Result<()> {
    bincode::serialize_into(out, v).map_err(|e| match *e {
        bincode::ErrorKind::Io(io) => io,
        other => io::Error::other(format!("encode: {other}")),
    })
}

/// Decodes what [`to_writer`] wrote, streaming from `input`, which holds at most `limit` bytes;
/// `what` names it in the error. The limit matters: streaming, bincode allocates a string or a
/// vector at the length its prefix claims, so a corrupt or hostile prefix could ask for any
/// amount of memory; with it, a claim beyond the input is an error before any allocation.
pub fn from_reader<T: DeserializeOwned>(
    input: impl io::Read,
    limit: u64,
    what: impl Display,
) -> io::Result<T> {
    use bincode::Options;
    // The options `bincode::serialize` uses, plus the limit.
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(limit)
        .deserialize_from(input)
        .map_err(|e| invalid_data(format!("cannot decode {what}: {e}")))
}

// ---- log segments ----

/// The header a new segment starts with.
pub fn segment_header() -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..6].copy_from_slice(SEGMENT_MAGIC);
    h[6..].copy_from_slice(&LOG_FORMAT.to_le_bytes());
    h
}

/// What a segment file's first bytes say about its format.
#[derive(Debug, PartialEq, Eq)]
pub enum SegmentStart {
    /// A versioned segment; records start after the header.
    Versioned(u16),
    /// No header: a segment from before versioning (format 0); records start at 0.
    Legacy,
    /// Fewer bytes than a header, all of them a prefix of one: a crash while the segment was
    /// being created.
    TornHeader,
}

/// Reads a segment's header, refusing a format newer than [`LOG_FORMAT`].
pub fn segment_start(bytes: &[u8], path: &Path) -> io::Result<SegmentStart> {
    if bytes.len() < SEGMENT_HEADER_LEN {
        if !bytes.is_empty() && segment_header().starts_with(bytes) {
            return Ok(SegmentStart::TornHeader);
        }
        return Ok(SegmentStart::Legacy);
    }
    if &bytes[..6] != SEGMENT_MAGIC {
        return Ok(SegmentStart::Legacy);
    }
    let format = u16::from_le_bytes([bytes[6], bytes[7]]);
    if format > LOG_FORMAT {
        return Err(too_new(
            format_args!("log segment {}", path.display()),
            format.into(),
            LOG_FORMAT.into(),
        ));
    }
    Ok(SegmentStart::Versioned(format))
}

// ---- state files ----

/// Frames a state file's payload: header with format and checksum, then the payload.
pub fn state_file(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(STATE_HEADER_LEN + payload.len());
    out.extend_from_slice(STATE_MAGIC);
    out.extend_from_slice(&STATE_FILE_FORMAT.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// How a state file was stored before versioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyStateFile {
    /// `[crc32 u32 LE][payload]` (vote, log meta, identity).
    Checksummed,
    /// The payload alone (cluster id).
    Bare,
}

/// Undoes [`state_file`], also reading the unversioned form `legacy`. Fails on a checksum
/// mismatch, a truncated file, or a format newer than [`STATE_FILE_FORMAT`].
pub fn read_state_file(bytes: &[u8], path: &Path, legacy: LegacyStateFile) -> io::Result<Vec<u8>> {
    if bytes.len() >= STATE_HEADER_LEN && &bytes[..4] == STATE_MAGIC {
        let format = u16::from_le_bytes([bytes[4], bytes[5]]);
        let crc = u32::from_le_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]);
        let payload = &bytes[STATE_HEADER_LEN..];
        // A legacy file whose checksum happens to spell the magic is told apart by which
        // checksum holds.
        if crc32fast::hash(payload) == crc {
            if format > STATE_FILE_FORMAT {
                return Err(too_new(
                    format_args!("{}", path.display()),
                    format.into(),
                    STATE_FILE_FORMAT.into(),
                ));
            }
            return Ok(payload.to_vec());
        }
        if legacy == LegacyStateFile::Bare {
            return Err(invalid_data(format!(
                "{} fails its checksum: the file is corrupt",
                path.display()
            )));
        }
    }
    match legacy {
        LegacyStateFile::Bare => Ok(bytes.to_vec()),
        LegacyStateFile::Checksummed => {
            if bytes.len() < 4 {
                return Err(invalid_data(format!(
                    "{} is truncated ({} bytes)",
                    path.display(),
                    bytes.len()
                )));
            }
            let (crc, payload) = bytes.split_at(4);
            if crc32fast::hash(payload) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
                return Err(invalid_data(format!(
                    "{} fails its checksum: the file is corrupt",
                    path.display()
                )));
            }
            Ok(payload.to_vec())
        }
    }
}

/// Reads and unframes a state file; `None` if it does not exist.
pub fn load_state_file(path: &Path, legacy: LegacyStateFile) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(read_state_file(&bytes, path, legacy)?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

// ---- snapshot files ----

/// The 8-byte magic a snapshot file whose data is in `format` starts with.
pub fn snapshot_magic(format: u8) -> [u8; 8] {
    let mut m = [0u8; 8];
    m[..7].copy_from_slice(SNAPSHOT_MAGIC_PREFIX);
    m[7] = b'0' + format;
    m
}

/// Checks a snapshot file's magic and returns its format; `Err` names the file and what is
/// wrong with it.
pub fn check_snapshot_magic(bytes: &[u8], path: &Path) -> io::Result<u8> {
    let format = match bytes.get(..8) {
        Some(m) if &m[..7] == SNAPSHOT_MAGIC_PREFIX && m[7].is_ascii_digit() => m[7] - b'0',
        _ => {
            return Err(invalid_data(format!(
                "snapshot {} is corrupt (bad header); refusing to start",
                path.display()
            )))
        }
    };
    if format > SNAPSHOT_FORMAT {
        return Err(too_new(
            format_args!("snapshot {}", path.display()),
            format.into(),
            SNAPSHOT_FORMAT.into(),
        ));
    }
    if format == 0 {
        return Err(invalid_data(format!(
            "snapshot {} claims format 0, which never existed: the file is corrupt",
            path.display()
        )));
    }
    Ok(format)
}

// ---- peer messages ----

/// Encodes an openraft message (or a forwarded command) for the wire, at [`WIRE_VERSION`].
pub fn encode_wire<T: Serialize>(v: &T) -> Result<Vec<u8>, tonic::Status> {
    bincode::serialize(v).map_err(|e| {
        concord_proto::errors::status(
            tonic::Code::Internal,
            format!("encode: {e}"),
            concord_proto::errors::ErrorReason::Internal,
        )
    })
}

/// Decodes a payload that [`check_wire_version`] accepted.
pub fn decode_wire<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, io::Error> {
    from_bytes(bytes, "peer message")
}

/// Refuses a peer message in an encoding newer than this build's, with a status saying so.
pub fn check_wire_version(version: u32) -> Result<(), tonic::Status> {
    if version <= WIRE_VERSION {
        return Ok(());
    }
    Err(concord_proto::errors::status(
        tonic::Code::FailedPrecondition,
        format!(
            "the sender speaks peer wire version {version}; this node ({}) understands up to \
             {WIRE_VERSION}: upgrade this node before the sender",
            env!("CARGO_PKG_VERSION")
        ),
        concord_proto::errors::ErrorReason::UnsupportedVersion,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_round_trip_and_read_the_unversioned_forms() {
        let p = Path::new("vote");
        let framed = state_file(b"hello");
        assert_eq!(
            read_state_file(&framed, p, LegacyStateFile::Checksummed).unwrap(),
            b"hello"
        );
        // Before versioning: [crc][payload], and the cluster id as bare text.
        let mut old = crc32fast::hash(b"hello").to_le_bytes().to_vec();
        old.extend_from_slice(b"hello");
        assert_eq!(
            read_state_file(&old, p, LegacyStateFile::Checksummed).unwrap(),
            b"hello"
        );
        assert_eq!(
            read_state_file(b"static-abc", p, LegacyStateFile::Bare).unwrap(),
            b"static-abc"
        );
        let mut corrupt = framed.clone();
        corrupt[12] ^= 1;
        assert!(read_state_file(&corrupt, p, LegacyStateFile::Checksummed).is_err());
        assert!(read_state_file(&corrupt, p, LegacyStateFile::Bare).is_err());
    }

    #[test]
    fn newer_formats_are_refused_with_the_file_and_the_version() {
        let mut framed = state_file(b"x");
        framed[4..6].copy_from_slice(&7u16.to_le_bytes());
        let e = read_state_file(
            &framed,
            Path::new("/d/raft/vote"),
            LegacyStateFile::Checksummed,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/d/raft/vote") && e.contains("format 7"), "{e}");

        let mut seg = segment_header().to_vec();
        seg[6..8].copy_from_slice(&9u16.to_le_bytes());
        let e = segment_start(&seg, Path::new("s.log"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("s.log") && e.contains("format 9"), "{e}");
        assert_eq!(
            segment_start(&segment_header(), Path::new("s")).unwrap(),
            SegmentStart::Versioned(LOG_FORMAT)
        );
        assert_eq!(
            segment_start(&segment_header()[..3], Path::new("s")).unwrap(),
            SegmentStart::TornHeader
        );
        // A pre-versioning segment starts with a record length.
        assert_eq!(
            segment_start(&[5, 0, 0, 0, 1, 2, 3, 4, 0], Path::new("s")).unwrap(),
            SegmentStart::Legacy
        );

        let e = check_snapshot_magic(b"CKVSNAP5........", Path::new("snap"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("snap") && e.contains("format 5"), "{e}");
        assert_eq!(
            check_snapshot_magic(&snapshot_magic(SNAPSHOT_FORMAT), Path::new("snap")).ok(),
            Some(SNAPSHOT_FORMAT)
        );
        assert_eq!(
            check_snapshot_magic(&snapshot_magic(1), Path::new("snap")).ok(),
            Some(1)
        );
        // Corruption is called corruption, not a newer release.
        for bad in [&b"CKVSNAPx"[..], b"CKVSNAP0", b"CKVSN"] {
            let e = check_snapshot_magic(bad, Path::new("snap"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("corrupt") && !e.contains("newer"), "{e}");
        }

        let s = check_wire_version(WIRE_VERSION + 1).unwrap_err();
        assert_eq!(
            concord_proto::errors::reason(&s),
            Some(concord_proto::errors::ErrorReason::UnsupportedVersion)
        );
        assert!(check_wire_version(0).is_ok());
    }
}
