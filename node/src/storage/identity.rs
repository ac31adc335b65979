//! Who this node is: its Raft id, its data dir's incarnation, and the cluster it belongs to.
//!
//! The Raft id is chosen once, when the data dir is first used, and stored there, so it is stable
//! across restarts. In static mode (a peer list in the config) it is derived from the name alone,
//! because every node must know every other node's id before they have talked. In join mode (the
//! operator's mode) it is derived from the name *and* a random incarnation, so a member restarted
//! on an empty volume is a new member and can never answer for the one it replaces. A node
//! added through etcd's `MemberAdd` is given its id by the cluster (`--member-id`) instead.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::codec::{self, LegacyStateFile};
use crate::raft::{node_id_for_name, NodeId};
use crate::storage::fsutil::atomic_write;

const IDENTITY_FILE: &str = "identity";
const CLUSTER_ID_FILE: &str = "cluster_id";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: NodeId,
    pub name: String,
    /// Random, created with the data dir.
    pub incarnation: String,
}

/// How a fresh data dir's Raft id is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewId {
    /// Static peer list: from the name, which every peer knows.
    FromName,
    /// Join mode: from the name and a random incarnation.
    Incarnation,
    /// Join mode, the id the cluster assigned (etcd's `MemberAdd`).
    Assigned(NodeId),
}

/// Loads the identity stored in `dir`, or creates one for a fresh data dir.
pub fn load_or_create(dir: &Path, name: &str, new_id: NewId) -> anyhow::Result<Identity> {
    let path = dir.join(IDENTITY_FILE);
    if let Some(bytes) = codec::load_state_file(&path, LegacyStateFile::Checksummed)? {
        let id: Identity = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{} is not a member identity: {e}", path.display()))?;
        if id.name != name {
            anyhow::bail!(
                "data dir {} belongs to member {:?}, not {name:?}; use that name or an empty data dir",
                dir.display(),
                id.name
            );
        }
        if let NewId::Assigned(assigned) = new_id {
            if assigned != id.node_id {
                anyhow::bail!(
                    "data dir {} belongs to member {:x}, not to the assigned --member-id {assigned:x}; \
                     use an empty data dir for a newly added member",
                    dir.display(),
                    id.node_id
                );
            }
        }
        return Ok(id);
    }
    let incarnation = format!("{:016x}", rand::random::<u64>());
    let node_id = match new_id {
        NewId::FromName => node_id_for_name(name),
        NewId::Incarnation => node_id_for_name(&format!("{name}/{incarnation}")),
        NewId::Assigned(id) => id,
    };
    let id = Identity {
        node_id,
        name: name.to_string(),
        incarnation,
    };
    atomic_write(&path, &codec::state_file(&serde_json::to_vec(&id)?))?;
    Ok(id)
}

/// The cluster this node belongs to. Unknown for a node waiting to join until the first
/// message from a cluster arrives; fixed from then on.
#[derive(Debug, Clone)]
pub struct ClusterId {
    inner: Arc<RwLock<Option<Arc<str>>>>,
    /// Serializes writers of the file, so `inner`'s lock is never held across an fsync: every
    /// peer message reads the id.
    persist: Arc<parking_lot::Mutex<()>>,
    path: PathBuf,
}

impl ClusterId {
    pub fn load(dir: &Path) -> anyhow::Result<ClusterId> {
        let path = dir.join(CLUSTER_ID_FILE);
        let current = match codec::load_state_file(&path, LegacyStateFile::Bare)? {
            Some(bytes) => {
                let text = String::from_utf8(bytes)
                    .map_err(|_| anyhow::anyhow!("{} is not a cluster id", path.display()))?;
                let text = text.trim();
                (!text.is_empty()).then(|| Arc::from(text))
            }
            None => None,
        };
        Ok(ClusterId {
            inner: Arc::new(RwLock::new(current)),
            persist: Arc::default(),
            path,
        })
    }

