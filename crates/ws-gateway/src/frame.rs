//! WebSocket framing (RFC 6455 §5), server side: parsing the masked frames
//! a client sends and encoding the unmasked ones we send.
//!
//! Pure functions over byte slices, so the socket layer can keep no buffer
//! at all while a connection is idle (see ADR 0008).

/// Opcodes (RFC 6455 §5.2).
pub(crate) const OP_CONTINUATION: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;

/// The longest header: 2 bytes, a 64-bit length and a mask key.
pub(crate) const MAX_HEADER: usize = 14;

/// Control frames carry at most this much (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Close codes we send for protocol violations (RFC 6455 §7.4.1).
pub(crate) const CLOSE_PROTOCOL_ERROR: u16 = 1002;
pub(crate) const CLOSE_INVALID_PAYLOAD: u16 = 1007;
pub(crate) const CLOSE_TOO_LARGE: u16 = 1009;

/// Why a client's bytes are not a WebSocket stream we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Violation {
    /// RSV bits without a negotiated extension, an unknown opcode, an
    /// unmasked client frame, a fragmented or long control frame, or a
    /// continuation without a start.
    Protocol(&'static str),
    /// A frame or message above the size limit.
    TooLarge,
    /// A text message that is not UTF-8, or a malformed close payload.
    InvalidPayload(&'static str),
}

impl Violation {
    pub(crate) fn close_code(self) -> u16 {
        match self {
            Violation::Protocol(_) => CLOSE_PROTOCOL_ERROR,
            Violation::TooLarge => CLOSE_TOO_LARGE,
            Violation::InvalidPayload(_) => CLOSE_INVALID_PAYLOAD,
        }
    }

    pub(crate) fn reason(self) -> &'static str {
        match self {
            Violation::Protocol(reason) | Violation::InvalidPayload(reason) => reason,
            Violation::TooLarge => "frame too large",
        }
    }
}

/// A parsed frame header; the payload follows it in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub fin: bool,
    pub opcode: u8,
    pub mask: [u8; 4],
    /// Bytes of the header itself.
    pub header_len: usize,
    /// Bytes of the payload.
    pub payload_len: usize,
}

impl Header {
    pub(crate) fn frame_len(&self) -> usize {
        self.header_len + self.payload_len
    }

    pub(crate) fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// Parses the header at the start of `buf`. `Ok(None)` means more bytes
/// are needed. Everything that can be refused from the header alone is
/// refused here, before any payload is buffered.
pub(crate) fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<Header>, Violation> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return Err(Violation::Protocol("reserved bits set"));
    }
    let opcode = b0 & 0x0F;
    if !matches!(
        opcode,
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(Violation::Protocol("unknown opcode"));
    }
    if b1 & 0x80 == 0 {
        return Err(Violation::Protocol("client frames must be masked"));
    }
    let (payload_len, len_bytes) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 2),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(b);
                (u64::from_be_bytes(be), 8)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 0),
    };
    let control = opcode & 0x8 != 0;
    if control && (!fin || payload_len > MAX_CONTROL_PAYLOAD as u64) {
        return Err(Violation::Protocol(
            "control frames must be whole and at most 125 bytes",
        ));
    }
    let payload_len = usize::try_from(payload_len).map_err(|_| Violation::TooLarge)?;
    if payload_len > max_payload {
        return Err(Violation::TooLarge);
    }
    let mask_at = 2 + len_bytes;
    let Some(mask) = buf.get(mask_at..mask_at + 4) else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask: [mask[0], mask[1], mask[2], mask[3]],
        header_len: mask_at + 4,
        payload_len,
    }))
}

/// Unmasks a client payload in place.
pub(crate) fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let value = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&value.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i];
    }
}

/// Appends one whole, unmasked server frame to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.reserve(MAX_HEADER + payload.len());
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        // Fits in seven bits by the check above.
        out.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// Appends a close frame with `code` and a reason cut to fit a control
