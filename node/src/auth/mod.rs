//! Authentication and authorization, etcd's way: users and roles in the replicated state
//! ([`store`]), passwords hashed with argon2id before they are proposed, and tokens signed
//! (JWT, HS256) with a key the replicated state carries, so every member verifies a token
//! itself, without a round trip. A client presents a token (`token` gRPC metadata, or an
//! `Authorization` header) or, with `--client-cert-auth`, a certificate whose common name is the
//! user.

pub mod sign_in;
pub mod store;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

pub use store::{Access, AuthCommand, AuthError, AuthStore, PermType, Permission, ROOT};

use crate::store::mvcc::KeyRange;
use crate::tls::ClientCert;

tokio::task_local! {
    /// Who sent the request being served: each port's front door identifies the caller once
    /// and serves the request inside [`serving`], and handlers ask [`caller`].
    static CALLER: Result<Caller, Refusal>;
    /// The address it came from (failed sign-ins are limited per address).
    static SOURCE: Option<IpAddr>;
}

/// Serves `f` as a request from `caller` at `source`.
pub async fn serving<F: std::future::Future>(
    caller: Result<Caller, Refusal>,
    source: Option<IpAddr>,
    f: F,
) -> F::Output {
    CALLER.scope(caller, SOURCE.scope(source, f)).await
}

/// The address the request being served came from.
pub fn source() -> Option<IpAddr> {
    SOURCE.try_with(|s| *s).ok().flatten()
}

/// Who sent the request being served, under `auth` as it is now: anyone while auth is off;
/// with auth on, the identified caller, and no one for a request no front door identified.
pub fn caller(auth: &AuthStore) -> Result<Caller, Refusal> {
    if !auth.enabled() {
        return Ok(Caller::Anyone);
    }
    CALLER
        .try_with(Clone::clone)
        .unwrap_or(Err(Refusal::NoCredentials))
}

/// Who sent the request being served, as its front door identified it, for a stream that
/// outlives the request's task (a watch stream): pass it to [`caller_of`] when it acts.
pub fn identity() -> Result<Caller, Refusal> {
    CALLER
        .try_with(Clone::clone)
        .unwrap_or(Err(Refusal::NoCredentials))
}

/// `identity` under `auth` as it is now: anyone while auth is off; with auth on, the identity,
/// and no one for a stream opened while auth was off.
pub fn caller_of(auth: &AuthStore, identity: &Result<Caller, Refusal>) -> Result<Caller, Refusal> {
    if !auth.enabled() {
        return Ok(Caller::Anyone);
    }
    match identity {
        Ok(Caller::Anyone) => Err(Refusal::NoCredentials),
        other => other.clone(),
    }
}

/// What a front door asks of a request's caller before its handler runs, while auth is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Nothing (probes, sign-in, status).
    Open,
    /// Nothing here: the handler checks the caller against the keys or users the request names.
    Handler,
    /// Any signed-in user (leases: a lease names no keys until one is attached).
    SignedIn,
    /// The root role (membership, maintenance, the admin API).
    Root,
}

impl Gate {
    /// Why `caller` may not pass, if it may not.
    pub fn refuses(self, auth: &AuthStore, caller: &Result<Caller, Refusal>) -> Option<Refusal> {
        match self {
            Gate::Open | Gate::Handler => None,
            Gate::SignedIn => caller.as_ref().err().cloned(),
            Gate::Root => caller.clone().and_then(|c| c.check_root(auth)).err(),
        }
    }
}

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Auth is off: every request is let through.
    Anyone,
    User(String),
}

/// Why a request was not let through. `Unauthenticated` is HTTP 401 / gRPC UNAUTHENTICATED,
/// `Denied` 403 / PERMISSION_DENIED; the messages are etcd's and name what is missing, never
/// what exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("etcdserver: user name is empty")]
    NoCredentials,
    #[error("etcdserver: invalid auth token")]
    InvalidToken,
    #[error("etcdserver: permission denied")]
    Denied,
}

impl Refusal {
    /// Counts it (`concord_auth_failures_total{reason}`).
    pub fn count(&self) {
        let reason = match self {
            Refusal::NoCredentials => "no_credentials",
            Refusal::InvalidToken => "invalid_token",
            Refusal::Denied => "denied",
        };
        crate::telemetry::metrics::metrics()
            .auth_failures
            .with_label_values(&[reason])
            .inc();
    }

    pub fn grpc(&self) -> tonic::Status {
        match self {
            Refusal::NoCredentials | Refusal::InvalidToken => {
                tonic::Status::unauthenticated(self.to_string())
            }
            Refusal::Denied => tonic::Status::permission_denied(self.to_string()),
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            Refusal::NoCredentials | Refusal::InvalidToken => 401,
            Refusal::Denied => 403,
        }
    }
}

