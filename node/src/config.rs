//! Node configuration: flags (including the Go seed's single-dash spellings), `CONCORD_*`
//! environment variables, a YAML file in the seed's format, and defaults — in that order of
//! precedence.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::raft::{node_id_for_name, Member, NodeId};
use crate::tls::{CertFiles, PeerTlsMode, TlsSettings};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid YAML for ConcordKV: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml_ng::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Command-line flags. Every flag also reads `CONCORD_<NAME>` from the environment.
#[derive(Debug, Default, Parser)]
#[command(name = "concord-node", version, about = "ConcordKV node")]
pub struct Flags {
    /// Node name (seed: -node). Default: node1.
    #[arg(long = "node-id", alias = "node", env = "CONCORD_NODE_ID")]
    pub node_id: Option<String>,
    /// Peer (gRPC) listen address (seed: -listen). Default: :8080.
    #[arg(long, env = "CONCORD_LISTEN")]
    pub listen: Option<String>,
    /// HTTP API listen address (seed: -api). Default: :8081.
    #[arg(long, env = "CONCORD_API")]
    pub api: Option<String>,
    /// etcd v3 API (gRPC) listen address. Default: :2379, as etcd's client port.
    #[arg(long = "etcd-listen", env = "CONCORD_ETCD_LISTEN")]
    pub etcd_listen: Option<String>,
    /// YAML config file (seed: -config).
    #[arg(long, env = "CONCORD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory. Default: ./data/<node id>.
    #[arg(long = "data-dir", env = "CONCORD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Static peers, comma separated `id:host:port` (as in the seed's YAML).
    #[arg(long, env = "CONCORD_PEERS", value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// Address peers use to reach this node, `host:port`. Default: from the peer list, or the
    /// listen address.
    #[arg(long = "advertise-addr", env = "CONCORD_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Log format: text or json.
    #[arg(long = "log-format", env = "CONCORD_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Bytes the store may hold (every version kept, history included) before writes that add
    /// data are refused with etcd's "database space exceeded" and a NOSPACE alarm; deletes and
    /// compaction still work. 0: no quota. Default 2 GiB, as etcd's.
    #[arg(long = "quota-backend-bytes", env = "CONCORD_QUOTA_BACKEND_BYTES")]
    pub quota_backend_bytes: Option<u64>,
    /// Take a snapshot every N applied entries.
    #[arg(long = "snapshot-threshold", env = "CONCORD_SNAPSHOT_THRESHOLD")]
    pub snapshot_threshold: Option<u64>,
    /// Heartbeat interval in milliseconds.
    #[arg(long = "heartbeat-ms", env = "CONCORD_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Start without bootstrapping and wait to be added through the admin API (operator mode).
    #[arg(long, env = "CONCORD_JOIN")]
    pub join: bool,
    /// With --join: the member id the cluster assigned this node (etcd's `MemberAdd`, as
    /// `etcdctl member add` prints it, in hex). A fresh data dir takes it; one that holds
    /// another id is refused.
    #[arg(long = "member-id", env = "CONCORD_MEMBER_ID")]
    pub member_id: Option<String>,
    /// Silence from the leader, in milliseconds, after which a follower starts an election (up to
    /// 1.6 times this, randomised). Default 1000, as etcd.
    #[arg(long = "election-timeout-ms", env = "CONCORD_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: Option<u64>,
    /// How history is compacted automatically, as etcd: `periodic` (keep what is newer than
    /// the retention) or `revision` (keep that many revisions). Default: periodic.
    #[arg(long = "auto-compaction-mode", env = "CONCORD_AUTO_COMPACTION_MODE")]
    pub auto_compaction_mode: Option<String>,
    /// For `periodic` a duration (`5m`, `1h`; a bare number is hours, as etcd), for `revision`
    /// a count; 0 turns it off (the history byte bound still applies). Default: 5m.
    #[arg(
        long = "auto-compaction-retention",
        env = "CONCORD_AUTO_COMPACTION_RETENTION"
    )]
    pub auto_compaction_retention: Option<String>,
    /// Certificate (PEM) the client ports (HTTP API and etcd API) serve TLS with, as etcd's.
    #[arg(long = "cert-file", env = "CONCORD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long = "key-file", env = "CONCORD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// CA bundle (PEM) client certificates must chain to.
    #[arg(long = "trusted-ca-file", env = "CONCORD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Client ports require a client certificate from the trusted CA.
    #[arg(long = "client-cert-auth", env = "CONCORD_CLIENT_CERT_AUTH")]
    pub client_cert_auth: bool,
    /// With --client-cert-auth, whether /livez, /readyz and /metrics on the HTTP API still
    /// answer clients without a certificate (kubelet, Prometheus). Default: true.
    #[arg(
        long = "probes-without-client-cert",
        env = "CONCORD_PROBES_WITHOUT_CLIENT_CERT",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub probes_without_client_cert: Option<bool>,
    /// Certificate (PEM) of the peer port (Raft and the admin API); members also present it
    /// when they dial each other.
    #[arg(long = "peer-cert-file", env = "CONCORD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long = "peer-key-file", env = "CONCORD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// CA bundle (PEM) peer certificates must chain to (required with peer TLS).
    #[arg(long = "peer-trusted-ca-file", env = "CONCORD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Accepted for etcd's command lines: with peer TLS, peers always authenticate each other.
    #[arg(long = "peer-client-cert-auth", env = "CONCORD_PEER_CLIENT_CERT_AUTH")]
    pub peer_client_cert_auth: bool,
    /// Peers' certificates must carry this common name (or the allowed hostname).
    #[arg(long = "peer-cert-allowed-cn", env = "CONCORD_PEER_CERT_ALLOWED_CN")]
    pub peer_cert_allowed_cn: Option<String>,
    /// Peers' certificates must carry this DNS name (or the allowed common name).
    #[arg(
        long = "peer-cert-allowed-hostname",
        env = "CONCORD_PEER_CERT_ALLOWED_HOSTNAME"
    )]
    pub peer_cert_allowed_hostname: Option<String>,
    /// How long a token from Authenticate is valid, in seconds (etcd's --auth-token-ttl).
    /// Default 300.
    #[arg(long = "auth-token-ttl", env = "CONCORD_AUTH_TOKEN_TTL")]
    pub auth_token_ttl: Option<u64>,
    /// Peer port TLS: off, accept (TLS and plaintext accepted, plaintext dialed), prefer (both
    /// accepted, TLS dialed), on (TLS only). Default: on with peer certificates, else off.
    #[arg(long = "peer-tls-mode", env = "CONCORD_PEER_TLS_MODE")]
    pub peer_tls_mode: Option<String>,
}

