//! RFC 6455 §5.2 framing: the parser of client frame headers and the
//! encoder of server frame headers.
//!
//! The parser checks every rule that a header alone can break, as soon as
//! the bytes that carry it are in (a bad first byte fails before the
//! length arrives): reserved bits (no extension is ever negotiated),
//! reserved opcodes, the mask a client must set, control frames that are
//! fragmented or over 125 bytes, and payloads over the configured maximum
//! (1009 before the payload is read, so it is never buffered).
//! Server frames are never masked and never fragmented: the header is FIN,
//! the opcode and the length in its shortest form.

use wire::CloseCode;

/// A frame's opcode (§5.2, §11.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn parse(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    pub(crate) fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// A rule of RFC 6455 the client broke: the connection is closed with
/// `code`, and `reason` (in the close frame) says which rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{reason} ({})", code.code())]
pub(crate) struct Violation {
    pub(crate) code: CloseCode,
    pub(crate) reason: &'static str,
}

impl Violation {
    pub(crate) const fn protocol(reason: &'static str) -> Violation {
        Violation { code: CloseCode::ProtocolError, reason }
    }
}

pub(crate) const TOO_BIG: Violation =
    Violation { code: CloseCode::MessageTooBig, reason: "message over max_frame_bytes" };

/// The largest control frame payload (§5.5).
pub(crate) const MAX_CONTROL: usize = 125;

/// A client frame's header, parsed and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) fin: bool,
    pub(crate) opcode: Opcode,
    pub(crate) mask: [u8; 4],
    /// Bytes of the header itself (2 to 14).
    pub(crate) header_len: usize,
    pub(crate) payload_len: usize,
}

/// Parses the client frame header at the start of `buf`: `Ok(None)` while
/// more bytes are needed, an error as soon as a rule is broken.
pub(crate) fn parse_head(buf: &[u8], max_payload: usize) -> Result<Option<Head>, Violation> {
    let Some(&b0) = buf.first() else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(Violation::protocol("reserved bits set without a negotiated extension"));
    }
    let opcode = Opcode::parse(b0 & 0x0F).ok_or(Violation::protocol("reserved opcode"))?;
    let fin = b0 & 0x80 != 0;
    if opcode.is_control() && !fin {
        return Err(Violation::protocol("fragmented control frame"));
    }
    let Some(&b1) = buf.get(1) else { return Ok(None) };
    if b1 & 0x80 == 0 {
        return Err(Violation::protocol("client frames must be masked"));
    }
    let (len, len_bytes) = match b1 & 0x7F {
        126 => (buf.get(2..4).map(|b| u64::from(u16::from_be_bytes([b[0], b[1]]))), 2),
        127 => {
            (buf.get(2..10).map(|b| u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])), 8)
        }
        n => (Some(u64::from(n)), 0),
    };
    if opcode.is_control() && b1 & 0x7F > MAX_CONTROL as u8 {
        return Err(Violation::protocol("control frame over 125 bytes"));
    }
    let Some(len) = len else { return Ok(None) };
    if len >> 63 != 0 {
        return Err(Violation::protocol("payload length with its most significant bit set"));
    }
    let payload_len = usize::try_from(len).ok().filter(|&l| l <= max_payload).ok_or(TOO_BIG)?;
    let mask_at = 2 + len_bytes;
    let Some(mask) = buf.get(mask_at..mask_at + 4) else { return Ok(None) };
    let mask = [mask[0], mask[1], mask[2], mask[3]];
    Ok(Some(Head { fin, opcode, mask, header_len: mask_at + 4, payload_len }))
}

/// Unmasks a client payload in place (§5.3).
pub(crate) fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// A server frame's header: FIN, the opcode, no mask, the shortest length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    bytes: [u8; 10],
    len: u8,
}

impl Header {
    pub(crate) const EMPTY: Header = Header { bytes: [0; 10], len: 0 };

    pub(crate) fn new(opcode: Opcode, payload_len: usize) -> Header {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x80 | opcode.bits();
        let len = if payload_len < 126 {
            bytes[1] = payload_len as u8;
            2
        } else if let Ok(short) = u16::try_from(payload_len) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            10
        };
        Header { bytes, len }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![b0];
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
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn parses_every_length_form_and_waits_for_missing_bytes() {
        for len in [0, 1, 125, 126, 65535, 65536] {
            let frame = masked(0x81, &vec![b'a'; len]);
            let head = parse_head(&frame, 1 << 20).unwrap().unwrap();
            assert_eq!((head.fin, head.opcode, head.payload_len), (true, Opcode::Text, len));
            assert_eq!(head.header_len + len, frame.len());
            for cut in 0..head.header_len {
                assert_eq!(parse_head(&frame[..cut], 1 << 20), Ok(None), "len {len} cut {cut}");
            }
            let mut payload = frame[head.header_len..].to_vec();
            unmask(&mut payload, head.mask);
            assert!(payload.iter().all(|&b| b == b'a'));
        }
    }

    #[test]
    fn rejects_what_the_rfc_forbids() {
        let protocol = |b: &[u8]| parse_head(b, 1024).unwrap_err().code;
        assert_eq!(protocol(&[0xC1]), CloseCode::ProtocolError, "RSV1");
        assert_eq!(protocol(&[0x83]), CloseCode::ProtocolError, "opcode 3");
        assert_eq!(protocol(&[0x8B]), CloseCode::ProtocolError, "opcode 0xB");
        assert_eq!(protocol(&[0x09]), CloseCode::ProtocolError, "fragmented ping");
        assert_eq!(protocol(&[0x81, 0x05]), CloseCode::ProtocolError, "unmasked");
        assert_eq!(protocol(&[0x89, 0x80 | 126]), CloseCode::ProtocolError, "ping of 126");
        let huge = [0x81, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(protocol(&huge), CloseCode::ProtocolError);
        assert_eq!(parse_head(&masked(0x81, &[b'x'; 1025]), 1024), Err(TOO_BIG));
    }

    #[test]
    fn server_headers_use_the_shortest_length() {
        assert_eq!(Header::new(Opcode::Text, 5).as_slice(), &[0x81, 5]);
        assert_eq!(Header::new(Opcode::Ping, 0).as_slice(), &[0x89, 0]);
        assert_eq!(Header::new(Opcode::Text, 126).as_slice(), &[0x81, 126, 0, 126]);
        assert_eq!(Header::new(Opcode::Text, 65536).as_slice(), &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }
}
