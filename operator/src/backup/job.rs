//! Backups to a PersistentVolumeClaim. The operator cannot write into a claim, so a Job does:
//! the node image's `concordctl snapshot save --member` streams the backup from one member's
//! admin service into the mounted claim (checked as it arrives, renamed into place only once
//! whole) and writes its outcome — file, revision, keys, size, checksum — as JSON to the
//! container's termination message, where the operator reads it back. Pruning old backups
//! from a claim is a Job too (`concordctl snapshot remove`). Builders and readers are pure.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, PersistentVolumeClaimVolumeSource, Pod, PodSpec, PodTemplateSpec,
    ResourceRequirements, SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::PvcDestination;
use crate::naming::{self, MANAGER, PEER_PORT};
use crate::validate::ValidatedCluster;

/// Where the claim and the operator's certificate are mounted in the Job's pod.
pub const BACKUP_MOUNT: &str = "/backup";
const TLS_MOUNT: &str = "/etc/concord-operator-tls";
/// The label Kubernetes puts on a Job's pods.
pub const JOB_NAME_LABEL: &str = "job-name";
/// A backup Job that runs longer than this is stopped (and the attempt fails).
const DEADLINE_SECONDS: i64 = 6 * 3600;

/// `<owner>-<suffix>`, kept a valid label value (63 characters) with a hash when too long.
fn bounded_name(owner: &str, suffix: &str) -> String {
    let name = format!("{owner}-{suffix}");
    if name.len() <= 63 {
        return name;
    }
    let hash: String = Sha256::digest(owner.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    let keep = 63 - suffix.len() - hash.len() - 2;
    format!("{}-{hash}-{suffix}", &owner[..keep])
}

/// The Job that takes ConcordBackup `backup`.
pub fn backup_job_name(backup: &str) -> String {
    bounded_name(backup, "backup")
}

/// The Job that prunes `files` for schedule `schedule` (one name per set of files, so a
/// pass that finds the same victims finds the same Job).
pub fn prune_job_name(schedule: &str, files: &[String]) -> String {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.as_bytes());
        h.update([0]);
    }
    let hash: String = h
        .finalize()
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    bounded_name(schedule, &format!("prune-{hash}"))
}

/// The backup's path in the claim, with the placeholders concordctl fills in from the backup:
/// `<directory>/<namespace>/<cluster>/<cluster>-r{revision}-{created}.backup`.
pub fn file_template(dest: &PvcDestination, namespace: &str, cluster: &str) -> String {
    let mut path = String::new();
    if let Some(d) = dest
        .directory
        .as_deref()
        .map(|d| d.trim_matches('/'))
        .filter(|d| !d.is_empty())
    {
        path.push_str(d);
        path.push('/');
    }
    path.push_str(&format!(
        "{namespace}/{cluster}/{cluster}-r{{revision}}-{{created}}.backup"
    ));
    path
}

/// `pvc://<claim>/<path in the claim>`.
pub fn location(claim: &str, path: &str) -> String {
    format!("pvc://{claim}/{}", path.trim_start_matches('/'))
}

/// The path in the claim of a backup at `location`, if it is in `claim`.
pub fn path_in_claim<'a>(location: &'a str, claim: &str) -> Option<&'a str> {
    location
        .strip_prefix("pvc://")?
        .strip_prefix(claim)?
        .strip_prefix('/')
        .filter(|p| !p.is_empty() && !p.split('/').any(|s| s == ".."))
}

/// What a Job needs besides its command.
pub struct JobInput<'a> {
    pub name: String,
    pub namespace: &'a str,
    pub owner: Option<OwnerReference>,
    pub cluster: &'a ValidatedCluster,
    pub claim: &'a str,
    /// The Secret with the operator's certificate (`ca.crt`, `tls.crt`, `tls.key`) when the
    /// members' admin service speaks TLS.
    pub tls_secret: Option<String>,
}

/// The member's peer address by name, which its certificate carries.
pub fn member_address(cluster: &str, namespace: &str, ordinal: u32) -> String {
    format!(
        "{}.{}:{PEER_PORT}",
        naming::pod_name(cluster, ordinal),
        naming::peers_host(cluster, namespace)
    )
}