/// The YAML file. `server` is the seed's section; `raft` and `limits` are ours. Unknown keys are
/// refused by name: a misspelt setting silently ignored is a setting silently not applied.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub raft: RaftSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub compaction: CompactionSection,
    #[serde(default)]
    pub watch: WatchSection,
    #[serde(default)]
    pub tls: TlsSection,
    #[serde(default)]
    pub auth: AuthSection,
}

/// `auth:` in the YAML file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthSection {
    pub token_ttl_seconds: Option<u64>,
}

/// `tls:` in the YAML file: the flags' settings under etcd's names, in camelCase.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsSection {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: Option<bool>,
    pub probes_without_client_cert: Option<bool>,
    pub peer_cert_file: Option<PathBuf>,
    pub peer_key_file: Option<PathBuf>,
    pub peer_trusted_ca_file: Option<PathBuf>,
    pub peer_client_cert_auth: Option<bool>,
    pub peer_cert_allowed_cn: Option<String>,
    pub peer_cert_allowed_hostname: Option<String>,
    pub peer_tls_mode: Option<String>,
    pub reload_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WatchSection {
    pub stream_queue_bytes: Option<usize>,
    pub max_watchers: Option<usize>,
    pub progress_notify_interval_ms: Option<u64>,
    pub heartbeat_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompactionSection {
    pub mode: Option<String>,
    /// A duration string or a number (hours for periodic, a count for revision).
    pub retention: Option<serde_yaml_ng::Value>,
    pub max_history_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerSection {
    pub node_id: Option<String>,
    pub listen_addr: Option<String>,
    pub api_addr: Option<String>,
    pub etcd_addr: Option<String>,
    pub advertise_addr: Option<String>,
    pub peers: Option<Vec<String>>,
    pub data_dir: Option<PathBuf>,
    pub log_format: Option<String>,
    pub join: Option<bool>,
    pub member_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RaftSection {
    pub heartbeat_interval_ms: Option<u64>,
    pub election_timeout_min_ms: Option<u64>,
    pub election_timeout_max_ms: Option<u64>,
    pub snapshot_threshold: Option<u64>,
    pub snapshot_log_ratio: Option<f64>,
    pub logs_to_keep_after_snapshot: Option<u64>,
    pub segment_bytes: Option<u64>,
    pub max_promote_lag: Option<u64>,
    pub max_log_memory_bytes: Option<u64>,
    pub max_snapshot_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsSection {
    pub max_key_bytes: Option<usize>,
    pub max_value_bytes: Option<usize>,
    pub max_request_bytes: Option<usize>,
    pub request_timeout_ms: Option<u64>,
    pub max_list_limit: Option<usize>,
    pub max_connections: Option<usize>,
    pub header_read_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub max_concurrent_streams: Option<u32>,
    pub max_in_flight_bytes: Option<u64>,
    pub max_pending_proposals: Option<usize>,
    pub max_pending_proposal_bytes: Option<u64>,
    pub quota_backend_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    pub member: Member,
}

#[derive(Debug, Clone)]
pub struct RaftTuning {
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Snapshot after at least this many entries...
    pub snapshot_threshold: u64,
    /// ...and once the log since the last snapshot is this fraction of its size, so snapshot
    /// I/O stays proportional to writes however large the store (`raft::snapshot_policy`).
    pub snapshot_log_ratio: f64,
    pub logs_to_keep_after_snapshot: u64,
    pub segment_bytes: u64,
    /// A learner more than this many entries behind the leader is not promoted.
    pub max_promote_lag: u64,
    /// Bytes of log entries kept in memory for replication and apply; older applied ones are
    /// read back from disk when needed, so the log's length costs disk, not memory.
    pub max_log_memory_bytes: u64,
    /// Largest snapshot accepted from a leader. It is written to disk as it arrives, so this
    /// bounds disk, not memory.
    pub max_snapshot_bytes: u64,
}

/// Limits on client requests. Defaults are documented in docs/api.md (Limits).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_request_bytes: usize,
    pub request_timeout: Duration,
    pub max_list_limit: usize,
    /// Open client connections; beyond it new ones are answered 503 and closed.
    pub max_connections: usize,
    /// Time a client has to send a request's head (from connect, or from its first byte).
    pub header_read_timeout: Duration,
    /// Time a connection may sit with no request before it is closed.
    pub idle_timeout: Duration,
    /// HTTP/2 streams one connection may have open.
    pub max_concurrent_streams: u32,
    /// Bytes of client requests being served at once (by declared length); past it, 503.
    pub max_in_flight_bytes: u64,
    /// Writes proposed to Raft and not yet committed, on the leader; past it, 503.
    pub max_pending_proposals: usize,
    /// Bytes of keys and values in those writes; past it, 503. Bounds the leader's memory
    /// whatever arrives by forwarding from followers.
    pub max_pending_proposal_bytes: u64,
    /// Store bytes past which writes that add data are refused (0: none).
    pub quota_backend_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 4096,
            max_value_bytes: 1024 * 1024,
            max_request_bytes: 2 * 1024 * 1024,
            request_timeout: Duration::from_secs(5),
            max_list_limit: 10_000,
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_concurrent_streams: 256,
            max_in_flight_bytes: 256 * 1024 * 1024,
            max_pending_proposals: 8192,
            max_pending_proposal_bytes: 128 * 1024 * 1024,
            quota_backend_bytes: 2 * 1024 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The resolved configuration a node runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    /// Where the peer gRPC server binds.
    pub listen_addr: String,
    /// Where the HTTP API binds.
    pub api_addr: String,
    /// Where etcd's v3 API (gRPC) binds.
    pub etcd_addr: String,
    /// How peers reach this node.
    pub advertise_addr: String,
    /// The static cluster; empty means "single node".
    pub peers: Vec<Peer>,
    pub data_dir: PathBuf,
    pub raft: RaftTuning,
    pub limits: Limits,
    pub log_format: LogFormat,
    /// Wait to be added by the admin API instead of bootstrapping.
    pub join: bool,
    /// In join mode, the id the cluster assigned this member (etcd's MemberAdd).
    pub member_id: Option<NodeId>,
    pub compaction: Compaction,
    pub watch: WatchSettings,
    pub tls: TlsSettings,
    /// How long a token from Authenticate is valid.
    pub auth_token_ttl: Duration,
}

/// Watch limits (docs/configuration.md, Watch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSettings {
    /// Bytes of changes queued for one watch stream before its watches lag and catch up
    /// from history.
    pub stream_queue_bytes: usize,
    /// Watches this member serves at most.
    pub max_watchers: usize,
    /// How often a watch that asked for progress notifications gets one (etcd: 10 minutes).
    pub progress_notify_interval: Duration,
    /// How often a quiet Server-Sent Events watch gets a progress event, so proxies keep it.
    pub heartbeat_interval: Duration,
}

impl Default for WatchSettings {
    fn default() -> Self {
        WatchSettings {
            stream_queue_bytes: 1024 * 1024,
            max_watchers: 100_000,
            progress_notify_interval: Duration::from_secs(600),
            heartbeat_interval: Duration::from_secs(15),
        }
    }
}

/// Automatic compaction of the store's history (docs/configuration.md, Compaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compaction {
    pub retention: Retention,
    /// History (versions older than the current ones) kept in memory at most; past it the
    /// leader compacts to the current revision whatever the retention.
    pub max_history_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Keep the history of this long.
    Periodic(Duration),
    /// Keep this many revisions (Raft indexes) of history.
    Revisions(u64),
    /// Only the byte bound compacts.
    Off,
}

impl Default for Compaction {
    fn default() -> Self {
        Compaction {
            retention: Retention::Periodic(Duration::from_secs(300)),
            max_history_bytes: 256 * 1024 * 1024,
        }
    }
}

fn resolve_compaction(
    mode: Option<String>,
    retention: Option<String>,
    section: CompactionSection,
) -> Result<Compaction, ConfigError> {
    let d = Compaction::default();
    let mode = mode.or(section.mode);
    let retention = retention.or(match section.retention {
        None => None,
        Some(serde_yaml_ng::Value::String(s)) => Some(s),
        Some(serde_yaml_ng::Value::Number(n)) => Some(n.to_string()),
        Some(other) => {
            return Err(ConfigError::Invalid(format!(
                "compaction.retention {other:?} must be a duration (\"5m\") or a number"
            )))
        }
    });
    let bad = |what: &str, v: &str| {
        ConfigError::Invalid(format!("auto-compaction retention {v:?}: {what}"))
    };
    let retention = match (mode.as_deref(), retention.as_deref()) {
        (None | Some("periodic"), None) => d.retention,
        (None | Some("periodic"), Some(v)) => {
            let v = v.trim();
            let duration = match v.parse::<f64>() {
                // etcd reads a bare number as hours.
                Ok(hours) if hours >= 0.0 && hours.is_finite() => {
                    Duration::from_secs_f64(hours * 3600.0)
                }
                Ok(_) => return Err(bad("must not be negative", v)),
                Err(_) => humantime::parse_duration(v)
                    .map_err(|e| bad(&format!("not a duration ({e})"), v))?,
            };
            if duration.is_zero() {
                Retention::Off
            } else {
                Retention::Periodic(duration)
            }
        }
        (Some("revision"), v) => match v.unwrap_or("1000").trim().parse::<u64>() {
            Ok(0) => Retention::Off,
            Ok(n) => Retention::Revisions(n),
            Err(_) => return Err(bad("must be a count of revisions", v.unwrap_or_default())),
        },
        (Some(other), _) => {
            return Err(ConfigError::Invalid(format!(
                "auto-compaction mode {other:?} must be periodic or revision"
            )))
        }
    };
    Ok(Compaction {
        retention,
        max_history_bytes: section
            .max_history_bytes
            .unwrap_or(d.max_history_bytes)
            .max(1024 * 1024),
    })
}

/// Rewrites the seed's single-dash long flags (`-node x`, `-config=f`) to clap's `--` form.
pub fn normalize_args<I: IntoIterator<Item = String>>(args: I) -> Vec<String> {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            let long_single_dash = i > 0
                && a.starts_with('-')
                && !a.starts_with("--")
                && a.len() > 2
                && a.as_bytes()[1].is_ascii_alphabetic();
            if long_single_dash {
                format!("-{a}")
            } else {
                a
            }
        })
        .collect()
}

