//! Reconcile one ConcordBackup: check (cluster, credentials, destination) → pick a member →
//! stream its backup into the store → status. A backup is taken once: Succeeded and Failed are
//! final. A failed attempt is retried a few times (a member restarting, the store briefly
//! away) before the backup fails for good, with the reason in its status and an event.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Resource, ResourceExt};

use super::location::object_key;
use super::upload::{self, Credentials};
use super::{job, BackupPhase, ConcordBackup, ConcordBackupStatus, Destination};
use crate::crd::ConcordCluster;
use crate::naming::MANAGER;
use crate::reconcile::Context;
use crate::tls;

/// Attempts before a backup fails for good, and the pause between them.
pub const MAX_ATTEMPTS: u32 = 3;
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// How often a running backup Job is looked at.
const JOB_POLL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("object has no namespace")]
    NoNamespace,
}

pub fn error_policy(_b: Arc<ConcordBackup>, error: &Error, _ctx: Arc<Context>) -> Requeue {
    tracing::warn!(%error, "backup reconcile failed");
    Requeue::requeue(Duration::from_secs(15))
}

fn now() -> String {
    Timestamp::from_second(Timestamp::now().as_second())
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_string()
}

/// Why a backup cannot be taken now: `retry` says whether another attempt may do better.
pub(crate) struct Stop {
    pub(crate) reason: &'static str,
    pub(crate) message: String,
    pub(crate) retry: bool,
}

fn stop(reason: &'static str, message: impl Into<String>, retry: bool) -> Stop {
    Stop {
        reason,
        message: message.into(),
        retry,
    }
}

async fn write_status(
    ctx: &Context,
    b: &ConcordBackup,
    ns: &str,
    status: &ConcordBackupStatus,
) -> Result<(), Error> {
    let api: Api<ConcordBackup> = Api::namespaced(ctx.client.clone(), ns);
    let patch = serde_json::json!({
        "apiVersion": ConcordBackup::api_version(&()),
        "kind": ConcordBackup::kind(&()),
        "status": status,
    });
    api.patch_status(
        &b.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn publish(ctx: &Context, b: &ConcordBackup, type_: EventType, reason: &str, note: String) {
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Backup".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &b.object_ref(&())).await {
        tracing::warn!(error = %e, "could not publish event");
    }
}

/// The credentials in the destination's Secret; a message naming what is missing otherwise
/// (never a value).
pub(crate) async fn credentials(ctx: &Context, ns: &str, name: &str) -> Result<Credentials, Stop> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret = api
        .get_opt(name)
        .await
        .map_err(|e| {
            stop(
                "CredentialsUnreadable",
                format!("reading Secret {name}: {e}"),
                true,
            )
        })?
        .ok_or_else(|| {
            stop(
                "CredentialsMissing",
                format!("Secret {name} does not exist"),
                false,
            )
        })?;
    let get = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let missing = |key: &str| {
        stop(
            "CredentialsMissing",
            format!("Secret {name} has no {key}"),
            false,
        )
    };
    Ok(Credentials {
        access_key_id: get("AWS_ACCESS_KEY_ID").ok_or_else(|| missing("AWS_ACCESS_KEY_ID"))?,
        secret_access_key: get("AWS_SECRET_ACCESS_KEY")
            .ok_or_else(|| missing("AWS_SECRET_ACCESS_KEY"))?,
        session_token: get("AWS_SESSION_TOKEN"),
    })
}

/// The store a destination names, with its Secret's credentials; a message naming what is
/// wrong (never a credential) otherwise.
pub(crate) async fn credentials_for(
    ctx: &Context,
    ns: &str,
    s3: &super::S3Destination,
) -> Result<std::sync::Arc<dyn object_store::ObjectStore>, String> {
    let creds = credentials(ctx, ns, &s3.credentials_secret)
        .await
        .map_err(|s| s.message)?;
    upload::s3_store(s3, &creds)
}

