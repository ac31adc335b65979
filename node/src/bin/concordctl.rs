//! `concordctl`: command-line client for ConcordKV's HTTP API.

use std::process::ExitCode;

// Allocation-heavy paths (request parsing, log entries, gRPC frames) run measurably faster on
// mimalloc than on glibc malloc (see docs/testing.md, Benchmark).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use concord_node::client::{Client, ClientError};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(name = "concordctl", version, about = "ConcordKV command-line client")]
struct Cli {
    /// Comma-separated API endpoints; any node will do (followers forward to the leader).
    #[arg(
        long,
        global = true,
        env = "CONCORD_ENDPOINTS",
        default_value = "http://localhost:8081",
        value_delimiter = ','
    )]
    endpoints: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "text")]
    output: Output,
    /// Per-request timeout in seconds.
    #[arg(long, global = true, default_value = "10")]
    timeout: u64,
    /// CA bundle (PEM) that signed the servers' certificates, for https:// endpoints.
    #[arg(long, global = true, env = "CONCORD_CACERT")]
    cacert: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for servers that require one (--client-cert-auth).
    #[arg(long, global = true, env = "CONCORD_CERT")]
    cert: Option<std::path::PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long = "key", global = true, env = "CONCORD_KEY")]
    client_key: Option<std::path::PathBuf>,
    /// Sign in as this user (`NAME` or `NAME:PASSWORD`, as etcdctl takes it); every request
    /// then carries the token.
    #[arg(long, global = true, env = "CONCORD_USER")]
    user: Option<String>,
    /// The user's password (or put it after a colon in --user).
    #[arg(long, global = true, env = "CONCORD_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// etcd API endpoints for `user`, `role` and `auth` (default: the --endpoints hosts on
    /// port 2379).
    #[arg(
        long,
        global = true,
        env = "CONCORD_ETCD_ENDPOINTS",
        value_delimiter = ','
    )]
    etcd_endpoints: Vec<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Set a key.
    Set { key: String, value: String },
    /// Get a key.
    Get {
        key: String,
        /// Serve from the contacted node's local state (may be stale).
        #[arg(long)]
        stale: bool,
    },
    /// Delete a key.
    Delete { key: String },
    /// List keys.
    Keys {
        #[arg(long, default_value = "")]
        prefix: String,
        /// Page size.
        #[arg(long, default_value = "1000")]
        limit: usize,
        /// Fetch every page.
        #[arg(long)]
        all: bool,
    },
    /// Compare-and-set: swap in VALUE only if the key holds EXPECTED (`--absent`: must not exist).
    Cas {
        key: String,
        value: String,
        #[arg(long, conflicts_with = "absent")]
        expected: Option<String>,
        #[arg(long)]
        absent: bool,
    },
    /// Show the contacted node's status (`--all`: every member, as the leader sees them).
    Status {
        #[arg(long)]
        all: bool,
    },
    /// Membership: list, add (as learner), promote, remove.
    #[command(subcommand)]
    Member(MemberCmd),
    /// Leadership.
    #[command(subcommand)]
    Leader(LeaderCmd),
    /// Form a new cluster from an uninitialized (join-mode) node.
    Init {
        /// Initial voters as id:name:host:port; default: the contacted node alone.
        #[arg(long = "member")]
        members: Vec<String>,
    },
    /// Print every change to a key (or, with --prefix, a prefix) as it happens; resumes across
    /// reconnects with nothing missed or repeated.
    Watch {
        key: String,
        #[arg(long)]
        prefix: bool,
        /// Start from this revision (history first); default: changes from now on.
        #[arg(long)]
        from_revision: Option<u64>,
        /// Also show each change's previous value (with -o json).
        #[arg(long)]
        prev_value: bool,
    },
    /// Leases: keys that are deleted when their owner stops renewing.
    #[command(subcommand)]
    Lease(LeaseCmd),
    /// Hold the lock NAME (etcd's recipe: the lowest revision under NAME/ holds it): prints the
    /// lock key once held; runs COMMAND and releases, or holds until interrupted.
    Lock {
        name: String,
        /// The session lease's TTL: a holder that dies loses the lock after this long.
        #[arg(long, default_value = "60")]
        ttl: u64,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Campaign to lead NAME with PROPOSAL (prints the key and proposal once leading, holds
    /// until interrupted); with --listen, print who leads.
    Elect {
        name: String,
        proposal: Option<String>,
        #[arg(long, default_value = "60")]
        ttl: u64,
        #[arg(short, long)]
        listen: bool,
    },
    /// Users (etcd's model): add, get, list, delete, passwd, grant-role, revoke-role.
    #[command(subcommand)]
    User(concord_node::cli::auth::UserCmd),
    /// Roles and their key permissions.
    #[command(subcommand)]
    Role(concord_node::cli::auth::RoleCmd),
    /// Turn authentication on or off, or show whether it is on.
    #[command(subcommand)]
    Auth(concord_node::cli::auth::AuthCmd),
    /// Backups: save one from a member, check one, restore one into a new cluster's data dir.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Round-trip every endpoint against a running cluster (the seed's test client).
    Check,
    /// Drive a concurrent load and print throughput and latency percentiles.
    Bench(concord_node::cli::bench::BenchArgs),
    /// Watch and lease load through etcd's gRPC API (ConcordKV's etcd port, or etcd).
    BenchWatch(concord_node::cli::bench_watch::BenchWatchArgs),
}

#[derive(Subcommand)]
enum MemberCmd {
    /// Every member with role, replication progress and reachability.
    List,
    /// Add a learner (it starts receiving the log; promote it once caught up).
    Add {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        name: String,
        /// Peer address, host:port.
        #[arg(long)]
        address: String,
    },
    /// Promote a caught-up learner to voter.
    Promote { id: u64 },
    /// Remove a member (refused if the remaining healthy voters could not form a quorum).
    Remove {
        id: u64,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum LeaseCmd {
    /// Grant a lease of TTL seconds.
    Grant { ttl: u64 },
    /// Renew a lease every third of its TTL until interrupted (--once: renew once).
    Keepalive {
        id: u64,
        #[arg(long)]
        once: bool,
    },
    /// Revoke a lease: its keys are deleted.
    Revoke { id: u64 },
    /// A lease's time left and its keys.
    Ttl { id: u64 },
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Download a consistent backup of the whole store from a member (root only with auth on).
    /// FILE may hold `{revision}` and `{created}`, filled in from the backup.
    Save {
        file: std::path::PathBuf,
        /// Take it from this member's admin service on its peer port (`host:port`) instead of
        /// the HTTP API; --cacert/--cert/--key are then the peer CA and a certificate it signed.
        #[arg(long)]
        member: Option<String>,
        /// Also write the outcome as JSON to this file (a Job's `/dev/termination-log`): what
        /// `-o json` prints, or `{"error": ...}`.
        #[arg(long)]
        report: Option<std::path::PathBuf>,
    },
    /// Check a backup end to end and print what it holds.
    Status { file: std::path::PathBuf },
    /// Delete backup files (refused, all of them, if any is not a ConcordKV backup).
    Remove {
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
    /// Write one member's data dir of a NEW cluster from a backup (offline; run once per
    /// member with the same --initial-cluster, then start each member with its --peers).
    Restore {
        file: std::path::PathBuf,
        /// The new member's data dir (must not exist, or be empty).
        #[arg(long)]
        data_dir: std::path::PathBuf,
        /// This member's name.
        #[arg(long)]
        name: String,
        /// Every member of the new cluster: name=host:port,... (the peer addresses).
        #[arg(long)]
        initial_cluster: String,
        /// Sets restores of one backup with the same members apart.
        #[arg(long, default_value = "concordkv-restored")]
        initial_cluster_token: String,
        /// Revisions to skip past the backup's, so the new cluster's revisions never go back.
        #[arg(long, default_value = "1000000")]
        bump_revision: u64,
        /// Compact away history before the new first revision (watchers resuming from an old
        /// revision are told "compacted"); --mark-compacted=false keeps it readable.
        #[arg(long, default_value = "true", action = clap::ArgAction::Set)]
        mark_compacted: bool,
    },
}

#[derive(Subcommand)]
enum LeaderCmd {
    /// Move leadership to a voter (default: the most up-to-date one).
    Transfer {
        #[arg(long)]
        to: Option<u64>,
    },
}

fn members_table(v: &Value) -> String {
    let mut out = format!(
        "{:<18} {:<16} {:<22} {:<8} {:<6} {:>8} {:>6} {:>10} {}\n",
        "ID", "NAME", "ADDRESS", "ROLE", "LEADER", "MATCHED", "LAG", "CONTACT", "REACHABLE"
    );
    for m in v["members"].as_array().into_iter().flatten() {
        let contact = m["lastContactMs"]
            .as_u64()
            .map(|ms| format!("{ms}ms"))
            .unwrap_or_else(|| "never".into());
        out.push_str(&format!(
            "{:<18} {:<16} {:<22} {:<8} {:<6} {:>8} {:>6} {:>10} {}\n",
            m["id"],
            m["name"].as_str().unwrap_or(""),
            m["address"].as_str().unwrap_or(""),
            m["role"].as_str().unwrap_or(""),
            if m["leader"] == true { "*" } else { "" },
            m["matchedIndex"],
            m["lag"],
            contact,
            m["reachable"]
        ));
    }
    out.trim_end().to_string()
}

fn print(output: Output, v: &Value, text: impl FnOnce() -> String) {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        Output::Text => println!("{}", text()),
    }
}

fn fail(e: ClientError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let tls = concord_node::client::ClientTls {
        cacert: cli.cacert.clone(),
        cert: cli.cert.clone(),
        key: cli.client_key.clone(),
    };
    let mut client = match Client::with_tls(&cli.endpoints, Duration::from_secs(cli.timeout), tls) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if let Some(user) = &cli.user {
        let (name, password) = match (user.split_once(':'), &cli.password) {
            (_, Some(p)) => (user.as_str(), p.clone()),
            (Some((n, p)), None) => (n, p.to_string()),
            (None, None) => {
                eprintln!("error: --user {user:?} needs a password: --password, CONCORD_PASSWORD or NAME:PASSWORD");
                return ExitCode::from(2);
            }
        };
        if let Err(e) = client.sign_in(name, &password).await {
            return fail(e);
        }
    }
    let etcd = concord_node::cli::auth::etcd_endpoints(&cli.etcd_endpoints, client.endpoints());
    let out = cli.output;
    match cli.cmd {
        Cmd::Set { key, value } => match client.set(&key, &value).await {
            Ok(v) => print(out, &v, || format!("OK (revision {})", v["revision"])),
            Err(e) => return fail(e),
        },
        Cmd::Get { key, stale } => match client.get(&key, stale).await {
            Ok(v) => print(out, &v, || {
                v["value"].as_str().unwrap_or_default().to_string()
            }),
            Err(e) => return fail(e),
        },
        Cmd::Delete { key } => match client.delete(&key).await {
            Ok(v) => print(out, &v, || format!("deleted (revision {})", v["revision"])),
            Err(e) => return fail(e),
        },
        Cmd::Keys { prefix, limit, all } => {
            let mut token: Option<String> = None;
            let mut every = Vec::new();
            loop {
                match client.keys(&prefix, limit, token.as_deref()).await {
                    Ok(v) => {
                        let keys: Vec<String> = v["keys"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|k| k.as_str().map(String::from))
                                    .collect()
                            })
                            .unwrap_or_default();
                        every.extend(keys);
                        token = v["continue"].as_str().map(String::from);
                        if !all || token.is_none() {
                            break;
                        }
                    }
                    Err(e) => return fail(e),
                }
            }
            let v = json!({ "keys": every, "continue": token });
            print(out, &v, || {
                let mut s = every.join("\n");
                if let Some(t) = &token {
                    s.push_str(&format!("\n(more: --all, or continue after {t:?})"));
                }
                s
            });
        }
        Cmd::Cas {
            key,
            value,
            expected,
            absent,
        } => {
            if expected.is_none() && !absent {
                eprintln!("error: give --expected VALUE or --absent");
                return ExitCode::from(2);
            }
            match client.cas(&key, expected.as_deref(), &value).await {
                Ok(v) => print(out, &v, || format!("swapped (revision {})", v["revision"])),
                Err(ClientError::Status { status: 409, body }) => {
                    print(out, &body, || {
                        format!("not swapped: current {}", body["current"])
                    });
                    return ExitCode::from(3);
                }
                Err(e) => return fail(e),
            }
        }
        Cmd::Status { all: true } | Cmd::Member(MemberCmd::List) => {
            match client.get_json("/admin/members").await {
                Ok(v) => print(out, &v, || members_table(&v)),
                Err(e) => return fail(e),
            }
        }
        Cmd::Member(cmd) => {
            let (path, body) = match cmd {
                MemberCmd::List => ("/admin/members", Value::Null),
                MemberCmd::Add { id, name, address } => (
                    "/admin/learners",
                    json!({ "id": id, "name": name, "address": address }),
                ),
                MemberCmd::Promote { id } => ("/admin/promote", json!({ "id": id })),
                MemberCmd::Remove { id, force } => {
                    ("/admin/remove", json!({ "id": id, "force": force }))
                }
            };
            let res = if body.is_null() {
                client.get_json(path).await
            } else {
                client.post_json(path, &body).await
            };
            match res {
                Ok(v) => print(out, &v, || {
                    v["message"].as_str().unwrap_or("ok").to_string()
                }),
                Err(e) => return fail(e),
            }
        }
        Cmd::Leader(LeaderCmd::Transfer { to }) => {
            match client
                .post_json("/admin/transfer-leader", &json!({ "to": to.unwrap_or(0) }))
                .await
            {
                Ok(v) => print(out, &v, || {
                    v["message"].as_str().unwrap_or("ok").to_string()
                }),
                Err(e) => return fail(e),
            }
        }
        Cmd::Init { members } => {
            let mut specs = Vec::new();
            for m in &members {
                let parts: Vec<&str> = m.splitn(3, ':').collect();
                let id = parts.first().and_then(|s| s.parse::<u64>().ok());
                match (id, parts.get(1), parts.get(2)) {
                    (Some(id), Some(name), Some(addr)) => {
                        specs.push(json!({ "id": id, "name": name, "address": addr }))
                    }
                    _ => {
                        eprintln!("error: --member {m:?} is not id:name:host:port");
                        return ExitCode::from(2);
                    }
                }
            }
            match client
                .post_json("/admin/init", &json!({ "members": specs }))
                .await
            {
                Ok(v) => print(out, &v, || {
                    v["message"].as_str().unwrap_or("ok").to_string()
                }),
                Err(e) => return fail(e),
            }
        }
        Cmd::Status { all: false } => match client.status().await {
            Ok(v) => print(out, &v, || {
                format!(
                    "node {} ({}) role={} term={} leader={} commit={} applied={} voters={} learners={}",
                    v["nodeId"].as_str().unwrap_or("?"),
                    v["clusterId"].as_str().unwrap_or("?"),
                    v["role"].as_str().unwrap_or("?"),
                    v["term"],
                    v["leader"]["name"].as_str().unwrap_or("none"),
                    v["commitIndex"],
                    v["appliedIndex"],
                    v["voters"].as_array().map(|a| a.len()).unwrap_or(0),
                    v["learners"].as_array().map(|a| a.len()).unwrap_or(0),
                )
            }),
            Err(e) => return fail(e),
        },
        Cmd::Snapshot(cmd) => return snapshot(&client, out, cmd).await,
        Cmd::User(cmd) => {
            return show(
                out,
                concord_node::cli::auth::user(&client, &etcd, cmd).await,
            )
        }
        Cmd::Role(cmd) => {
            return show(
                out,
                concord_node::cli::auth::role(&client, &etcd, cmd).await,
            )
        }
        Cmd::Auth(cmd) => {
            return show(
                out,
                concord_node::cli::auth::auth(&client, &etcd, cmd).await,
            )
        }
        Cmd::Check => return concord_node::cli::check::run(&client).await,
        Cmd::Watch {
            key,
            prefix,
            from_revision,
            prev_value,
        } => {
            let args = concord_node::cli::watch::WatchArgs {
                endpoints: client.endpoints(),
                tls: client.tls(),
                token: client.token(),
                key: &key,
                prefix,
                from_revision,
                prev_value,
                json: out == Output::Json,
            };
            if let Err(e) = concord_node::cli::watch::run(args).await {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
        Cmd::Lease(cmd) => return lease(&client, out, cmd).await,
        Cmd::Lock { name, ttl, command } => return lock(&client, &name, ttl, &command).await,
        Cmd::Elect {
            name,
            proposal,
            ttl,
            listen,
        } => return elect(&client, &name, proposal.as_deref(), ttl, listen).await,
        Cmd::BenchWatch(args) => match concord_node::cli::bench_watch::run(args).await {
            Ok(v) => print(out, &v, || v.to_string()),
            Err(e) => return fail_text(&format!("{e:#}")),
        },
        Cmd::Bench(mut args) => {
            args.tls = client.tls().clone();
            let started = Instant::now();
            let endpoints = if args.endpoints.is_empty() {
                client.endpoints().to_vec()
            } else {
                args.endpoints.clone()
            };
            match concord_node::cli::bench::run_against(&args, &endpoints).await {
                Ok(report) => print(out, &report.to_json(), || report.to_text()),
                Err(e) => {
                    eprintln!("bench failed after {:?}: {e:#}", started.elapsed());
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    ExitCode::SUCCESS
}

fn show(out: Output, result: anyhow::Result<(String, Value)>) -> ExitCode {
    match result {
        Ok((text, v)) => {
            print(out, &v, || text);
            ExitCode::SUCCESS
        }
        Err(e) => fail_text(&format!("{e:#}")),
    }
}

async fn snapshot(client: &Client, out: Output, cmd: SnapshotCmd) -> ExitCode {
    use concord_node::cli::snapshot as s;
    let result = match cmd {
        SnapshotCmd::Save {
            file,
            member,
            report,
        } => {
            let saved = match &member {
                Some(m) => s::save_from_member(client.tls(), m, &file).await,
                None => s::save(client, &file).await,
            };
            if let Some(report) = &report {
                let v = match &saved {
                    Ok(v) => v.clone(),
                    Err(e) => json!({ "error": format!("{e:#}") }),
                };
                if let Err(e) = std::fs::write(report, v.to_string()) {
                    eprintln!("cannot write --report {}: {e}", report.display());
                }
            }
            saved.map(|v| {
                (
                    format!(
                        "saved {}: {}",
                        v["file"].as_str().unwrap_or("?"),
                        s::status_text(&v)
                    ),
                    v,
                )
            })
        }
        SnapshotCmd::Remove { files } => s::remove(&files).map(|v| {
            (
                format!(
                    "removed {} backup(s), {} already absent",
                    v["removed"].as_array().map_or(0, Vec::len),
                    v["absent"].as_array().map_or(0, Vec::len)
                ),
                v,
            )
        }),
        SnapshotCmd::Status { file } => s::status(&file)
            .map(|v| (s::status_text(&v), v))
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display())),
        SnapshotCmd::Restore {
            file,
            data_dir,
            name,
            initial_cluster,
            initial_cluster_token,
            bump_revision,
            mark_compacted,
        } => match concord_node::backup::restore::parse_initial_cluster(&initial_cluster) {
            Err(e) => Err(e),
            Ok(initial_cluster) => {
                let o = concord_node::backup::restore::RestoreOptions {
                    backup: file,
                    data_dir,
                    name,
                    initial_cluster,
                    cluster_token: initial_cluster_token,
                    bump_revision,
                    mark_compacted,
                };
                s::restore(&o).await.map(|v| {
                    let text = format!(
                        "restored {} keys into {} as member {} ({}) of new cluster {}; revisions continue after {} (the backup was at {}){}",
                        v["keys"],
                        o.data_dir.display(),
                        o.name,
                        v["memberId"].as_str().unwrap_or("?"),
                        v["clusterId"].as_str().unwrap_or("?"),
                        v["revision"],
                        v["backupRevision"],
                        if o.mark_compacted { ", older revisions compacted" } else { "" },
                    );
                    (text, v)
                })
            }
        },
    };
    match result {
        Ok((text, v)) => {
            print(out, &v, || text);
            ExitCode::SUCCESS
        }
        Err(e) => fail_text(&format!("{e:#}")),
    }
}

async fn lease(client: &Client, out: Output, cmd: LeaseCmd) -> ExitCode {
    use concord_node::cli::lease::lease_path;
    match cmd {
        LeaseCmd::Grant { ttl } => match client
            .post_json("/api/lease/grant", &json!({ "ttl": ttl }))
            .await
        {
            Ok(v) => print(out, &v, || {
                format!("lease {} granted with TTL({}s)", v["id"], v["ttl"])
            }),
            Err(e) => return fail(e),
        },
        LeaseCmd::Keepalive { id, once } => loop {
            match client
                .post_json("/api/lease/keepalive", &json!({ "id": id }))
                .await
            {
                Ok(v) => print(out, &v, || {
                    format!("lease {id} keepalived with TTL({})", v["ttl"])
                }),
                Err(e @ ClientError::Status { status: 404, .. }) => return fail(e),
                Err(e) => eprintln!("warning: {e}; retrying"),
            }
            if once {
                break;
            }
            let ttl = match client.get_json(&lease_path(id)).await {
                Ok(v) => v["grantedTtl"].as_u64().unwrap_or(3),
                Err(_) => 3,
            };
            tokio::time::sleep(Duration::from_millis((ttl * 1000 / 3).max(200))).await;
        },
        LeaseCmd::Revoke { id } => match client
            .post_json("/api/lease/revoke", &json!({ "id": id }))
            .await
        {
            Ok(v) => print(out, &v, || {
                format!("lease {id} revoked (revision {})", v["revision"])
            }),
            Err(e) => return fail(e),
        },
        LeaseCmd::Ttl { id } => match client.get_json(&lease_path(id)).await {
            Ok(v) => print(out, &v, || {
                format!(
                    "lease {id} granted with TTL({}s), remaining({}s), attached keys({})",
                    v["grantedTtl"],
                    v["ttl"],
                    v["keys"]
                        .as_array()
                        .map(|k| k
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(","))
                        .unwrap_or_default()
                )
            }),
            Err(e) => return fail(e),
        },
    }
    ExitCode::SUCCESS
}

async fn lock(client: &Client, name: &str, ttl: u64, command: &[String]) -> ExitCode {
    use concord_node::cli::lease::{acquire, Session};
    let session = match Session::start(client, ttl).await {
        Ok(s) => s,
        Err(e) => return fail_text(&e),
    };
    let key = match acquire(client, &session, name, "").await {
        Ok((key, _)) => key,
        Err(e) => return fail_text(&e),
    };
    println!("{key}");
    let code = match command.split_first() {
        Some((program, args)) => match std::process::Command::new(program).args(args).status() {
            Ok(s) if s.success() => ExitCode::SUCCESS,
            Ok(_) => ExitCode::FAILURE,
            Err(e) => fail_text(&format!("running {program}: {e}")),
        },
        None => {
            let _ = tokio::signal::ctrl_c().await;
            ExitCode::SUCCESS
        }
    };
    session.close(client).await;
    code
}

async fn elect(
    client: &Client,
    name: &str,
    proposal: Option<&str>,
    ttl: u64,
    listen: bool,
) -> ExitCode {
    use concord_node::cli::lease::{acquire, leader, Session};
    if listen {
        let mut last: Option<String> = None;
        loop {
            match leader(client, name).await {
                Ok(Some((key, value))) if last.as_ref() != Some(&key) => {
                    println!("{key}");
                    println!("{}", value.as_str().unwrap_or_default());
                    last = Some(key);
                }
                Ok(_) => {}
                Err(e) => eprintln!("warning: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let Some(proposal) = proposal else {
        return fail_text("give a PROPOSAL to campaign with (or --listen to observe)");
    };
    let session = match Session::start(client, ttl).await {
        Ok(s) => s,
        Err(e) => return fail_text(&e),
    };
    match acquire(client, &session, name, proposal).await {
        Ok((key, _)) => {
            println!("{key}");
            println!("{proposal}");
        }
        Err(e) => return fail_text(&e),
    }
    let _ = tokio::signal::ctrl_c().await;
    session.close(client).await;
    ExitCode::SUCCESS
}

fn fail_text(e: &str) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}
