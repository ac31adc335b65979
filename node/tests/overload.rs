//! Overload: 2,000 connections at once, each writing a 1 MiB value, against a real 3-node
//! cluster. What the server cannot take it refuses at once (429 to the client holding the budget, 503 to others; before reading
//! the body); what it admits it serves in bounded time; its memory stays under the documented
//! ceiling; no acknowledged write is lost and no node dies.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Cluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONNECTIONS: usize = 2000;
const VALUE_BYTES: usize = 1024 * 1024;
const IN_FLIGHT_BYTES: u64 = 32 * 1024 * 1024;
const LOG_MEMORY_BYTES: u64 = 64 * 1024 * 1024;
const HISTORY_BYTES: u64 = 16 * 1024 * 1024;
/// The ceiling docs/operations.md gives: 150 MiB + 4 x maxInFlightBytes + maxLogMemoryBytes +
/// 2 x compaction.maxHistoryBytes + 1.5 x the data (here at most 16 keys of 1 MiB).
const CEILING_BYTES: u64 = 150 * 1024 * 1024
    + 4 * IN_FLIGHT_BYTES
    + LOG_MEMORY_BYTES
    + 2 * HISTORY_BYTES
    + 24 * 1024 * 1024;

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// One write as a careful client sends a large body: the head with `Expect: 100-continue`,
/// the body only once the server says go on. Returns the final status (0: connection lost).
async fn big_write(addr: String, body: Arc<Vec<u8>>) -> (u16, Duration) {
    write_from([127, 0, 0, 1].into(), addr, body).await
}

