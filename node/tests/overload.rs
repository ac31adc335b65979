//! Overload: 2,000 connections at once, each writing a 1 MiB value, against a real 3-node
//! cluster. What the server cannot take it refuses at once with a retryable 503 (before reading
//! the body); what it admits it serves in bounded time; its memory stays under the documented
//! ceiling; no acknowledged write is lost and no node dies.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Cluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONNECTIONS: usize = 2000;
const VALUE_BYTES: usize = 1024 * 1024;
const IN_FLIGHT_BYTES: u64 = 32 * 1024 * 1024;
const LOG_MEMORY_BYTES: u64 = 64 * 1024 * 1024;
/// The ceiling docs/operations.md gives: 150 MiB + 4 x maxInFlightBytes + maxLogMemoryBytes +
/// 2 x the data (here at most 16 keys of 1 MiB).
const CEILING_BYTES: u64 =
    150 * 1024 * 1024 + 4 * IN_FLIGHT_BYTES + LOG_MEMORY_BYTES + 32 * 1024 * 1024;

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
    let started = Instant::now();
    let attempt = async {
        let mut s = TcpStream::connect(&addr).await.ok()?;
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

// Fails today, so kept out of the suite until fixed (issue 12): admission works (over-budget
// requests get 503 before their body is read), but once 1 MiB writes are admitted on a 3-node
// cluster replication stops making progress — nearly every admitted write times out (504) and
// RSS grows to 1.8 GB at 200 connections. Run it with `cargo test --test overload -- --ignored`.
#[ignore = "1 MiB writes stall replication on a 3-node cluster (issue 12)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_connections_of_1_mib_values_are_admitted_or_refused_within_memory() {
    let extra = format!(
        "limits:\n  maxInFlightBytes: {IN_FLIGHT_BYTES}\n  maxValueBytes: {VALUE_BYTES}\n  maxRequestBytes: {}\n",
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
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done, pids) = (peak.clone(), done.clone(), pids.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                for pid in &pids {
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

    let started = Instant::now();
    let mut storm = Vec::new();
    for i in 0..CONNECTIONS {
        // 16 keys, each value filled with its writer's own letter.
        let fill = b'a' + (i % 26) as u8;
        let value = String::from_utf8(vec![fill; VALUE_BYTES - 64]).expect("ascii");
        let body = Arc::new(
            serde_json::to_vec(
                &serde_json::json!({ "key": format!("big/{}", i % 16), "value": value }),
            )
            .expect("json"),
        );
        storm.push(tokio::spawn(big_write(addrs[i % 3].clone(), body)));
    }
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    let mut admitted = Vec::new();
    let mut refused_slowest = Duration::ZERO;
    for task in storm {
        let (status, took) = task.await.expect("writer task");
        *by_status.entry(status).or_default() += 1;
        match status {
            200 => admitted.push(took),
            503 => refused_slowest = refused_slowest.max(took),
            _ => {}
        }
    }
    let storm_took = started.elapsed();
    done.store(true, Ordering::Relaxed);
    sampler.await.expect("sampler");
    let acked = canary.await.expect("canary");
    admitted.sort();
    let p99 = admitted
        .get(admitted.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or_default();
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "{CONNECTIONS} connections x 1 MiB in {storm_took:?}: answers {by_status:?}; admitted p99 {p99:?}; slowest refusal {refused_slowest:?}; peak RSS {} MiB (ceiling {} MiB)",
        peak / (1024 * 1024),
        CEILING_BYTES / (1024 * 1024)
    );
    let unexpected: usize = by_status
        .iter()
        .filter(|(s, _)| !matches!(s, 200 | 503))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        unexpected, 0,
        "answers other than 200 and 503: {by_status:?}"
    );
    assert!(admitted.len() >= 16, "too few admitted: {by_status:?}");
    assert!(
        by_status.get(&503).copied().unwrap_or(0) > 0,
        "nothing was refused: the bound did not bite"
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
