//! Connection caps (spec §6): `--max-connections` per process and
//! `--max-connections-per-ip` per client address, over WebSocket, SSE and
//! gRPC streams. Clients come from several 127.0.0.x source addresses; a
//! refusal is HTTP 503 with the JSON error (gRPC: `UNAVAILABLE`), happens
//! before the upgrade, is counted by reason, and a closed connection gives
//! its place back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, WAIT};
use futures::SinkExt;
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

fn source(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind((from, 0).into())
        .expect("bind a loopback source");
    tokio::time::timeout(WAIT, socket.connect(to))
        .await
        .expect("connects in time")
        .expect("connects")
}

/// A WebSocket from `from`, or the refusal's status and JSON body.
async fn ws_from(
    from: Ipv4Addr,
    server: &TestServer,
) -> Result<WebSocketStream<TcpStream>, (u16, Value)> {
    let stream = connect_from(from, server.http).await;
    let url = server.ws_url("/ws?user=capped");
    match tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream))
        .await
        .expect("answered in time")
    {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Err((response.status().as_u16(), body))
        }
        Err(err) => panic!("neither admitted nor refused: {err}"),
    }
}

/// Opens an SSE stream from `from`; returns the socket (kept open) and the
/// response status, or the status and JSON body of a refusal.
async fn sse_from(from: Ipv4Addr, server: &TestServer) -> Result<TcpStream, (u16, Value)> {
    sse_with(from, server, "").await
}

