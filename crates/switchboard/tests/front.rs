//! The connection front: the handshake timeout (slowloris), SSE served on
//! the raw socket for a connection's first request, and the same stream
//! through hyper for a request on a kept-alive connection. Real sockets.

mod common;

use common::{TestServer, UNTHROTTLED, WAIT};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads from `stream` until `pred` holds for everything read so far.
async fn read_until(stream: &mut TcpStream, seen: &mut Vec<u8>, pred: impl Fn(&str) -> bool) {
    tokio::time::timeout(WAIT, async {
        while !pred(&String::from_utf8_lossy(seen)) {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(
                n > 0,
                "closed early; got {:?}",
                String::from_utf8_lossy(seen)
            );
            seen.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out; got {:?}", String::from_utf8_lossy(seen)));
}

fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let Some(hard) = limit.maximum else {
        return u64::MAX;
    };
    let raised = rustix::process::Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    if setrlimit(Resource::Nofile, raised).is_ok() {
        hard
    } else {
        limit.current.unwrap_or(1024)
    }
}

/// 2,000 sockets that send half a request head are all closed by the
/// handshake timeout, while a normal client keeps chatting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_sockets_are_closed_by_the_handshake_timeout() {
    let mut args = UNTHROTTLED.to_vec();
    args.extend(["--handshake-timeout", "1s"]);
    let server = TestServer::with_args(&args).await;
    let mut chatter = server.ws("/ws?user=chatter").await;
    chatter.subscribe("lobby", None).await;
    // Client and server ends share this process: raise the soft limit as
    // far as the hard one allows (a fresh machine's soft limit is 1024).
    let fd_limit = raise_fd_limit();
    let sockets = 2000.min(fd_limit.saturating_sub(256) / 2);
    assert!(
        sockets >= 400,
        "too few file descriptors for the test: {fd_limit}"
    );
    let mut slow = Vec::new();
    for i in 0..sockets as u32 {
        // Spread over source addresses: one address has ~28k ports.
        let source = std::net::Ipv4Addr::new(127, 0, 1, 1 + (i % 200) as u8);
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind((source, 0).into()).expect("bind");
        let mut stream = socket.connect(server.http).await.expect("connect");
        stream
            .write_all(b"GET /sse/rooms/lobby HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("half a head");
        slow.push(stream);
    }
    // The neighbour is unaffected meanwhile.
    for i in 0..5 {
        let ack = chatter
            .publish("lobby", &format!("hi {i}"), &format!("c{i}"))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let closed_all = tokio::time::timeout(WAIT, async {
        for stream in &mut slow {
            let mut byte = [0u8; 1];
            // EOF (or a reset): the server closed it, having answered nothing.
            let read = stream.read(&mut byte).await;
            assert!(matches!(read, Ok(0) | Err(_)), "got {read:?}");
        }
    })
    .await;
    assert!(
        closed_all.is_ok(),
        "every slowloris socket is closed within the timeout"
    );
    let ack = chatter.publish("lobby", "still here", "c-last").await;
    assert_eq!(ack["type"], "ack", "{ack}");
}

/// A first request is served on the raw socket: the stream is delimited by
/// the connection, with the same headers (CORS included) and events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_on_a_fresh_connection_is_served_natively() {
    let server = TestServer::with_args(&UNTHROTTLED).await;
    let mut stream = TcpStream::connect(server.http).await.expect("connect");
    stream
        .write_all(
            b"GET /sse/rooms/caf%65?user=reader HTTP/1.1\r\nHost: x\r\nOrigin: http://app.example\r\n\r\n",
        )
        .await
        .expect("request");
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, |s| s.contains("event: subscribed")).await;
    let text = String::from_utf8_lossy(&seen).to_lowercase();
    assert!(text.starts_with("http/1.1 200 ok\r\n"), "{text}");
    for header in [
        "content-type: text/event-stream",
        "cache-control: no-cache",
        "x-accel-buffering: no",
        "connection: close",
        "access-control-allow-origin: *",
    ] {
        assert!(text.contains(header), "missing {header}: {text}");
    }
    assert!(!text.contains("transfer-encoding"), "{text}");
    let (status, _) = server
        .post(
            "cafe",
            serde_json::json!({"text": "bonjour", "id": "p1"}),
            &[],
        )
        .await;
    assert_eq!(status, 201);
    read_until(&mut stream, &mut seen, |s| s.contains("bonjour")).await;
}

/// A refusal on the native path is a whole JSON error response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_sse_refusals_are_json_errors() {
    let server = TestServer::with_args(&["--jwt-secret", "a-long-enough-test-secret"]).await;
    let mut stream = TcpStream::connect(server.http).await.expect("connect");
    stream
        .write_all(b"GET /sse/rooms/lobby HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut all))
        .await
        .expect("answered and closed in time")
        .expect("read");
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{text}");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    assert!(
        head.to_lowercase()
            .contains(&format!("content-length: {}", body.len())),
        "{head}"
    );
    let body: Value = serde_json::from_str(body).expect("JSON body");
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
}

/// On a kept-alive connection the second request is hyper's: the same
/// stream arrives with chunked encoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_after_another_request_is_served_by_hyper() {
    let server = TestServer::with_args(&UNTHROTTLED).await;
    let mut stream = TcpStream::connect(server.http).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("first request");
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, |s| s.contains("\r\n\r\n")).await;
    seen.clear();
    stream
        .write_all(b"GET /sse/rooms/kept?user=reader HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("second request");
    read_until(&mut stream, &mut seen, |s| s.contains("event: subscribed")).await;
    let text = String::from_utf8_lossy(&seen).to_lowercase();
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    let (status, _) = server
        .post(
            "kept",
            serde_json::json!({"text": "via hyper", "id": "p1"}),
            &[],
        )
        .await;
    assert_eq!(status, 201);
    read_until(&mut stream, &mut seen, |s| s.contains("via hyper")).await;
}

/// A WebSocket upgrade as a first request is served by the front. A client
/// may send its first frame right behind the request head, in the same
/// segment: the connection must read it as a frame, not as part of the
/// head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_right_behind_the_upgrade_head_is_read() {
    let server = TestServer::with_args(&UNTHROTTLED).await;
    let mut stream = TcpStream::connect(server.http).await.expect("connect");
    let mut request = b"GET /ws?user=eager HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
        Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Protocol: switchboard.v1.json\r\n\r\n"
        .to_vec();
    let frame = br#"{"type":"subscribe","room":"eager"}"#;
    let mask = [7u8, 1, 2, 3];
    request.push(0x81);
    request.push(0x80 | frame.len() as u8);
    request.extend_from_slice(&mask);
    request.extend(frame.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream
        .write_all(&request)
        .await
        .expect("head and frame in one write");
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, |s| s.contains("\"subscribed\"")).await;
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{text}"
    );
    // The RFC 6455 example key.
    assert!(
        text.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{text}"
    );
    assert!(
        text.contains("sec-websocket-protocol: switchboard.v1.json"),
        "{text}"
    );
}