/// The Job that backs up `member` (`host:port`) into the claim.
pub fn backup_job(input: &JobInput<'_>, dest: &PvcDestination, member: &str) -> Job {
    let file = format!(
        "{BACKUP_MOUNT}/{}",
        file_template(dest, input.namespace, &input.cluster.name)
    );
    let mut args: Vec<String> = ["-o", "json", "snapshot", "save", &file, "--member", member]
        .map(String::from)
        .to_vec();
    args.extend(["--report".into(), "/dev/termination-log".into()]);
    if input.tls_secret.is_some() {
        for (flag, file) in [
            ("--cacert", "ca.crt"),
            ("--cert", "tls.crt"),
            ("--key", "tls.key"),
        ] {
            args.push(flag.into());
            args.push(format!("{TLS_MOUNT}/{file}"));
        }
    }
    job(input, args, Some(DEADLINE_SECONDS))
}

/// The Job that removes `paths` (paths in the claim) of backups a schedule prunes.
pub fn prune_job(input: &JobInput<'_>, paths: &[String]) -> Job {
    let mut args: Vec<String> = ["-o", "json", "snapshot", "remove"]
        .map(String::from)
        .to_vec();
    args.extend(
        paths
            .iter()
            .map(|p| format!("{BACKUP_MOUNT}/{}", p.trim_start_matches('/'))),
    );
    job(input, args, Some(600))
}

fn job(input: &JobInput<'_>, args: Vec<String>, deadline: Option<i64>) -> Job {
    let spec = &input.cluster.cluster.spec;
    let pod = &spec.pod;
    let mut volumes = vec![Volume {
        name: "backup".into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: input.claim.to_string(),
            read_only: Some(false),
        }),
        ..Default::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "backup".into(),
        mount_path: BACKUP_MOUNT.into(),
        ..Default::default()
    }];
    if let Some(secret) = &input.tls_secret {
        volumes.push(Volume {
            name: "operator-tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "operator-tls".into(),
            mount_path: TLS_MOUNT.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    let labels = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            naming::APP_NAME.to_string(),
        ),
        (
            "app.kubernetes.io/instance".to_string(),
            input.cluster.name.clone(),
        ),
        (
            "app.kubernetes.io/component".to_string(),
            "backup".to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGER.to_string(),
        ),
    ]);
    let small = BTreeMap::from([
        ("cpu".to_string(), Quantity("100m".into())),
        ("memory".to_string(), Quantity("64Mi".into())),
    ]);
    let container = Container {
        name: "concordctl".into(),
        image: Some(spec.image()),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().into()),
        command: Some(vec!["/usr/local/bin/concordctl".into()]),
        args: Some(args),
        volume_mounts: Some(mounts),
        // concordctl streams: a few chunks in memory whatever the backup's size.
        resources: Some(ResourceRequirements {
            requests: Some(small),
            ..Default::default()
        }),
        security_context: Some(
            pod.container_security_context
                .clone()
                .unwrap_or_else(crate::build::default_container_security),
        ),
        // The report file, or (a crash before it) the last lines of the log.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(input.name.clone()),
            namespace: Some(input.namespace.to_string()),
            labels: Some(labels.clone()),
            owner_references: input.owner.clone().map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            // Retries are the operator's (a new attempt picks a member again).
            backoff_limit: Some(0),
            active_deadline_seconds: deadline,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    restart_policy: Some("Never".into()),
                    volumes: Some(volumes),
                    automount_service_account_token: Some(false),
                    service_account_name: pod.service_account_name.clone(),
                    tolerations: (!pod.tolerations.is_empty()).then(|| pod.tolerations.clone()),
                    node_selector: (!pod.node_selector.is_empty())
                        .then(|| pod.node_selector.clone()),
                    security_context: Some(
                        pod.security_context
                            .clone()
                            .unwrap_or_else(crate::build::default_pod_security),
                    ),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// Where a Job stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Running,
    Succeeded,
    /// Failed, with Kubernetes' reason (`DeadlineExceeded`, `BackoffLimitExceeded`, ...).
    Failed(String),
}

