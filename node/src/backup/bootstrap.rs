//! Starting a new cluster from a backup on a running member that has not joined one (what
//! the operator's `spec.restoreFrom` drives). The backup streams in to a file beside the data
//! and is checked whole before anything changes; its state, moved past its revisions, becomes
//! the member's first snapshot, installed through Raft as one a leader sends would be, with
//! this member the only voter of a new cluster id. The other members then join as learners,
//! as after an ordinary init — so a restore is an init with data, not a second way to start.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use concord_proto::AdminResult;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use super::restore::{first_snapshot_meta, rebase};
use super::{load_file, BackupError, Verifier};
use crate::app::App;
use crate::membership::error::{result, AdminError};
use crate::raft::{Snapshot, Vote};

/// Where the incoming backup is kept until it is installed (then deleted).
const INCOMING: &str = "restore.incoming";
/// Revisions skipped past the backup's, as `concordctl snapshot restore` skips by default:
/// the first write after the restore gets a revision above any a client of the old cluster saw.
pub const BUMP_REVISION: u64 = 1_000_000;
/// How long the member may take to elect itself once the snapshot is in.
const ELECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Deletes the incoming file however the restore ends.
struct Incoming(PathBuf);

impl Drop for Incoming {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn invalid(e: BackupError) -> AdminError {
    AdminError::Invalid(e.to_string())
}

fn disk(what: &str, e: impl std::fmt::Display) -> AdminError {
    AdminError::Internal(format!("{what}: {e}"))
}

impl App {
    /// Receives a backup as `chunks` and starts a new cluster from it on this member.
    pub async fn admin_restore<S>(&self, mut chunks: S) -> Result<AdminResult, AdminError>
    where
        S: Stream<Item = Result<Vec<u8>, tonic::Status>> + Unpin + Send,
    {
        self.check_uninitialized("; a backup is restored into a new cluster's first member")
            .await?;
        let _guard = self.lock_membership()?;
        let incoming = Incoming(self.config.data_dir.join(INCOMING));
        let mut file = tokio::fs::File::create(&incoming.0)
            .await
            .map_err(|e| disk("creating the incoming backup file", e))?;
        let mut verifier = Verifier::default();
        let limit = self.config.raft.max_snapshot_bytes;
        let mut received: u64 = 0;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|s| {
                AdminError::Invalid(format!(
                    "the backup stream broke off after {received} bytes: {}",
                    s.message()
                ))
            })?;
            received += chunk.len() as u64;
            if received > limit {
                return Err(AdminError::Invalid(format!(
                    "the backup is larger than raft.maxSnapshotBytes ({limit} bytes)"
                )));
            }
            verifier.update(&chunk).map_err(invalid)?;
            file.write_all(&chunk)
                .await
                .map_err(|e| disk("writing the incoming backup", e))?;
        }
        verifier.finish().map_err(invalid)?;
        file.flush()
            .await
            .map_err(|e| disk("writing the incoming backup", e))?;
        drop(file);

        let path = incoming.0.clone();
        let me = self.id();
        let own = self.config.own_member();
        let snapshots = self.snapshots.clone();
        let (verified, snapshot, keys, revision) = tokio::task::spawn_blocking(move || {
            let (verified, mut kv, auth) = load_file(&path).map_err(invalid)?;
            let start = rebase(&verified, &mut kv, BUMP_REVISION, true).ok_or_else(|| {
                AdminError::Invalid("the backup's revision is too large to continue from".into())
            })?;
            let meta = first_snapshot_meta(start, me, BTreeMap::from([(me, own)]));
            let mut writer = snapshots
                .create(&meta)
                .map_err(|e| disk("writing the first snapshot", e))?;
            crate::storage::write_state(&mut writer, &kv, &auth)
                .map_err(|e| disk("writing the first snapshot", e))?;
            let file = writer
                .finish()
                .map_err(|e| disk("writing the first snapshot", e))?;
            let (keys, revision) = (kv.len(), kv.revision());
            Ok::<_, AdminError>((
                verified,
                Snapshot {
                    meta,
                    snapshot: file,
                },
                keys,
                revision,
            ))
        })
        .await
        .map_err(|e| AdminError::Internal(format!("restore task: {e}")))??;

        let cluster = self
            .cluster_id
            .set_if_unset(&format!("ckv-{:016x}", rand::random::<u64>()))
            .map_err(|e| disk("recording the cluster id", e))?;
        // The snapshot's entries are attributed to this member as term 1's leader; the vote
        // that goes with them must be at least that for Raft to take the snapshot.
        self.raft
            .install_full_snapshot(Vote::new_committed(1, me), snapshot)
            .await
            .map_err(|e| AdminError::Internal(format!("installing the restored state: {e}")))?;
        // The only voter: no need to wait out an election timeout.
        let _ = self.raft.trigger().elect(false).await;
        let leading = self
            .wait_metrics(ELECTION_TIMEOUT, |m| m.current_leader == Some(me))
            .await;
        let note = if leading {
            ""
        } else {
            "; it has not elected itself yet"
        };
        tracing::info!(
            cluster = %cluster,
            from = %verified.header.cluster_id,
            backup_revision = verified.header.revision,
            revision,
            keys,
            "cluster restored from a backup"
        );
        Ok(result(
            format!(
                "restored cluster {cluster} from a backup of {} at revision {} ({keys} keys, sha256 {}); revisions continue after {revision}{note}",
                verified.header.cluster_id, verified.header.revision, verified.checksum
            ),
            0,
        ))
    }
}
