//! The SSE transport and the HTTP API (spec §4).
//!
//! `GET /sse/rooms/{room}` is one room per `text/event-stream`, with the
//! cursor as the SSE `id:` so browsers resume by themselves through
//! `Last-Event-ID` (or `?since=`). The JSON API publishes, pages history
//! and reads presence. Like every transport this crate only adapts HTTP to
//! the gateway's `Session` and `Gateway` calls; it decides nothing itself.

mod api;
mod native;
mod stream;

pub use api::PublishBody;
pub use stream::resume_from;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, Method};
use std::sync::Arc;
use switchboard_gateway::Gateway;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

/// `/sse/rooms/{room}` and `/api/rooms/{room}/…`, with CORS for browsers
/// on other origins (restricted to `--allowed-origins` when set).
pub fn routes(gateway: Arc<Gateway>) -> Router {
    let cors = cors(&gateway);
    Router::new()
        .route("/sse/rooms/{room}", axum::routing::get(stream::sse))
        .merge(api::routes())
        .with_state(gateway)
        .layer(cors)
}

/// `GET /sse/rooms/{room}` served on the raw socket when it is a
/// connection's first request (see the gateway's `front`).
pub fn native_route(gateway: Arc<Gateway>) -> Arc<dyn switchboard_gateway::front::NativeRoute> {
    Arc::new(native::NativeSse::new(gateway))
}

/// The HTTP API alone (the WebSocket gateway serves it too).
pub fn api_routes(gateway: Arc<Gateway>) -> Router {
    let cors = cors(&gateway);
    api::routes().with_state(gateway).layer(cors)
}

fn cors(gateway: &Gateway) -> CorsLayer {
    let origins: Vec<HeaderValue> = gateway
        .allowed_origins()
        .iter()
        .filter(|o| o.as_str() != "*")
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    let allow_origin = if origins.is_empty() {
        AllowOrigin::from(Any)
    } else {
        AllowOrigin::list(origins)
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            http::header::AUTHORIZATION,
            http::header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("last-event-id"),
        ])
}
