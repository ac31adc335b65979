//! The Kubernetes `PodRuntime`: pods of the cluster's StatefulSet, reached at their pod IPs.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::{Api, ResourceExt};

use crate::membership::{PodRuntime, RuntimeError, RuntimePod, RuntimeView};
use crate::naming::{self, PEER_PORT};
use crate::plan::PodObs;

pub struct KubePods {
    pub pods: Api<Pod>,
    pub sts: Api<StatefulSet>,
    pub cluster: String,
}

/// The label the StatefulSet controller puts on each pod: the template revision it runs.
const REVISION_LABEL: &str = "controller-revision-hash";

pub fn pod_obs(cluster: &str, pod: &Pod, update_revision: Option<&str>) -> Option<RuntimePod> {
    let name = pod.name_any();
    let ordinal = naming::ordinal_of(cluster, &name)?;
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let up_to_date = match update_revision {
        Some(rev) => pod.labels().get(REVISION_LABEL).map(String::as_str) == Some(rev),
        None => true,
    };
    let age = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map(
            |t| Duration::from_secs((Timestamp::now().as_second() - t.0.as_second()).max(0) as u64),
        )
        .unwrap_or_default();
    let admin_addr = status.and_then(|s| s.pod_ip.as_ref()).map(|ip| {
        if ip.contains(':') {
            format!("[{ip}]:{PEER_PORT}")
        } else {
            format!("{ip}:{PEER_PORT}")
        }
    });
    let image = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone());
    Some(RuntimePod {
        uid: pod.metadata.uid.clone(),
        config_hash: pod
            .annotations()
            .get(naming::CONFIG_HASH_ANNOTATION)
            .cloned(),
        image,
        pod: PodObs {
            ordinal,
            name,
            ready,
            up_to_date,
            terminating: pod.metadata.deletion_timestamp.is_some(),
            age,
            node: None,
        },
        admin_addr,
    })
}

#[tonic::async_trait]
impl PodRuntime for KubePods {
    async fn view(&self) -> Result<RuntimeView, RuntimeError> {
        let sts = self.sts.get_opt(&self.cluster).await?;
        let sts_replicas = sts
            .as_ref()
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.replicas)
            .unwrap_or(0)
            .max(0) as u32;
        // The revision is only meaningful once the StatefulSet controller has seen the
        // current template.
        let update_revision = sts.as_ref().and_then(|s| {
            let status = s.status.as_ref()?;
            (status.observed_generation >= s.metadata.generation)
                .then(|| status.update_revision.clone())
                .flatten()
        });
        let lp = ListParams::default().labels(&naming::selector_string(&self.cluster));
        let pods = self
            .pods
            .list(&lp)
            .await?
            .items
            .iter()
            .filter_map(|p| pod_obs(&self.cluster, p, update_revision.as_deref()))
            .collect();
        Ok(RuntimeView { sts_replicas, pods })
    }

    async fn scale(&self, replicas: u32) -> Result<(), RuntimeError> {
        let patch = serde_json::json!({ "spec": { "replicas": replicas } });
        self.sts
            .patch(
                &self.cluster,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        Ok(())
    }

    async fn restart(&self, pod: &str, uid: Option<&str>) -> Result<(), RuntimeError> {
        let mut params = DeleteParams::default();
        if let Some(uid) = uid {
            params = params.preconditions(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            });
        }
        match self.pods.delete(pod, &params).await {
            Ok(_) => Ok(()),
            // The UID precondition failed: the pod was recreated since it was observed and is
            // already a fresh one. The next reconcile sees it as it is.
            Err(kube::Error::Api(e)) if e.code == 409 => Err(RuntimeError::Other(format!(
                "pod {pod} was replaced since it was observed; not deleting the new one"
            ))),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml_ng::from_str(yaml).expect("pod fixture")
    }

    #[test]
    fn a_pod_becomes_an_observation() {
        let p = pod(
            "metadata: {name: kv-2, labels: {controller-revision-hash: kv-abc}}\n\
             status: {podIP: 10.1.2.3, conditions: [{type: Ready, status: 'True'}]}",
        );
        let o = pod_obs("kv", &p, Some("kv-abc")).expect("a member pod");
        assert_eq!(o.pod.ordinal, 2);
        assert!(o.pod.ready && o.pod.up_to_date && !o.pod.terminating);
        assert_eq!(o.admin_addr.as_deref(), Some("10.1.2.3:8080"));
        let o = pod_obs("kv", &p, Some("kv-def")).expect("a member pod");
        assert!(!o.pod.up_to_date);
    }

    #[test]
    fn unready_deleting_ipv6_and_foreign_pods() {
        let p = pod(
            "metadata: {name: kv-0, deletionTimestamp: '2026-01-01T00:00:00Z'}\n\
             status: {podIP: 'fd00::5', conditions: [{type: Ready, status: 'False'}]}",
        );
        let o = pod_obs("kv", &p, None).expect("a member pod");
        assert!(!o.pod.ready && o.pod.terminating && o.pod.up_to_date);
        assert_eq!(o.admin_addr.as_deref(), Some("[fd00::5]:8080"));
        assert!(pod_obs("kv", &pod("metadata: {name: other-0}"), None).is_none());
        let pending = pod_obs("kv", &pod("metadata: {name: kv-1}"), None).expect("pod");
        assert_eq!(pending.admin_addr, None);
    }
}
