//! Tokens never reach logs or spans (spec §7): a server logging at
//! `trace` sees tokens in headers, query strings and gRPC metadata, valid
//! and forged, and its whole log is searched for them afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::sign_hs256 as sign;

use common::WAIT;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

const SECRET: &str = "redaction-test-secret-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_not_logged_even_at_trace() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let good = sign(&json!({"sub":"alice","exp":now + 60}), SECRET);
    let forged = sign(
        &json!({"sub":"mallory","exp":now + 60}),
        "not-the-secret-0123456789abcdef",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "standalone",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
        ])
        .args(["--log-format", "json", "--jwt-secret", SECRET])
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let log = log.clone();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("switchboard listening") {
                    let _ = tx.send(line.clone());
                }
                if let Ok(mut log) = log.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
    }
    let listening: serde_json::Value =
        serde_json::from_str(&rx.recv_timeout(WAIT).expect("listening")).expect("JSON");
    let fields = listening.get("fields").unwrap_or(&listening);
    let http = fields["http_addr"].as_str().expect("http_addr").to_owned();
    let grpc = fields["grpc_addr"].as_str().expect("grpc_addr").to_owned();

    let client = reqwest::Client::new();
    for token in [&good, &forged] {
        // Header, query string (WebSocket upgrade, SSE, HTTP API).
        let _ = client
            .get(format!("http://{http}/api/rooms/lobby/messages"))
            .bearer_auth(token)
            .send()
            .await;
        let _ = client
            .get(format!(
                "http://{http}/api/rooms/lobby/messages?access_token={token}"
            ))
            .send()
            .await;
        let url = format!("ws://{http}/ws?access_token={token}");
        if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await {
            use futures::SinkExt;
            let _ = ws
                .send(tokio_tungstenite::tungstenite::Message::text(
                    r#"{"type":"publish","room":"lobby","text":"hi","id":"r-1"}"#,
                ))
                .await;
            let _ = futures::StreamExt::next(&mut ws).await;
        }
        // gRPC metadata.
        if let Ok(channel) = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
            .expect("uri")
            .connect()
            .await
        {
            let mut chat = switchboard_protocol::pb::chat_client::ChatClient::new(channel);
            let mut request = tonic::Request::new(switchboard_protocol::pb::HistoryRequest {
                room: "lobby".into(),
                ..Default::default()
            });
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("metadata"),
            );
            let _ = chat.history(request).await;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = log.lock().expect("log").clone();
    // Hundreds of lines: hyper, h2 and our own spans at trace level saw
    // every request.
    let traced = log.lines().filter(|l| l.contains("TRACE")).count();
    assert!(traced > 100, "logging at trace ({traced} lines): {log}");
    for (token, name) in [(&good, "valid"), (&forged, "forged")] {
        // The signature is the secret part; a header or payload alone is
        // not a credential but should not appear either.
        let signature = token.rsplit('.').next().expect("signature");
        assert!(
            !log.contains(signature),
            "the {name} token's signature is in the log"
        );
        assert!(
            !log.contains(token.as_str()),
            "the {name} token is in the log"
        );
    }
    assert!(!log.contains(SECRET), "the secret is in the log");
}
