//! `switchboard standalone`: everything in one process on the memory bus.

use crate::StartError;
use crate::config::StandaloneArgs;
use axum::Router;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use switchboard_bus::MemoryBus;
use switchboard_gateway::{Gateway, GatewayConfig, demo_page, ops_routes};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A running standalone server.
pub struct Standalone {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    gateway: Arc<Gateway>,
    tasks: JoinSet<()>,
}

impl Standalone {
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Graceful shutdown (spec §8): readiness goes false, listeners stop
    /// accepting, WebSockets close with 1012, SSE streams end, in-flight
    /// calls finish. Returns false if `grace` ran out first.
    pub async fn shutdown(mut self, grace: Duration) -> bool {
        self.gateway.drain();
        let all_done = async { while self.tasks.join_next().await.is_some() {} };
        let finished = tokio::time::timeout(grace, all_done).await.is_ok();
        if !finished {
            self.tasks.abort_all();
        }
        finished
    }
}

/// Binds both listeners and serves until [`Standalone::shutdown`].
pub async fn start(args: &StandaloneArgs) -> Result<Standalone, StartError> {
    switchboard_telemetry::prometheus();
    let limits = args.limits.limits()?;
    let core = args.retention.core_config(limits.max_text_bytes)?;
    let auth = args.auth.authenticator()?;
    let shutdown = CancellationToken::new();
    let gateway = Gateway::new(
        MemoryBus::new(core),
        GatewayConfig {
            limits,
            allowed_origins: args.limits.allowed_origins.clone(),
            auth,
        },
        shutdown.clone(),
    );
    let http = bind("HTTP", args.http_addr).await?;
    let grpc = bind("gRPC", args.grpc_addr).await?;
    let http_addr = local_addr("HTTP", &http, args.http_addr)?;
    let grpc_addr = local_addr("gRPC", &grpc, args.grpc_addr)?;

    let mut tasks = JoinSet::new();
    let router = http_router(gateway.clone());
    let stop = shutdown.clone();
    tasks.spawn(async move {
        let served = axum::serve(http, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(err) = served {
            tracing::error!(%err, "HTTP server failed");
        }
    });
    let grpc_gateway = gateway.clone();
    tasks.spawn(async move {
        if let Err(err) = switchboard_grpc::serve(grpc_gateway, grpc, shutdown).await {
            tracing::error!(%err, "gRPC server failed");
        }
    });
    tracing::info!(%http_addr, %grpc_addr, "switchboard standalone listening");
    Ok(Standalone {
        http_addr,
        grpc_addr,
        gateway,
        tasks,
    })
}

/// Every HTTP route a process with both gateways serves.
pub fn http_router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .merge(demo_page())
        .merge(ops_routes(gateway.clone()))
        .merge(switchboard_ws::routes(gateway.clone()))
        .merge(switchboard_sse::routes(gateway))
        .fallback(not_found)
}

async fn not_found(uri: Uri) -> Response {
    let body = serde_json::json!({
        "error": { "code": "not_found", "message": format!("no route for {}", uri.path()) }
    });
    (axum::http::StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

fn local_addr(
    what: &'static str,
    listener: &TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|source| StartError::Bind { what, addr, source })
}
