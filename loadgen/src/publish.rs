//! The closed loop's publisher: a fixed total rate over the quote topics,
//! either as envelopes PUBLISHed straight to Redis (as the contract lets
//! any backend do) or through `POST /publish`.
//!
//! Topics are split among `conns` tasks (topic t belongs to task
//! t mod conns) and each task publishes its topics round-robin, one
//! message at a time, so every topic has a single ordered publisher and
//! subscribers can hold `seq` to strict order. Each task paces itself
//! against the clock: when it falls behind it catches up in a burst, but
//! never by more than a tenth of a second's worth; older slots are
//! skipped and reported, so the achieved rate is honest.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wire::keys;

use crate::http::{HttpClient, HttpError};
use crate::stats::ErrorTally;

/// Timeout of one publish (HTTP request or Redis round trips).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Slots a task may be behind before older ones are skipped, in seconds
/// of its rate.
const MAX_BACKLOG_SECS: f64 = 0.1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishSettings {
    pub target: PublishTarget,
    /// Messages per second over all topics.
    pub rate: f64,
    pub conns: u32,
    pub payload_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PublishTarget {
    Http { url: String, api_key: Option<String> },
    Redis { url: String, prefix: String, seq: SeqSource },
}

/// Where a Redis publisher takes each message's `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SeqSource {
    /// INCR of the topic's shared counter for every message: safe beside
    /// other publishers of the same topics.
    Incr,
    /// A local counter seeded from the shared one: one round trip per
    /// message instead of two; the shared counter is raised at the end.
    Local,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("publish endpoint: {0}")]
    Http(#[from] HttpError),
    #[error("redis {url}: {source}")]
    Redis { url: String, source: redis::RedisError },
    #[error("redis {url}: no answer within {timeout:?}")]
    RedisTimeout { url: String, timeout: Duration },
}

/// What the publisher did, for the summary.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishReport {
    /// `http` or `redis`.
    pub mode: String,
    pub target_rate: f64,
    /// Messages the endpoint accepted.
    pub published: u64,
    pub achieved_rate: f64,
    pub errors: u64,
    /// Slots skipped because publishing fell behind the rate.
    pub skipped: u64,
    pub seconds: f64,
    pub error_messages: ErrorTally,
    /// Accepted messages per topic index (expected deliveries follow).
    #[serde(skip)]
    pub per_topic: BTreeMap<u32, u64>,
}

/// Live counters, read by the status line.
#[derive(Debug, Default)]
pub struct PublishCounters {
    pub published: AtomicU64,
    pub errors: AtomicU64,
    pub skipped: AtomicU64,
    errors_seen: Mutex<ErrorTally>,
}

impl PublishCounters {
    fn error(&self, message: String) {
        self.errors.fetch_add(1, Relaxed);
        self.errors_seen.lock().unwrap_or_else(PoisonError::into_inner).record(&message, 1);
    }
}

/// A running publisher.
pub struct Publisher {
    settings: PublishSettings,
    pub counters: Arc<PublishCounters>,
    stop: CancellationToken,
    tasks: JoinSet<BTreeMap<u32, u64>>,
    started: Instant,
}

impl Publisher {
    /// Connects every task's sink first (so a dead endpoint fails the run
    /// before it starts), then starts publishing over `quotes` topics.
    pub async fn start(settings: &PublishSettings, quotes: u32) -> Result<Publisher, PublishError> {
        let conns = settings.conns.clamp(1, quotes.max(1));
        let mut sinks = Vec::with_capacity(conns as usize);
        for task in 0..conns {
            let owned: Vec<u32> = (task..quotes).step_by(conns as usize).collect();
            sinks.push((Sink::connect(&settings.target, &owned).await?, owned));
        }
        let counters = Arc::new(PublishCounters::default());
        let stop = CancellationToken::new();
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        for (sink, owned) in sinks {
            let rate = settings.rate * owned.len() as f64 / f64::from(quotes.max(1));
            let pacer = Pacer { rate, started, payload_bytes: settings.payload_bytes };
            tasks.spawn(pacer.run(sink, owned, Arc::clone(&counters), stop.clone()));
        }
        Ok(Publisher { settings: settings.clone(), counters, stop, tasks, started })
    }

