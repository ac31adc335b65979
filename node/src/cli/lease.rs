//! `concordctl lease ...`, `concordctl lock` and `concordctl elect`, over the seed API.
//!
//! Lock and election are etcd's recipes (its `concurrency` package): each contender holds a
//! lease (its session, renewed in the background) and writes one key under the name's prefix,
//! `NAME/<lease id>`, attached to it. The contender whose key has the lowest revision holds the
//! lock (or leads); every other one watches the key just before its own and checks again when
//! that is deleted — by its owner, or by the lease expiring when its owner dies. So a holder
//! that crashes passes the lock on within its TTL, and contenders are served in order without
//! all waking on every change.

use std::time::Duration;

use serde_json::{json, Value};

use crate::client::{encode, Client, ClientError};

fn err(e: ClientError) -> String {
    e.to_string()
}

/// A session: a lease renewed every third of its TTL until dropped.
pub struct Session {
    pub id: u64,
    renewing: tokio::task::JoinHandle<()>,
}

impl Session {
    pub async fn start(client: &Client, ttl: u64) -> Result<Session, String> {
        let granted = client
            .post_json("/api/lease/grant", &json!({ "ttl": ttl }))
            .await
            .map_err(err)?;
        let id = granted["id"].as_u64().ok_or("the grant named no lease")?;
        let every =
            Duration::from_millis((granted["ttl"].as_u64().unwrap_or(ttl) * 1000 / 3).max(200));
        let c = client.clone();
        let renewing = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match c
                    .post_json("/api/lease/keepalive", &json!({ "id": id }))
                    .await
                {
                    Err(ClientError::Status { status: 404, .. }) => {
                        eprintln!("error: the session's lease {id} expired");
                        std::process::exit(1);
                    }
                    // An election or a lost endpoint: the next renewal goes to another.
                    _ => continue,
                }
            }
        });
        Ok(Session { id, renewing })
    }

    /// Ends the session: its lease and every key attached to it go.
    pub async fn close(self, client: &Client) {
        self.renewing.abort();
        let _ = client
            .post_json("/api/lease/revoke", &json!({ "id": self.id }))
            .await;
    }
}

/// Every key under `prefix` with its revision (a recipe key is written once: that is when it
/// was created).
async fn contenders(client: &Client, prefix: &str) -> Result<Vec<(u64, String)>, String> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = client
            .keys(prefix, 1000, token.as_deref())
            .await
            .map_err(err)?;
        for k in page["keys"].as_array().into_iter().flatten() {
            let Some(key) = k.as_str() else { continue };
            match client.get(key, false).await {
                Ok(v) => out.push((v["revision"].as_u64().unwrap_or(0), key.to_string())),
                Err(ClientError::Status { status: 404, .. }) => {} // gone meanwhile
                Err(e) => return Err(err(e)),
            }
        }
        match page["continue"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    out.sort();
    Ok(out)
}

/// Joins the queue for `name` with `value`; returns once first, with the key and revision.
pub async fn acquire(
    client: &Client,
    session: &Session,
    name: &str,
    value: &str,
) -> Result<(String, u64), String> {
    let prefix = format!("{}/", name.trim_end_matches('/'));
    let key = format!("{prefix}{:x}", session.id);
    let set = client
        .post_json(
            "/api/set",
            &json!({ "key": key, "value": value, "lease": session.id }),
        )
        .await
        .map_err(err)?;
    let mine = set["revision"]
        .as_u64()
        .ok_or("the write named no revision")?;
    loop {
        let all = contenders(client, &prefix).await?;
        let before = all.iter().rfind(|(r, _)| *r < mine);
        let Some((_, predecessor)) = before else {
            return Ok((key, mine));
        };
        crate::cli::watch::until_deleted(client, predecessor, mine).await?;
    }
}

/// Who leads `name` now: its key and value (the contender with the lowest revision).
pub async fn leader(client: &Client, name: &str) -> Result<Option<(String, Value)>, String> {
    let prefix = format!("{}/", name.trim_end_matches('/'));
    let Some((_, key)) = contenders(client, &prefix).await?.into_iter().next() else {
        return Ok(None);
    };
    match client.get(&key, false).await {
        Ok(v) => Ok(Some((key, v["value"].clone()))),
        Err(ClientError::Status { status: 404, .. }) => Ok(None),
        Err(e) => Err(err(e)),
    }
}

/// Percent-encoded path of a lease.
pub fn lease_path(id: u64) -> String {
    format!("/api/lease/{}", encode(&id.to_string()))
}
