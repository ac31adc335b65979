//! `concordctl user|role|auth`: users, roles and permissions through etcd's JSON gateway (the
//! same calls `etcdctl user|role|auth` makes over gRPC), on the members' etcd port.

use base64::Engine;
use clap::{Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::client::Client;

#[derive(Subcommand, Clone)]
pub enum UserCmd {
    /// Add a user (with --password, or --no-password for one that signs in by certificate).
    Add {
        name: String,
        #[arg(long, conflicts_with = "no_password")]
        password: Option<String>,
        #[arg(long)]
        no_password: bool,
    },
    /// A user's roles.
    Get {
        name: String,
    },
    /// Every user.
    List,
    Delete {
        name: String,
    },
    /// Change a user's password.
    Passwd {
        name: String,
        #[arg(long)]
        password: String,
    },
    GrantRole {
        name: String,
        role: String,
    },
    RevokeRole {
        name: String,
        role: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Perm {
    Read,
    Write,
    Readwrite,
}

#[derive(Subcommand, Clone)]
pub enum RoleCmd {
    Add {
        name: String,
    },
    /// A role's permissions.
    Get {
        name: String,
    },
    List,
    Delete {
        name: String,
    },
    /// Let a role read and/or write KEY, the range [KEY, RANGE_END), or (--prefix) every key
    /// starting with KEY.
    GrantPermission {
        name: String,
        #[arg(value_enum)]
        perm: Perm,
        key: String,
        range_end: Option<String>,
        #[arg(long, conflicts_with = "range_end")]
        prefix: bool,
    },
    RevokePermission {
        name: String,
        key: String,
        range_end: Option<String>,
        #[arg(long, conflicts_with = "range_end")]
        prefix: bool,
    },
}

#[derive(Subcommand, Clone)]
pub enum AuthCmd {
    /// Turn authentication on (a `root` user with the `root` role must exist).
    Enable,
    Disable,
    Status,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The end of KEY's range: one key, a prefix, or an explicit end.
fn range_end(key: &str, end: Option<&str>, prefix: bool) -> Option<String> {
    if prefix {
        let end = crate::store::mvcc::prefix_end(key.as_bytes()).unwrap_or_else(|| vec![0]);
        return Some(b64(&end));
    }
    end.map(|e| b64(e.as_bytes()))
}

/// The etcd endpoints to use: given, or the HTTP endpoints' hosts on etcd's port 2379.
pub fn etcd_endpoints(given: &[String], http: &[String]) -> Vec<String> {
    if !given.is_empty() {
        return given
            .iter()
            .map(|e| {
                if e.starts_with("http://") || e.starts_with("https://") {
                    e.trim_end_matches('/').to_string()
                } else {
                    format!("http://{}", e.trim_end_matches('/'))
                }
            })
            .collect();
    }
    http.iter()
        .map(|e| match e.rsplit_once(':') {
            Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => {
                format!("{host}:2379")
            }
            _ => format!("{e}:2379"),
        })
        .collect()
}

/// Posts `body` to `path` on the first etcd endpoint that answers.
async fn call(
    client: &Client,
    endpoints: &[String],
    path: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let mut last = anyhow::anyhow!("no etcd endpoints");
    for ep in endpoints {
        match client
            .http()
            .post(format!("{ep}{path}"))
            .json(&body)
            .send()
            .await
        {
            Err(e) if e.is_connect() => last = anyhow::anyhow!("{ep}: {e}"),
            Err(e) => anyhow::bail!("{ep}: {e}"),
            Ok(r) => {
                let status = r.status();
                let v: Value = r.json().await.unwrap_or(Value::Null);
                if status.is_success() {
                    return Ok(v);
                }
                let msg = v["error"]
                    .as_str()
                    .or(v["message"].as_str())
                    .unwrap_or("refused")
                    .to_string();
                if status.as_u16() == 503 {
                    last = anyhow::anyhow!("{ep}: {msg}");
                    continue;
                }
                anyhow::bail!("{msg}");
            }
        }
    }
    Err(last)
}

pub async fn user(
    client: &Client,
    etcd: &[String],
    cmd: UserCmd,
) -> anyhow::Result<(String, Value)> {
    let (path, body, done) = match cmd {
        UserCmd::Add {
            name,
            password,
            no_password,
        } => {
            if password.is_none() && !no_password {
                anyhow::bail!("give --password PASSWORD, or --no-password for a user who signs in by certificate");
            }
            let body = json!({"name": name, "password": password.unwrap_or_default(), "options": {"no_password": no_password}});
            ("/v3/auth/user/add", body, format!("User {name} created"))
        }
        UserCmd::Get { name } => ("/v3/auth/user/get", json!({"name": name}), String::new()),
        UserCmd::List => ("/v3/auth/user/list", json!({}), String::new()),
        UserCmd::Delete { name } => (
            "/v3/auth/user/delete",
            json!({"name": name}),
            format!("User {name} deleted"),
        ),
        UserCmd::Passwd { name, password } => (
            "/v3/auth/user/changepw",
            json!({"name": name, "password": password}),
            "Password updated".into(),
        ),
        UserCmd::GrantRole { name, role } => (
            "/v3/auth/user/grant",
            json!({"user": name, "role": role}),
            format!("Role {role} is granted to user {name}"),
        ),
        UserCmd::RevokeRole { name, role } => (
            "/v3/auth/user/revoke",
            json!({"name": name, "role": role}),
            format!("Role {role} is revoked from user {name}"),
        ),
    };
    let v = call(client, etcd, path, body).await?;
    let text = if !done.is_empty() {
        done
    } else if let Some(users) = v["users"].as_array() {
        strings(users)
    } else {
        format!(
            "Roles: {}",
            strings(v["roles"].as_array().unwrap_or(&Vec::new()))
        )
    };
    Ok((text, v))
}

fn strings(a: &[Value]) -> String {
    a.iter()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join("\n")
}

fn decoded(v: &Value) -> String {
    v.as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

pub async fn role(
    client: &Client,
    etcd: &[String],
    cmd: RoleCmd,
) -> anyhow::Result<(String, Value)> {
    let (path, body, done) = match cmd {
        RoleCmd::Add { name } => (
            "/v3/auth/role/add",
            json!({"name": name}),
            format!("Role {name} created"),
        ),
        RoleCmd::Get { name } => ("/v3/auth/role/get", json!({"role": name}), String::new()),
        RoleCmd::List => ("/v3/auth/role/list", json!({}), String::new()),
        RoleCmd::Delete { name } => (
            "/v3/auth/role/delete",
            json!({"role": name}),
            format!("Role {name} deleted"),
        ),
        RoleCmd::GrantPermission {
            name,
            perm,
            key,
            range_end: end,
            prefix,
        } => {
            let perm_type = match perm {
                Perm::Read => "READ",
                Perm::Write => "WRITE",
                Perm::Readwrite => "READWRITE",
            };
            let mut p = json!({"permType": perm_type, "key": b64(key.as_bytes())});
            if let Some(end) = range_end(&key, end.as_deref(), prefix) {
                p["range_end"] = end.into();
            }
            (
                "/v3/auth/role/grant",
                json!({"name": name, "perm": p}),
                format!("Role {name} updated"),
            )
        }
        RoleCmd::RevokePermission {
            name,
            key,
            range_end: end,
            prefix,
        } => {
            let mut body = json!({"role": name, "key": b64(key.as_bytes())});
            if let Some(end) = range_end(&key, end.as_deref(), prefix) {
                body["range_end"] = end.into();
            }
            (
                "/v3/auth/role/revoke",
                body,
                format!("Permission of key {key} is revoked from role {name}"),
            )
        }
    };
    let v = call(client, etcd, path, body).await?;
    let text = if !done.is_empty() {
        done
    } else if let Some(roles) = v["roles"].as_array() {
        strings(roles)
    } else {
        let perms = v["perm"].as_array().cloned().unwrap_or_default();
        let mut out = String::from("Permissions:");
        for p in &perms {
            let end = decoded(&p["range_end"]);
            out.push_str(&format!(
                "\n  {}: {}{}",
                p["permType"].as_str().unwrap_or("READ"),
                decoded(&p["key"]),
                if end.is_empty() {
                    String::new()
                } else {
                    format!(" (range end {end:?})")
                }
            ));
        }
        out
    };
    Ok((text, v))
}

pub async fn auth(
    client: &Client,
    etcd: &[String],
    cmd: AuthCmd,
) -> anyhow::Result<(String, Value)> {
    let (path, done) = match cmd {
        AuthCmd::Enable => ("/v3/auth/enable", "Authentication Enabled"),
        AuthCmd::Disable => ("/v3/auth/disable", "Authentication Disabled"),
        AuthCmd::Status => ("/v3/auth/status", ""),
    };
    let v = call(client, etcd, path, json!({})).await?;
    let text = if done.is_empty() {
        format!(
            "Authentication Status: {}\nAuthRevision: {}",
            v["enabled"].as_bool().unwrap_or(false),
            v["authRevision"]
                .as_str()
                .or(v["auth_revision"].as_str())
                .unwrap_or("0")
        )
    } else {
        done.to_string()
    };
    Ok((text, v))
}
