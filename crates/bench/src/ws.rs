//! A lean WebSocket client for subscribers: the handshake, and server
//! frames read in place from one reusable buffer.
//!
//! The generator must cost less per delivery than the server it measures,
//! or it measures itself. Through tungstenite each delivery cost a zeroed
//! read buffer, a `Bytes` split and an owned message; at 200k deliveries/s
//! the generator's core was busier than the server's (perf, BENCHMARKS.md).
//! Here a read takes what the socket has, every complete frame in it is
//! handed out as a slice, and nothing is allocated per frame. Publishers,
//! one connection each, keep tungstenite.

use crate::net::Dialer;
use crate::subscribe::{Failure, read_head};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

/// What one read asks the socket for at least.
const READ_SIZE: usize = 4 * 1024;
/// Largest message a subscriber accepts.
const MAX_MESSAGE: usize = 1024 * 1024;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A data message of the server, borrowed from the client's buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum WsMessage<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// One subscriber's WebSocket.
pub struct LeanWs {
    stream: TcpStream,
    /// Bytes read; `buf[start..]` is not parsed yet.
    buf: Vec<u8>,
    start: usize,
    /// A fragmented message being assembled, and its opcode.
    message: Vec<u8>,
    fragmented: Option<u8>,
}

/// Where the next data message lies.
enum Data {
    /// A whole frame's payload in `buf`.
    InBuffer(u8, std::ops::Range<usize>),
    /// The last fragment arrived: the message is in `message`.
    Assembled(u8),
}

/// One frame taken from the buffer.
enum Parsed {
    Data(Data),
    Ping(std::ops::Range<usize>),
    Close,
    Skip,
}

