//! Desired objects for a ConcordCluster: pure functions of the resource, no client. The
//! reconciler applies what these return with server-side apply.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, SeccompProfile, SecretProjection, SecretVolumeSource, SecurityContext,
    Service, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeProjection,
    VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::crd::{ConcordCluster, PeerTls};
use crate::naming::{self, API_PORT, ETCD_PORT, PEER_PORT};
use crate::tls::{self, Source};
use crate::validate::ValidatedCluster;

/// Non-root user of the node image (distroless "nonroot").
const RUN_AS: i64 = 65532;

/// Everything the reconciler applies for one cluster.
#[derive(Debug, Clone)]
pub struct Desired {
    pub config_map: ConfigMap,
    pub peers_service: Service,
    pub client_service: Service,
    pub stateful_set: StatefulSet,
    /// None when the spec turns the PDB off (the reconciler then deletes ours).
    pub pdb: Option<PodDisruptionBudget>,
    /// cert-manager `Certificate`s (mode certManager; empty otherwise).
    pub certificates: Vec<serde_json::Value>,
}

/// Every object for a validated cluster: invalid specs never reach the builders.
/// `sts_replicas` is the StatefulSet size the membership planner currently allows; it is not
/// `spec.replicas`, which the planner approaches one safe step at a time. `peer` is the step
/// of a TLS switch the members are to run (`tls::next_peer`).
pub fn desired(valid: &ValidatedCluster, sts_replicas: i32, peer: PeerTls) -> Desired {
    let cluster = &valid.cluster;
    let config_map = config_map(cluster, valid, peer);
    let hash = config_hash(&config_map);
    let certificates = match &valid.tls.source {
        Some(Source::CertManager(issuer)) => {
            let members = valid.replicas.max(sts_replicas.max(0) as u32);
            tls::objects::wanted(valid, members)
                .iter()
                .map(|w| tls::objects::certificate(valid, w, issuer, &valid.tls))
                .collect()
        }
        _ => Vec::new(),
    };
    Desired {
        peers_service: peers_service(cluster),
        client_service: client_service(cluster),
        stateful_set: stateful_set(valid, sts_replicas, &hash, peer),
        pdb: cluster.spec.pdb.enabled.then(|| pdb(cluster)),
        config_map,
        certificates,
    }
}

pub(crate) fn meta(cluster: &ConcordCluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cluster.namespace(),
        labels: Some(naming::labels(&cluster.name_any())),
        owner_references: owner_reference(cluster).map(|o| vec![o]),
        ..Default::default()
    }
}

/// Owned objects are garbage-collected with the cluster (PVCs are not: they follow the
/// retention policy).
fn owner_reference(cluster: &ConcordCluster) -> Option<OwnerReference> {
    cluster.controller_owner_ref(&())
}

/// The node's config file. Identity (name, advertised address) comes from the pod's
/// environment; everything shared lives here.
fn config_map(cluster: &ConcordCluster, valid: &ValidatedCluster, peer: PeerTls) -> ConfigMap {
    let spec = &cluster.spec;
    let mut raft = serde_yaml_ng::Mapping::new();
    let mut put = |k: &str, v: Option<u64>| {
        if let Some(v) = v {
            raft.insert(k.into(), v.into());
        }
    };
    put(
        "heartbeatIntervalMs",
        spec.raft.heartbeat_interval_ms.map(u64::from),
    );
    put(
        "electionTimeoutMinMs",
        spec.raft.election_timeout_min_ms.map(u64::from),
    );
    put(
        "electionTimeoutMaxMs",
        spec.raft.election_timeout_max_ms.map(u64::from),
    );
    put("snapshotThreshold", spec.raft.snapshot_threshold);
    put("maxPromoteLag", spec.raft.max_promote_lag);
    let mut server = serde_yaml_ng::Mapping::new();
    server.insert("listenAddr".into(), format!("0.0.0.0:{PEER_PORT}").into());
    server.insert("apiAddr".into(), format!("0.0.0.0:{API_PORT}").into());
    server.insert(
        "dataDir".into(),
        format!("{}/node", naming::DATA_DIR).into(),
    );
    server.insert("join".into(), true.into());
    server.insert("logFormat".into(), "json".into());
    let mut doc = serde_yaml_ng::Mapping::new();
    doc.insert("server".into(), server.into());
    if !raft.is_empty() {
        doc.insert("raft".into(), raft.into());
    }
    // The certificate files come from the environment (their paths name the pod); at `off`
    // the section is left out, so a plaintext cluster's config is what it was before TLS.
    if peer != PeerTls::Off {
        let mut t = serde_yaml_ng::Mapping::new();
        t.insert("clientCertAuth".into(), valid.tls.client_cert_auth.into());
        t.insert("probesWithoutClientCert".into(), true.into());
        t.insert("peerClientCertAuth".into(), true.into());
        t.insert("peerTlsMode".into(), peer.as_str().into());
        doc.insert("tls".into(), t.into());
    }
    // A mapping of strings, numbers and booleans always serializes.
    let yaml = serde_yaml_ng::to_string(&doc).unwrap_or_default();
    ConfigMap {
        metadata: meta(cluster, naming::config_map(&cluster.name_any())),
        data: Some(BTreeMap::from([(naming::CONFIG_FILE.to_string(), yaml)])),
        ..Default::default()
    }
}

