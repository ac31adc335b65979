//! Reconcile one ConcordBackupSchedule: list its backups → status → prune by retention (the
//! objects in the store first, then the ConcordBackups) → create the backup that is due. The
//! backups themselves are ConcordBackups, taken by their own reconcile.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action as Requeue;
use kube::{Api, Resource, ResourceExt};

use super::job::{self, JobState};
use super::reconcile::{credentials_for, job_pod, Error};
use super::schedule::{
    due, next, parse_schedule, to_prune, ConcordBackupSchedule, ConcordBackupScheduleStatus, Run,
    ScheduledRun, SCHEDULE_LABEL,
};
use super::{
    BackupPhase, ConcordBackup, ConcordBackupSpec, Destination, PvcDestination, S3Destination,
};
use crate::naming::MANAGER;
use crate::reconcile::Context;

const DEFAULT_KEEP: u32 = 7;
const DEFAULT_HISTORY: usize = 5;

pub fn error_policy(_s: Arc<ConcordBackupSchedule>, error: &Error, _ctx: Arc<Context>) -> Requeue {
    tracing::warn!(%error, "backup schedule reconcile failed");
    Requeue::requeue(Duration::from_secs(30))
}

pub async fn reconcile(s: Arc<ConcordBackupSchedule>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    reconcile_at(&s, &ctx, Utc::now()).await
}

fn parse_time(t: Option<&str>) -> Option<DateTime<Utc>> {
    t.and_then(|t| t.parse().ok())
}

