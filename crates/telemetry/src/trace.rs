//! OpenTelemetry tracing: OTLP export when configured, W3C trace-context
//! propagation across NATS and gRPC.
//!
//! Trace spans use the target [`TRACE_TARGET`]. No layer listens to that
//! target unless an OTLP endpoint is configured, so without one the spans
//! are disabled at their call sites and cost nothing on the hot path.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::HashMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every span meant for traces.
pub const TRACE_TARGET: &str = "switchboard::trace";

/// W3C trace-context headers (`traceparent`, `tracestate`) of a span.
pub type TraceCarrier = HashMap<String, String>;

/// True when the standard variables ask for OTLP trace export.
pub fn otlp_configured() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v == "none");
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Builds the OTLP (gRPC) tracer provider. The exporter reads the
/// standard `OTEL_EXPORTER_OTLP_*` variables and the SDK reads
/// `OTEL_TRACES_SAMPLER[_ARG]`; `OTEL_SERVICE_NAME` and
/// `OTEL_RESOURCE_ATTRIBUTES` override the defaults. Needs a Tokio runtime.
pub(crate) fn provider(service: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|err| err.to_string())?;
    let mut resource = Resource::builder().with_attributes([
        opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        opentelemetry::KeyValue::new("service.namespace", "switchboard"),
    ]);
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(format!("switchboard-{service}"));
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

pub(crate) fn tracer(provider: &SdkTracerProvider) -> opentelemetry_sdk::trace::Tracer {
    provider.tracer("switchboard")
}

/// The trace context of `span`, to send along with a request or message.
/// Empty when tracing is off.
pub fn inject(span: &tracing::Span) -> TraceCarrier {
    let mut carrier = TraceCarrier::new();
    let context = span.context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut carrier);
    }
    carrier
}

/// Makes `span` a child of the remote span described by `carrier`.
pub fn set_remote_parent(span: &tracing::Span, carrier: &TraceCarrier) {
    if carrier.is_empty() || span.is_disabled() {
        return;
    }
    let context = TraceContextPropagator::new().extract(carrier);
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}

/// Records the span's trace id in its `trace_id` field, so log lines
/// written inside it can be matched with the trace.
pub fn record_trace_id(span: &tracing::Span) {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", span_context.trace_id().to_string());
    }
}
