//! `spec.restoreFrom`: a new cluster's first member starts from a backup. The operator finds
//! the object (a ConcordBackup's, or one named directly), streams it from the store into the
//! member's admin `Restore`, and checks it as it passes — so a missing, damaged or too-new
//! backup is named as such, and the member, which checks it too, installs nothing.

use std::sync::Arc;

use futures::StreamExt;
use kube::Api;
use object_store::path::Path;
use object_store::ObjectStore;
use parking_lot::Mutex;

use super::location::{parse_header, Checksum};
use super::reconcile::{credentials, Stop};
use super::{BackupPhase, ConcordBackup, RestoreSource};
use crate::admin::{AdminCallError, ByteStream, NodeAdmin};
use crate::reconcile::Context;

/// A backup object a cluster restores from.
#[derive(Clone)]
pub struct BackupObject {
    pub store: Arc<dyn ObjectStore>,
    pub key: String,
    /// `s3://bucket/key`, for messages.
    pub location: String,
}

impl std::fmt::Debug for BackupObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.location)
    }
}

/// Where the backup to restore is, asked only when a first member is about to be initialized
/// (so a cluster already created never depends on its `restoreFrom` still being there).
#[tonic::async_trait]
pub trait BackupSource: std::fmt::Debug + Send + Sync {
    async fn backup(&self) -> Result<BackupObject, RestoreFailure>;
}

/// An object already found (the tests name one directly).
#[tonic::async_trait]
impl BackupSource for BackupObject {
    async fn backup(&self) -> Result<BackupObject, RestoreFailure> {
        Ok(self.clone())
    }
}

/// A cluster's `spec.restoreFrom`, resolved through the Kubernetes API when asked.
pub struct SpecSource {
    pub ctx: Arc<Context>,
    pub namespace: String,
    pub source: RestoreSource,
}

impl std::fmt::Debug for SpecSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "restoreFrom {:?} in {}", self.source, self.namespace)
    }
}

#[tonic::async_trait]
impl BackupSource for SpecSource {
    async fn backup(&self) -> Result<BackupObject, RestoreFailure> {
        resolve(&self.ctx, &self.namespace, &self.source).await
    }
}

/// Why a restore did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct RestoreFailure {
    /// One word: BackupNotFound, BackupCorrupt, BackupFormatTooNew, BackupSourceInvalid,
    /// CredentialsMissing, StoreUnreachable, RestoreRefused, MemberUnreachable.
    pub reason: &'static str,
    pub message: String,
    /// Another attempt may succeed (the store or the member was away); otherwise the cluster
    /// fails until its spec or the backup changes.
    pub transient: bool,
}

fn failure(reason: &'static str, message: impl Into<String>, transient: bool) -> RestoreFailure {
    RestoreFailure {
        reason,
        message: message.into(),
        transient,
    }
}

impl From<Stop> for RestoreFailure {
    fn from(s: Stop) -> Self {
        RestoreFailure {
            reason: s.reason,
            message: s.message,
            transient: s.retry,
        }
    }
}

/// The object `source` names in namespace `ns`, with its store's credentials.
pub async fn resolve(
    ctx: &Context,
    ns: &str,
    source: &RestoreSource,
) -> Result<BackupObject, RestoreFailure> {
    let invalid = |m: String| failure("BackupSourceInvalid", m, false);
    let (store, key) = match (&source.backup, &source.s3) {
        (Some(name), None) => {
            let api: Api<ConcordBackup> = Api::namespaced(ctx.client.clone(), ns);
            let b = api
                .get_opt(name)
                .await
                .map_err(|e| {
                    failure(
                        "StoreUnreachable",
                        format!("reading ConcordBackup {name}: {e}"),
                        true,
                    )
                })?
                .ok_or_else(|| invalid(format!("ConcordBackup {name} does not exist in {ns}")))?;
            let status = b.status.unwrap_or_default();
            if status.phase != Some(BackupPhase::Succeeded) {
                return Err(invalid(format!(
                    "ConcordBackup {name} has not succeeded (phase {})",
                    status.phase.map_or("Pending", |p| p.as_str())
                )));
            }
            let Some(s3) = b.spec.destination.s3 else {
                return Err(invalid(format!(
                    "ConcordBackup {name} is in a PVC ({}); restoreFrom reads backups from S3 \
                     storage: copy it there, or restore it with `concordctl snapshot restore`",
                    status.location.as_deref().unwrap_or("no location")
                )));
            };
            let bucket = &s3.bucket;
            let key = status
                .location
                .as_deref()
                .and_then(|l| l.strip_prefix(&format!("s3://{bucket}/")))
                .ok_or_else(|| {
                    invalid(format!(
                        "ConcordBackup {name} records no location in s3://{bucket}"
                    ))
                })?
                .to_string();
            (s3, key)
        }
        (None, Some(o)) => (o.store(), o.key.clone()),
        _ => {
            return Err(invalid(
                "spec.restoreFrom names neither or both of backup and s3".into(),
            ))
        }
    };
    let creds = credentials(ctx, ns, &store.credentials_secret).await?;
    let location = format!("s3://{}/{key}", store.bucket);
    let store = super::upload::s3_store(&store, &creds).map_err(invalid)?;
    Ok(BackupObject {
        store,
        key,
        location,
    })
}

