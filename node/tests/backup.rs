//! Backups end to end with real processes: a backup taken from a follower while writers run,
//! restored into a new three-member cluster that must hold exactly the source's state at the
//! backup's revision; `etcdctl snapshot save` against ConcordKV; damaged files refused before
//! anything is written; the admin gRPC stream.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use etcd_client::{Client, GetOptions, PutOptions, WatchOptions};

fn ctl(args: &[&str]) -> (bool, String) {
    let out = Command::new(CTL_BIN)
        .args(args)
        .output()
        .expect("run concordctl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `concordctl snapshot restore` of `file` into `dir` as member `name` of `initial`.
fn restore(file: &str, dir: &Path, name: &str, initial: &str) -> (bool, String) {
    let dir = dir.display().to_string();
    ctl(&[
        "snapshot",
        "restore",
        file,
        "--data-dir",
        &dir,
        "--name",
        name,
        "--initial-cluster",
        initial,
    ])
}

/// Every key as (key, value, create revision, mod revision, version, lease), at `revision`
/// (0: the current one).
async fn all_keys(
    client: &mut Client,
    revision: i64,
) -> Vec<(Vec<u8>, Vec<u8>, i64, i64, i64, i64)> {
    let r = client
        .get(
            "",
            Some(GetOptions::new().with_from_key().with_revision(revision)),
        )
        .await
        .expect("read every key");
    r.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_writes_restores_into_a_new_cluster_exactly() {
    let mut src = Cluster::start(3, "");
    let leader = src.wait_leader(Duration::from_secs(20)).await;
    let follower = (leader + 1) % 3;
    let mut etcd = Client::connect([src.nodes[follower].etcd()], None)
        .await
        .expect("connect");
    // History worth keeping exactly: overwrites (versions), deletions, a key on a lease.
    for i in 0..600 {
        etcd.put(format!("k{i:04}"), format!("v{i}"), None)
            .await
            .expect("put");
    }
    for i in (0..600).step_by(3) {
        etcd.put(format!("k{i:04}"), format!("again{i}"), None)
            .await
            .expect("overwrite");
    }
    for i in (0..600).step_by(7) {
        etcd.delete(format!("k{i:04}"), None).await.expect("delete");
    }
    let lease = etcd.lease_grant(600, None).await.expect("lease").id();
    etcd.put("leased", "x", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("leased put");

    // Writers keep going while the backup is taken from a follower.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, endpoint) = (stop.clone(), src.nodes[leader].etcd());
        tokio::spawn(async move {
            let mut c = Client::connect([endpoint], None).await.expect("connect");
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                c.put(format!("w{n:06}"), n.to_string(), None)
                    .await
                    .expect("write during the backup");
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let file = src.dir.path().join("cluster.backup");
    let file_s = file.display().to_string();
    let api = src.nodes[follower].api();
    let (ok, text) = ctl(&["--endpoints", &api, "snapshot", "save", &file_s]);
    assert!(ok, "{text}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let during = writer.await.expect("writer");
    let (ok, status) = ctl(&["-o", "json", "snapshot", "status", &file_s]);
    assert!(ok, "{status}");
    let status = json(&status);
    let revision = status["revision"].as_i64().expect("revision");
    let written_after = all_keys(&mut etcd, 0).await.len();
    eprintln!("backup at revision {revision}: {status}; {during} writes ran meanwhile");
    assert!(during > 0);
    let expected = all_keys(&mut etcd, revision).await;
    assert!(
        written_after > expected.len(),
        "writes continued past the backup"
    );
    assert_eq!(status["keys"].as_u64(), Some(expected.len() as u64));
    let source_cluster = etcd
        .status()
        .await
        .expect("status")
        .header()
        .map(|h| h.cluster_id());

    // A new cluster from the backup: each member's data dir restored, then started.
    let mut dst = Cluster::configure(3, "", Vec::new());
    let initial: Vec<String> = dst
        .nodes
        .iter()
        .map(|n| format!("{}=127.0.0.1:{}", n.name, n.peer_port))
        .collect();
    let initial = initial.join(",");
    for n in &dst.nodes {
        let (ok, text) = restore(&file_s, &n.data_dir, &n.name, &initial);
        assert!(ok, "{text}");
    }
    for i in 0..3 {
        dst.spawn(i);
    }
    dst.wait_leader(Duration::from_secs(20)).await;
    let mut restored = Client::connect([dst.nodes[1].etcd()], None)
        .await
        .expect("connect");
    // Exactly the source at the backup's revision: keys, values, revisions, versions, leases.
    let got = all_keys(&mut restored, 0).await;
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected, "the restored store differs from the source");
    let ttl = restored
        .lease_time_to_live(lease, None)
        .await
        .expect("lease");
    assert!(ttl.ttl() > 0, "the lease came along");
    // A new cluster, whose revisions go on past the old ones, with the old ones compacted.
    let header = restored.status().await.expect("status");
    assert_ne!(header.header().map(|h| h.cluster_id()), source_cluster);
    let put = restored.put("after", "restore", None).await.expect("put");
    let new_rev = put.header().map(|h| h.revision()).unwrap_or(0);
    assert!(new_rev > revision + 1_000_000, "{new_rev}");
    let old = restored
        .get("k0001", Some(GetOptions::new().with_revision(revision)))
        .await;
    assert!(
        format!("{old:?}").contains("compacted"),
        "an old revision is compacted: {old:?}"
    );
    let mut stream = restored
        .watch(
            "k",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision - 10),
            ),
        )
        .await
        .expect("watch");
    let mut told = None;
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("an answer")
            .expect("stream")
            .expect("message");
        if m.canceled() {
            told = Some(m.compact_revision());
            break;
        }
    }
    assert!(
        told.is_some_and(|c| c > revision),
        "a watcher resuming from before the restore is told it was compacted: {told:?}"
    );
    // Restoring into a data dir that is in use is refused.
    let (ok, text) = restore(&file_s, &dst.nodes[0].data_dir, "node1", &initial);
    assert!(!ok && text.contains("not empty"), "{text}");
}

fn damaged(bytes: &[u8], dir: &Path) -> Vec<(String, std::path::PathBuf, &'static str)> {
    let write = |name: &str, b: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, b).expect("write");
        p
    };
    let mut flipped = bytes.to_vec();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x20;
    let mut newer = bytes.to_vec();
    newer[7] = b'7';
    vec![
        (
            "truncated".into(),
            write("truncated", &bytes[..bytes.len() - 100]),
            "truncated",
        ),
        ("flipped".into(), write("flipped", &flipped), "checksum"),
        ("newer".into(), write("newer", &newer), "newer release"),
        (
            "foreign".into(),
            write("foreign", b"SQLite format 3\0 and so on"),
            "not a ConcordKV backup",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_saves_backups_and_damaged_files_are_refused_before_anything_is_written() {
    let mut c = Cluster::start(1, "");
    c.wait_leader(Duration::from_secs(20)).await;
    for i in 0..50 {
        c.set(0, &format!("key{i}"), "value").await;
    }
    let file = c.dir.path().join("etcdctl.backup");
    let file_s = file.display().to_string();
    let out = etcdctl(&c.nodes[0].etcd(), &["snapshot", "save", &file_s]);
    assert!(out.contains("Snapshot saved"), "{out}");
    let (ok, status) = ctl(&["-o", "json", "snapshot", "status", &file_s]);
    assert!(ok, "{status}");
    assert_eq!(json(&status)["keys"], 50);

    // The admin gRPC stream serves the same kind of file.
    let mut admin = concord_proto::admin_client::AdminClient::connect(format!(
        "http://127.0.0.1:{}",
        c.nodes[0].peer_port
    ))
    .await
    .expect("admin");
    let mut stream = admin
        .snapshot(concord_proto::BackupRequest {})
        .await
        .expect("snapshot")
        .into_inner();
    let mut bytes = Vec::new();
    let mut last_remaining = u64::MAX;
    while let Some(chunk) = stream.message().await.expect("chunk") {
        bytes.extend_from_slice(&chunk.data);
        last_remaining = chunk.remaining_bytes;
    }
    assert_eq!(last_remaining, 0);
    let verified = concord_node::backup::verify(&bytes[..]).expect("a valid backup");
    assert_eq!(verified.header.keys, 50);

    for (what, path, says) in damaged(&bytes, c.dir.path()) {
        let p = path.display().to_string();
        let (ok, text) = ctl(&["snapshot", "status", &p]);
        assert!(!ok && text.contains(says), "status of {what}: {text}");
        let target = c.dir.path().join(format!("restore-{what}"));
        let (ok, text) = restore(&p, &target, "a", "a=127.0.0.1:1");
        assert!(!ok && text.contains(says), "restore of {what}: {text}");
        assert!(!target.exists(), "{what}: nothing may be written");
    }
}

/// Streams `bytes` to a member's admin `Restore`, in 64 KiB chunks.
async fn restore_online(
    peer_port: u16,
    bytes: &[u8],
) -> Result<concord_proto::AdminResult, tonic::Status> {
    let mut admin =
        concord_proto::admin_client::AdminClient::connect(format!("http://127.0.0.1:{peer_port}"))
            .await
            .expect("admin");
    let chunks: Vec<concord_proto::BackupChunk> = bytes
        .chunks(64 * 1024)
        .map(|c| concord_proto::BackupChunk {
            data: c.to_vec(),
            remaining_bytes: 0,
        })
        .collect();
    admin
        .restore(futures::stream::iter(chunks))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_not_yet_in_a_cluster_starts_one_from_a_streamed_backup_and_others_join_it() {
    let mut src = Cluster::start(1, "");
    src.wait_leader(Duration::from_secs(20)).await;
    let mut etcd = Client::connect([src.nodes[0].etcd()], None)
        .await
        .expect("connect");
    for i in 0..300 {
        etcd.put(format!("k{i:03}"), format!("v{i}"), None)
            .await
            .expect("put");
    }
    for i in (0..300).step_by(4) {
        etcd.put(format!("k{i:03}"), "again", None)
            .await
            .expect("overwrite");
        etcd.delete(format!("k{:03}", i + 1), None)
            .await
            .expect("delete");
    }
    let file = src.dir.path().join("source.backup");
    let (ok, text) = ctl(&[
        "--endpoints",
        &src.nodes[0].api(),
        "snapshot",
        "save",
        &file.display().to_string(),
    ]);
    assert!(ok, "{text}");
    let bytes = std::fs::read(&file).expect("read the backup");
    // The same backup from the member's admin service (the operator's backup Job's way), to a
    // name filled in from its header, with the outcome reported to a file.
    let report = src.dir.path().join("termination-log");
    let template = src.dir.path().join("jobs/src-r{revision}-{created}.backup");
    let (ok, text) = ctl(&[
        "snapshot",
        "save",
        &template.display().to_string(),
        "--member",
        &format!("127.0.0.1:{}", src.nodes[0].peer_port),
        "--report",
        &report.display().to_string(),
    ]);
    assert!(ok, "{text}");
    let reported: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("json");
    let from_member = reported["file"].as_str().expect("file");
    assert!(
        from_member.contains(&format!("src-r{}-", reported["revision"])),
        "{reported}"
    );
    assert_eq!(
        std::fs::read(from_member).expect("read").len() as u64,
        reported["fileBytes"].as_u64().expect("size")
    );
    assert_eq!(reported["checksumVerified"], true);
    let (ok, _) = ctl(&[
        "snapshot",
        "save",
        &template.display().to_string(),
        "--member",
        "127.0.0.1:1",
        "--report",
        &report.display().to_string(),
    ]);
    assert!(!ok);
    let failed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("json");
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("127.0.0.1:1")),
        "{failed}"
    );
    // What a schedule's pruning Job runs: a file that is not a backup stops it whole.
    let stray = src.dir.path().join("notes.txt");
    std::fs::write(&stray, "keep me").expect("write");
    let (ok, text) = ctl(&[
        "snapshot",
        "remove",
        from_member,
        &stray.display().to_string(),
    ]);
    assert!(!ok && text.contains("not a ConcordKV backup"), "{text}");
    assert!(Path::new(from_member).exists() && stray.exists());
    let (ok, text) = ctl(&["snapshot", "remove", from_member, "/nonexistent/x.backup"]);
    assert!(
        ok && text.contains("removed 1 backup(s), 1 already absent"),
        "{text}"
    );
    assert!(!Path::new(from_member).exists());
    let revision = concord_node::backup::verify(&bytes[..])
        .expect("valid")
        .header
        .revision as i64;
    let expected = all_keys(&mut etcd, revision).await;

    let mut dst = Cluster::start_join(3);
    for i in 0..3 {
        dst.admin_status(i).await;
    }
    // Damaged backups are refused whole, and the member stays out of any cluster.
    for (what, path, says) in damaged(&bytes, dst.dir.path()) {
        let damaged = std::fs::read(&path).expect("read");
        let e = restore_online(dst.nodes[0].peer_port, &damaged)
            .await
            .expect_err(&what);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{what}: {e:?}");
        assert!(e.message().contains(says), "{what}: {}", e.message());
        assert_eq!(
            dst.admin_status(0).await["initialized"],
            false,
            "{what}: nothing may be installed"
        );
    }
    let done = restore_online(dst.nodes[0].peer_port, &bytes)
        .await
        .expect("restore");
    assert!(done.message.contains("restored cluster"), "{done:?}");
    assert!(
        !dst.nodes[0].data_dir.join("restore.incoming").exists(),
        "the incoming copy is removed"
    );
    // The member leads a new one-member cluster; the others join it as after an init.
    assert_eq!(
        dst.wait_leader_among(&[0], Duration::from_secs(10)).await,
        0
    );
    dst.add_voter(0, 1).await;
    dst.add_voter(0, 2).await;
    assert_eq!(dst.voters(0).await.len(), 3);
    let mut restored = Client::connect([dst.nodes[2].etcd()], None)
        .await
        .expect("connect");
    assert_eq!(
        all_keys(&mut restored, 0).await,
        expected,
        "the restored store differs from the source at the backup's revision"
    );
    let put = restored.put("after", "restore", None).await.expect("put");
    let new_rev = put.header().map(|h| h.revision()).unwrap_or(0);
    assert!(new_rev > revision + 1_000_000, "{new_rev}");
    let (src_id, dst_id) = (
        etcd.status()
            .await
            .expect("status")
            .header()
            .map(|h| h.cluster_id()),
        restored
            .status()
            .await
            .expect("status")
            .header()
            .map(|h| h.cluster_id()),
    );
    assert_ne!(src_id, dst_id, "a new cluster id");
    // A member already in a cluster refuses a restore.
    let e = restore_online(dst.nodes[1].peer_port, &bytes)
        .await
        .expect_err("already initialized");
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    // Restarted, the first member keeps the restored data (the snapshot is durable).
    dst.kill9(0);
    dst.spawn(0);
    dst.wait_value(0, "after", "restore", Duration::from_secs(20))
        .await;
}
