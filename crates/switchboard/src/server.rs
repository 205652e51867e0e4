//! Starts any role: binds its listeners, picks its bus, serves its routes.

use crate::StartError;
use crate::config::ServeArgs;
use axum::Router;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use switchboard_bus::{Bus, MemoryBus};
use switchboard_gateway::front::FrontConfig;
use switchboard_gateway::{Gateway, GatewayConfig, Listener, Peer, demo_page, ops_routes};
use switchboard_nats::{CoreService, NatsBus};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The roles of the one binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Core and both gateways in one process (memory bus, or NATS).
    Standalone,
    /// The one writer: JetStream room logs, presence, the gRPC API.
    Core,
    /// WebSocket clients and the HTTP API.
    WsGateway,
    /// SSE clients and the HTTP API.
    SseGateway,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Standalone => "standalone",
            Role::Core => "core",
            Role::WsGateway => "ws-gateway",
            Role::SseGateway => "sse-gateway",
        }
    }

    fn runs_core(self) -> bool {
        matches!(self, Role::Standalone | Role::Core)
    }
}

/// A running role.
pub struct Server {
    pub role: Role,
    pub http_addr: SocketAddr,
    /// The gRPC API, on the roles that serve it (standalone, core).
    pub grpc_addr: Option<SocketAddr>,
    gateway: Arc<Gateway>,
    tasks: JoinSet<()>,
}

impl Server {
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Graceful shutdown (spec §8): readiness goes false, listeners stop
    /// accepting, WebSockets close with 1012, SSE streams end, in-flight
    /// calls finish. Returns false if `grace` ran out first.
    pub async fn shutdown(mut self, grace: Duration) -> bool {
        self.gateway.drain();
        let all_done = async {
            while self.tasks.join_next().await.is_some() {}
            // The connections' own tasks are not among `tasks`: without
            // this the process could exit before they wrote their 1012.
            self.gateway.connections_closed().await;
        };
        let finished = tokio::time::timeout(grace, all_done).await.is_ok();
        if !finished {
            self.tasks.abort_all();
        }
        finished
    }
}

