//! Clients as an attacker or a buggy program would write them, against real node processes:
//! every answer is one the OpenAPI document the node serves (`/openapi.json`) lists for that
//! method and path (405 for a method a path does not take, 404 for an unknown path), 4xx with
//! the JSON error body; no acknowledged write is lost; and slow, silent or too many connections
//! cannot hold the server.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Cluster;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The answers the node's own OpenAPI document allows, by method and path.
struct Contract {
    /// (path template, METHOD) -> its documented statuses.
    operations: BTreeMap<(String, String), BTreeSet<u16>>,
    /// What the HTTP layer may answer to any non-probe request (the statuses every non-probe
    /// operation lists), and to any probe request.
    api_layer: BTreeSet<u16>,
    probe_layer: BTreeSet<u16>,
    /// The probe paths (tag `probes`): text answers, never refused by admission control.
    probe_paths: BTreeSet<String>,
    /// Every status in the document, plus 404 and 405: for a request whose line is unreadable.
    any: BTreeSet<u16>,
}

impl Contract {
    async fn fetch(addr: &str) -> Contract {
        let a = raw(addr, &request("GET", "/openapi.json", "", b"")).await;
        let Answer::Response {
            status: 200, body, ..
        } = a
        else {
            panic!("no /openapi.json: {a:?}")
        };
        let doc: Value = serde_json::from_slice(&body).expect("/openapi.json is JSON");
        let mut operations = BTreeMap::new();
        let mut probe_paths = BTreeSet::new();
        let (mut api_layer, mut probe_layer): (Option<BTreeSet<u16>>, Option<BTreeSet<u16>>) =
            (None, None);
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let statuses: BTreeSet<u16> = op["responses"]
                    .as_object()
                    .expect("responses")
                    .keys()
                    .map(|k| k.parse().expect("numeric status"))
                    .collect();
                let probe = op["tags"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t == "probes"));
                if probe {
                    probe_paths.insert(path.clone());
                }
                let layer = if probe {
                    &mut probe_layer
                } else {
                    &mut api_layer
                };
                *layer = Some(match layer.take() {
                    None => statuses.clone(),
                    Some(l) => l.intersection(&statuses).copied().collect(),
                });
                operations.insert((path.clone(), method.to_ascii_uppercase()), statuses);
            }
        }
        let mut any: BTreeSet<u16> = operations.values().flatten().copied().collect();
        any.extend([404, 405]);
        Contract {
            operations,
            api_layer: api_layer.expect("API operations"),
            probe_layer: probe_layer.expect("probe operations"),
            probe_paths,
            any,
        }
    }

    /// The documented path `path` (no query) matches, with `{param}` matching one segment.
    fn template_of(&self, path: &str) -> Option<&str> {
        let segments: Vec<&str> = path.split('/').collect();
        self.operations.keys().map(|(t, _)| t.as_str()).find(|t| {
            let ts: Vec<&str> = t.split('/').collect();
            ts.len() == segments.len()
                && ts
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| t == s || (t.starts_with('{') && !s.is_empty()))
        })
    }

    fn allowed(&self, method: &str, target: &str) -> BTreeSet<u16> {
        let path = target.split('?').next().unwrap_or(target);
        let Some(template) = self.template_of(path) else {
            let mut s = self.api_layer.clone();
            s.insert(404);
            return s;
        };
        if let Some(s) = self
            .operations
            .get(&(template.to_string(), method.to_string()))
        {
            return s.clone();
        }
        let mut s = if self.probe_paths.contains(template) {
            self.probe_layer.clone()
        } else {
            self.api_layer.clone()
        };
        s.insert(405);
        s
    }

    /// What a raw request may get, read from its request line as the server would.
    fn for_request(&self, raw: &[u8]) -> BTreeSet<u16> {
        let line = raw.split(|b| *b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let parts: Vec<&str> = line.trim_end_matches('\r').split(' ').collect();
        match parts.as_slice() {
            [method, target, version]
                if *version == "HTTP/1.1"
                    && target.starts_with('/')
                    && !method.is_empty()
                    && method.bytes().all(|b| b.is_ascii_alphabetic()) =>
            {
                self.allowed(method, target)
            }
            _ => self.any.clone(),
        }
    }
}

/// What came back on a raw connection.
#[derive(Debug)]
enum Answer {
    Response {
        status: u16,
        head: String,
        body: Vec<u8>,
    },
    /// Closed without an answer (what hyper does with a request cut off mid-way).
    Closed,
}

