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

/// Downloads a backup from the first endpoint that serves one into `path`: written to
/// `path.part`, synced, verified, then renamed, so `path` is only ever a complete backup.
pub async fn save(client: &Client, path: &Path) -> anyhow::Result<Value> {
    // No overall timeout: a large store takes as long as it takes; a stalled connection is
    // caught by the read timeout.
    let http = client
        .tls()
        .http_builder()?
        .connect_timeout(std::time::Duration::from_secs(5))
        .read_timeout(std::time::Duration::from_secs(60))
        .build()?;
    let part = PathBuf::from(format!("{}.part", path.display()));
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
        // Checked as it arrives (no second read of the file), kept only if it checks out.
        let mut file = std::fs::File::create(&part)?;
        let mut body = resp.bytes_stream();
        let mut check = backup::Verifier::default();
        let received: anyhow::Result<()> = async {
            while let Some(chunk) = body.next().await {
                let chunk =
                    chunk.map_err(|e| anyhow::anyhow!("{ep}: the download broke off: {e}"))?;
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
                anyhow::bail!("{ep}: the backup received is unusable: {e}");
            }
        };
        std::fs::rename(&part, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        return Ok(describe(&verified));
    }
    Err(last)
}

pub async fn restore(o: &restore::RestoreOptions) -> anyhow::Result<Value> {
    let r = restore::restore(o).await?;
    Ok(serde_json::to_value(r)?)
}
