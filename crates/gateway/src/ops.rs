use crate::Gateway;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use std::sync::Arc;

const DEMO_PAGE: &str = include_str!("../assets/index.html");

/// `/healthz`, `/readyz` and `/metrics` (spec §8), served by every role.
pub fn ops_routes(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(gateway)
}

/// The built-in chat page at `/`.
pub fn demo_page() -> Router {
    Router::new()
        .route("/", get(|| async { Html(DEMO_PAGE) }))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
}

async fn readyz(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    if gateway.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        switchboard_telemetry::render_metrics(),
    )
}