    pub fn get(&self) -> Option<Arc<str>> {
        self.inner.read().clone()
    }

    /// The id as sent on the wire ("" while unknown).
    pub fn wire(&self) -> String {
        self.get().map(|s| s.to_string()).unwrap_or_default()
    }

    /// Sets the id if none is set yet (durably). Returns the id in force.
    pub fn set_if_unset(&self, id: &str) -> std::io::Result<Arc<str>> {
        let _writer = self.persist.lock();
        if let Some(existing) = self.get() {
            return Ok(existing);
        }
        let bytes = codec::state_file(id.as_bytes());
        // Called from async code (a gRPC handler, an admin call): the fsyncs must not stall
        // the other tasks on this runtime thread.
        let write = || atomic_write(&self.path, &bytes);
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(write)?
            }
            _ => write()?,
        }
        let id: Arc<str> = Arc::from(id);
        *self.inner.write() = Some(id.clone());
        Ok(id)
    }

    /// Checks a peer's cluster id: equal, or adopted if this node has none yet.
    pub fn accept(&self, theirs: &str) -> Result<(), String> {
        if theirs.is_empty() {
            return Ok(());
        }
        match self.get() {
            Some(ours) if &*ours == theirs => Ok(()),
            Some(ours) => Err(format!(
                "cluster-mismatch: this node belongs to cluster {ours}, the message to cluster {theirs}"
            )),
            None => {
                self.set_if_unset(theirs)
                    .map_err(|e| format!("cannot persist cluster id: {e}"))?;
                tracing::info!(cluster = theirs, "joined cluster");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_stable_and_a_fresh_dir_gets_a_new_join_id() {
        let a = tempfile::tempdir().unwrap();
        let first = load_or_create(a.path(), "concord-0", NewId::Incarnation).unwrap();
        assert_eq!(
            load_or_create(a.path(), "concord-0", NewId::Incarnation).unwrap(),
            first
        );
        let b = tempfile::tempdir().unwrap();
        let wiped = load_or_create(b.path(), "concord-0", NewId::Incarnation).unwrap();
        assert_ne!(wiped.node_id, first.node_id);
        assert!(load_or_create(a.path(), "concord-1", NewId::Incarnation).is_err());
        let s = tempfile::tempdir().unwrap();
        assert_eq!(
            load_or_create(s.path(), "node1", NewId::FromName)
                .unwrap()
                .node_id,
            node_id_for_name("node1")
        );
    }

    #[test]
    fn an_assigned_id_is_taken_by_a_fresh_dir_and_must_match_a_used_one() {
        let d = tempfile::tempdir().unwrap();
        let given = load_or_create(d.path(), "n4", NewId::Assigned(0xabc)).unwrap();
        assert_eq!(given.node_id, 0xabc);
        assert_eq!(
            load_or_create(d.path(), "n4", NewId::Assigned(0xabc)).unwrap(),
            given
        );
        // Without the flag the stored id stays; with another id the dir is refused by name.
        assert_eq!(
            load_or_create(d.path(), "n4", NewId::Incarnation)
                .unwrap()
                .node_id,
            0xabc
        );
        let e = load_or_create(d.path(), "n4", NewId::Assigned(0xdef)).unwrap_err();
        assert!(e.to_string().contains("member abc"), "{e}");
    }

    #[test]
    fn cluster_id_is_adopted_once_and_mismatches_refused() {
        let d = tempfile::tempdir().unwrap();
        let c = ClusterId::load(d.path()).unwrap();
        assert!(c.get().is_none());
        assert!(c.accept("").is_ok());
        assert!(c.accept("abc").is_ok());
        assert!(c.accept("abc").is_ok());
        assert!(c.accept("xyz").unwrap_err().contains("cluster-mismatch"));
        assert_eq!(&*ClusterId::load(d.path()).unwrap().get().unwrap(), "abc");
    }
}
