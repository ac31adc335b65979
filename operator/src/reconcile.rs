//! Reconcile one ConcordCluster: validate → build (pure) → apply (server-side apply, owner
//! references) → one membership step → status. The finalizer handles volumes on deletion.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;

use crate::admin::NodeAdmin;
use crate::backup::restore::{BackupSource, RestoreFailure, SpecSource};
use crate::build;
use crate::crd::{ConcordCluster, ConcordClusterStatus, PeerTls, Phase, TlsStatus, VolumePolicy};
use crate::kube_pods::KubePods;
use crate::membership::{self, Policy};
use crate::metrics::Metrics;
use crate::naming::{self, FINALIZER, MANAGER};
use crate::plan::Step;
use crate::status::{self, StatusInput};
use crate::tls::{self, materials::TlsError};
use crate::validate::{self, Invalid, ValidatedCluster};

/// What a reconcile can fail with: one variant per step of the pipeline, so the error says
/// where it stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the StatefulSet: {0}")]
    ReadStatefulSet(#[source] kube::Error),
    #[error("applying the {object}: {source}")]
    Apply {
        object: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("certificates: {0}")]
    Tls(#[from] TlsError),
    #[error("membership step: {0}")]
    Membership(#[from] membership::RuntimeError),
    #[error("writing the status: {0}")]
    WriteStatus(#[source] kube::Error),
    /// Outside the pipeline: the finalizer's own calls and cleanup on deletion.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("object has no namespace")]
    NoNamespace,
}

impl Error {
    /// Bounded label for the errors metric.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Error::ReadStatefulSet(_) | Error::Kube(_) => "kube_api",
            Error::Apply { .. } => "apply",
            Error::Tls(_) => "tls",
            Error::Membership(_) => "pods",
            Error::WriteStatus(_) => "status",
            Error::Finalizer(_) => "finalizer",
            Error::NoNamespace => "no_namespace",
        }
    }
}

pub struct Context {
    pub client: Client,
    pub admin: Arc<dyn NodeAdmin>,
    pub metrics: Arc<Metrics>,
    pub reporter: Reporter,
    /// A pod restarted for an upgrade that is not ready after this long stops the rollout.
    pub stall_after: Duration,
    /// When this process last wrote each cluster's status (a rate limit, never a plan input).
    pub status_writes: parking_lot::Mutex<std::collections::HashMap<(String, String), Instant>>,
}

pub async fn reconcile(cluster: Arc<ConcordCluster>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let started = Instant::now();
    let ns = cluster.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<ConcordCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, cluster, |event| async {
        match event {
            Finalizer::Apply(c) => apply(c, ctx.clone()).await,
            Finalizer::Cleanup(c) => cleanup(c, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics
        .duration
        .with_label_values::<&str>(&[])
        .observe(started.elapsed().as_secs_f64());
    ctx.metrics
        .reconciles
        .with_label_values(&[if result.is_ok() { "ok" } else { "error" }])
        .inc();
    result
}

pub fn error_policy(cluster: Arc<ConcordCluster>, error: &Error, ctx: Arc<Context>) -> Requeue {
    tracing::warn!(
        namespace = cluster.namespace().unwrap_or_default(),
        cluster = %cluster.name_any(),
        %error,
        "reconcile failed"
    );
    ctx.metrics
        .errors
        .with_label_values(&[error.metric_reason()])
        .inc();
    Requeue::requeue(Duration::from_secs(15))
}

async fn publish(
    ctx: &Context,
    cluster: &ConcordCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let mut note = note;
    // The Events API caps the note at 1 kB.
    if note.len() > 1000 {
        let mut cut = 1000;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
    }
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &cluster.object_ref(&())).await {
        tracing::warn!(error = %e, "could not publish event");
    }
}

pub(crate) async fn apply_object<K>(client: &Client, ns: &str, obj: &K) -> Result<(), kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let mut obj = obj.clone();
    // Apply patches carry apiVersion/kind; typed objects leave managedFields empty.
    obj.meta_mut().managed_fields = None;
    let mut value = serde_json::to_value(&obj).map_err(kube::Error::SerdeError)?;
    value["apiVersion"] = K::api_version(&()).into();
    value["kind"] = K::kind(&()).into();
    api.patch(
        &obj.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&value),
    )
    .await?;
    Ok(())
}

/// The reconcile pipeline: validate → (build → apply) → membership step → status → requeue.
/// Each step is its own function with its own error variant; an invalid or paused cluster skips
/// the steps that would change anything.
async fn apply(cluster: Arc<ConcordCluster>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let ns = cluster.namespace().ok_or(Error::NoNamespace)?;
    let previous = cluster.status.clone();
    let checked = validate::check(&cluster, &ns);
    let runtime = pod_runtime(&ctx.client, &cluster.name_any(), &ns);
    let mut progress = Progress::default();
    match &checked {
        Ok(valid) if !valid.paused => {
            let peer = tls::current_peer(&cluster, valid.tls.wants_tls());
            let applied = apply_objects(&ctx.client, valid, peer).await?;
            progress.warnings = applied.warnings;
            let admin = admin_for(&ctx, valid, peer).await?;
            let mut policy = policy(valid, previous.as_ref(), &ctx);
            policy.restore_from = cluster.spec.restore_from.clone().map(|source| {
                Arc::new(SpecSource {
                    ctx: ctx.clone(),
                    namespace: ns.clone(),
                    source,
                }) as Arc<dyn BackupSource>
            });
            let (obs, step, outcome) = membership::step(&runtime, admin.as_ref(), &policy).await?;
            // A backup that cannot be restored as it is fails the cluster until it changes.
            progress.failure = match &outcome {
                Some(Err(membership::StepError::Restore(f))) if !f.transient => Some(f.clone()),
                _ => None,
            };
            report_step(&ctx, &cluster, previous.as_ref(), &step, outcome).await;
            let initialized = obs.cluster_id().is_some()
                || previous.as_ref().is_some_and(|s| s.cluster_id.is_some());
            let settled = step == Step::Converged && obs.all_run_config(&applied.config_hash);
            let next = tls::next_peer(peer, valid.tls.wants_tls(), settled, initialized);
            if next != peer {
                let note = format!(
                    "TLS switch: members move from peer TLS {} to {} (one rolling restart)",
                    peer.as_str(),
                    next.as_str()
                );
                tracing::info!(namespace = %ns, cluster = %cluster.name_any(), %note);
                publish(&ctx, &cluster, EventType::Normal, "TlsStep", "Tls", note).await;
            }
            progress.tls = Some(tls_status(
                valid,
                next,
                applied.not_after,
                previous.as_ref(),
            ));
            progress.observation = Some(obs);
            progress.step = Some(step);
        }
        Ok(valid) => {
            let peer = tls::current_peer(&cluster, valid.tls.wants_tls());
            let admin = admin_for(&ctx, valid, peer).await?;
            let policy = policy(valid, previous.as_ref(), &ctx);
            progress.observation =
                Some(membership::observe(&runtime, admin.as_ref(), &policy).await?);
        }
        Err(_) => {}
    }
    let new_status = compute_status(&cluster, previous.as_ref(), &checked, &progress);
    record_status(
        &ctx,
        &cluster,
        &ns,
        previous.as_ref(),
        &checked,
        &new_status,
    )
    .await;
    write_status(&ctx, &cluster, &ns, previous.as_ref(), &new_status).await?;
    let usable = checked.is_ok() && progress.failure.is_none();
    Ok(requeue_after(progress.step.as_ref(), usable))
}

/// The admin client for this cluster: over TLS with the operator's certificate once every
/// member takes TLS on the peer port.
async fn admin_for(
    ctx: &Context,
    valid: &ValidatedCluster,
    peer: PeerTls,
) -> Result<Arc<dyn crate::admin::NodeAdmin>, Error> {
    let identity = if tls::admin_over_tls(peer) {
        tls::materials::admin_identity(&ctx.client, valid).await?
    } else {
        None
    };
    Ok(ctx.admin.scoped(identity))
}

fn tls_status(
    valid: &ValidatedCluster,
    peer: PeerTls,
    not_after: Option<i64>,
    previous: Option<&ConcordClusterStatus>,
) -> TlsStatus {
    let earliest = not_after
        .filter(|t| *t != i64::MAX)
        .and_then(|t| Timestamp::from_second(t).ok())
        .map(|t| t.to_string())
        .or_else(|| {
            previous
                .and_then(|s| s.tls.as_ref())
                .and_then(|t| t.certificates_not_after.clone())
                .filter(|_| valid.tls.wants_tls())
        });
    TlsStatus {
        mode: Some(valid.tls.mode),
        peer: Some(peer),
        certificates_not_after: earliest,
    }
}

/// What the acting steps found and did, for the status.
#[derive(Default)]
struct Progress {
    /// TLS as it now stands (None: unchanged from the previous status).
    tls: Option<TlsStatus>,
    observation: Option<membership::Observation>,
    step: Option<Step>,
    /// Warnings that only applying revealed (e.g. a storage change the StatefulSet keeps).
    warnings: Vec<String>,
    /// Why the cluster cannot be created as specified (its backup cannot be restored).
    failure: Option<RestoreFailure>,
}

pub(crate) fn pod_runtime(client: &Client, name: &str, ns: &str) -> KubePods {
    KubePods {
        pods: Api::<Pod>::namespaced(client.clone(), ns),
        sts: Api::<StatefulSet>::namespaced(client.clone(), ns),
        cluster: name.to_string(),
    }
}

fn policy(
    valid: &ValidatedCluster,
    previous: Option<&ConcordClusterStatus>,
    ctx: &Context,
) -> Policy {
    Policy {
        desired: valid.replicas,
        recorded_cluster_id: previous.and_then(|s| s.cluster_id.clone()),
        max_promote_lag: valid.max_promote_lag,
        stall_after: ctx.stall_after,
        restore_from: None,
    }
}

/// What applying found: warnings for the status, and the earliest certificate expiry.
struct Applied {
    warnings: Vec<String>,
    /// Hash of the node config just applied (what the pods' template now carries).
    config_hash: String,
    not_after: Option<i64>,
}

/// Builds every object (pure) and applies them by server-side apply; certificates first, so a
/// pod never starts before its certificate exists. The StatefulSet keeps the size the planner
/// last set; a new one starts at spec.replicas (every pod waits in join mode).
async fn apply_objects(
    client: &Client,
    valid: &ValidatedCluster,
    peer: PeerTls,
) -> Result<Applied, Error> {
    let (ns, name) = (valid.namespace.as_str(), valid.name.as_str());
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let current = sts_api
        .get_opt(name)
        .await
        .map_err(Error::ReadStatefulSet)?;
    let sts_replicas = current
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(valid.replicas as i32);
    let mut desired = build::desired(valid, sts_replicas, peer);
    let members = valid.replicas.max(sts_replicas.max(0) as u32);
    let not_after = tls::materials::ensure(client, valid, members, &desired.certificates).await?;
    let mut warnings = Vec::new();
    if let Some(current) = &current {
        warnings.extend(build::keep_volume_templates(
            &mut desired.stateful_set,
            current,
        ));
    }
    let apply = |object: &'static str| move |source| Error::Apply { object, source };
    apply_object(client, ns, &desired.config_map)
        .await
        .map_err(apply("ConfigMap"))?;
    apply_object(client, ns, &desired.peers_service)
        .await
        .map_err(apply("peer Service"))?;
    apply_object(client, ns, &desired.client_service)
        .await
        .map_err(apply("client Service"))?;
    apply_object(client, ns, &desired.stateful_set)
        .await
        .map_err(apply("StatefulSet"))?;
    let pdb_api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    match &desired.pdb {
        Some(pdb) => apply_object(client, ns, pdb)
            .await
            .map_err(apply("PodDisruptionBudget"))?,
        None => {
            let existing = pdb_api
                .get_opt(name)
                .await
                .map_err(apply("PodDisruptionBudget"))?;
            if existing.is_some() {
                pdb_api
                    .delete(name, &DeleteParams::default())
                    .await
                    .map_err(apply("PodDisruptionBudget"))?;
            }
        }
    }
    Ok(Applied {
        warnings,
        config_hash: build::config_hash(&desired.config_map),
        not_after,
    })
}

/// Logs, counts and publishes the membership step that ran (or the wait that began).
async fn report_step(
    ctx: &Context,
    cluster: &ConcordCluster,
    previous: Option<&ConcordClusterStatus>,
    step: &Step,
    outcome: Option<Result<String, membership::StepError>>,
) {
    let (ns, name) = (cluster.namespace().unwrap_or_default(), cluster.name_any());
    match step {
        Step::Act(action) => {
            let kind = membership::action_kind(action);
            match outcome {
                Some(Ok(message)) => {
                    tracing::info!(namespace = %ns, cluster = %name, action = kind, %message, "membership step");
                    ctx.metrics.steps.with_label_values(&[kind, "ok"]).inc();
                    let note = format!("{}: {message}", membership::describe(action));
                    publish(ctx, cluster, EventType::Normal, kind, kind, note).await;
                }
                Some(Err(e)) => {
                    tracing::warn!(namespace = %ns, cluster = %name, action = kind, error = %e, "membership step failed");
                    ctx.metrics.steps.with_label_values(&[kind, "error"]).inc();
                    let reason = "MembershipStepFailed";
                    publish(
                        ctx,
                        cluster,
                        EventType::Warning,
                        reason,
                        kind,
                        e.to_string(),
                    )
                    .await;
                }
                None => {}
            }
        }
        Step::Wait { reason, message } => {
            let was = previous
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded"))
                .map(|c| c.reason.clone());
            // Once per blocking wait, not on every requeue.
            if reason.blocking() && was.as_deref() != Some(reason.as_str()) {
                let (r, m) = (reason.as_str(), message.clone());
                publish(ctx, cluster, EventType::Warning, r, "Wait", m).await;
            }
        }
        Step::Converged => {}
    }
}

/// The new status (pure, in `status`), from what the pipeline saw.
fn compute_status(
    cluster: &ConcordCluster,
    previous: Option<&ConcordClusterStatus>,
    checked: &Result<ValidatedCluster, Invalid>,
    progress: &Progress,
) -> ConcordClusterStatus {
    let (errors, mut warnings) = match checked {
        Ok(v) => (Vec::new(), v.warnings.clone()),
        Err(i) => (i.errors.clone(), i.warnings.clone()),
    };
    warnings.extend(progress.warnings.iter().cloned());
    let observation = progress.observation.as_ref();
    let images = observation.map(|o| o.images()).unwrap_or_default();
    let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH);
    let mut s = status::compute(&StatusInput {
        generation: cluster.metadata.generation,
        previous,
        selector: naming::selector_string(&cluster.name_any()),
        image: cluster.spec.image(),
        errors: &errors,
        warnings: &warnings,
        paused: cluster.spec.paused,
        observed: observation.map(|o| &o.observed),
        cluster_id: observation.and_then(|o| o.cluster_id()),
        step: progress.step.as_ref(),
        failure: progress
            .failure
            .as_ref()
            .map(|f| (f.reason, f.message.as_str())),
        pod_images: &images,
        now: now.to_string(),
    });
    s.tls = progress
        .tls
        .clone()
        .or_else(|| previous.and_then(|p| p.tls.clone()));
    s
}