    /// Stops publishing, waits for requests in flight, and reports.
    pub async fn stop(mut self) -> PublishReport {
        self.stop.cancel();
        let seconds = self.started.elapsed().as_secs_f64();
        let mut per_topic = BTreeMap::new();
        let finish = async {
            while let Some(joined) = self.tasks.join_next().await {
                if let Ok(counts) = joined {
                    per_topic.extend(counts);
                }
            }
        };
        if tokio::time::timeout(PUBLISH_TIMEOUT * 2, finish).await.is_err() {
            self.tasks.abort_all();
        }
        let published = self.counters.published.load(Relaxed);
        PublishReport {
            mode: match self.settings.target {
                PublishTarget::Http { .. } => "http".into(),
                PublishTarget::Redis { .. } => "redis".into(),
            },
            target_rate: self.settings.rate,
            published,
            achieved_rate: if seconds > 0.0 { published as f64 / seconds } else { 0.0 },
            errors: self.counters.errors.load(Relaxed),
            skipped: self.counters.skipped.load(Relaxed),
            seconds,
            error_messages: self.counters.errors_seen.lock().unwrap_or_else(PoisonError::into_inner).clone(),
            per_topic,
        }
    }
}

struct Pacer {
    /// This task's share of the rate.
    rate: f64,
    started: Instant,
    payload_bytes: usize,
}

impl Pacer {
    async fn run(
        self,
        mut sink: Sink,
        owned: Vec<u32>,
        counters: Arc<PublishCounters>,
        stop: CancellationToken,
    ) -> BTreeMap<u32, u64> {
        let mut accepted: BTreeMap<u32, u64> = BTreeMap::new();
        let backlog = (self.rate * MAX_BACKLOG_SECS).max(1.0) as u64;
        let mut slot: u64 = 0;
        let mut next_topic = 0usize;
        let mut n: u64 = 0;
        while !stop.is_cancelled() && !owned.is_empty() {
            let due = (self.started.elapsed().as_secs_f64() * self.rate) as u64;
            if due > slot + backlog {
                counters.skipped.fetch_add(due - slot - backlog, Relaxed);
                slot = due - backlog;
            }
            if slot < due {
                slot += 1;
                let topic = owned[next_topic];
                next_topic = (next_topic + 1) % owned.len();
                n += 1;
                let data = quote_data(topic, n, self.payload_bytes);
                match sink.publish(topic, &data).await {
                    Ok(()) => {
                        counters.published.fetch_add(1, Relaxed);
                        *accepted.entry(topic).or_insert(0) += 1;
                    }
                    Err(e) => counters.error(e),
                }
                continue;
            }
            let next_at = self.started + Duration::from_secs_f64((slot + 1) as f64 / self.rate);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(next_at) => {}
            }
        }
        sink.finish().await;
        accepted
    }
}

