//! Every bad request gets its 4xx and a JSON body naming the problem; the node keeps serving.

mod common;

use std::time::Duration;

use common::Cluster;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_nothing_crashes() {
    let extra = "limits:\n  maxKeyBytes: 16\n  maxValueBytes: 64\n  maxRequestBytes: 1024\n  maxListLimit: 50\n";
    let mut c = Cluster::start(3, extra);
    let leader = c.wait_leader(Duration::from_secs(15)).await;
    let f = (leader + 1) % 3;
    c.set_retry("present", "1", Duration::from_secs(5)).await;

    let long_key = "k".repeat(17);
    let long_value = "v".repeat(65);
    let cases: Vec<(&str, u16, (u16, serde_json::Value))> = vec![
        (
            "malformed json",
            400,
            c.post_raw(f, "/api/set", b"{\"key\":".to_vec()).await,
        ),
        (
            "non-object body",
            400,
            c.post_raw(f, "/api/set", b"[1,2]".to_vec()).await,
        ),
        (
            "missing key",
            400,
            c.post(f, "/api/set", &json!({ "value": "v" })).await,
        ),
        (
            "missing value",
            400,
            c.post(f, "/api/set", &json!({ "key": "k" })).await,
        ),
        (
            "non-string value",
            400,
            c.post(f, "/api/set", &json!({ "key": "k", "value": 5 }))
                .await,
        ),
        (
            "empty key",
            400,
            c.post(f, "/api/set", &json!({ "key": "", "value": "v" }))
                .await,
        ),
        (
            "key over limit",
            413,
            c.post(f, "/api/set", &json!({ "key": long_key, "value": "v" }))
                .await,
        ),
        (
            "value over limit",
            413,
            c.post(f, "/api/set", &json!({ "key": "k", "value": long_value }))
                .await,
        ),
        (
            "body over limit",
            413,
            c.post_raw(f, "/api/set", vec![b' '; 4096]).await,
        ),
        ("get without key", 400, c.get(f, "/api/get").await),
        ("get absent", 404, c.get(f, "/api/get?key=absent").await),
        (
            "bad consistency",
            400,
            c.get(f, "/api/get?key=present&consistency=maybe").await,
        ),
        (
            "delete absent",
            404,
            c.delete(f, "/api/delete?key=absent").await,
        ),
        (
            "cas without expected",
            400,
            c.post(f, "/api/cas", &json!({ "key": "k", "value": "v" }))
                .await,
        ),
        (
            "cas mismatch",
            409,
            c.post(
                f,
                "/api/cas",
                &json!({ "key": "present", "expected": "2", "value": "3" }),
            )
            .await,
        ),
        (
            "cas absent-required on present key",
            409,
            c.post(
                f,
                "/api/cas",
                &json!({ "key": "present", "expected": null, "value": "3" }),
            )
            .await,
        ),
        ("keys limit zero", 400, c.get(f, "/api/keys?limit=0").await),
        (
            "keys limit over max",
            400,
            c.get(f, "/api/keys?limit=51").await,
        ),
        (
            "keys limit not a number",
            400,
            c.get(f, "/api/keys?limit=ten").await,
        ),
        ("unknown endpoint", 404, c.get(f, "/api/nope").await),
    ];
    for (name, want, (got, body)) in &cases {
        assert_eq!(got, want, "{name}: {body}");
        assert!(
            body["error"].is_string(),
            "{name}: body has no error message: {body}"
        );
        assert!(body["retryable"].is_boolean(), "{name}: {body}");
    }
    // The 409 carries the current value.
    let (_, body) = &cases[14].2;
    assert_eq!(body["current"]["value"], "1");
    // Every node is still up and serving.
    for i in 0..3 {
        assert!(c.nodes[i].is_running(), "node {i} died");
        let (s, _) = c.get(i, "/api/get?key=present").await;
        assert_eq!(s, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_paginated_with_a_continuation_token() {
    let mut c = Cluster::start(1, "");
    c.wait_leader(Duration::from_secs(15)).await;
    for i in 0..25 {
        c.set_retry(&format!("page/{i:02}"), "v", Duration::from_secs(5))
            .await;
    }
    c.set_retry("other", "v", Duration::from_secs(5)).await;
    let mut all = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &token {
            Some(t) => format!("/api/keys?prefix=page/&limit=10&continue={t}"),
            None => "/api/keys?prefix=page/&limit=10".to_string(),
        };
        let (s, body) = c.get(0, &path).await;
        assert_eq!(s, 200, "{body}");
        pages += 1;
        all.extend(
            body["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap().to_string()),
        );
        match body["continue"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        all,
        (0..25).map(|i| format!("page/{i:02}")).collect::<Vec<_>>()
    );
}
