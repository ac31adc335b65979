//! `concordctl snapshot save|status|restore`: a backup downloaded from a member, checked, and
//! turned into a new cluster's data dirs.

use std::io::Write;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use serde_json::{json, Value};

use crate::backup::{self, restore, BackupError, Verified};
use crate::client::Client;

/// What `status` prints about a checked backup.
pub fn describe(v: &Verified) -> Value {
    let h = &v.header;
    json!({
        "checksum": v.checksum,
        "checksumVerified": true,
        "fileBytes": v.file_bytes,
        "format": h.format,
        "clusterId": h.cluster_id,
        "member": h.member,
        "revision": h.revision,
        "compacted": h.compacted,
        "keys": h.keys,
        "raftIndex": h.raft_index,
        "raftTerm": h.raft_term,
        "created": h.created,
        "nodeVersion": h.node_version,
    })
}

pub fn status_text(v: &Value) -> String {
    format!(
        "revision {} ({} keys, compacted at {}), {} bytes, taken {} from {} of cluster {} by concord-node {}\nsha256 {} (verified)",
        v["revision"],
        v["keys"],
        v["compacted"],
        v["fileBytes"],
        v["created"].as_str().unwrap_or("?"),
        v["member"].as_str().unwrap_or("?"),
        v["clusterId"].as_str().unwrap_or("?"),
        v["nodeVersion"].as_str().unwrap_or("?"),
        v["checksum"].as_str().unwrap_or("?"),
    )
}

pub fn status(path: &Path) -> Result<Value, BackupError> {
    backup::verify_file(path).map(|v| describe(&v))
}

/// Where a backup goes: `template` with `{revision}` and `{created}` (compact UTC time, e.g.
/// `20261205T113755Z`) replaced from the backup's header, so a caller can name the file after
/// what it holds before knowing it (the operator's backup Job does).
pub fn file_for(template: &Path, header: &backup::BackupHeader) -> PathBuf {
    let created: String = header
        .created
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    PathBuf::from(
        template
            .to_string_lossy()
            .replace("{revision}", &header.revision.to_string())
            .replace("{created}", &created),
    )
}

/// Writes a backup's chunks to the file `template` names: first to a `.part` file beside it,
/// checked as the bytes arrive (no second read), synced, then renamed, so the final name only
/// ever holds a complete, verified backup.
async fn receive<S, E>(mut chunks: S, template: &Path, source: &str) -> anyhow::Result<Value>
where
    S: futures::Stream<Item = Result<Vec<u8>, E>> + Unpin,
    E: std::fmt::Display,
{
    let dir = template
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir)?;
    let part = dir.join(format!(".concordctl-{}.part", std::process::id()));
    let mut file = std::fs::File::create(&part)?;
    let mut check = backup::Verifier::default();
    let received: anyhow::Result<()> = async {
        while let Some(chunk) = chunks.next().await {
            let chunk =
                chunk.map_err(|e| anyhow::anyhow!("{source}: the download broke off: {e}"))?;
            check.update(&chunk)?;
            file.write_all(&chunk)?;
        }
        file.sync_all()?;
        Ok(())
    }
    .await;
    drop(file);
    let verified = match received.and_then(|()| Ok(check.finish()?)) {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            anyhow::bail!("{source}: the backup received is unusable: {e}");
        }
    };
    let path = file_for(template, &verified.header);
    std::fs::rename(&part, &path)?;
    std::fs::File::open(&dir)?.sync_all()?;
    let mut v = describe(&verified);
    v["file"] = json!(path.display().to_string());
    Ok(v)
}

