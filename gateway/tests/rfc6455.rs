//! RFC 6455 conformance of the gateway's server side, with hand-made
//! frames over a raw TCP stream against a live node: every rule a client
//! can break gets the RFC's close code (1002, 1007, 1009) with a reason,
//! and then the server closes the connection (no bare TCP drop); what
//! the RFC allows (fragments, control frames between them, UTF-8 split
//! across fragments, close codes) works. A Python `websockets` client
//! speaks to it too (tokio-tungstenite is every other test's client, the
//! browser test runs Chromium).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
const FIN: u8 = 0x80;

/// A client frame: `b0` is FIN, RSV and opcode as sent; masked unless told.
fn frame(b0: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut out = vec![b0];
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

fn text(payload: &str) -> Vec<u8> {
    frame(FIN | TEXT, payload.as_bytes(), true)
}

/// A server frame as read.
#[derive(Debug)]
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

struct Raw {
    stream: TcpStream,
}

impl Raw {
    /// Connects and does the opening handshake by hand; reads the welcome.
    async fn connect(gw: &TestGateway) -> Raw {
        let (status, head, stream) = handshake(gw, &[]).await;
        assert_eq!(status, 101, "{head}");
        let head = head.to_ascii_lowercase();
        // The RFC's sample key and its accept value (§1.3).
        assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
        assert!(!head.contains("sec-websocket-extensions"), "no extension is negotiated: {head}");
        let mut raw = Raw { stream };
        let welcome = raw.read().await.expect("welcome");
        assert_eq!((welcome.fin, welcome.opcode), (true, TEXT));
        assert!(String::from_utf8(welcome.payload).unwrap().contains(r#""type":"welcome""#));
        raw
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next server frame; `None` when the server has closed the stream.
    async fn read(&mut self) -> Option<Frame> {
        tokio::time::timeout(WAIT, async {
            let mut head = [0u8; 2];
            self.stream.read_exact(&mut head).await.ok()?;
            assert_eq!(head[1] & 0x80, 0, "server frames are never masked");
            assert_eq!(head[0] & 0x70, 0, "no reserved bits");
            let len = match head[1] & 0x7F {
                126 => u64::from(self.stream.read_u16().await.ok()?),
                127 => self.stream.read_u64().await.ok()?,
                n => u64::from(n),
            };
            let mut payload = vec![0u8; len as usize];
            self.stream.read_exact(&mut payload).await.ok()?;
            Some(Frame { fin: head[0] & 0x80 != 0, opcode: head[0] & 0x0F, payload })
        })
        .await
        .expect("a frame or the end of the stream in time")
    }

    async fn text(&mut self) -> String {
        let f = self.read().await.expect("a text frame");
        assert_eq!(f.opcode, TEXT, "{f:?}");
        String::from_utf8(f.payload).unwrap()
    }

    /// Reads to the server's close frame; returns its code and reason, and
    /// checks that the server then ends the TCP connection.
    async fn close_frame(&mut self) -> (u16, String) {
        loop {
            let f = self.read().await.expect("a close frame before the end of the stream");
            if f.opcode != CLOSE {
                continue;
            }
            assert!(f.payload.len() >= 2, "a close frame with a code: {f:?}");
            let code = u16::from_be_bytes([f.payload[0], f.payload[1]]);
            let reason = String::from_utf8(f.payload[2..].to_vec()).unwrap();
            assert!(self.read().await.is_none(), "the server closes the connection after its close frame");
            return (code, reason);
        }
    }

    async fn expect_close(&mut self, code: u16, reason_has: &str) {
        let (got, reason) = self.close_frame().await;
        assert_eq!(got, code, "reason: {reason}");
        assert!(reason.contains(reason_has), "reason {reason:?} should say {reason_has:?}");
    }
}

/// The opening handshake with the RFC's sample key, plus `extra` headers
/// (a header given there replaces the default one of that name).
async fn handshake(gw: &TestGateway, extra: &[(&str, &str)]) -> (u16, String, TcpStream) {
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let mut headers = vec![
        ("Host", "localhost"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
    ];
    for (k, v) in extra {
        headers.retain(|(name, _)| !name.eq_ignore_ascii_case(k));
        if !v.is_empty() {
            headers.push((k, v));
        }
    }
    let mut req = String::from("GET /ws HTTP/1.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    // Byte by byte, so nothing after the head is taken from the stream.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let b = tokio::time::timeout(WAIT, stream.read_u8()).await.unwrap().unwrap();
        head.push(b);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head, stream)
}

async fn gateway() -> TestGateway {
    TestGateway::start(gateway::Config { max_frame_bytes: 1024, ..memory_config() }).await
}

#[tokio::test]
async fn handshakes_that_are_not_rfc_6455_are_refused() {
    let gw = gateway().await;
    let (status, head, _) = handshake(&gw, &[("Sec-WebSocket-Version", "8")]).await;
    assert_eq!(status, 426, "{head}");
    assert!(head.to_ascii_lowercase().contains("sec-websocket-version: 13"), "{head}");
    for (name, value) in [
        ("Sec-WebSocket-Key", ""),
        ("Sec-WebSocket-Key", "c2hvcnQ="),
        ("Upgrade", "h2c"),
        ("Connection", "close"),
    ] {
        let (status, head, _) = handshake(&gw, &[(name, value)]).await;
        assert_eq!(status, 400, "{name}: {value:?}: {head}");
    }
    assert_eq!(gw.metric("gateway_connections_accepted_total").await, 0.0);
}

#[tokio::test]
async fn unmasked_client_frames_are_refused_1002() {
    let gw = gateway().await;
    let mut c = Raw::connect(&gw).await;
    c.send(&frame(FIN | TEXT, br#"{"action":"ping"}"#, false)).await;
    c.expect_close(1002, "masked").await;
    assert_eq!(gw.metric(r#"gateway_closes_total{code="protocol_error"}"#).await, 1.0);
}

#[tokio::test]
async fn reserved_bits_and_opcodes_are_refused_1002() {
    let gw = gateway().await;
    for rsv in [0x40, 0x20, 0x10] {
        let mut c = Raw::connect(&gw).await;
        c.send(&frame(FIN | rsv | TEXT, br#"{"action":"ping"}"#, true)).await;
        c.expect_close(1002, "reserved bits").await;
    }
    for opcode in [0x3, 0x7, 0xB, 0xF] {
        let mut c = Raw::connect(&gw).await;
        c.send(&frame(FIN | opcode, b"", true)).await;
        c.expect_close(1002, "reserved opcode").await;
    }
}

#[tokio::test]
async fn oversized_or_fragmented_control_frames_are_refused_1002() {
    let gw = gateway().await;
    let mut c = Raw::connect(&gw).await;
    c.send(&frame(FIN | PING, &[b'p'; 126], true)).await;
    c.expect_close(1002, "125").await;
    let mut c = Raw::connect(&gw).await;
    c.send(&frame(PING, b"no fin", true)).await;
    c.expect_close(1002, "fragmented control").await;
    let mut c = Raw::connect(&gw).await;
    c.send(&frame(CLOSE, &1000u16.to_be_bytes(), true)).await;
    c.expect_close(1002, "fragmented control").await;
}

#[tokio::test]
async fn fragment_sequence_errors_are_refused_1002() {
    let gw = gateway().await;
    // A continuation with nothing to continue, final or not.
    for b0 in [FIN, 0] {
        let mut c = Raw::connect(&gw).await;
        c.send(&frame(b0, b"x", true)).await;
        c.expect_close(1002, "continuation").await;
    }
    // A new data frame inside a fragmented message.
    for second in [FIN | TEXT, TEXT, FIN | BINARY] {
        let mut c = Raw::connect(&gw).await;
        c.send(&frame(TEXT, br#"{"action":"#, true)).await;
        c.send(&frame(second, br#""ping"}"#, true)).await;
        c.expect_close(1002, "inside a fragmented message").await;
    }
}

#[tokio::test]
async fn fragments_with_pings_between_them_make_one_message() {
    let gw = gateway().await;
    let mut c = Raw::connect(&gw).await;
    c.send(&frame(TEXT, br#"{"action""#, true)).await;
    c.send(&frame(FIN | PING, b"between", true)).await;
    c.send(&frame(0, br#":"pi"#, true)).await;
    c.send(&frame(FIN | PONG, b"unasked", true)).await;
    c.send(&frame(FIN, br#"ng"}"#, true)).await;
    let pong = c.read().await.unwrap();
    assert_eq!((pong.opcode, pong.payload.as_slice()), (PONG, &b"between"[..]), "the ping's payload echoed");
    assert_eq!(c.text().await, r#"{"type":"pong"}"#);
    // Several frames in one write, a message split over many small ones.
    let mut burst = text(r#"{"action":"ping"}"#);
    burst.extend(text(r#"{"action":"ping"}"#));
    c.send(&burst).await;
    let split = text(r#"{"action":"ping"}"#);
    for b in &split {
        c.send(std::slice::from_ref(b)).await;
    }
    for _ in 0..3 {
        assert_eq!(c.text().await, r#"{"type":"pong"}"#);
    }
    // A fragmented binary message is one binary message: refused in JSON.
    c.send(&frame(BINARY, b"\x00\x01", true)).await;
    c.send(&frame(FIN, b"\x02", true)).await;
    assert!(c.text().await.contains("binary_not_supported"));
}

#[tokio::test]
async fn invalid_utf8_is_refused_1007_also_split_across_fragments() {
    let gw = gateway().await;
    let euro = "€".as_bytes();
    // Valid UTF-8 split inside a character is one valid message.
    let mut c = Raw::connect(&gw).await;
    c.send(&frame(TEXT, &[br#"{"action":"ping","note":""#, &euro[..1]].concat(), true)).await;
    c.send(&frame(0, &euro[1..2], true)).await;
    c.send(&frame(FIN, &[&euro[2..], br#""}"#].concat(), true)).await;
    assert_eq!(c.text().await, r#"{"type":"pong"}"#);

    let mut c = Raw::connect(&gw).await;
    c.send(&frame(FIN | TEXT, b"{\"action\":\"ping\",\"x\":\"\xff\"}", true)).await;
    c.expect_close(1007, "UTF-8").await;
    // Bad bytes in a later fragment, the message not finished: closed at once.
    let mut c = Raw::connect(&gw).await;
    c.send(&frame(TEXT, &[b"{\"a\":\"", &euro[..2]].concat(), true)).await;
    c.send(&frame(0, b"\x41", true)).await;
    c.expect_close(1007, "UTF-8").await;
    // A character cut at the message's end.
    let mut c = Raw::connect(&gw).await;
    c.send(&frame(TEXT, b"\"", true)).await;
    c.send(&frame(FIN, &euro[..2], true)).await;
    c.expect_close(1007, "UTF-8").await;
    assert_eq!(gw.metric(r#"gateway_closes_total{code="invalid_payload"}"#).await, 3.0);
}

#[tokio::test]
async fn oversized_messages_are_refused_1009_before_their_payload() {
    let gw = gateway().await;
    // Only the header of a 1 MiB frame: refused without waiting for it.
    let mut c = Raw::connect(&gw).await;
    let header = frame(FIN | TEXT, &vec![b'x'; 1 << 20], true);
    c.send(&header[..14]).await;
    c.expect_close(1009, "max_frame_bytes").await;
    // Fragments each under the limit, together over it.
    let mut c = Raw::connect(&gw).await;
    c.send(&frame(TEXT, &[b'x'; 700], true)).await;
    c.send(&frame(FIN, &[b'x'; 700], true)).await;
    c.expect_close(1009, "max_frame_bytes").await;
    // A 64-bit length with its top bit set is not a length.
    let mut c = Raw::connect(&gw).await;
    c.send(&[FIN | TEXT, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0]).await;
    c.expect_close(1002, "most significant bit").await;
}

#[tokio::test]
async fn close_payloads_and_codes() {
    let gw = gateway().await;
    // A valid close is echoed with its code, then the server closes.
    for code in [1000u16, 1001, 1003, 1011, 3000, 4999] {
        let mut c = Raw::connect(&gw).await;
        c.send(&frame(FIN | CLOSE, &[&code.to_be_bytes()[..], b"bye"].concat(), true)).await;
        let (echo, _) = c.close_frame().await;
        assert_eq!(echo, code);
    }
    // An empty close is answered with an empty close.
    let mut c = Raw::connect(&gw).await;
    c.send(&frame(FIN | CLOSE, b"", true)).await;
    let f = c.read().await.unwrap();
    assert_eq!((f.opcode, f.payload.len()), (CLOSE, 0));
    assert!(c.read().await.is_none());
    // A one-byte payload, and codes no endpoint may send.
    let mut c = Raw::connect(&gw).await;
    c.send(&frame(FIN | CLOSE, &[3], true)).await;
    c.expect_close(1002, "one byte").await;
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        let mut c = Raw::connect(&gw).await;
        c.send(&frame(FIN | CLOSE, &code.to_be_bytes(), true)).await;
        c.expect_close(1002, "close code").await;
    }
    // A reason that is not UTF-8.
    let mut c = Raw::connect(&gw).await;
    c.send(&frame(FIN | CLOSE, b"\x03\xe8\xc3\x28", true)).await;
    c.expect_close(1007, "UTF-8").await;
}

#[tokio::test]
async fn a_python_websockets_client_works() {
    let probe =
        std::process::Command::new("python3").args(["-c", "import websockets.asyncio.client"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "\n\n*** SKIPPED: python3 with `websockets` is not installed \
             (pip install websockets; .ci/run does) ***\n\n"
        );
        return;
    }
    let gw = gateway().await;
    let script = r#"
import asyncio, json, sys
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

async def main(url):
    async with connect(url) as ws:
        assert json.loads(await ws.recv())["type"] == "welcome"
        # A fragmented message, as websockets sends an iterable.
        await ws.send(['{"action":', '"ping"}'])
        assert json.loads(await ws.recv()) == {"type": "pong"}
        await ws.send('{"action":"subscribe","topic":"quotes.PY"}')
        assert json.loads(await ws.recv())["type"] == "subscribed"
        await asyncio.wait_for(ws.ping(b"keepalive"), 5)
        print("ok", flush=True)
        await ws.send('{"action":"subscribe","topic":"' + "x" * 2000 + '"}')
        try:
            await asyncio.wait_for(ws.recv(), 5)
        except ConnectionClosed as e:
            print("closed", e.rcvd.code, e.rcvd.reason, flush=True)

asyncio.run(main(sys.argv[1]))
"#;
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("python3")
            .args(["-c", script, &gw.ws_url()])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("python client in time")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout, "ok\nclosed 1009 message over max_frame_bytes\n");
}
