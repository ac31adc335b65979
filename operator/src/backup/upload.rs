//! Streaming a member's backup into object storage (the `object_store` crate: S3 and
//! S3-compatible stores here; GCS, Azure and local files sit behind the same interface): a
//! multipart upload fed chunk by chunk, the object named once the header has arrived, the
//! checksum checked as the bytes pass, and the upload aborted rather than completed when
//! anything is wrong. Memory: a few parts, whatever the backup's size.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, WriteMultipart};

use super::location::{parse_header, Checksum, Header};
use super::S3Destination;

/// Upload part size (S3's minimum is 5 MiB), and parts in flight.
const PART_BYTES: usize = 8 * 1024 * 1024;
const PARTS_IN_FLIGHT: usize = 2;

/// Object storage credentials, from a Secret. Never printed.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

/// The store a destination names.
pub fn s3_store(dest: &S3Destination, creds: &Credentials) -> Result<Arc<dyn ObjectStore>, String> {
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(&dest.bucket)
        .with_region(dest.region.clone().unwrap_or_else(|| "us-east-1".into()))
        .with_access_key_id(&creds.access_key_id)
        .with_secret_access_key(&creds.secret_access_key)
        .with_virtual_hosted_style_request(!dest.force_path_style);
    if let Some(token) = &creds.session_token {
        b = b.with_token(token);
    }
    if let Some(endpoint) = dest.endpoint.as_deref().filter(|e| !e.is_empty()) {
        b = b
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    // The builder's errors name settings, never their values.
    b.build()
        .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
        .map_err(|e| format!("the S3 destination is not usable: {e}"))
}

/// A backup in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub key: String,
    pub header: Header,
    pub bytes: u64,
    pub checksum: String,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The member's stream broke off or held something that is not a backup.
    #[error("{0}")]
    Source(String),
    /// The store refused.
    #[error("object storage: {0}")]
    Store(String),
}

/// Streams `chunks` (a backup, as a member sends it) into `store` under the key `key_for`
/// picks from the backup's header.
pub async fn upload<S, E>(
    store: &dyn ObjectStore,
    mut chunks: S,
    key_for: impl FnOnce(&Header) -> String,
) -> Result<Uploaded, UploadError>
where
    S: Stream<Item = Result<Vec<u8>, E>> + Unpin,
    E: std::fmt::Display,
{
    // The header first: it names the object.
    let mut head = Vec::new();
    let header = loop {
        match chunks.next().await {
            Some(Ok(c)) => head.extend_from_slice(&c),
            Some(Err(e)) => return Err(UploadError::Source(format!("the member's stream: {e}"))),
            None => {
                return Err(UploadError::Source(
                    "the member's stream ended before its header".into(),
                ))
            }
        }
        if let Some(h) = parse_header(&head) {
            break h.map_err(UploadError::Source)?;
        }
    };
    let key = key_for(&header);
    let path = Path::from(key.as_str());
    let upload = store
        .put_multipart(&path)
        .await
        .map_err(|e| UploadError::Store(e.to_string()))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    let mut sum = Checksum::default();
    sum.update(&head);
    writer.write(&head);
    drop(head);
    let streamed: Result<(), UploadError> = async {
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk
                .map_err(|e| UploadError::Source(format!("the member's stream broke off: {e}")))?;
            writer
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(|e| UploadError::Store(e.to_string()))?;
            sum.update(&chunk);
            writer.write(&chunk);
        }
        Ok(())
    }
    .await;
    let bytes = sum.bytes;
    let checked = streamed.and_then(|()| sum.finish().map_err(UploadError::Source));
    match checked {
        Ok(checksum) => {
            writer
                .finish()
                .await
                .map_err(|e| UploadError::Store(e.to_string()))?;
            Ok(Uploaded {
                key,
                header,
                bytes,
                checksum,
            })
        }
        Err(e) => {
            // Nothing half-written is left behind to be mistaken for a backup.
            if let Err(abort) = writer.abort().await {
                tracing::warn!(error = %abort, key, "could not abort the multipart upload");
            }
            Err(e)
        }
    }
}
