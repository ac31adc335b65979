//! openraft's own storage conformance suite, run against our log and state machine.

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;

use super::{LogStore, SnapshotStore, StateMachineStore};
use crate::raft::TypeConfig;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        // Tiny segments so the suite exercises rolling, truncation and purge across files.
        let log = LogStore::open(&dir.path().join("raft"), 512).expect("open log");
        let sm = StateMachineStore::open(
            SnapshotStore::open(&dir.path().join("snapshots")).expect("open snapshots"),
            Default::default(),
        )
        .expect("open state machine");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(Builder).await
}
