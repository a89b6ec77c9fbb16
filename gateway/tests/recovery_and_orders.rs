//! Snapshots, `since` recovery and order request/reply through a node.
//!
//! Redis-side writes here follow the layout the publisher uses (see
//! `wire::keys`): history entries `0-<seq>` with field `env`, written in
//! the same MULTI as the PUBLISH, and order replies on the node's reply
//! channel. The end-to-end tests with the real publisher live in the
//! publisher crate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use testkit::*;
use wire::keys;

#[tokio::test]
async fn quote_subscriber_gets_the_latest_value_first() {
    let gw = TestGateway::start(memory_config()).await;
    for bid in 1..=3 {
        gw.publish("quotes.SNAP", &format!(r#"{{"bid":{bid}}}"#)).await;
    }
    let mut c = gw.client().await;
    c.subscribe("quotes.SNAP").await;
    let snap = c.frame().await;
    assert_eq!((snap.kind.as_str(), snap.seq), ("message", Some(3)));
    assert_eq!(snap.data.unwrap().get(), r#"{"bid":3}"#);
    gw.publish("quotes.SNAP", r#"{"bid":4}"#).await;
    assert_eq!(c.frame().await.seq, Some(4));
    // `since` at the latest value: nothing to send again.
    let mut d = gw.client().await;
    d.send(r#"{"action":"subscribe","topic":"quotes.SNAP","since":4}"#).await;
    assert_eq!(d.frame().await.kind, "subscribed");
    d.expect_silence(Duration::from_millis(150)).await;
}

#[tokio::test]
async fn since_replays_what_was_missed_on_the_memory_backplane() {
    let gw = TestGateway::start(memory_config()).await;
    for n in 1..=5 {
        gw.publish("orders.acct1", &format!(r#"{{"n":{n}}}"#)).await;
    }
    let mut c = gw.client().await;
    c.send(r#"{"action":"subscribe","topic":"orders.acct1","since":2}"#).await;
    assert_eq!(c.frame().await.kind, "subscribed");
    for want in 3..=5 {
        assert_eq!(c.frame().await.seq, Some(want));
    }
    gw.publish("orders.acct1", r#"{"n":6}"#).await;
    assert_eq!(c.frame().await.seq, Some(6));
    c.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn resubscribe_with_since_misses_nothing_while_publishing_runs() {
    let server = TestRedis::get().await;
    let prefix = unique_prefix();
    let gw = TestGateway::start(redis_config(&server.url(), &prefix)).await;
    let topic = "orders.acct7";
    let total = 400u64;
    let mut conn = server.connection().await;
    let publisher = {
        let prefix = prefix.clone();
        tokio::spawn(async move {
            for _ in 0..total {
                publish_order_update(&mut conn, &prefix, topic).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut seen = Vec::new();
    let mut last = None;
    // Connect, read a few, drop the socket; repeat with `since` until done.
    for round in 0.. {
        let mut c = gw.client().await;
        // The first subscribe asks for everything (`since` 0): publishing
        // started before it.
        let since = format!(r#","since":{}"#, last.unwrap_or(0));
        c.send(&format!(r#"{{"action":"subscribe","topic":"{topic}"{since}}}"#)).await;
        assert_eq!(c.frame().await.kind, "subscribed");
        let take = 15 + round % 7;
        for _ in 0..take {
            let f = c.frame().await;
            assert_eq!(f.kind, "message", "{f:?}");
            let seq = f.seq.unwrap();
            seen.push(seq);
            last = Some(seq);
            if seq == total {
                break;
            }
        }
        if last == Some(total) {
            break;
        }
        drop(c);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publisher.await.unwrap();
    let expected: Vec<u64> = (1..=total).collect();
    assert_eq!(seen, expected, "every update exactly once, in order, across reconnects");
}

#[tokio::test]
async fn trimmed_history_is_reported() {
    let server = TestRedis::get().await;
    let prefix = unique_prefix();
    let gw = TestGateway::start(redis_config(&server.url(), &prefix)).await;
    let mut conn = server.connection().await;
    for _ in 0..10 {
        publish_order_update(&mut conn, &prefix, "orders.trim").await;
    }
    let _: i64 = redis::cmd("XTRIM")
        .arg(keys::history(&prefix, "orders.trim"))
        .arg("MAXLEN")
        .arg(4)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut c = gw.client().await;
    c.send(r#"{"action":"subscribe","topic":"orders.trim","since":2}"#).await;
    assert_eq!(c.frame().await.kind, "subscribed");
    let f = c.frame().await;
    assert_eq!((f.kind.as_str(), f.code.as_deref()), ("error", Some("recovery_failed")), "{f:?}");
    let got: Vec<u64> = [c.frame().await, c.frame().await, c.frame().await, c.frame().await]
        .iter()
        .map(|f| f.seq.unwrap())
        .collect();
    assert_eq!(got, vec![7, 8, 9, 10], "what history still holds is delivered");
}

/// A stand-in order service on Redis: answers every request on the
/// asking node's channel, refusing side "up" with `invalid_side`.
async fn serve_orders(url: String, prefix: String, count: usize) -> BTreeSet<String> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let stream = keys::order_requests(&prefix);
    let mut last_id = "0".to_string();
    let mut seen_nodes = BTreeSet::new();
    let mut served = 0;
    while served < count {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(5000)
            .arg("STREAMS")
            .arg(&stream)
            .arg(&last_id)
            .query_async(&mut conn)
            .await
            .unwrap();
        for key in reply.keys {
            for entry in key.ids {
                last_id = entry.id.clone();
                let raw: String = entry.get(wire::orders::REQUEST_FIELD).unwrap();
                let req: wire::orders::OrderRequest = serde_json::from_str(&raw).unwrap();
                let order: serde_json::Value = serde_json::from_str(req.order.get()).unwrap();
                let reply = if order["side"] == "up" {
                    serde_json::json!({"corr": req.corr, "error": {"code": "invalid_side", "message": "side must be buy or sell"}})
                } else {
                    serde_json::json!({"corr": req.corr, "data": {"status": "accepted", "qty": order["qty"]}})
                };
                seen_nodes.insert(req.node.clone());
                let _: i64 = redis::cmd("PUBLISH")
                    .arg(keys::node_replies(&prefix, &req.node))
                    .arg(reply.to_string())
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                served += 1;
            }
        }
    }
    seen_nodes
}

#[tokio::test]
async fn order_round_trip_through_redis() {
    let server = TestRedis::get().await;
    let prefix = unique_prefix();
    let config = gateway::Config { node_id: "node-b".into(), ..redis_config(&server.url(), &prefix) };
    let gw = TestGateway::start(config).await;
    assert_eq!(gw.wait_metric("gateway_backplane_up", |v| v == 1.0).await, 1.0);
    let service = tokio::spawn(serve_orders(server.url(), prefix.clone(), 2));
    let mut c = gw.client().await;
    c.send(r#"{"action":"order","id":"c-1","order":{"symbol":"AAPL","side":"buy","qty":10}}"#).await;
    c.send(r#"{"action":"order","id":2,"order":{"symbol":"AAPL","side":"up","qty":10}}"#).await;
    let mut frames = [c.frame().await, c.frame().await];
    frames.sort_by_key(|f| f.kind.clone());
    let (err, reply) = (&frames[0], &frames[1]);
    assert_eq!(reply.kind, "reply");
    assert_eq!(reply.id.as_ref().unwrap().get(), r#""c-1""#);
    assert_eq!(reply.data.as_ref().unwrap().get(), r#"{"qty":10,"status":"accepted"}"#);
    assert_eq!((err.kind.as_str(), err.code.as_deref()), ("error", Some("invalid_side")));
    assert_eq!(err.id.as_ref().unwrap().get(), "2");
    let nodes = service.await.unwrap();
    assert_eq!(nodes, BTreeSet::from(["node-b".to_string()]), "requests name the node to reply to");
}

#[tokio::test]
async fn order_without_a_service_times_out_and_limits_apply() {
    let server = TestRedis::get().await;
    let prefix = unique_prefix();
    let config = gateway::Config {
        order_timeout_ms: 300,
        max_pending_orders: 2,
        ..redis_config(&server.url(), &prefix)
    };
    let gw = TestGateway::start(config).await;
    let mut c = gw.client().await;
    for id in 1..=3 {
        c.send(&format!(r#"{{"action":"order","id":{id},"order":{{"qty":1}}}}"#)).await;
    }
    let limited = c.frame().await;
    assert_eq!((limited.code.as_deref(), limited.id.unwrap().get()), (Some("rate_limited"), "3"));
    // The connection keeps serving while orders wait.
    c.send(r#"{"action":"ping"}"#).await;
    assert_eq!(c.frame().await.kind, "pong");
    for _ in 0..2 {
        let f = c.frame().await;
        assert_eq!(f.code.as_deref(), Some("timeout"), "{f:?}");
    }
    assert_eq!(gw.metric("gateway_order_timeouts_total").await, 2.0);
}

#[tokio::test]
async fn orders_published_through_a_node_keep_history_for_since() {
    let server = TestRedis::get().await;
    let prefix = unique_prefix();
    let gw = TestGateway::start(redis_config(&server.url(), &prefix)).await;
    for n in 1..=4 {
        let (status, body) = gw.publish("orders.hist", &format!(r#"{{"n":{n}}}"#)).await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, body) = gw.publish("quotes.HIST", r#"{"bid":1}"#).await;
    assert!(body.contains(r#""seq":1"#), "{body}");
    let mut c = gw.client().await;
    c.send(r#"{"action":"subscribe","topic":"orders.hist","since":1}"#).await;
    assert_eq!(c.frame().await.kind, "subscribed");
    for want in 2..=4 {
        assert_eq!(c.frame().await.seq, Some(want));
    }
    c.subscribe("quotes.HIST").await;
    let snap = c.frame().await;
    assert_eq!((snap.topic.as_deref(), snap.seq), (Some("quotes.HIST"), Some(1)), "quote snapshot stored");
}

#[tokio::test]
async fn a_gap_in_an_order_stream_is_filled_from_history() {
    let server = TestRedis::get().await;
    let prefix = unique_prefix();
    let gw = TestGateway::start(redis_config(&server.url(), &prefix)).await;
    let mut conn = server.connection().await;
    let topic = "orders.gap";
    let mut c = gw.client().await;
    c.subscribe(topic).await;
    publish_order_update(&mut conn, &prefix, topic).await; // 1, live
    assert_eq!(c.frame().await.seq, Some(1));
    // 2 and 3 reach the history but never the channel (as while a node's
    // link to Redis was down); 4 is live again.
    for _ in 0..2 {
        let seq: u64 =
            redis::cmd("INCR").arg(keys::seq_counter(&prefix, topic)).query_async(&mut conn).await.unwrap();
        let env = envelope(topic, seq, &format!(r#"{{"update":{seq}}}"#));
        let _: String = redis::cmd("XADD")
            .arg(keys::history(&prefix, topic))
            .arg(keys::history_id(seq))
            .arg(keys::HISTORY_FIELD)
            .arg(env)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    publish_order_update(&mut conn, &prefix, topic).await; // 4
    for want in 2..=4 {
        assert_eq!(c.frame().await.seq, Some(want));
    }
    assert_eq!(gw.metric("gateway_gaps_filled_total").await, 1.0);
    // Quotes are not gap-filled: a newer quote simply supersedes.
    c.subscribe("quotes.GAP").await;
    for seq in [1, 5] {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(keys::channel(&prefix, "quotes.GAP"))
            .arg(envelope("quotes.GAP", seq, "{}"))
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    assert_eq!(c.frame().await.seq, Some(1));
    assert_eq!(c.frame().await.seq, Some(5));
}
