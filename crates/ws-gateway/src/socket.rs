//! The two halves of an upgraded WebSocket connection.
//!
//! The reader holds no buffer while the peer is silent: it reads into a
//! stack chunk inside `poll_read` and copies only what arrived, so an idle
//! connection costs no read buffer at all (tungstenite keeps a 128 KiB one
//! by default, and zero-fills whatever size it is given). The writer
//! encodes frames straight into one reusable buffer and writes a batch with
//! one syscall; event payloads are the shared bytes encoded once per event.
//! See ADR 0008.

use crate::frame::Violation;
use crate::frame::{self, Header, OP_BINARY, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Poll, ready};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Bytes read per `read` syscall. On the stack of one poll, never kept.
const READ_CHUNK: usize = 4096;

/// A write or reassembly buffer above this is given back once used: a
/// burst, a replay or a long message should not stay per connection.
const KEEP_BUFFER: usize = 16 * 1024;

/// What the peer sent, borrowed from the reader until the next call.
#[derive(Debug)]
pub(crate) enum Incoming<'a> {
    Text(&'a str),
    Binary,
    Ping(&'a [u8]),
    Pong,
    /// The peer's close frame, with its code if it gave one.
    Close(Option<u16>),
}

/// Why reading ended.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer broke the protocol; close with the violation's code.
    Violation(Violation),
    /// The socket ended or failed.
    Io,
}

impl From<Violation> for ReadError {
    fn from(v: Violation) -> Self {
        ReadError::Violation(v)
    }
}

/// Where the bytes of a complete message are.
enum Ready {
    /// In `buf` at this range.
    Frame(usize, usize, u8),
    /// In `message` (a reassembled fragmented message).
    Reassembled(u8),
}

pub(crate) struct WsReader<R> {
    io: R,
    /// Bytes read and not yet consumed, from `start`. Empty, with no
    /// capacity, whenever the reader waits on a silent peer.
    buf: Vec<u8>,
    start: usize,
    /// A fragmented message being reassembled, and its opcode.
    message: Vec<u8>,
    message_opcode: Option<u8>,
    /// The previous call returned the reassembled message: clear it.
    message_done: bool,
    max_message: usize,
}

impl<R: AsyncRead + Unpin> WsReader<R> {
    pub(crate) fn new(io: R, max_message: usize) -> Self {
        Self {
            io,
            buf: Vec::new(),
            start: 0,
            message: Vec::new(),
            message_opcode: None,
            message_done: false,
            max_message,
        }
    }

