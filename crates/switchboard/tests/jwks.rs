//! `--jwt-jwks-url` (spec §7): keys come from an identity provider's JWKS,
//! served here by a small HTTP server of the test. Checked: a token signed
//! by a published key is accepted on WebSocket, SSE and gRPC; after a key
//! rotation the new key is fetched on its first token; a withdrawn key is
//! refused; tokens naming unknown keys never make more than one fetch per
//! refetch interval; an `alg` other than the key's is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, WAIT, Ws};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switchboard_protocol::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

/// The refetch interval the server runs with; the test waits it out once.
const REFETCH: Duration = Duration::from_secs(2);

/// An Ed25519 key pair made by openssl: the private PEM to sign with and
/// the public key as a JWK.
struct Key {
    private_pem: Vec<u8>,
    x: String,
}

impl Key {
    fn new(dir: &Path, name: &str) -> Self {
        let private = dir.join(format!("{name}.pem"));
        let made = Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&private)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(made, "openssl makes an Ed25519 key (Debian's openssl)");
        let der = Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(&private)
            .output()
            .expect("openssl pkey");
        assert!(der.status.success(), "public key exported");
        // An Ed25519 SubjectPublicKeyInfo ends with the 32 raw key bytes.
        let raw = &der.stdout[der.stdout.len() - 32..];
        Self {
            private_pem: std::fs::read(&private).expect("private key"),
            x: base64url(raw),
        }
    }

    fn jwk(&self, kid: &str) -> Value {
        json!({"kty":"OKP","crv":"Ed25519","use":"sig","kid":kid,"x":self.x})
    }

    fn sign(&self, kid: &str, sub: &str) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.to_owned());
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            + 60;
        encode(
            &header,
            &json!({"sub": sub, "exp": exp}),
            &EncodingKey::from_ed_pem(&self.private_pem).expect("signing key"),
        )
        .expect("token encodes")
    }
}

fn rand_id() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos()
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// The identity provider: serves whatever document it holds and counts
/// the requests.
struct Provider {
    document: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    url: String,
}

impl Provider {
    async fn start(document: Value) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().expect("addr")
        );
        let document = Arc::new(Mutex::new(document));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (document.clone(), fetches.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (served, counted) = (served.clone(), counted.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    let body = served.lock().expect("document").to_string();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self {
            document,
            fetches,
            url,
        }
    }

    fn publish(&self, document: Value) {
        *self.document.lock().expect("document") = document;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// The status of a WebSocket upgrade with `token` in the query string
/// (101 when accepted: a publish then shows the token's user).
async fn ws_status(server: &TestServer, token: &str, user: &str) -> u16 {
    let request = server
        .ws_url(&format!("/ws?access_token={token}"))
        .into_client_request()
        .expect("request");
    match Ws::try_connect(request).await {
        Ok(mut ws) => {
            ws.subscribe("jwks", None).await;
            let id = format!("{user}-{}", rand_id());
            let ack = ws.publish("jwks", "hi", &id).await;
            assert_eq!(ack["type"], "ack", "{ack}");
            let event = ws
                .recv_until(|f| f["type"] == "message" && f["id"] == id.as_str())
                .await;
            assert_eq!(event["user"], user, "{event}");
            101
        }
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("unexpected WebSocket error {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_rotate_and_unknown_kids_are_rate_limited() {
    let dir = std::env::temp_dir().join(format!("sb-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (k1, k2) = (Key::new(&dir, "k1"), Key::new(&dir, "k2"));
    // A symmetric key in the set must never become an HMAC secret.
    let provider = Provider::start(json!({"keys":[
        k1.jwk("k1"),
        {"kty":"oct","kid":"shared","k":base64url(b"0123456789abcdef0123456789abcdef")},
    ]}))
    .await;
    let refetch = format!("{}s", REFETCH.as_secs());
    let server = TestServer::with_args(&[
        "--jwt-jwks-url",
        &provider.url,
        "--jwt-jwks-refetch",
        &refetch,
    ])
    .await;
    assert_eq!(provider.fetches(), 1, "fetched once at start");

    // A published key: accepted on every transport.
    let alice = k1.sign("k1", "alice");
    assert_eq!(ws_status(&server, &alice, "alice").await, 101);
    let sse = reqwest::Client::new()
        .get(server.url("/sse/rooms/lobby"))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("SSE request");
    assert_eq!(sse.status(), 200, "SSE with a JWKS token");
    drop(sse);
    let mut grpc = server.grpc().await;
    let mut request = tonic::Request::new(pb::PresenceRequest {
        room: "lobby".into(),
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {alice}").parse().expect("metadata"),
    );
    grpc.presence(request)
        .await
        .expect("gRPC with a JWKS token");

    // The key's own algorithm only: an HS256 token keyed with the
    // published `oct` bytes, or naming k1 with another alg, is refused.
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("shared".into());
    let forged = encode(
        &hs,
        &json!({"sub":"eve","exp":u64::MAX}),
        &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
    )
    .expect("enc");
    assert_eq!(ws_status(&server, &forged, "eve").await, 401);
    hs.kid = Some("k1".into());
    let confused = encode(
        &hs,
        &json!({"sub":"eve","exp":u64::MAX}),
        &EncodingKey::from_secret(k1.x.as_bytes()),
    )
    .expect("enc");
    assert_eq!(ws_status(&server, &confused, "eve").await, 401);

    // Rotation: k1 withdrawn, k2 published. Once the refetch interval
    // since the start-up fetch has passed, k2's first token fetches it.
    provider.publish(json!({"keys":[k2.jwk("k2")]}));
    tokio::time::sleep(REFETCH + Duration::from_millis(200)).await;
    let before = provider.fetches();
    assert_eq!(
        ws_status(&server, &k2.sign("k2", "bob"), "bob").await,
        101,
        "a rotated-in key is fetched on its first token"
    );
    assert_eq!(provider.fetches(), before + 1, "one fetch");
    // k1 is gone from the set now.
    assert_eq!(
        ws_status(&server, &k1.sign("k1", "alice"), "alice").await,
        401
    );

    // Tokens naming keys nobody published: refused, and within the
    // refetch interval they cause no fetch at all.
    let fetched = provider.fetches();
    for i in 0..20 {
        let token = k2.sign(&format!("made-up-{i}"), "mallory");
        assert_eq!(ws_status(&server, &token, "mallory").await, 401);
    }
    assert!(
        provider.fetches() <= fetched + 1,
        "unknown kids are rate-limited: {} fetches after {fetched}",
        provider.fetches()
    );
    // The refused client got a readable reason.
    let token = k2.sign("made-up", "mallory");
    let response = tokio::time::timeout(
        WAIT,
        reqwest::Client::new()
            .post(server.url("/api/rooms/lobby/messages"))
            .bearer_auth(&token)
            .json(&json!({"text":"hi"}))
            .send(),
    )
    .await
    .expect("answered")
    .expect("sent");
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.expect("JSON error");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not in the JWKS")),
        "{body}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
