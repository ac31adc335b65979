//! `concordctl watch`: the seed API's Server-Sent Events, printed one change per line. A
//! dropped stream is resumed (from the next endpoint if need be) with `Last-Event-ID`, so the
//! output has every change once, in order, across reconnects.

use std::time::Duration;

use serde_json::Value;

use crate::client::encode;

/// One SSE frame: its event name, id and data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    pub event: String,
    pub id: String,
    pub data: String,
}

/// Reads SSE frames out of the bytes received so far; what is left is an incomplete frame.
pub fn frames(buffer: &mut Vec<u8>) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
        let block: Vec<u8> = buffer.drain(..end + 2).collect();
        let mut f = Frame::default();
        for line in String::from_utf8_lossy(&block).lines() {
            if let Some(v) = line.strip_prefix("event:") {
                f.event = v.trim_start().to_string();
            } else if let Some(v) = line.strip_prefix("id:") {
                f.id = v.trim_start().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                f.data.push_str(v.trim_start());
            }
        }
        if !f.event.is_empty() {
            out.push(f);
        }
    }
    out
}

/// A change as one line of text.
pub fn line(f: &Frame) -> String {
    let d: Value = serde_json::from_str(&f.data).unwrap_or(Value::Null);
    let text = |name: &str| {
        d[name]
            .as_str()
            .map(str::to_string)
            .or_else(|| {
                d[format!("{name}Base64")]
                    .as_str()
                    .map(|b| format!("base64:{b}"))
            })
            .unwrap_or_default()
    };
    match f.event.as_str() {
        "put" => format!(
            "PUT {} {} (revision {})",
            text("key"),
            text("value"),
            d["revision"]
        ),
        "delete" => format!("DELETE {} (revision {})", text("key"), d["revision"]),
        other => format!("{other} {}", f.data),
    }
}

pub struct WatchArgs<'a> {
    pub endpoints: &'a [String],
    pub tls: &'a crate::client::ClientTls,
    /// A signed-in client's token (`concordctl --user`).
    pub token: Option<&'a str>,
    pub key: &'a str,
    pub prefix: bool,
    pub from_revision: Option<u64>,
    pub prev_value: bool,
    pub json: bool,
}

/// Streams until the server ends the stream (a compacted start) or the process is stopped.
pub async fn run(args: WatchArgs<'_>) -> Result<(), String> {
    // No overall timeout: a watch lasts. Connecting and each read are bounded instead.
    let http = args
        .tls
        .http_builder()
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;
    let which = if args.prefix { "prefix" } else { "key" };
    let mut query = format!("{which}={}", encode(args.key));
    if let Some(r) = args.from_revision {
        query.push_str(&format!("&fromRevision={r}"));
    }
    if args.prev_value {
        query.push_str("&prevValue=true");
    }
    let mut last_id: Option<String> = None;
    let mut failures = 0u32;
    loop {
        for ep in args.endpoints {
            let mut req = http.get(format!("{}/api/watch?{query}", ep.trim_end_matches('/')));
            if let Some(token) = args.token {
                req = req.bearer_auth(token);
            }
            if let Some(id) = &last_id {
                req = req.header("Last-Event-ID", id);
            }
            let mut resp = match req.send().await {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    if status.as_u16() != 503 {
                        return Err(format!("HTTP {status}: {body}"));
                    }
                    continue;
                }
                Err(_) => continue,
            };
            failures = 0;
            let mut buffer = Vec::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                buffer.extend_from_slice(&chunk);
                for f in frames(&mut buffer) {
                    if !f.id.is_empty() {
                        last_id = Some(f.id.clone());
                    }
                    match f.event.as_str() {
                        "progress" => continue,
                        "compacted" => {
                            return Err(format!("the start revision was compacted: {}", f.data))
                        }
                        _ if args.json => println!("{}", f.data),
                        _ => println!("{}", line(&f)),
                    }
                }
            }
        }
        failures += 1;
        if failures > 30 {
            return Err("no endpoint has served the watch for 30 attempts".into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until `key` is deleted at or after revision `from` (an SSE watch on any endpoint).
pub async fn until_deleted(
    client: &crate::client::Client,
    key: &str,
    from: u64,
) -> Result<(), String> {
    let endpoints = client.endpoints();
    let http = client
        .tls()
        .http_builder()
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let mut next = from;
    loop {
        for ep in endpoints {
            let url = format!(
                "{}/api/watch?key={}&fromRevision={next}",
                ep.trim_end_matches('/'),
                encode(key)
            );
            let mut req = http.get(url);
            if let Some(token) = client.token() {
                req = req.bearer_auth(token);
            }
            let Ok(mut resp) = req.send().await else {
                continue;
            };
            if !resp.status().is_success() {
                continue;
            }
            let mut buffer = Vec::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                buffer.extend_from_slice(&chunk);
                for f in frames(&mut buffer) {
                    if f.event == "delete" || f.event == "compacted" {
                        // Compacted: it changed since, and a lock key is written once.
                        return Ok(());
                    }
                    if let Some(r) = f.id.split('.').next().and_then(|r| r.parse::<u64>().ok()) {
                        next = next.max(r + 1);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_read_whole_and_partial_ones_wait() {
        let mut b = b"event: put\nid: 7\ndata: {\"key\":\"a\",\"value\":\"1\",\"revision\":7}\n\nevent: progress\nid: 9\nda".to_vec();
        let got = frames(&mut b);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, "7");
        assert_eq!(line(&got[0]), "PUT a 1 (revision 7)");
        b.extend_from_slice(b"ta: {\"revision\":9}\n\n");
        assert_eq!(frames(&mut b)[0].event, "progress");
        assert!(b.is_empty());
    }
}
