//! Users, roles and permissions with clients nobody here wrote: Debian's `etcdctl user|role|auth`
//! against a 3-node cluster, then what each API lets anonymous callers, users without the
//! permission and users with it do; tokens verified by members that did not issue them; failed
//! sign-ins counted, limited per source and never logged with the password; the auth state kept
//! across a restart.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// etcdctl's stdout, or its stderr as the error.
fn ctl(endpoint: &str, args: &[&str]) -> Result<String, String> {
    etcdctl_stdin(endpoint, args, None)
}

/// A token from the seed API's sign-in on member `i`.
async fn sign_in(c: &Cluster, i: usize, name: &str, password: &str) -> (u16, Value) {
    c.post(
        i,
        "/api/auth/authenticate",
        &json!({ "name": name, "password": password }),
    )
    .await
}

/// A request with `token` (if any) as a bearer token; (status, body).
async fn as_user(
    c: &Cluster,
    token: Option<&str>,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = c.http.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    c.send(req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_users_roles_and_permissions_hold_on_every_api() {
    let mut c = Cluster::start(3, "");
    let leader = c.wait_leader(WAIT).await;
    let ep = c.nodes[(leader + 1) % 3].etcd();
    let other = c.nodes[(leader + 2) % 3].etcd();

    // Users and roles as an etcd operator sets them up, through a follower.
    for args in [
        vec!["user", "add", "root:rootpw"],
        vec!["user", "add", "app:apppw"],
        vec!["user", "add", "reader:readerpw"],
        vec!["role", "add", "app-rw"],
        vec!["role", "add", "app-ro"],
        vec![
            "role",
            "grant-permission",
            "app-rw",
            "readwrite",
            "app/",
            "--prefix=true",
        ],
        vec![
            "role",
            "grant-permission",
            "app-ro",
            "read",
            "app/",
            "--prefix=true",
        ],
        vec!["user", "grant-role", "app", "app-rw"],
        vec!["user", "grant-role", "reader", "app-ro"],
    ] {
        ctl(&ep, &args).unwrap_or_else(|e| panic!("etcdctl {args:?}: {e}"));
    }
    let out = ctl(&ep, &["auth", "enable"]).expect("auth enable");
    assert!(out.contains("Authentication Enabled"), "{out}");

    // etcd API: no credentials, the wrong role, the right role; tokens from one member used
    // on another (etcdctl signs in on the endpoint it talks to).
    let err = ctl(&ep, &["put", "app/x", "1"]).expect_err("anonymous put");
    assert!(err.contains("user name is empty"), "{err}");
    assert_eq!(
        ctl(&ep, &["--user=app:apppw", "put", "app/x", "1"])
            .expect("app put")
            .trim(),
        "OK"
    );
    assert_eq!(
        ctl(
            &other,
            &[
                "--user=reader:readerpw",
                "get",
                "app/x",
                "--print-value-only"
            ]
        )
        .expect("reader get")
        .trim(),
        "1"
    );
    let err = ctl(&ep, &["--user=reader:readerpw", "put", "app/x", "2"]).expect_err("reader put");
    assert!(err.contains("permission denied"), "{err}");
    let err = ctl(&ep, &["--user=app:apppw", "put", "apple", "1"]).expect_err("outside the prefix");
    assert!(err.contains("permission denied"), "{err}");
    let err = ctl(&ep, &["--user=app:apppw", "get", "", "--prefix"]).expect_err("every key");
    assert!(err.contains("permission denied"), "{err}");
    let err = ctl(&ep, &["--user=app:wrong", "get", "app/x"]).expect_err("bad password");
    assert!(err.contains("authentication failed"), "{err}");
    // A transaction is checked whole, both branches.
    let txn = "value(\"app/x\") = \"1\"\n\nput app/y 2\n\nput secret 3\n\n";
    let err = etcdctl_stdin(&ep, &["--user=app:apppw", "txn"], Some(txn))
        .expect_err("a branch outside the prefix");
    assert!(err.contains("permission denied"), "{err}");
    // Root may do anything, users and roles only root.
    ctl(&ep, &["--user=root:rootpw", "put", "secret", "s"]).expect("root put");
    let err = ctl(&ep, &["--user=app:apppw", "user", "list"]).expect_err("app lists users");
    assert!(err.contains("permission denied"), "{err}");
    let users = ctl(&ep, &["--user=root:rootpw", "user", "list"]).expect("root lists users");
    assert!(users.contains("app") && users.contains("reader"), "{users}");
    let err = ctl(&ep, &["--user=app:apppw", "member", "list"]);
    assert!(err.is_ok(), "member list is open to any caller: {err:?}");
    let err = ctl(&ep, &["--user=app:apppw", "compaction", "1"]).expect_err("app compacts");
    assert!(err.contains("permission denied"), "{err}");
    let err =
        ctl(&ep, &["--user=root:rootpw", "user", "delete", "root"]).expect_err("root deleted");
    assert!(err.contains("invalid auth management"), "{err}");

    // Watches are checked per range: the reader sees app/ change; a watch outside its
    // permission is created and canceled with the reason (etcdctl exits on it).
    let watcher = Streamed::etcdctl(
        &other,
        &["--user=reader:readerpw", "watch", "app/", "--prefix"],
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ctl(&ep, &["--user=app:apppw", "put", "app/watched", "w"]).expect("app put");
    let lines: Vec<String> = std::iter::from_fn(|| watcher.line(Duration::from_secs(5)))
        .take(3)
        .collect();
    assert_eq!(lines, ["PUT", "app/watched", "w"], "reader's watch");
    let denied = std::process::Command::new("timeout")
        .args(["10", "etcdctl"])
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={other}"))
        .args(["--user=reader:readerpw", "watch", "secret"])
        .output()
        .expect("etcdctl watch");
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        !denied.status.success() && stderr.contains("permission denied"),
        "a watch outside the permission: {:?} {stderr}",
        denied.status
    );
    // Leases: any signed-in user; revoking deletes the keys, so it needs write on them.
    let granted = ctl(&ep, &["--user=reader:readerpw", "lease", "grant", "60"]).expect("grant");
    let lease = granted
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    ctl(
        &ep,
        &[
            "--user=app:apppw",
            "put",
            "app/leased",
            "l",
            &format!("--lease={lease}"),
        ],
    )
    .expect("app attaches a key");
    let err = ctl(&ep, &["--user=reader:readerpw", "lease", "revoke", &lease])
        .expect_err("reader revokes app's key");
    assert!(err.contains("permission denied"), "{err}");
    ctl(&ep, &["--user=app:apppw", "lease", "revoke", &lease]).expect("app revokes");
    let err = ctl(&ep, &["lease", "grant", "60"]).expect_err("anonymous grant");
    assert!(err.contains("user name is empty"), "{err}");

    // etcd's lock recipe as the caller: app locks under its prefix; the reader (no write) and
    // app outside its prefix are refused.
    let held = ctl(
        &ep,
        &["--user=app:apppw", "lock", "app/lock", "echo", "held"],
    )
    .expect("app locks");
    assert!(held.contains("held"), "{held}");
    for (user, name) in [
        ("--user=reader:readerpw", "app/lock"),
        ("--user=app:apppw", "global-lock"),
    ] {
        let err = ctl(&ep, &[user, "lock", name, "echo", "held"]).expect_err("lock refused");
        assert!(err.contains("permission denied"), "{user} {name}: {err}");
    }

    // The seed API: a token from member A works on member B; the same rules.
    let a = (leader + 1) % 3;
    let b = (leader + 2) % 3;
    let (s, body) = sign_in(&c, a, "app", "apppw").await;
    assert_eq!(s, 200, "{body}");
    let app_token = body["token"].as_str().expect("token").to_string();
    let (s, body) = sign_in(&c, a, "reader", "readerpw").await;
    assert_eq!(s, 200, "{body}");
    let reader_token = body["token"].as_str().expect("token").to_string();
    let (s, body) = sign_in(&c, a, "root", "rootpw").await;
    assert_eq!(s, 200, "{body}");
    let root_token = body["token"].as_str().expect("token").to_string();
    let api = |i: usize, path: &str| format!("{}{path}", c.nodes[i].api());
    use reqwest::Method;
    // (method, path, body, who may): every other signed-in user gets 403, anonymous 401.
    let table: Vec<(Method, &str, Option<Value>, &[&str])> = vec![
        (
            Method::GET,
            "/api/get?key=app/x",
            None,
            &["reader", "app", "root"],
        ),
        (
            Method::POST,
            "/api/set",
            Some(json!({"key": "app/z", "value": "v"})),
            &["app", "root"],
        ),
        (
            Method::POST,
            "/api/cas",
            Some(json!({"key": "app/z", "expected": null, "value": "w"})),
            &["app", "root"],
        ),
        (
            Method::DELETE,
            "/api/delete?key=app/z",
            None,
            &["app", "root"],
        ),
        (
            Method::GET,
            "/api/watch?prefix=app/&fromRevision=1",
            None,
            &["reader", "app", "root"],
        ),
        (Method::GET, "/api/get?key=secret", None, &["root"]),
        (
            Method::POST,
            "/api/set",
            Some(json!({"key": "secret", "value": "v"})),
            &["root"],
        ),
        (Method::GET, "/admin/members", None, &["root"]),
        (Method::GET, "/admin/status", None, &["root"]),
        (Method::GET, "/admin/snapshot", None, &["root"]),
        (Method::GET, "/api/logs", None, &["root"]),
    ];
    let tokens = [
        ("reader", reader_token.as_str()),
        ("app", app_token.as_str()),
        ("root", root_token.as_str()),
    ];
    for (method, path, body, may) in &table {
        let (s, reply) = as_user(&c, None, method.clone(), api(b, path), body.clone()).await;
        assert_eq!(s, 401, "anonymous {method} {path}: {reply}");
        assert!(reply["error"].is_string(), "{reply}");
        for (u, token) in tokens {
            if path.starts_with("/api/watch") && may.contains(&u) {
                // A stream: its head is enough.
                let r = c
                    .http
                    .get(api(b, path))
                    .bearer_auth(token)
                    .timeout(Duration::from_secs(3))
                    .send()
                    .await
                    .expect("watch");
                assert_eq!(r.status(), 200, "{u} {path}");
                continue;
            }
            let (s, reply) =
                as_user(&c, Some(token), method.clone(), api(b, path), body.clone()).await;
            if may.contains(&u) {
                assert!(
                    s == 200 || s == 404 || s == 409,
                    "{u} {method} {path}: {s} {reply}"
                );
            } else {
                assert_eq!(s, 403, "{u} {method} {path}: {reply}");
                // It names what is missing, not what exists.
                assert!(!reply.to_string().contains("secret"), "{reply}");
            }
        }
    }
    // A listing shows only what its caller may read; probes stay open.
    let (s, reply) = as_user(
        &c,
        Some(&app_token),
        Method::GET,
        api(b, "/api/keys?limit=100"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{reply}");
    let keys: Vec<&str> = reply["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        keys.contains(&"app/x") && !keys.contains(&"secret"),
        "{keys:?}"
    );
    let (s, _) = as_user(&c, None, Method::GET, api(b, "/readyz"), None).await;
    assert_eq!(s, 200);
    let (s, reply) = as_user(
        &c,
        Some("not-a-token"),
        Method::GET,
        api(b, "/api/get?key=app/x"),
        None,
    )
    .await;
    assert_eq!(s, 401, "{reply}");

    // Failed sign-ins: counted, limited per source, logged without the password.
    for _ in 0..5 {
        let (s, _) = sign_in(&c, b, "app", "guess-123").await;
        assert_eq!(s, 401);
    }
    let (s, reply) = sign_in(&c, b, "app", "apppw").await;
    assert_eq!(
        s, 429,
        "the sixth try from one address within the window: {reply}"
    );
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (s, reply) = sign_in(&c, b, "app", "apppw").await;
    assert_eq!(s, 200, "after the window: {reply}");
    let metrics = c
        .http
        .get(api(b, "/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let failed: f64 = metrics
        .lines()
        .find(|l| l.starts_with("concord_auth_failures_total{reason=\"bad_password\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(failed >= 5.0, "failed sign-ins counted: {failed}");
    for i in 0..3 {
        let log = c.log_text(i);
        assert!(
            !log.contains("guess-123") && !log.contains("apppw"),
            "a password in node {i}'s log"
        );
    }

    // Users, roles and the switch survive a restart (Raft log and snapshot).
    c.kill9(b);
    c.spawn(b);
    let endpoint = c.nodes[b].etcd();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match ctl(
            &endpoint,
            &[
                "--user=reader:readerpw",
                "get",
                "app/x",
                "--print-value-only",
            ],
        ) {
            Ok(v) if v.trim() == "1" => break,
            other => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "after restart: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let err = ctl(&endpoint, &["get", "app/x"]).expect_err("anonymous after restart");
    assert!(err.contains("user name is empty"), "{err}");

    // The admin gRPC service on the peer port: a root token, or nothing.
    let peer = format!("http://127.0.0.1:{}", c.nodes[a].peer_port);
    let mut admin = concord_proto::admin_client::AdminClient::connect(peer)
        .await
        .expect("admin client");
    let refused = admin
        .members(concord_proto::MembersRequest {})
        .await
        .expect_err("admin without credentials");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    let mut with_token = tonic::Request::new(concord_proto::MembersRequest {});
    with_token
        .metadata_mut()
        .insert("token", root_token.parse().expect("metadata"));
    admin
        .members(with_token)
        .await
        .expect("admin with root's token");
    let mut as_app = tonic::Request::new(concord_proto::MembersRequest {});
    as_app
        .metadata_mut()
        .insert("token", app_token.parse().expect("metadata"));
    let refused = admin.members(as_app).await.expect_err("admin as app");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");

    // Disabling auth lets anyone in again.
    ctl(&ep, &["--user=root:rootpw", "auth", "disable"]).expect("auth disable");
    // root wrote "v" there through the seed API above.
    assert_eq!(
        ctl(&ep, &["get", "secret", "--print-value-only"])
            .expect("get")
            .trim(),
        "v"
    );
}

/// concordctl's own auth commands: users, roles, prefix permissions and auth on, then the same
/// binary signed in (`--user`) for writes, a backup (root only) and a watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concordctl_manages_users_and_roles_and_signs_in() {
    let mut c = Cluster::start(1, "");
    c.wait_leader(Duration::from_secs(20)).await;
    let api = c.nodes[0].api();
    let etcd = c.nodes[0].etcd();
    let ctl = |args: &[&str]| -> (bool, String) {
        let out = std::process::Command::new(CTL_BIN)
            .args(["--endpoints", &api, "--etcd-endpoints", &etcd])
            .args(args)
            .output()
            .expect("concordctl");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    for args in [
        vec!["user", "add", "root", "--password", "rootpw"],
        vec!["role", "add", "root"],
        vec!["user", "grant-role", "root", "root"],
        vec!["user", "add", "app", "--password", "apppw"],
        vec!["role", "add", "app-rw"],
        vec![
            "role",
            "grant-permission",
            "app-rw",
            "readwrite",
            "app/",
            "--prefix",
        ],
        vec!["user", "grant-role", "app", "app-rw"],
        vec!["auth", "enable"],
    ] {
        let (ok, out) = ctl(&args);
        assert!(ok, "{args:?}: {out}");
    }
    let (ok, out) = ctl(&["--user", "root:rootpw", "role", "get", "app-rw"]);
    assert!(ok && out.contains("READWRITE: app/"), "{out}");
    let (ok, out) = ctl(&["--user", "root:rootpw", "auth", "status"]);
    assert!(ok && out.contains("Status: true"), "{out}");
    // Anonymous: refused; signed in: what the role allows.
    let (ok, out) = ctl(&["set", "app/x", "1"]);
    assert!(!ok && out.contains("401"), "{out}");
    let (ok, out) = ctl(&["--user", "app:apppw", "set", "app/x", "1"]);
    assert!(ok, "{out}");
    let (ok, out) = ctl(&["--user", "app", "--password", "apppw", "set", "other", "1"]);
    assert!(!ok && out.contains("403"), "{out}");
    let (ok, out) = ctl(&["--user", "app:wrong", "get", "app/x"]);
    assert!(!ok && out.contains("401"), "{out}");
    // Backups are root's.
    let file = c.dir.path().join("b").display().to_string();
    let (ok, out) = ctl(&["--user", "app:apppw", "snapshot", "save", &file]);
    assert!(!ok && out.contains("403"), "{out}");
    let (ok, out) = ctl(&["--user", "root:rootpw", "snapshot", "save", &file]);
    assert!(ok, "{out}");
    // etcdctl sees what concordctl made.
    let out = etcdctl(&etcd, &["--user", "root:rootpw", "user", "get", "app"]);
    assert!(out.contains("app-rw"), "{out}");
}
