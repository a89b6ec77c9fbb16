//! Helpers shared by the integration tests: a unique key prefix per test
//! on the local Redis, a publisher started on port 0, a pub/sub listener,
//! a tiny HTTP client, and a private `redis-server` for restart tests.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use publisher::{Config, Running};
use redis::aio::PubSubStream;
pub use testkit::{RedisServer, eventually, metric};
use tokio::net::TcpListener;

/// The shared local Redis the tests use (each under its own prefix).
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Generous bound for anything a test waits for on a loaded machine.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn unique_prefix() -> String {
    format!("t-{}:", uuid::Uuid::new_v4().simple())
}

/// A config for tests: loopback, no feed, no simulated orders, fast fills.
pub fn test_config(prefix: &str) -> Config {
    Config {
        listen: "127.0.0.1:0".into(),
        redis_url: REDIS_URL.into(),
        channel_prefix: prefix.into(),
        symbols: "AAPL,MSFT".into(),
        quote_rate: 0,
        order_rate: 0.0,
        fill_delay_ms: 10,
        redis_backoff_max_ms: 200,
        drain_ms: 5_000,
        publish_insecure: true,
        ..Config::default()
    }
}

pub async fn start(config: Config) -> Running {
    config.validate().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    publisher::start(config, listener).await.unwrap()
}

pub async fn conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// Deletes every key under `prefix` on the shared Redis.
pub async fn cleanup(prefix: &str) {
    let mut c = conn(REDIS_URL).await;
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut c).await.unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut c).await.unwrap();
    }
}

/// A pub/sub listener on some channels.
pub struct Listener {
    stream: PubSubStream,
}

impl Listener {
    pub async fn new(url: &str, channels: &[String]) -> Listener {
        let mut pubsub = redis::Client::open(url).unwrap().get_async_pubsub().await.unwrap();
        for c in channels {
            pubsub.subscribe(c).await.unwrap();
        }
        Listener { stream: pubsub.into_on_message() }
    }

    /// The next message: (channel, payload).
    pub async fn next(&mut self) -> (String, String) {
        let msg = tokio::time::timeout(WAIT, self.stream.next())
            .await
            .expect("no message in time")
            .expect("pub/sub stream ended");
        (msg.get_channel_name().to_owned(), msg.get_payload::<String>().unwrap())
    }

    /// The next message on `channel`, skipping others.
    pub async fn next_on(&mut self, channel: &str) -> String {
        loop {
            let (c, payload) = self.next().await;
            if c == channel {
                return payload;
            }
        }
    }
}

/// One HTTP/1.1 request; returns (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    testkit::http(addr, method, path, body, &[]).await
}

/// Reads a topic's history stream: (seq from the id, envelope JSON).
pub async fn history(c: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<(u64, serde_json::Value)> {
    let reply: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(key).arg("-").arg("+").query_async(c).await.unwrap();
    reply
        .ids
        .iter()
        .map(|e| {
            let seq = wire::keys::seq_of_history_id(&e.id).unwrap();
            let env: String = e.get("env").unwrap();
            (seq, serde_json::from_str(&env).unwrap())
        })
        .collect()
}
