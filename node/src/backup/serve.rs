//! Taking a backup from a running member: after a read barrier (so the copy holds every write
//! acknowledged before the request), the state is copied under the read lock in O(1) (the
//! store is persistent) and written from the copy on a low-priority thread into a bounded
//! channel of chunks. Writes go on meanwhile; memory stays at a few chunks whatever the size of
//! the store, and a client that stops reading stops the writer.

use std::io::{self, Write};

use axum::body::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{BackupHeader, BACKUP_FORMAT};
use crate::app::App;
use crate::requests::ServiceError;

/// Bytes per chunk sent, and chunks in flight.
const CHUNK: usize = 1 << 20;
const IN_FLIGHT: usize = 4;

/// A backup being streamed: its header (known before the first byte) and its bytes. Its size
/// is known only at its end (the one pass over the store writes it).
pub struct BackupStream {
    pub header: BackupHeader,
    pub chunks: mpsc::Receiver<io::Result<Bytes>>,
}

/// Sends what is written as chunks; fails once the receiver is gone.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the backup's reader left"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Starts a backup of this member's state.
pub async fn start(app: &App) -> Result<BackupStream, ServiceError> {
    app.linearize().await?;
    let copy = app.state.read().clone();
    let member = app.identity.name.clone();
    let cluster_id = app
        .cluster_id
        .get()
        .map(|c| c.to_string())
        .unwrap_or_default();
    let (header_tx, header_rx) = oneshot::channel();
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    let spawned = std::thread::Builder::new()
        .name("backup-writer".into())
        .spawn(move || {
            crate::storage::state_machine::lower_priority_to(false);
            let started = std::time::Instant::now();
            let last = copy.last_applied;
            let header = BackupHeader {
                format: BACKUP_FORMAT,
                cluster_id,
                member,
                revision: copy.kv.revision(),
                compacted: copy.kv.compacted(),
                keys: copy.kv.len(),
                raft_index: last.map(|l| l.index).unwrap_or(0),
                raft_term: last.map(|l| l.leader_id.term).unwrap_or(0),
                created: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                    .to_string(),
                node_version: env!("CARGO_PKG_VERSION").into(),
                data_format: crate::codec::SNAPSHOT_FORMAT,
            };
            if header_tx.send(header.clone()).is_err() {
                return;
            }
            let mut out = ChannelWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK),
            };
            match super::write(&mut out, &header, &copy.kv, &copy.auth) {
                Ok(checksum) => tracing::info!(
                    revision = header.revision,
                    keys = header.keys,
                    %checksum,
                    seconds = started.elapsed().as_secs_f64(),
                    "backup streamed"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "backup stopped");
                    let _ = tx.blocking_send(Err(e));
                }
            }
        });
    if let Err(e) = spawned {
        return Err(ServiceError::Internal(format!(
            "cannot start the backup thread: {e}"
        )));
    }
    let header = header_rx
        .await
        .map_err(|_| ServiceError::Internal("the backup thread ended early".into()))?;
    Ok(BackupStream { header, chunks: rx })
}
