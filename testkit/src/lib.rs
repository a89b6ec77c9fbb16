//! Test support shared by every crate's integration tests: a real gateway
//! on a loopback port, real WebSocket clients, raw HTTP requests, the
//! machine's redis-server or a private one a test may kill and restart.
//! An OTLP receiver ([`otlp`]) stands in for Jaeger. Nothing here is a
//! mock: every helper drives a real process or socket.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

pub mod cluster;
pub mod otlp;
pub mod process;
pub mod resilient;
pub mod sentinel;

pub use cluster::{ClusterOptions, RedisCluster};

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gateway::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wire::server::Frame;

/// Generous: CI shares two cores with a compiler.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestGateway {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<()>,
}

impl TestGateway {
    pub async fn start(mut config: Config) -> TestGateway {
        config.listen = "127.0.0.1:0".into();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            gateway::run(config, listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        TestGateway { addr, stop: Some(tx), task }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Signals shutdown (as SIGTERM would) without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http(self.addr, "GET", path, None, &[]).await
    }

    pub async fn publish(&self, topic: &str, data: &str) -> (u16, String) {
        let body = format!(r#"{{"topic":"{topic}","data":{data}}}"#);
        http(self.addr, "POST", "/publish", Some(&body), &[]).await
    }

    /// The value of one metric line (`name` with labels, if any).
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        metric(&body, name)
    }

    /// Polls a metric until `pred` holds or WAIT passes.
    pub async fn wait_metric(&self, name: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self.metric(name).await;
            if pred(v) || tokio::time::Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.begin_shutdown();
        self.task.abort();
    }
}

/// Default config for tests: short timers so nothing waits long.
pub fn memory_config() -> Config {
    Config {
        drain_ms: 1_000,
        unsubscribe_grace_ms: 50,
        demo: gateway::config::Switch::Off,
        // Tests publish over HTTP from loopback without a key.
        publish_insecure: true,
        ..Config::default()
    }
}

pub fn redis_config(url: &str, prefix: &str) -> Config {
    Config {
        redis_url: url.into(),
        channel_prefix: prefix.into(),
        redis_backoff_max_ms: 200,
        redis_timeout_ms: 2_000,
        ..memory_config()
    }
}

/// A per-test channel prefix so tests share one Redis without crosstalk.
pub fn unique_prefix() -> String {
    format!("t{}:", uuid::Uuid::new_v4().simple())
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut client = Client { ws };
        let welcome = client.frame().await;
        assert_eq!(welcome.kind, "welcome");
        client
    }

    /// Connects to `addr` from the loopback address `source` (tests that
    /// tell clients apart by address); the handshake's error, if refused.
    pub async fn connect_from(
        addr: SocketAddr,
        source: std::net::IpAddr,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        let stream = socket.connect(addr).await.map_err(tokio_tungstenite::tungstenite::Error::Io)?;
        let url = format!("ws://{addr}/ws");
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)).await?;
        let mut client = Client { ws };
        assert_eq!(client.frame().await.kind, "welcome");
        Ok(client)
    }

    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// The next text frame, parsed (pings and pongs are skipped).
    pub async fn frame(&mut self) -> Frame {
        let text = self.text().await;
        Frame::parse(&text).unwrap_or_else(|e| panic!("unparseable frame {text}: {e}"))
    }

    pub async fn text(&mut self) -> String {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("socket closed")
                .expect("socket error");
            match msg {
                Message::Text(t) => return t.to_string(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Expects no text frame for `quiet`, reading (and so answering
    /// pings) the whole time.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Text(t)))) => panic!("expected silence, got {t}"),
                Ok(Some(Ok(_))) => continue,
                Ok(other) => panic!("socket ended while expecting silence: {other:?}"),
            }
        }
    }

    pub async fn subscribe(&mut self, topic: &str) {
        self.send(&format!(r#"{{"action":"subscribe","topic":"{topic}"}}"#)).await;
        let f = self.frame().await;
        assert_eq!((f.kind.as_str(), f.topic.as_deref()), ("subscribed", Some(topic)), "{f:?}");
    }

    pub async fn unsubscribe(&mut self, topic: &str) {
        self.send(&format!(r#"{{"action":"unsubscribe","topic":"{topic}"}}"#)).await;
        let f = self.frame().await;
        assert_eq!((f.kind.as_str(), f.topic.as_deref()), ("unsubscribed", Some(topic)), "{f:?}");
    }

    /// Sends `text` and expects an `error` frame with `code`.
    pub async fn expect_error(&mut self, text: &str, code: &str) -> Frame {
        self.send(text).await;
        let f = self.frame().await;
        assert_eq!(
            (f.kind.as_str(), f.code.as_deref()),
            ("error", Some(code)),
            "after sending {text}: {f:?}"
        );
        f
    }

    /// Waits for the close frame and returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => panic!("no close frame in time"),
                Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) | Ok(None) => return None,
            }
        }
    }
}

