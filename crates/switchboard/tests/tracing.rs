//! One publish is one trace across services: ws-gateway, core and
//! sse-gateway export spans by OTLP to a collector run by the test, and
//! the spans share a trace id with the expected parent/child links.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::procs::{Nats, Service, TempDir, free_port};
use common::{Sse, WAIT, Ws};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: Vec<KeyValue>,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<String> {
        self.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| match &v.value {
                Some(AnyValue::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
    }
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("lock");
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(AnyValue::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                        attributes: span.attributes,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publish_is_one_trace_across_services() {
    let collector = Collector::default();
    let port = free_port();
    let server = collector.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(server))
            .serve(([127, 0, 0, 1], port).into())
            .await
            .expect("collector serves");
    });
    let endpoint = format!("http://127.0.0.1:{port}");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];

    let dir = TempDir::new("tracing");
    let nats = Nats::start(&dir.0);
    let core = Service::start_with_env("core", &nats.url(), &[], &env);
    let ws_gateway = Service::start_with_env("ws-gateway", &nats.url(), &[], &env);
    let sse_gateway = Service::start_with_env("sse-gateway", &nats.url(), &[], &env);
    for service in [&core, &ws_gateway, &sse_gateway] {
        service.wait_ready(true).await;
    }
    let mut sse = Sse::connect(&sse_gateway.url("/sse/rooms/traced?user=reader"), &[])
        .await
        .expect("SSE opens");
    sse.next_named("subscribed").await;
    let mut ws = Ws::connect(&ws_gateway.ws_url("/ws?user=writer")).await;
    let ack = ws.publish("traced", "follow me", "t-1").await;
    let cursor = ack["cursor"].as_str().expect("cursor").to_owned();
    let delivered = sse.next_named("message").await;
    assert_eq!(delivered.id.as_deref(), Some(cursor.as_str()));

    // Spans arrive in batches; wait (bounded) for the whole chain.
    let find = |spans: &[Received], service: &str, name: &str, trace: &[u8]| {
        spans
            .iter()
            .find(|s| s.service == service && s.name == name && s.trace_id == trace)
            .cloned()
    };
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    let chain = loop {
        let spans = collector.spans.lock().expect("lock").clone();
        let publish = spans.iter().find(|s| {
            s.service == "switchboard-ws-gateway"
                && s.name == "publish"
                && s.attribute("cursor").as_deref() == Some(cursor.as_str())
        });
        if let Some(publish) = publish {
            let trace = publish.trace_id.clone();
            let chain = (
                publish.clone(),
                find(&spans, "switchboard-ws-gateway", "nats.request", &trace),
                find(&spans, "switchboard-core", "core.publish", &trace),
                find(&spans, "switchboard-core", "jetstream.append", &trace),
                find(&spans, "switchboard-sse-gateway", "deliver", &trace),
            );
            if let (p, Some(r), Some(c), Some(a), Some(d)) = chain {
                break (p, r, c, a, d);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "incomplete trace; spans received: {:#?}",
            spans
                .iter()
                .map(|s| (&s.service, &s.name))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (publish, request, core_publish, append, deliver) = chain;
    assert!(publish.parent_span_id.is_empty(), "the publish is the root");
    assert_eq!(
        request.parent_span_id, publish.span_id,
        "NATS request under publish"
    );
    assert_eq!(
        core_publish.parent_span_id, request.span_id,
        "core continues the request"
    );
    assert_eq!(
        append.parent_span_id, core_publish.span_id,
        "append under the core span"
    );
    assert_eq!(
        deliver.parent_span_id, append.span_id,
        "delivery continues the append"
    );
    assert_eq!(deliver.attribute("room").as_deref(), Some("traced"));
    assert_eq!(publish.attribute("transport").as_deref(), Some("websocket"));
    // Message text never appears in span attributes.
    let spans = collector.spans.lock().expect("lock").clone();
    assert!(
        spans
            .iter()
            .flat_map(|s| s.attributes.iter())
            .all(|kv| !format!("{:?}", kv.value).contains("follow me")),
        "no message text in spans"
    );
}