/// The cluster a backup is of, validated, and the member to take it from.
struct Source {
    cluster: ConcordCluster,
    valid: crate::validate::ValidatedCluster,
    /// The member's pod, its ordinal and its admin address (what the operator dials).
    pod: String,
    ordinal: u32,
    admin_addr: String,
}

/// The cluster and a ready follower (the leader keeps serving writes undisturbed).
async fn source(ctx: &Context, b: &ConcordBackup, ns: &str) -> Result<Source, Stop> {
    let clusters: Api<ConcordCluster> = Api::namespaced(ctx.client.clone(), ns);
    let cluster = clusters
        .get_opt(&b.spec.cluster)
        .await
        .map_err(|e| stop("ClusterUnreadable", e.to_string(), true))?
        .ok_or_else(|| {
            stop(
                "ClusterNotFound",
                format!("ConcordCluster {} does not exist in {ns}", b.spec.cluster),
                false,
            )
        })?;
    let valid = crate::validate::check(&cluster, ns).map_err(|i| {
        stop(
            "ClusterInvalid",
            format!("the cluster's spec is invalid: {}", i.errors.join("; ")),
            false,
        )
    })?;
    let runtime = crate::reconcile::pod_runtime(&ctx.client, &valid.name, ns);
    let view = crate::membership::PodRuntime::view(&runtime)
        .await
        .map_err(|e| stop("MembersUnreadable", e.to_string(), true))?;
    let leader = cluster.status.as_ref().and_then(|s| s.leader.clone());
    let mut candidates: Vec<_> = view
        .pods
        .iter()
        .filter(|p| p.pod.ready && !p.pod.terminating && p.admin_addr.is_some())
        .collect();
    candidates.sort_by_key(|p| (Some(&p.pod.name) == leader.as_ref(), p.pod.ordinal));
    let member = candidates
        .first()
        .ok_or_else(|| stop("NoMemberReady", "no member of the cluster is ready", true))?;
    Ok(Source {
        pod: member.pod.name.clone(),
        ordinal: member.pod.ordinal,
        admin_addr: member.admin_addr.clone().unwrap_or_default(),
        cluster,
        valid,
    })
}

/// Whether the members' admin service speaks TLS (then the operator's certificate opens it).
fn admin_tls(src: &Source) -> bool {
    tls::admin_over_tls(tls::current_peer(&src.cluster, src.valid.tls.wants_tls()))
}

/// Streams the backup into S3 storage: everything that can stop it is a [`Stop`].
async fn take_to_s3(
    ctx: &Context,
    b: &ConcordBackup,
    ns: &str,
    s3: &super::S3Destination,
    status: &mut ConcordBackupStatus,
) -> Result<(), Stop> {
    let src = source(ctx, b, ns).await?;
    let creds = credentials(ctx, ns, &s3.credentials_secret).await?;
    let store = upload::s3_store(s3, &creds).map_err(|m| stop("InvalidDestination", m, false))?;
    let identity = if admin_tls(&src) {
        tls::materials::admin_identity(&ctx.client, &src.valid)
            .await
            .map_err(|e| stop("TlsIdentityMissing", e.to_string(), true))?
    } else {
        None
    };
    let admin = ctx.admin.scoped(identity);
    let chunks = admin
        .snapshot(&src.admin_addr)
        .await
        .map_err(|e| stop("MemberUnreachable", e.to_string(), true))?;
    status.member = Some(src.pod.clone());
    let prefix = s3.prefix.clone();
    let cluster_name = src.valid.name.clone();
    let done = upload::upload(store.as_ref(), chunks, |h| {
        object_key(prefix.as_deref(), ns, &cluster_name, h)
    })
    .await
    .map_err(|e| match e {
        upload::UploadError::Source(m) => stop("BackupStreamFailed", m, true),
        upload::UploadError::Store(m) => stop("UploadFailed", m, true),
    })?;
    status.location = Some(format!("s3://{}/{}", s3.bucket, done.key));
    status.size_bytes = Some(done.bytes);
    status.revision = Some(done.header.revision);
    status.keys = Some(done.header.keys);
    status.checksum = Some(done.checksum);
    Ok(())
}

