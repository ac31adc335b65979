//! Distributed tracing: a write sent to a follower with a W3C `traceparent` produces spans on
//! the follower and the leader, all in the caller's trace, received by a real OTLP endpoint.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Cluster;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use parking_lot::Mutex;

/// (trace id hex, span name, node attribute)
type Received = Arc<Mutex<Vec<(String, String, String)>>>;

struct Collector(Received);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock();
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for span in ss.spans {
                    let trace: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                    let node = span
                        .attributes
                        .iter()
                        .find(|kv| kv.key == "node")
                        .and_then(|kv| kv.value.as_ref())
                        .and_then(|v| match &v.value {
                            Some(AnyValue::StringValue(s)) => Some(s.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    got.push((trace, span.name, node));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_is_one_trace_across_follower_and_leader() {
    let received: Received = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let svc = TraceServiceServer::new(Collector(received.clone()));
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    let env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
            format!("http://127.0.0.1:{port}"),
        ),
        ("OTEL_SERVICE_NAME".to_string(), "concord-test".to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "100".to_string()),
    ];
    let mut c = Cluster::start_with_env(3, "", env);
    let leader = c.wait_leader(Duration::from_secs(15)).await;
    let follower = (leader + 1) % 3;
    let trace_id = format!("{:032x}", rand::random::<u128>() | 1);
    let resp = c
        .http
        .post(format!("{}/api/set", c.nodes[follower].api()))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&serde_json::json!({ "key": "traced", "value": "v" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    let leader_name = c.nodes[leader].name.clone();
    let follower_name = c.nodes[follower].name.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans: Vec<(String, String)> = received
            .lock()
            .iter()
            .filter(|(t, _, _)| *t == trace_id)
            .map(|(_, name, node)| (name.clone(), node.clone()))
            .collect();
        let has = |name: &str, node: &str| spans.iter().any(|(n, o)| n == name && o == node);
        if has("http.request", &follower_name)
            && has("peer.forward_write", &leader_name)
            && has("raft.propose", &leader_name)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "spans of trace {trace_id} so far: {spans:?}; all received: {}",
            received.lock().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