/// [`sse_from`] with extra request header lines (each ending in CRLF).
async fn sse_with(
    from: Ipv4Addr,
    server: &TestServer,
    extra: &str,
) -> Result<TcpStream, (u16, Value)> {
    let mut stream = connect_from(from, server.http).await;
    let request = format!(
        "GET /sse/rooms/caps?user=capped HTTP/1.1\r\nhost: {}\r\naccept: text/event-stream\r\n{extra}\r\n",
        server.http
    );
    stream.write_all(request.as_bytes()).await.expect("sent");
    let mut head = Vec::new();
    let read = async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.expect("readable") == 0 {
                break;
            }
            head.extend_from_slice(&byte);
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("head in time");
    let head = String::from_utf8_lossy(&head).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    if status == 200 {
        return Ok(stream);
    }
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    tokio::time::timeout(WAIT, stream.read_exact(&mut body))
        .await
        .expect("body in time")
        .expect("body");
    Err((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

fn assert_refused(refusal: (u16, Value), why: &str) {
    let (status, body) = refusal;
    assert_eq!(status, 503, "{why}: {body}");
    assert_eq!(body["error"]["code"], "unavailable", "{why}: {body}");
}

async fn metric(server: &TestServer, reason: &str, transport: &str) -> f64 {
    let text = reqwest::get(server.url("/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("text");
    let series = format!(
        "switchboard_connections_refused_total{{reason=\"{reason}\",transport=\"{transport}\"}}"
    );
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_per_address_and_per_process_refuse_with_503_and_free_on_close() {
    let server =
        TestServer::with_args(&["--max-connections", "6", "--max-connections-per-ip", "2"]).await;

    // Two from .2; a third from .2 is refused on every transport.
    let mut first = ws_from(source(2), &server).await.expect("1st from .2");
    let _second = sse_from(source(2), &server).await.expect("2nd from .2");
    assert_refused(
        ws_from(source(2), &server)
            .await
            .map(|_| ())
            .expect_err("3rd"),
        "per-address cap, WebSocket",
    );
    assert_refused(
        sse_from(source(2), &server)
            .await
            .map(|_| ())
            .expect_err("3rd"),
        "per-address cap, SSE",
    );
    // Other addresses are not affected: fill the process cap of 6.
    let _kept: Vec<_> = [
        ws_from(source(3), &server).await.expect(".3"),
        ws_from(source(3), &server).await.expect(".3"),
        ws_from(source(4), &server).await.expect(".4"),
    ]
    .into_iter()
    .collect();
    let _sse = sse_from(source(4), &server).await.expect(".4 SSE");
    assert_refused(
        ws_from(source(5), &server)
            .await
            .map(|_| ())
            .expect_err("7th"),
        "process cap, WebSocket",
    );
    // gRPC streams count too (the test's client is 127.0.0.1).
    let mut grpc = server.grpc().await;
    let status = grpc
        .subscribe(switchboard_protocol::pb::SubscribeRequest {
            room: "caps".into(),
            since: String::new(),
        })
        .await
        .expect_err("7th, over gRPC");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    // The admitted connections still work.
    first
        .send(Message::text(r#"{"type":"ping"}"#))
        .await
        .expect("sent");
    let pong = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut first))
        .await
        .expect("pong in time");
    assert!(matches!(pong, Some(Ok(Message::Text(ref t))) if t.contains("pong")));

    // Closing one gives its place back, for its address and the process.
    first.close(None).await.expect("close sent");
    drop(first);
    let readmitted = async {
        loop {
            match ws_from(source(2), &server).await {
                Ok(ws) => return ws,
                Err((503, _)) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                Err(other) => panic!("unexpected refusal {other:?}"),
            }
        }
    };
    let _again = tokio::time::timeout(WAIT, readmitted)
        .await
        .expect("the closed connection's place comes back");

    assert!(metric(&server, "max_connections_per_ip", "websocket").await >= 1.0);
    assert!(metric(&server, "max_connections_per_ip", "sse").await >= 1.0);
    assert!(metric(&server, "max_connections", "websocket").await >= 1.0);
    assert!(metric(&server, "max_connections", "grpc").await >= 1.0);
}

/// At start the process raises its soft open-files limit to the hard
/// one and logs both (a soft limit below the caps would make clients hang
/// at accept instead of being refused).
#[test]
fn start_raises_the_open_files_soft_limit_and_logs_it() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let limits = std::fs::read_to_string("/proc/self/limits").expect("limits");
    let hard: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| v.parse().ok())
        .expect("a finite hard limit");
    if hard <= 1024 {
        eprintln!("skipped: the hard open-files limit ({hard}) leaves nothing to raise");
        return;
    }
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -Sn 1024 && exec "$0" standalone --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 --log-format json"#)
        .arg(env!("CARGO_BIN_EXE_switchboard"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("open-files limit\"") || line.contains("\"open-files limit") {
                let _ = tx.send(line);
                break;
            }
        }
    });
    let line = rx.recv_timeout(WAIT).expect("the limit is logged at start");
    let soft_now = std::fs::read_to_string(format!("/proc/{}/limits", child.id()))
        .expect("child limits")
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok());
    let _ = child.kill();
    let _ = child.wait();
    let log: Value = serde_json::from_str(&line).expect("JSON log line");
    let fields = log.get("fields").unwrap_or(&log);
    assert_eq!(fields["was"], "1024", "{line}");
    assert_eq!(fields["soft"], hard.to_string(), "{line}");
    assert_eq!(fields["hard"], hard.to_string(), "{line}");
    assert_eq!(soft_now, Some(hard), "the soft limit is the hard one");
}

/// Behind `--trusted-proxies` the per-address cap counts the left-most
/// `X-Forwarded-For` entry; from any other peer the header is ignored, so
/// a client cannot dodge the cap by naming addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_cap_follows_forwarded_for_only_from_trusted_proxies() {
    let server = TestServer::with_args(&[
        "--max-connections-per-ip",
        "1",
        "--trusted-proxies",
        "127.0.0.2/32,127.0.0.3",
    ])
    .await;
    let xff = |client: &str| format!("x-forwarded-for: {client}, 127.0.0.9\r\n");
    // Through the proxy at .2: one per forwarded client.
    let _a = sse_with(source(2), &server, &xff("10.0.0.1"))
        .await
        .expect("client A");
    assert_refused(
        sse_with(source(2), &server, &xff("10.0.0.1"))
            .await
            .map(|_| ())
            .expect_err("A again"),
        "the forwarded client's cap",
    );
    let _b = sse_with(source(2), &server, &xff("10.0.0.2"))
        .await
        .expect("client B");
    // The other trusted proxy forwards the same client A: same address.
    assert_refused(
        sse_with(source(3), &server, &xff("10.0.0.1"))
            .await
            .map(|_| ())
            .expect_err("A via .3"),
        "one client behind two proxies",
    );
    // An untrusted peer's header is ignored: it counts as itself.
    let _c = sse_with(source(4), &server, &xff("10.0.0.3"))
        .await
        .expect(".4");
    assert_refused(
        sse_with(source(4), &server, &xff("10.0.0.4"))
            .await
            .map(|_| ())
            .expect_err(".4 again"),
        "an untrusted X-Forwarded-For is ignored",
    );
}