/// A quote-shaped data object, padded to about `pad_to` bytes.
pub fn quote_data(topic: u32, n: u64, pad_to: usize) -> String {
    let cents = 10_000 + (n * 7 + u64::from(topic) * 13) % 1_000;
    let mut data = format!(
        r#"{{"symbol":"SYM{topic}","bid":{}.{:02},"ask":{}.{:02},"n":{n}"#,
        cents / 100,
        cents % 100,
        (cents + 1) / 100,
        (cents + 1) % 100
    );
    if pad_to > data.len() + 10 {
        let pad = pad_to - data.len() - 10;
        data.push_str(r#","pad":""#);
        data.extend(std::iter::repeat_n('x', pad));
        data.push('"');
    }
    data.push('}');
    data
}

enum Sink {
    Http(HttpClient),
    Redis(RedisSink),
}

impl Sink {
    async fn connect(target: &PublishTarget, owned: &[u32]) -> Result<Sink, PublishError> {
        match target {
            PublishTarget::Http { url, api_key } => {
                let mut client =
                    HttpClient::new(&publish_url(url), api_key.as_deref(), PUBLISH_TIMEOUT).await?;
                client.connect().await?;
                Ok(Sink::Http(client))
            }
            PublishTarget::Redis { url, prefix, seq } => {
                Ok(Sink::Redis(RedisSink::connect(url, prefix, *seq, owned).await?))
            }
        }
    }

    /// Publishes one message; the error is a short text for the tally.
    async fn publish(&mut self, topic: u32, data: &str) -> Result<(), String> {
        let name = quote_topic(topic);
        match self {
            Sink::Http(client) => {
                let body = format!(r#"{{"topic":"{name}","data":{data}}}"#);
                let resp =
                    client.post_json(body.as_bytes()).await.map_err(|e| format!("POST /publish: {e}"))?;
                if (200..300).contains(&resp.status) {
                    Ok(())
                } else {
                    let text = String::from_utf8_lossy(&resp.body);
                    Err(format!(
                        "POST /publish: HTTP {}: {}",
                        resp.status,
                        text.chars().take(200).collect::<String>()
                    ))
                }
            }
            Sink::Redis(sink) => sink.publish(topic, &name, data).await,
        }
    }

    async fn finish(&mut self) {
        if let Sink::Redis(sink) = self {
            sink.finish().await;
        }
    }
}

/// `http://host:port` alone means the endpoint's usual path.
fn publish_url(url: &str) -> String {
    let trimmed = url.trim_end_matches('/');
    match trimmed.split_once("://") {
        Some((_, rest)) if !rest.contains('/') => format!("{trimmed}/publish"),
        _ => url.to_owned(),
    }
}

pub fn quote_topic(index: u32) -> String {
    crate::topics::TopicSpace { quotes: index + 1, orders: 0 }.name(index)
}

struct RedisSink {
    url: String,
    prefix: String,
    seq: SeqSource,
    conn: redis::aio::MultiplexedConnection,
    /// Local counters per owned topic (`SeqSource::Local`).
    local: BTreeMap<u32, u64>,
}

/// Raises a counter to ARGV[1] unless it is already higher.
const RAISE_SCRIPT: &str = r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return cur
";

impl RedisSink {
    async fn connect(
        url: &str,
        prefix: &str,
        seq: SeqSource,
        owned: &[u32],
    ) -> Result<RedisSink, PublishError> {
        let err = |source| PublishError::Redis { url: url.to_owned(), source };
        let client = redis::Client::open(url).map_err(err)?;
        let mut conn = tokio::time::timeout(PUBLISH_TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .map_err(|_| PublishError::RedisTimeout { url: url.to_owned(), timeout: PUBLISH_TIMEOUT })?
            .map_err(err)?;
        let mut local = BTreeMap::new();
        if seq == SeqSource::Local {
            for &topic in owned {
                let key = keys::seq_counter(prefix, &quote_topic(topic));
                let current: Option<u64> = conn.get(&key).await.map_err(err)?;
                local.insert(topic, current.unwrap_or(0));
            }
        }
        Ok(RedisSink { url: url.to_owned(), prefix: prefix.to_owned(), seq, conn, local })
    }

    async fn publish(&mut self, topic: u32, name: &str, data: &str) -> Result<(), String> {
        let step = async {
            let seq = match self.seq {
                SeqSource::Incr => {
                    let key = keys::seq_counter(&self.prefix, name);
                    self.conn.incr::<_, _, u64>(&key, 1u64).await?
                }
                SeqSource::Local => {
                    let next = self.local.entry(topic).or_insert(0);
                    *next += 1;
                    *next
                }
            };
            let envelope = wire::envelope::encode(name, seq, wire::now_ms(), data, None);
            self.conn.publish::<_, _, i64>(keys::channel(&self.prefix, name), envelope).await?;
            Ok::<(), redis::RedisError>(())
        };
        match tokio::time::timeout(PUBLISH_TIMEOUT, step).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("redis {}: {e}", self.url)),
            Err(_) => Err(format!("redis {}: no answer within {PUBLISH_TIMEOUT:?}", self.url)),
        }
    }

    /// Leaves the shared counters at least at the last seq used locally,
    /// so the next publisher of these topics continues after it.
    async fn finish(&mut self) {
        if self.seq != SeqSource::Local {
            return;
        }
        let script = redis::Script::new(RAISE_SCRIPT);
        for (&topic, &seq) in &self.local {
            let key = keys::seq_counter(&self.prefix, &quote_topic(topic));
            let mut invocation = script.key(key);
            invocation.arg(seq);
            let _ =
                tokio::time::timeout(PUBLISH_TIMEOUT, invocation.invoke_async::<i64>(&mut self.conn)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_a_json_object_of_about_the_asked_size() {
        let d = quote_data(3, 42, 0);
        let v: serde_json::Value = serde_json::from_str(&d).unwrap();
        assert_eq!(v["symbol"], "SYM3");
        assert_eq!(v["n"], 42);
        let padded = quote_data(3, 42, 500);
        assert!(serde_json::from_str::<serde_json::Value>(&padded).unwrap().is_object());
        assert!((495..=505).contains(&padded.len()), "{}", padded.len());
    }

    #[test]
    fn publish_url_defaults_to_the_publish_path() {
        assert_eq!(publish_url("http://127.0.0.1:8080"), "http://127.0.0.1:8080/publish");
        assert_eq!(publish_url("http://127.0.0.1:8080/"), "http://127.0.0.1:8080/publish");
        assert_eq!(publish_url("http://127.0.0.1:8080/v1/publish"), "http://127.0.0.1:8080/v1/publish");
        assert_eq!(quote_topic(7), "quotes.SYM7");
    }

    #[tokio::test]
    async fn paces_at_the_rate_and_accounts_per_topic() {
        // An HTTP endpoint that accepts everything.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
                    let mut r = tokio::io::BufReader::new(stream);
                    loop {
                        let mut len = 0;
                        loop {
                            let mut line = String::new();
                            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                                len = v.trim().parse().unwrap();
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut body = vec![0; len];
                        r.read_exact(&mut body).await.unwrap();
                        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
                        r.get_mut().write_all(ok.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        let settings = PublishSettings {
            target: PublishTarget::Http { url: format!("http://{addr}"), api_key: None },
            rate: 200.0,
            conns: 3,
            payload_bytes: 0,
        };
        let publisher = Publisher::start(&settings, 10).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let report = publisher.stop().await;
        assert_eq!(report.errors, 0);
        // Never above the rate; a loaded machine may fall somewhat behind.
        assert!((100..=210).contains(&report.published), "{report:?}");
        assert_eq!(report.per_topic.values().sum::<u64>(), report.published);
        assert_eq!(report.per_topic.len(), 10);
        // Round-robin keeps topics within one message of each other per task.
        let (min, max) = (report.per_topic.values().min().unwrap(), report.per_topic.values().max().unwrap());
        assert!(max - min <= 2, "{:?}", report.per_topic);
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_fails_at_start() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let settings = PublishSettings {
            target: PublishTarget::Http { url: format!("http://127.0.0.1:{port}/publish"), api_key: None },
            rate: 10.0,
            conns: 1,
            payload_bytes: 0,
        };
        let err = Publisher::start(&settings, 4).await.err().unwrap();
        assert!(err.to_string().contains("refused"), "{err}");
    }
}
