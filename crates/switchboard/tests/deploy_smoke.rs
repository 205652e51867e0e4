//! The `docker compose` topology as local processes, since no Docker engine
//! runs here: a real `nats-server` with JetStream, `core`, two `ws-gateway`
//! and one `sse-gateway` replicas configured through `SWITCHBOARD_*`
//! environment variables as in `docker-compose.yml`, and HAProxy in front
//! running the very file compose mounts, `deploy/haproxy/haproxy.cfg`.
//!
//! That file discovers replicas through DNS (`server-template` +
//! `resolvers`). Compose gives it Docker's DNS; here a small DNS responder
//! answers the same service names (`ws-gateway`, `sse-gateway`, `core`) with
//! loopback addresses, one per replica (127.0.0.2, 127.0.0.3, …), and the
//! replicas of a service share one port as they do in compose. So the test
//! exercises the file's discovery, health checks and routing as they are.
//!
//! HAProxy comes from `HAPROXY_BIN`, else `PATH` or `/usr/sbin`
//! (`./scripts/test.sh` installs Debian's package when it is missing).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::procs::{Nats, TempDir, free_port};
use common::{Sse, WAIT, Ws};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use switchboard_protocol::pb;
use tokio::net::UdpSocket;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// `HAPROXY_BIN`, else `haproxy` on `PATH`, else Debian's `/usr/sbin/haproxy`.
fn haproxy_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("HAPROXY_BIN") {
        return PathBuf::from(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("haproxy"))
        .find(|p| p.is_file())
        .expect("haproxy not found: run ./scripts/test.sh, or set HAPROXY_BIN")
}

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// A port free on every one of `ips` (the replicas of one service listen
/// on the same port, as containers of one compose service do).
fn shared_port(ips: &[Ipv4Addr]) -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind((ips[0], 0)).expect("bind a loopback address");
        let port = first.local_addr().expect("address").port();
        let others: Result<Vec<_>, _> = ips[1..]
            .iter()
            .map(|ip| TcpListener::bind((*ip, port)))
            .collect();
        if others.is_ok() {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}

/// A child process killed when dropped.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn log_sink(dir: &Path, name: &str) -> Stdio {
    if std::env::var_os("SWITCHBOARD_TEST_LOGS").is_some() {
        Stdio::inherit()
    } else {
        Stdio::from(std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file"))
    }
}

/// One replica of a role, configured like its compose service: role as the
/// argument, everything else in `SWITCHBOARD_*` variables.
fn replica(
    dir: &Path,
    role: &str,
    name: &str,
    nats: &str,
    http: SocketAddr,
    grpc: Option<SocketAddr>,
) -> Proc {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command
        .arg(role)
        .env("SWITCHBOARD_NATS_URL", nats)
        .env("SWITCHBOARD_HTTP_ADDR", http.to_string())
        .env("SWITCHBOARD_LOG_FORMAT", "json")
        .env("SWITCHBOARD_SHUTDOWN_GRACE", "2s")
        .env("RUST_LOG", "info")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_sink(dir, name));
    if let Some(grpc) = grpc {
        command.env("SWITCHBOARD_GRPC_ADDR", grpc.to_string());
    }
    Proc {
        name: name.to_owned(),
        child: command.spawn().expect("switchboard starts"),
    }
}