impl Caller {
    /// Who sent a request with these headers over a connection with this client certificate:
    /// a token in `token` (etcd's gRPC metadata) or `Authorization` (with or without `Bearer`),
    /// else the certificate's common name.
    pub fn of_request(
        auth: &AuthStore,
        headers: &http::HeaderMap,
        cert: Option<&ClientCert>,
    ) -> Result<Caller, Refusal> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let token = header("token")
            .or_else(|| header("authorization"))
            .map(|t| t.strip_prefix("Bearer ").unwrap_or(t));
        Caller::identify(auth, token, cert, SystemTime::now())
    }

    /// Who presents `token` or `cert` under `auth` (tokens first, as etcd does).
    pub fn identify(
        auth: &AuthStore,
        token: Option<&str>,
        cert: Option<&ClientCert>,
        now: SystemTime,
    ) -> Result<Caller, Refusal> {
        if !auth.enabled() {
            return Ok(Caller::Anyone);
        }
        if let Some(token) = token {
            return verify_token(auth, token, now).map(Caller::User);
        }
        match cert.and_then(|c| c.common_name.clone()) {
            Some(cn) => Ok(Caller::User(cn)),
            None => Err(Refusal::NoCredentials),
        }
    }

    /// Whether this caller may `access` `keys`.
    pub fn check(&self, auth: &AuthStore, access: Access, keys: &KeyRange) -> Result<(), Refusal> {
        match self {
            Caller::Anyone => Ok(()),
            Caller::User(u) if auth.permits(u, access, keys) => Ok(()),
            Caller::User(_) => Err(Refusal::Denied),
        }
    }

    /// Whether this caller may do what only root may (membership, compaction, users).
    pub fn check_root(&self, auth: &AuthStore) -> Result<(), Refusal> {
        match self {
            Caller::Anyone => Ok(()),
            Caller::User(u) if auth.is_root(u) => Ok(()),
            Caller::User(_) => Err(Refusal::Denied),
        }
    }

    /// Whether this caller may read `key` (for filtering what a range or watch returns).
    pub fn may_read(&self, auth: &AuthStore, key: &[u8]) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::User(u) => auth.permits_key(u, Access::Read, key),
        }
    }
}

/// A password as the log and the snapshots hold it: argon2id with a random salt, as a PHC
/// string. Hashing costs tens of milliseconds on purpose; callers run it off the runtime.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches `user`'s hash (argon2's comparison is constant-time). A user
/// without a password never matches.
pub fn password_matches(auth: &AuthStore, user: &str, password: &str) -> bool {
    let Some(stored) = auth.user(user).and_then(|u| u.password_hash.as_deref()) else {
        return false;
    };
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// A token's claims (etcd's JWT claim names).
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    username: String,
    /// The auth revision the token was issued at.
    revision: u64,
    exp: u64,
}

/// A token for `user`, valid for `ttl`, signed with the replicated key.
pub fn issue_token(
    auth: &AuthStore,
    user: &str,
    ttl: Duration,
    now: SystemTime,
) -> Result<String, String> {
    let exp = now
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .saturating_add(ttl)
        .as_secs();
    let claims = Claims {
        username: user.to_string(),
        revision: auth.revision(),
        exp,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(auth.token_key()),
    )
    .map_err(|e| e.to_string())
}

/// The user a token was issued to, if its signature and expiry hold and the user still exists.
fn verify_token(auth: &AuthStore, token: &str, now: SystemTime) -> Result<String, Refusal> {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    // Expiry is checked here against `now`, not by the library's own clock.
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Claims>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(auth.token_key()),
        &validation,
    )
    .map_err(|_| Refusal::InvalidToken)?;
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| Refusal::InvalidToken)?
        .as_secs();
    if data.claims.exp <= now || auth.user(&data.claims.username).is_none() {
        return Err(Refusal::InvalidToken);
    }
    Ok(data.claims.username)
}

/// Failed authentications per source address: past `max` within `window`, further attempts
/// from that address are refused until the window has passed (a password guesser gets a few
/// tries a minute, not thousands a second).
/// Sources tracked before old windows are swept, and at most.
const FAILED_SOURCES_TIDY: usize = 10_000;
const FAILED_SOURCES_MAX: usize = 100_000;

