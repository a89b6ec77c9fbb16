//! Order request/reply through the request stream, as a gateway sees it:
//! XADD a request, get the reply on the node's channel, then the order's
//! lifecycle on `orders.<ACCOUNT>`; refusals with each error code; stale
//! requests skipped; a dead replica's requests claimed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use publisher::Config;
use serde_json::Value;
use serde_json::value::RawValue;
use wire::keys;
use wire::orders::{CONSUMER_GROUP, OrderReply, OrderRequest, REQUEST_FIELD};

const NODE: &str = "node-a";

async fn send(
    c: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    corr: &str,
    account: Option<&str>,
    order: &str,
    ts: u64,
) {
    let req = OrderRequest {
        corr: corr.into(),
        node: NODE.into(),
        account: account.map(String::from),
        order: RawValue::from_string(order.into()).unwrap(),
        ts,
        traceparent: None,
    };
    let _: String = redis::cmd("XADD")
        .arg(keys::order_requests(prefix))
        .arg("*")
        .arg(REQUEST_FIELD)
        .arg(serde_json::to_string(&req).unwrap())
        .query_async(c)
        .await
        .unwrap();
}

async fn reply(listener: &mut Listener, prefix: &str) -> OrderReply {
    serde_json::from_str(&listener.next_on(&keys::node_replies(prefix, NODE)).await).unwrap()
}

#[tokio::test]
async fn request_gets_a_reply_then_the_order_lifecycle() {
    let prefix = unique_prefix();
    let updates = keys::channel(&prefix, "orders.acct-7");
    let mut listener = Listener::new(REDIS_URL, &[keys::node_replies(&prefix, NODE), updates.clone()]).await;
    let running = start(test_config(&prefix)).await;
    let mut c = conn(REDIS_URL).await;

    send(
        &mut c,
        &prefix,
        "c-1",
        Some("acct-7"),
        r#"{"symbol":"AAPL","side":"buy","qty":10,"price":12.5}"#,
        wire::now_ms(),
    )
    .await;
    let r = reply(&mut listener, &prefix).await;
    assert_eq!(r.corr, "c-1");
    assert!(r.error.is_none());
    let data: Value = serde_json::from_str(r.data.unwrap().get()).unwrap();
    assert_eq!(data["status"], "accepted");
    assert_eq!(
        (data["account"].as_str(), data["qty"].as_u64(), data["price"].as_f64()),
        (Some("acct-7"), Some(10), Some(12.5))
    );
    let order_id = data["order_id"].as_str().unwrap().to_owned();

    let mut rows = Vec::new();
    for _ in 0..3 {
        let env = listener.next_on(&updates).await;
        let env = wire::Envelope::parse(env.as_bytes(), Some("orders.acct-7")).unwrap();
        let row: Value = serde_json::from_str(env.data.get()).unwrap();
        rows.push((env.seq, row));
    }
    let seqs: Vec<u64> = rows.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [1, 2, 3]);
    let statuses: Vec<&str> = rows.iter().map(|(_, r)| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["new", "partially_filled", "filled"]);
    for (i, (_, row)) in rows.iter().enumerate() {
        assert_eq!(row["order_id"], order_id.as_str());
        assert_eq!(row["sequence"].as_u64(), Some(i as u64 + 1));
        for field in [
            "account",
            "symbol",
            "side",
            "qty",
            "price",
            "filled_qty",
            "last_qty",
            "last_price",
            "transaction",
        ] {
            assert!(row.get(field).is_some(), "{field} missing in {row}");
        }
    }
    assert_eq!(rows[2].1["filled_qty"].as_u64(), Some(10));

    // The same updates are in the history, and the request was acknowledged.
    let h = history(&mut c, &keys::history(&prefix, "orders.acct-7")).await;
    assert_eq!(h.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2, 3]);
    let pending: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
        .arg(keys::order_requests(&prefix))
        .arg(CONSUMER_GROUP)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(pending.count(), 0);

    let metrics = http(running.local_addr(), "GET", "/metrics", None).await.1;
    assert_eq!(metric(&metrics, "publisher_requests_served_total"), 1.0, "{metrics}");
    running.stop().await;
    cleanup(&prefix).await;
}

