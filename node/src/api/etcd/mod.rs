//! etcd's v3 API (gRPC), on a port of its own (`--etcd-listen`, default `:2379`), so etcd's
//! clients — etcdctl, the Go, Python and Rust clients — work against ConcordKV unchanged: KV
//! (`kv.rs`), Watch (`watch.rs`), Lease (`lease.rs`), Lock and Election (`recipes.rs`), Cluster
//! and Maintenance (here), and the standard gRPC health service.
//!
//! Messages are etcd's own, generated from its .proto files (`proto/vendor`). Every member
//! serves every request: writes are forwarded to the leader, reads are linearizable (through
//! the leader's read index) unless `serializable`.

pub mod auth;
pub mod convert;
pub mod gateway;
pub mod kv;
pub mod lease;
pub mod recipes;
pub mod watch;

use std::sync::Arc;

use concord_proto::etcd::etcdserverpb as pb;
use concord_proto::etcd::etcdserverpb::cluster_server::{Cluster, ClusterServer};
use concord_proto::etcd::etcdserverpb::kv_server::KvServer;
use concord_proto::etcd::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};

use tonic::{Request, Response, Status};

use crate::app::App;
use crate::membership::Hop;
use crate::requests::ServiceError;

/// The etcd version whose API this serves, as `Status.version` reports it: clients gate
/// features on it, and what they get is etcd 3.5's API.
pub const ETCD_API_VERSION: &str = "3.5.0";

