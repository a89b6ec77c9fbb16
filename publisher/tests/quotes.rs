//! The quote feed against a real Redis: envelopes on `quotes.<SYMBOL>`
//! with increasing `seq`, the latest stored as the snapshot, and `seq`
//! never going backwards across a restart or another publisher.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use publisher::Config;
use wire::keys;

/// (seq, symbol) of an envelope received on `topic`.
fn parse(payload: &str, topic: &str) -> (u64, String) {
    let env = wire::Envelope::parse(payload.as_bytes(), Some(topic)).unwrap();
    let data: serde_json::Value = serde_json::from_str(env.data.get()).unwrap();
    assert!(data["bid"].as_f64().unwrap() < data["ask"].as_f64().unwrap(), "{payload}");
    assert!(env.ts > 0);
    (env.seq, data["symbol"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn quotes_have_increasing_seq_and_a_snapshot() {
    let prefix = unique_prefix();
    let topic = "quotes.AAPL";
    let channel = keys::channel(&prefix, topic);
    let mut listener = Listener::new(REDIS_URL, std::slice::from_ref(&channel)).await;
    let running = start(Config { quote_rate: 2_000, ..test_config(&prefix) }).await;

    let mut last = 0;
    for _ in 0..50 {
        let (seq, symbol) = parse(&listener.next_on(&channel).await, topic);
        assert_eq!(symbol, "AAPL");
        // Only this publisher writes here, so seq is consecutive.
        assert!(last == 0 || seq == last + 1, "seq {seq} after {last}");
        last = seq;
    }
    let mut c = conn(REDIS_URL).await;
    let snapshot: String =
        redis::cmd("GET").arg(keys::last_value(&prefix, topic)).query_async(&mut c).await.unwrap();
    let (snap_seq, _) = parse(&snapshot, topic);
    assert!(snap_seq >= last, "snapshot seq {snap_seq} older than received {last}");

    let metrics = http(running.local_addr(), "GET", "/metrics", None).await.1;
    assert!(metric(&metrics, "publisher_quotes_published_total") >= 50.0, "{metrics}");
    assert_eq!(running.stop().await, 0);
    cleanup(&prefix).await;
}

#[tokio::test]
async fn seq_never_goes_backwards_across_restart_and_other_publishers() {
    let prefix = unique_prefix();
    let topic = "quotes.MSFT";
    let channel = keys::channel(&prefix, topic);
    let config = Config { quote_rate: 1_000, symbols: "MSFT".into(), ..test_config(&prefix) };
    let mut listener = Listener::new(REDIS_URL, std::slice::from_ref(&channel)).await;

    let running = start(config.clone()).await;
    let mut last = 0;
    for _ in 0..10 {
        last = parse(&listener.next_on(&channel).await, topic).0;
    }
    running.stop().await;

    // Another publisher (the gateway's POST /publish) moves the counter on.
    let mut c = conn(REDIS_URL).await;
    let counter = keys::seq_counter(&prefix, topic);
    let outside: u64 = redis::cmd("INCRBY").arg(&counter).arg(1000).query_async(&mut c).await.unwrap();
    assert!(outside > last);
    // Quotes the first run sent after `last` are still queued in the
    // listener; they must be below `outside` and in order too.
    let mut seen = last;
    let running = start(config).await;

    // And keeps publishing the gateway's way while the feed runs.
    let gateway = tokio::spawn({
        let (counter, channel) = (counter.clone(), channel.clone());
        async move {
            let script = redis::Script::new(
                "local seq = redis.call('INCR', KEYS[1]) redis.call('PUBLISH', ARGV[1], ARGV[2] .. seq .. ARGV[3]) return seq",
            );
            let mut c = conn(REDIS_URL).await;
            for _ in 0..50 {
                let (head, tail) = wire::envelope::encode_parts(
                    "quotes.MSFT",
                    wire::now_ms(),
                    r#"{"symbol":"MSFT","bid":1,"ask":2}"#,
                    None,
                );
                let _: u64 = script
                    .key(&counter)
                    .arg(&channel)
                    .arg(head)
                    .arg(tail)
                    .invoke_async(&mut c)
                    .await
                    .unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        }
    });
    let mut after_restart = Vec::new();
    while after_restart.len() < 200 {
        let (seq, _) = parse(&listener.next_on(&channel).await, topic);
        assert!(seq > seen, "seq went from {seen} back to {seq}");
        seen = seq;
        if seq > outside {
            after_restart.push(seq);
        }
    }
    gateway.await.unwrap();
    running.stop().await;
    cleanup(&prefix).await;
}
