//! WebSocket protocol conformance (RFC 6455), with raw frames over real
//! sockets: what the Autobahn TestSuite checks in its sections 1-7 and 9
//! (framing, ping/pong, reserved bits, opcodes, fragmentation, UTF-8,
//! close handling, limits), since Autobahn itself needs Python 2 or
//! Docker. Each case runs on a fresh connection and checks the exact close
//! code; a control connection of the same server keeps chatting between
//! the cases, so no violation harms a neighbour.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, UNTHROTTLED, WAIT, Ws};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// The server's frame limit (its default `--max-frame-bytes`).
const MAX_FRAME: usize = 65_536;

/// One client frame. `rsv` is the three reserved bits (0-7).
fn frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn whole(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(true, 0, opcode, payload)
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

/// `{"type":"ping"}` padded with spaces to `len` bytes: any size of a
/// valid frame the server answers (with `{"type":"pong"}`).
fn json_ping(len: usize) -> Vec<u8> {
    let mut text = br#"{"type":"ping""#.to_vec();
    text.resize(len - 1, b' ');
    text.push(b'}');
    text
}

/// A raw WebSocket client.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// What the server sent.
#[derive(Debug, PartialEq)]
enum Got {
    Frame(u8, Vec<u8>),
    /// The server closed the TCP connection.
    Eof,
}

impl Raw {
    async fn connect(server: &TestServer) -> Self {
        let addr = server.url("").trim_start_matches("http://").to_owned();
        let mut stream = TcpStream::connect(&addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let request = format!(
            "GET /ws?user=conformance HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("request");
        let mut raw = Self {
            stream,
            buf: Vec::new(),
        };
        let end = raw.read_until_head().await;
        let head = String::from_utf8_lossy(&raw.buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "the RFC's example accept key: {head}"
        );
        raw.buf.drain(..end);
        raw
    }

    async fn read_until_head(&mut self) -> usize {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    return at + 4;
                }
                let mut chunk = [0u8; 4096];
                let n = self.stream.read(&mut chunk).await.expect("read");
                assert!(n > 0, "closed during the handshake");
                self.buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("handshake in time")
    }

    async fn send(&mut self, bytes: &[u8]) {
        // The server may already have closed after an earlier violation.
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next server frame, within one [`WAIT`].
    async fn next(&mut self) -> Got {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some((frame, used)) = parse_server_frame(&self.buf) {
                    self.buf.drain(..used);
                    return frame;
                }
                let mut chunk = [0u8; 65_536];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return Got::Eof,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .expect("the server answers in time")
    }

    async fn expect_json_pong(&mut self) {
        match self.next().await {
            Got::Frame(TEXT, text) if is_json_pong(&text) => {}
            other => panic!("expected the JSON pong, got {other:?}"),
        }
    }

    /// Skips JSON replies (errors, or answers to frames before the bad
    /// one) until the close frame; checks its code and that the server then
    /// ends the TCP connection.
    async fn expect_close(&mut self, code: u16, case: &str) {
        let close = loop {
            match self.next().await {
                Got::Frame(TEXT, _) => {}
                other => break other,
            }
        };
        match close {
            Got::Frame(CLOSE, payload) => {
                assert!(payload.len() >= 2, "{case}: a close code: {payload:?}");
                let got = u16::from_be_bytes([payload[0], payload[1]]);
                assert_eq!(got, code, "{case}: close code");
                assert!(
                    std::str::from_utf8(&payload[2..]).is_ok(),
                    "{case}: the reason is UTF-8"
                );
            }
            other => panic!("{case}: expected close {code}, got {other:?}"),
        }
        // Our close reply; the server then drops the connection.
        self.send(&whole(CLOSE, &close_payload(code, b""))).await;
        loop {
            match self.next().await {
                Got::Eof => return,
                Got::Frame(TEXT | PONG, _) => {}
                other => panic!("{case}: after the close, got {other:?}"),
            }
        }
    }
}

fn is_json_pong(text: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(text).is_ok_and(|v| v["type"] == "pong")
}

/// A whole server frame at the start of `buf`, and its length. Server
/// frames are never masked and never fragmented.
fn parse_server_frame(buf: &[u8]) -> Option<(Got, usize)> {
    let [b0, b1, ..] = *buf else { return None };
    assert_eq!(b0 & 0x70, 0, "the server sets no reserved bit");
    assert_eq!(b1 & 0x80, 0, "server frames are unmasked");
    assert_ne!(b0 & 0x80, 0, "server frames are whole");
    let (len, at) = match b1 & 0x7F {
        126 => (
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => {
            let mut be = [0u8; 8];
            be.copy_from_slice(buf.get(2..10)?);
            (usize::try_from(u64::from_be_bytes(be)).expect("length"), 10)
        }
        short => (usize::from(short), 2),
    };
    let payload = buf.get(at..at + len)?;
    Some((Got::Frame(b0 & 0x0F, payload.to_vec()), at + len))
}

/// The neighbour: publishes and reads its ack after every case.
struct Control {
    ws: Ws,
    n: usize,
}

impl Control {
    async fn still_chatting(&mut self) {
        self.n += 1;
        let ack = self
            .ws
            .publish("conformance", "still here", &format!("c-{}", self.n))
            .await;
        assert_eq!(ack["type"], "ack", "the control connection: {ack}");
    }
}

async fn setup() -> (TestServer, Control) {
    let server = TestServer::with_args(&UNTHROTTLED).await;
    let ws = server.ws("/ws?user=control").await;
    (server, Control { ws, n: 0 })
}

/// Sends `bytes` on a fresh connection and expects close `code`.
async fn refused(server: &TestServer, control: &mut Control, case: &str, bytes: &[u8], code: u16) {
    let mut raw = Raw::connect(server).await;
    raw.send(bytes).await;
    raw.expect_close(code, case).await;
    control.still_chatting().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_and_sizes() {
    let (server, mut control) = setup().await;
    let mut raw = Raw::connect(&server).await;
    // Every length encoding (7 bits, 16 bits, 64 bits) up to the limit.
    for len in [15, 125, 126, 127, 65_535, MAX_FRAME] {
        raw.send(&whole(TEXT, &json_ping(len))).await;
        raw.expect_json_pong().await;
    }
    // A frame delivered one byte at a time.
    for byte in whole(TEXT, &json_ping(40)) {
        raw.send(&[byte]).await;
    }
    raw.expect_json_pong().await;
    // Several frames in one write.
    let mut burst = Vec::new();
    for _ in 0..3 {
        burst.extend(whole(TEXT, &json_ping(20)));
    }
    raw.send(&burst).await;
    for _ in 0..3 {
        raw.expect_json_pong().await;
    }
    // A binary frame is refused with an error, not a close.
    raw.send(&whole(BINARY, b"\x00\x01")).await;
    match raw.next().await {
        Got::Frame(TEXT, text) => assert!(
            String::from_utf8_lossy(&text).contains("bad_frame"),
            "{}",
            String::from_utf8_lossy(&text)
        ),
        other => panic!("binary: {other:?}"),
    }
    raw.send(&whole(TEXT, &json_ping(20))).await;
    raw.expect_json_pong().await;
    control.still_chatting().await;
    // Past the limit: 1009, announced by the header alone.
    let too_big = json_ping(MAX_FRAME + 1);
    refused(
        &server,
        &mut control,
        "a frame over the limit",
        &whole(TEXT, &too_big),
        1009,
    )
    .await;
    let mut header_only = frame(true, 0, TEXT, &[]);
    header_only[1] = 0x80 | 127;
    header_only.splice(2..2, (u64::MAX >> 1).to_be_bytes());
    refused(
        &server,
        &mut control,
        "a 2^63 byte frame header",
        &header_only,
        1009,
    )
    .await;
    // Unmasked client frames.
    let mut unmasked = vec![0x81, 15];
    unmasked.extend_from_slice(&json_ping(15));
    refused(&server, &mut control, "an unmasked frame", &unmasked, 1002).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_pong() {
    let (server, mut control) = setup().await;
    let mut raw = Raw::connect(&server).await;
    for payload in [&b""[..], b"hello", &[0xFE; 125][..]] {
        raw.send(&whole(PING, payload)).await;
        assert_eq!(
            raw.next().await,
            Got::Frame(PONG, payload.to_vec()),
            "the pong echoes the ping's {} bytes",
            payload.len()
        );
    }
    // Unsolicited pongs are ignored.
    raw.send(&whole(PONG, b"unasked")).await;
    raw.send(&whole(TEXT, &json_ping(20))).await;
    raw.expect_json_pong().await;
    // Several pings at once: the RFC allows answering only the last.
    let mut pings = Vec::new();
    for i in 0..10u8 {
        pings.extend(whole(PING, &[b'p', i]));
    }
    raw.send(&pings).await;
    loop {
        match raw.next().await {
            Got::Frame(PONG, payload) if payload == [b'p', 9] => break,
            Got::Frame(PONG, payload) => assert!(payload.starts_with(b"p"), "{payload:?}"),
            other => panic!("pings: {other:?}"),
        }
    }
    control.still_chatting().await;
    refused(
        &server,
        &mut control,
        "a 126-byte ping",
        &whole(PING, &[0; 126]),
        1002,
    )
    .await;
    refused(
        &server,
        &mut control,
        "a fragmented ping",
        &frame(false, 0, PING, b"half"),
        1002,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_bits_and_opcodes() {
    let (server, mut control) = setup().await;
    for rsv in 1..=7 {
        refused(
            &server,
            &mut control,
            &format!("text with RSV {rsv}"),
            &frame(true, rsv, TEXT, &json_ping(20)),
            1002,
        )
        .await;
    }
    refused(
        &server,
        &mut control,
        "ping with RSV",
        &frame(true, 4, PING, b""),
        1002,
    )
    .await;
    // A valid frame, then a bad one, then a ping, in one write: the close
    // is 1002 (the first frame's answer may come before it; the ping is
    // never answered).
    let mut raw = Raw::connect(&server).await;
    let mut bytes = whole(TEXT, &json_ping(20));
    bytes.extend(frame(true, 3, TEXT, &json_ping(20)));
    bytes.extend(whole(PING, b"late"));
    raw.send(&bytes).await;
    raw.expect_close(1002, "RSV after a valid frame").await;
    control.still_chatting().await;
    for opcode in [3, 4, 5, 6, 7, 11, 12, 13, 14, 15] {
        refused(
            &server,
            &mut control,
            &format!("opcode {opcode}"),
            &whole(opcode, b"x"),
            1002,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmentation() {
    let (server, mut control) = setup().await;
    let mut raw = Raw::connect(&server).await;
    let text = json_ping(300);
    // Two fragments; then one byte per fragment.
    raw.send(&frame(false, 0, TEXT, &text[..100])).await;
    raw.send(&frame(true, 0, CONTINUATION, &text[100..])).await;
    raw.expect_json_pong().await;
    let short = json_ping(30);
    for (i, byte) in short.iter().enumerate() {
        let (fin, opcode) = (
            i + 1 == short.len(),
            if i == 0 { TEXT } else { CONTINUATION },
        );
        raw.send(&frame(fin, 0, opcode, &[*byte])).await;
    }
    raw.expect_json_pong().await;
    // A ping between fragments is answered at once, the message after.
    raw.send(&frame(false, 0, TEXT, &text[..10])).await;
    raw.send(&whole(PING, b"between")).await;
    assert_eq!(raw.next().await, Got::Frame(PONG, b"between".to_vec()));
    raw.send(&frame(false, 0, CONTINUATION, &text[10..200]))
        .await;
    raw.send(&whole(PONG, b"unasked")).await;
    raw.send(&frame(true, 0, CONTINUATION, &text[200..])).await;
    raw.expect_json_pong().await;
    // Up to the limit in 1 KiB fragments.
    let big = json_ping(MAX_FRAME);
    let chunks: Vec<&[u8]> = big.chunks(1024).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let opcode = if i == 0 { TEXT } else { CONTINUATION };
        raw.send(&frame(i + 1 == chunks.len(), 0, opcode, chunk))
            .await;
    }
    raw.expect_json_pong().await;
    control.still_chatting().await;

    refused(
        &server,
        &mut control,
        "a continuation without a message",
        &frame(true, 0, CONTINUATION, b"x"),
        1002,
    )
    .await;
    let mut nested = frame(false, 0, TEXT, &text[..10]);
    nested.extend(frame(true, 0, TEXT, &text));
    refused(
        &server,
        &mut control,
        "a message inside a fragmented one",
        &nested,
        1002,
    )
    .await;
    let mut over = Vec::new();
    let huge = json_ping(MAX_FRAME + 2);
    over.extend(frame(false, 0, TEXT, &huge[..MAX_FRAME / 2]));
    over.extend(frame(true, 0, CONTINUATION, &huge[MAX_FRAME / 2..]));
    refused(
        &server,
        &mut control,
        "fragments over the limit",
        &over,
        1009,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf8_in_text_frames() {
    let (server, mut control) = setup().await;
    let mut raw = Raw::connect(&server).await;
    // Valid multi-byte text, also with a character split across fragments.
    let frame_json =
        json!({"type":"publish","room":"utf8","text":"κόσμε 🎉","id":"u-1"}).to_string();
    let bytes = frame_json.as_bytes();
    let split = frame_json.find('ό').expect("a two-byte character") + 1;
    raw.send(&frame(false, 0, TEXT, &bytes[..split])).await;
    raw.send(&frame(true, 0, CONTINUATION, &bytes[split..]))
        .await;
    match raw.next().await {
        Got::Frame(TEXT, text) => {
            let ack: serde_json::Value = serde_json::from_slice(&text).expect("JSON");
            assert_eq!(ack["type"], "ack", "{ack}");
        }
        other => panic!("{other:?}"),
    }
    control.still_chatting().await;
    let invalid: [&[u8]; 4] = [
        b"\xff\xfe",
        b"{\"type\":\"ping\",\"x\":\"\xc0\xaf\"}",
        b"\xed\xa0\x80",     // a UTF-16 surrogate
        b"\xf4\x90\x80\x80", // above U+10FFFF
    ];
    for bytes in invalid {
        refused(
            &server,
            &mut control,
            "invalid UTF-8",
            &whole(TEXT, bytes),
            1007,
        )
        .await;
    }
    // Invalid only once the fragments meet: a truncated character at the
    // end of the message.
    let mut split = frame(false, 0, TEXT, b"{\"type\":\"ping\"} \xce");
    split.extend(frame(true, 0, CONTINUATION, b"\x20"));
    refused(
        &server,
        &mut control,
        "invalid UTF-8 across fragments",
        &split,
        1007,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_handling() {
    let (server, mut control) = setup().await;
    // No code: answered with 1000.
    refused(
        &server,
        &mut control,
        "close without a code",
        &whole(CLOSE, b""),
        1000,
    )
    .await;
    // Valid codes (with and without a reason, up to 123 bytes) are echoed.
    for code in [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        refused(
            &server,
            &mut control,
            &format!("close {code}"),
            &whole(CLOSE, &close_payload(code, b"bye")),
            code,
        )
        .await;
    }
    let reason = "é".repeat(61) + "x";
    refused(
        &server,
        &mut control,
        "a 123-byte reason",
        &whole(CLOSE, &close_payload(1000, reason.as_bytes())),
        1000,
    )
    .await;
    // Codes no endpoint may send.
    for code in [
        0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65_535,
    ] {
        refused(
            &server,
            &mut control,
            &format!("close {code}"),
            &whole(CLOSE, &close_payload(code, b"")),
            1002,
        )
        .await;
    }
    refused(
        &server,
        &mut control,
        "a one-byte close",
        &whole(CLOSE, b"\x03"),
        1002,
    )
    .await;
    refused(
        &server,
        &mut control,
        "a reason that is not UTF-8",
        &whole(CLOSE, &close_payload(1000, b"\xff")),
        1007,
    )
    .await;
    // After its close the client's frames are not read.
    let mut raw = Raw::connect(&server).await;
    let mut bytes = whole(CLOSE, &close_payload(1000, b""));
    bytes.extend(whole(TEXT, &json_ping(20)));
    bytes.extend(whole(PING, b"after"));
    raw.send(&bytes).await;
    match raw.next().await {
        Got::Frame(CLOSE, payload) => assert_eq!(payload[..2], 1000u16.to_be_bytes()),
        other => panic!("expected the close reply, got {other:?}"),
    }
    assert_eq!(raw.next().await, Got::Eof, "nothing after the close");
    control.still_chatting().await;
}