pub struct FailedLogins {
    max: u32,
    window: Duration,
    by_source: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailedLogins {
    pub fn new(max: u32, window: Duration) -> FailedLogins {
        FailedLogins {
            max,
            window,
            by_source: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `source` may try now.
    pub fn may_try(&self, source: IpAddr, now: Instant) -> bool {
        let map = self.by_source.lock();
        match map.get(&source) {
            Some((since, n)) => *n < self.max || now.duration_since(*since) >= self.window,
            None => true,
        }
    }

    pub fn failed(&self, source: IpAddr, now: Instant) {
        let mut map = self.by_source.lock();
        // Forget old windows so the map stays bounded by recent sources; past the cap (many
        // sources failing within one window), forget the oldest tenth as well: memory stays
        // bounded (~4 MB) whatever the number of sources.
        // Swept every 1,024 new sources, not on every failure: a sweep is a pass over them all.
        if map.len() > FAILED_SOURCES_TIDY && map.len().is_multiple_of(1024) {
            map.retain(|_, (since, _)| now.duration_since(*since) < self.window);
        }
        if map.len() >= FAILED_SOURCES_MAX {
            let mut oldest: Vec<(Instant, IpAddr)> =
                map.iter().map(|(ip, (t, _))| (*t, *ip)).collect();
            oldest.sort_unstable();
            for (_, ip) in oldest.iter().take(FAILED_SOURCES_MAX / 10) {
                map.remove(ip);
            }
        }
        let entry = map.entry(source).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }

    pub fn succeeded(&self, source: IpAddr) {
        self.by_source.lock().remove(&source);
    }
}

impl Default for FailedLogins {
    fn default() -> Self {
        FailedLogins::new(5, Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_sign_ins_are_tracked_in_bounded_memory() {
        let f = FailedLogins::default();
        let now = Instant::now();
        for i in 0..(FAILED_SOURCES_MAX as u32 + 5_000) {
            f.failed(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(f.by_source.lock().len() <= FAILED_SOURCES_MAX);
        // The newest sources are still held back.
        let last = IpAddr::from((FAILED_SOURCES_MAX as u32 + 4_999).to_be_bytes());
        for _ in 0..5 {
            f.failed(last, now);
        }
        assert!(!f.may_try(last, now));
    }

    /// Auth on with root and `app`, tokens signed with `key`.
    fn enabled_store_with(key: u8, hash: impl Fn(&str) -> Option<String>) -> AuthStore {
        let mut s = AuthStore::default();
        for cmd in [
            AuthCommand::UserAdd {
                name: ROOT.into(),
                password_hash: hash("rootpw"),
            },
            AuthCommand::RoleAdd { name: ROOT.into() },
            AuthCommand::UserGrantRole {
                user: ROOT.into(),
                role: ROOT.into(),
            },
            AuthCommand::UserAdd {
                name: "app".into(),
                password_hash: hash("apppw"),
            },
            AuthCommand::Enable {
                token_key: vec![key; 32],
            },
        ] {
            s.apply(&cmd).unwrap();
        }
        s
    }

    fn enabled_store() -> AuthStore {
        enabled_store_with(42, |p| Some(hash_password(p).unwrap()))
    }

    #[test]
    fn passwords_are_hashed_and_checked() {
        let s = enabled_store();
        let stored = s.user("app").unwrap().password_hash.clone().unwrap();
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert!(!stored.contains("apppw"));
        assert!(password_matches(&s, "app", "apppw"));
        assert!(!password_matches(&s, "app", "apppw "));
        assert!(!password_matches(&s, "nobody", "apppw"));
    }

    #[test]
    fn tokens_name_their_user_until_they_expire() {
        let mut s = enabled_store();
        let now = SystemTime::now();
        let token = issue_token(&s, "app", Duration::from_secs(300), now).unwrap();
        assert_eq!(
            Caller::identify(&s, Some(&token), None, now),
            Ok(Caller::User("app".into()))
        );
        // Expired, tampered with, or signed with another key: refused.
        let later = now + Duration::from_secs(301);
        assert_eq!(
            Caller::identify(&s, Some(&token), None, later),
            Err(Refusal::InvalidToken)
        );
        let mut tampered = token.clone();
        tampered.push('x');
        assert_eq!(
            Caller::identify(&s, Some(&tampered), None, now),
            Err(Refusal::InvalidToken)
        );
        let other = enabled_store_with(1, |_| None);
        assert_eq!(
            Caller::identify(&other, Some(&token), None, now),
            Err(Refusal::InvalidToken)
        );
        // A deleted user's tokens stop working.
        s.apply(&AuthCommand::UserDelete { name: "app".into() })
            .unwrap();
        assert_eq!(
            Caller::identify(&s, Some(&token), None, now),
            Err(Refusal::InvalidToken)
        );
        // No credentials at all.
        assert_eq!(
            Caller::identify(&s, None, None, now),
            Err(Refusal::NoCredentials)
        );
        // A certificate's common name is the user.
        let cert = ClientCert {
            common_name: Some("root".into()),
            dns_names: Vec::new(),
        };
        assert_eq!(
            Caller::identify(&s, None, Some(&cert), now),
            Ok(Caller::User("root".into()))
        );
    }

    #[test]
    fn failed_logins_are_limited_per_source_for_a_window() {
        let limit = FailedLogins::new(3, Duration::from_secs(10));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limit.may_try(a, t0));
            limit.failed(a, t0);
        }
        assert!(!limit.may_try(a, t0 + Duration::from_secs(5)));
        assert!(limit.may_try(b, t0), "another source is not held back");
        assert!(limit.may_try(a, t0 + Duration::from_secs(10)));
        limit.failed(a, t0 + Duration::from_secs(10));
        assert!(
            limit.may_try(a, t0 + Duration::from_secs(10)),
            "a new window"
        );
    }
}