/// Turns `:8080` into a bindable `0.0.0.0:8080`.
pub fn bind_addr(addr: &str) -> String {
    if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_string()
    }
}

/// Parses `id:host:port`.
pub fn parse_peer(spec: &str) -> Result<Peer, ConfigError> {
    let (name, addr) = spec.split_once(':').ok_or_else(|| {
        ConfigError::Invalid(format!("peer {spec:?} is not of the form id:host:port"))
    })?;
    let port_ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if name.is_empty() || !port_ok {
        return Err(ConfigError::Invalid(format!(
            "peer {spec:?} is not of the form id:host:port"
        )));
    }
    Ok(Peer {
        id: node_id_for_name(name),
        member: Member {
            name: name.to_string(),
            addr: addr.to_string(),
        },
    })
}

impl Config {
    /// Resolves flags, environment, file and defaults.
    pub fn resolve(flags: Flags) -> Result<Config, ConfigError> {
        let flags_tls = TlsFlags::from(&flags);
        let auth_token_ttl = flags.auth_token_ttl;
        let file = match &flags.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let s = file.server;
        let name = flags
            .node_id
            .or(s.node_id)
            .unwrap_or_else(|| "node1".to_string());
        if name.is_empty() || name.contains(':') || name.contains(',') {
            return Err(ConfigError::Invalid(format!(
                "node id {name:?} must be non-empty and contain no ':' or ','"
            )));
        }
        let listen_addr = flags
            .listen
            .or(s.listen_addr)
            .unwrap_or_else(|| ":8080".into());
        let api_addr = flags.api.or(s.api_addr).unwrap_or_else(|| ":8081".into());
        let etcd_addr = flags
            .etcd_listen
            .or(s.etcd_addr)
            .unwrap_or_else(|| ":2379".into());
        let peer_specs = flags.peers.or(s.peers).unwrap_or_default();
        let mut peers = Vec::new();
        let mut ids = HashSet::new();
        for spec in peer_specs.iter().filter(|p| !p.trim().is_empty()) {
            let peer = parse_peer(spec.trim())?;
            if !ids.insert(peer.id) {
                return Err(ConfigError::Invalid(format!(
                    "peer list names {:?} twice (or two names hash to one id)",
                    peer.member.name
                )));
            }
            peers.push(peer);
        }
        let own = peers.iter().find(|p| p.member.name == name);
        if !peers.is_empty() && own.is_none() {
            return Err(ConfigError::Invalid(format!(
                "the peer list does not contain this node ({name}); add \"{name}:host:port\""
            )));
        }
        let advertise_addr = flags
            .advertise_addr
            .or(s.advertise_addr)
            .or_else(|| own.map(|p| p.member.addr.clone()))
            .unwrap_or_else(|| {
                if listen_addr.starts_with(':') {
                    format!("127.0.0.1{listen_addr}")
                } else {
                    listen_addr.clone()
                }
            });
        let data_dir = flags
            .data_dir
            .or(s.data_dir)
            .unwrap_or_else(|| Path::new("data").join(&name));
        let log_format = match flags.log_format.or(s.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "log format {other:?} must be text or json"
                )))
            }
        };

        let r = file.raft;
        let heartbeat_ms = flags
            .heartbeat_ms
            .or(r.heartbeat_interval_ms)
            .unwrap_or(100);
        // openraft starts an election after `max + random[min, max)` of silence from the leader
        // (`max` is also its leader lease, during which followers refuse to vote). The flag is
        // etcd's notion, the silence before an election: E gives min = E/5, max = 4E/5, so
        // elections start between E and 1.6 E. The YAML keys set openraft's values directly.
        let (el_min, el_max) = match (
            flags.election_timeout_ms,
            r.election_timeout_min_ms,
            r.election_timeout_max_ms,
        ) {
            (Some(e), _, _) => (e / 5, e * 4 / 5),
            (None, Some(min), max) => (min, max.unwrap_or(min * 4)),
            (None, None, Some(max)) => (max / 4, max),
            (None, None, None) => (200, 800),
        };
        if heartbeat_ms == 0 || el_min < heartbeat_ms * 2 || el_max <= el_min {
            return Err(ConfigError::Invalid(format!(
                "raft timing: need 0 < heartbeat ({heartbeat_ms}ms), heartbeat*2 <= election \
                 timeout min ({el_min}ms) < max ({el_max}ms); --election-timeout-ms E sets \
                 min = E/5 and max = 4E/5"
            )));
        }
        let raft = RaftTuning {
            heartbeat: Duration::from_millis(heartbeat_ms),
            election_timeout_min: Duration::from_millis(el_min),
            election_timeout_max: Duration::from_millis(el_max),
            snapshot_threshold: flags
                .snapshot_threshold
                .or(r.snapshot_threshold)
                .unwrap_or(10_000)
                .max(1),
            snapshot_log_ratio: match r.snapshot_log_ratio {
                None => 1.0,
                Some(x) if x.is_finite() && (0.0..=100.0).contains(&x) => x,
                Some(x) => {
                    return Err(ConfigError::Invalid(format!(
                        "raft.snapshotLogRatio {x}: must be between 0 (snapshot every \
                         snapshotThreshold entries) and 100"
                    )))
                }
            },
            logs_to_keep_after_snapshot: r.logs_to_keep_after_snapshot.unwrap_or(1000),
            segment_bytes: r.segment_bytes.unwrap_or(64 * 1024 * 1024).max(4096),
            max_promote_lag: r.max_promote_lag.unwrap_or(1000),
            max_log_memory_bytes: r
                .max_log_memory_bytes
                .unwrap_or(32 * 1024 * 1024)
                .max(1024 * 1024),
            max_snapshot_bytes: r.max_snapshot_bytes.unwrap_or(8 * 1024 * 1024 * 1024),
        };
        let join = flags.join || s.join.unwrap_or(false);
        if join && !peers.is_empty() {
            return Err(ConfigError::Invalid(
                "join mode and a static peer list exclude each other: a joining node is added through the admin API".into(),
            ));
        }
        let member_id = match flags.member_id.or(s.member_id) {
            None => None,
            Some(_) if !join => {
                return Err(ConfigError::Invalid(
                    "--member-id (server.memberId) is for a node joining with --join".into(),
                ))
            }
            Some(text) => Some(parse_member_id(&text)?),
        };
        let d = Limits::default();
        let l = file.limits;
        let limits = Limits {
            max_key_bytes: l.max_key_bytes.unwrap_or(d.max_key_bytes),
            max_value_bytes: l.max_value_bytes.unwrap_or(d.max_value_bytes),
            max_request_bytes: l.max_request_bytes.unwrap_or(d.max_request_bytes),
            request_timeout: l
                .request_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(d.request_timeout),
            max_list_limit: l.max_list_limit.unwrap_or(d.max_list_limit).max(1),
            max_connections: l.max_connections.unwrap_or(d.max_connections).max(1),
            header_read_timeout: l
                .header_read_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(d.header_read_timeout)
                .max(Duration::from_millis(100)),
            idle_timeout: l
                .idle_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(d.idle_timeout)
                .max(Duration::from_millis(100)),
            max_concurrent_streams: l
                .max_concurrent_streams
                .unwrap_or(d.max_concurrent_streams)
                .max(1),
            // At least one largest request must fit, or it could never be admitted.
            max_in_flight_bytes: l
                .max_in_flight_bytes
                .unwrap_or(d.max_in_flight_bytes)
                .max(l.max_request_bytes.unwrap_or(d.max_request_bytes) as u64),
            max_pending_proposals: l
                .max_pending_proposals
                .unwrap_or(d.max_pending_proposals)
                .max(1),
            // At least one largest value must fit, or it could never be proposed.
            max_pending_proposal_bytes: l
                .max_pending_proposal_bytes
                .unwrap_or(d.max_pending_proposal_bytes)
                .max(l.max_request_bytes.unwrap_or(d.max_request_bytes) as u64),
            quota_backend_bytes: flags
                .quota_backend_bytes
                .or(l.quota_backend_bytes)
                .unwrap_or(d.quota_backend_bytes),
        };
        let compaction = resolve_compaction(
            flags.auto_compaction_mode,
            flags.auto_compaction_retention,
            file.compaction,
        )?;
        let tls = resolve_tls(&flags_tls, file.tls)?;
        let dw = WatchSettings::default();
        let watch = WatchSettings {
            stream_queue_bytes: file
                .watch
                .stream_queue_bytes
                .unwrap_or(dw.stream_queue_bytes)
                .max(4096),
            max_watchers: file.watch.max_watchers.unwrap_or(dw.max_watchers),
            progress_notify_interval: file
                .watch
                .progress_notify_interval_ms
                .map(Duration::from_millis)
                .unwrap_or(dw.progress_notify_interval)
                .max(Duration::from_millis(100)),
            heartbeat_interval: file
                .watch
                .heartbeat_interval_ms
                .map(Duration::from_millis)
                .unwrap_or(dw.heartbeat_interval)
                .max(Duration::from_millis(100)),
        };
        Ok(Config {
            name,
            listen_addr,
            api_addr,
            etcd_addr,
            advertise_addr,
            peers,
            data_dir,
            raft,
            limits,
            log_format,
            join,
            member_id,
            compaction,
            watch,
            tls,
            auth_token_ttl: Duration::from_secs(
                auth_token_ttl
                    .or(file.auth.token_ttl_seconds)
                    .unwrap_or(300)
                    .max(1),
            ),
        })
    }

    pub fn own_member(&self) -> Member {
        Member {
            name: self.name.clone(),
            addr: self.advertise_addr.clone(),
        }
    }
}