/// Streams `backup` into the uninitialized member at `addr`; the member's own account of what
/// it restored on success.
pub async fn restore_into(
    admin: &dyn NodeAdmin,
    addr: &str,
    backup: &BackupObject,
) -> Result<String, RestoreFailure> {
    let loc = &backup.location;
    let got = backup
        .store
        .get(&Path::from(backup.key.as_str()))
        .await
        .map_err(|e| match e {
            object_store::Error::NotFound { .. } => {
                failure("BackupNotFound", format!("{loc} does not exist"), false)
            }
            e => failure("StoreUnreachable", format!("reading {loc}: {e}"), true),
        })?;
    // What the operator's own check found, if anything: it names the cause better than the
    // member's refusal of a stream that was cut short.
    let found: Arc<Mutex<Option<RestoreFailure>>> = Arc::new(Mutex::new(None));
    let chunks = checked(got.into_stream(), loc.clone(), found.clone());
    let outcome = admin.restore(addr, chunks).await;
    if let Some(f) = found.lock().take() {
        return Err(f);
    }
    match outcome {
        Ok(r) => Ok(r.message),
        Err(AdminCallError::Unreachable { message, .. }) => Err(failure(
            "MemberUnreachable",
            format!("the first member did not take the backup: {message}"),
            true,
        )),
        Err(AdminCallError::Refused { message, .. }) => Err(failure(
            "RestoreRefused",
            format!("the first member refused {loc}: {message}"),
            false,
        )),
        // The stream's own failure is in `found`, taken above; this is only its echo.
        Err(AdminCallError::Source { message }) => Err(failure(
            "StoreUnreachable",
            format!("reading {loc}: {message}"),
            true,
        )),
    }
}

/// The object's bytes, checked as they pass (header, format, checksum); the first problem is
/// put in `found` and ends the stream with an error.
fn checked<S, B>(bytes: S, loc: String, found: Arc<Mutex<Option<RestoreFailure>>>) -> ByteStream
where
    S: futures::Stream<Item = object_store::Result<B>> + Send + Unpin + 'static,
    B: AsRef<[u8]>,
{
    struct Check<S> {
        bytes: S,
        head: Option<Vec<u8>>,
        sum: Checksum,
        done: bool,
    }
    let start = Check {
        bytes,
        head: Some(Vec::new()),
        sum: Checksum::default(),
        done: false,
    };
    let stream = futures::stream::unfold(start, move |mut c| {
        let (loc, found) = (loc.clone(), found.clone());
        async move {
            if c.done {
                return None;
            }
            let fail = |c: &mut Check<S>, f: RestoreFailure| {
                c.done = true;
                let message = f.to_string();
                *found.lock() = Some(f);
                Some(Err(AdminCallError::Source { message }))
            };
            match c.bytes.next().await {
                Some(Ok(chunk)) => {
                    let chunk = chunk.as_ref();
                    c.sum.update(chunk);
                    if let Some(head) = c.head.as_mut() {
                        head.extend_from_slice(chunk);
                        match parse_header(head) {
                            None => {}
                            Some(Ok(_)) => c.head = None,
                            Some(Err(m)) => {
                                let reason = if m.contains("newer") {
                                    "BackupFormatTooNew"
                                } else {
                                    "BackupCorrupt"
                                };
                                let f = failure(reason, format!("{loc}: {m}"), false);
                                return fail(&mut c, f).map(|item| (item, c));
                            }
                        }
                    }
                    Some((Ok(chunk.to_vec()), c))
                }
                Some(Err(e)) => {
                    let f = failure("StoreUnreachable", format!("reading {loc}: {e}"), true);
                    fail(&mut c, f).map(|item| (item, c))
                }
                None => {
                    let sum = std::mem::take(&mut c.sum);
                    if let Err(m) = sum.finish() {
                        let f = failure("BackupCorrupt", format!("{loc}: {m}"), false);
                        return fail(&mut c, f).map(|item| (item, c));
                    }
                    None
                }
            }
        }
    });
    Box::pin(stream)
}