pub fn config_hash(cm: &ConfigMap) -> String {
    let mut h = Sha256::new();
    for (k, v) in cm.data.iter().flatten() {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// Headless Service giving every pod a stable DNS name, published before the pod is ready:
/// a joining member must be reachable to catch up, and it is not ready until it has.
fn peers_service(cluster: &ConcordCluster) -> Service {
    let name = cluster.name_any();
    Service {
        metadata: meta(cluster, naming::peers_service(&name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(naming::selector_labels(&name)),
            ports: Some(vec![port("peer", PEER_PORT), port("http", API_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Service clients use: only ready members (those with a leader and caught up).
fn client_service(cluster: &ConcordCluster) -> Service {
    let name = cluster.name_any();
    let mut metadata = meta(cluster, naming::client_service(&name));
    if !cluster.spec.service.annotations.is_empty() {
        metadata.annotations = Some(cluster.spec.service.annotations.clone());
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(cluster.spec.service.type_.as_str().into()),
            selector: Some(naming::selector_labels(&name)),
            ports: Some(vec![port("http", API_PORT), port("etcd", ETCD_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32, https: bool) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            scheme: https.then(|| "HTTPS".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(3),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

pub(crate) fn default_pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        fs_group: Some(RUN_AS),
        fs_group_change_policy: Some("OnRootMismatch".into()),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn default_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Pods start in join mode and wait for the operator: pod 0 is initialised, the others are
/// added as learners and promoted. Updates are `OnDelete` because the operator restarts pods
/// itself, followers first and the leader last after handing leadership over.
/// Where each member finds its certificate, key and CA, and the volume that puts them there:
/// one Secret per member mounted side by side (a pod template is shared, so each pod picks its
/// own directory by name), or the user's one Secret.
fn tls_files(valid: &ValidatedCluster) -> Option<(String, Volume)> {
    let name = &valid.name;
    let mode = Some(0o440);
    match valid.tls.source.as_ref()? {
        Source::Operator | Source::CertManager(_) => {
            let sources = (0..naming::MAX_REPLICAS)
                .map(|o| {
                    let pod = naming::pod_name(name, o);
                    let item = |key: &str| KeyToPath {
                        key: key.into(),
                        path: format!("{pod}/{key}"),
                        mode: None,
                    };
                    VolumeProjection {
                        secret: Some(SecretProjection {
                            name: naming::member_secret(name, o),
                            optional: Some(true),
                            items: Some(vec![item("tls.crt"), item("tls.key"), item("ca.crt")]),
                        }),
                        ..Default::default()
                    }
                })
                .collect();
            let volume = Volume {
                name: "tls".into(),
                projected: Some(ProjectedVolumeSource {
                    sources: Some(sources),
                    default_mode: mode,
                }),
                ..Default::default()
            };
            Some((format!("{}/$(POD_NAME)", naming::TLS_DIR), volume))
        }
        Source::Secrets { members, .. } => Some((
            naming::TLS_DIR.to_string(),
            Volume {
                name: "tls".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(members.clone()),
                    default_mode: mode,
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
    }
}

fn stateful_set(
    valid: &ValidatedCluster,
    replicas: i32,
    config_hash: &str,
    peer: PeerTls,
) -> StatefulSet {
    let cluster = &valid.cluster;
    let name = cluster.name_any();
    let spec = &cluster.spec;
    let pod = &spec.pod;

    let mut pod_labels = pod.labels.clone();
    pod_labels.extend(naming::labels(&name));
    let mut pod_annotations = pod.annotations.clone();
    pod_annotations.insert(
        naming::CONFIG_HASH_ANNOTATION.into(),
        config_hash.to_string(),
    );

    let mut envs = vec![
        env_field("POD_NAME", "metadata.name"),
        env_field("POD_NAMESPACE", "metadata.namespace"),
        env("CONCORD_NODE_ID", "$(POD_NAME)"),
        env(
            "CONCORD_ADVERTISE_ADDR",
            &naming::peer_address_template(&name),
        ),
        env(
            "CONCORD_CONFIG",
            &format!("{}/{}", naming::CONFIG_DIR, naming::CONFIG_FILE),
        ),
    ];
    let mut mounts = vec![
        VolumeMount {
            name: naming::VOLUME_NAME.into(),
            mount_path: naming::DATA_DIR.into(),
            ..Default::default()
        },
        VolumeMount {
            name: "config".into(),
            mount_path: naming::CONFIG_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
    ];
    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: naming::config_map(&name),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let tls = (peer != PeerTls::Off).then(|| tls_files(valid)).flatten();
    if let Some((dir, volume)) = &tls {
        for (var, file) in [
            ("CONCORD_CERT_FILE", "tls.crt"),
            ("CONCORD_KEY_FILE", "tls.key"),
            ("CONCORD_TRUSTED_CA_FILE", "ca.crt"),
            ("CONCORD_PEER_CERT_FILE", "tls.crt"),
            ("CONCORD_PEER_KEY_FILE", "tls.key"),
            ("CONCORD_PEER_TRUSTED_CA_FILE", "ca.crt"),
        ] {
            envs.push(env(var, &format!("{dir}/{file}")));
        }
        mounts.push(VolumeMount {
            name: "tls".into(),
            mount_path: naming::TLS_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(volume.clone());
    }
    let https = tls.is_some();

    let container = Container {
        name: "concord-node".into(),
        image: Some(spec.image()),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().into()),
        env: Some(envs),
        ports: Some(vec![
            ContainerPort {
                name: Some("peer".into()),
                container_port: PEER_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("http".into()),
                container_port: API_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("etcd".into()),
                container_port: ETCD_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        // Generous startup: replaying a long log or loading a big snapshot takes a while.
        startup_probe: Some(http_probe("/livez", 2, 150, https)),
        liveness_probe: Some(http_probe("/livez", 10, 6, https)),
        readiness_probe: Some(http_probe("/readyz", 5, 2, https)),
        resources: spec.resources.clone(),
        security_context: Some(
            pod.container_security_context
                .clone()
                .unwrap_or_else(default_container_security),
        ),
        volume_mounts: Some(mounts),
        ..Default::default()
    };

    let pod_spec = PodSpec {
        containers: vec![container],
        affinity: pod.affinity.clone(),
        tolerations: (!pod.tolerations.is_empty()).then(|| pod.tolerations.clone()),
        node_selector: (!pod.node_selector.is_empty()).then(|| pod.node_selector.clone()),
        topology_spread_constraints: (!pod.topology_spread_constraints.is_empty())
            .then(|| pod.topology_spread_constraints.clone()),
        priority_class_name: pod.priority_class_name.clone(),
        service_account_name: pod.service_account_name.clone(),
        automount_service_account_token: Some(false),
        security_context: Some(
            pod.security_context
                .clone()
                .unwrap_or_else(default_pod_security),
        ),
        termination_grace_period_seconds: Some(30),
        volumes: Some(volumes),
        ..Default::default()
    };

    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(naming::VOLUME_NAME.into()),
            labels: Some(naming::selector_labels(&name)),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(spec.storage.size.clone()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };

    StatefulSet {
        metadata: meta(cluster, name.clone()),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(naming::peers_service(&name)),
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                ..Default::default()
            }),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_scaled: Some(spec.storage.on_scale_down.as_str().into()),
                    when_deleted: Some(spec.storage.on_delete.as_str().into()),
                },
            ),
            selector: LabelSelector {
                match_labels: Some(naming::selector_labels(&name)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..Default::default()
                }),
                spec: Some(pod_spec),
            },
            volume_claim_templates: Some(vec![claim]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Allows a voluntary disruption only while the others still form a quorum: with n voters,
/// (n-1)/2 may be down. A 1- or 2-member cluster allows none, which blocks node drains on
/// purpose: draining would take the cluster down.
fn pdb(cluster: &ConcordCluster) -> PodDisruptionBudget {
    let name = cluster.name_any();
    let n = cluster.spec.replicas.max(1);
    PodDisruptionBudget {
        metadata: meta(cluster, name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int((n - 1) / 2)),
            selector: Some(LabelSelector {
                match_labels: Some(naming::selector_labels(&name)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Volume claim templates of a StatefulSet cannot change. When the spec's storage differs from
/// the existing StatefulSet's, keep the existing templates (so everything else still applies)
/// and return a warning for the status.
pub fn keep_volume_templates(desired: &mut StatefulSet, current: &StatefulSet) -> Option<String> {
    let existing = current.spec.as_ref()?.volume_claim_templates.clone();
    let spec = desired.spec.as_mut()?;
    let describe = |t: &Option<Vec<PersistentVolumeClaim>>| {
        t.as_ref()
            .and_then(|t| t.first())
            .and_then(|c| c.spec.as_ref())
            .map(|s| {
                let size = s
                    .resources
                    .as_ref()
                    .and_then(|r| r.requests.as_ref())
                    .and_then(|r| r.get("storage"))
                    .map(|q| q.0.clone())
                    .unwrap_or_default();
                let class = s
                    .storage_class_name
                    .clone()
                    .unwrap_or_else(|| "default".into());
                format!("{size} of {class}")
            })
            .unwrap_or_default()
    };
    // The API server fills in defaults (volumeMode, status), so compare what the spec controls;
    // either way the existing templates are what gets applied.
    let (want, have) = (describe(&spec.volume_claim_templates), describe(&existing));
    spec.volume_claim_templates = existing;
    if want == have {
        return None;
    }
    let message = format!(
        "spec.storage asks for {} but the existing volumes were created as {}; volume templates cannot change, so existing and new members keep {} (expand PVCs with `kubectl patch pvc`, or recreate the cluster)",
        want, have, have
    );
    Some(message)
}