/// Sends `request` on a fresh connection and reads one answer: until the response is complete
/// or the server closes (a request cut off mid-way is closed at the header timeout).
async fn raw(addr: &str, request: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // A refused write (the server answered and closed early) is fine: read what it said.
    let _ = s.write_all(request).await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 8192];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if response_complete(&buf) {
                break;
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no answer and no close within 10 s for {:?}",
        String::from_utf8_lossy(&request[..request.len().min(200)])
    );
    parse_answer(&buf)
}

/// Whether `buf` holds a whole response (after any 100 Continue).
fn response_complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    if head.starts_with("http/1.1 100") {
        return response_complete(&buf[end + 4..]);
    }
    let len = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")?
            .trim()
            .parse::<usize>()
            .ok()
    });
    len.is_some_and(|len| buf.len() - (end + 4) >= len)
}

fn parse_answer(buf: &[u8]) -> Answer {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Answer::Closed;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut body = buf[end + 4..].to_vec();
    // A 100 Continue precedes the real answer.
    if status == 100 {
        return parse_answer(&body);
    }
    if let Some(len) = head.lines().find_map(|l| {
        let l = l.to_ascii_lowercase();
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    }) {
        body.truncate(len);
    }
    Answer::Response { status, head, body }
}

/// Checks one answer against what the contract allows; returns its status (0 for a close).
fn check(name: &str, allowed: &BTreeSet<u16>, answer: &Answer) -> u16 {
    check_answer(name, allowed, answer, false)
}

/// [`check`] for a probe path, whose own answers (errors included) are text.
fn check_answer(name: &str, allowed: &BTreeSet<u16>, answer: &Answer, probe: bool) -> u16 {
    match answer {
        Answer::Closed => 0,
        Answer::Response { status, head, body } => {
            assert!(
                allowed.contains(status),
                "{name}: status {status} is not among the documented {allowed:?}\n{head}"
            );
            let lower = head.to_ascii_lowercase();
            if probe && lower.contains("content-type: text/plain") {
                assert!(
                    !body.is_empty(),
                    "{name}: {status} with an empty body\n{head}"
                );
                return *status;
            }
            if *status >= 400 {
                assert!(
                    lower.contains("content-type: application/json"),
                    "{name}: {status} without a JSON content type\n{head}"
                );
                let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
                    panic!(
                        "{name}: {status} body is not JSON ({e}): {}",
                        String::from_utf8_lossy(body)
                    )
                });
                assert!(v["error"].is_string(), "{name}: no error message: {v}");
                assert!(v["retryable"].is_boolean(), "{name}: no retryable: {v}");
            }
            *status
        }
    }
}

