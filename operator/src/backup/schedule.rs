//! `ConcordBackupSchedule`: backups on a cron schedule with retention. Pure here: when the
//! next backup is due ([`due`]) and which old ones go ([`to_prune`]), from explicit times, so
//! both are tested without waiting; the reconcile (`schedule_reconcile`) does the I/O.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use croner::Cron;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{BackupDestination, BackupPhase};

/// Label on every backup a schedule creates (its value: the schedule's name).
pub const SCHEDULE_LABEL: &str = "concordkv.io/schedule";

#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "concordkv.io",
    version = "v1alpha1",
    kind = "ConcordBackupSchedule",
    plural = "concordbackupschedules",
    shortname = "concordbackupschedule",
    category = "concordkv",
    namespaced,
    status = "ConcordBackupScheduleStatus",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Paused", type_ = "boolean", json_path = ".spec.paused"),
    printcolumn(
        name = "Last success",
        type_ = "date",
        json_path = ".status.lastSuccessfulTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ConcordBackupScheduleSpec {
    /// The ConcordCluster (same namespace) to back up.
    pub cluster: String,
    /// When, as cron's five fields in UTC (`0 2 * * *`: every day at 02:00). A run missed
    /// while the operator was away is taken once when it is back, not once per missed time.
    pub schedule: String,
    pub destination: BackupDestination,
    #[serde(default)]
    pub retention: Retention,
    /// Take no new backups (and prune nothing) until unpaused.
    #[serde(default)]
    pub paused: bool,
    /// How many of the latest runs the status lists. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 50))]
    pub history: Option<u32>,
}

/// Which successful backups to keep. The newest successful one is always kept, and nothing is
/// pruned until a new backup has succeeded: a failing schedule never eats its last good backup.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Keep at most this many successful backups. Default 7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub keep: Option<u32>,
    /// Drop successful backups older than this many days (the newest stays regardless).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_age_days: Option<u32>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConcordBackupScheduleStatus {
    /// The scheduled time of the last backup created (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<String>,
    /// The latest runs, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<ScheduledRun>,
    /// Backups pruned by retention so far.
    #[serde(default)]
    pub pruned: u64,
    /// What is wrong with the spec, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledRun {
    /// The ConcordBackup.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackupPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

pub fn parse_schedule(text: &str) -> Result<Cron, String> {
    if text.split_whitespace().count() != 5 {
        return Err(format!(
            "spec.schedule {text:?} must have cron's five fields (minute hour day month weekday)"
        ));
    }
    Cron::from_str(text).map_err(|e| format!("spec.schedule {text:?}: {e}"))
}

/// The scheduled time a backup is due for: the latest occurrence after `after` and at or
/// before `now`, or None.
pub fn due(cron: &Cron, after: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let latest = cron.find_previous_occurrence(&now, true).ok()?;
    (latest > after).then_some(latest)
}

pub fn next(cron: &Cron, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&now, false).ok()
}

/// A run as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub name: String,
    pub succeeded: bool,
    pub finished: Option<DateTime<Utc>>,
}

/// Which successful runs retention removes: beyond the newest `keep`, and older than
/// `max_age` — never the newest success, and nothing while there is no success at all.
pub fn to_prune(
    runs: &[Run],
    keep: u32,
    max_age: Option<chrono::Duration>,
    now: DateTime<Utc>,
) -> Vec<String> {
    let mut ok: Vec<&Run> = runs.iter().filter(|r| r.succeeded).collect();
    ok.sort_by_key(|r| std::cmp::Reverse(r.finished));
    let keep = keep.max(1) as usize;
    ok.iter()
        .enumerate()
        .skip(1)
        .filter(|(i, r)| {
            *i >= keep || max_age.is_some_and(|age| r.finished.is_some_and(|f| now - f > age))
        })
        .map(|(_, r)| r.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    #[test]
    fn a_schedule_fires_once_per_time_and_once_after_an_absence() {
        let cron = parse_schedule("0 2 * * *").expect("cron");
        let last = at("2026-12-05T02:00:00Z");
        assert_eq!(due(&cron, last, at("2026-12-05T12:00:00Z")), None);
        assert_eq!(
            due(&cron, last, at("2026-12-06T02:00:00Z")),
            Some(at("2026-12-06T02:00:00Z"))
        );
        // Away for three days: one backup, for the latest time.
        assert_eq!(
            due(&cron, last, at("2026-12-08T09:30:00Z")),
            Some(at("2026-12-08T02:00:00Z"))
        );
        assert_eq!(
            next(&cron, at("2026-12-05T12:00:00Z")),
            Some(at("2026-12-06T02:00:00Z"))
        );
        assert!(parse_schedule("0 2 * *").is_err());
        assert!(parse_schedule("61 2 * * *").is_err());
        assert!(parse_schedule("@daily please").is_err());
    }

    #[test]
    fn retention_keeps_the_newest_and_counts_only_successes() {
        let now = at("2026-12-10T00:00:00Z");
        let run = |name: &str, ok: bool, day: u32| Run {
            name: name.into(),
            succeeded: ok,
            finished: Some(at(&format!("2026-12-0{day}T00:00:00Z"))),
        };
        let runs = vec![
            run("a", true, 1),
            run("b", true, 2),
            run("c", false, 3),
            run("d", true, 4),
        ];
        assert_eq!(to_prune(&runs, 2, None, now), ["a"]);
        assert_eq!(
            to_prune(&runs, 7, Some(chrono::Duration::days(7)), now),
            ["b", "a"]
        );
        // All too old: the newest success still stays.
        assert_eq!(
            to_prune(&runs, 7, Some(chrono::Duration::days(1)), now),
            ["b", "a"]
        );
        // Failures alone never prune.
        let failing = vec![run("x", true, 1), run("y", false, 5), run("z", false, 6)];
        assert!(to_prune(&failing, 1, Some(chrono::Duration::days(1)), now).is_empty());
    }

    proptest! {
        #[test]
        fn the_newest_success_is_never_pruned(
            runs in proptest::collection::vec((any::<bool>(), 0u32..1000), 0..20),
            keep in 0u32..5, age in proptest::option::of(0i64..100),
        ) {
            let now = at("2026-12-10T00:00:00Z");
            let runs: Vec<Run> = runs.iter().enumerate().map(|(i, (ok, h))| Run {
                name: format!("r{i}"),
                succeeded: *ok,
                // Distinct times: "the newest" is one run.
                finished: Some(now - chrono::Duration::hours(i64::from(*h)) - chrono::Duration::seconds(i as i64)),
            }).collect();
            let pruned = to_prune(&runs, keep, age.map(chrono::Duration::hours), now);
            let newest = runs.iter().filter(|r| r.succeeded).max_by_key(|r| r.finished);
            if let Some(n) = newest {
                prop_assert!(!pruned.contains(&n.name));
            }
            for p in &pruned {
                prop_assert!(runs.iter().any(|r| &r.name == p && r.succeeded));
            }
            let successes = runs.iter().filter(|r| r.succeeded).count();
            prop_assert!(successes - pruned.len() >= 1 || successes == 0);
        }
    }
}
