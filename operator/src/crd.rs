//! The `ConcordCluster` custom resource: what a platform team writes, and the status the
//! operator reports back. The CRD YAML under `manifests/crds/` is generated from these types.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, PodSecurityContext, ResourceRequirements, SecurityContext, Toleration,
    TopologySpreadConstraint,
};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Image used when the spec names neither `image` nor `version`.
pub const DEFAULT_IMAGE_REPO: &str = "ghcr.io/concordkv/concord-node";

// Printer columns repeat `type_ = ...` on purpose; clippy reads them as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "concordkv.io",
    version = "v1alpha1",
    kind = "ConcordCluster",
    plural = "concordclusters",
    shortname = "concord",
    category = "concordkv",
    namespaced,
    status = "ConcordClusterStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Leader", type_ = "string", json_path = ".status.leader"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ConcordClusterSpec {
    /// Number of Raft voters. 1 to 9; an odd number tolerates as many failures as the next
    /// even one and is recommended (an even count raises a warning condition).
    #[schemars(range(min = 1, max = 9))]
    pub replicas: i32,
    /// Full image reference of concord-node. Overrides `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Tag of the default image (ghcr.io/concordkv/concord-node:<version>). Default: the
    /// operator's own version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    #[serde(default)]
    pub storage: StorageSpec,
    /// CPU and memory for the concord-node container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Scheduling and metadata overrides for the pods.
    #[serde(default)]
    pub pod: PodOverrides,
    #[serde(default)]
    pub raft: RaftTuning,
    /// The client Service (HTTP API).
    #[serde(default)]
    pub service: ClientServiceSpec,
    #[serde(default)]
    pub pdb: PdbSpec,
    /// TLS on every port and who issues the certificates. Unset: `mode: operator` for a new
    /// cluster; a cluster initialized before this field existed stays plaintext until its
    /// spec names a mode (an operator upgrade never moves clients to TLS unasked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Start from a backup instead of empty: the first member restores it, the others join
    /// as usual. Read only while the cluster is being created; changing it later does nothing.
    /// A backup that is missing, damaged or of a newer format fails the cluster (phase
    /// Failed, the Degraded condition naming the cause) and nothing is initialized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<crate::backup::RestoreSource>,
    /// Stop all changes: no object is applied and no membership step is taken. Status is
    /// still reported.
    #[serde(default)]
    pub paused: bool,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each member's volume, e.g. `10Gi`.
    #[serde(default = "default_storage_size")]
    pub size: String,
    /// StorageClass of the volumes; empty means the cluster default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// What happens to a member's volume when the cluster is scaled down past it.
    #[serde(default)]
    pub on_scale_down: VolumePolicy,
    /// What happens to the volumes when the ConcordCluster is deleted.
    #[serde(default)]
    pub on_delete: VolumePolicy,
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_storage_size(),
            storage_class_name: None,
            on_scale_down: VolumePolicy::default(),
            on_delete: VolumePolicy::default(),
        }
    }
}

fn default_storage_size() -> String {
    "1Gi".into()
}

/// Keep data unless told otherwise: Retain is the default.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum VolumePolicy {
    #[default]
    Retain,
    Delete,
}

impl VolumePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumePolicy::Retain => "Retain",
            VolumePolicy::Delete => "Delete",
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Pod-level security context. Default: non-root (uid/gid 65532), fsGroup 65532,
    /// seccomp RuntimeDefault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    /// Container-level security context. Default: no privilege escalation, read-only root
    /// filesystem, all capabilities dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_security_context: Option<SecurityContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

