//! Stalled clients under a fast, heavy stream, against a gateway process:
//! the node's memory stays bounded, the stalled order reader is closed
//! with 4001, the stalled quote reader is conflated, and the other
//! clients' latency does not move beyond noise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::process::Process;
use testkit::*;

const PAD: usize = 8_000;

/// Publishes `count` envelopes of ~8 KB on each topic, paced in pipelines.
async fn stream(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    topics: &[&str],
    start: u64,
    count: u64,
) {
    let data = format!(r#"{{"pad":"{}"}}"#, "x".repeat(PAD));
    for seq in start..start + count {
        let mut pipe = redis::pipe();
        for t in topics {
            pipe.cmd("PUBLISH").arg(format!("{prefix}{t}")).arg(envelope(t, seq, &data)).ignore();
        }
        let _: () = pipe.query_async(conn).await.unwrap();
        if seq % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Reads `count` messages per topic on `c`; returns latencies (ms).
async fn read_all(mut c: Client, topics: usize, count: u64) -> (Client, Vec<u64>) {
    let mut lat = Vec::new();
    for _ in 0..(topics as u64 * count) {
        let f = c.frame().await;
        lat.push(wire::now_ms().saturating_sub(f.ts.unwrap()));
    }
    (c, lat)
}

/// A client whose socket receive buffer is small, as a phone's would be.
async fn stalled_client(addr: std::net::SocketAddr) -> Client {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let url = format!("ws://{addr}/ws");
    let (ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream)).await.unwrap();
    let mut c = Client { ws };
    assert_eq!(c.frame().await.kind, "welcome");
    c
}

fn p99(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

async fn rss(addr: std::net::SocketAddr) -> f64 {
    metric(&http(addr, "GET", "/metrics", None, &[]).await.1, "process_resident_memory_bytes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_cost_bounded_memory_and_nobody_else_latency() {
    let redis = TestRedis::get().await;
    let prefix = unique_prefix();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _gateway = Process::adopt(
        "gateway",
        Command::new(env!("CARGO_BIN_EXE_gateway"))
            .env("GATEWAY_LISTEN", addr.to_string())
            .env("GATEWAY_REDIS_URL", redis.url())
            .env("GATEWAY_CHANNEL_PREFIX", &prefix)
            .env("GATEWAY_OUTBOUND_QUEUE", "256")
            .env("GATEWAY_MAX_PENDING_BYTES", "1048576")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("the gateway", || async move { tokio::net::TcpStream::connect(addr).await.ok() }).await;
    eventually(
        "ready",
        || async move { (http(addr, "GET", "/readyz", None, &[]).await.0 == 200).then_some(()) },
    )
    .await;
    let url = format!("ws://{addr}/ws");
    let topics = ["quotes.SLOW", "orders.slow"];
    let mut conn = redis.connection().await;
    let mut readers = Vec::new();
    for _ in 0..2 {
        let mut c = Client::connect(&url).await;
        for t in topics {
            c.subscribe(t).await;
        }
        readers.push(c);
    }

    // Phase 1: everyone reads.
    // Enough bytes (6.4 MB per topic) to fill a stalled socket's buffers.
    let per_phase = 800;
    let tasks: Vec<_> = readers.into_iter().map(|c| tokio::spawn(read_all(c, 2, per_phase))).collect();
    stream(&mut conn, &prefix, &topics, 1, per_phase).await;
    let mut readers = Vec::new();
    let mut before = Vec::new();
    for t in tasks {
        let (c, lat) = tokio::time::timeout(WAIT * 3, t).await.unwrap().unwrap();
        readers.push(c);
        before.extend(lat);
    }
    let rss_before = rss(addr).await;

    // Phase 2: the same stream, plus stalled clients that never read.
    let mut stalled_quotes = Vec::new();
    let mut stalled_orders = Vec::new();
    for _ in 0..3 {
        let mut q = stalled_client(addr).await;
        q.subscribe("quotes.SLOW").await;
        stalled_quotes.push(q);
        let mut o = stalled_client(addr).await;
        o.subscribe("orders.slow").await;
        stalled_orders.push(o);
    }
    let tasks: Vec<_> = readers.into_iter().map(|c| tokio::spawn(read_all(c, 2, per_phase))).collect();
    stream(&mut conn, &prefix, &topics, per_phase + 1, per_phase).await;
    let mut after = Vec::new();
    for t in tasks {
        let (_, lat) = tokio::time::timeout(WAIT * 3, t).await.unwrap().unwrap();
        after.extend(lat);
    }
    let rss_after = rss(addr).await;

    let (p_before, p_after) = (p99(before), p99(after));
    assert!(
        p_after <= (p_before * 3).max(p_before + 100),
        "readers' p99 moved from {p_before} ms to {p_after} ms with stalled clients"
    );
    // 6 stalled clients × (1 MiB queue + socket buffers) at most, and far
    // less than the 6.4 MB × 6 they were sent.
    assert!(rss_after - rss_before < 48.0 * 1024.0 * 1024.0, "RSS grew by {} bytes", rss_after - rss_before);
    for o in &mut stalled_orders {
        let code = loop {
            match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut o.ws)).await.unwrap() {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f))) => {
                    break f.map(|f| u16::from(f.code));
                }
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        };
        assert_eq!(code, Some(4001), "stalled order reader closed as slow_consumer");
    }
    let (_, metrics) = http(addr, "GET", "/metrics", None, &[]).await;
    assert!(metric(&metrics, "gateway_frames_conflated_total") > 0.0, "stalled quote readers were conflated");
    // The stalled quote readers were never disconnected.
    for q in &mut stalled_quotes {
        q.send(r#"{"action":"ping"}"#).await;
    }
    assert_eq!(metric(&metrics, r#"gateway_closes_total{code="slow_consumer"}"#), 3.0);
}