pub fn state(job: &Job) -> JobState {
    let status = job.status.clone().unwrap_or_default();
    let condition = |t: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == t && c.status == "True")
            .cloned()
    };
    if condition("Complete").is_some() || status.succeeded.unwrap_or(0) > 0 {
        return JobState::Succeeded;
    }
    if let Some(c) = condition("Failed") {
        return JobState::Failed(c.reason.unwrap_or_else(|| "Failed".into()));
    }
    if status.failed.unwrap_or(0) > 0 {
        return JobState::Failed("Failed".into());
    }
    JobState::Running
}

/// What `concordctl snapshot save --report` wrote.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SaveReport {
    pub file: String,
    pub revision: u64,
    pub keys: u64,
    pub file_bytes: u64,
    pub checksum: String,
}

#[derive(Deserialize)]
struct ErrorReport {
    error: String,
}

/// The termination message of a Job's pod: a report, or the error it names.
fn message(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
        .filter(|m| !m.trim().is_empty())
}

/// What a finished backup Job's pod reported: the backup, or why there is none.
pub fn save_report(pod: &Pod) -> Result<SaveReport, String> {
    let text = message(pod).ok_or_else(|| "the backup Job's pod reported nothing".to_string())?;
    if let Ok(e) = serde_json::from_str::<ErrorReport>(&text) {
        return Err(e.error);
    }
    serde_json::from_str(&text).map_err(|e| format!("the backup Job's report is unreadable: {e}"))
}

/// Why a Job's pod failed, for a status message.
pub fn failure_message(pod: Option<&Pod>, reason: &str) -> String {
    match pod.and_then(message) {
        Some(text) => match serde_json::from_str::<ErrorReport>(&text) {
            Ok(e) => e.error,
            Err(_) => text.chars().take(500).collect(),
        },
        None => format!("the Job failed ({reason})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_with(status: serde_json::Value) -> Job {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "j"}, "status": status}))
            .expect("job")
    }

    fn pod_with(message: Option<&str>) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "status": {
            "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"terminated": {"exitCode": 1, "message": message}}}]}}))
        .expect("pod")
    }

    #[test]
    fn a_jobs_state_comes_from_its_conditions_and_counts() {
        assert_eq!(state(&job_with(serde_json::json!({}))), JobState::Running);
        assert_eq!(
            state(&job_with(serde_json::json!({"active": 1}))),
            JobState::Running
        );
        assert_eq!(
            state(&job_with(serde_json::json!({"succeeded": 1}))),
            JobState::Succeeded
        );
        assert_eq!(
            state(&job_with(serde_json::json!({"conditions": [
                {"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}))),
            JobState::Failed("DeadlineExceeded".into())
        );
    }

    #[test]
    fn reports_are_read_and_bad_ones_named() {
        let ok = r#"{"file":"/backup/a.backup","revision":7,"keys":3,"fileBytes":900,"checksum":"ab","checksumVerified":true}"#;
        let r = save_report(&pod_with(Some(ok))).expect("a report");
        assert_eq!((r.revision, r.keys, r.file_bytes), (7, 3, 900));
        let e = save_report(&pod_with(Some(r#"{"error":"kv-1: cannot connect"}"#)));
        assert_eq!(e, Err("kv-1: cannot connect".to_string()));
        assert!(save_report(&pod_with(None)).is_err_and(|e| e.contains("reported nothing")));
        assert!(save_report(&pod_with(Some("panicked at ...")))
            .is_err_and(|e| e.contains("unreadable")));
        // A crash before the report: the log lines Kubernetes put there instead.
        assert_eq!(
            failure_message(
                Some(&pod_with(Some("Error: no space left on device"))),
                "Failed"
            ),
            "Error: no space left on device"
        );
        assert_eq!(
            failure_message(None, "DeadlineExceeded"),
            "the Job failed (DeadlineExceeded)"
        );
    }
}
