//! TLS on every port with certificates minted here (rcgen): who gets in and who does not, a
//! rotation of every member's certificate under a steady write load, and a live cluster
//! switched from plaintext to TLS one member at a time.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::Value;

/// A certificate authority minted for a test.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("key");
        let pem = p.self_signed(&key).expect("self-signed").pem();
        Ca {
            issuer: Issuer::new(p, key),
            pem,
        }
    }

    /// A certificate for `cn`, valid for 127.0.0.1 and localhost, for servers and clients;
    /// expired long ago if `expired`. Returns (certificate PEM, key PEM).
    fn leaf(&self, cn: &str, expired: bool) -> (String, String) {
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if expired {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes `name.crt` and `name.key` under `dir`; returns their paths.
fn write_pair(dir: &Path, name: &str, (cert, key): &(String, String)) -> (PathBuf, PathBuf) {
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    // Written to a temporary name and renamed, as the kubelet swaps a Secret's files: a reader
    // never sees half a file.
    for (path, text) in [(&c, cert), (&k, key)] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, path).expect("rename");
    }
    (c, k)
}

fn write_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// An HTTPS client trusting `ca_pem`, presenting `identity` if given. A new connection per
/// request when `fresh`, so every request makes a handshake.
fn https(ca_pem: &str, identity: Option<&(String, String)>, fresh: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("ca"))
        .timeout(Duration::from_secs(10));
    if let Some((cert, key)) = identity {
        b = b.identity(
            reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).expect("identity"),
        );
    }
    if fresh {
        b = b.pool_max_idle_per_host(0);
    }
    b.build().expect("client")
}

/// The `tls:` section of a member whose files are `name.crt`/`name.key` in `dir`, for both
/// the client ports and the peer port.
fn tls_yaml(dir: &Path, name: &str, client_cert_auth: bool) -> String {
    let (crt, key, ca) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
        dir.join("ca.crt"),
    );
    format!(
        "tls:\n  certFile: \"{c}\"\n  keyFile: \"{k}\"\n  trustedCaFile: \"{a}\"\n  clientCertAuth: {client_cert_auth}\n  peerCertFile: \"{c}\"\n  peerKeyFile: \"{k}\"\n  peerTrustedCaFile: \"{a}\"\n  reloadIntervalMs: 200\n",
        c = crt.display(),
        k = key.display(),
        a = ca.display()
    )
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("config");
    f.write_all(text.as_bytes()).expect("append");
}