/// [`big_write`] from a chosen local address: the server tells clients apart by address.
async fn write_from(source: std::net::IpAddr, addr: String, body: Arc<Vec<u8>>) -> (u16, Duration) {
    let started = Instant::now();
    let attempt = async {
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        socket.bind((source, 0).into()).ok()?;
        let mut s = socket.connect(addr.parse().ok()?).await.ok()?;
        let head = format!(
            "POST /api/set HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nexpect: 100-continue\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut sent_body = false;
        loop {
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            if buf.starts_with(b"HTTP/1.1 100") && !sent_body {
                s.write_all(&body).await.ok()?;
                sent_body = true;
                buf.drain(..end + 4);
                continue;
            }
            break;
        }
        let status = std::str::from_utf8(buf.get(9..12)?).ok()?.parse().ok()?;
        Some(status)
    };
    let status = tokio::time::timeout(Duration::from_secs(60), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(0);
    (status, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_connections_of_1_mib_values_are_admitted_or_refused_within_memory() {
    let extra = format!(
        "limits:\n  maxInFlightBytes: {IN_FLIGHT_BYTES}\n  maxValueBytes: {VALUE_BYTES}\n  maxRequestBytes: {}\ncompaction:\n  maxHistoryBytes: {HISTORY_BYTES}\n",
        VALUE_BYTES + 4096
    );
    let mut c = Cluster::configure(3, &extra, Vec::new());
    for n in &c.nodes {
        let text = std::fs::read_to_string(&n.config).expect("config");
        let text = text.replacen(
            "raft:\n",
            &format!("raft:\n  maxLogMemoryBytes: {LOG_MEMORY_BYTES}\n"),
            1,
        );
        std::fs::write(&n.config, text).expect("config");
    }
    for i in 0..3 {
        c.spawn(i);
    }
    let leader = c.wait_leader(Duration::from_secs(15)).await;
    let pids: Vec<u32> = c.nodes.iter().map(|n| n.pid().expect("running")).collect();
    let addrs: Vec<String> = c
        .nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.api_port))
        .collect();
    let c = Arc::new(c);

    // Memory sampled through the storm.
    let before: Vec<u64> = pids.iter().map(|p| rss_bytes(*p)).collect();
    let peaks: Arc<Vec<AtomicU64>> = Arc::new(pids.iter().map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peaks, done, pids) = (peaks.clone(), done.clone(), pids.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                for (pid, peak) in pids.iter().zip(peaks.iter()) {
                    peak.fetch_max(rss_bytes(*pid), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // A small writer beside the storm: what it has acknowledged must all be there after.
    let canary = {
        let (c, done) = (c.clone(), done.clone());
        tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            let mut n = 0u64;
            while !done.load(Ordering::Relaxed) {
                let (key, value) = (format!("canary/{n:05}"), format!("v{n}"));
                if c.set((n % 3) as usize, &key, &value).await.0 == 200 {
                    acked.insert(key, value);
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        })
    };

    // 16 keys, each value filled with its writer's own letter: 208 distinct bodies, built
    // before the storm so that all 2,000 writers start together.
    let bodies: Vec<Arc<Vec<u8>>> = (0..208)
        .map(|i| {
            let fill = b'a' + (i % 26) as u8;
            let value = String::from_utf8(vec![fill; VALUE_BYTES - 64]).expect("ascii");
            Arc::new(
                serde_json::to_vec(
                    &serde_json::json!({ "key": format!("big/{}", i % 16), "value": value }),
                )
                .expect("json"),
            )
        })
        .collect();
    // Another client, from another address, writing small values through the storm: the server
    // is busy for it too (503), but it is not the one hogging it (never 429).
    let bystander = {
        let (addr, done) = (addrs[leader].clone(), done.clone());
        tokio::spawn(async move {
            let body = Arc::new(br#"{"key":"bystander","value":"small"}"#.to_vec());
            let mut answers: BTreeMap<u16, usize> = BTreeMap::new();
            while !done.load(Ordering::Relaxed) {
                let (status, _) =
                    write_from([127, 0, 0, 2].into(), addr.clone(), body.clone()).await;
                *answers.entry(status).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            answers
        })
    };
    let started = Instant::now();
    let storm: Vec<_> = (0..CONNECTIONS)
        .map(|i| tokio::spawn(big_write(addrs[i % 3].clone(), bodies[i % 208].clone())))
        .collect();
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    let mut admitted = Vec::new();
    let mut refused_slowest = Duration::ZERO;
    for task in storm {
        let (status, took) = task.await.expect("writer task");
        *by_status.entry(status).or_default() += 1;
        match status {
            200 => admitted.push(took),
            503 | 429 => refused_slowest = refused_slowest.max(took),
            _ => {}
        }
    }
    let storm_took = started.elapsed();
    done.store(true, Ordering::Relaxed);
    sampler.await.expect("sampler");
    let acked = canary.await.expect("canary");
    let bystander = bystander.await.expect("bystander");
    admitted.sort();
    let p99 = admitted
        .get(admitted.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or_default();
    let mib = |b: u64| b / (1024 * 1024);
    let peaks: Vec<u64> = peaks.iter().map(|p| p.load(Ordering::Relaxed)).collect();
    let peak = peaks.iter().copied().max().unwrap_or(0);
    eprintln!(
        "RSS per node (leader {leader}): before {:?} MiB, peak {:?} MiB",
        before.iter().map(|b| mib(*b)).collect::<Vec<_>>(),
        peaks.iter().map(|b| mib(*b)).collect::<Vec<_>>()
    );
    eprintln!(
        "{CONNECTIONS} connections x 1 MiB in {storm_took:?}: answers {by_status:?}; bystander's answers {bystander:?}; admitted p99 {p99:?}; slowest refusal {refused_slowest:?}; peak RSS {} MiB (ceiling {} MiB)",
        peak / (1024 * 1024),
        CEILING_BYTES / (1024 * 1024)
    );
    let unexpected: usize = by_status
        .iter()
        .filter(|(s, _)| !matches!(s, 200 | 503 | 429))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        unexpected, 0,
        "answers other than 200 and 503: {by_status:?}"
    );
    assert!(admitted.len() >= 16, "too few admitted: {by_status:?}");
    assert!(
        by_status.get(&429).copied().unwrap_or(0) > 0,
        "the client holding the budget was never told it is the one (429): {by_status:?}"
    );
    assert!(
        bystander.keys().all(|s| matches!(s, 200 | 503)),
        "the bystander got answers other than 200 and 503: {bystander:?}"
    );
    assert!(
        bystander.get(&200).copied().unwrap_or(0) > 0,
        "the bystander never got through: {bystander:?}"
    );
    assert!(p99 < Duration::from_secs(10), "admitted p99 {p99:?}");
    assert!(
        refused_slowest < Duration::from_secs(10),
        "a refusal took {refused_slowest:?}"
    );
    assert!(
        peak < CEILING_BYTES,
        "peak RSS {} MiB over the ceiling",
        peak / (1024 * 1024)
    );
    for (key, value) in &acked {
        let (s, body) = c.get(leader, &format!("/api/get?key={key}")).await;
        assert_eq!(
            (s, body["value"].as_str()),
            (200, Some(value.as_str())),
            "{key} lost"
        );
    }
    for k in 0..16 {
        let (s, body) = c.get(leader, &format!("/api/get?key=big/{k}")).await;
        if s == 200 {
            let v = body["value"].as_str().unwrap_or_default();
            assert_eq!(
                v.len(),
                VALUE_BYTES - 64,
                "big/{k} has a value of the wrong size"
            );
            assert!(
                v.bytes().all(|b| b == v.as_bytes()[0]),
                "big/{k} is a mix of writes"
            );
        }
    }
    let mut c = Arc::into_inner(c).expect("sole owner");
    for i in 0..3 {
        assert!(c.nodes[i].is_running(), "node {i} died");
    }
}
