//! The delivery probe against a real redis-server: a pub/sub link that
//! stays connected (PING answered, SUBSCRIBE confirmed) but delivers no
//! message is found by its probe, reconnected and re-subscribed, with
//! readiness down meanwhile; and a link Redis closes for exceeding
//! `client-output-buffer-limit pubsub` under a burst is counted and
//! recovered. Either way an order topic's updates lost meanwhile reach
//! the client from history, each once. And a link that is only slow
//! (its probe late behind other messages still arriving) is left alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use wire::keys;

const PREFIX: &str = "rt:";
const QUOTES: &str = "quotes.PRB";
const ORDERS: &str = "orders.acct-prb";
const PROBE_INTERVAL_MS: u64 = 200;
const PROBE_TIMEOUT_MS: u64 = 1_500;
const LINK: &str = r#"{shard="0"}"#;

/// A TCP proxy in front of a redis-server. After [`Proxy::blackout`],
/// connections opened before it drop every `message` push the server
/// sends and forward everything else (replies, PONGs, subscribe
/// confirmations): a link that looks healthy and delivers nothing. New
/// connections wait, not yet connected upstream, until [`Proxy::release`].
struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    upstream: SocketAddr,
    /// Bumped by `blackout`; a connection from an earlier one is muted.
    generation: AtomicU64,
    /// True while new connections are held back.
    hold: watch::Sender<bool>,
    /// `message` pushes dropped.
    dropped: AtomicU64,
    /// `message` pushes are held this long before they are passed on (a
    /// slow link that still delivers, in order).
    delay_ms: AtomicU64,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            generation: AtomicU64::new(0),
            hold: watch::Sender::new(false),
            dropped: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
        });
        let task = tokio::spawn({
            let shared = Arc::clone(&shared);
            async move {
                // Dropped with the accept task: every connection ends with it.
                let mut conns = JoinSet::new();
                while let Ok((client, _)) = listener.accept().await {
                    conns.spawn(serve(Arc::clone(&shared), client));
                    while conns.try_join_next().is_some() {}
                }
            }
        });
        Proxy { addr, shared, task }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn blackout(&self) {
        self.shared.hold.send_replace(true);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn release(&self) {
        self.shared.hold.send_replace(false);
    }

    fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::SeqCst)
    }

    fn delay(&self, by: Duration) {
        self.shared.delay_ms.store(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(shared: Arc<Shared>, client: TcpStream) {
    let born = shared.generation.load(Ordering::SeqCst);
    if shared.hold.subscribe().wait_for(|held| !*held).await.is_err() {
        return;
    }
    let Ok(server) = TcpStream::connect(shared.upstream).await else { return };
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
    };
    // What the server sends goes to the writer in order, except that
    // `message` pushes are held `delay` (a slow pub/sub link that keeps
    // delivering, in order, while replies such as a PUBLISH's or a PING's
    // come at once: the node's commands are not slowed).
    let (to_client, mut queued) = tokio::sync::mpsc::unbounded_channel::<(Option<Instant>, Vec<u8>)>();
    let read = async {
        let mut pending = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            let muted = shared.generation.load(Ordering::SeqCst) > born;
            let delay = Duration::from_millis(shared.delay_ms.load(Ordering::SeqCst));
            let (mut now, mut later) = (Vec::new(), Vec::new());
            let mut at = 0;
            while at < pending.len() {
                let Some(end) = frame_end(&pending, at) else { break };
                let frame = &pending[at..end];
                if !is_message(frame) {
                    now.extend_from_slice(frame);
                } else if muted {
                    shared.dropped.fetch_add(1, Ordering::SeqCst);
                } else if delay.is_zero() {
                    now.extend_from_slice(frame);
                } else {
                    later.extend_from_slice(frame);
                }
                at = end;
            }
            pending.drain(..at);
            let sent = to_client.send((None, now)).is_ok()
                && (later.is_empty() || to_client.send((Some(Instant::now() + delay), later)).is_ok());
            if !sent {
                return;
            }
        }
    };
    let write = async {
        let mut held: std::collections::VecDeque<(Instant, Vec<u8>)> = Default::default();
        loop {
            let due = held.front().map(|(at, _)| *at);
            // No `continue` inside `select!`: its branches are not the loop's.
            let out = tokio::select! {
                item = queued.recv() => match item {
                    Some((None, out)) => Some(out),
                    Some((Some(at), out)) => {
                        held.push_back((at, out));
                        None
                    }
                    None => return,
                },
                () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    held.pop_front().map(|(_, out)| out)
                }
            };
            if let Some(out) = out
                && client_tx.write_all(&out).await.is_err()
            {
                return;
            }
        }
    };
    let down = async {
        tokio::select! {
            () = read => {}
            () = write => {}
        }
    };
    // Either side closing ends the pair.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

