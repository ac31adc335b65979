//! etcd's Watch service: one bidirectional stream carrying many watches (create, cancel,
//! progress requests in; created/canceled answers, events and progress out), served from this
//! member's applied state by a [`Feed`]. The JSON gateway's `POST /v3/watch` runs the same loop
//! over the one request in its body.
//!
//! Flow control: responses go to the client through a small channel; when the client reads
//! slowly the loop waits on it, the feed's queue in the hub fills, and its watches lag and are
//! caught up from history later — the apply loop is never held up.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use concord_proto::etcd::etcdserverpb as pb;
use concord_proto::etcd::etcdserverpb::watch_request::RequestUnion;
use concord_proto::etcd::mvccpb;
use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use super::header;
use crate::app::App;
use crate::store::mvcc::{Event, KeyRange};
use crate::watch::{Feed, Update, WatchId, WatchSpec};

/// Events in one update at most, before the next revision goes in the next response.
const MAX_UPDATE_BYTES: usize = 1024 * 1024;

/// Responses waiting for the client at most: past this the stream waits for it.
const SEND_QUEUE: usize = 16;

/// How long a watch from "now" waits for the leader's read index on a follower.
const LINEARIZE_TIMEOUT: Duration = Duration::from_secs(5);

pub type WatchResponses = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

pub struct WatchService {
    pub app: Arc<App>,
}

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchService {
    type WatchStream = WatchResponses;

    async fn watch(
        &self,
        req: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Ok(Response::new(responses(self.app.clone(), req.into_inner())))
    }
}