    /// The next data or control message. Text is validated UTF-8;
    /// fragmented messages are reassembled (control frames may arrive
    /// between their fragments, as the RFC allows).
    pub(crate) async fn next(&mut self) -> Result<Incoming<'_>, ReadError> {
        if self.message_done {
            self.message_done = false;
            self.message.clear();
            if self.message.capacity() > KEEP_BUFFER {
                self.message = Vec::new();
            }
        }
        let ready = loop {
            let header = frame::parse_header(&self.buf[self.start..], self.max_message)?;
            let Some(header) = header.filter(|h| self.buf.len() - self.start >= h.frame_len())
            else {
                if let Some(header) = header {
                    // A long frame: make room for all of it at once.
                    let missing = header.frame_len() - (self.buf.len() - self.start);
                    self.buf.reserve(missing);
                }
                self.fill().await?;
                continue;
            };
            let begin = self.start + header.header_len;
            let end = begin + header.payload_len;
            self.start = end;
            frame::unmask(&mut self.buf[begin..end], header.mask);
            if let Some(ready) = self.assemble(&header, begin, end)? {
                break ready;
            }
        };
        let (opcode, bytes) = match ready {
            Ready::Frame(begin, end, opcode) => (opcode, &self.buf[begin..end]),
            Ready::Reassembled(opcode) => {
                self.message_done = true;
                (opcode, &self.message[..])
            }
        };
        Ok(match opcode {
            OP_TEXT => Incoming::Text(
                std::str::from_utf8(bytes)
                    .map_err(|_| Violation::InvalidPayload("text frame is not UTF-8"))?,
            ),
            OP_BINARY => Incoming::Binary,
            OP_PING => Incoming::Ping(bytes),
            OP_PONG => Incoming::Pong,
            _ => Incoming::Close(frame::parse_close(bytes)?),
        })
    }

    /// Decides what a complete frame is: a whole message, a control frame,
    /// or a fragment to keep.
    fn assemble(
        &mut self,
        header: &Header,
        begin: usize,
        end: usize,
    ) -> Result<Option<Ready>, Violation> {
        if header.is_control() {
            return Ok(Some(Ready::Frame(begin, end, header.opcode)));
        }
        match (header.opcode, self.message_opcode) {
            (OP_CONTINUATION, None) => Err(Violation::Protocol("continuation without a message")),
            (OP_TEXT | OP_BINARY, Some(_)) => {
                Err(Violation::Protocol("a new message inside a fragmented one"))
            }
            (opcode, None) if header.fin => Ok(Some(Ready::Frame(begin, end, opcode))),
            (opcode, started) => {
                if self.message.len() + (end - begin) > self.max_message {
                    return Err(Violation::TooLarge);
                }
                self.message.extend_from_slice(&self.buf[begin..end]);
                let opcode = started.unwrap_or(opcode);
                if header.fin {
                    self.message_opcode = None;
                    Ok(Some(Ready::Reassembled(opcode)))
                } else {
                    self.message_opcode = Some(opcode);
                    Ok(None)
                }
            }
        }
    }

    /// Reads and discards until the peer ends the connection. After our
    /// close frame, so the socket is not dropped with unread bytes in it:
    /// the kernel would answer those with a reset, which can destroy our
    /// close frame before the peer reads it (it would see 1006, not the
    /// code we sent).
    pub(crate) async fn drain(&mut self) {
        self.buf = Vec::new();
        self.start = 0;
        let mut chunk = [0u8; READ_CHUNK];
        while let Ok(n) = self.io.read(&mut chunk).await {
            if n == 0 {
                return;
            }
        }
    }

    /// Reads what the socket has. Consumed bytes are dropped first, and an
    /// empty buffer is given back before waiting.
    async fn fill(&mut self) -> Result<(), ReadError> {
        if self.start == self.buf.len() {
            self.buf = Vec::new();
        } else if self.start > 0 {
            self.buf.drain(..self.start);
        }
        self.start = 0;
        let io = &mut self.io;
        let buf = &mut self.buf;
        let read = poll_fn(|cx| {
            let mut chunk = [0u8; READ_CHUNK];
            let mut chunk = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut *io).poll_read(cx, &mut chunk))?;
            buf.extend_from_slice(chunk.filled());
            Poll::Ready(Ok::<usize, io::Error>(chunk.filled().len()))
        })
        .await;
        match read {
            Ok(0) | Err(_) => Err(ReadError::Io),
            Ok(_) => Ok(()),
        }
    }
}

pub(crate) struct WsWriter<W> {
    io: W,
    buf: Vec<u8>,
    /// Bytes of `buf` already on the socket. A flush cancelled half-way
    /// (a slow consumer closed while its socket was full) resumes from
    /// here, so the frame it cut is finished before the close frame.
    written: usize,
}

impl<W: AsyncWrite + Unpin> WsWriter<W> {
    #[cfg(test)]
    pub(crate) fn new(io: W) -> Self {
        Self::with_preface(io, Vec::new())
    }

    /// A writer whose first flush sends `preface` (the upgrade response).
    pub(crate) fn with_preface(io: W, preface: Vec<u8>) -> Self {
        Self {
            io,
            buf: preface,
            written: 0,
        }
    }

    pub(crate) fn text(&mut self, payload: &[u8]) {
        frame::encode(&mut self.buf, OP_TEXT, payload);
    }

    pub(crate) fn ping(&mut self) {
        frame::encode(&mut self.buf, OP_PING, &[]);
    }

    pub(crate) fn pong(&mut self, payload: &[u8]) {
        frame::encode(&mut self.buf, OP_PONG, payload);
    }

    pub(crate) fn close(&mut self, code: u16, reason: &str) {
        frame::encode_close(&mut self.buf, code, reason);
    }