/// Raft timing and snapshot settings written into every node's config file.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RaftTuning {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 10000))]
    pub heartbeat_interval_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 60000))]
    pub election_timeout_min_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 120000))]
    pub election_timeout_max_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub snapshot_threshold: Option<u64>,
    /// A learner is promoted only when at most this many entries behind the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_promote_lag: Option<u64>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// `operator`: the operator keeps a cluster CA and issues every certificate itself.
    /// `certManager`: the operator asks cert-manager for them (`issuerRef`). `secrets`: you
    /// bring one Secret for the members (`secretName`). `disabled`: plaintext everywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<TlsMode>,
    /// The cert-manager Issuer or ClusterIssuer (mode certManager). Its certificates must carry
    /// `ca.crt` (a CA or Vault issuer does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
    /// mode secrets: a `kubernetes.io/tls` Secret with `tls.crt`, `tls.key` and `ca.crt`,
    /// mounted by every member. Its certificate needs the SANs `<name>-peers.<ns>.svc` and
    /// `*.<name>-peers.<ns>.svc`, and both server and client key usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// mode secrets: the Secret the operator presents to the members' admin API (a certificate
    /// from the same CA). Default: `secretName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_secret_name: Option<String>,
    /// Clients must present a certificate from the cluster CA (the client Secret
    /// `<name>-client` holds one). Probes and /metrics stay reachable without. Default true.
    #[serde(default = "default_true")]
    pub client_cert_auth: bool,
    /// Common name of the client certificate in `<name>-client`: the user name it signs in as
    /// once auth is enabled. Default `client`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_user: Option<String>,
    /// Lifetime of the certificates the operator or cert-manager issues. Default 90 days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 3650))]
    pub certificate_days: Option<u32>,
    /// Renew this many days before expiry. Default a third of the lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3649))]
    pub renew_before_days: Option<u32>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TlsMode {
    Operator,
    CertManager,
    Secrets,
    Disabled,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Operator => "operator",
            TlsMode::CertManager => "certManager",
            TlsMode::Secrets => "secrets",
            TlsMode::Disabled => "disabled",
        }
    }
}

/// A cert-manager issuer, as cert-manager's `issuerRef` names it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    pub name: String,
    /// `Issuer` (default) or `ClusterIssuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Default `cert-manager.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// Where the peer port is in a switch to TLS or back, one rolling restart per step: every
/// member accepts both before any dials TLS, and every member dials TLS before any refuses
/// plaintext. Client ports serve TLS in every step but `off`.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PeerTls {
    Off,
    Accept,
    Prefer,
    On,
}

impl PeerTls {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerTls::Off => "off",
            PeerTls::Accept => "accept",
            PeerTls::Prefer => "prefer",
            PeerTls::On => "on",
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsStatus {
    /// The mode in force (spec.tls.mode, or what an unset mode means for this cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<TlsMode>,
    /// The step the members' configuration is at (see PeerTls); `on` when TLS is fully on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerTls>,
    /// Earliest expiry among the certificates the operator issued (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificates_not_after: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientServiceSpec {
    /// ClusterIP (default), NodePort or LoadBalancer.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The pods' `imagePullPolicy`, as Kubernetes spells it.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl ImagePullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
    }
}

/// The client Service's type, as Kubernetes spells it.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Where a cluster is, in one word (`kubectl get` shows it).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    Creating,
    Running,
    Scaling,
    Upgrading,
    Degraded,
    QuorumLost,
    Paused,
    Failed,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Creating,
        Phase::Running,
        Phase::Scaling,
        Phase::Upgrading,
        Phase::Degraded,
        Phase::QuorumLost,
        Phase::Paused,
        Phase::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Creating => "Creating",
            Phase::Running => "Running",
            Phase::Scaling => "Scaling",
            Phase::Upgrading => "Upgrading",
            Phase::Degraded => "Degraded",
            Phase::QuorumLost => "QuorumLost",
            Phase::Paused => "Paused",
            Phase::Failed => "Failed",
        }
    }
}

/// A member's Raft role.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    #[default]
    Voter,
    Learner,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PdbSpec {
    /// Create a PodDisruptionBudget that allows a voluntary eviction only while a quorum
    /// stays up.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for PdbSpec {
    fn default() -> Self {
        PdbSpec { enabled: true }
    }
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConcordClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Pods of the StatefulSet (what `kubectl scale` reports as current).
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the pods, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Pod name of the current Raft leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The Raft cluster id, recorded once the cluster is initialized; a pod reporting another
    /// id is never touched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    pub name: String,
    /// Raft member id (decimal string: ids use 53 bits and JSON readers differ on big ints).
    pub id: String,
    pub role: MemberRole,
    pub healthy: bool,
    pub leader: bool,
    #[serde(default)]
    pub applied_index: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// A status condition, shaped like metav1.Condition.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Available, Progressing, Degraded or Warning.
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl ConcordClusterSpec {
    /// The image every member should run.
    pub fn image(&self) -> String {
        match (&self.image, &self.version) {
            (Some(image), _) => image.clone(),
            (None, Some(v)) => format!("{DEFAULT_IMAGE_REPO}:{v}"),
            (None, None) => format!("{DEFAULT_IMAGE_REPO}:{}", env!("CARGO_PKG_VERSION")),
        }
    }
}
