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