/// Where the RESP frame starting at `at` ends; None while incomplete.
fn frame_end(buf: &[u8], at: usize) -> Option<usize> {
    let line = at + buf.get(at..)?.windows(2).position(|w| w == b"\r\n")? + 2;
    let head = std::str::from_utf8(&buf[at + 1..line - 2]).ok()?;
    match buf[at] {
        b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => Some(line),
        b'$' | b'!' | b'=' => match head.parse::<i64>().ok()? {
            n if n < 0 => Some(line),
            n => Some(line + n as usize + 2).filter(|&end| end <= buf.len()),
        },
        kind @ (b'*' | b'~' | b'>' | b'%') => {
            let n = head.parse::<i64>().ok()?.max(0) as usize;
            let items = if kind == b'%' { n * 2 } else { n };
            (0..items).try_fold(line, |pos, _| frame_end(buf, pos))
        }
        other => panic!("the proxy cannot read a RESP frame starting with {:?}", other as char),
    }
}

/// A pub/sub `message` push (RESP2 or RESP3).
fn is_message(frame: &[u8]) -> bool {
    let lower = frame.get(..17).map(|b| b.to_ascii_lowercase());
    matches!(lower.as_deref(), Some(b"*3\r\n$7\r\nmessage\r\n" | b">3\r\n$7\r\nmessage\r\n"))
}

