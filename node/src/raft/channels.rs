//! One long-lived gRPC channel per peer address. tonic channels reconnect by themselves, so a
//! peer that restarts is picked up again without rebuilding anything.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use concord_proto::raft_peer_client::RaftPeerClient;
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

use crate::tls::{DialConfig, Tls, TlsConnector};

/// Messages up to this size cross the peer transport (snapshots are chunked below it).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Clone, Default)]
pub struct Channels {
    by_addr: Arc<Mutex<HashMap<String, Channel>>>,
    /// How peers are dialed when peer TLS is on (`None`: plaintext).
    tls: Option<Arc<Tls>>,
}

impl Channels {
    /// Channels that dial with TLS when `tls` says this member does.
    pub fn with_tls(tls: Arc<Tls>) -> Channels {
        Channels {
            by_addr: Arc::default(),
            tls: Some(tls),
        }
    }

    /// A client for the peer at `addr` (`host:port`), sharing the peer's channel.
    pub fn client(&self, addr: &str) -> Result<RaftPeerClient<Channel>, tonic::Status> {
        Ok(RaftPeerClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// The long-lived channel to `addr`.
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::Status> {
        let mut map = self.by_addr.lock();
        let channel = match map.get(addr) {
            Some(c) => c.clone(),
            None => {
                let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| {
                        tonic::Status::invalid_argument(format!("peer address {addr:?}: {e}"))
                    })?
                    .connect_timeout(Duration::from_secs(1))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .keep_alive_while_idle(true);
                let c = match &self.tls {
                    Some(tls) if tls.peer_mode().dials_tls() => endpoint
                        .connect_with_connector_lazy(TlsConnector {
                            config: DialConfig::Peer(tls.clone()),
                            connect_timeout: Duration::from_secs(1),
                        }),
                    _ => endpoint.connect_lazy(),
                };
                map.insert(addr.to_string(), c.clone());
                c
            }
        };
        Ok(channel)
    }
}
