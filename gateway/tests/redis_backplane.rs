//! The Redis backplane against a real redis-server: delivery of what any
//! backend PUBLISHes, subscriptions that follow local subscribers, and
//! recovery from a Redis restart with client sockets left open.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use testkit::*;

#[tokio::test]
async fn delivers_what_redis_cli_publishes_on_the_default_prefix() {
    // A private server, so the contract's own `rt:` prefix is used as is.
    let redis = RedisServer::start(false).await;
    let gw = TestGateway::start(redis_config(&redis.url(), "rt:")).await;
    assert_eq!(gw.wait_metric("gateway_backplane_up", |v| v == 1.0).await, 1.0);
    let mut c = gw.client().await;
    c.subscribe("quotes.AAPL").await;
    let envelope = r#"{"topic":"quotes.AAPL","seq":42,"ts":1764470000123,"data":{"symbol":"AAPL","bid":189.1,"ask":189.2}}"#;
    let status = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "PUBLISH", "rt:quotes.AAPL", envelope])
        .output()
        .expect("redis-cli must be on PATH");
    assert_eq!(String::from_utf8_lossy(&status.stdout).trim(), "1", "one subscriber: this node");
    assert_eq!(
        c.text().await,
        r#"{"type":"message","topic":"quotes.AAPL","seq":42,"ts":1764470000123,"data":{"symbol":"AAPL","bid":189.1,"ask":189.2}}"#
    );
}

#[tokio::test]
async fn one_redis_subscription_per_topic_follows_local_subscribers() {
    let prefix = unique_prefix();
    let server = TestRedis::get().await;
    let gw = TestGateway::start(redis_config(&server.url(), &prefix)).await;
    let mut redis = server.connection().await;
    let channel = format!("{prefix}quotes.NUM");
    assert_eq!(numsub(&mut redis, &channel).await, 0);

    let mut a = gw.client().await;
    a.subscribe("quotes.NUM").await;
    // `subscribed` is sent only after Redis confirmed the SUBSCRIBE.
    assert_eq!(numsub(&mut redis, &channel).await, 1);
    let mut b = gw.client().await;
    b.subscribe("quotes.NUM").await;
    let mut c = gw.client().await;
    c.subscribe("quotes.NUM").await;
    assert_eq!(
        numsub(&mut redis, &channel).await,
        1,
        "one Redis subscription however many local subscribers"
    );

    a.unsubscribe("quotes.NUM").await;
    drop(b); // a disconnect releases too
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(numsub(&mut redis, &channel).await, 1, "c still holds the topic");
    c.unsubscribe("quotes.NUM").await;
    assert_eq!(wait_numsub(&mut redis, &channel, 0).await, 0, "the last one leaving releases it");
    assert_eq!(gw.metric("gateway_topics").await, 0.0);

    // A client that disconnects without unsubscribing leaks nothing either.
    let mut d = gw.client().await;
    d.subscribe("quotes.NUM").await;
    assert_eq!(numsub(&mut redis, &channel).await, 1);
    drop(d);
    assert_eq!(wait_numsub(&mut redis, &channel, 0).await, 0);
}