/// A minimal HTTP/1.1 request (`Connection: close`): status and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// A private `redis-server` on a free port, killed (SIGKILL) when dropped.
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
        let mut server = RedisServer::reserve(persistent);
        server.spawn().await;
        server
    }

    /// A server that is not running yet (`spawn` it later).
    pub fn reserve(persistent: bool) -> RedisServer {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("testkit-redis-{port}-{}", uuid::Uuid::new_v4().simple()));
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
        self.child = Some(cmd.spawn().expect("redis-server must be on PATH (apt-get install redis-server)"));
        wait_ping(self.url()).await;
    }

    /// SIGKILLs the process (no shutdown, no final save).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?.get_multiplexed_async_connection().await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free TCP port on loopback (free when asked; tests race only each other).
///
/// Drawn below Linux's ephemeral range (32768–60999), so a server a test
/// kills and restarts on the same port cannot lose it meanwhile to a
/// client socket or a `bind(0)` elsewhere in the test run.
pub fn free_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000..32000 on 127.0.0.1");
}

/// Waits until the redis-server at `url` answers PING, failing after [`WAIT`].
pub async fn wait_ping(url: String) {
    eventually("a redis-server to answer PING", || {
        let url = url.clone();
        async move {
            let mut c = redis::Client::open(url).ok()?.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("PING").query_async::<String>(&mut c).await.ok()
        }
    })
    .await;
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
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The value of a metric line in Prometheus text (0 when absent).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

pub const SHARED_REDIS: &str = "redis://127.0.0.1:6379";

/// The redis-server a test talks to: the machine's own on 127.0.0.1:6379
/// when it answers (tests keep apart by channel prefix), otherwise a
/// private one started for this test.
pub enum TestRedis {
    Shared,
    Private(RedisServer),
}

impl TestRedis {
    pub async fn get() -> TestRedis {
        let shared = async {
            let mut c = redis::Client::open(SHARED_REDIS)?.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut c).await
        };
        match tokio::time::timeout(Duration::from_secs(2), shared).await {
            Ok(Ok(_)) => TestRedis::Shared,
            _ => TestRedis::Private(RedisServer::start(false).await),
        }
    }

    pub fn url(&self) -> String {
        match self {
            TestRedis::Shared => SHARED_REDIS.to_string(),
            TestRedis::Private(p) => p.url(),
        }
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }
}

pub async fn numsub(conn: &mut redis::aio::MultiplexedConnection, channel: &str) -> i64 {
    let (_, n): (String, i64) =
        redis::cmd("PUBSUB").arg("NUMSUB").arg(channel).query_async(conn).await.unwrap();
    n
}

/// Polls PUBSUB NUMSUB until it equals `want` or WAIT passes.
pub async fn wait_numsub(conn: &mut redis::aio::MultiplexedConnection, channel: &str, want: i64) -> i64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n = numsub(conn, channel).await;
        if n == want || tokio::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HS256 client token for account `sub`, valid for an hour.
pub fn token(secret: &str, sub: &str) -> String {
    let claims = serde_json::json!({"sub": sub, "exp": wire::now_ms() / 1000 + 3600});
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key).unwrap()
}

/// Publishes an `orders` update like the publisher does: seq from INCR,
/// the history entry and the PUBLISH in one transaction. Returns its seq.
pub async fn publish_order_update(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    topic: &str,
) -> u64 {
    let seq: u64 =
        redis::cmd("INCR").arg(wire::keys::seq_counter(prefix, topic)).query_async(conn).await.unwrap();
    let mut pipe = redis::pipe();
    pipe.atomic();
    order_update_cmds(&mut pipe, prefix, topic, seq);
    let _: () = pipe.query_async(conn).await.unwrap();
    seq
}

/// Adds order update `seq` of `topic` to `pipe`: its history entry, then
/// its PUBLISH (the seq counter is the caller's).
pub fn order_update_cmds(pipe: &mut redis::Pipeline, prefix: &str, topic: &str, seq: u64) {
    use wire::keys;
    let env = envelope(topic, seq, &format!(r#"{{"update":{seq}}}"#));
    pipe.cmd("XADD")
        .arg(keys::history(prefix, topic))
        .arg(keys::history_id(seq))
        .arg(keys::HISTORY_FIELD)
        .arg(&env)
        .ignore()
        .cmd("PUBLISH")
        .arg(keys::channel(prefix, topic))
        .arg(&env)
        .ignore();
}

pub fn envelope(topic: &str, seq: u64, data: &str) -> String {
    wire::envelope::encode(topic, seq, wire::now_ms(), data, None)
}
