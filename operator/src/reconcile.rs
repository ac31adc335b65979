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
use crate::build;
use crate::crd::{ConcordCluster, Phase, VolumePolicy};
use crate::kube_pods::KubePods;
use crate::membership::{self, Policy};
use crate::metrics::Metrics;
use crate::naming::{self, FINALIZER, MANAGER};
use crate::plan::Step;
use crate::status::{self, StatusInput};
use crate::validate::validate;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("pods: {0}")]
    Runtime(#[from] membership::RuntimeError),
    #[error("object has no namespace")]
    NoNamespace,
}

impl Error {
    /// Bounded label for the errors metric.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube_api",
            Error::Finalizer(_) => "finalizer",
            Error::Runtime(_) => "pods",
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

/// Default learner promotion threshold (the node's own default).
const DEFAULT_MAX_PROMOTE_LAG: u64 = 1000;

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

async fn apply_object<K>(client: &Client, ns: &str, obj: &K) -> Result<(), kube::Error>
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

async fn apply(cluster: Arc<ConcordCluster>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let ns = cluster.namespace().ok_or(Error::NoNamespace)?;
    let name = cluster.name_any();
    let client = &ctx.client;
    let mut validation = validate(&name, &cluster.spec);
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let runtime = KubePods {
        pods: Api::<Pod>::namespaced(client.clone(), &ns),
        sts: sts_api.clone(),
        cluster: name.clone(),
    };
    let previous = cluster.status.clone();
    let policy = Policy {
        desired: cluster.spec.replicas.clamp(1, 9) as u32,
        recorded_cluster_id: previous.as_ref().and_then(|s| s.cluster_id.clone()),
        max_promote_lag: cluster
            .spec
            .raft
            .max_promote_lag
            .unwrap_or(DEFAULT_MAX_PROMOTE_LAG),
        stall_after: ctx.stall_after,
    };

    let mut observation = None;
    let mut step = None;
    if validation.is_ok() && !cluster.spec.paused {
        // Build and apply. The StatefulSet keeps the size the planner last set; a new one
        // starts at spec.replicas (every pod waits in join mode).
        let current = sts_api.get_opt(&name).await?;
        let sts_replicas = current
            .as_ref()
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.replicas)
            .unwrap_or(policy.desired as i32);
        let mut desired = build::desired(&cluster, sts_replicas);
        if let Some(current) = &current {
            if let Some(warning) = build::keep_volume_templates(&mut desired.stateful_set, current)
            {
                validation.warnings.push(warning);
            }
        }
        apply_object(client, &ns, &desired.config_map).await?;
        apply_object(client, &ns, &desired.peers_service).await?;
        apply_object(client, &ns, &desired.client_service).await?;
        apply_object(client, &ns, &desired.stateful_set).await?;
        let pdb_api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
        match &desired.pdb {
            Some(pdb) => apply_object(client, &ns, pdb).await?,
            None => {
                if pdb_api.get_opt(&name).await?.is_some() {
                    pdb_api.delete(&name, &DeleteParams::default()).await?;
                }
            }
        }

        let (obs, planned, outcome) =
            membership::step(&runtime, ctx.admin.as_ref(), &policy).await?;
        if let Step::Act(action) = &planned {
            let kind = membership::action_kind(action);
            match outcome {
                Some(Ok(message)) => {
                    tracing::info!(namespace = %ns, cluster = %name, action = kind, %message, "membership step");
                    ctx.metrics.steps.with_label_values(&[kind, "ok"]).inc();
                    publish(
                        &ctx,
                        &cluster,
                        EventType::Normal,
                        kind,
                        kind,
                        format!("{}: {message}", membership::describe(action)),
                    )
                    .await;
                }
                Some(Err(e)) => {
                    tracing::warn!(namespace = %ns, cluster = %name, action = kind, error = %e, "membership step failed");
                    ctx.metrics.steps.with_label_values(&[kind, "error"]).inc();
                    publish(
                        &ctx,
                        &cluster,
                        EventType::Warning,
                        "MembershipStepFailed",
                        kind,
                        e.to_string(),
                    )
                    .await;
                }
                None => {}
            }
        }
        if let Step::Wait { reason, message } = &planned {
            let was = previous
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded"))
                .map(|c| c.reason.clone());
            if reason.blocking() && was.as_deref() != Some(reason.as_str()) {
                publish(
                    &ctx,
                    &cluster,
                    EventType::Warning,
                    reason.as_str(),
                    "Wait",
                    message.clone(),
                )
                .await;
            }
        }
        observation = Some(obs);
        step = Some(planned);
    } else if cluster.spec.paused {
        observation = Some(membership::observe(&runtime, ctx.admin.as_ref(), &policy).await?);
    }

    let images = observation.as_ref().map(|o| o.images()).unwrap_or_default();
    let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH);
    let new_status = status::compute(&StatusInput {
        generation: cluster.metadata.generation,
        previous: previous.as_ref(),
        selector: naming::selector_string(&name),
        image: cluster.spec.image(),
        errors: &validation.errors,
        warnings: &validation.warnings,
        paused: cluster.spec.paused,
        observed: observation.as_ref().map(|o| &o.observed),
        cluster_id: observation.as_ref().and_then(|o| o.cluster_id()),
        step: step.as_ref(),
        pod_images: &images,
        now: now.to_string(),
    });
    ctx.metrics.set_phase(&ns, &name, new_status.phase);
    if status::quorum_lost(&new_status) {
        tracing::error!(namespace = %ns, cluster = %name, "quorum lost");
    }
    if !validation.is_ok() && previous.as_ref().and_then(|s| s.phase) != Some(Phase::Failed) {
        publish(
            &ctx,
            &cluster,
            EventType::Warning,
            "InvalidSpec",
            "Validate",
            validation.errors.join("; "),
        )
        .await;
    }
    let key = (ns.clone(), name.clone());
    let since = ctx.status_writes.lock().get(&key).map(|t| t.elapsed());
    if status::needs_write(previous.as_ref(), &new_status, since) {
        let api: Api<ConcordCluster> = Api::namespaced(client.clone(), &ns);
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
        .await?;
        ctx.status_writes.lock().insert(key, Instant::now());
    }
    Ok(match &step {
        Some(Step::Act(_)) => Requeue::requeue(Duration::from_secs(2)),
        Some(Step::Wait { reason, .. }) if reason.blocking() => {
            Requeue::requeue(Duration::from_secs(15))
        }
        Some(Step::Wait { .. }) => Requeue::requeue(Duration::from_secs(5)),
        _ if !validation.is_ok() => Requeue::requeue(Duration::from_secs(300)),
        _ => Requeue::requeue(Duration::from_secs(60)),
    })
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
