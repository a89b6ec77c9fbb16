//! End to end: a real redis-server, the `publisher` binary as its own
//! process, and a gateway node with real WebSocket clients on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::process::Process;
use testkit::*;

/// Starts the publisher binary, killed when its guard is dropped.
fn start_publisher(redis_url: &str, prefix: &str, env: &[(&str, &str)]) -> Process {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_publisher"));
    cmd.env("PUBLISHER_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("PUBLISHER_REDIS_URL", redis_url)
        .env("PUBLISHER_CHANNEL_PREFIX", prefix)
        .env("PUBLISHER_SYMBOLS", "AAPL,MSFT")
        .env("PUBLISHER_QUOTE_RATE", "0")
        .env("PUBLISHER_ORDER_RATE", "0")
        .env("PUBLISHER_FILL_DELAY_MS", "20")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Process::adopt("publisher", cmd.spawn().unwrap())
}

#[tokio::test]
async fn quote_subscriber_gets_the_snapshot_then_live_quotes() {
    let redis = TestRedis::get().await;
    let prefix = unique_prefix();
    let _publisher = start_publisher(&redis.url(), &prefix, &[("PUBLISHER_QUOTE_RATE", "200")]);
    let gw = TestGateway::start(redis_config(&redis.url(), &prefix)).await;
    // Wait until the feed has stored a snapshot.
    let conn = redis.connection().await;
    let key = wire::keys::last_value(&prefix, "quotes.AAPL");
    eventually("a stored quote", || {
        let mut conn = conn.clone();
        let key = key.clone();
        async move { redis::cmd("GET").arg(key).query_async::<Option<String>>(&mut conn).await.ok().flatten() }
    })
    .await;

    let mut c = gw.client().await;
    c.subscribe("quotes.AAPL").await;
    let snapshot = c.frame().await;
    assert_eq!((snapshot.kind.as_str(), snapshot.topic.as_deref()), ("message", Some("quotes.AAPL")));
    let data: serde_json::Value = serde_json::from_str(snapshot.data.unwrap().get()).unwrap();
    assert!(data["bid"].as_f64().unwrap() > 0.0 && data["ask"].as_f64() >= data["bid"].as_f64(), "{data}");
    let mut last = snapshot.seq.unwrap();
    for _ in 0..20 {
        let m = c.frame().await;
        let seq = m.seq.unwrap();
        assert_eq!(seq, last + 1, "live quotes follow the snapshot with no gap and no repeat");
        last = seq;
    }
}

#[tokio::test]
async fn order_round_trip_then_its_updates() {
    let redis = TestRedis::get().await;
    let prefix = unique_prefix();
    let _publisher = start_publisher(&redis.url(), &prefix, &[]);
    let gw = TestGateway::start(redis_config(&redis.url(), &prefix)).await;
    let mut c = gw.client().await;
    c.subscribe("orders.acct-e2e").await;
    c.send(r#"{"action":"order","id":"o-1","order":{"account":"acct-e2e","symbol":"AAPL","side":"buy","qty":100,"price":189.1}}"#)
        .await;
    let reply = c.frame().await;
    assert_eq!(reply.kind, "reply", "{reply:?}");
    assert_eq!(reply.id.unwrap().get(), r#""o-1""#);
    let data: serde_json::Value = serde_json::from_str(reply.data.unwrap().get()).unwrap();
    let order_id = data["order_id"].as_str().unwrap().to_string();
    let mut statuses = Vec::new();
    let mut seqs = Vec::new();
    while statuses.last().map(String::as_str) != Some("filled") {
        let m = c.frame().await;
        assert_eq!(m.topic.as_deref(), Some("orders.acct-e2e"), "{m:?}");
        let update: serde_json::Value = serde_json::from_str(m.data.unwrap().get()).unwrap();
        assert_eq!(update["order_id"], order_id.as_str());
        statuses.push(update["status"].as_str().unwrap().to_string());
        seqs.push(m.seq.unwrap());
    }
    assert_eq!(statuses.first().map(String::as_str), Some("new"));
    assert!(statuses.iter().any(|s| s == "partially_filled"), "{statuses:?}");
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "per-account seq, no gap");

    // A refused order gets the service's specific code, with the id.
    c.send(r#"{"action":"order","id":7,"order":{"account":"acct-e2e","symbol":"AAPL","side":"up","qty":1}}"#)
        .await;
    let err = c.frame().await;
    assert_eq!((err.code.as_deref(), err.id.unwrap().get()), (Some("invalid_side"), "7"));
    c.send(
        r#"{"action":"order","id":8,"order":{"account":"acct-e2e","symbol":"NOPE","side":"buy","qty":1}}"#,
    )
    .await;
    assert_eq!(c.frame().await.code.as_deref(), Some("unknown_symbol"));
}

#[tokio::test]
async fn resubscribing_with_since_gets_every_missed_update_exactly_once() {
    let redis = TestRedis::get().await;
    let prefix = unique_prefix();
    // One simulated account, orders flowing the whole time.
    let _publisher = start_publisher(
        &redis.url(),
        &prefix,
        &[("PUBLISHER_ACCOUNTS", "1"), ("PUBLISHER_ORDER_RATE", "40"), ("PUBLISHER_FILL_DELAY_MS", "5")],
    );
    let gw = TestGateway::start(redis_config(&redis.url(), &prefix)).await;
    let topic = "orders.acct-1";
    let mut seen: Vec<u64> = Vec::new();
    let mut last: Option<u64> = None;
    for round in 0..6 {
        let mut c = gw.client().await;
        let since = last.map(|s| format!(r#","since":{s}"#)).unwrap_or_else(|| r#","since":0"#.into());
        c.send(&format!(r#"{{"action":"subscribe","topic":"{topic}"{since}}}"#)).await;
        assert_eq!(c.frame().await.kind, "subscribed");
        for _ in 0..(20 + round * 3) {
            let m = c.frame().await;
            assert_eq!(m.kind, "message", "{m:?}");
            let seq = m.seq.unwrap();
            seen.push(seq);
            last = Some(seq);
        }
        drop(c);
        // Updates keep coming while this client is away.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let expected: Vec<u64> = (1..=seen.len() as u64).collect();
    assert_eq!(seen, expected, "every update once, in order, across six reconnects");
}

#[tokio::test]
async fn order_updates_survive_a_redis_restart_end_to_end() {
    // A persistent Redis (append-only, fsync always), killed and restarted
    // while the publisher streams order updates to a gateway's client.
    let mut redis = RedisServer::start(true).await;
    let prefix = unique_prefix();
    let _publisher = start_publisher(
        &redis.url(),
        &prefix,
        &[("PUBLISHER_ACCOUNTS", "1"), ("PUBLISHER_ORDER_RATE", "40"), ("PUBLISHER_FILL_DELAY_MS", "5")],
    );
    let gw = TestGateway::start(redis_config(&redis.url(), &prefix)).await;
    let mut c = gw.client().await;
    c.send(r#"{"action":"subscribe","topic":"orders.acct-1","since":0}"#).await;
    assert_eq!(c.frame().await.kind, "subscribed");
    let mut seen = Vec::new();
    read(&mut c, 20, &mut seen).await;
    redis.kill();
    eventually("readiness to drop", || {
        let addr = gw.addr;
        async move { (http(addr, "GET", "/readyz", None, &[]).await.0 == 503).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await; // updates pile up in the publisher
    redis.spawn().await;
    eventually("readiness to return", || {
        let addr = gw.addr;
        async move { (http(addr, "GET", "/readyz", None, &[]).await.0 == 200).then_some(()) }
    })
    .await;
    read(&mut c, 60, &mut seen).await;
    let expected: Vec<u64> = (1..=seen.len() as u64).collect();
    assert_eq!(seen, expected, "every update exactly once, in order, across the Redis restart");
}

/// Reads `n` message frames, appending their seq to `seen`.
async fn read(c: &mut Client, n: usize, seen: &mut Vec<u64>) {
    for _ in 0..n {
        let m = c.frame().await;
        assert_eq!(m.kind, "message", "{m:?}");
        seen.push(m.seq.unwrap());
    }
}