/// A counter's value from a member's /metrics (0 when absent).
async fn metric(c: &Cluster, i: usize, name: &str, label: &str) -> f64 {
    let Ok(r) = c
        .http
        .get(format!("{}/metrics", c.nodes[i].api()))
        .send()
        .await
    else {
        return 0.0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Sends plaintext HTTP/2 bytes to `port`; true if the server closed on them without
/// answering with HTTP.
fn plaintext_refused(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        // A TLS alert at most, never an HTTP/2 settings frame or an HTTP answer.
        Ok(n) => n == 0 || buf[0] == 0x15,
        Err(_) => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_port_speaks_tls_and_lets_in_only_the_trusted() {
    let certs = tempfile::tempdir().expect("tempdir");
    let dir = certs.path();
    let ca = Ca::new("ConcordKV test CA");
    write_file(&dir.join("ca.crt"), &ca.pem);
    let mut c = Cluster::configure(3, "", Vec::new());
    for i in 0..3 {
        let name = c.nodes[i].name.clone();
        write_pair(dir, &name, &ca.leaf(&name, false));
        append(&c.nodes[i].config, &tls_yaml(dir, &name, true));
    }
    let app = ca.leaf("app", false);
    let (app_crt, app_key) = write_pair(dir, "app", &app);
    c.use_tls(https(&ca.pem, Some(&app), false));
    for i in 0..3 {
        c.spawn(i);
    }
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    let follower = (leader + 1) % 3;

    // The trusted client reads and writes on every member (a follower forwards over the
    // peers' mutual TLS).
    let (s, body) = c.set(follower, "k", "over-tls").await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = c.get((leader + 2) % 3, "/api/get?key=k").await;
    assert_eq!(
        (s, body["value"].as_str()),
        (200, Some("over-tls")),
        "{body}"
    );

    // Plaintext to a TLS port: no answer.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let api = c.nodes[follower].api_port;
    let r = plain
        .get(format!("http://127.0.0.1:{api}/api/get?key=k"))
        .send()
        .await;
    assert!(r.is_err(), "plaintext HTTP was answered: {r:?}");
    for port in [c.nodes[follower].etcd_port, c.nodes[follower].peer_port] {
        assert!(plaintext_refused(port), "port {port} took plaintext");
    }

    // No client certificate: probes and metrics answer (kubelet, Prometheus), the API is 401
    // with a JSON body saying what is missing.
    let anonymous = https(&ca.pem, None, false);
    let base = c.nodes[follower].api();
    // Ready once it has heard from the leader (a loaded machine can take a moment after the
    // election); what matters is that the probe is answered without a certificate.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = anonymous
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz answers without a client certificate");
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "readyz stayed {}", r.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = anonymous
        .get(format!("{base}/api/get?key=k"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.expect("json");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("client certificate"),
        "{body}"
    );

    // An expired certificate, and one from another CA: refused at the handshake.
    let expired = ca.leaf("old", true);
    let rogue_ca = Ca::new("someone else's CA");
    let rogue = rogue_ca.leaf("node1", false);
    for (what, identity) in [("expired", &expired), ("foreign", &rogue)] {
        let r = https(&ca.pem, Some(identity), false)
            .get(format!("{base}/api/get?key=k"))
            .send()
            .await;
        assert!(r.is_err(), "{what} certificate let in: {r:?}");
    }

    // etcdctl with --cacert/--cert/--key on the etcd port; without a certificate it is refused.
    let endpoint = format!("https://127.0.0.1:{}", c.nodes[follower].etcd_port);
    let tls_args = [
        format!("--cacert={}", dir.join("ca.crt").display()),
        format!("--cert={}", app_crt.display()),
        format!("--key={}", app_key.display()),
    ];
    let with = |args: &[&str]| -> Vec<String> {
        tls_args
            .iter()
            .cloned()
            .chain(args.iter().map(|a| a.to_string()))
            .collect()
    };
    let put = with(&["put", "etcd-key", "etcd-value"]);
    let put: Vec<&str> = put.iter().map(String::as_str).collect();
    assert_eq!(etcdctl(&endpoint, &put).trim(), "OK");
    let get = with(&["get", "etcd-key", "--print-value-only"]);
    let get: Vec<&str> = get.iter().map(String::as_str).collect();
    assert_eq!(etcdctl(&endpoint, &get).trim(), "etcd-value");
    let ca_only = format!("--cacert={}", dir.join("ca.crt").display());
    let refused = etcdctl_stdin(
        &endpoint,
        &[
            &ca_only,
            "--dial-timeout=2s",
            "--command-timeout=3s",
            "get",
            "etcd-key",
        ],
        None,
    );
    assert!(
        refused.is_err(),
        "etcdctl without a certificate got {refused:?}"
    );

    // concordctl with the same flags against the HTTP API.
    let ctl = |args: &[&str]| {
        std::process::Command::new(CTL_BIN)
            .arg(format!("--endpoints={base}"))
            .args(&tls_args)
            .args(args)
            .output()
            .expect("concordctl runs")
    };
    let out = ctl(&["set", "ctl-key", "ctl-value"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ctl(&["get", "ctl-key"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ctl-value");
    let out = std::process::Command::new(CTL_BIN)
        .arg(format!("--endpoints={base}"))
        .arg(&ca_only)
        .args(["get", "ctl-key"])
        .output()
        .expect("concordctl runs");
    assert!(
        !out.status.success(),
        "concordctl without a certificate was let in"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A member of another cluster with a certificate from another CA, told to be a peer of
    // these three: its messages never get past the handshake (none reaches Raft), the cluster
    // keeps taking writes, and every member counts and logs the refusals.
    let refused_before: f64 = {
        let mut sum = 0.0;
        for i in 0..3 {
            sum += metric(
                &c,
                i,
                "concord_tls_handshake_failures_total",
                "port=\"peer\"",
            )
            .await;
        }
        sum
    };
    let rogue_dir = tempfile::tempdir().expect("tempdir");
    let rd = rogue_dir.path();
    write_file(&rd.join("ca.crt"), &rogue_ca.pem);
    write_pair(rd, "node4", &rogue_ca.leaf("node4", false));
    let rogue_port = free_port();
    let mut peers: Vec<String> = c
        .nodes
        .iter()
        .map(|n| format!("{}:127.0.0.1:{}", n.name, n.peer_port))
        .collect();
    peers.push(format!("node4:127.0.0.1:{rogue_port}"));
    let rogue_config = rd.join("node4.yaml");
    std::fs::write(
        &rogue_config,
        format!(
            "server:\n  nodeId: node4\n  listenAddr: \"127.0.0.1:{rogue_port}\"\n  apiAddr: \"127.0.0.1:{}\"\n  etcdAddr: \"127.0.0.1:{}\"\n  dataDir: \"{}\"\n  peers: [{}]\n{FAST_RAFT}{}",
            free_port(),
            free_port(),
            rd.join("data").display(),
            peers.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(", "),
            tls_yaml(rd, "node4", false)
        ),
    )
    .expect("rogue config");
    let mut rogue_node = std::process::Command::new(NODE_BIN)
        .arg("--config")
        .arg(&rogue_config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("rogue node");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (s, body) = c.set(follower, "after-rogue", "still-writing").await;
    let _ = rogue_node.kill();
    let _ = rogue_node.wait();
    assert_eq!(s, 200, "{body}");
    // Nothing the rogue sent reached Raft: a message from another cluster that got past TLS
    // would have been refused by the cluster-id check and counted here.
    for i in 0..3 {
        let status = c.status(i).await.expect("status");
        assert_eq!(
            status["refusedPeerMessages"].as_u64(),
            Some(0),
            "member {i} saw the rogue's messages: {status}"
        );
    }
    let mut refused_after = 0.0;
    for i in 0..3 {
        refused_after += metric(
            &c,
            i,
            "concord_tls_handshake_failures_total",
            "port=\"peer\"",
        )
        .await;
    }
    assert!(
        refused_after > refused_before,
        "peer handshake refusals not counted: {refused_before} -> {refused_after}"
    );
    assert!(
        (0..3).any(|i| c.log_text(i).contains("TLS handshake refused")),
        "refusals not logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_members_certificate_rotates_under_load_with_no_failed_request() {
    let certs = tempfile::tempdir().expect("tempdir");
    let dir = certs.path();
    let old_ca = Ca::new("old CA");
    let new_ca = Ca::new("new CA");
    // The bundle trusts both while certificates move from one CA to the other.
    write_file(
        &dir.join("ca.crt"),
        &format!("{}{}", old_ca.pem, new_ca.pem),
    );
    let mut c = Cluster::configure(3, "", Vec::new());
    for i in 0..3 {
        let name = c.nodes[i].name.clone();
        write_pair(dir, &name, &old_ca.leaf(&name, false));
        append(&c.nodes[i].config, &tls_yaml(dir, &name, true));
    }
    let client = old_ca.leaf("writer", false);
    // A client trusting both CAs, and one handshake per request, so rotation is felt at once.
    let both = format!("{}{}", old_ca.pem, new_ca.pem);
    c.use_tls(https(&both, Some(&client), true));
    for i in 0..3 {
        c.spawn(i);
    }
    c.wait_leader(Duration::from_secs(30)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (acked, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let urls: Vec<String> = c.nodes.iter().map(|n| n.api()).collect();
    let writer = {
        let (stop, acked, failed) = (stop.clone(), acked.clone(), failed.clone());
        let http = c.http.clone();
        tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let url = format!("{}/api/set", urls[n as usize % urls.len()]);
                let body = serde_json::json!({ "key": format!("w{n}"), "value": n.to_string() });
                match http.post(url).json(&body).send().await {
                    Ok(r) if r.status() == 200 => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.push(format!("{other:?}"));
                    }
                }
                n += 1;
            }
            failures
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_rotation = acked.load(Ordering::Relaxed);

    // Every member gets a certificate from the new CA, written in place as a Secret update.
    let rotated_at = Instant::now();
    for i in 0..3 {
        let name = c.nodes[i].name.clone();
        write_pair(dir, &name, &new_ca.leaf(&name, false));
    }
    // Until a client that trusts only the new CA gets in everywhere, on the HTTP API and
    // the peer port (through a member's own dialer: a write on a follower is forwarded).
    let new_only = https(&new_ca.pem, Some(&client), true);
    for i in 0..3 {
        let url = format!("{}/readyz", c.nodes[i].api());
        loop {
            if new_only
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                break;
            }
            assert!(
                rotated_at.elapsed() < Duration::from_secs(15),
                "member {i} still serves the old certificate"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let failures = writer.await.expect("writer");
    let total = acked.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {} writes failed across the rotation: {:?}",
        failures.len(),
        total + failures.len() as u64,
        &failures[..failures.len().min(5)]
    );
    assert!(
        total > before_rotation + 20,
        "writes stalled across the rotation: {before_rotation} -> {total}"
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as f64;
    for i in 0..3 {
        for certificate in ["client", "peer"] {
            let label = format!("certificate=\"{certificate}\"");
            let r = metric(&c, i, "concord_tls_reload_failures_total", &label).await;
            assert_eq!(
                r, 0.0,
                "member {i} failed a reload of the {certificate} certificate"
            );
            let expiry = metric(&c, i, "concord_cert_expiry_timestamp_seconds", &label).await;
            assert!(
                expiry > now,
                "member {i}: {certificate} certificate expiry {expiry}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_cluster_switches_its_peers_to_tls_one_member_at_a_time() {
    let certs = tempfile::tempdir().expect("tempdir");
    let dir = certs.path();
    let ca = Ca::new("peer CA");
    write_file(&dir.join("ca.crt"), &ca.pem);
    let mut c = Cluster::start(3, "");
    for i in 0..3 {
        let name = c.nodes[i].name.clone();
        write_pair(dir, &name, &ca.leaf(&name, false));
    }
    c.wait_leader(Duration::from_secs(30)).await;
    let mut acked = Vec::new();
    let mut n = 0;
    // Each step restarts every member in turn with the new mode; the other two keep quorum
    // and take writes while it is down.
    for mode in ["accept", "prefer", "on"] {
        for i in 0..3 {
            c.terminate(i);
            for _ in 0..5 {
                let key = format!("k{n}");
                let body = c
                    .set_retry(&key, &n.to_string(), Duration::from_secs(15))
                    .await;
                assert!(body["revision"].as_u64().is_some(), "{body}");
                acked.push(key);
                n += 1;
            }
            let (crt, key, ca_file) = (
                dir.join(format!("{}.crt", c.nodes[i].name)),
                dir.join(format!("{}.key", c.nodes[i].name)),
                dir.join("ca.crt"),
            );
            let args = [
                "--peer-cert-file".to_string(),
                crt.display().to_string(),
                "--peer-key-file".to_string(),
                key.display().to_string(),
                "--peer-trusted-ca-file".to_string(),
                ca_file.display().to_string(),
                "--peer-tls-mode".to_string(),
                mode.to_string(),
            ];
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            c.spawn_with_args(i, &args);
            // Back in the cluster: it sees a write made through another member.
            let key = format!("back-{mode}-{i}");
            c.set_retry(&key, "1", Duration::from_secs(15)).await;
            c.wait_value(i, &key, "1", Duration::from_secs(15)).await;
            acked.push(key);
        }
    }
    // TLS only now: the peer port refuses plaintext; every acknowledged write is there.
    let leader = c.wait_leader(Duration::from_secs(15)).await;
    assert!(plaintext_refused(c.nodes[leader].peer_port));
    for key in &acked {
        let (s, body) = c.get(leader, &format!("/api/get?key={key}")).await;
        assert_eq!(s, 200, "{key} lost: {body}");
    }

    // The operator's backup Job: a backup from a member's peer port, with a certificate the
    // peer CA signed (the operator's); a stranger's certificate gets nothing.
    let (op_crt, op_key) = write_pair(dir, "concord-operator", &ca.leaf("concord-operator", false));
    let (x_crt, x_key) = write_pair(
        dir,
        "stranger",
        &Ca::new("other CA").leaf("stranger", false),
    );
    let member = format!("127.0.0.1:{}", c.nodes[leader].peer_port);
    let target = dir.join("backups").join("kv-r{revision}.backup");
    let run = |crt: &Path, key: &Path| {
        let out = std::process::Command::new(CTL_BIN)
            .args(["--cacert", &dir.join("ca.crt").display().to_string()])
            .args(["--cert", &crt.display().to_string()])
            .args(["--key", &key.display().to_string()])
            .args([
                "-o",
                "json",
                "snapshot",
                "save",
                &target.display().to_string(),
            ])
            .args(["--member", &member])
            .output()
            .expect("run concordctl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = run(&x_crt, &x_key);
    assert!(
        !ok,
        "a certificate from another CA must not get a backup: {text}"
    );
    let (ok, text) = run(&op_crt, &op_key);
    assert!(ok, "{text}");
    let saved: serde_json::Value = serde_json::from_str(&text).expect("json");
    let file = saved["file"].as_str().expect("file");
    assert_eq!(
        file,
        dir.join("backups")
            .join(format!("kv-r{}.backup", saved["revision"]))
            .display()
            .to_string()
    );
    let v = concord_node::backup::verify_file(Path::new(file)).expect("a valid backup");
    assert!(v.header.keys >= acked.len() as u64, "{:?}", v.header);
}
