//! Logs and traces.
//!
//! Logs: human-readable by default, JSON with `--log-format json`; verbosity from `CONCORD_LOG`.
//! Traces: exported over OTLP/gRPC when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` is set (service
//! name from `OTEL_SERVICE_NAME`, batching from the `OTEL_BSP_*` variables), off otherwise. W3C
//! trace context (`traceparent`) is taken from HTTP requests and carried through the forwarding
//! gRPC call, so one trace shows client → follower → leader → commit.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::Context;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

// One node per process: its Raft id and current term go on every log line. openraft spawns
// tasks that do not inherit our spans, so a span alone would miss some lines.
static NODE_ID: AtomicU64 = AtomicU64::new(0);
static TERM: AtomicU64 = AtomicU64::new(0);

pub fn set_log_node_id(id: u64) {
    NODE_ID.store(id, Ordering::Relaxed);
}

pub fn set_log_term(term: u64) {
    TERM.store(term, Ordering::Relaxed);
}

/// Wraps a formatter to stamp `node`, `id` and `term` on every line.
struct WithNode<F> {
    inner: F,
    node: String,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithNode<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let (id, term) = (
            NODE_ID.load(Ordering::Relaxed),
            TERM.load(Ordering::Relaxed),
        );
        if self.json {
            if let Some(rest) = line.strip_prefix('{') {
                let node = serde_json::to_string(&self.node).unwrap_or_else(|_| "\"?\"".into());
                return write!(
                    writer,
                    "{{\"node\":{node},\"id\":{id},\"term\":{term},{rest}"
                );
            }
        }
        let body = line.strip_suffix('\n').unwrap_or(&line);
        let mut suffix = String::new();
        let _ = write!(suffix, " node={} id={id} term={term}", self.node);
        writeln!(writer, "{body}{suffix}")
    }
}

/// Flushes buffered spans when dropped (at exit).
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("concord-node: flushing traces: {e}");
            }
        }
    }
}

fn otlp_provider() -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .ok()
        .filter(|e| !e.trim().is_empty())?;
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("concord-node: OTLP exporter for {endpoint} not started: {e}");
            return None;
        }
    };
    Some(
        opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(opentelemetry_sdk::Resource::builder().build())
            .build(),
    )
}

/// Installs the global subscriber. Must run inside the Tokio runtime (the span exporter uses it).
pub fn init(format: LogFormat, node: &str) -> TelemetryGuard {
    let filter = || {
        EnvFilter::try_from_env("CONCORD_LOG")
            .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn,h2=warn,tower=warn,hyper=warn"))
    };
    let fmt = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .event_format(WithNode {
                inner: tracing_subscriber::fmt::format().json(),
                node: node.to_string(),
                json: true,
            })
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .event_format(WithNode {
                inner: tracing_subscriber::fmt::format().with_ansi(false),
                node: node.to_string(),
                json: false,
            })
            .boxed(),
    };
    let provider = otlp_provider();
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("concord-node"))
            .with_filter(filter())
    });
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter()))
        .with(otel)
        .init();
    TelemetryGuard { provider }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Makes `span` a child of the trace context in HTTP `headers`, if any.
pub fn adopt_http_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    let parent: Context =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    // Fails only when the span is disabled (filtered out): then there is nothing to link.
    let _ = span.set_parent(parent);
}

/// Makes `span` a child of the trace context carried in gRPC metadata, if any.
pub fn adopt_grpc_parent(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    let parent: Context =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&MetadataExtractor(metadata)));
    // Fails only when the span is disabled (filtered out): then there is nothing to link.
    let _ = span.set_parent(parent);
}

/// Writes the current span's trace context into outgoing gRPC metadata.
pub fn inject_grpc(metadata: &mut tonic::metadata::MetadataMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut MetadataInjector(metadata))
    });
}