impl LeanWs {
    /// Opens `ws://authority/path` over a socket from `dialer` and checks
    /// the server's `101` and `Sec-WebSocket-Accept`.
    pub async fn connect(dialer: &Dialer, url: &str) -> Result<Self, Failure> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| Failure::new("bad_url"))?;
        let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
        let mut stream = dialer
            .tcp()
            .await
            .map_err(|_| Failure::new("connect_failed"))?;
        let key = generate_key();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|_| Failure::new("handshake_failed"))?;
        let mut buf = Vec::with_capacity(READ_SIZE);
        let head_end = read_head(&mut stream, &mut buf, "handshake_failed")
            .await
            .map_err(|_| Failure::new("handshake_failed"))?;
        let head = std::str::from_utf8(buf.get(..head_end).unwrap_or_default())
            .map_err(|_| Failure::new("handshake_failed"))?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Failure::new("handshake_failed"))?;
        if status != 101 {
            return Err(Failure(format!("http_{status}")));
        }
        let expected = derive_accept_key(key.as_bytes());
        let accepted = head.lines().skip(1).any(|line| {
            line.split_once(':').is_some_and(|(name, value)| {
                name.trim().eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == expected
            })
        });
        if !accepted {
            return Err(Failure::new("handshake_failed"));
        }
        // Frames that came right behind the head stay in the buffer.
        Ok(Self {
            stream,
            buf,
            start: head_end + 4,
            message: Vec::new(),
            fragmented: None,
        })
    }

    /// Sends one text frame (masked, as a client must).
    pub async fn send_text(&mut self, text: &str) -> Result<(), Failure> {
        self.write_frame(OP_TEXT, text.as_bytes()).await
    }

    /// The next data message; pings are answered on the way. `Ok(None)`
    /// once the server closed or the connection ended.
    pub async fn next(&mut self) -> Result<Option<WsMessage<'_>>, Failure> {
        let data = loop {
            match self.take_frame()? {
                Some(Parsed::Data(data)) => break data,
                Some(Parsed::Ping(range)) => {
                    let payload = self.buf.get(range).unwrap_or_default().to_vec();
                    self.write_frame(OP_PONG, &payload).await?;
                }
                Some(Parsed::Close) => return Ok(None),
                Some(Parsed::Skip) => {}
                None => {
                    if !self.fill().await? {
                        return Ok(None);
                    }
                }
            }
        };
        let (opcode, bytes) = match data {
            Data::InBuffer(opcode, range) => (opcode, self.buf.get(range).unwrap_or_default()),
            Data::Assembled(opcode) => (opcode, self.message.as_slice()),
        };
        if opcode == OP_TEXT {
            let text = std::str::from_utf8(bytes).map_err(|_| Failure::new("bad_utf8"))?;
            Ok(Some(WsMessage::Text(text)))
        } else {
            Ok(Some(WsMessage::Binary(bytes)))
        }
    }

    /// Sends a close frame and shuts the socket down; errors are moot.
    pub async fn close(&mut self) {
        let _ = self.write_frame(OP_CLOSE, &1000u16.to_be_bytes()).await;
        let _ = self.stream.shutdown().await;
    }

    /// Takes the next complete frame off `buf[start..]`, if there is one.
    fn take_frame(&mut self) -> Result<Option<Parsed>, Failure> {
        let input = self.buf.get(self.start..).unwrap_or_default();
        let Some((header, len)) = header(input)? else {
            return Ok(None);
        };
        let (b0, masked) = match input {
            [b0, b1, ..] => (*b0, b1 & 0x80 != 0),
            _ => return Ok(None),
        };
        if masked {
            return Err(Failure::new("masked_server_frame"));
        }
        if len > MAX_MESSAGE {
            return Err(Failure::new("too_large"));
        }
        if input.len() < header + len {
            return Ok(None);
        }
        let payload = self.start + header..self.start + header + len;
        self.start += header + len;
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        Ok(Some(match opcode {
            OP_TEXT | OP_BINARY if fin && self.fragmented.is_none() => {
                Parsed::Data(Data::InBuffer(opcode, payload))
            }
            OP_TEXT | OP_BINARY if self.fragmented.is_none() => {
                self.fragmented = Some(opcode);
                self.message.clear();
                self.message
                    .extend_from_slice(self.buf.get(payload).unwrap_or_default());
                Parsed::Skip
            }
            OP_CONTINUATION => {
                let Some(first) = self.fragmented else {
                    return Err(Failure::new("bad_frame"));
                };
                if self.message.len() + len > MAX_MESSAGE {
                    return Err(Failure::new("too_large"));
                }
                self.message
                    .extend_from_slice(self.buf.get(payload).unwrap_or_default());
                if fin {
                    self.fragmented = None;
                    Parsed::Data(Data::Assembled(first))
                } else {
                    Parsed::Skip
                }
            }
            OP_PING => Parsed::Ping(payload),
            OP_PONG => Parsed::Skip,
            OP_CLOSE => Parsed::Close,
            _ => return Err(Failure::new("bad_frame")),
        }))
    }

    /// Reads more; `false` at the end of the connection.
    async fn fill(&mut self) -> Result<bool, Failure> {
        // Keep only the unparsed tail; a buffer a large message grew goes
        // back to the base size once it is empty.
        self.buf.drain(..self.start.min(self.buf.len()));
        self.start = 0;
        if self.buf.is_empty() && self.buf.capacity() > 4 * READ_SIZE {
            self.buf = Vec::with_capacity(READ_SIZE);
        }
        self.buf.reserve(READ_SIZE);
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            Err(_) => Err(Failure::new("io_error")),
        }
    }

    async fn write_frame(&mut self, opcode: u8, payload: &[u8]) -> Result<(), Failure> {
        let frame = masked_frame(opcode, payload);
        self.stream
            .write_all(&frame)
            .await
            .map_err(|_| Failure::new("io_error"))
    }
}