/// Downloads a backup from the first endpoint that serves one (`GET /admin/snapshot`) into
/// the file `path` names (see [`file_for`]).
pub async fn save(client: &Client, path: &Path) -> anyhow::Result<Value> {
    // No overall timeout: a large store takes as long as it takes; a stalled connection is
    // caught by the read timeout.
    let http = client
        .tls()
        .http_builder()?
        .connect_timeout(std::time::Duration::from_secs(5))
        .read_timeout(std::time::Duration::from_secs(60))
        .build()?;
    let mut last = anyhow::anyhow!("no endpoints");
    for ep in client.endpoints() {
        let mut req = http.get(format!("{ep}/admin/snapshot"));
        if let Some(token) = client.token() {
            req = req.bearer_auth(token);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                last = anyhow::anyhow!("{ep}: {e}");
                continue;
            }
        };
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            last = anyhow::anyhow!("{ep}: {status}: {body}");
            if status.as_u16() == 503 {
                continue;
            }
            return Err(last);
        }
        let body = resp.bytes_stream().map(|c| c.map(|b| b.to_vec()));
        return receive(body, path, ep).await;
    }
    Err(last)
}

/// A stalled member: no chunk for this long ends the download.
const MEMBER_STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// Downloads a backup from one member's admin service on its peer port (`host:port`; TLS
/// when `tls` has a CA): what the operator's backup Job runs, with the operator's certificate,
/// which the peer port trusts as root whether or not users and roles are on.
pub async fn save_from_member(
    tls: &crate::client::ClientTls,
    member: &str,
    path: &Path,
) -> anyhow::Result<Value> {
    let host = member
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{host}"))
        .map_err(|e| anyhow::anyhow!("--member {member}: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(10))
        .tcp_nodelay(true);
    let channel = match tls.grpc_config()? {
        Some(config) => {
            endpoint
                .connect_with_connector(crate::tls::TlsConnector {
                    config: crate::tls::DialConfig::Fixed(config),
                    connect_timeout: std::time::Duration::from_secs(10),
                })
                .await
        }
        None => endpoint.connect().await,
    }
    .map_err(|e| anyhow::anyhow!("{member}: cannot connect: {e}"))?;
    let mut admin = concord_proto::admin_client::AdminClient::new(channel)
        .max_decoding_message_size(crate::raft::channels::MAX_MESSAGE_BYTES);
    let stream = admin
        .snapshot(concord_proto::BackupRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{member}: {}: {}", s.code(), s.message()))?
        .into_inner();
    let chunks = futures::stream::unfold(stream, |mut s| async move {
        let next = match tokio::time::timeout(MEMBER_STALL, s.message()).await {
            Ok(Ok(Some(c))) => Ok(c.data),
            Ok(Ok(None)) => return None,
            Ok(Err(status)) => Err(format!("{}: {}", status.code(), status.message())),
            Err(_) => Err(format!("nothing arrived for {}s", MEMBER_STALL.as_secs())),
        };
        Some((next, s))
    });
    // After an error the stream is not read further: `receive` stops at the first one.
    receive(Box::pin(chunks), path, member).await
}

/// Removes backup files (what a schedule's pruning Job runs): only files that start as a
/// ConcordKV backup does, all checked before any is removed, so a wrong path removes nothing;
/// an absent file is already gone.
pub fn remove(files: &[PathBuf]) -> anyhow::Result<Value> {
    use std::io::Read;
    let (mut present, mut absent) = (Vec::new(), Vec::new());
    for f in files {
        let mut file = match std::fs::File::open(f) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                absent.push(f.display().to_string());
                continue;
            }
            Err(e) => anyhow::bail!("{}: {e}; nothing was removed", f.display()),
        };
        let mut magic = [0u8; 7];
        let read = file.read_exact(&mut magic);
        if read.is_err() || &magic != backup::MAGIC_PREFIX {
            anyhow::bail!(
                "{}: not a ConcordKV backup; nothing was removed",
                f.display()
            );
        }
        present.push(f);
    }
    for f in &present {
        std::fs::remove_file(f)?;
        if let Some(dir) = f.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    let removed: Vec<String> = present.iter().map(|f| f.display().to_string()).collect();
    Ok(json!({ "removed": removed, "absent": absent }))
}

pub async fn restore(o: &restore::RestoreOptions) -> anyhow::Result<Value> {
    let r = restore::restore(o).await?;
    Ok(serde_json::to_value(r)?)
}