/// The TLS flags, taken out before the rest of the flags are consumed.
struct TlsFlags {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    client_cert_auth: bool,
    probes_without_client_cert: Option<bool>,
    peer_cert: Option<PathBuf>,
    peer_key: Option<PathBuf>,
    peer_ca: Option<PathBuf>,
    peer_allowed_cn: Option<String>,
    peer_allowed_hostname: Option<String>,
    peer_mode: Option<String>,
}

impl From<&Flags> for TlsFlags {
    fn from(f: &Flags) -> TlsFlags {
        TlsFlags {
            cert: f.cert_file.clone(),
            key: f.key_file.clone(),
            ca: f.trusted_ca_file.clone(),
            client_cert_auth: f.client_cert_auth,
            probes_without_client_cert: f.probes_without_client_cert,
            peer_cert: f.peer_cert_file.clone(),
            peer_key: f.peer_key_file.clone(),
            peer_ca: f.peer_trusted_ca_file.clone(),
            peer_allowed_cn: f.peer_cert_allowed_cn.clone(),
            peer_allowed_hostname: f.peer_cert_allowed_hostname.clone(),
            peer_mode: f.peer_tls_mode.clone(),
        }
    }
}

/// TLS from flags over the file's `tls:` section, refusing combinations that cannot work.
fn resolve_tls(f: &TlsFlags, t: TlsSection) -> Result<TlsSettings, ConfigError> {
    let d = TlsSettings::default();
    let invalid = |m: &str| Err(ConfigError::Invalid(m.to_string()));
    let cert = f.cert.clone().or(t.cert_file);
    let key = f.key.clone().or(t.key_file);
    let ca = f.ca.clone().or(t.trusted_ca_file);
    let client_cert_auth = f.client_cert_auth || t.client_cert_auth.unwrap_or(false);
    let client = match (cert, key) {
        (Some(cert), Some(key)) => Some(CertFiles {
            cert,
            key,
            trusted_ca: ca,
        }),
        (None, None) => None,
        _ => return invalid("--cert-file and --key-file (tls.certFile, tls.keyFile) go together"),
    };
    if client_cert_auth && client.as_ref().is_none_or(|c| c.trusted_ca.is_none()) {
        return invalid(
            "--client-cert-auth needs TLS on the client ports and a CA to check certificates against: --cert-file, --key-file and --trusted-ca-file",
        );
    }
    let peer_cert = f.peer_cert.clone().or(t.peer_cert_file);
    let peer_key = f.peer_key.clone().or(t.peer_key_file);
    let peer_ca = f.peer_ca.clone().or(t.peer_trusted_ca_file);
    let peer = match (peer_cert, peer_key, peer_ca) {
        (Some(cert), Some(key), Some(ca)) => Some(CertFiles {
            cert,
            key,
            trusted_ca: Some(ca),
        }),
        (None, None, None) => None,
        _ => return invalid(
            "peer TLS needs --peer-cert-file, --peer-key-file and --peer-trusted-ca-file together (peers always authenticate each other)",
        ),
    };
    let peer_mode = match f.peer_mode.clone().or(t.peer_tls_mode).as_deref() {
        None if peer.is_some() => PeerTlsMode::On,
        None => PeerTlsMode::Off,
        Some(m) => PeerTlsMode::parse(m).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "--peer-tls-mode {m:?} must be off, accept, prefer or on"
            ))
        })?,
    };
    if peer_mode != PeerTlsMode::Off && peer.is_none() {
        return invalid("--peer-tls-mode other than off needs the peer certificate files");
    }
    Ok(TlsSettings {
        client,
        client_cert_auth,
        probes_without_client_cert: f
            .probes_without_client_cert
            .or(t.probes_without_client_cert)
            .unwrap_or(d.probes_without_client_cert),
        peer,
        peer_mode,
        peer_allowed_cn: f.peer_allowed_cn.clone().or(t.peer_cert_allowed_cn),
        peer_allowed_hostname: f
            .peer_allowed_hostname
            .clone()
            .or(t.peer_cert_allowed_hostname),
        reload_interval: t
            .reload_interval_ms
            .map(Duration::from_millis)
            .unwrap_or(d.reload_interval)
            .max(Duration::from_millis(100)),
    })
}

