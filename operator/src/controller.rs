//! The controller loop: watch ConcordClusters and the objects they own, reconcile each.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};

use crate::backup::schedule::ConcordBackupSchedule;
use crate::backup::ConcordBackup;
use crate::crd::ConcordCluster;
use crate::naming::MANAGER;
use crate::reconcile::{error_policy, reconcile, Context};

fn api<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs until SIGTERM/SIGINT: the cluster controller and the backup controller side by side.
/// `namespace` limits the watches to one namespace (namespaced RBAC).
pub async fn run(client: Client, ctx: Arc<Context>, namespace: Option<String>) {
    let backups = Controller::new(
        api::<ConcordBackup>(&client, &namespace),
        watcher::Config::default(),
    )
    .shutdown_on_signal()
    .run(
        crate::backup::reconcile::reconcile,
        crate::backup::reconcile::error_policy,
        ctx.clone(),
    )
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "backup reconcile loop");
        }
    });
    let schedules = Controller::new(
        api::<ConcordBackupSchedule>(&client, &namespace),
        watcher::Config::default(),
    )
    .owns(
        api::<ConcordBackup>(&client, &namespace),
        watcher::Config::default(),
    )
    .shutdown_on_signal()
    .run(
        crate::backup::scheduler::reconcile,
        crate::backup::scheduler::error_policy,
        ctx.clone(),
    )
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "backup schedule reconcile loop");
        }
    });
    futures::join!(clusters(client, ctx, namespace), backups, schedules);
}

async fn clusters(client: Client, ctx: Arc<Context>, namespace: Option<String>) {
    // Only objects we manage wake the controller up.
    let managed =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    // Bursts of watch events (a rollout touches many objects) collapse into one reconcile;
    // clusters reconcile in parallel, each one at a time.
    let config = kube::runtime::controller::Config::default()
        .debounce(Duration::from_millis(500))
        .concurrency(8);
    Controller::new(
        api::<ConcordCluster>(&client, &namespace),
        watcher::Config::default(),
    )
    .with_config(config)
    .owns(api::<StatefulSet>(&client, &namespace), managed.clone())
    .owns(api::<Service>(&client, &namespace), managed.clone())
    .owns(api::<ConfigMap>(&client, &namespace), managed.clone())
    .owns(api::<PodDisruptionBudget>(&client, &namespace), managed)
    .shutdown_on_signal()
    .run(reconcile, error_policy, ctx)
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "reconcile loop");
        }
    })
    .await
}