/// frame (on a character boundary).
pub(crate) fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    encode(out, OP_CLOSE, &payload[..2 + end]);
}

/// Reads a client's close payload: no code, or a code and a UTF-8 reason.
pub(crate) fn parse_close(payload: &[u8]) -> Result<Option<u16>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(Violation::Protocol("close payload of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(Violation::Protocol("invalid close code"));
            }
            std::str::from_utf8(reason)
                .map_err(|_| Violation::InvalidPayload("close reason is not UTF-8"))?;
            Ok(Some(code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![u8::from(fin) << 7 | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        let mut body = payload.to_vec();
        unmask(&mut body, mask);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn parses_and_unmasks_every_length_form() {
        for len in [0, 5, 125, 126, 1000, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let bytes = client_frame(true, OP_TEXT, &payload);
            let header = parse_header(&bytes, 1 << 20)
                .expect("valid")
                .expect("complete");
            assert_eq!(header.payload_len, len);
            assert_eq!(header.frame_len(), bytes.len());
            let mut body = bytes[header.header_len..].to_vec();
            unmask(&mut body, header.mask);
            assert_eq!(body, payload, "length {len}");
            // Every strict prefix of the header asks for more bytes.
            for cut in 0..header.header_len {
                assert_eq!(parse_header(&bytes[..cut], 1 << 20), Ok(None));
            }
        }
    }

    #[test]
    fn refuses_what_a_server_must_refuse() {
        let mut unmasked = client_frame(true, OP_TEXT, b"hi");
        unmasked[1] &= 0x7F;
        assert!(matches!(
            parse_header(&unmasked, 100),
            Err(Violation::Protocol(_))
        ));
        let mut reserved = client_frame(true, OP_TEXT, b"hi");
        reserved[0] |= 0x40;
        assert!(matches!(
            parse_header(&reserved, 100),
            Err(Violation::Protocol(_))
        ));
        let unknown = client_frame(true, 0x3, b"hi");
        assert!(parse_header(&unknown, 100).is_err());
        let fragmented_ping = client_frame(false, OP_PING, b"hi");
        assert!(parse_header(&fragmented_ping, 100).is_err());
        let long_ping = client_frame(true, OP_PING, &[0; 126]);
        assert!(parse_header(&long_ping, 1000).is_err());
        let big = client_frame(true, OP_BINARY, &[0; 101]);
        assert_eq!(parse_header(&big, 100), Err(Violation::TooLarge));
        // A huge declared length is refused from the header alone.
        let huge = [
            0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4,
        ];
        assert_eq!(parse_header(&huge, 1 << 20), Err(Violation::TooLarge));
    }

    #[test]
    fn encodes_server_frames_unmasked() {
        let mut out = Vec::new();
        encode(&mut out, OP_TEXT, b"hello");
        assert_eq!(out, b"\x81\x05hello");
        let mut out = Vec::new();
        encode(&mut out, OP_BINARY, &[7; 300]);
        assert_eq!(&out[..4], &[0x82, 126, 0x01, 0x2C]);
        assert_eq!(out.len(), 304);
        let mut out = Vec::new();
        encode(&mut out, OP_BINARY, &[7; 70_000]);
        assert_eq!(&out[..2], &[0x82, 127]);
        assert_eq!(out.len(), 70_010);
    }

    #[test]
    fn close_frames_round_trip_and_fit() {
        let mut out = Vec::new();
        encode_close(&mut out, 4008, &"é".repeat(100));
        assert_eq!(out[0], 0x88);
        let len = usize::from(out[1]);
        assert!(len <= 125);
        assert_eq!(parse_close(&out[2..]), Ok(Some(4008)));
        assert_eq!(parse_close(&[]), Ok(None));
        assert!(parse_close(&[3]).is_err());
        assert!(
            parse_close(&[0x03, 0xE7]).is_err(),
            "999 is not a close code"
        );
        assert!(
            parse_close(&[0x03, 0xE8, 0xFF]).is_err(),
            "reason not UTF-8"
        );
    }
}