/// Metrics, logs and the one InvalidSpec event for the new status.
async fn record_status(
    ctx: &Context,
    cluster: &ConcordCluster,
    ns: &str,
    previous: Option<&ConcordClusterStatus>,
    checked: &Result<ValidatedCluster, Invalid>,
    new_status: &ConcordClusterStatus,
) {
    let name = cluster.name_any();
    ctx.metrics.set_phase(ns, &name, new_status.phase);
    if status::quorum_lost(new_status) {
        tracing::error!(namespace = %ns, cluster = %name, "quorum lost");
    }
    if let Err(invalid) = checked {
        if previous.and_then(|s| s.phase) != Some(Phase::Failed) {
            let note = invalid.errors.join("; ");
            publish(
                ctx,
                cluster,
                EventType::Warning,
                "InvalidSpec",
                "Validate",
                note,
            )
            .await;
        }
    }
}

/// Writes the status by server-side apply when it changed (rate-limited for progress-only
/// changes, see `status::needs_write`).
async fn write_status(
    ctx: &Context,
    cluster: &ConcordCluster,
    ns: &str,
    previous: Option<&ConcordClusterStatus>,
    new_status: &ConcordClusterStatus,
) -> Result<(), Error> {
    let name = cluster.name_any();
    let key = (ns.to_string(), name.clone());
    let since = ctx.status_writes.lock().get(&key).map(|t| t.elapsed());
    if !status::needs_write(previous, new_status, since) {
        return Ok(());
    }
    let api: Api<ConcordCluster> = Api::namespaced(ctx.client.clone(), ns);
    let patch = serde_json::json!({
        "apiVersion": ConcordCluster::api_version(&()),
        "kind": ConcordCluster::kind(&()),
        "status": new_status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::WriteStatus)?;
    ctx.status_writes.lock().insert(key, Instant::now());
    Ok(())
}

/// When to look again: soon while acting, slower while waiting, rarely when invalid or calm.
fn requeue_after(step: Option<&Step>, usable: bool) -> Requeue {
    Requeue::requeue(Duration::from_secs(match step {
        // A spec that cannot be acted on waits for a change (or, for a backup, a while).
        _ if !usable => 300,
        Some(Step::Act(_)) => 2,
        Some(Step::Wait { reason, .. }) if reason.blocking() => 15,
        Some(Step::Wait { .. }) => 5,
        _ => 60,
    }))
}

/// Deletion: owned objects go with the owner reference; volumes per `storage.onDelete`.
/// Never blocks deletion for long: a failure is reported as an event and the volumes kept.
async fn cleanup(cluster: Arc<ConcordCluster>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let ns = cluster.namespace().ok_or(Error::NoNamespace)?;
    let name = cluster.name_any();
    ctx.metrics.set_phase(&ns, &name, None);
    ctx.status_writes.lock().remove(&(ns.clone(), name.clone()));
    if cluster.spec.storage.on_delete == VolumePolicy::Delete {
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
        let lp = ListParams::default().labels(&naming::selector_string(&name));
        let result = async {
            let mut deleted = Vec::new();
            for pvc in pvcs.list(&lp).await?.items {
                let pvc_name = pvc.name_any();
                pvcs.delete(&pvc_name, &DeleteParams::default()).await?;
                deleted.push(pvc_name);
            }
            Ok::<_, kube::Error>(deleted)
        }
        .await;
        match result {
            Ok(deleted) => {
                tracing::info!(namespace = %ns, cluster = %name, volumes = ?deleted, "volumes deleted");
                publish(
                    &ctx,
                    &cluster,
                    EventType::Normal,
                    "VolumesDeleted",
                    "Delete",
                    format!(
                        "deleted {} volume(s): {}",
                        deleted.len(),
                        deleted.join(", ")
                    ),
                )
                .await;
            }
            Err(e) => {
                publish(&ctx, &cluster, EventType::Warning, "VolumeCleanupFailed", "Delete", format!("could not delete the volumes ({e}); they are kept, delete them by hand: kubectl delete pvc -l {}", naming::selector_string(&name))).await;
            }
        }
    } else {
        publish(
            &ctx,
            &cluster,
            EventType::Normal,
            "VolumesRetained",
            "Delete",
            format!(
                "volumes kept (storage.onDelete: Retain): kubectl get pvc -l {}",
                naming::selector_string(&name)
            ),
        )
        .await;
    }
    Ok(Requeue::await_change())
}
