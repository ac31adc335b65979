//! When a member takes a snapshot: pure rules over what its log and last snapshot hold.
//!
//! A count of entries alone (openraft's policy) makes the cost of snapshots grow with the data:
//! at a fixed interval of N writes, every snapshot rewrites the whole store, so the bytes written
//! per byte stored grow linearly with the store. Asking in addition that the log since the last
//! snapshot is at least `size_ratio` times that snapshot's size bounds it: snapshot bytes stay
//! within `1 / size_ratio` of log bytes, whatever the store holds.

/// What the rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogView {
    /// Entries applied since the last snapshot.
    pub entries_since: u64,
    /// Encoded bytes of the log entries after the last snapshot.
    pub log_bytes_since: u64,
    /// Size of the last snapshot's file (0: none yet).
    pub last_snapshot_bytes: u64,
}

/// The settings (`raft.snapshotThreshold`, `raft.snapshotLogRatio`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SnapshotPolicy {
    pub min_entries: u64,
    pub size_ratio: f64,
}

impl SnapshotPolicy {
    /// Whether a snapshot is due. The log's memory is not a reason: entries over
    /// `raft.maxLogMemoryBytes` are evicted to disk, so a large log costs disk, not memory.
    pub fn due(&self, v: &LogView) -> bool {
        // Rule 1: a snapshot of what the last one holds gains nothing.
        if v.entries_since == 0 {
            return false;
        }
        // Rule 2: enough entries (so small stores snapshot at the familiar pace), and a log at
        // least `size_ratio` of the last snapshot (so big stores do not rewrite themselves
        // every few thousand writes).
        let sized = v.log_bytes_since as f64 >= v.last_snapshot_bytes as f64 * self.size_ratio;
        v.entries_since >= self.min_entries && sized
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const POLICY: SnapshotPolicy = SnapshotPolicy {
        min_entries: 10_000,
        size_ratio: 1.0,
    };

    fn view(entries_since: u64, log_bytes_since: u64, last_snapshot_bytes: u64) -> LogView {
        LogView {
            entries_since,
            log_bytes_since,
            last_snapshot_bytes,
        }
    }

    #[test]
    fn a_small_store_snapshots_every_threshold_entries() {
        assert!(!POLICY.due(&view(9_999, 2_000_000, 1_000)));
        assert!(POLICY.due(&view(10_000, 2_000_000, 1_000)));
        assert!(POLICY.due(&view(10_000, 1_000, 0)));
    }

    #[test]
    fn a_big_store_waits_until_the_log_is_as_big_as_its_snapshot() {
        let snapshot = 150 << 20;
        assert!(!POLICY.due(&view(100_000, 20 << 20, snapshot)));
        assert!(POLICY.due(&view(1_000_000, snapshot, snapshot)));
    }

    #[test]
    fn nothing_applied_since_the_last_snapshot_takes_none() {
        assert!(!POLICY.due(&view(0, 0, 0)));
        let count_only = SnapshotPolicy {
            size_ratio: 0.0,
            ..POLICY
        };
        assert!(count_only.due(&view(10_000, 1, 1 << 30)));
    }

    proptest! {
        /// Simulated writes of random sizes into a growing store: whatever the sizes and the
        /// growth, snapshot bytes written stay within 1/ratio of log bytes (+ one snapshot).
        #[test]
        fn snapshot_bytes_stay_proportional_to_log_bytes(
            writes in prop::collection::vec((1u64..4096, prop::bool::ANY), 1..20_000),
            ratio in 0.25f64..4.0,
        ) {
            let policy = SnapshotPolicy { min_entries: 100, size_ratio: ratio };
            let (mut store, mut log_total, mut snap_total) = (0u64, 0u64, 0u64);
            let (mut since, mut since_bytes, mut last) = (0u64, 0u64, 0u64);
            for (size, grows) in writes {
                if grows { store += size; }
                log_total += size;
                since += 1;
                since_bytes += size;
                let v = LogView { entries_since: since, log_bytes_since: since_bytes, last_snapshot_bytes: last };
                if policy.due(&v) {
                    snap_total += store;
                    last = store;
                    since = 0;
                    since_bytes = 0;
                }
            }
            // Each snapshot of size s followed at least s * ratio log bytes since the previous
            // one, and the store never outgrows the log that built it.
            prop_assert!(snap_total as f64 <= log_total as f64 / ratio + log_total as f64);
        }
    }
}
