//! Tests of [`Socket`]'s generic transport: an upgraded connection that is
//! not a plain `TcpStream`. The listener always serves `TcpStream`s, so no
//! other test reaches that path; here hyper serves an in-memory duplex
//! stream, and a hand-written client checks the handshake, bytes the
//! client sent right behind its request, echoes in both directions, a
//! fragmented message, a ping, and a violation closing with its code.

use std::convert::Infallible;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::{Limits, Message, Socket, handshake};

const LIMITS: Limits = Limits { max_message: 1024, read_chunk: 64, write_gather: 16 * 1024 };

/// Serves one connection: each text message is echoed; a close is
/// answered; a violation closes with its code and reason.
async fn serve(io: DuplexStream) {
    let service = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
        let accept = match handshake::check(req.method(), req.version(), req.headers()) {
            Ok(accept) => accept,
            Err(refusal) => return Ok::<_, Infallible>(axum::response::IntoResponse::into_response(refusal)),
        };
        tokio::spawn(async move {
            let Ok(upgraded) = hyper::upgrade::on(req).await else { return };
            let mut socket = Socket::new(upgraded, LIMITS);
            while let Some(message) = socket.recv().await {
                let sent = match message {
                    Ok(Message::Text(text)) => socket.send(text.into()).await,
                    Ok(Message::Ping(payload)) => {
                        socket.pong(payload);
                        socket.flush().await
                    }
                    Ok(Message::Close(code)) => {
                        let _ = socket.close_reply(code).await;
                        return;
                    }
                    Ok(Message::Binary | Message::Pong) => Ok(()),
                    Err(violation) => {
                        let _ = socket.close(violation.code.code(), violation.reason).await;
                        socket.linger().await;
                        return;
                    }
                };
                if sent.is_err() {
                    return;
                }
            }
        });
        Ok(handshake::switching(&accept))
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service);
    let _ = conn.with_upgrades().await;
}

/// A client frame, masked as RFC 6455 requires.
fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [7, 1, 9, 3];
    assert!(payload.len() < 126);
    let mut out = vec![b0, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads one (unmasked) server frame: opcode and payload.
async fn frame(client: &mut DuplexStream) -> (u8, Vec<u8>) {
    let read = async {
        let mut head = [0u8; 2];
        client.read_exact(&mut head).await.unwrap();
        assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
        let mut payload = vec![0u8; usize::from(head[1] & 0x7F)];
        client.read_exact(&mut payload).await.unwrap();
        (head[0], payload)
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.expect("a frame in time")
}

/// Connects: the upgrade request with `early` right behind it.
async fn connect(early: &[u8]) -> DuplexStream {
    let (server, mut client) = tokio::io::duplex(64 * 1024);
    tokio::spawn(serve(server));
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let mut request = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    )
    .into_bytes();
    request.extend_from_slice(early);
    client.write_all(&request).await.unwrap();
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        client.read_exact(&mut byte).await.unwrap();
        response.push(byte[0]);
    }
    let response = String::from_utf8(response).unwrap();
    assert!(response.starts_with("HTTP/1.1 101"), "{response}");
    assert!(response.contains(&handshake::accept_key(key.as_bytes())), "{response}");
    client
}

#[tokio::test]
async fn the_protocol_runs_over_an_upgraded_stream_that_is_not_tcp() {
    // A frame sent with the request: hyper read it already, and hands it
    // back inside the upgraded connection.
    let mut client = connect(&masked(0x81, b"early")).await;
    assert_eq!(frame(&mut client).await, (0x81, b"early".to_vec()));
    // Longer than one read (64 bytes), so it is assembled over reads.
    let long = vec![b'x'; 120];
    client.write_all(&masked(0x81, &long)).await.unwrap();
    assert_eq!(frame(&mut client).await, (0x81, long));
    // Fragmented, with a ping between the fragments.
    let mut bytes = masked(0x01, "hé".as_bytes());
    bytes.extend(masked(0x89, b"p"));
    bytes.extend(masked(0x80, b"llo"));
    client.write_all(&bytes).await.unwrap();
    assert_eq!(frame(&mut client).await, (0x8A, b"p".to_vec()), "the pong, at once");
    assert_eq!(frame(&mut client).await, (0x81, "héllo".as_bytes().to_vec()));
    // A close is answered with its code.
    client.write_all(&masked(0x88, &1000u16.to_be_bytes())).await.unwrap();
    assert_eq!(frame(&mut client).await, (0x88, 1000u16.to_be_bytes().to_vec()));
}

#[tokio::test]
async fn a_violation_over_the_generic_transport_closes_with_its_code() {
    let mut client = connect(&[]).await;
    // Unmasked client frame: §5.1, close 1002.
    client.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    let (opcode, payload) = frame(&mut client).await;
    assert_eq!(opcode, 0x88);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1002);
    assert!(payload.len() > 2, "with a reason");
}