async fn wait_ready(gw: &TestGateway, want: u16) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = gw.get("/readyz").await;
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz never answered {want}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn publish_quote(conn: &mut redis::aio::MultiplexedConnection, seq: u64) {
    let _: i64 = redis::cmd("PUBLISH")
        .arg(keys::channel(PREFIX, QUOTES))
        .arg(envelope(QUOTES, seq, r#"{"bid":1}"#))
        .query_async(conn)
        .await
        .unwrap();
}

/// Reads frames until `orders` and `quotes` (seqs per topic, in order)
/// arrived, then expects nothing more: nothing lost, nothing twice.
async fn expect_exactly(c: &mut Client, orders: &[u64], quotes: &[u64]) {
    let (mut got_orders, mut got_quotes) = (Vec::new(), Vec::new());
    while got_orders.len() < orders.len() || got_quotes.len() < quotes.len() {
        let f = c.frame().await;
        assert_eq!(f.kind, "message", "{f:?}");
        match f.topic.as_deref() {
            Some(ORDERS) => got_orders.push(f.seq.unwrap()),
            Some(QUOTES) => got_quotes.push(f.seq.unwrap()),
            other => panic!("a frame of {other:?}"),
        }
    }
    assert_eq!(got_orders, orders, "every order update once, in order");
    assert_eq!(got_quotes, quotes);
    c.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_link_that_delivers_nothing_is_reconnected_by_its_probe() {
    let redis = RedisServer::start(false).await;
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], redis.port))).await;
    let config = gateway::Config {
        probe_interval_ms: PROBE_INTERVAL_MS,
        probe_timeout_ms: PROBE_TIMEOUT_MS,
        ..redis_config(&proxy.url(), PREFIX)
    };
    let redis_timeout = Duration::from_millis(config.redis_timeout_ms);
    let gw = TestGateway::start(config).await;
    wait_ready(&gw, 200).await;
    let mut c = gw.client().await;
    c.subscribe(QUOTES).await;
    c.subscribe(ORDERS).await;
    // Publishers reach Redis directly, not through the proxy.
    let mut conn = redis.connection().await.unwrap();
    publish_quote(&mut conn, 1).await;
    assert_eq!(publish_order_update(&mut conn, PREFIX, ORDERS).await, 1);
    expect_exactly(&mut c, &[1], &[1]).await;

    // A healthy link: its probes come back, nothing is reconnected.
    tokio::time::sleep(Duration::from_millis(PROBE_INTERVAL_MS * 4 + PROBE_TIMEOUT_MS)).await;
    let failures = format!("gateway_backplane_probe_failures_total{LINK}");
    let losses = format!("gateway_backplane_shard_losses_total{LINK}");
    assert_eq!(gw.metric(&failures).await, 0.0);
    assert_eq!(gw.metric(&losses).await, 0.0);
    assert_eq!(gw.get("/readyz").await.0, 200);

    proxy.blackout();
    let muted_at = Instant::now();
    publish_quote(&mut conn, 2).await;
    assert_eq!(publish_order_update(&mut conn, PREFIX, ORDERS).await, 2);
    assert_eq!(publish_order_update(&mut conn, PREFIX, ORDERS).await, 3);
    // The node notices within the probe's bound (an interval, the publish,
    // the timeout) plus slack, and says so while it reconnects.
    let body = wait_ready(&gw, 503).await;
    let noticed = muted_at.elapsed();
    let bound = Duration::from_millis(PROBE_INTERVAL_MS + PROBE_TIMEOUT_MS) + redis_timeout;
    assert!(noticed < bound + Duration::from_secs(2), "noticed after {noticed:?}");
    assert!(body.contains(r#""shards_down":["0"]"#), "{body}");
    assert_eq!(gw.wait_metric(&failures, |v| v >= 1.0).await, 1.0);
    assert!(proxy.dropped() >= 3, "the proxy dropped {} messages", proxy.dropped());
    c.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(gw.get("/readyz").await.0, 503, "not ready while the link cannot reconnect");

    proxy.release();
    wait_ready(&gw, 200).await;
    publish_quote(&mut conn, 3).await;
    assert_eq!(publish_order_update(&mut conn, PREFIX, ORDERS).await, 4);
    // Quotes just go on; the order updates lost meanwhile come from history.
    expect_exactly(&mut c, &[2, 3, 4], &[3]).await;
    assert!(gw.metric("gateway_gaps_filled_total").await >= 1.0);
    assert!(gw.metric(&losses).await >= 1.0);
    assert!(gw.metric("gateway_backplane_reconnects_total").await >= 1.0);
    assert_eq!(gw.metric(&failures).await, 1.0, "one event, counted once");
}

#[tokio::test]
async fn a_link_that_is_only_slow_is_not_reconnected_while_it_keeps_delivering() {
    const TIMEOUT_MS: u64 = 400;
    let redis = RedisServer::start(false).await;
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], redis.port))).await;
    let config = gateway::Config {
        probe_interval_ms: 100,
        probe_timeout_ms: TIMEOUT_MS,
        ..redis_config(&proxy.url(), PREFIX)
    };
    let gw = TestGateway::start(config).await;
    wait_ready(&gw, 200).await;
    let mut c = gw.client().await;
    c.subscribe(QUOTES).await;
    let mut conn = redis.connection().await.unwrap();
    let failures = format!("gateway_backplane_probe_failures_total{LINK}");
    let losses = format!("gateway_backplane_shard_losses_total{LINK}");

    // A link falling behind: the time Redis' messages take to reach the
    // node grows by 40 ms every 100 ms, to 1 s (2.5 bounds, within the
    // extensions' 2.4 s), while quotes go out every 20 ms, so the link
    // never goes a bound without receiving something. Its probes come
    // back late, behind the quotes: behind, not dead.
    let mut seq = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(3_500) {
        let lag = (start.elapsed().as_millis() as u64 * 2 / 5).min(1_000);
        proxy.delay(Duration::from_millis(lag));
        seq += 1;
        publish_quote(&mut conn, seq).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gw.metric(&failures).await, 0.0, "a link that keeps delivering is not reconnected");
    let quotes: Vec<u64> = (1..=seq).collect();
    expect_exactly(&mut c, &[], &quotes).await;
    assert_eq!(gw.metric(&losses).await, 0.0);

    // The same slow link with nothing else to deliver: its late probe is
    // all there is to judge by, and it is reconnected.
    assert_eq!(gw.wait_metric(&failures, |v| v >= 1.0).await, 1.0);
}