/// Polls `url` until it answers 200, within `bound`.
async fn wait_ok(url: &str, bound: Duration, what: &str) {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let ok = matches!(
            client.get(url).timeout(Duration::from_secs(1)).send().await,
            Ok(r) if r.status() == 200
        );
        if ok {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {url} did not answer 200 in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A DNS responder for HAProxy's `resolvers` section: A records for the
/// service names, NOERROR without answers for other types, NXDOMAIN for
/// unknown names. Just enough of RFC 1035 for one question per query.
struct Dns {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Dns {
    async fn start(records: HashMap<String, Vec<Ipv4Addr>>) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("DNS socket");
        let addr = socket.local_addr().expect("DNS address");
        let records = Arc::new(records);
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                if let Some(reply) = dns_reply(&buf[..len], &records) {
                    let _ = socket.send_to(&reply, peer).await;
                }
            }
        });
        Self { addr, task }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn dns_reply(query: &[u8], records: &HashMap<String, Vec<Ipv4Addr>>) -> Option<Vec<u8>> {
    if query.len() < 12 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    // The question: labels up to the root, then QTYPE and QCLASS.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question_end = at + 4;
    let question = query.get(12..question_end)?;
    let name = labels.join(".");
    let known = records.get(&name);
    let answers: &[Ipv4Addr] = match (known, qtype) {
        (Some(ips), 1) => ips,
        _ => &[],
    };
    let rcode: u16 = if known.is_some() { 0 } else { 3 };
    let mut reply = Vec::with_capacity(question_end + answers.len() * 16);
    reply.extend_from_slice(&query[0..2]); // id
    // QR, opcode 0, AA, RD copied, RA, rcode.
    let rd = u16::from(query[2] & 0x01) << 8;
    reply.extend_from_slice(&(0x8480 | rd | rcode).to_be_bytes());
    reply.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    reply.extend_from_slice(&u16::try_from(answers.len()).ok()?.to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]); // NSCOUNT, ARCOUNT
    reply.extend_from_slice(question);
    for ip in answers {
        reply.extend_from_slice(&[0xc0, 0x0c]); // name: pointer to the question
        reply.extend_from_slice(&1u16.to_be_bytes()); // A
        reply.extend_from_slice(&1u16.to_be_bytes()); // IN
        reply.extend_from_slice(&1u32.to_be_bytes()); // TTL 1 s
        reply.extend_from_slice(&4u16.to_be_bytes());
        reply.extend_from_slice(&ip.octets());
    }
    Some(reply)
}

