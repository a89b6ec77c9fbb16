//! The HTTP API on a running publisher: `POST /publish` for each topic
//! family and every kind of bad input, plus health, readiness, metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use publisher::Config;
use serde_json::Value;
use wire::keys;

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test]
async fn publish_accepts_good_messages_on_every_family() {
    let prefix = unique_prefix();
    let running = start(test_config(&prefix)).await;
    let addr = running.local_addr();
    let mut c = conn(REDIS_URL).await;

    // quotes.*: next seq, snapshot stored.
    for want in 1..=2 {
        let (status, body) =
            http(addr, "POST", "/publish", Some(r#"{"topic":"quotes.AAPL","data":{"bid":1.5}}"#)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(json(&body), serde_json::json!({"topic": "quotes.AAPL", "seq": want}));
    }
    let snap: String =
        redis::cmd("GET").arg(keys::last_value(&prefix, "quotes.AAPL")).query_async(&mut c).await.unwrap();
    let env = wire::Envelope::parse(snap.as_bytes(), Some("quotes.AAPL")).unwrap();
    assert_eq!((env.seq, env.data.get()), (2, r#"{"bid":1.5}"#));

    // orders.*: history, and the same id published once.
    let order = r#"{"topic":"orders.acct-1","data":{"status":"new"},"id":"req-1","traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#;
    for _ in 0..2 {
        let (status, body) = http(addr, "POST", "/publish", Some(order)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(json(&body)["seq"], 1);
    }
    let h = history(&mut c, &keys::history(&prefix, "orders.acct-1")).await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].0, 1);
    assert_eq!(h[0].1["traceparent"], "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");

    // Anything else: next seq, nothing stored.
    let (status, body) = http(addr, "POST", "/publish", Some(r#"{"topic":"news.x","data":{}}"#)).await;
    assert_eq!((status, json(&body)["seq"].as_u64()), (200, Some(1)));
    let exists: bool =
        redis::cmd("EXISTS").arg(keys::last_value(&prefix, "news.x")).query_async(&mut c).await.unwrap();
    assert!(!exists);

    let (status, body) = http(addr, "GET", "/healthz", None).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let ready = eventually("readyz 200", || async {
        let (status, body) = http(addr, "GET", "/readyz", None).await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(json(&ready)["redis_up"], true);
    let metrics = http(addr, "GET", "/metrics", None).await.1;
    assert_eq!(metric(&metrics, "publisher_http_published_total"), 5.0, "{metrics}");
    assert!(metrics.contains("publisher_redis_outages_total"), "{metrics}");
    running.stop().await;
    cleanup(&prefix).await;
}

#[tokio::test]
async fn publish_refuses_bad_input_with_stable_codes() {
    let prefix = unique_prefix();
    let running = start(test_config(&prefix)).await;
    let addr = running.local_addr();
    let cases = [
        ("{nope", "invalid_json"),
        ("", "invalid_json"),
        (r#"[1,2]"#, "invalid_frame"),
        (r#"{"topic":"quotes.A"}"#, "invalid_frame"),
        (r#"{"data":{}}"#, "invalid_frame"),
        (r#"{"topic":7,"data":{}}"#, "invalid_frame"),
        (r#"{"topic":"quotes.A","data":[1]}"#, "invalid_frame"),
        (r#"{"topic":"quotes.A","data":"x"}"#, "invalid_frame"),
        (r#"{"topic":"orders.a","data":{},"id":"a b"}"#, "invalid_frame"),
        (r#"{"topic":"a b","data":{}}"#, "invalid_topic"),
        (r#"{"topic":"","data":{}}"#, "invalid_topic"),
    ];
    for (body, code) in cases {
        let (status, reply) = http(addr, "POST", "/publish", Some(body)).await;
        assert_eq!(status, 400, "{body}: {reply}");
        let reply = json(&reply);
        assert_eq!(reply["error"]["code"], code, "{body}: {reply}");
        assert!(reply["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (status, _) = http(addr, "GET", "/publish", None).await;
    assert_eq!(status, 405);
    running.stop().await;

    // With an API key, a request without it is refused.
    let running = start(Config { publish_api_key: "s3cret".into(), ..test_config(&prefix) }).await;
    let (status, reply) =
        http(running.local_addr(), "POST", "/publish", Some(r#"{"topic":"x","data":{}}"#)).await;
    assert_eq!((status, json(&reply)["error"]["code"].as_str()), (401, Some("unauthorized")));
    running.stop().await;
    cleanup(&prefix).await;
}

#[tokio::test]
async fn readyz_is_503_while_redis_is_away() {
    let prefix = unique_prefix();
    let redis = RedisServer::reserve(false);
    let running = start(Config { redis_url: redis.url(), ..test_config(&prefix) }).await;
    let addr = running.local_addr();
    let (status, body) = http(addr, "GET", "/readyz", None).await;
    assert_eq!(status, 503, "{body}");
    let (status, body) = http(addr, "POST", "/publish", Some(r#"{"topic":"quotes.A","data":{}}"#)).await;
    assert_eq!((status, json(&body)["error"]["code"].as_str()), (503, Some("backplane_unavailable")));
    running.stop().await;
}

#[tokio::test]
async fn publish_is_closed_without_a_key_unless_opened() {
    let prefix = unique_prefix();
    let running = start(Config { publish_insecure: false, ..test_config(&prefix) }).await;
    let (status, reply) =
        http(running.local_addr(), "POST", "/publish", Some(r#"{"topic":"quotes.A","data":{}}"#)).await;
    assert_eq!((status, json(&reply)["error"]["code"].as_str()), (403, Some("forbidden")), "{reply}");
    assert!(json(&reply)["error"]["message"].as_str().is_some_and(|m| m.contains("publish_api_key")));
    running.stop().await;
    cleanup(&prefix).await;
}