fn request(method: &str, path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{headers}content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Writes `canary/<n>` in a loop through every node and remembers what was acknowledged.
async fn canary(c: Arc<Cluster>, stop: Arc<AtomicBool>) -> BTreeMap<String, String> {
    let mut acked = BTreeMap::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("canary/{n:06}");
        let value = format!("v{n}");
        let (s, _) = c.set((n % 3) as usize, &key, &value).await;
        if s == 200 {
            acked.insert(key, value);
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_request_gets_a_documented_json_answer_and_no_write_is_lost() {
    let extra = "limits:\n  maxRequestBytes: 65536\n  headerReadTimeoutMs: 2000\n";
    let mut c = Cluster::start(3, extra);
    let leader = c.wait_leader(Duration::from_secs(15)).await;
    let voters_before = c.voters(leader).await;
    let c = Arc::new(c);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(canary(c.clone(), stop.clone()));
    let seed: u64 = std::env::var("CONCORD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00c0_ffee);
    eprintln!("fuzz seed {seed} (set CONCORD_FUZZ_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    let addrs: Vec<String> = c
        .nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.api_port))
        .collect();
    let contract = Contract::fetch(&addrs[0]).await;
    let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
    let mut tally = |req: &[u8], name: &str, a: &Answer| {
        *counts
            .entry(check(name, &contract.for_request(req), a))
            .or_default() += 1
    };
    let concrete = |template: &str| template.replace("{check}", "raft");

    // Every documented operation is served by a handler, not the fallback: a body that is not an
    // object (refused by the handler, so nothing changes) or a harmless query.
    for (template, method) in contract.operations.keys() {
        let path = concrete(template);
        let target = match path.as_str() {
            "/api/get" | "/api/delete" => format!("{path}?key=no-such-key"),
            _ => path.clone(),
        };
        let body: &[u8] = if method == "POST" { b"[]" } else { b"" };
        let a = raw(&addrs[0], &request(method, &target, "", body)).await;
        let name = format!("{method} {target}");
        let probe = contract.probe_paths.contains(template);
        let status = check_answer(&name, &contract.allowed(method, &target), &a, probe);
        assert!(status != 0, "{name}: closed without an answer");
        if let Answer::Response { body, .. } = &a {
            assert!(
                !String::from_utf8_lossy(body).contains("no such endpoint"),
                "{name}: documented but not served"
            );
        }
        if method == "POST" {
            assert_eq!(status, 400, "{name}: a non-object body: {a:?}");
        }
    }

    // Every documented path with every method it does not take: 405 with Allow naming those it
    // does.
    let paths: BTreeSet<&str> = contract
        .operations
        .keys()
        .map(|(t, _)| t.as_str())
        .collect();
    for template in paths {
        let path = concrete(template);
        let takes: Vec<&str> = contract
            .operations
            .keys()
            .filter(|(t, _)| t == template)
            .map(|(_, m)| m.as_str())
            .collect();
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "get", "FOO"] {
            if takes.contains(&method) {
                continue;
            }
            let a = raw(&addrs[0], &request(method, &path, "", b"")).await;
            let name = format!("{method} {path}");
            let probe = contract.probe_paths.contains(template);
            assert_eq!(
                check_answer(&name, &contract.allowed(method, &path), &a, probe),
                405,
                "{name}: {a:?}"
            );
            let Answer::Response { head, .. } = &a else {
                unreachable!()
            };
            let allow = head
                .to_ascii_lowercase()
                .lines()
                .find_map(|l| l.strip_prefix("allow:").map(|v| v.trim().to_string()))
                .unwrap_or_default();
            for m in &takes {
                assert!(
                    allow.split(',').any(|a| a.trim() == m.to_ascii_lowercase()),
                    "{name}: Allow does not name {m}\n{head}"
                );
            }
        }
    }

    // Query strings that do not parse, repeated parameters, invalid UTF-8.
    for path in [
        "/api/logs?limit=abc",
        "/api/logs?start=-1",
        "/api/logs?start=1.5",
        "/api/logs?start=99999999999999999999999",
        "/api/get?key=a&key=b",
        "/api/keys?limit=1&limit=2",
        "/api/get?key=%FF%FE",
        "/api/get?key=a&consistency=stale&consistency=stale",
        "/api/keys?prefix=%C3%28",
    ] {
        let a = raw(&addrs[1], &request("GET", path, "", b"")).await;
        let status = check(path, &contract.allowed("GET", path), &a);
        assert!(matches!(status, 200 | 400 | 404), "{path}: {a:?}");
    }

    // Bodies and lengths over the limit: refused from Content-Length, naming the limit.
    for path in ["/api/set", "/api/cas", "/admin/promote", "/admin/init"] {
        let head = format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000\r\n\r\n");
        let started = Instant::now();
        let a = raw(&addrs[2], head.as_bytes()).await;
        assert_eq!(
            check(path, &contract.allowed("POST", path), &a),
            413,
            "{path}: {a:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{path}: 413 took {:?}",
            started.elapsed()
        );
        let Answer::Response { body, .. } = &a else {
            unreachable!()
        };
        assert!(
            String::from_utf8_lossy(body).contains("65536"),
            "{path}: the 413 does not name the limit: {}",
            String::from_utf8_lossy(body)
        );
        let a = raw(&addrs[2], &request("POST", path, "", &vec![b'x'; 70_000])).await;
        assert_eq!(
            check(path, &contract.allowed("POST", path), &a),
            413,
            "{path} (sent whole): {a:?}"
        );
    }

    // The HTTP parser's own refusals: URI and headers too large, garbage request lines.
    let long_uri = format!("/api/get?key={}", "k".repeat(100_000));
    assert_eq!(
        check(
            "long uri",
            &contract.allowed("GET", "/api/get"),
            &raw(&addrs[0], &request("GET", &long_uri, "", b"")).await
        ),
        414
    );
    let big_header = format!("x-big: {}\r\n", "h".repeat(500_000));
    let status = check(
        "big header",
        &contract.allowed("GET", "/api/status"),
        &raw(&addrs[0], &request("GET", "/api/status", &big_header, b"")).await,
    );
    assert!(matches!(status, 431 | 0), "big header: {status}");
    for garbage in [
        &b"\x00\x01\x02\x03\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /api/status HTTP/1.1\r\nbad header line\r\n\r\n",
        b"POST /api/set HTTP/1.1\r\ncontent-length: -5\r\n\r\n",
        b"POST /api/set HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00",
    ] {
        tally(
            garbage,
            &String::from_utf8_lossy(garbage),
            &raw(&addrs[0], garbage).await,
        );
    }

    // Deep JSON and JSON of the wrong shapes.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    for body in [
        deep.as_bytes(),
        b"{\"key\": \"a\", \"value\": \"\xff\"}",
        b"null",
        b"\"s\"",
    ] {
        let a = raw(&addrs[1], &request("POST", "/api/set", "", body)).await;
        let status = check("json body", &contract.allowed("POST", "/api/set"), &a);
        assert!(matches!(status, 400 | 413), "{a:?}");
    }

    // Seeded mutations of valid requests: truncated, byte-flipped, bytes inserted.
    let templates: Vec<Vec<u8>> = vec![
        request(
            "POST",
            "/api/set",
            "content-type: application/json\r\n",
            br#"{"key":"fz","value":"v"}"#,
        ),
        request(
            "POST",
            "/api/cas",
            "",
            br#"{"key":"fz","expected":"v","value":"w"}"#,
        ),
        request("GET", "/api/get?key=fz&consistency=stale", "", b""),
        request("DELETE", "/api/delete?key=fz", "", b""),
        request("GET", "/api/keys?prefix=f&limit=5", "", b""),
        request("GET", "/api/logs?start=1&limit=3", "", b""),
        request("POST", "/admin/promote", "", br#"{"id":12345}"#),
        request("POST", "/admin/remove", "", br#"{"id":12345}"#),
    ];
    // Sent 32 at a time: a cut-off request waits out the header timeout.
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut sent = 0;
    while Instant::now() < deadline {
        let mut batch = Vec::new();
        for _ in 0..32 {
            let mut req = templates[rng.random_range(0..templates.len())].clone();
            match rng.random_range(0..3) {
                0 => req.truncate(rng.random_range(0..req.len())),
                1 => {
                    for _ in 0..rng.random_range(1..4) {
                        let i = rng.random_range(0..req.len());
                        req[i] ^= 1 << rng.random_range(0..8);
                    }
                }
                _ => {
                    let i = rng.random_range(0..req.len());
                    let junk: Vec<u8> = (0..rng.random_range(1..8)).map(|_| rng.random()).collect();
                    req.splice(i..i, junk);
                }
            }
            let addr = addrs[rng.random_range(0..addrs.len())].clone();
            batch.push(tokio::spawn(async move {
                let a = raw(&addr, &req).await;
                (req, a)
            }));
        }
        for task in batch {
            let (req, a) = task.await.expect("mutation task");
            tally(
                &req,
                &format!("mutation {sent}: {:?}", String::from_utf8_lossy(&req)),
                &a,
            );
            sent += 1;
        }
    }
    eprintln!("{sent} mutated requests; answers by status (0 = closed): {counts:?}");

    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.expect("canary writer");
    assert!(
        acked.len() > 100,
        "the canary writer got only {} writes through",
        acked.len()
    );
    for (key, value) in &acked {
        let (s, body) = c.get(leader, &format!("/api/get?key={key}")).await;
        assert_eq!(
            (s, body["value"].as_str()),
            (200, Some(value.as_str())),
            "acknowledged {key} lost"
        );
    }
    assert_eq!(c.voters(leader).await, voters_before, "membership changed");
    let mut c = Arc::into_inner(c).expect("only owner");
    for i in 0..3 {
        assert!(c.nodes[i].is_running(), "node {i} died");
    }
}

/// Limits short enough for a test: 1 s to send a request head, 2 s of idleness.
const SHORT_TIMEOUTS: &str =
    "limits:\n  headerReadTimeoutMs: 1000\n  idleTimeoutMs: 2000\n  requestTimeoutMs: 1000\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_clients_are_closed_and_do_not_starve_others() {
    let mut c = Cluster::start(1, SHORT_TIMEOUTS);
    c.wait_leader(Duration::from_secs(15)).await;
    let addr = format!("127.0.0.1:{}", c.nodes[0].api_port);

    // 500 sockets that connect and say nothing, one with half a request line, one trickling a
    // header a byte every 200 ms (it would take minutes to finish).
    let mut silent = Vec::new();
    for _ in 0..500 {
        silent.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    let mut partial = TcpStream::connect(&addr).await.expect("connect");
    partial.write_all(b"GET /api/sta").await.expect("write");
    let trickle_addr = addr.clone();
    let trickler = tokio::spawn(async move {
        let mut s = TcpStream::connect(&trickle_addr).await.expect("connect");
        let started = Instant::now();
        for b in b"GET /api/status HTTP/1.1\r\nx-slow: "
            .iter()
            .chain(b"a".repeat(10_000).iter())
        {
            if s.write_all(&[*b]).await.is_err() {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("a trickled header was never cut off");
    });

    // Others are served meanwhile, promptly.
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let started = Instant::now();
        let (s, body) = c.set(0, &format!("busy/{i}"), "v").await;
        assert_eq!(s, 200, "{body}");
        worst = worst.max(started.elapsed());
    }
    assert!(
        worst < Duration::from_secs(1),
        "a write took {worst:?} next to 500 silent sockets"
    );

    // Every silent socket is closed by the server after the header timeout.
    let started = Instant::now();
    for (i, s) in silent
        .iter_mut()
        .chain(std::iter::once(&mut partial))
        .enumerate()
    {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            other => panic!("socket {i} not closed by the server: {other:?}"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closing took {:?}",
        started.elapsed()
    );
    let cut_after = tokio::time::timeout(Duration::from_secs(10), trickler)
        .await
        .expect("trickler cut off")
        .expect("trickler task");
    assert!(
        cut_after < Duration::from_secs(4),
        "trickled header held {cut_after:?}"
    );

    // A body that never arrives: 408 (nothing was applied), not 504 (outcome unknown), at the
    // request timeout (+1 s), and the connection closed after it.
    let mut stalled = TcpStream::connect(&addr).await.expect("connect");
    let started = Instant::now();
    stalled
        .write_all(b"POST /api/set HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"key\":")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match tokio::time::timeout(Duration::from_secs(6), stalled.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "no answer to a stalled body: {}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    let answer = check("stalled body", &BTreeSet::from([408]), &parse_answer(&got));
    assert_eq!(answer, 408, "{}", String::from_utf8_lossy(&got));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(4),
        "answered after {waited:?}"
    );
    let (s, body) = c.get(0, "/api/get?key=busy/0").await;
    assert_eq!(s, 200, "{body}");

    // A keep-alive client that goes idle is closed after the idle timeout, not the header one.
    let mut idle = TcpStream::connect(&addr).await.expect("connect");
    idle.write_all(b"GET /api/status HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 65536];
    let n = idle.read(&mut buf).await.expect("read");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let idle_since = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    idle.write_all(b"GET /api/status HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("still open after 1.5 s idle");
    let n = idle.read(&mut buf).await.expect("read");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "kept-alive request: {}",
        String::from_utf8_lossy(&buf[..n])
    );
    let idle_since = idle_since.max(Instant::now());
    let closed = tokio::time::timeout(Duration::from_secs(6), idle.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "idle connection not closed: {closed:?}"
    );
    let idle_for = idle_since.elapsed();
    assert!(
        idle_for >= Duration::from_millis(1800) && idle_for < Duration::from_secs(4),
        "closed after {idle_for:?} idle"
    );

    let (_, text) = c.get(0, "/metrics").await;
    let text = text.as_str().unwrap_or_default().to_string();
    let timed_out: f64 = text
        .lines()
        .filter(|l| l.starts_with("concord_http_connections_timed_out_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(timed_out >= 502.0, "timeouts counted: {timed_out}\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused_at_once_and_open_ones_keep_working() {
    let extra = "limits:\n  maxConnections: 20\n  headerReadTimeoutMs: 30000\n";
    let mut c = Cluster::start(1, extra);
    c.wait_leader(Duration::from_secs(15)).await;
    let addr = format!("127.0.0.1:{}", c.nodes[0].api_port);
    // One keep-alive client first, then fill the rest of the limit with silent sockets.
    let mut kept = TcpStream::connect(&addr).await.expect("connect");
    let ask = b"GET /api/status HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut buf = vec![0u8; 65536];
    kept.write_all(ask).await.expect("write");
    let n = kept.read(&mut buf).await.expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let mut held = Vec::new();
    for _ in 0..19 {
        held.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The next one is answered 503 at once and closed.
    let started = Instant::now();
    let a = raw(&addr, &request("GET", "/api/status", "", b"")).await;
    assert_eq!(
        check("over the limit", &BTreeSet::from([503]), &a),
        503,
        "{a:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refusal took {:?}",
        started.elapsed()
    );
    let Answer::Response { head, body, .. } = &a else {
        unreachable!()
    };
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    let v: Value = serde_json::from_slice(body).expect("json");
    assert_eq!(v["retryable"], true);
    // The connection already open keeps working.
    kept.write_all(ask).await.expect("write");
    let n = kept.read(&mut buf).await.expect("read");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Freed slots are usable again.
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, _) = c.get(0, "/api/status").await;
    assert_eq!(s, 200);
}