/// The pod of `job` that ran to its end, if any: labelled with the Job's name and, when both
/// carry one, owned by this Job (not by an earlier attempt's of the same name). An error
/// only when the pods cannot be listed (the outcome is then unknown, not failed).
pub(crate) async fn job_pod(
    ctx: &Context,
    ns: &str,
    job: &Job,
) -> Result<Option<Pod>, kube::Error> {
    let name = job.name_any();
    let uid = job.metadata.uid.as_deref();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let listed = pods
        .list(&ListParams::default().labels(&format!("{}={name}", job::JOB_NAME_LABEL)))
        .await?;
    Ok(listed.items.into_iter().find(|p| {
        let owners = p.metadata.owner_references.as_deref().unwrap_or_default();
        p.labels().get(job::JOB_NAME_LABEL) == Some(&name)
            && (owners.is_empty()
                || uid.is_none()
                || owners.iter().any(|o| Some(o.uid.as_str()) == uid))
            && matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
    }))
}

/// The Secret holding the operator's certificate, for a Job that dials a member.
fn operator_secret(valid: &crate::validate::ValidatedCluster) -> String {
    match &valid.tls.source {
        Some(tls::Source::Secrets { operator, .. }) => operator.clone(),
        _ => crate::naming::operator_secret(&valid.name),
    }
}

/// Moves a backup into a claim one step: starts its Job, or reads the outcome of the one that
/// ran. `Ok(false)`: the Job is still running.
async fn take_to_pvc(
    ctx: &Context,
    b: &ConcordBackup,
    ns: &str,
    pvc: &super::PvcDestination,
    status: &mut ConcordBackupStatus,
) -> Result<bool, Stop> {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let name = job::backup_job_name(&b.name_any());
    let unreadable = |e: kube::Error| stop("JobUnreadable", e.to_string(), true);
    let Some(existing) = jobs.get_opt(&name).await.map_err(unreadable)? else {
        let src = source(ctx, b, ns).await?;
        let input = job::JobInput {
            name: name.clone(),
            namespace: ns,
            owner: b.controller_owner_ref(&()),
            cluster: &src.valid,
            claim: &pvc.claim_name,
            tls_secret: admin_tls(&src).then(|| operator_secret(&src.valid)),
        };
        let member = job::member_address(&src.valid.name, ns, src.ordinal);
        let wanted = job::backup_job(&input, pvc, &member);
        match jobs.create(&PostParams::default(), &wanted).await {
            Ok(_) => {}
            // Created by a pass whose status write was lost: it is this attempt's.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(stop("JobNotCreated", e.to_string(), true)),
        }
        status.member = Some(src.pod);
        return Ok(false);
    };
    // A failed attempt's Job still going away: the next one waits for the name.
    if existing.metadata.deletion_timestamp.is_some() {
        return Ok(false);
    }
    match job::state(&existing) {
        job::JobState::Running => Ok(false),
        job::JobState::Succeeded => {
            // Unreadable pods: try again (the Job stays, so the next pass reads it again).
            let pod = job_pod(ctx, ns, &existing).await.map_err(unreadable)?;
            let report = pod
                .as_ref()
                .ok_or_else(|| "the backup Job's pod is gone".to_string())
                .and_then(job::save_report)
                .map_err(|m| stop("BackupJobFailed", m, false))?;
            let path = report
                .file
                .strip_prefix(job::BACKUP_MOUNT)
                .unwrap_or(&report.file);
            status.location = Some(job::location(&pvc.claim_name, path));
            status.size_bytes = Some(report.file_bytes);
            status.revision = Some(report.revision);
            status.keys = Some(report.keys);
            status.checksum = Some(report.checksum);
            Ok(true)
        }
        job::JobState::Failed(reason) => {
            let pod = job_pod(ctx, ns, &existing).await.ok().flatten();
            let message = job::failure_message(pod.as_ref(), &reason);
            // The next attempt runs a Job of the same name.
            let background = DeleteParams::background();
            if let Err(e) = jobs.delete(&name, &background).await {
                tracing::warn!(error = %e, job = %name, "could not delete a failed backup Job");
            }
            Err(stop("BackupJobFailed", message, true))
        }
    }
}

