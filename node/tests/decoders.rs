//! Every decoder of bytes that come from outside the process — log segments and state files on
//! disk, snapshot files (ours or a leader's), peer messages, the YAML config — given arbitrary
//! or damaged input: it never panics, and a refusal is an error that says what it refused.

use std::fs;
use std::path::Path;

use concord_node::codec;
use concord_node::config::{Config, Flags};
use concord_node::raft::{Entry, LogId, SnapshotMeta, TypeConfig, Vote};
use concord_node::storage::{LogStore, SnapshotStore, StateMachineStore};
use concord_node::store::Command;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use proptest::prelude::*;

/// A damage done to valid bytes.
#[derive(Debug, Clone)]
enum Damage {
    Flip { at: usize, bit: u8 },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Overwrite { at: usize, bytes: Vec<u8> },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Damage::Flip { at, bit }),
        any::<usize>().prop_map(|at| Damage::Truncate { at }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Damage::Insert { at, bytes }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Damage::Overwrite { at, bytes }),
    ]
}

fn apply(bytes: &mut Vec<u8>, damages: &[Damage]) {
    for d in damages {
        let n = bytes.len().max(1);
        match d {
            Damage::Flip { at, bit } => {
                if !bytes.is_empty() {
                    let i = at % bytes.len();
                    bytes[i] ^= 1 << bit;
                }
            }
            Damage::Truncate { at } => bytes.truncate(at % n),
            Damage::Insert { at, bytes: b } => {
                let i = at % (bytes.len() + 1);
                bytes.splice(i..i, b.iter().copied());
            }
            Damage::Overwrite { at, bytes: b } => {
                for (k, v) in b.iter().enumerate() {
                    let i = (at + k) % n;
                    if i < bytes.len() {
                        bytes[i] = *v;
                    }
                }
            }
        }
    }
}

fn log_id(index: u64) -> LogId {
    LogId::new(
        openraft::impls::leader_id_adv::LeaderId {
            term: 1,
            node_id: 7,
        },
        index,
    )
}

fn entry(index: u64, key: &str) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: openraft::EntryPayload::Normal(Command::Set {
            key: key.to_string(),
            value: "v".repeat(index as usize % 40),
        }),
    }
}

/// One log record: `[len u32][crc u32][index u64][payload]`, the checksum over index + payload.
fn record(index: u64, payload: &[u8]) -> Vec<u8> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&index.to_le_bytes());
    crc.update(payload);
    let mut r = Vec::new();
    r.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    r.extend_from_slice(&crc.finalize().to_le_bytes());
    r.extend_from_slice(&index.to_le_bytes());
    r.extend_from_slice(payload);
    r
}

fn valid_segment(entries: usize) -> Vec<u8> {
    let mut seg = codec::segment_header().to_vec();
    for i in 1..=entries as u64 {
        let payload = codec::to_bytes(&entry(i, &format!("key{i}"))).expect("encode");
        seg.extend(record(i, &payload));
    }
    seg
}

/// Opens a log whose only segment holds `bytes`.
fn open_log(bytes: &[u8]) -> (tempfile::TempDir, std::io::Result<LogStore>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let segments = dir.path().join("raft").join("segments");
    fs::create_dir_all(&segments).expect("mkdir");
    fs::write(segments.join(format!("{:020}.log", 1)), bytes).expect("write");
    let opened = LogStore::open(&dir.path().join("raft"), 1 << 20);
    (dir, opened)
}

fn assert_names_problem(e: &std::io::Error, context: &str) {
    let msg = e.to_string();
    assert!(
        msg.len() > 10,
        "{context}: an error that says nothing: {msg:?}"
    );
}

fn snapshot_meta(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: Some(log_id(index)),
        last_membership: Default::default(),
    }
}

/// A valid snapshot file's bytes, made by the store itself.
fn valid_snapshot_file() -> Vec<u8> {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(dir.path()).expect("open");
    let mut kv = concord_node::store::mvcc::MvccStore::default();
    for i in 1..20u64 {
        concord_node::store::apply(
            &mut kv,
            &mut concord_node::auth::AuthStore::default(),
            i,
            &Command::Set {
                key: format!("k{i}"),
                value: format!("v{i}"),
            },
        );
    }
    let mut w = store.create(&snapshot_meta(19)).expect("create");
    w.write_all(&codec::to_bytes(&kv).expect("encode"))
        .expect("write");
    store
        .install(&snapshot_meta(19), w.finish().expect("finish"))
        .expect("install");
    let path = fs::read_dir(dir.path())
        .expect("dir")
        .next()
        .expect("one file")
        .expect("entry")
        .path();
    fs::read(path).expect("read")
}