/// Starts `role` and serves until [`Server::shutdown`].
pub async fn start(role: Role, args: &ServeArgs) -> Result<Server, StartError> {
    switchboard_telemetry::prometheus();
    switchboard_telemetry::register_series();
    let limits = args.limits.limits()?;
    let core_config = args.retention.core_config(limits.max_text_bytes)?;
    let auth = args.auth.authenticator().await?;
    let nats = args.nats.config(role.name(), limits.max_frame_bytes)?;
    if args.grpc_keepalive_interval.is_zero()
        || args.grpc_keepalive_timeout.is_zero()
        || args.grpc_idle_timeout.is_zero()
    {
        return Err(StartError::Config(
            "--grpc-keepalive-interval, --grpc-keepalive-timeout and --grpc-idle-timeout must be positive"
                .into(),
        ));
    }
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();

    let (bus, core): (Arc<dyn Bus>, Option<CoreService>) = match (nats, role) {
        (None, Role::Standalone) => (MemoryBus::new(core_config), None),
        (None, _) => {
            return Err(StartError::Config(format!(
                "--nats-url (SWITCHBOARD_NATS_URL) is required for the {} role",
                role.name()
            )));
        }
        (Some(nats), _) => {
            let bus = NatsBus::connect(&nats)
                .await
                .map_err(|err| StartError::Config(err.to_string()))?;
            let core = if role.runs_core() {
                let (core, task) = CoreService::start(
                    bus.client().clone(),
                    nats.clone(),
                    core_config,
                    shutdown.clone(),
                )
                .await
                .map_err(|err| StartError::Config(err.to_string()))?;
                tasks.spawn(async move {
                    let _ = task.await;
                });
                Some(core)
            } else {
                None
            };
            // With a core in this process, its own requests skip the trip
            // through nats-server and back (crates/nats/src/local.rs).
            let bus: Arc<dyn Bus> = match &core {
                Some(core) => core.local_bus(bus),
                None => bus,
            };
            (bus, core)
        }
    };

    let gateway = Gateway::new(
        bus,
        GatewayConfig {
            limits,
            allowed_origins: args.limits.allowed_origins.clone(),
            auth,
        },
        shutdown.clone(),
    );
    if let Some(core) = core {
        gateway.require_for_readiness(Box::new(move || core.is_ready()));
    }

    let http = bind("HTTP", args.http_addr).await?;
    let http_addr = local_addr("HTTP", &http, args.http_addr)?;
    // A peer that reads nothing for as long as a WebSocket peer may stay
    // silent is gone: the same bound ends stalled SSE streams.
    // First requests the transports serve on the raw socket (ADR 0008).
    let native = match role {
        Role::Standalone => vec![
            switchboard_ws::native_route(gateway.clone()),
            switchboard_sse::native_route(gateway.clone()),
        ],
        Role::WsGateway => vec![switchboard_ws::native_route(gateway.clone())],
        Role::SseGateway => vec![switchboard_sse::native_route(gateway.clone())],
        Role::Core => Vec::new(),
    };
    let front = FrontConfig {
        handshake_timeout: gateway.limits().handshake_timeout,
        native,
    };
    let limits = gateway.limits();
    let http = Listener::new(http, limits.ping_timeout, limits.socket_send_buffer, front).map_err(
        |source| StartError::Bind {
            what: "HTTP",
            addr: args.http_addr,
            source,
        },
    )?;
    let router = router(role, gateway.clone()).into_make_service_with_connect_info::<Peer>();
    let stop = shutdown.clone();
    tasks.spawn(async move {
        let served = axum::serve(http, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(err) = served {
            tracing::error!(%err, "HTTP server failed");
        }
    });

    let grpc_addr = if role.runs_core() {
        let grpc = bind("gRPC", args.grpc_addr).await?;
        let grpc_addr = local_addr("gRPC", &grpc, args.grpc_addr)?;
        let grpc_gateway = gateway.clone();
        let grpc_options = switchboard_grpc::GrpcOptions {
            idle_timeout: args.grpc_idle_timeout,
            keepalive_interval: args.grpc_keepalive_interval,
            keepalive_timeout: args.grpc_keepalive_timeout,
        };
        let stop = shutdown.clone();
        tasks.spawn(async move {
            if let Err(err) = switchboard_grpc::serve(grpc_gateway, grpc, grpc_options, stop).await
            {
                tracing::error!(%err, "gRPC server failed");
            }
        });
        Some(grpc_addr)
    } else {
        None
    };
    match grpc_addr {
        Some(grpc_addr) => {
            tracing::info!(role = role.name(), %http_addr, %grpc_addr, "switchboard listening");
        }
        None => tracing::info!(role = role.name(), %http_addr, "switchboard listening"),
    }
    Ok(Server {
        role,
        http_addr,
        grpc_addr,
        gateway,
        tasks,
    })
}

/// The HTTP routes of each role.
pub fn router(role: Role, gateway: Arc<Gateway>) -> Router {
    let ops = ops_routes(gateway.clone());
    let router = match role {
        Role::Standalone => demo_page()
            .merge(switchboard_ws::routes(gateway.clone()))
            .merge(switchboard_sse::routes(gateway)),
        Role::WsGateway => demo_page()
            .merge(switchboard_ws::routes(gateway.clone()))
            .merge(switchboard_sse::api_routes(gateway)),
        Role::SseGateway => demo_page().merge(switchboard_sse::routes(gateway)),
        Role::Core => Router::new(),
    };
    router
        .merge(ops)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn method_not_allowed(method: axum::http::Method, uri: Uri) -> Response {
    let body = serde_json::json!({
        "error": {
            "code": "method_not_allowed",
            "message": format!("{method} is not supported on {}", uri.path()),
        }
    });
    (axum::http::StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}

async fn not_found(uri: Uri) -> Response {
    let body = serde_json::json!({
        "error": { "code": "not_found", "message": format!("no route for {}", uri.path()) }
    });
    (axum::http::StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

/// Pending connections the kernel queues before we accept them. std's
/// 128 overflowed at 200 concurrent connects (a reconnect storm after a
/// deploy); the kernel caps this at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As std and tokio's `bind` do: a restart can rebind at once.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().map_err(|source| StartError::Bind { what, addr, source })
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