#[tokio::test]
async fn invalid_orders_get_their_codes_and_stale_requests_no_reply() {
    let prefix = unique_prefix();
    let mut listener = Listener::new(REDIS_URL, &[keys::node_replies(&prefix, NODE)]).await;
    let running = start(test_config(&prefix)).await;
    let mut c = conn(REDIS_URL).await;
    let now = wire::now_ms();

    // Too old: the gateway gave up on it; it must be skipped silently.
    send(&mut c, &prefix, "stale", Some("a"), r#"{"symbol":"AAPL","side":"buy","qty":1}"#, now - 60_000)
        .await;
    let cases = [
        ("missing-account", None, r#"{"symbol":"AAPL","side":"buy","qty":1}"#, "missing_field"),
        ("missing-qty", Some("a"), r#"{"symbol":"AAPL","side":"buy"}"#, "missing_field"),
        ("zero-qty", Some("a"), r#"{"symbol":"AAPL","side":"buy","qty":0}"#, "invalid_quantity"),
        ("huge-qty", Some("a"), r#"{"symbol":"AAPL","side":"buy","qty":1000001}"#, "invalid_quantity"),
        ("bad-side", Some("a"), r#"{"symbol":"AAPL","side":"hold","qty":1}"#, "invalid_side"),
        ("bad-symbol", Some("a"), r#"{"symbol":"NOPE","side":"buy","qty":1}"#, "unknown_symbol"),
        ("neg-price", Some("a"), r#"{"symbol":"AAPL","side":"sell","qty":1,"price":-3}"#, "invalid_order"),
        ("bad-type", Some("a"), r#"{"symbol":["AAPL"],"side":"sell","qty":1}"#, "invalid_order"),
        ("not-object", Some("a"), r#""buy AAPL""#, "invalid_order"),
    ];
    for (corr, account, order, _) in &cases {
        send(&mut c, &prefix, corr, *account, order, now).await;
    }
    // Requests are served in stream order, so the stale one would have
    // been answered first if it were answered at all.
    for (corr, _, order, code) in &cases {
        let r = reply(&mut listener, &prefix).await;
        assert_eq!(r.corr, *corr);
        let err = r.error.unwrap_or_else(|| panic!("{order} was accepted"));
        assert_eq!(err.code, *code, "{order}: {}", err.message);
        assert!(!err.message.is_empty());
        assert!(r.data.is_none());
    }
    let metrics = http(running.local_addr(), "GET", "/metrics", None).await.1;
    assert_eq!(metric(&metrics, "publisher_requests_skipped_total"), 1.0, "{metrics}");
    assert_eq!(metric(&metrics, r#"publisher_replies_total{code="missing_field"}"#), 2.0, "{metrics}");
    running.stop().await;
    cleanup(&prefix).await;
}

#[tokio::test]
async fn requests_left_pending_by_a_dead_replica_are_claimed() {
    let prefix = unique_prefix();
    let stream = keys::order_requests(&prefix);
    let mut listener = Listener::new(REDIS_URL, &[keys::node_replies(&prefix, NODE)]).await;
    let mut c = conn(REDIS_URL).await;

    // A replica that read the request and died before answering it.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(CONSUMER_GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut c)
        .await
        .unwrap();
    send(&mut c, &prefix, "orphan", Some("a"), r#"{"symbol":"MSFT","side":"sell","qty":5}"#, wire::now_ms())
        .await;
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(CONSUMER_GROUP)
        .arg("dead-replica")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut c)
        .await
        .unwrap();

    let running = start(Config { request_claim_idle_ms: 200, ..test_config(&prefix) }).await;
    let r = reply(&mut listener, &prefix).await;
    assert_eq!(r.corr, "orphan");
    assert!(r.error.is_none());
    let metrics = http(running.local_addr(), "GET", "/metrics", None).await.1;
    assert_eq!(metric(&metrics, "publisher_requests_claimed_total"), 1.0, "{metrics}");
    running.stop().await;
    cleanup(&prefix).await;
}
