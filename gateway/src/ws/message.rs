//! Messages out of frames (RFC 6455 §5.4–5.6, §8.1): fragments joined,
//! control frames passed through between them, text checked as UTF-8 as
//! each fragment comes (an invalid sequence fails at once, even split
//! across fragments), and close payloads checked (§5.5.1, §7.4).
//!
//! Only a fragmented message keeps a buffer; an unfragmented one is read
//! from the connection's input directly.

use bytes::Bytes;
use wire::CloseCode;

use super::frame::{Head, Opcode, TOO_BIG, Violation};

/// A whole message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    Text(String),
    /// The protocol has no use for binary payloads; only the fact counts.
    Binary,
    /// Its payload, for the pong that must echo it.
    Ping(Bytes),
    Pong,
    /// The client's close code, if it sent one.
    Close(Option<u16>),
}

const INVALID_UTF8: Violation =
    Violation { code: CloseCode::InvalidPayload, reason: "text is not valid UTF-8" };

/// A fragmented message being received.
struct Partial {
    text: bool,
    data: Vec<u8>,
    /// Bytes of `data` known to be (the start of) valid UTF-8.
    checked: usize,
}

/// Joins one connection's frames into messages.
pub(crate) struct Assembler {
    max_message: usize,
    partial: Option<Box<Partial>>,
}

impl Assembler {
    pub(crate) fn new(max_message: usize) -> Assembler {
        Assembler { max_message, partial: None }
    }

    /// Takes one frame, its payload unmasked; returns the message it
    /// completes, if any.
    pub(crate) fn push(&mut self, head: &Head, payload: &[u8]) -> Result<Option<Message>, Violation> {
        match head.opcode {
            Opcode::Ping => Ok(Some(Message::Ping(Bytes::copy_from_slice(payload)))),
            Opcode::Pong => Ok(Some(Message::Pong)),
            Opcode::Close => close(payload).map(Some),
            Opcode::Text | Opcode::Binary => {
                if self.partial.is_some() {
                    return Err(Violation::protocol("new data frame inside a fragmented message"));
                }
                let text = head.opcode == Opcode::Text;
                if head.fin {
                    return whole(text, payload).map(Some);
                }
                let mut partial = Partial { text, data: payload.to_vec(), checked: 0 };
                check_utf8(&mut partial, false)?;
                self.partial = Some(Box::new(partial));
                Ok(None)
            }
            Opcode::Continuation => {
                let partial = self
                    .partial
                    .as_mut()
                    .ok_or(Violation::protocol("continuation frame without a message to continue"))?;
                if partial.data.len() + payload.len() > self.max_message {
                    return Err(TOO_BIG);
                }
                partial.data.extend_from_slice(payload);
                check_utf8(partial, head.fin)?;
                if !head.fin {
                    return Ok(None);
                }
                let Some(partial) = self.partial.take() else { return Ok(None) };
                if !partial.text {
                    return Ok(Some(Message::Binary));
                }
                String::from_utf8(partial.data).map(|s| Some(Message::Text(s))).map_err(|_| INVALID_UTF8)
            }
        }
    }
}

fn whole(text: bool, payload: &[u8]) -> Result<Message, Violation> {
    if !text {
        return Ok(Message::Binary);
    }
    std::str::from_utf8(payload).map(|s| Message::Text(s.to_owned())).map_err(|_| INVALID_UTF8)
}

/// Checks what arrived since the last fragment; a sequence cut at the
/// fragment's end is only an error if the message ends there.
fn check_utf8(partial: &mut Partial, fin: bool) -> Result<(), Violation> {
    if !partial.text {
        return Ok(());
    }
    match std::str::from_utf8(&partial.data[partial.checked..]) {
        Ok(_) => {
            partial.checked = partial.data.len();
            Ok(())
        }
        Err(e) if e.error_len().is_none() && !fin => {
            partial.checked += e.valid_up_to();
            Ok(())
        }
        Err(_) => Err(INVALID_UTF8),
    }
}