/// The reconcile at `now` (tests pass a clock of their own).
pub async fn reconcile_at(
    s: &ConcordBackupSchedule,
    ctx: &Context,
    now: DateTime<Utc>,
) -> Result<Requeue, Error> {
    let ns = s.namespace().ok_or(Error::NoNamespace)?;
    let name = s.name_any();
    let mut status = s.status.clone().unwrap_or_default();
    let cron = match parse_schedule(&s.spec.schedule) {
        Ok(c) => c,
        Err(message) => {
            status.message = Some(message);
            write_status(ctx, s, &ns, &status).await?;
            return Ok(Requeue::requeue(Duration::from_secs(300)));
        }
    };
    status.message = None;

    let backups: Api<ConcordBackup> = Api::namespaced(ctx.client.clone(), &ns);
    let mut mine = backups
        .list(&ListParams::default().labels(&format!("{SCHEDULE_LABEL}={name}")))
        .await?
        .items;
    let finished =
        |b: &ConcordBackup| parse_time(b.status.as_ref().and_then(|st| st.finished_at.as_deref()));
    mine.sort_by_key(|b| std::cmp::Reverse(b.metadata.creation_timestamp.clone().map(|t| t.0)));
    let phase = |b: &ConcordBackup| b.status.as_ref().and_then(|st| st.phase);

    // Retention, only ever after a success (see `to_prune`).
    if !s.spec.paused {
        let runs: Vec<Run> = mine
            .iter()
            .map(|b| Run {
                name: b.name_any(),
                succeeded: phase(b) == Some(BackupPhase::Succeeded),
                finished: finished(b),
            })
            .collect();
        let keep = s.spec.retention.keep.unwrap_or(DEFAULT_KEEP);
        let max_age = s
            .spec
            .retention
            .max_age_days
            .map(|d| chrono::Duration::days(i64::from(d)));
        let doomed = to_prune(&runs, keep, max_age, now);
        if !doomed.is_empty() {
            let gone = match s.spec.destination.checked() {
                Ok(Destination::S3(s3)) => {
                    prune_s3(ctx, &ns, s3, &mine, &doomed, &mut status).await
                }
                Ok(Destination::Pvc(pvc)) => {
                    prune_pvc(ctx, s, &ns, pvc, &mine, &doomed, &mut status).await
                }
                Err(m) => {
                    status.message = Some(format!("cannot prune old backups: {m}"));
                    Vec::new()
                }
            };
            for victim in &gone {
                backups.delete(victim, &DeleteParams::default()).await?;
                status.pruned += 1;
                tracing::info!(namespace = %ns, schedule = %name, backup = %victim, "pruned by retention");
            }
            mine.retain(|b| !gone.contains(&b.name_any()));
        }
    }

    // A new backup when one is due and none is still running.
    let busy = mine
        .iter()
        .any(|b| !phase(b).is_some_and(BackupPhase::finished));
    let after = parse_time(status.last_schedule_time.as_deref())
        .or_else(|| {
            s.metadata
                .creation_timestamp
                .as_ref()
                .and_then(|t| t.0.to_string().parse().ok())
        })
        .unwrap_or(now);
    if !s.spec.paused && !busy {
        if let Some(at) = due(&cron, after, now) {
            let backup_name = format!("{name}-{}", at.format("%Y%m%d%H%M"));
            let b = ConcordBackup {
                metadata: ObjectMeta {
                    name: Some(backup_name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(BTreeMap::from([
                        (SCHEDULE_LABEL.to_string(), name.clone()),
                        (
                            "app.kubernetes.io/managed-by".to_string(),
                            MANAGER.to_string(),
                        ),
                    ])),
                    owner_references: s.controller_owner_ref(&()).map(|o| vec![o]),
                    ..Default::default()
                },
                spec: ConcordBackupSpec {
                    cluster: s.spec.cluster.clone(),
                    destination: s.spec.destination.clone(),
                },
                status: None,
            };
            match backups.create(&PostParams::default(), &b).await {
                Ok(created) => mine.insert(0, created),
                // Created by an earlier pass whose status write was lost: it is this run.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            status.last_schedule_time = Some(at.to_rfc3339());
            tracing::info!(namespace = %ns, schedule = %name, backup = %backup_name, "scheduled backup created");
        }
    }

    let history = s
        .spec
        .history
        .map(|h| h as usize)
        .unwrap_or(DEFAULT_HISTORY);
    status.recent = mine
        .iter()
        .take(history)
        .map(|b| {
            let st = b.status.clone().unwrap_or_default();
            ScheduledRun {
                name: b.name_any(),
                phase: st.phase,
                location: st.location,
                revision: st.revision,
                finished_at: st.finished_at,
            }
        })
        .collect();
    if let Some(t) = mine
        .iter()
        .filter(|b| phase(b) == Some(BackupPhase::Succeeded))
        .filter_map(finished)
        .max()
    {
        status.last_successful_time = Some(t.to_rfc3339());
    }
    let upcoming = next(&cron, now);
    status.next_schedule_time = upcoming.map(|t| t.to_rfc3339());
    write_status(ctx, s, &ns, &status).await?;
    let wait = upcoming
        .map(|t| (t - now).num_seconds().max(1) as u64)
        .unwrap_or(300)
        .min(300);
    Ok(Requeue::requeue(Duration::from_secs(wait)))
}

async fn write_status(
    ctx: &Context,
    s: &ConcordBackupSchedule,
    ns: &str,
    status: &ConcordBackupScheduleStatus,
) -> Result<(), Error> {
    if s.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<ConcordBackupSchedule> = Api::namespaced(ctx.client.clone(), ns);
    let patch = serde_json::json!({
        "apiVersion": ConcordBackupSchedule::api_version(&()),
        "kind": ConcordBackupSchedule::kind(&()),
        "status": status,
    });
    api.patch_status(
        &s.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Where a backup is, from its status.
fn location(b: &ConcordBackup) -> Option<&str> {
    b.status.as_ref().and_then(|st| st.location.as_deref())
}

/// Deletes the doomed backups' objects from S3 storage; the backups whose objects are gone.
async fn prune_s3(
    ctx: &Context,
    ns: &str,
    s3: &S3Destination,
    mine: &[ConcordBackup],
    doomed: &[String],
    status: &mut ConcordBackupScheduleStatus,
) -> Vec<String> {
    let store = match credentials_for(ctx, ns, s3).await {
        Ok(store) => store,
        Err(m) => {
            status.message = Some(format!("cannot prune old backups: {m}"));
            return Vec::new();
        }
    };
    let mut gone = Vec::new();
    for b in mine.iter().filter(|b| doomed.contains(&b.name_any())) {
        let key = location(b)
            .and_then(|l| l.strip_prefix("s3://"))
            .and_then(|l| l.split_once('/'))
            .map(|(_, key)| key.to_string());
        if let Some(key) = key {
            if let Err(e) = store
                .delete(&object_store::path::Path::from(key.as_str()))
                .await
            {
                if !matches!(e, object_store::Error::NotFound { .. }) {
                    status.message = Some(format!("cannot prune {key}: {e}"));
                    continue;
                }
            }
        }
        gone.push(b.name_any());
    }
    gone
}

/// Removes the doomed backups' files from the claim, by a Job: started on one pass, its
/// outcome read on a later one. The backups whose files are gone (none while it runs).
async fn prune_pvc(
    ctx: &Context,
    s: &ConcordBackupSchedule,
    ns: &str,
    pvc: &PvcDestination,
    mine: &[ConcordBackup],
    doomed: &[String],
    status: &mut ConcordBackupScheduleStatus,
) -> Vec<String> {
    let victims: Vec<&ConcordBackup> = mine
        .iter()
        .filter(|b| doomed.contains(&b.name_any()))
        .collect();
    let files: Vec<String> = victims
        .iter()
        .filter_map(|b| location(b).and_then(|l| job::path_in_claim(l, &pvc.claim_name)))
        .map(String::from)
        .collect();
    let all = || victims.iter().map(|b| b.name_any()).collect();
    if files.is_empty() {
        return all();
    }
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let name = job::prune_job_name(&s.name_any(), &files);
    let failed = |status: &mut ConcordBackupScheduleStatus, m: String| {
        status.message = Some(format!("cannot prune old backups: {m}"));
        Vec::new()
    };
    let existing = match jobs.get_opt(&name).await {
        Ok(j) => j,
        Err(e) => return failed(status, e.to_string()),
    };
    let Some(existing) = existing else {
        let clusters: Api<crate::crd::ConcordCluster> = Api::namespaced(ctx.client.clone(), ns);
        let valid = match clusters.get_opt(&s.spec.cluster).await {
            Ok(Some(c)) => match crate::validate::check(&c, ns) {
                Ok(v) => v,
                Err(i) => {
                    return failed(
                        status,
                        format!("the cluster's spec is invalid: {}", i.errors.join("; ")),
                    )
                }
            },
            Ok(None) => {
                return failed(
                    status,
                    format!(
                        "ConcordCluster {} does not exist (its image runs the pruning)",
                        s.spec.cluster
                    ),
                )
            }
            Err(e) => return failed(status, e.to_string()),
        };
        let input = job::JobInput {
            name: name.clone(),
            namespace: ns,
            owner: s.controller_owner_ref(&()),
            cluster: &valid,
            claim: &pvc.claim_name,
            tls_secret: None,
        };
        match jobs
            .create(&PostParams::default(), &job::prune_job(&input, &files))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return failed(status, e.to_string()),
        }
        return Vec::new();
    };
    match job::state(&existing) {
        JobState::Running => Vec::new(),
        JobState::Succeeded => {
            if let Err(e) = jobs.delete(&name, &DeleteParams::background()).await {
                tracing::warn!(error = %e, job = %name, "could not delete a finished prune Job");
            }
            all()
        }
        JobState::Failed(reason) => {
            let pod = job_pod(ctx, ns, &existing).await.ok().flatten();
            let message = job::failure_message(pod.as_ref(), &reason);
            // Tried again on a later pass, with a new Job.
            if existing.metadata.deletion_timestamp.is_none() {
                if let Err(e) = jobs.delete(&name, &DeleteParams::background()).await {
                    tracing::warn!(error = %e, job = %name, "could not delete a failed prune Job");
                }
            }
            failed(status, message)
        }
    }
}
