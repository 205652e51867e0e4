//! The gRPC listener's HTTP/2 limits (spec §6), read off the wire by a raw
//! h2 client: the server's SETTINGS bound concurrent streams per
//! connection, and it answers pings (keepalive).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_settings_bound_concurrent_streams() {
    let server = TestServer::start().await;
    let tcp = tokio::net::TcpStream::connect(server.grpc)
        .await
        .expect("connects");
    let (_client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let mut connection = std::pin::pin!(connection);
    let mut ping_pong = connection.ping_pong().expect("ping handle");
    // A ping round trip, driving the connection meanwhile: the server's
    // SETTINGS come first, so they are applied when its PONG arrives.
    let exchange = async {
        tokio::select! {
            pong = ping_pong.ping(h2::Ping::opaque()) => pong.expect("pong"),
            end = &mut connection => panic!("connection ended early: {end:?}"),
        }
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .expect("pong in time");
    assert_eq!(
        connection.max_concurrent_send_streams(),
        switchboard_grpc::MAX_CONCURRENT_STREAMS as usize,
        "the server announces its stream bound"
    );
}

/// A peer that stops answering the server's HTTP/2 pings is dropped
/// after `--grpc-keepalive-timeout`, with its streams: read off a raw
/// socket that speaks just enough HTTP/2 (preface, SETTINGS, its ack)
/// and then never answers a PING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_ignores_pings_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::with_args(&[
        "--grpc-keepalive-interval",
        "300ms",
        "--grpc-keepalive-timeout",
        "300ms",
    ])
    .await;
    let mut tcp = tokio::net::TcpStream::connect(server.grpc)
        .await
        .expect("connects");
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("preface");
    // An empty SETTINGS frame: length 0, type 4, flags 0, stream 0.
    tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .expect("settings");
    let mut pings = 0;
    let watch = async {
        loop {
            let mut head = [0u8; 9];
            if tcp.read_exact(&mut head).await.is_err() {
                return; // closed by the server
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if tcp.read_exact(&mut payload).await.is_err() {
                return;
            }
            match (head[3], head[4]) {
                // The server's SETTINGS: acknowledge them, like any peer.
                (4, 0) => {
                    let _ = tcp.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await;
                }
                // A PING: never answered.
                (6, 0) => pings += 1,
                _ => {}
            }
        }
    };
    tokio::time::timeout(WAIT, watch)
        .await
        .expect("the silent peer is dropped in time");
    assert!(pings >= 1, "the server pinged before dropping the peer");

    // A client that answers pings keeps working past several intervals.
    let mut grpc = server.grpc().await;
    for _ in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        grpc.history(switchboard_protocol::pb::HistoryRequest {
            room: "keepalive".into(),
            ..Default::default()
        })
        .await
        .expect("a client that answers pings keeps working");
    }
}