/// Serves `requests` as one watch stream; its responses, until the client goes away.
pub fn responses<S>(app: Arc<App>, requests: S) -> WatchResponses
where
    S: Stream<Item = Result<pb::WatchRequest, Status>> + Send + Unpin + 'static,
{
    let (tx, rx) = mpsc::channel(SEND_QUEUE);
    // Who opened the stream: each watch it creates is checked against their permissions.
    let identity = crate::auth::identity();
    tokio::spawn(run(app, identity, requests, tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

type Out = mpsc::Sender<Result<pb::WatchResponse, Status>>;

struct Session {
    app: Arc<App>,
    identity: Result<crate::auth::Caller, crate::auth::Refusal>,
    feed: Feed,
    /// Watches whose client takes a large response in fragments.
    fragmented: HashSet<WatchId>,
    next_auto_id: WatchId,
}

async fn run<S>(
    app: Arc<App>,
    identity: Result<crate::auth::Caller, crate::auth::Refusal>,
    mut requests: S,
    tx: Out,
) where
    S: Stream<Item = Result<pb::WatchRequest, Status>> + Send + Unpin,
{
    let feed = Feed::new(
        &app.watches,
        app.state.clone(),
        MAX_UPDATE_BYTES,
        app.config.watch.progress_notify_interval,
    );
    let mut s = Session {
        app,
        identity,
        feed,
        fragmented: HashSet::new(),
        next_auto_id: 0,
    };
    // A client that closes its side keeps its watches (the gateway's one request does this).
    let mut open = true;
    loop {
        let sent = tokio::select! {
            r = requests.next(), if open => match r {
                Some(Ok(req)) => s.request(req, &tx).await,
                Some(Err(_)) => break,
                None => {
                    open = false;
                    true
                }
            },
            u = s.feed.next() => s.update(u, &tx).await,
            _ = tx.closed() => break,
        };
        if !sent {
            break;
        }
    }
}

impl Session {
    fn header(&self, revision: u64) -> Option<pb::ResponseHeader> {
        Some(header(&self.app, revision))
    }

    async fn send(&self, tx: &Out, resp: pb::WatchResponse) -> bool {
        tx.send(Ok(resp)).await.is_ok()
    }

    /// Handles one client request; false once the client is gone.
    async fn request(&mut self, req: pb::WatchRequest, tx: &Out) -> bool {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c, tx).await,
            Some(RequestUnion::CancelRequest(c)) => {
                if self.feed.cancel(c.watch_id) {
                    self.fragmented.remove(&c.watch_id);
                    let revision = self.app.state.read().kv.revision();
                    let resp = pb::WatchResponse {
                        header: self.header(revision),
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    };
                    return self.send(tx, resp).await;
                }
                true
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.feed.request_progress();
                true
            }
            None => true,
        }
    }

    async fn create(&mut self, c: pb::WatchCreateRequest, tx: &Out) -> bool {
        let id = if c.watch_id == 0 {
            // etcd's AutoWatchID: the lowest id from the last one given that is free.
            while self.feed.contains(self.next_auto_id) {
                self.next_auto_id += 1;
            }
            self.next_auto_id
        } else {
            c.watch_id
        };
        let refuse = |reason: String, revision: u64| pb::WatchResponse {
            header: Some(header(&self.app, revision)),
            watch_id: id,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        };
        let range = KeyRange::from_etcd(c.key.clone(), c.range_end.clone());
        let permitted = {
            let state = self.app.state.read();
            crate::auth::caller_of(&state.auth, &self.identity)
                .and_then(|caller| caller.check(&state.auth, crate::auth::Access::Read, &range))
        };
        if let Err(r) = permitted {
            // etcd's answer: the watch is created and canceled with the reason.
            let current = self.app.state.read().kv.revision();
            let reason = super::auth::refused(&r).message().to_string();
            return self.send(tx, refuse(reason, current)).await;
        }
        let current = self.app.state.read().kv.revision();
        if self.feed.contains(id) {
            return self
                .send(tx, refuse("mvcc: duplicate watch ID".into(), current))
                .await;
        }
        let start_revision = u64::try_from(c.start_revision).unwrap_or(0);
        if start_revision == 0 {
            // From "now" as a linearizable read would see it: a follower first catches up to
            // the leader's commit index.
            match tokio::time::timeout(LINEARIZE_TIMEOUT, self.app.linearize()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let reason = format!("etcdserver: {e}");
                    return self.send(tx, refuse(reason, current)).await;
                }
                Err(_) => {
                    let reason = "etcdserver: no leader answered in time to start the watch from the current revision".into();
                    return self.send(tx, refuse(reason, current)).await;
                }
            }
        } else {
            // History read here must include what the leader has acknowledged (a compaction
            // through another member, say), or a compacted start would replay instead of
            // being canceled.
            self.app.catch_up(LINEARIZE_TIMEOUT).await;
        }
        let filters = |f: pb::watch_create_request::FilterType| c.filters.contains(&(f as i32));
        let spec = WatchSpec {
            range,
            start_revision,
            prev_kv: c.prev_kv,
            no_put: filters(pb::watch_create_request::FilterType::Noput),
            no_delete: filters(pb::watch_create_request::FilterType::Nodelete),
            progress_notify: c.progress_notify,
        };
        if let Err(e) = self.feed.create(id, spec) {
            return self.send(tx, refuse(e.to_string(), current)).await;
        }
        if c.fragment {
            self.fragmented.insert(id);
        }
        if c.watch_id == 0 {
            self.next_auto_id = id + 1;
        }
        let revision = self.app.state.read().kv.revision();
        let created = pb::WatchResponse {
            header: self.header(revision),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        self.send(tx, created).await
    }

    /// Sends one update; false once the client is gone.
    async fn update(&mut self, u: Update, tx: &Out) -> bool {
        match u {
            Update::Events {
                watch,
                events,
                revision,
            } => {
                let resp = pb::WatchResponse {
                    header: self.header(revision),
                    watch_id: watch,
                    events: events.into_iter().map(event).collect(),
                    ..Default::default()
                };
                let limit = self.app.config.limits.max_request_bytes;
                if self.fragmented.contains(&watch) && resp.encoded_len() > limit {
                    for part in fragments(resp, limit) {
                        if !self.send(tx, part).await {
                            return false;
                        }
                    }
                    return true;
                }
                self.send(tx, resp).await
            }
            Update::Progress { watch, revision } => {
                let resp = pb::WatchResponse {
                    header: self.header(revision),
                    watch_id: watch,
                    ..Default::default()
                };
                self.send(tx, resp).await
            }
            Update::Canceled {
                watch,
                compact_revision,
                reason,
            } => {
                self.fragmented.remove(&watch);
                let revision = self.app.state.read().kv.revision();
                let resp = pb::WatchResponse {
                    header: self.header(revision),
                    watch_id: watch,
                    canceled: true,
                    compact_revision: compact_revision as i64,
                    cancel_reason: reason,
                    ..Default::default()
                };
                self.send(tx, resp).await
            }
        }
    }
}

/// etcd's fragmenting: the events split over responses of at most `limit` bytes (at least
/// one event each), all but the last marked `fragment`.
fn fragments(resp: pb::WatchResponse, limit: usize) -> Vec<pb::WatchResponse> {
    let pb::WatchResponse {
        header,
        watch_id,
        events,
        ..
    } = resp;
    let mut parts: Vec<pb::WatchResponse> = Vec::new();
    let mut current: Vec<mvccpb::Event> = Vec::new();
    let mut bytes = 0;
    for e in events {
        let len = e.encoded_len() + 8;
        if !current.is_empty() && bytes + len > limit {
            parts.push(pb::WatchResponse {
                header,
                watch_id,
                fragment: true,
                events: std::mem::take(&mut current),
                ..Default::default()
            });
            bytes = 0;
        }
        bytes += len;
        current.push(e);
    }
    parts.push(pb::WatchResponse {
        header,
        watch_id,
        events: current,
        ..Default::default()
    });
    parts
}

/// A change as etcd's `mvccpb.Event`.
pub fn event(e: Event) -> mvccpb::Event {
    let (kind, kv, prev) = match e {
        Event::Put { kv, prev } => (mvccpb::event::EventType::Put, kv, prev),
        Event::Delete { kv, prev } => (mvccpb::event::EventType::Delete, kv, prev),
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(convert::kv(kv)),
        prev_kv: prev.map(convert::kv),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value_len: usize) -> mvccpb::Event {
        mvccpb::Event {
            r#type: 0,
            kv: Some(mvccpb::KeyValue {
                key: key.as_bytes().to_vec(),
                value: vec![b'x'; value_len],
                mod_revision: 5,
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn a_large_response_is_split_into_fragments_that_keep_every_event_in_order() {
        let events: Vec<mvccpb::Event> = (0..10).map(|i| put(&format!("k{i}"), 300)).collect();
        let resp = pb::WatchResponse {
            watch_id: 3,
            events: events.clone(),
            ..Default::default()
        };
        let parts = fragments(resp, 1000);
        assert!(parts.len() >= 4, "{}", parts.len());
        assert!(parts.iter().all(|p| p.encoded_len() <= 1000 + 400));
        assert!(parts[..parts.len() - 1].iter().all(|p| p.fragment));
        assert!(!parts[parts.len() - 1].fragment);
        let joined: Vec<mvccpb::Event> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(joined, events);
        // One event larger than the limit still goes, alone.
        let big = pb::WatchResponse {
            events: vec![put("big", 5000)],
            ..Default::default()
        };
        assert_eq!(fragments(big, 1000).len(), 1);
    }
}