#[tokio::test]
async fn a_link_redis_closes_for_its_output_buffer_is_counted_and_recovered() {
    let redis = RedisServer::start(false).await;
    let mut conn = redis.connection().await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("client-output-buffer-limit")
        .arg("pubsub 64kb 32kb 1")
        .query_async(&mut conn)
        .await
        .unwrap();
    let gw = TestGateway::start(redis_config(&redis.url(), PREFIX)).await;
    wait_ready(&gw, 200).await;
    let mut c = gw.client().await;
    c.subscribe(ORDERS).await;
    // Someone else holds the topic the burst is on, so the node subscribes it.
    let big = "quotes.BIG";
    let mut bulk = gw.client().await;
    bulk.subscribe(big).await;
    assert_eq!(publish_order_update(&mut conn, PREFIX, ORDERS).await, 1);
    expect_exactly(&mut c, &[1], &[]).await;

    // One transaction: Redis queues all of it for the node's pub/sub
    // connection before writing any, far past the 64 kB hard limit, and
    // closes the connection; the order updates at its end are lost with it.
    let losses = format!("gateway_backplane_shard_losses_total{LINK}");
    let mut burst = redis::pipe();
    burst.atomic();
    let pad = format!(r#"{{"pad":"{}"}}"#, "x".repeat(32 * 1024));
    for seq in 1..=40 {
        burst.cmd("PUBLISH").arg(keys::channel(PREFIX, big)).arg(envelope(big, seq, &pad)).ignore();
    }
    for seq in [2, 3] {
        burst.cmd("INCR").arg(keys::seq_counter(PREFIX, ORDERS)).ignore();
        order_update_cmds(&mut burst, PREFIX, ORDERS, seq);
    }
    let _: () = burst.query_async(&mut conn).await.unwrap();

    assert_eq!(gw.wait_metric(&losses, |v| v >= 1.0).await, 1.0, "the closed link is counted");
    // Redis 7.2 and later count it too (7.0 does not have the field).
    let info: String = redis::cmd("INFO").arg("stats").query_async(&mut conn).await.unwrap();
    if info.contains("client_output_buffer_limit_disconnections:") {
        assert!(info.contains("client_output_buffer_limit_disconnections:1"), "{info}");
    }
    wait_ready(&gw, 200).await;
    assert!(gw.metric("gateway_backplane_reconnects_total").await >= 1.0);
    assert_eq!(publish_order_update(&mut conn, PREFIX, ORDERS).await, 4);
    expect_exactly(&mut c, &[2, 3, 4], &[]).await;
    assert_eq!(gw.metric(&format!("gateway_backplane_probe_failures_total{LINK}")).await, 0.0);
}

#[tokio::test]
async fn each_cluster_master_carries_a_probe_that_comes_back() {
    let cluster = RedisCluster::start(3).await;
    let config = gateway::Config {
        redis_cluster: true,
        probe_interval_ms: 100,
        probe_timeout_ms: PROBE_TIMEOUT_MS,
        ..redis_config(&cluster.url_list(), PREFIX)
    };
    let gw = TestGateway::start(config).await;
    wait_ready(&gw, 200).await;
    // One probe channel per master, in a slot that master serves.
    for i in 0..3 {
        let mut conn = cluster.node_connection(i).await;
        let channels: Vec<String> = redis::cmd("PUBSUB")
            .arg("SHARDCHANNELS")
            .arg(format!("{PREFIX}@probe:*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(channels.len(), 1, "master {i}: {channels:?}");
    }
    // Probes every 100 ms for well over the bound: a probe that did not
    // come back would have been counted by now.
    tokio::time::sleep(Duration::from_millis(100 * 5) + Duration::from_millis(PROBE_TIMEOUT_MS) * 2).await;
    let (_, text) = gw.get("/metrics").await;
    for name in ["gateway_backplane_probe_failures_total{", "gateway_backplane_probe_errors_total{"] {
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(name)).collect();
        assert!(lines.iter().all(|l| l.ends_with(" 0")), "{lines:?}");
        if name.contains("failures") {
            assert_eq!(lines.len(), 3, "shown for every shard from the start: {lines:?}");
        }
    }
    assert_eq!(gw.get("/readyz").await.0, 200);
}
