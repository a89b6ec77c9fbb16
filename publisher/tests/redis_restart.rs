//! Redis going away while order updates are produced: every update still
//! lands exactly once, in order (history ids 1..n, no gap, no duplicate),
//! and the quote feed resumes by itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use publisher::Config;
use publisher::backplane::OrderUpdate;
use wire::{Topic, keys};

const N: u64 = 300;

fn config(prefix: &str, redis: &RedisServer) -> Config {
    Config {
        redis_url: redis.url(),
        redis_timeout_ms: 1_000,
        redis_backoff_max_ms: 200,
        quote_rate: 200,
        ..test_config(prefix)
    }
}

fn update(topic: &Topic, i: u64) -> OrderUpdate {
    OrderUpdate::new(topic.clone(), format!("u{i}"), &format!(r#"{{"i":{i}}}"#), None)
}

/// Waits until the history holds `n` entries, then checks they are the
/// updates 0..n in order under seq 1..n.
async fn assert_history_complete(redis: &RedisServer, prefix: &str, topic: &Topic, n: u64) {
    let key = keys::history(prefix, topic.as_str());
    let url = redis.url();
    let entries = eventually("every update in the history", || {
        let (url, key) = (url.clone(), key.clone());
        async move {
            let client = redis::Client::open(url).ok()?;
            let mut c = client.get_multiplexed_async_connection().await.ok()?;
            let len: u64 = redis::cmd("XLEN").arg(&key).query_async(&mut c).await.ok()?;
            assert!(len <= n, "history has {len} entries for {n} updates: duplicates");
            if len < n {
                return None;
            }
            Some(history(&mut c, &key).await)
        }
    })
    .await;
    for (k, (seq, env)) in entries.iter().enumerate() {
        assert_eq!(*seq, k as u64 + 1, "history ids must be 0-1..0-{n} without gaps");
        assert_eq!(env["seq"].as_u64(), Some(*seq));
        assert_eq!(env["data"]["i"].as_u64(), Some(k as u64), "updates out of order");
    }
}

#[tokio::test]
async fn redis_killed_and_restarted_while_updates_are_produced() {
    let prefix = unique_prefix();
    // Persistent (fsync always), so what Redis acknowledged before the
    // kill is still there and the whole history can be checked.
    let mut redis = RedisServer::start(true).await;
    let running = start(config(&prefix, &redis)).await;
    let shared = std::sync::Arc::clone(running.shared());
    let topic = Topic::parse("orders.acct-9").unwrap();

    for i in 0..N {
        if i == N / 3 {
            redis.kill();
        }
        if i == 2 * N / 3 {
            redis.spawn().await;
        }
        shared.updates.push(update(&topic, i)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert_history_complete(&redis, &prefix, &topic, N).await;

    // The writer counts a batch once Redis's answer is back, just after
    // the history was complete.
    let m = &shared.metrics;
    eventually("the writer to count every update", || async {
        (m.order_updates_published.get() == N && m.buffered_updates.get() == 0).then_some(())
    })
    .await;
    assert!(m.redis_outages.get() >= 1);
    assert!(m.retries.get() >= 1, "the outage never hit the writer");
    // The feed came back on its own.
    let url = redis.url();
    let last = keys::last_value(&prefix, "quotes.AAPL");
    eventually("a quote after the restart", || {
        let (url, last) = (url.clone(), last.clone());
        async move {
            let mut c = redis::Client::open(url).ok()?.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("GET").arg(&last).query_async::<Option<String>>(&mut c).await.ok()?
        }
    })
    .await;
    assert_eq!(running.stop().await, 0);
}

#[tokio::test]
async fn updates_made_while_redis_is_down_are_sent_when_it_comes_up() {
    let prefix = unique_prefix();
    let mut redis = RedisServer::reserve(false);
    let running = start(config(&prefix, &redis)).await;
    let shared = std::sync::Arc::clone(running.shared());
    let topic = Topic::parse("orders.acct-3").unwrap();
    for i in 0..N {
        shared.updates.push(update(&topic, i)).await.unwrap();
    }
    assert!(shared.metrics.buffered_updates.get() > 0);
    redis.spawn().await;
    assert_history_complete(&redis, &prefix, &topic, N).await;
    assert_eq!(running.stop().await, 0);
}

#[tokio::test]
async fn shutdown_flushes_buffered_updates() {
    let prefix = unique_prefix();
    let mut redis = RedisServer::reserve(false);
    let running = start(Config { drain_ms: 15_000, ..config(&prefix, &redis) }).await;
    let topic = Topic::parse("orders.acct-4").unwrap();
    for i in 0..50 {
        running.shared().updates.push(update(&topic, i)).await.unwrap();
    }
    // Redis comes up only after SIGTERM: the drain still delivers.
    let stop = tokio::spawn(running.stop());
    redis.spawn().await;
    assert_eq!(stop.await.unwrap(), 0);
    assert_history_complete(&redis, &prefix, &topic, 50).await;
}
