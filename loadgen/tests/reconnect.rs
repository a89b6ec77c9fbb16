//! Reconnect and `since` recovery against a stand-in gateway that sends
//! seq 1..3 on each topic, then closes the socket (1012, as a draining
//! node does); on the resubscribe it expects `since` = 3 and continues
//! with seq 4, so a client that recovers correctly sees no gap.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use futures_util::{SinkExt, StreamExt};
use loadgen::Summary;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Seen = Arc<Mutex<Vec<(String, Option<u64>)>>>;

async fn restarting_gateway(topics_per_conn: usize) -> (std::net::SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                let _ = ws.send(Message::text(wire::server::welcome("fake", "s"))).await;
                let mut fresh = 0;
                while let Some(Ok(msg)) = ws.next().await {
                    let Message::Text(text) = msg else { continue };
                    let Ok(wire::client::Command::Subscribe { topic, since }) = wire::client::parse(&text)
                    else {
                        continue;
                    };
                    record.lock().unwrap().push((topic.as_str().to_owned(), since));
                    let _ = ws.send(Message::text(wire::server::subscribed(topic.as_str()))).await;
                    let seqs = match since {
                        None => vec![1, 2, 3],
                        Some(s) => vec![s + 1],
                    };
                    for seq in seqs {
                        let frame = wire::envelope::message_frame(topic.as_str(), seq, wire::now_ms(), "{}");
                        let _ = ws.send(Message::text(frame)).await;
                    }
                    if since.is_none() {
                        fresh += 1;
                        if fresh == topics_per_conn {
                            let bye = CloseFrame { code: CloseCode::Restart, reason: "restarting".into() };
                            let _ = ws.close(Some(bye)).await;
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_reconnect_and_resume_from_the_last_seq() {
    let (addr, seen) = restarting_gateway(2).await;
    let url = format!("ws://{addr}/ws");
    let run = loadgen(&[
        "--url",
        &url,
        "-c",
        "5",
        "-k",
        "2",
        "--quote-topics",
        "2",
        "-d",
        "2s",
        "--backoff-initial",
        "50ms",
        "--output",
        "json",
        "-q",
    ])
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let s: Summary = serde_json::from_str(&run.stdout).unwrap();
    let c = &s.connections;
    assert_eq!((c.established, c.dropped, c.reconnects, c.failed), (10, 5, 5, 0), "{s:#?}");
    assert!(s.errors.keys().any(|e| e.contains("1012")), "the close code is reported: {:?}", s.errors);
    assert_eq!(s.subscriptions.acknowledged, 20, "resubscribed after reconnecting");
    let m = &s.messages;
    assert_eq!((m.received, m.lost, m.duplicates), (5 * 2 * 4, 0, 0), "{s:#?}");

    let seen = seen.lock().unwrap();
    assert_eq!(seen.iter().filter(|(_, since)| since.is_none()).count(), 10, "{seen:?}");
    assert_eq!(seen.iter().filter(|(_, since)| *since == Some(3)).count(), 10, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reconnect_leaves_dropped_connections_down() {
    let (addr, seen) = restarting_gateway(1).await;
    let url = format!("ws://{addr}/ws");
    let run = loadgen(&[
        "--url",
        &url,
        "-c",
        "4",
        "-k",
        "1",
        "--quote-topics",
        "3",
        "-d",
        "1s",
        "--no-reconnect",
        "--output",
        "json",
        "-q",
    ])
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let s: Summary = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!((s.connections.established, s.connections.dropped, s.connections.reconnects), (4, 4, 0));
    assert_eq!(seen.lock().unwrap().len(), 4);
}
