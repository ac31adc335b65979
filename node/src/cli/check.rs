//! `concordctl check`: a round trip of every endpoint, printing pass/fail per step.

use std::process::ExitCode;

use crate::client::{Client, ClientError};

pub async fn run(client: &Client) -> ExitCode {
    let key = format!("concordctl-check-{}", rand::random::<u32>());
    let mut failures = 0;
    let mut step = |name: &str, ok: bool, detail: String| {
        if ok {
            println!("PASS  {name}");
        } else {
            failures += 1;
            println!("FAIL  {name}: {detail}");
        }
    };
    let r = client.set(&key, "v1").await;
    step("set", r.is_ok(), format!("{r:?}"));
    let r = client.get(&key, false).await;
    step(
        "get (linearizable)",
        matches!(&r, Ok(v) if v["value"] == "v1"),
        format!("{r:?}"),
    );
    let r = client.get(&key, true).await;
    step("get (stale)", r.is_ok(), format!("{r:?}"));
    let r = client.keys("concordctl-check-", 1000, None).await;
    let listed = matches!(&r, Ok(v) if v["keys"].as_array().is_some_and(|a| a.iter().any(|k| k == key.as_str())));
    step("keys", listed, format!("{r:?}"));
    let r = client.cas(&key, Some("wrong"), "v2").await;
    step(
        "cas refused (409)",
        matches!(r, Err(ClientError::Status { status: 409, .. })),
        format!("{r:?}"),
    );
    let r = client.cas(&key, Some("v1"), "v2").await;
    step("cas swapped", r.is_ok(), format!("{r:?}"));
    let r = client.delete(&key).await;
    step("delete", r.is_ok(), format!("{r:?}"));
    let r = client.get(&key, false).await;
    step(
        "get after delete (404)",
        matches!(r, Err(ClientError::Status { status: 404, .. })),
        format!("{r:?}"),
    );
    let r = client.status().await;
    step(
        "status",
        matches!(&r, Ok(v) if v["leader"].is_object()),
        format!("{r:?}"),
    );
    for path in ["/api/metrics", "/api/logs", "/metrics", "/livez", "/readyz"] {
        let r = client.raw_get(path).await;
        step(path, matches!(&r, Ok((200, _))), format!("{r:?}"));
    }
    if failures == 0 {
        println!("all checks passed");
        ExitCode::SUCCESS
    } else {
        println!("{failures} check(s) failed");
        ExitCode::FAILURE
    }
}