/// A close frame's payload: nothing, or a code and a UTF-8 reason.
fn close(payload: &[u8]) -> Result<Message, Violation> {
    match payload {
        [] => Ok(Message::Close(None)),
        [_] => Err(Violation::protocol("close payload of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code_allowed(code) {
                return Err(Violation::protocol("close code not allowed on the wire"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(Violation {
                    code: CloseCode::InvalidPayload,
                    reason: "close reason is not valid UTF-8",
                });
            }
            Ok(Message::Close(Some(code)))
        }
    }
}

/// Codes a peer may send (§7.4.1, §7.4.2, and the IANA registry's
/// 1012–1014): never 1004–1006 or 1015, nothing under 1000 or past 4999,
/// and nothing in 1016–2999 (reserved for future RFCs).
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(fin: bool, opcode: Opcode) -> Head {
        Head { fin, opcode, mask: [0; 4], header_len: 6, payload_len: 0 }
    }

    #[test]
    fn joins_fragments_with_control_frames_between() {
        let mut a = Assembler::new(100);
        assert_eq!(a.push(&head(false, Opcode::Text), b"he"), Ok(None));
        assert_eq!(
            a.push(&head(true, Opcode::Ping), b"p"),
            Ok(Some(Message::Ping(Bytes::from_static(b"p"))))
        );
        assert_eq!(a.push(&head(false, Opcode::Continuation), b"ll"), Ok(None));
        assert_eq!(a.push(&head(true, Opcode::Continuation), b"o"), Ok(Some(Message::Text("hello".into()))));
        assert_eq!(a.push(&head(true, Opcode::Binary), b"\xff"), Ok(Some(Message::Binary)));
    }

    #[test]
    fn utf8_split_across_fragments_is_valid_and_bad_bytes_fail_at_once() {
        let euro = "€".as_bytes();
        let mut a = Assembler::new(100);
        assert_eq!(a.push(&head(false, Opcode::Text), &euro[..1]), Ok(None));
        assert_eq!(a.push(&head(false, Opcode::Continuation), &euro[1..2]), Ok(None));
        assert_eq!(
            a.push(&head(true, Opcode::Continuation), &euro[2..]),
            Ok(Some(Message::Text("€".into())))
        );
        let mut a = Assembler::new(100);
        assert_eq!(a.push(&head(false, Opcode::Text), b"ok\xc0"), Err(INVALID_UTF8), "fails before the end");
        let mut a = Assembler::new(100);
        assert_eq!(a.push(&head(false, Opcode::Text), &euro[..2]), Ok(None));
        assert_eq!(a.push(&head(true, Opcode::Continuation), b""), Err(INVALID_UTF8), "cut at the end");
    }

    #[test]
    fn out_of_order_fragments_and_sizes() {
        let mut a = Assembler::new(4);
        let err = a.push(&head(true, Opcode::Continuation), b"x").unwrap_err();
        assert_eq!(err.code, CloseCode::ProtocolError);
        assert_eq!(a.push(&head(false, Opcode::Text), b"ab"), Ok(None));
        let err = a.push(&head(true, Opcode::Text), b"x").unwrap_err();
        assert_eq!(err.code, CloseCode::ProtocolError);
        assert_eq!(a.push(&head(true, Opcode::Continuation), b"cde"), Err(TOO_BIG));
    }

    #[test]
    fn close_payloads() {
        assert_eq!(close(b""), Ok(Message::Close(None)));
        assert_eq!(close(&[3, 232]), Ok(Message::Close(Some(1000))));
        assert_eq!(close(b"\x0f\xa0bye"), Ok(Message::Close(Some(4000))));
        assert_eq!(close(&[3]).unwrap_err().code, CloseCode::ProtocolError);
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert_eq!(close(&bad.to_be_bytes()).unwrap_err().code, CloseCode::ProtocolError, "{bad}");
        }
        assert_eq!(close(b"\x03\xe8\xff").unwrap_err().code, CloseCode::InvalidPayload);
    }
}