/// etcd's cluster id is a number; ours is a string. Its FNV-1a hash, stable for the cluster.
fn cluster_id_number(app: &App) -> u64 {
    app.cluster_id
        .wire()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// The header every etcd response carries.
pub fn header(app: &App, revision: u64) -> pb::ResponseHeader {
    pb::ResponseHeader {
        cluster_id: cluster_id_number(app),
        member_id: app.id(),
        revision: revision as i64,
        raft_term: app.metrics().current_term,
    }
}

/// etcd's status for a request that could not be served (`api/v3rpc/rpctypes`): clients
/// retry `Unavailable` on another member.
pub fn service_status(e: &ServiceError) -> Status {
    match e {
        ServiceError::NoLeader(_) | ServiceError::NotLeader => {
            Status::unavailable("etcdserver: no leader")
        }
        ServiceError::Unavailable(m) => Status::unavailable(format!("etcdserver: {m}")),
        ServiceError::Unknown(m) => {
            Status::unavailable(format!("etcdserver: request timed out ({m})"))
        }
        ServiceError::Overloaded(m) => {
            Status::resource_exhausted(format!("etcdserver: too many requests ({m})"))
        }
        // etcd's ErrGRPCNoSpace: clients match on this message.
        ServiceError::NoSpace(_) => {
            Status::resource_exhausted("etcdserver: mvcc: database space exceeded")
        }
        ServiceError::Internal(m) => Status::internal(m.clone()),
    }
}

fn admin_status(e: crate::membership::AdminError) -> Status {
    Status::from(e)
}

/// The member's client URL as etcd clients expect it: the etcd port on the host its peers
/// reach it at (members are assumed to listen for etcd clients on the same port, as the
/// operator sets them up).
fn client_url(peer_addr: &str, etcd_port: u16) -> String {
    let host = peer_addr
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(peer_addr);
    format!("http://{host}:{etcd_port}")
}

/// `host:port` from a peer URL as etcd takes them (`http://10.0.0.4:2380`).
fn peer_url_addr(url: &str) -> Result<String, String> {
    let bad = |why: &str| format!("etcdserver: peer URL {url:?} {why}");
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    let valid = hostport.rsplit_once(':').is_some_and(|(h, p)| {
        !h.is_empty() && !h.contains('/') && p.parse::<u16>().is_ok_and(|p| p != 0)
    });
    if !valid {
        return Err(bad("must be scheme://host:port"));
    }
    Ok(hostport.to_string())
}

pub struct ClusterService {
    pub app: Arc<App>,
}

impl ClusterService {
    /// The member list as this member sees it now: what a membership change answers with.
    async fn members_now(&self) -> Result<pb::MemberListResponse, Status> {
        Ok(self
            .member_list(Request::new(pb::MemberListRequest::default()))
            .await?
            .into_inner())
    }

    fn etcd_port(&self) -> u16 {
        self.app
            .config
            .etcd_addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(2379)
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    /// etcd's request names no member and no id: the cluster assigns the id, which the new
    /// node is started with (`--join --member-id`). The member is always added as a learner,
    /// whatever `is_learner` says, and becomes a voter through `MemberPromote` once caught up
    /// (refused while it is behind): a voter that has not started would count against quorum.
    async fn member_add(
        &self,
        req: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let req = req.into_inner();
        let [url] = req.peer_ur_ls.as_slice() else {
            return Err(Status::invalid_argument(format!(
                "etcdserver: a member is added with exactly one peer URL, got {}",
                req.peer_ur_ls.len()
            )));
        };
        let addr = peer_url_addr(url).map_err(Status::invalid_argument)?;
        let known = self.app.metrics().membership_config.membership().clone();
        if let Some((id, _)) = known.nodes().find(|(_, m)| m.addr == addr) {
            return Err(Status::failed_precondition(format!(
                "etcdserver: Peer URLs already exists (member {id:x} has {url})"
            )));
        }
        let id = loop {
            let id = rand::random::<u64>() & ((1 << 53) - 1);
            if id != 0 && known.get_node(&id).is_none() {
                break id;
            }
        };
        let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
        let spec = concord_proto::MemberSpec {
            id,
            name: host.to_string(),
            address: addr.clone(),
        };
        self.app
            .admin_add_learner(
                concord_proto::AddLearnerRequest {
                    member: Some(spec),
                    no_wait: true,
                },
                Hop::Client,
            )
            .await
            .map_err(admin_status)?;
        let list = self.members_now().await?;
        let member = list.members.iter().find(|m| m.id == id).cloned();
        Ok(Response::new(pb::MemberAddResponse {
            header: list.header,
            member: Some(member.unwrap_or(pb::Member {
                id,
                name: String::new(),
                peer_ur_ls: vec![url.clone()],
                client_ur_ls: Vec::new(),
                is_learner: true,
            })),
            members: list.members,
        }))
    }

    async fn member_remove(
        &self,
        req: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let id = req.into_inner().id;
        self.app
            .admin_remove(
                concord_proto::RemoveMemberRequest { id, force: false },
                Hop::Client,
            )
            .await
            .map_err(admin_status)?;
        let list = self.members_now().await?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: list.header,
            members: list.members,
        }))
    }

    async fn member_update(
        &self,
        _: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        Err(Status::unimplemented(
            "a member's address changes by removing it and adding it again",
        ))
    }

    async fn member_list(
        &self,
        req: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let linearizable = req.into_inner().linearizable;
        if linearizable {
            self.app.linearize().await.map_err(|e| service_status(&e))?;
        }
        let m = self.app.metrics();
        let membership = m.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let port = self.etcd_port();
        let members = membership
            .nodes()
            .map(|(id, node)| pb::Member {
                id: *id,
                name: node.name.clone(),
                peer_ur_ls: vec![format!("http://{}", node.addr)],
                client_ur_ls: vec![client_url(&node.addr, port)],
                is_learner: !voters.contains(id),
            })
            .collect();
        let revision = self.app.state.read().kv.revision();
        Ok(Response::new(pb::MemberListResponse {
            header: Some(header(&self.app, revision)),
            members,
        }))
    }

    async fn member_promote(
        &self,
        req: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let id = req.into_inner().id;
        self.app
            .admin_promote(concord_proto::PromoteRequest { id }, Hop::Client)
            .await
            .map_err(admin_status)?;
        let list = self.members_now().await?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: list.header,
            members: list.members,
        }))
    }
}

pub struct MaintenanceService {
    pub app: Arc<App>,
}

type SnapshotStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<pb::SnapshotResponse, Status>> + Send + 'static>,
>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        _: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        // The only alarm is NOSPACE, and it is the store's state rather than a latched flag:
        // every member holds the same store, so each member is listed while the store is over
        // its quota, and the alarm clears by itself once compaction or deletes bring it under
        // (etcd also wants an explicit DEACTIVATE; asking for it here changes nothing).
        let revision = self.app.state.read().kv.revision();
        let alarms = match self.app.over_quota() {
            None => Vec::new(),
            Some(_) => self
                .app
                .metrics()
                .membership_config
                .membership()
                .nodes()
                .map(|(id, _)| pb::AlarmMember {
                    member_id: *id,
                    alarm: pb::AlarmType::Nospace as i32,
                })
                .collect(),
        };
        Ok(Response::new(pb::AlarmResponse {
            header: Some(header(&self.app, revision)),
            alarms,
        }))
    }

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let m = self.app.metrics();
        let (revision, total, live) = {
            let s = self.app.state.read();
            (s.kv.revision(), s.kv.total_bytes(), s.kv.live_bytes())
        };
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        Ok(Response::new(pb::StatusResponse {
            header: Some(header(&self.app, revision)),
            version: ETCD_API_VERSION.into(),
            db_size: total as i64,
            leader: m.current_leader.unwrap_or(0),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.as_ref().map(|l| l.index).unwrap_or(0),
            errors: Vec::new(),
            db_size_in_use: live as i64,
            is_learner: !voters.contains(&self.app.id()),
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        _: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        // Nothing to defragment: the store is in memory and snapshots are rewritten whole.
        let revision = self.app.state.read().kv.revision();
        Ok(Response::new(pb::DefragmentResponse {
            header: Some(header(&self.app, revision)),
        }))
    }

    async fn hash(
        &self,
        _: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        Err(Status::unimplemented(
            "etcdserver: Hash is not served by ConcordKV",
        ))
    }

    async fn hash_kv(
        &self,
        _: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        Err(Status::unimplemented(
            "etcdserver: HashKV is not served by ConcordKV yet",
        ))
    }

    type SnapshotStream = SnapshotStream;

    /// A ConcordKV backup (see `backup`), in etcd's chunks: `etcdctl snapshot save` writes
    /// it to a file that `concordctl snapshot status|restore` reads (not etcdutl: the bytes
    /// are ConcordKV's format, not bbolt's).
    async fn snapshot(
        &self,
        _: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let backup = crate::backup::serve::start(&self.app)
            .await
            .map_err(|e| service_status(&e))?;
        let header = header(&self.app, backup.header.revision);
        let chunks = tokio_stream::wrappers::ReceiverStream::new(backup.chunks);
        // The size is known only at the end (one pass over the store); etcd's clients read
        // until the stream ends and do not use `remaining_bytes`.
        let stream = futures::StreamExt::map(chunks, move |chunk| {
            let blob = chunk.map_err(|e| Status::internal(format!("snapshot: {e}")))?;
            Ok(pb::SnapshotResponse {
                header: Some(header),
                remaining_bytes: 0,
                blob: blob.to_vec(),
                version: ETCD_API_VERSION.into(),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn move_leader(
        &self,
        req: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let to = req.into_inner().target_id;
        self.app
            .admin_transfer_leader(concord_proto::TransferLeaderRequest { to }, Hop::Client)
            .await
            .map_err(admin_status)?;
        let revision = self.app.state.read().kv.revision();
        Ok(Response::new(pb::MoveLeaderResponse {
            header: Some(header(&self.app, revision)),
        }))
    }

    async fn downgrade(
        &self,
        _: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(Status::unimplemented(
            "etcdserver: Downgrade does not apply to ConcordKV",
        ))
    }
}

/// Who sent a request to the etcd port (a `token` or `authorization` header, else the client
/// certificate's common name) and, with auth on, the refusal of a request that only root may
/// make from anyone else. Requests each handler checks itself (keys, sign-in, users and roles)
/// and those etcd answers without credentials pass; everything else needs root.
fn front_door(
    app: &App,
    req: &axum::extract::Request,
) -> (
    Result<crate::auth::Caller, crate::auth::Refusal>,
    Option<std::net::IpAddr>,
    Option<Status>,
) {
    let source = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let state = app.state.read();
    if !state.auth.enabled() {
        return (Ok(crate::auth::Caller::Anyone), source, None);
    }
    let cert = req.extensions().get::<crate::tls::ClientCert>();
    let caller = crate::auth::Caller::of_request(&state.auth, req.headers(), cert);
    let refusal = path_rule(req.uri().path())
        .refuses(&state.auth, &caller)
        .map(|r| auth::refused(&r));
    (caller, source, refusal)
}

/// What the etcd port asks of a request's caller while auth is on.
fn path_rule(path: &str) -> crate::auth::Gate {
    use crate::auth::Gate;
    const OPEN: &[&str] = &[
        "/etcdserverpb.Auth/Authenticate",
        "/etcdserverpb.Auth/AuthStatus",
        "/etcdserverpb.Maintenance/Status",
        "/etcdserverpb.Cluster/MemberList",
        "/v3/auth/authenticate",
        "/v3/auth/status",
        "/v3/maintenance/status",
        "/v3/cluster/member/list",
        "/version",
        "/health",
    ];
    if OPEN.contains(&path) || path.starts_with("/grpc.health.v1.Health/") {
        Gate::Open
    } else if matches!(
        path,
        "/etcdserverpb.Lease/LeaseRevoke" | "/v3/lease/revoke" | "/v3/kv/lease/revoke"
    ) {
        Gate::Handler
    } else if path.starts_with("/etcdserverpb.Lease/")
        || path.starts_with("/v3/lease/")
        || path.starts_with("/v3/kv/lease/")
    {
        Gate::SignedIn
    } else if path.starts_with("/etcdserverpb.KV/")
        || path.starts_with("/etcdserverpb.Auth/")
        || path.starts_with("/etcdserverpb.Watch/")
        || path.starts_with("/v3lockpb.Lock/")
        || path.starts_with("/v3electionpb.Election/")
        || path.starts_with("/v3/kv/")
        || path.starts_with("/v3/auth/")
        || path.starts_with("/v3/lock/")
        || path.starts_with("/v3/election/")
        || path == "/v3/watch"
    {
        Gate::Handler
    } else {
        Gate::Root
    }
}

/// Serves the etcd API on `listener` until `stop`: gRPC and the JSON gateway on one port, told
/// apart by content type, as etcd serves them; through the same accept loop as the HTTP API,
/// with its connection limits and timeouts.
pub async fn serve(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    use tower::ServiceExt;
    let limit = app.config.limits.max_request_bytes;
    let kv = Arc::new(kv::KvService { app: app.clone() });
    let cluster = Arc::new(ClusterService { app: app.clone() });
    let maintenance = Arc::new(MaintenanceService { app: app.clone() });
    let lease = Arc::new(lease::LeaseService { app: app.clone() });
    let lock = Arc::new(recipes::LockService { app: app.clone() });
    let election = Arc::new(recipes::ElectionService { app: app.clone() });
    let auth = Arc::new(auth::AuthService { app: app.clone() });
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<KvServer<kv::KvService>>()
        .await;
    let grpc = tonic::service::Routes::new(health)
        .add_service(
            KvServer::from_arc(kv.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            concord_proto::etcd::etcdserverpb::watch_server::WatchServer::new(
                watch::WatchService { app: app.clone() },
            )
            .max_decoding_message_size(limit)
            .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            concord_proto::etcd::etcdserverpb::lease_server::LeaseServer::from_arc(lease.clone())
                .max_decoding_message_size(limit),
        )
        .add_service(
            concord_proto::etcd::v3lockpb::lock_server::LockServer::from_arc(lock.clone())
                .max_decoding_message_size(limit),
        )
        .add_service(
            concord_proto::etcd::v3electionpb::election_server::ElectionServer::from_arc(
                election.clone(),
            )
            .max_decoding_message_size(limit),
        )
        .add_service(
            concord_proto::etcd::etcdserverpb::auth_server::AuthServer::from_arc(auth.clone())
                .max_decoding_message_size(limit),
        )
        .add_service(ClusterServer::from_arc(cluster.clone()))
        .add_service(MaintenanceServer::from_arc(maintenance.clone()))
        .into_axum_router();
    let gateway = gateway::router(gateway::Services {
        kv,
        cluster,
        maintenance,
        lease,
        lock,
        election,
        auth,
        app: app.clone(),
    });
    let door_app = app.clone();
    let both = axum::Router::new().fallback_service(tower::service_fn(
        move |req: axum::extract::Request| {
            let grpc_request = req
                .headers()
                .get(axum::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/grpc"));
            let target = if grpc_request {
                grpc.clone()
            } else {
                gateway.clone()
            };
            let (caller, source, refusal) = front_door(&door_app, &req);
            async move {
                if let Some(status) = refusal {
                    return Ok(if grpc_request {
                        status.into_http::<axum::body::Body>()
                    } else {
                        gateway::error(&status)
                    });
                }
                crate::auth::serving(caller, source, target.oneshot(req)).await
            }
        },
    ));
    let mut limits = crate::api::http::listener::ConnectionLimits::from_limits(&app.config.limits);
    limits.errors = crate::api::http::listener::ErrorShape::Gateway;
    let tls = (app.tls.clone(), crate::tls::ClientPort::Etcd);
    crate::api::http::listener::serve(listener, both, limits, tls, stop).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_members_client_url_is_its_peer_host_with_the_etcd_port() {
        assert_eq!(client_url("10.0.0.7:8080", 2379), "http://10.0.0.7:2379");
        assert_eq!(
            client_url("n1.peers.ns.svc:8080", 2379),
            "http://n1.peers.ns.svc:2379"
        );
    }

    #[test]
    fn peer_urls_give_host_and_port_or_a_reason() {
        assert_eq!(
            peer_url_addr("http://10.0.0.4:2380").as_deref(),
            Ok("10.0.0.4:2380")
        );
        assert_eq!(
            peer_url_addr("https://n4.peers:2380/").as_deref(),
            Ok("n4.peers:2380")
        );
        for bad in [
            "10.0.0.4:2380",
            "http://10.0.0.4",
            "http://:2380",
            "http://h:0",
            "http://h:2380/x",
        ] {
            let e = peer_url_addr(bad).expect_err(bad);
            assert!(e.contains(bad), "{e}");
        }
    }
}