/// The header length and payload length of the frame `input` starts with,
/// once its header is complete.
fn header(input: &[u8]) -> Result<Option<(usize, usize)>, Failure> {
    let Some(&b1) = input.get(1) else {
        return Ok(None);
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    let (size, len) = match b1 & 0x7F {
        126 => {
            let Some(bytes) = input.get(2..4) else {
                return Ok(None);
            };
            (4, u64::from(u16::from_be_bytes([bytes[0], bytes[1]])))
        }
        127 => {
            let Some(bytes) = input.get(2..10) else {
                return Ok(None);
            };
            let mut be = [0u8; 8];
            be.copy_from_slice(bytes);
            (10, u64::from_be_bytes(be))
        }
        n => (2, u64::from(n)),
    };
    let len = usize::try_from(len).map_err(|_| Failure::new("too_large"))?;
    Ok(Some((size + mask, len)))
}

/// A final client frame; the masking key is fixed, which servers accept
/// (it only has to be unpredictable to defeat proxy cache poisoning, which
/// a load generator on loopback does not face).
fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    const KEY: [u8; 4] = [0x5b, 0x1d, 0x0c, 0x7e];
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&KEY);
    frame.extend(payload.iter().zip(KEY.iter().cycle()).map(|(b, k)| b ^ k));
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscribe::find;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use tokio::net::TcpListener;

    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n @ 0..=125 => f.push(n as u8),
            n => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    /// A server that answers the handshake, then writes `wire` one byte at
    /// a time and returns what the client sent after the head.
    async fn serve(wire: Vec<u8>) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}/sub/x", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            while find(&head, b"\r\n\r\n").is_none() {
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await.expect("head");
                head.push(b[0]);
            }
            let head = String::from_utf8(head).expect("utf8");
            let key = head
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .expect("key")
                .trim()
                .to_owned();
            let reply = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                derive_accept_key(key.as_bytes())
            );
            s.write_all(reply.as_bytes()).await.expect("reply");
            for b in wire {
                s.write_all(&[b]).await.expect("write");
            }
            let mut rest = Vec::new();
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut rest))
                    .await;
            rest
        });
        (url, task)
    }

    async fn dialer(url: &str) -> Dialer {
        let addr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap_or("");
        let (host, port) = addr.split_once(':').expect("host:port");
        Dialer::resolve(
            "test",
            host,
            port.parse().expect("port"),
            Arc::from(Vec::new()),
            Arc::new(AtomicUsize::new(0)),
        )
        .await
        .expect("resolve")
    }

    /// Frames split at every byte, a fragmented message around a ping, a
    /// 16-bit length, then a close: the messages come out whole, the ping
    /// is answered with its payload, and the close ends the stream.
    #[tokio::test]
    async fn reads_frames_split_anywhere_and_answers_pings() {
        let long = "y".repeat(300);
        let mut wire = server_frame(true, OP_TEXT, b"hello");
        wire.extend(server_frame(false, OP_TEXT, b"frag"));
        wire.extend(server_frame(true, OP_PING, b"p1"));
        wire.extend(server_frame(true, OP_CONTINUATION, b"mented"));
        wire.extend(server_frame(true, OP_TEXT, long.as_bytes()));
        wire.extend(server_frame(true, OP_BINARY, &[1, 2, 3]));
        wire.extend(server_frame(true, OP_CLOSE, &1000u16.to_be_bytes()));
        let (url, server) = serve(wire).await;
        let mut ws = LeanWs::connect(&dialer(&url).await, &url)
            .await
            .expect("connect");
        assert_eq!(ws.next().await.expect("1"), Some(WsMessage::Text("hello")));
        assert_eq!(
            ws.next().await.expect("2"),
            Some(WsMessage::Text("fragmented"))
        );
        assert_eq!(
            ws.next().await.expect("3"),
            Some(WsMessage::Text(long.as_str()))
        );
        assert_eq!(
            ws.next().await.expect("4"),
            Some(WsMessage::Binary(&[1, 2, 3]))
        );
        assert_eq!(ws.next().await.expect("close"), None);
        ws.close().await;
        let sent = server.await.expect("server");
        let pong = masked_frame(OP_PONG, b"p1");
        assert!(sent.starts_with(&pong), "the pong comes first: {sent:?}");
        assert!(sent.ends_with(&masked_frame(OP_CLOSE, &1000u16.to_be_bytes())));
    }

    #[tokio::test]
    async fn refuses_masked_server_frames() {
        let mut masked = server_frame(true, OP_TEXT, b"x");
        masked[1] |= 0x80;
        masked.extend_from_slice(&[0, 0, 0, 0]);
        let (url, _server) = serve(masked).await;
        let mut ws = LeanWs::connect(&dialer(&url).await, &url)
            .await
            .expect("connect");
        assert_eq!(
            ws.next().await.err(),
            Some(Failure::new("masked_server_frame"))
        );
    }

    #[test]
    fn client_frames_are_masked_with_the_right_lengths() {
        for n in [0usize, 125, 126, 70_000] {
            let payload = vec![b'a'; n];
            let f = masked_frame(OP_TEXT, &payload);
            assert_eq!(f[0], 0x81);
            assert_ne!(f[1] & 0x80, 0, "mask bit");
            let (head, len) = header(&f).expect("header").expect("complete");
            assert_eq!(len, n);
            assert_eq!(f.len(), head + n);
        }
    }
}