/// Takes the backup, or moves it a step: `Ok(false)` while a Job runs.
async fn take(
    ctx: &Context,
    b: &ConcordBackup,
    ns: &str,
    status: &mut ConcordBackupStatus,
) -> Result<bool, Stop> {
    match b
        .spec
        .destination
        .checked()
        .map_err(|m| stop("InvalidDestination", m, false))?
    {
        Destination::S3(s3) => take_to_s3(ctx, b, ns, s3, status).await.map(|()| true),
        Destination::Pvc(pvc) => take_to_pvc(ctx, b, ns, pvc, status).await,
    }
}

pub async fn reconcile(b: Arc<ConcordBackup>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let ns = b.namespace().ok_or(Error::NoNamespace)?;
    let mut status = b.status.clone().unwrap_or_default();
    if status.phase.is_some_and(BackupPhase::finished) {
        return Ok(Requeue::await_change());
    }
    // A retry waits out its pause, whatever woke this reconcile (its own status write does).
    if let Some(last) = status
        .last_attempt_at
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
    {
        let since = Timestamp::now().as_second() - last.as_second();
        let pause = RETRY_AFTER.as_secs() as i64;
        if status.phase == Some(BackupPhase::Pending) && since < pause {
            return Ok(Requeue::requeue(Duration::from_secs(
                (pause - since) as u64,
            )));
        }
    }
    // A Job writing into a claim outlives this pass: while it runs, the attempt goes on. An
    // upload into S3 is never seen running (it ends within the pass): a backup found Running
    // is one whose operator stopped mid-upload, and a new attempt starts.
    let by_job = matches!(b.spec.destination.checked(), Ok(Destination::Pvc(_)));
    if !(by_job && status.phase == Some(BackupPhase::Running)) {
        status.attempts += 1;
        status.phase = Some(BackupPhase::Running);
        status.started_at.get_or_insert_with(now);
        status.reason = None;
        status.message = None;
        write_status(&ctx, &b, &ns, &status).await?;
    }
    let outcome = take(&ctx, &b, &ns, &mut status).await;
    match outcome {
        Ok(false) => {
            if b.status.as_ref() != Some(&status) {
                write_status(&ctx, &b, &ns, &status).await?;
            }
            Ok(Requeue::requeue(JOB_POLL))
        }
        Ok(true) => {
            status.phase = Some(BackupPhase::Succeeded);
            status.finished_at = Some(now());
            let note = format!(
                "backup of revision {} ({} keys, {} bytes) from {} written to {}",
                status.revision.unwrap_or(0),
                status.keys.unwrap_or(0),
                status.size_bytes.unwrap_or(0),
                status.member.clone().unwrap_or_default(),
                status.location.clone().unwrap_or_default()
            );
            tracing::info!(namespace = %ns, backup = %b.name_any(), %note);
            write_status(&ctx, &b, &ns, &status).await?;
            publish(&ctx, &b, EventType::Normal, "BackupSucceeded", note).await;
            Ok(Requeue::await_change())
        }
        Err(s) => {
            status.last_attempt_at = Some(now());
            let last = !s.retry || status.attempts >= MAX_ATTEMPTS;
            status.reason = Some(s.reason.into());
            status.message = Some(s.message.clone());
            tracing::warn!(namespace = %ns, backup = %b.name_any(), reason = s.reason, message = %s.message, attempt = status.attempts, "backup attempt failed");
            if last {
                status.phase = Some(BackupPhase::Failed);
                status.finished_at = Some(now());
                write_status(&ctx, &b, &ns, &status).await?;
                publish(&ctx, &b, EventType::Warning, s.reason, s.message).await;
                Ok(Requeue::await_change())
            } else {
                status.phase = Some(BackupPhase::Pending);
                write_status(&ctx, &b, &ns, &status).await?;
                Ok(Requeue::requeue(RETRY_AFTER))
            }
        }
    }
}
