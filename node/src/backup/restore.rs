//! Restoring a backup, offline, into the data dir of one member of a **new** cluster: the
//! backup's state becomes the member's snapshot, with a new cluster id and the new membership,
//! and nothing else from the old cluster comes along (no log, no members, no ids).
//!
//! Revisions are Raft indexes here, so the new cluster's log starts past the backup's revision
//! plus `bump_revision`: the first write after the restore gets a revision above every one a
//! client saw before. With `mark_compacted`, history up to that point is compacted away, so a
//! watcher resuming from an old revision is told "compacted" instead of missing events. That is
//! what `etcdutl snapshot restore --bump-revision --mark-compacted` does.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use openraft::impls::leader_id_adv::LeaderId;
use openraft::storage::RaftLogStorage;

use super::{load_file, Verified};
use crate::raft::{node_id_for_name, LogId, Member, NodeId, SnapshotMeta, StoredMembership, Vote};
use crate::storage::identity::{self, ClusterId, NewId};
use crate::storage::{LogStore, SnapshotStore};
use crate::store::mvcc::MvccStore;

/// Log segment size of a restored data dir (the node's default; it only sizes new segments).
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub backup: PathBuf,
    /// Must not exist, or be empty.
    pub data_dir: PathBuf,
    /// This member's name, one of `initial_cluster`.
    pub name: String,
    /// Every member of the new cluster: name and peer address (`host:port`).
    pub initial_cluster: Vec<(String, String)>,
    /// Tells apart clusters restored from one backup with the same members.
    pub cluster_token: String,
    pub bump_revision: u64,
    pub mark_compacted: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Restored {
    pub cluster_id: String,
    pub member: String,
    pub member_id: String,
    /// The backup's revision, and the revision the new cluster starts after.
    pub backup_revision: u64,
    pub revision: u64,
    pub compacted: u64,
    pub keys: u64,
    pub checksum: String,
}

/// Parses etcd's `--initial-cluster` (`name=host:port,...`; an `http://` or `https://` in front
/// of an address is dropped).
pub fn parse_initial_cluster(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, addr) = part
            .split_once('=')
            .with_context(|| format!("--initial-cluster entry {part:?} is not name=host:port"))?;
        let addr = addr
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/');
        if name.is_empty() || !addr.contains(':') {
            anyhow::bail!("--initial-cluster entry {part:?} is not name=host:port");
        }
        if out.iter().any(|(n, _)| n == name) {
            anyhow::bail!("--initial-cluster names {name:?} twice");
        }
        out.push((name.to_string(), addr.to_string()));
    }
    if out.is_empty() {
        anyhow::bail!("--initial-cluster names no member");
    }
    Ok(out)
}

/// The new cluster's id: the same for every member restored with the same backup, members and
/// token; different from the backup's cluster.
fn new_cluster_id(verified: &Verified, members: &[(String, String)], token: &str) -> String {
    let mut names: Vec<String> = members.iter().map(|(n, a)| format!("{n}={a}")).collect();
    names.sort();
    let seed = format!("{}|{}|{token}", verified.checksum, names.join(","));
    format!("restored-{:013x}", node_id_for_name(&seed))
}

/// Moves the backup's store past its revision (and Raft index) by `bump`, compacting what came
/// before when `mark_compacted`; returns the new cluster's first log index. None on overflow.
pub(crate) fn rebase(
    verified: &Verified,
    kv: &mut MvccStore,
    bump: u64,
    mark_compacted: bool,
) -> Option<u64> {
    let start = kv
        .revision()
        .max(verified.header.raft_index)
        .checked_add(bump)?;
    kv.move_revision_to(start, mark_compacted);
    Some(start)
}

/// The new cluster's first snapshot ends at `start`, in term 1 "led" by `first`, with
/// `members` as its voters.
pub(crate) fn first_snapshot_meta(
    start: u64,
    first: NodeId,
    members: BTreeMap<NodeId, Member>,
) -> SnapshotMeta {
    let log_id = LogId::new(
        LeaderId {
            term: 1,
            node_id: first,
        },
        start,
    );
    SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(Some(log_id), openraft::Membership::from(members)),
    }
}

pub async fn restore(o: &RestoreOptions) -> anyhow::Result<Restored> {
    if !o.initial_cluster.iter().any(|(n, _)| *n == o.name) {
        anyhow::bail!(
            "--name {:?} is not in --initial-cluster ({})",
            o.name,
            o.initial_cluster
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let members: BTreeMap<NodeId, Member> = o
        .initial_cluster
        .iter()
        .map(|(name, addr)| {
            (
                node_id_for_name(name),
                Member {
                    name: name.clone(),
                    addr: addr.clone(),
                },
            )
        })
        .collect();
    if members.len() != o.initial_cluster.len() {
        anyhow::bail!("two --initial-cluster names map to one member id; rename one");
    }
    if o.data_dir.exists()
        && std::fs::read_dir(&o.data_dir)
            .with_context(|| format!("reading {}", o.data_dir.display()))?
            .next()
            .is_some()
    {
        anyhow::bail!(
            "--data-dir {} is not empty: a restore writes a new member's data dir",
            o.data_dir.display()
        );
    }
    // Everything is checked before anything is written.
    let (verified, mut kv, auth) =
        load_file(&o.backup).map_err(|e| anyhow::anyhow!("{}: {e}", o.backup.display()))?;
    let backup_revision = kv.revision();
    let start = rebase(&verified, &mut kv, o.bump_revision, o.mark_compacted)
        .context("--bump-revision is too large")?;

    std::fs::create_dir_all(&o.data_dir)
        .with_context(|| format!("creating {}", o.data_dir.display()))?;
    let me = identity::load_or_create(&o.data_dir, &o.name, NewId::FromName)?;
    let cluster_id = new_cluster_id(&verified, &o.initial_cluster, &o.cluster_token);
    ClusterId::load(&o.data_dir)?.set_if_unset(&cluster_id)?;

    // The first member (by id) "led" term 1, which ends at the snapshot; the members elect a
    // leader for term 2 when they start.
    let first = members.keys().next().copied().unwrap_or(me.node_id);
    let meta = first_snapshot_meta(start, first, members);
    let log_id = meta
        .last_log_id
        .context("the first snapshot has a log id")?;
    let snapshots = SnapshotStore::open(&o.data_dir.join("snapshots"))?;
    let mut writer = snapshots.create(&meta)?;
    crate::storage::write_state(&mut writer, &kv, &auth)?;
    snapshots.install(&meta, writer.finish()?)?;
    let mut log = LogStore::open(&o.data_dir.join("raft"), SEGMENT_BYTES)?;
    log.save_vote(&Vote::new(1, first)).await?;
    log.purge(log_id).await?;
    Ok(Restored {
        cluster_id,
        member: o.name.clone(),
        member_id: format!("{:x}", me.node_id),
        backup_revision,
        revision: kv.revision(),
        compacted: kv.compacted(),
        keys: kv.len(),
        checksum: verified.checksum,
    })
}