/// A member id as etcd prints it: hex, at most 16 digits (an optional `0x`), not zero. Ours
/// stay below 2^53 so JSON clients read them exactly.
fn parse_member_id(text: &str) -> Result<NodeId, ConfigError> {
    let digits = text.trim().trim_start_matches("0x");
    let bad = |why: &str| {
        ConfigError::Invalid(format!(
            "--member-id {text:?}: {why} (the hex id `etcdctl member add` prints)"
        ))
    };
    let id = u64::from_str_radix(digits, 16).map_err(|_| bad("not a hex number"))?;
    if id == 0 || id >= 1 << 53 {
        return Err(bad("must be between 1 and 2^53 - 1"));
    }
    Ok(id)
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_yaml_ng::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        let argv = normalize_args(
            std::iter::once("concord-node")
                .chain(args.iter().copied())
                .map(String::from),
        );
        Flags::try_parse_from(argv).unwrap()
    }

    #[test]
    fn auto_compaction_reads_etcds_spellings_and_is_on_by_default() {
        let c = |args: &[&str]| Config::resolve(flags(args)).map(|c| c.compaction.retention);
        assert_eq!(
            c(&[]).unwrap(),
            Retention::Periodic(Duration::from_secs(300))
        );
        assert_eq!(
            c(&["--auto-compaction-retention", "1h30m"]).unwrap(),
            Retention::Periodic(Duration::from_secs(5400))
        );
        assert_eq!(
            c(&["--auto-compaction-retention", "2"]).unwrap(),
            Retention::Periodic(Duration::from_secs(7200)),
            "a bare number is hours"
        );
        assert_eq!(
            c(&[
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "500"
            ])
            .unwrap(),
            Retention::Revisions(500)
        );
        assert_eq!(
            c(&["--auto-compaction-retention", "0"]).unwrap(),
            Retention::Off
        );
        for bad in [
            vec!["--auto-compaction-mode", "sometimes"],
            vec!["--auto-compaction-retention", "soon"],
            vec![
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "1h",
            ],
        ] {
            let e = c(&bad).unwrap_err().to_string();
            assert!(e.contains("auto-compaction"), "{e}");
        }
    }

    #[test]
    fn a_member_id_is_etcds_hex_and_only_for_a_joining_node() {
        let c = |args: &[&str]| Config::resolve(flags(args)).map(|c| c.member_id);
        assert_eq!(c(&["--join"]).unwrap(), None);
        assert_eq!(
            c(&["--join", "--member-id", "170a8e0c5e4b1"]).unwrap(),
            Some(0x170a8e0c5e4b1)
        );
        assert_eq!(c(&["--join", "--member-id", "0xff"]).unwrap(), Some(255));
        let e = c(&["--member-id", "ff"]).unwrap_err().to_string();
        assert!(e.contains("--join"), "{e}");
        for bad in ["", "0", "zz", "ffffffffffffffff"] {
            let e = c(&["--join", "--member-id", bad]).unwrap_err().to_string();
            assert!(e.contains("etcdctl member add"), "{bad}: {e}");
        }
    }

    #[test]
    fn seed_single_dash_flags_parse() {
        let cfg =
            Config::resolve(flags(&["-node", "n2", "-listen", ":9000", "-api=:9001"])).unwrap();
        assert_eq!(cfg.name, "n2");
        assert_eq!(cfg.listen_addr, ":9000");
        assert_eq!(cfg.api_addr, ":9001");
        assert_eq!(cfg.data_dir, PathBuf::from("data/n2"));
        assert_eq!(cfg.advertise_addr, "127.0.0.1:9000");
    }

    #[test]
    fn election_timing_starts_where_etcds_does() {
        let ms = |c: &Config| {
            (
                c.raft.election_timeout_min.as_millis() as u64,
                c.raft.election_timeout_max.as_millis() as u64,
            )
        };
        // openraft elects after max + [min, max): 1000..1600 ms by default, as etcd's 1000 ms.
        let cfg = Config::resolve(Flags::default()).unwrap();
        assert_eq!(ms(&cfg), (200, 800));
        assert_eq!(cfg.raft.heartbeat.as_millis(), 100);
        let cfg = Config::resolve(flags(&["--election-timeout-ms", "2000"])).unwrap();
        assert_eq!(ms(&cfg), (400, 1600));
        // Too close to the heartbeat: refused with the rule in the message.
        let e = Config::resolve(flags(&[
            "--election-timeout-ms",
            "500",
            "--heartbeat-ms",
            "100",
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("heartbeat*2"), "{e}");
    }

    #[test]
    fn defaults_match_the_seed() {
        let cfg = Config::resolve(Flags::default()).unwrap();
        assert_eq!(cfg.name, "node1");
        assert_eq!(cfg.listen_addr, ":8080");
        assert_eq!(cfg.api_addr, ":8081");
        assert!(cfg.peers.is_empty());
    }

    #[test]
    fn seed_yaml_loads_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node2.yaml");
        std::fs::write(
            &path,
            r#"
server:
  nodeId: "node2"
  listenAddr: ":8082"
  apiAddr: ":8083"
  peers:
    - "node1:localhost:8080"
    - "node2:localhost:8082"
    - "node3:localhost:8084"
raft:
  snapshotThreshold: 50
"#,
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let cfg = Config::resolve(flags(&["-config", p])).unwrap();
        assert_eq!(cfg.name, "node2");
        assert_eq!(cfg.peers.len(), 3);
        assert_eq!(cfg.advertise_addr, "localhost:8082");
        assert_eq!(cfg.raft.snapshot_threshold, 50);
        let cfg = Config::resolve(flags(&["-config", p, "--api", ":9999"])).unwrap();
        assert_eq!(cfg.api_addr, ":9999");
    }

    #[test]
    fn bad_peer_lists_are_rejected() {
        assert!(parse_peer("node1").is_err());
        assert!(parse_peer("node1:host").is_err());
        assert!(parse_peer("node1:host:notaport").is_err());
        let err = Config::resolve(flags(&["-node", "x", "--peers", "a:h:1,b:h:2"])).unwrap_err();
        assert!(err.to_string().contains("does not contain this node"));
    }

    #[test]
    fn a_misspelt_key_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for (yaml, key) in [
            ("server:\n  nodeId: n1\n  dataDri: /x\n", "dataDri"),
            ("raft:\n  snapshotTreshold: 5\n", "snapshotTreshold"),
            ("limits:\n  maxKeyByte: 5\n", "maxKeyByte"),
            ("sever:\n  nodeId: n1\n", "sever"),
        ] {
            let path = dir.path().join("c.yaml");
            std::fs::write(&path, yaml).unwrap();
            let err = Config::resolve(flags(&["-config", path.to_str().unwrap()]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains("unknown field"), "{err}");
        }
    }
}