/// Servers of a backend that HAProxy's health checks report UP, from the
/// stats page's CSV export.
async fn servers_up(stats: &str, backend: &str) -> usize {
    let Ok(response) = reqwest::Client::new()
        .get(format!("{stats}/stats;csv"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
    else {
        return 0;
    };
    let csv = response.text().await.unwrap_or_default();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let Some(status) = header.iter().position(|h| *h == "status") else {
        return 0;
    };
    lines
        .map(|line| line.split(',').collect::<Vec<_>>())
        .filter(|row| {
            row.first() == Some(&backend)
                && !matches!(row.get(1), Some(&"FRONTEND" | &"BACKEND"))
                && row.get(status).is_some_and(|s| s.starts_with("UP"))
        })
        .count()
}

async fn wait_servers_up(stats: &str, backend: &str, want: usize) {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        let up = servers_up(stats, backend).await;
        if up == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "HAProxy backend {backend}: {up} servers UP, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of `switchboard_connections{transport="websocket"}` on a replica.
async fn websocket_connections(http: SocketAddr) -> f64 {
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|line| {
            line.strip_prefix("switchboard_connections{transport=\"websocket\"} ")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

async fn next_message(sse: &mut Sse) -> Value {
    sse.next_named("message").await.data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_topology_through_the_load_balancer() {
    let haproxy = haproxy_bin();
    let config = repo_file("deploy/haproxy/haproxy.cfg");
    let dir = TempDir::new("deploy");
    let nats = Nats::start(&dir.0.join("nats"));

    // Compose's services, one loopback address per container.
    let ws_ips = [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)];
    let sse_ips = [Ipv4Addr::new(127, 0, 0, 4)];
    let core_ips = [Ipv4Addr::new(127, 0, 0, 5)];
    let ws_port = shared_port(&ws_ips);
    let sse_port = shared_port(&sse_ips);
    let core_http = shared_port(&core_ips);
    let core_grpc = shared_port(&core_ips);

    let core = replica(
        &dir.0,
        "core",
        "core-1",
        &nats.url(),
        SocketAddr::from((core_ips[0], core_http)),
        Some(SocketAddr::from((core_ips[0], core_grpc))),
    );
    let mut ws_gateways: Vec<(Proc, SocketAddr)> = ws_ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let http = SocketAddr::from((*ip, ws_port));
            let name = format!("ws-gateway-{}", i + 1);
            (
                replica(&dir.0, "ws-gateway", &name, &nats.url(), http, None),
                http,
            )
        })
        .collect();
    let sse_http = SocketAddr::from((sse_ips[0], sse_port));
    let sse_gateway = replica(
        &dir.0,
        "sse-gateway",
        "sse-gateway-1",
        &nats.url(),
        sse_http,
        None,
    );
    let core_ops = SocketAddr::from((core_ips[0], core_http));
    for (name, http) in [(&core.name, core_ops), (&sse_gateway.name, sse_http)]
        .into_iter()
        .chain(ws_gateways.iter().map(|(p, a)| (&p.name, *a)))
    {
        wait_ok(&format!("http://{http}/readyz"), WAIT * 3, name).await;
    }

    let dns = Dns::start(HashMap::from([
        ("ws-gateway".to_owned(), ws_ips.to_vec()),
        ("sse-gateway".to_owned(), sse_ips.to_vec()),
        ("core".to_owned(), core_ips.to_vec()),
    ]))
    .await;

    // The config file as compose mounts it; only the variables differ.
    let lb_port = free_port();
    let lb_grpc_port = free_port();
    let stats_port = free_port();
    let env = [
        ("SB_LB_BIND", format!("127.0.0.1:{lb_port}")),
        ("SB_LB_GRPC_BIND", format!("127.0.0.1:{lb_grpc_port}")),
        ("SB_LB_STATS_BIND", format!("127.0.0.1:{stats_port}")),
        ("SB_DNS", dns.addr.to_string()),
        ("SB_WS_GATEWAY", format!("ws-gateway:{ws_port}")),
        ("SB_SSE_GATEWAY", format!("sse-gateway:{sse_port}")),
        ("SB_CORE_GRPC", format!("core:{core_grpc}")),
        ("SB_CORE_OPS_PORT", core_http.to_string()),
    ];
    let check = Command::new(&haproxy)
        .arg("-c")
        .arg("-f")
        .arg(&config)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("haproxy -c runs");
    assert!(
        check.status.success(),
        "haproxy rejects {}: {}{}",
        config.display(),
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let _lb = Proc {
        name: "haproxy".into(),
        child: Command::new(&haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log_sink(&dir.0, "haproxy"))
            .stderr(log_sink(&dir.0, "haproxy-stderr"))
            .spawn()
            .expect("haproxy starts"),
    };
    let lb = format!("127.0.0.1:{lb_port}");
    let stats = format!("http://127.0.0.1:{stats_port}");
    wait_ok(&format!("{stats}/healthz"), WAIT, "haproxy").await;
    // Every replica found through DNS and passing its /readyz check.
    wait_servers_up(&stats, "ws_gateways", 2).await;
    wait_servers_up(&stats, "sse_gateways", 1).await;
    wait_servers_up(&stats, "web", 3).await;
    wait_servers_up(&stats, "cores_grpc", 1).await;

    // The demo page; replicas' ops endpoints stay private.
    let page = reqwest::get(format!("http://{lb}/")).await.expect("GET /");
    assert_eq!(page.status(), 200);
    assert!(
        page.text().await.expect("page").contains("<html"),
        "demo page"
    );
    let metrics = reqwest::get(format!("http://{lb}/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(metrics.status(), 404, "/metrics must not be public");

    // SSE through the balancer, streamed as it comes (no buffering).
    let room = "deploy-smoke";
    let mut sse = Sse::connect(&format!("http://{lb}/sse/rooms/{room}?user=watcher"), &[])
        .await
        .expect("SSE through the balancer");
    assert_eq!(
        sse.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream"),
    );
    sse.next_named("subscribed").await;

    // Two WebSockets through the balancer land on the two ws-gateways.
    let mut alice = Ws::connect(&format!("ws://{lb}/ws?user=alice")).await;
    alice.subscribe(room, None).await;
    let mut bob = Ws::connect(&format!("ws://{lb}/ws?user=bob")).await;
    bob.subscribe(room, None).await;
    for (proc, http) in &ws_gateways {
        assert_eq!(
            websocket_connections(*http).await,
            1.0,
            "{} should hold one of the two WebSockets (leastconn)",
            proc.name
        );
    }

    // WebSocket → NATS → core → every gateway: SSE and the other replica.
    let ack = alice
        .publish(room, "hello through the balancer", "m-1")
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let event = next_message(&mut sse).await;
    assert_eq!(event["text"], "hello through the balancer");
    assert_eq!(event["user"], "alice");
    assert_eq!(event["cursor"], ack["cursor"]);
    let frame = bob.recv_type("message").await;
    assert_eq!(frame["text"], "hello through the balancer");

    // The HTTP API through the balancer.
    let response = reqwest::Client::new()
        .post(format!("http://{lb}/api/rooms/{room}/messages?user=poster"))
        .json(&json!({"text": "posted through the balancer"}))
        .timeout(WAIT)
        .send()
        .await
        .expect("POST through the balancer");
    assert_eq!(response.status(), 201);
    assert_eq!(
        next_message(&mut sse).await["text"],
        "posted through the balancer"
    );
    let history: Value = reqwest::get(format!("http://{lb}/api/rooms/{room}/messages?limit=10"))
        .await
        .expect("GET history")
        .json()
        .await
        .expect("history JSON");
    let texts: Vec<&str> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["text"].as_str())
        .collect();
    assert_eq!(
        texts,
        ["hello through the balancer", "posted through the balancer"]
    );

    // gRPC (HTTP/2) through the balancer to the core.
    let channel = Channel::from_shared(format!("http://127.0.0.1:{lb_grpc_port}"))
        .expect("uri")
        .connect()
        .await
        .expect("gRPC through the balancer");
    // gRPC health follows readiness (polled, so it may trail /readyz by a
    // moment): wait, bounded, for SERVING.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let health = tokio::time::timeout(
            WAIT,
            HealthClient::new(channel.clone()).check(HealthCheckRequest {
                service: String::new(),
            }),
        )
        .await
        .expect("health answers in time")
        .expect("health check")
        .into_inner();
        if health.status == ServingStatus::Serving as i32 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "core never reported SERVING"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let reply = tokio::time::timeout(
        WAIT,
        pb::chat_client::ChatClient::new(channel).publish(pb::PublishRequest {
            room: room.into(),
            text: "via grpc".into(),
            id: "g-1".into(),
        }),
    )
    .await
    .expect("gRPC publish in time")
    .expect("gRPC publish")
    .into_inner();
    let event = next_message(&mut sse).await;
    assert_eq!(event["text"], "via grpc");
    assert_eq!(event["cursor"], reply.cursor.as_str());

    // A replica dies: its health check fails, HAProxy stops routing to it,
    // and new clients keep working through the other one.
    let (mut dead, dead_addr) = ws_gateways.remove(0);
    dead.kill();
    wait_servers_up(&stats, "ws_gateways", 1).await;
    assert!(TcpStream::connect(dead_addr).is_err(), "replica is gone");
    let mut carol = Ws::connect(&format!("ws://{lb}/ws?user=carol")).await;
    let ack = carol.publish(room, "after a replica died", "m-2").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(next_message(&mut sse).await["text"], "after a replica died");

    drop(sse_gateway);
    drop(core);
}