#[tokio::test]
async fn resubscribing_within_the_grace_delay_keeps_the_subscription() {
    let prefix = unique_prefix();
    let server = TestRedis::get().await;
    let config = gateway::Config { unsubscribe_grace_ms: 1_000, ..redis_config(&server.url(), &prefix) };
    let gw = TestGateway::start(config).await;
    let mut redis = server.connection().await;
    let channel = format!("{prefix}quotes.FLAP");
    let mut a = gw.client().await;
    a.subscribe("quotes.FLAP").await;
    a.unsubscribe("quotes.FLAP").await;
    a.subscribe("quotes.FLAP").await;
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(numsub(&mut redis, &channel).await, 1, "still wanted after the grace delay");
    let _: () = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(envelope("quotes.FLAP", 1, "{}"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(a.frame().await.seq, Some(1));
}

#[tokio::test]
async fn survives_a_redis_restart_without_resubscribing() {
    let mut redis = RedisServer::start(false).await;
    let prefix = "rt:";
    let gw = TestGateway::start(redis_config(&redis.url(), prefix)).await;
    let mut c = gw.client().await;
    c.subscribe("quotes.RST").await;
    c.subscribe("orders.acct1").await;
    let mut conn = redis.connection().await.unwrap();
    let publish = |topic: &str, seq: u64| {
        redis::cmd("PUBLISH").arg(format!("{prefix}{topic}")).arg(envelope(topic, seq, "{}")).clone()
    };
    let _: i64 = publish("quotes.RST", 1).query_async(&mut conn).await.unwrap();
    assert_eq!(c.frame().await.seq, Some(1));

    redis.kill();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, _) = gw.get("/readyz").await;
        if status == 503 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "/readyz never went 503 while Redis was down");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The client is still connected while Redis is away.
    c.send(r#"{"action":"ping"}"#).await;
    assert_eq!(c.frame().await.kind, "pong");

    redis.spawn().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while gw.get("/readyz").await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "/readyz never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut conn = redis.connection().await.unwrap();
    let n: i64 = publish("quotes.RST", 2).query_async(&mut conn).await.unwrap();
    assert_eq!(n, 1, "the node re-subscribed on its own");
    let _: i64 = publish("orders.acct1", 1).query_async(&mut conn).await.unwrap();
    let m = c.frame().await;
    assert_eq!((m.topic.as_deref(), m.seq), (Some("quotes.RST"), Some(2)));
    let m = c.frame().await;
    assert_eq!((m.topic.as_deref(), m.seq), (Some("orders.acct1"), Some(1)));
    assert!(gw.metric("gateway_backplane_reconnects_total").await >= 1.0);
}

#[tokio::test]
async fn malformed_envelopes_are_counted_and_skipped() {
    let prefix = unique_prefix();
    let server = TestRedis::get().await;
    let gw = TestGateway::start(redis_config(&server.url(), &prefix)).await;
    let mut c = gw.client().await;
    c.subscribe("quotes.BAD").await;
    let mut redis = server.connection().await;
    let channel = format!("{prefix}quotes.BAD");
    let bad = [
        "not json".to_string(),
        r#"{"topic":"quotes.BAD"}"#.to_string(),
        r#"{"topic":"quotes.OTHER","seq":1,"ts":1,"data":{}}"#.to_string(),
        r#"{"topic":"quotes.BAD","seq":"1","ts":1,"data":{}}"#.to_string(),
        r#"{"topic":"quotes.BAD","seq":1,"ts":1,"data":"str"}"#.to_string(),
        envelope("quotes.BAD", 1, r#"{"ok":true}"#),
    ];
    for payload in &bad {
        let _: i64 = redis::cmd("PUBLISH").arg(&channel).arg(payload).query_async(&mut redis).await.unwrap();
    }
    let m = c.frame().await;
    assert_eq!((m.kind.as_str(), m.seq), ("message", Some(1)), "only the valid envelope is delivered");
    assert_eq!(gw.wait_metric("gateway_backplane_invalid_total", |v| v == 5.0).await, 5.0);
}

#[tokio::test]
async fn publish_through_a_node_reaches_every_node() {
    let prefix = unique_prefix();
    let server = TestRedis::get().await;
    let a = TestGateway::start(redis_config(&server.url(), &prefix)).await;
    let b = TestGateway::start(redis_config(&server.url(), &prefix)).await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    on_a.subscribe("quotes.X").await;
    on_b.subscribe("quotes.X").await;
    let (status, body) = a.publish("quotes.X", r#"{"p":1}"#).await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = b.publish("quotes.X", r#"{"p":2}"#).await;
    assert!(body.contains(r#""seq":2"#), "seq is shared through Redis: {body}");
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(c.frame().await.seq, Some(1));
        assert_eq!(c.frame().await.seq, Some(2));
        c.expect_silence(Duration::from_millis(100)).await;
    }
}

/// Floods `topic` with `total` 4 KB envelopes while `fast` reads every
/// one and `stalled` reads nothing; returns once `fast` saw them all.
async fn flood(server: &TestRedis, prefix: &str, topic: &'static str, total: u64, mut fast: Client) {
    let mut redis = server.connection().await;
    let channel = format!("{prefix}{topic}");
    let data = format!(r#"{{"pad":"{}"}}"#, "x".repeat(4000));
    let reader = tokio::spawn(async move {
        let mut last = 0;
        while last < total {
            let f = fast.frame().await;
            assert_eq!(f.seq, Some(last + 1), "the fast client misses nothing");
            last += 1;
        }
    });
    for chunk in (1..=total).collect::<Vec<_>>().chunks(50) {
        let mut pipe = redis::pipe();
        for seq in chunk {
            pipe.cmd("PUBLISH").arg(&channel).arg(envelope(topic, *seq, &data)).ignore();
        }
        let _: () = pipe.query_async(&mut redis).await.unwrap();
        // Pace a little so the fast reader is not the one falling behind.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::timeout(WAIT * 3, reader).await.unwrap().unwrap();
}

#[tokio::test]
async fn stalled_order_reader_is_closed_4001_and_others_keep_flowing() {
    let server = TestRedis::get().await;
    let prefix = unique_prefix();
    let config = gateway::Config { outbound_queue: 256, ..redis_config(&server.url(), &prefix) };
    let gw = TestGateway::start(config).await;
    // Subscribed before the link is up, a topic is only recorded: the flood's start would be missed.
    assert_eq!(gw.wait_metric("gateway_backplane_up", |v| v == 1.0).await, 1.0);
    let mut fast = gw.client().await;
    fast.subscribe("orders.FLOOD").await;
    let mut stalled = gw.client().await;
    stalled.subscribe("orders.FLOOD").await;
    flood(&server, &prefix, "orders.FLOOD", 3_000, fast).await;
    assert!(gw.metric("gateway_frames_dropped_total").await >= 1.0);
    assert_eq!(gw.metric("gateway_frames_conflated_total").await, 0.0, "order updates never conflate");
    // What was queued before the overflow arrives, in order, then the close.
    let mut last = 0;
    let code = loop {
        match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut stalled.ws)).await.unwrap() {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                let seq = wire::server::Frame::parse(&t).unwrap().seq.unwrap();
                assert_eq!(seq, last + 1, "no gap before the close");
                last = seq;
            }
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f))) => {
                break f.map(|f| u16::from(f.code));
            }
            Some(Ok(_)) => {}
            other => panic!("socket ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(code, Some(4001));
    assert!(last < 3_000, "the stalled client fell behind (got {last})");
}

#[tokio::test]
async fn stalled_quote_reader_gets_conflated_latest_values() {
    let server = TestRedis::get().await;
    let prefix = unique_prefix();
    let config = gateway::Config { outbound_queue: 256, ..redis_config(&server.url(), &prefix) };
    let gw = TestGateway::start(config).await;
    // Subscribed before the link is up, a topic is only recorded: the flood's start would be missed.
    assert_eq!(gw.wait_metric("gateway_backplane_up", |v| v == 1.0).await, 1.0);
    let mut fast = gw.client().await;
    fast.subscribe("quotes.FLOOD").await;
    let mut stalled = gw.client().await;
    stalled.subscribe("quotes.FLOOD").await;
    flood(&server, &prefix, "quotes.FLOOD", 3_000, fast).await;
    assert!(gw.metric("gateway_frames_conflated_total").await >= 1.0);
    assert_eq!(gw.metric("gateway_frames_dropped_total").await, 0.0);
    // Reading again, the stalled client catches up to the latest quote,
    // with increasing seq and without having been disconnected.
    let mut last = 0;
    while last < 3_000 {
        let f = stalled.frame().await;
        let seq = f.seq.unwrap();
        assert!(seq > last, "seq goes up: {seq} after {last}");
        last = seq;
    }
    assert_eq!(gw.metric(r#"gateway_closes_total{code="slow_consumer"}"#).await, 0.0);
    stalled.send(r#"{"action":"ping"}"#).await;
    assert_eq!(stalled.frame().await.kind, "pong", "still connected");
}

#[tokio::test]
async fn an_idle_backplane_connection_stays_up_across_health_pings() {
    let server = TestRedis::get().await;
    let prefix = unique_prefix();
    // Health PINGs run every redis_timeout (500 ms here).
    let config = gateway::Config { redis_timeout_ms: 500, ..redis_config(&server.url(), &prefix) };
    let gw = TestGateway::start(config).await;
    let mut c = gw.client().await;
    c.subscribe("quotes.IDLE").await;
    c.expect_silence(Duration::from_millis(1_800)).await;
    assert_eq!(
        gw.metric("gateway_backplane_reconnects_total").await,
        0.0,
        "health pings must not drop the link"
    );
    let mut redis = server.connection().await;
    let n: i64 = redis::cmd("PUBLISH")
        .arg(format!("{prefix}quotes.IDLE"))
        .arg(envelope("quotes.IDLE", 1, "{}"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(c.frame().await.seq, Some(1));
}

#[tokio::test]
async fn topics_spread_over_several_pubsub_connections() {
    let redis = RedisServer::start(false).await;
    let config = gateway::Config { pubsub_connections: 4, ..redis_config(&redis.url(), "rt:") };
    let gw = TestGateway::start(config).await;
    assert_eq!(gw.wait_metric("gateway_backplane_up", |v| v == 4.0).await, 4.0);
    let mut c = gw.client().await;
    let topics: Vec<String> = (0..20).map(|i| format!("quotes.S{i}")).collect();
    for t in &topics {
        c.subscribe(t).await;
    }
    let mut conn = redis.connection().await.unwrap();
    let list: String =
        redis::cmd("CLIENT").arg("LIST").arg("TYPE").arg("pubsub").query_async(&mut conn).await.unwrap();
    let subs: Vec<u32> = list
        .lines()
        .filter_map(|l| {
            l.split_whitespace().find_map(|kv| kv.strip_prefix("sub=")).map(|n| n.parse().unwrap())
        })
        .collect();
    assert_eq!(subs.len(), 4, "{list}");
    assert!(subs.iter().all(|n| *n > 0), "every connection carries topics: {subs:?}");
    assert_eq!(
        subs.iter().sum::<u32>(),
        25,
        "20 topics, the reply channel and a delivery probe channel per connection, each once"
    );
    let probes: Vec<String> =
        redis::cmd("PUBSUB").arg("CHANNELS").arg("rt:@probe:*").query_async(&mut conn).await.unwrap();
    assert_eq!(probes.len(), 4, "{probes:?}");
    for (i, t) in topics.iter().enumerate() {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(format!("rt:{t}"))
            .arg(envelope(t, i as u64 + 1, "{}"))
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let mut got: Vec<String> = Vec::new();
    for _ in 0..20 {
        got.push(c.frame().await.topic.unwrap());
    }
    got.sort();
    let mut want = topics.clone();
    want.sort();
    assert_eq!(got, want);
}