fn open_snapshot_dir(dir: &Path) -> std::io::Result<StateMachineStore> {
    StateMachineStore::open(SnapshotStore::open(dir)?, Default::default())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn a_segment_of_any_bytes_opens_or_is_refused(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        header in any::<bool>(),
    ) {
        let mut seg = if header { codec::segment_header().to_vec() } else { Vec::new() };
        seg.extend(bytes);
        let (_dir, opened) = open_log(&seg);
        if let Err(e) = opened {
            assert_names_problem(&e, "segment");
        }
    }

    #[test]
    fn a_damaged_segment_opens_or_is_refused(damages in prop::collection::vec(damage(), 1..4)) {
        let mut seg = valid_segment(8);
        apply(&mut seg, &damages);
        let (_dir, opened) = open_log(&seg);
        if let Err(e) = opened {
            assert_names_problem(&e, "damaged segment");
        }
    }

    /// Records whose checksums are right but whose payloads are not entries: the checksum
    /// cannot help, the entry decoder must refuse.
    #[test]
    fn checksummed_records_of_any_payload_open_or_are_refused(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..256), 1..6),
    ) {
        let mut seg = codec::segment_header().to_vec();
        for (i, p) in payloads.iter().enumerate() {
            seg.extend(record(i as u64 + 1, p));
        }
        let (dir, opened) = open_log(&seg);
        if let Err(e) = opened {
            assert_names_problem(&e, "record payload");
            let msg = e.to_string();
            prop_assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        }
    }

    #[test]
    fn state_files_of_any_bytes_are_read_or_refused_naming_the_file(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        valid in any::<bool>(),
        damages in prop::collection::vec(damage(), 0..3),
    ) {
        let mut file = if valid { codec::state_file(&bytes) } else { bytes };
        apply(&mut file, &damages);
        let path = Path::new("/data/raft/vote");
        for legacy in [codec::LegacyStateFile::Checksummed, codec::LegacyStateFile::Bare] {
            match codec::read_state_file(&file, path, legacy) {
                Ok(payload) => {
                    // What a state file holds is then decoded; that must not panic either.
                    let _ = codec::from_bytes::<Vote>(&payload, "vote");
                    let _ = codec::from_bytes::<Option<LogId>>(&payload, "log meta");
                }
                Err(e) => prop_assert!(e.to_string().contains("/data/raft/vote"), "{e}"),
            }
        }
    }

    #[test]
    fn a_snapshot_file_of_any_bytes_loads_or_is_refused_naming_the_file(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        damages in prop::collection::vec(damage(), 1..4),
        from_valid in any::<bool>(),
    ) {
        let mut file = if from_valid { valid_snapshot_file() } else { bytes };
        apply(&mut file, &damages);
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(format!("snapshot-{:020}.snap", 19)), &file).expect("write");
        if let Err(e) = open_snapshot_dir(dir.path()) {
            let msg = e.to_string();
            prop_assert!(msg.contains("snapshot-00000000000000000019.snap"), "{msg}");
        }
    }

    /// A snapshot whose checksum is right but whose data is not a state (what a faulty or
    /// hostile leader could send): refused without trusting its length prefixes.
    #[test]
    fn checksummed_snapshots_of_any_data_load_or_are_refused(
        data in prop::collection::vec(any::<u8>(), 0..512),
        huge_prefix in any::<bool>(),
    ) {
        use std::io::Write;
        let mut data = data;
        if huge_prefix {
            // A map of one key whose length claims 2^62 bytes.
            data = [1u64.to_le_bytes(), (1u64 << 62).to_le_bytes()].concat();
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SnapshotStore::open(dir.path()).expect("open");
        let mut w = store.create(&snapshot_meta(3)).expect("create");
        w.write_all(&data).expect("write");
        store.install(&snapshot_meta(3), w.finish().expect("finish")).expect("install");
        if let Err(e) = open_snapshot_dir(dir.path()) {
            let msg = e.to_string();
            prop_assert!(msg.contains(".snap"), "{msg}");
        }
    }

    #[test]
    fn peer_messages_of_any_bytes_decode_or_are_refused(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        damages in prop::collection::vec(damage(), 0..3),
        which in 0u8..4,
    ) {
        // Start from a valid message of the kind half the time, so damage lands deep inside.
        let mut msg = match which {
            0 => codec::encode_wire(&AppendEntriesRequest::<TypeConfig> {
                vote: Vote::new_committed(3, 7),
                prev_log_id: Some(log_id(4)),
                entries: vec![entry(5, "a"), entry(6, "b")],
                leader_commit: Some(log_id(4)),
            }).expect("encode"),
            1 => codec::encode_wire(&VoteRequest::<TypeConfig>::new(Vote::new(3, 7), Some(log_id(9))))
                .expect("encode"),
            2 => codec::encode_wire(&Command::Cas {
                key: "k".into(),
                expected: Some("e".into()),
                value: "v".into(),
            }).expect("encode"),
            _ => bytes,
        };
        apply(&mut msg, &damages);
        for result in [
            codec::decode_wire::<AppendEntriesRequest<TypeConfig>>(&msg).err(),
            codec::decode_wire::<VoteRequest<TypeConfig>>(&msg).err(),
            codec::decode_wire::<Command>(&msg).err(),
            codec::decode_wire::<SnapshotMeta>(&msg).err(),
            codec::decode_wire::<Vote>(&msg).err(),
        ].into_iter().flatten() {
            assert_names_problem(&result, "peer message");
        }
    }

    #[test]
    fn a_config_file_of_any_text_loads_or_is_refused(
        text in ".{0,200}",
        damages in prop::collection::vec(damage(), 0..4),
        from_valid in any::<bool>(),
    ) {
        let valid = "server:\n  nodeId: \"n1\"\n  listenAddr: \"127.0.0.1:1\"\n  apiAddr: \"127.0.0.1:2\"\n  dataDir: \"/tmp/x\"\n  peers:\n    - \"n1:127.0.0.1:1\"\nraft:\n  heartbeatIntervalMs: 100\n  electionTimeoutMinMs: 200\nlimits:\n  maxKeyBytes: 10\n";
        let mut bytes = if from_valid { valid.as_bytes().to_vec() } else { text.into_bytes() };
        apply(&mut bytes, &damages);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("concord.yaml");
        fs::write(&path, &bytes).expect("write");
        let flags = Flags { config: Some(path.clone()), ..Flags::default() };
        if let Err(e) = Config::resolve(flags) {
            let msg = e.to_string();
            prop_assert!(msg.len() > 10, "{msg:?}");
        }
    }
}
