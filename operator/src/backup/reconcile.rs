//! Reconcile one ConcordBackup: check (cluster, credentials, destination) → pick a member →
//! stream its backup into the store → status. A backup is taken once: Succeeded and Failed are
//! final. A failed attempt is retried a few times (a member restarting, the store briefly
//! away) before the backup fails for good, with the reason in its status and an event.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Resource, ResourceExt};

use super::location::object_key;
use super::upload::{self, Credentials};
use super::{BackupPhase, ConcordBackup, ConcordBackupStatus};
use crate::crd::ConcordCluster;
use crate::naming::MANAGER;
use crate::reconcile::Context;
use crate::tls;

/// Attempts before a backup fails for good, and the pause between them.
pub const MAX_ATTEMPTS: u32 = 3;
const RETRY_AFTER: Duration = Duration::from_secs(10);

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

/// Takes the backup: everything that can stop it is a [`Stop`].
async fn take(
    ctx: &Context,
    b: &ConcordBackup,
    ns: &str,
    status: &mut ConcordBackupStatus,
) -> Result<(), Stop> {
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
    let s3 = &b.spec.destination.s3;
    let creds = credentials(ctx, ns, &s3.credentials_secret).await?;
    let store = upload::s3_store(s3, &creds).map_err(|m| stop("InvalidDestination", m, false))?;

    // A ready follower: the leader keeps serving writes undisturbed.
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
    let addr = member.admin_addr.clone().unwrap_or_default();
    let peer = tls::current_peer(&cluster, valid.tls.wants_tls());
    let identity = if tls::admin_over_tls(peer) {
        tls::materials::admin_identity(&ctx.client, &valid)
            .await
            .map_err(|e| stop("TlsIdentityMissing", e.to_string(), true))?
    } else {
        None
    };
    let admin = ctx.admin.scoped(identity);
    let chunks = admin
        .snapshot(&addr)
        .await
        .map_err(|e| stop("MemberUnreachable", e.to_string(), true))?;
    status.member = Some(member.pod.name.clone());
    let prefix = s3.prefix.clone();
    let cluster_name = valid.name.clone();
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
    status.attempts += 1;
    status.phase = Some(BackupPhase::Running);
    status.started_at.get_or_insert_with(now);
    status.reason = None;
    status.message = None;
    write_status(&ctx, &b, &ns, &status).await?;
    let outcome = take(&ctx, &b, &ns, &mut status).await;
    match outcome {
        Ok(()) => {
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
