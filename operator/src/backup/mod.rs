//! Backups of a ConcordCluster: the `ConcordBackup` resource (one backup, to object storage
//! or a PVC), where its object goes (`location`, pure), how the operator streams a member's
//! backup into the store (`upload`), the Job that writes one into a claim (`job`), and its
//! reconcile (`reconcile`).
//!
//! The operator streams the backup itself, from the member's admin API (over mutual TLS, with
//! its own certificate) into a multipart upload: it already holds the identity the admin API
//! requires and reaches every member, so nothing else needs those credentials, no Job or image
//! has to be scheduled, and memory stays at a few upload parts whatever the store's size.
//! A claim is different: only a pod that mounts it can write there, so a Job does (`job`).

pub mod job;
pub mod location;
pub mod reconcile;
pub mod restore;
pub mod schedule;
pub mod scheduler;
pub mod upload;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One backup of a cluster, taken once. Its status says where it went and what it holds.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "concordkv.io",
    version = "v1alpha1",
    kind = "ConcordBackup",
    plural = "concordbackups",
    shortname = "concordbackup",
    category = "concordkv",
    namespaced,
    status = "ConcordBackupStatus",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Revision", type_ = "integer", json_path = ".status.revision"),
    printcolumn(name = "Size", type_ = "integer", json_path = ".status.sizeBytes"),
    printcolumn(
        name = "Location",
        type_ = "string",
        json_path = ".status.location",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ConcordBackupSpec {
    /// The ConcordCluster (same namespace) to back up.
    pub cluster: String,
    pub destination: BackupDestination,
}

/// Where backups go: exactly one of `s3` and `pvc`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupDestination {
    /// S3 or an S3-compatible store (MinIO, Ceph RGW, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Destination>,
    /// A PersistentVolumeClaim in the same namespace, written by a Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcDestination>,
}

/// A destination, checked to be exactly one kind.
pub enum Destination<'a> {
    S3(&'a S3Destination),
    Pvc(&'a PvcDestination),
}

impl BackupDestination {
    pub fn checked(&self) -> Result<Destination<'_>, String> {
        match (&self.s3, &self.pvc) {
            (Some(s3), None) => Ok(Destination::S3(s3)),
            (None, Some(pvc)) if pvc.claim_name.trim().is_empty() => {
                Err("destination.pvc.claimName is empty".into())
            }
            (None, Some(pvc))
                if pvc
                    .directory
                    .as_deref()
                    .is_some_and(|d| d.split('/').any(|s| s == "..")) =>
            {
                Err("destination.pvc.directory may not climb out of the volume (..)".into())
            }
            (None, Some(pvc)) => Ok(Destination::Pvc(pvc)),
            (None, None) => Err("the destination names neither s3 nor pvc".into()),
            (Some(_), Some(_)) => Err("the destination names both s3 and pvc; pick one".into()),
        }
    }
}

/// A claim backups are written into, as files
/// `<directory>/<namespace>/<cluster>/<cluster>-r<revision>-<time>.backup`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcDestination {
    /// The PersistentVolumeClaim (same namespace). With ReadWriteOnce, the backup Job runs on
    /// the node that has it mounted, if any.
    pub claim_name: String,
    /// A directory in the volume. Default: its root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Destination {
    pub bucket: String,
    /// Objects are written under this prefix (`<prefix>/<cluster>/...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// For S3-compatible stores: `https://minio.example:9000`. Empty: AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Default `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Address the bucket in the path (`endpoint/bucket/key`), as most S3-compatible stores
    /// want, rather than as a host name.
    #[serde(default)]
    pub force_path_style: bool,
    /// A Secret in the same namespace with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`
    /// (and optionally `AWS_SESSION_TOKEN`). Never copied into status, events or logs.
    pub credentials_secret: String,
}

/// A backup a new cluster starts from (`ConcordCluster.spec.restoreFrom`): a ConcordBackup by
/// name, or an object in S3 storage. Exactly one.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSource {
    /// A ConcordBackup in the cluster's namespace that has Succeeded: its object is restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// An object in S3 storage: where, as a ConcordBackup's destination names it, and its key
    /// (`status.location` of the ConcordBackup that wrote it, without `s3://bucket/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Object>,
}

/// One object in S3 or an S3-compatible store; the settings mean what a destination's do.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Object {
    pub bucket: String,
    /// The object's whole key in the bucket, e.g. `backups/prod/kv/kv-r1042-20261205T113755Z.backup`.
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default)]
    pub force_path_style: bool,
    /// A Secret in the same namespace with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    pub credentials_secret: String,
}

impl S3Object {
    /// The store that holds it.
    pub fn store(&self) -> S3Destination {
        S3Destination {
            bucket: self.bucket.clone(),
            prefix: None,
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            force_path_style: self.force_path_style,
            credentials_secret: self.credentials_secret.clone(),
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BackupPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl BackupPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupPhase::Pending => "Pending",
            BackupPhase::Running => "Running",
            BackupPhase::Succeeded => "Succeeded",
            BackupPhase::Failed => "Failed",
        }
    }
    pub fn finished(self) -> bool {
        matches!(self, BackupPhase::Succeeded | BackupPhase::Failed)
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConcordBackupStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackupPhase>,
    /// `s3://bucket/key` or `pvc://claim/path` of the backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// The store revision the backup holds, and its key count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<u64>,
    /// SHA-256 of the backup (its last 32 bytes), checked while it streamed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// The member it was taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Why it failed (or what it waits for), in one word and in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Attempts made; a backup fails for good after a few.
    #[serde(default)]
    pub attempts: u32,
    /// When the last attempt ended (retries wait a while after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<String>,
}
