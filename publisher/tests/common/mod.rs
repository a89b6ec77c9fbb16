//! Helpers shared by the integration tests: a unique key prefix per test
//! on the local Redis, a publisher started on port 0, a pub/sub listener,
//! a tiny HTTP client, and a private `redis-server` for restart tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use publisher::{Config, Running};
use redis::aio::PubSubStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
    let work = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8(buf).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, body.to_owned())
    };
    tokio::time::timeout(WAIT, work).await.expect("HTTP request timed out")
}

/// Polls `check` until it returns `Some`, failing the test after [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A private `redis-server` on a free port, killed when dropped.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    persistent: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one; `persistent` turns on an fsync-always append-only file
    /// so data survives a SIGKILL.
    pub async fn start(persistent: bool) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("publisher-test-redis-{port}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer { port, dir, persistent, child: None };
        server.spawn().await;
        server
    }

    /// A server that is not running yet (`spawn` it later).
    pub fn reserve(persistent: bool) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("publisher-test-redis-{port}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        RedisServer { port, dir, persistent, child: None }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the process and waits until it answers PING.
    pub async fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        self.child = Some(cmd.spawn().expect("redis-server on PATH"));
        let url = self.url();
        eventually("redis-server to answer", || {
            let url = url.clone();
            async move {
                let client = redis::Client::open(url).ok()?;
                let mut c = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING").query_async::<String>(&mut c).await.ok()
            }
        })
        .await;
    }

    /// SIGKILLs the process (no shutdown, no final save).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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

/// The value of a counter in `/metrics` text (0 when absent).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}