    /// Writes everything encoded so far. Cancel-safe: progress is kept.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        while self.written < self.buf.len() {
            let n = self.io.write(&self.buf[self.written..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        if self.buf.capacity() > KEEP_BUFFER {
            self.buf = Vec::new();
        }
        self.io.flush().await
    }

    /// Ends our side of the TCP stream after a close frame.
    pub(crate) async fn shutdown(&mut self) {
        let _ = self.io.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::OP_CLOSE;
    use tokio::io::AsyncWriteExt;

    fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![u8::from(fin) << 7 | opcode];
        assert!(payload.len() < 126);
        out.push(0x80 | payload.len() as u8);
        out.extend_from_slice(&mask);
        let mut body = payload.to_vec();
        frame::unmask(&mut body, mask);
        out.extend_from_slice(&body);
        out
    }

    #[tokio::test]
    async fn reassembles_fragments_around_a_ping_and_splits_reads_anywhere() {
        let mut wire = Vec::new();
        wire.extend(masked(false, OP_TEXT, b"hel"));
        wire.extend(masked(true, OP_PING, b"p"));
        wire.extend(masked(false, OP_CONTINUATION, b"lo "));
        wire.extend(masked(true, OP_CONTINUATION, "wörld".as_bytes()));
        wire.extend(masked(true, OP_TEXT, b"second"));
        wire.extend(masked(true, OP_CLOSE, &[0x03, 0xE8]));
        // Byte by byte: every split point of every frame.
        let (client, server) = tokio::io::duplex(1);
        let writer = tokio::spawn(async move {
            let mut client = client;
            for byte in wire {
                client.write_all(&[byte]).await.expect("write");
            }
            client
        });
        let mut reader = WsReader::new(server, 1024);
        assert!(matches!(reader.next().await, Ok(Incoming::Ping(b"p"))));
        assert!(matches!(
            reader.next().await,
            Ok(Incoming::Text("hello wörld"))
        ));
        assert!(matches!(reader.next().await, Ok(Incoming::Text("second"))));
        assert!(matches!(
            reader.next().await,
            Ok(Incoming::Close(Some(1000)))
        ));
        drop(writer.await.expect("writer"));
        assert!(matches!(reader.next().await, Err(ReadError::Io)));
    }

    #[tokio::test]
    async fn refuses_bad_streams_with_the_right_code() {
        for (wire, code) in [
            (masked(true, OP_CONTINUATION, b"x"), 1002),
            (
                [masked(false, OP_TEXT, b"a"), masked(true, OP_TEXT, b"b")].concat(),
                1002,
            ),
            (masked(true, OP_TEXT, &[0xFF, 0xFE]), 1007),
            (masked(true, OP_TEXT, &[b'a'; 100]), 1009),
            (
                [
                    masked(false, OP_TEXT, &[b'a'; 40]),
                    masked(true, OP_CONTINUATION, &[b'a'; 40]),
                ]
                .concat(),
                1009,
            ),
        ] {
            let (mut client, server) = tokio::io::duplex(4096);
            client.write_all(&wire).await.expect("write");
            let mut reader = WsReader::new(server, 64);
            match reader.next().await {
                Err(ReadError::Violation(v)) => assert_eq!(v.close_code(), code),
                other => panic!("expected close {code}, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_cancelled_flush_resumes_where_it_stopped() {
        use tokio::io::AsyncReadExt;
        let (client, mut server) = tokio::io::duplex(64);
        let mut writer = WsWriter::new(client);
        let payload = vec![b'x'; 1000];
        writer.text(&payload);
        // The peer reads nothing: the flush stalls after 64 bytes.
        let stalled =
            tokio::time::timeout(std::time::Duration::from_millis(50), writer.flush()).await;
        assert!(stalled.is_err());
        writer.close(4008, "slow");
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            server.read_to_end(&mut all).await.expect("read");
            all
        });
        writer.flush().await.expect("flush");
        writer.shutdown().await;
        drop(writer);
        let all = reader.await.expect("reader");
        let mut expected = Vec::new();
        frame::encode(&mut expected, OP_TEXT, &payload);
        frame::encode_close(&mut expected, 4008, "slow");
        assert_eq!(
            all, expected,
            "the cut frame is finished, then the close frame"
        );
    }

    #[tokio::test]
    async fn an_idle_reader_keeps_no_buffer() {
        let (mut client, server) = tokio::io::duplex(4096);
        let mut reader = WsReader::new(server, 1024);
        client
            .write_all(&masked(true, OP_TEXT, b"one"))
            .await
            .expect("write");
        assert!(matches!(reader.next().await, Ok(Incoming::Text("one"))));
        let next = tokio::time::timeout(std::time::Duration::from_millis(50), reader.next()).await;
        assert!(next.is_err(), "nothing more was sent");
        assert_eq!(reader.buf.capacity(), 0);
    }
}
