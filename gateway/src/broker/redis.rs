//! The Redis backplane: one pub/sub connection per node, subscribed to
//! `<prefix><topic>` for exactly the topics that have local subscribers.
//!
//! A single manager task owns the pub/sub connection and the set of
//! topics this node wants, so hub and Redis never disagree: subscribe
//! requests are batched into one SUBSCRIBE, releases wait a grace delay
//! and re-check the hub before UNSUBSCRIBE, and after a lost connection
//! the manager reconnects with jittered backoff and re-subscribes the
//! whole set while client sockets stay open. A separate reader task feeds
//! received messages into the hub, so message flow never waits for a
//! subscribe round trip. Publishing goes through a small deadpool pool.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use wire::{Topic, keys};

use super::{BoxFuture, Broker, BrokerError};
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::requests::Requests;

/// Order requests kept in the stream at most (trimmed approximately).
const ORDER_STREAM_MAXLEN: usize = 100_000;
/// Channels per SUBSCRIBE when re-subscribing a large set.
const RESUBSCRIBE_CHUNK: usize = 1000;
/// Commands gathered into one batch.
const BATCH: usize = 512;
const BACKOFF_START: Duration = Duration::from_millis(100);

/// Atomically takes the next `seq` of a topic and publishes the envelope
/// built around it, so concurrent publishers on any node never reuse one.
const PUBLISH_SCRIPT: &str = r"
local seq = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2] .. seq .. ARGV[3])
return seq
";

enum Command {
    Subscribe(Topic, oneshot::Sender<Result<(), BrokerError>>),
    Release(Topic),
    /// The reader of connection `generation` saw its stream end.
    Lost(u64),
}

pub struct RedisBroker {
    commands: mpsc::UnboundedSender<Command>,
    ready: Arc<AtomicBool>,
    pool: deadpool_redis::Pool,
    prefix: String,
    timeout: Duration,
    script: redis::Script,
}

impl RedisBroker {
    /// Starts the manager task; it connects in the background, so a node
    /// whose Redis is not up yet starts anyway (and reports not ready).
    pub fn start(
        config: &Config,
        node_id: &str,
        hub: Arc<Hub>,
        requests: Arc<Requests>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Self, BrokerError> {
        let client = redis::Client::open(config.redis_url.as_str())
            .map_err(|e| BrokerError::Unavailable(format!("invalid redis_url: {e}")))?;
        let pool = deadpool_redis::Config::from_url(config.redis_url.clone())
            .builder()
            .map_err(|e| BrokerError::Unavailable(format!("redis pool: {e}")))?
            .max_size(16)
            .runtime(deadpool_redis::Runtime::Tokio1)
            .wait_timeout(Some(config.redis_timeout()))
            .create_timeout(Some(config.redis_timeout()))
            .build()
            .map_err(|e| BrokerError::Unavailable(format!("redis pool: {e}")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let ready = Arc::new(AtomicBool::new(false));
        let manager = Manager {
            client,
            hub,
            requests,
            reply_channel: keys::node_replies(&config.channel_prefix, node_id),
            metrics,
            prefix: config.channel_prefix.clone(),
            ready: Arc::clone(&ready),
            commands: rx,
            lost_tx: tx.clone(),
            grace: config.unsubscribe_grace(),
            timeout: config.redis_timeout(),
            backoff_max: config.redis_backoff_max(),
            shutdown,
            wanted: HashSet::new(),
            releasing: HashMap::new(),
            generation: 0,
        };
        tokio::spawn(manager.run());
        Ok(RedisBroker {
            commands: tx,
            ready,
            pool,
            prefix: config.channel_prefix.clone(),
            timeout: config.redis_timeout(),
            script: redis::Script::new(PUBLISH_SCRIPT),
        })
    }
}

impl Broker for RedisBroker {
    fn subscribe<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            self.commands
                .send(Command::Subscribe(topic.clone(), tx))
                .map_err(|_| BrokerError::Unavailable("backplane stopped".into()))?;
            rx.await.map_err(|_| BrokerError::Unavailable("backplane stopped".into()))?
        })
    }

    fn release(&self, topic: &Topic) {
        // Fails only once the manager stopped at shutdown; nothing to release then.
        let _ = self.commands.send(Command::Release(topic.clone()));
    }

    fn publish<'a>(
        &'a self,
        topic: &'a Topic,
        data_json: &'a str,
        traceparent: Option<&'a str>,
    ) -> BoxFuture<'a, Result<u64, BrokerError>> {
        Box::pin(async move {
            let (head, tail) =
                wire::envelope::encode_parts(topic.as_str(), wire::now_ms(), data_json, traceparent);
            let work = async {
                let mut conn = self.pool.get().await.map_err(|e| BrokerError::Unavailable(e.to_string()))?;
                self.script
                    .key(keys::seq_counter(&self.prefix, topic.as_str()))
                    .arg(keys::channel(&self.prefix, topic.as_str()))
                    .arg(head)
                    .arg(tail)
                    .invoke_async::<u64>(&mut conn)
                    .await
                    .map_err(|e| BrokerError::Refused(e.to_string()))
            };
            timeout(self.timeout, work).await.map_err(|_| BrokerError::Timeout)?
        })
    }

    fn last_value<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<Option<Vec<u8>>, BrokerError>> {
        Box::pin(async move {
            let key = keys::last_value(&self.prefix, topic.as_str());
            self.query(redis::cmd("GET").arg(key)).await
        })
    }

    fn history_after<'a>(
        &'a self,
        topic: &'a Topic,
        since: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Vec<u8>>, BrokerError>> {
        Box::pin(async move {
            let key = keys::history(&self.prefix, topic.as_str());
            let start = format!("({}", keys::history_id(since));
            let mut cmd = redis::cmd("XRANGE");
            cmd.arg(key).arg(start).arg("+").arg("COUNT").arg(limit);
            let reply: redis::streams::StreamRangeReply = self.query(&cmd).await?;
            Ok(reply
                .ids
                .into_iter()
                .filter_map(|mut entry| match entry.map.remove(keys::HISTORY_FIELD) {
                    Some(redis::Value::BulkString(bytes)) => Some(bytes),
                    _ => None,
                })
                .collect())
        })
    }

    fn submit_order<'a>(&'a self, request_json: String) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(keys::order_requests(&self.prefix))
                .arg("MAXLEN")
                .arg("~")
                .arg(ORDER_STREAM_MAXLEN)
                .arg("*")
                .arg(wire::orders::REQUEST_FIELD)
                .arg(request_json);
            let _id: String = self.query(&cmd).await?;
            Ok(())
        })
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

impl RedisBroker {
    /// Runs one command on a pooled connection, bounded by the timeout.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BrokerError> {
        let work = async {
            let mut conn = self.pool.get().await.map_err(|e| BrokerError::Unavailable(e.to_string()))?;
            cmd.query_async::<T>(&mut conn).await.map_err(|e| BrokerError::Refused(e.to_string()))
        };
        timeout(self.timeout, work).await.map_err(|_| BrokerError::Timeout)?
    }
}

/// Owns the pub/sub connection and the node's wanted-topic set.
struct Manager {
    client: redis::Client,
    hub: Arc<Hub>,
    /// Where replies to this node's order requests go.
    requests: Arc<Requests>,
    /// This node's reply channel: subscribed on every connection, never released.
    reply_channel: String,
    metrics: Arc<Metrics>,
    prefix: String,
    ready: Arc<AtomicBool>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Handed to each reader so it can report its connection's end.
    lost_tx: mpsc::UnboundedSender<Command>,
    grace: Duration,
    timeout: Duration,
    backoff_max: Duration,
    shutdown: CancellationToken,
    /// Topics this node wants from Redis: subscribed while connected,
    /// re-subscribed on every reconnect.
    wanted: HashSet<Topic>,
    /// Wanted topics whose last local subscriber left, with the time at
    /// which they are unsubscribed unless someone came back.
    releasing: HashMap<Topic, Instant>,
    /// Numbers connections so a late "lost" from an old reader is ignored.
    generation: u64,
}

/// Why a connected session ended.
enum Ended {
    Shutdown,
    Lost(String),
}

impl Manager {
    async fn run(mut self) {
        let mut backoff = BACKOFF_START;
        let mut connected_before = false;
        let mut outage_logged = false;
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            match self.connect().await {
                Ok((sink, stream)) => {
                    self.generation += 1;
                    let reader = tokio::spawn(read_messages(
                        stream,
                        Reader {
                            hub: Arc::clone(&self.hub),
                            requests: Arc::clone(&self.requests),
                            prefix: self.prefix.clone(),
                            reply_channel: self.reply_channel.clone(),
                        },
                        self.lost_tx.clone(),
                        self.generation,
                    ));
                    let ended = self.serve(sink, connected_before).await;
                    reader.abort();
                    self.ready.store(false, Ordering::Relaxed);
                    self.metrics.backplane_up.set(0);
                    match ended {
                        Ended::Shutdown => return,
                        Ended::Lost(why) => {
                            tracing::warn!(error = %why, "redis backplane connection lost; reconnecting");
                            outage_logged = true;
                        }
                    }
                    connected_before = true;
                    backoff = BACKOFF_START;
                }
                Err(e) => {
                    // Once per outage at warn; every retry at debug.
                    if !outage_logged {
                        tracing::warn!(error = %e, "redis backplane unavailable; retrying with backoff");
                        outage_logged = true;
                    } else {
                        tracing::debug!(error = %e, "redis backplane still unavailable");
                    }
                }
            }
            let jittered = backoff.mul_f64(rand::rng().random_range(0.5..1.0));
            if !self.wait_offline(jittered).await {
                return;
            }
            backoff = (backoff * 2).min(self.backoff_max);
        }
    }

    async fn connect(&mut self) -> Result<(PubSubSink, PubSubStream), String> {
        let pubsub = timeout(self.timeout, self.client.get_async_pubsub())
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let (mut sink, stream) = pubsub.split();
        // Before declaring readiness, subscribe everything still wanted.
        self.drop_unwanted();
        let mut channels: Vec<String> =
            self.wanted.iter().map(|t| keys::channel(&self.prefix, t.as_str())).collect();
        channels.push(self.reply_channel.clone());
        for chunk in channels.chunks(RESUBSCRIBE_CHUNK) {
            timeout(self.timeout, sink.subscribe(chunk))
                .await
                .map_err(|_| "re-subscribe timed out".to_string())?
                .map_err(|e| e.to_string())?;
        }
        Ok((sink, stream))
    }

    /// Forgets wanted topics that no longer have local subscribers.
    fn drop_unwanted(&mut self) {
        let hub = &self.hub;
        self.wanted.retain(|t| hub.has_subscribers(t.as_str()));
        self.releasing.retain(|t, _| hub.has_subscribers(t.as_str()));
    }

    /// Serves subscribe/release requests on a live connection.
    async fn serve(&mut self, mut sink: PubSubSink, reconnected: bool) -> Ended {
        self.ready.store(true, Ordering::Relaxed);
        self.metrics.backplane_up.set(1);
        if reconnected {
            self.metrics.backplane_reconnects.inc();
            tracing::info!(topics = self.wanted.len(), "redis backplane reconnected; topics re-subscribed");
        } else {
            tracing::info!("redis backplane connected");
        }
        // PING as often as the timeout allows, so a peer that vanished
        // without closing the socket is noticed within two timeouts.
        let mut health = tokio::time::interval(self.timeout.max(Duration::from_millis(500)));
        health.reset();
        loop {
            let next_release = self.releasing.values().min().copied();
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ended::Shutdown,
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else { return Ended::Shutdown };
                    let mut batch = vec![cmd];
                    while batch.len() < BATCH {
                        match self.commands.try_recv() {
                            Ok(cmd) => batch.push(cmd),
                            Err(_) => break,
                        }
                    }
                    if let Err(why) = self.apply(&mut sink, batch).await {
                        return Ended::Lost(why);
                    }
                }
                _ = sleep_until_opt(next_release) => {
                    if let Err(why) = self.expire(&mut sink).await {
                        return Ended::Lost(why);
                    }
                }
                _ = health.tick() => {
                    // In subscribed mode (RESP2) PING answers ["pong", ""], not +PONG.
                    match timeout(self.timeout, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Ended::Lost(e.to_string()),
                        Err(_) => return Ended::Lost("ping timed out".into()),
                    }
                }
            }
        }
    }

    /// Applies a batch of commands with at most one SUBSCRIBE.
    async fn apply(&mut self, sink: &mut PubSubSink, batch: Vec<Command>) -> Result<(), String> {
        let mut new_topics: Vec<Topic> = Vec::new();
        let mut waiting: Vec<oneshot::Sender<Result<(), BrokerError>>> = Vec::new();
        let mut lost = None;
        for cmd in batch {
            match cmd {
                Command::Subscribe(topic, reply) => {
                    self.releasing.remove(&topic);
                    if self.wanted.contains(&topic) {
                        let _ = reply.send(Ok(()));
                    } else {
                        if !new_topics.contains(&topic) {
                            new_topics.push(topic);
                        }
                        waiting.push(reply);
                    }
                }
                Command::Release(topic) => {
                    if self.wanted.contains(&topic) || new_topics.contains(&topic) {
                        self.releasing.insert(topic, Instant::now() + self.grace);
                    }
                }
                Command::Lost(generation) if generation == self.generation => {
                    lost = Some("pub/sub stream ended".to_string());
                }
                Command::Lost(_) => {}
            }
        }
        if !new_topics.is_empty() {
            let channels: Vec<String> =
                new_topics.iter().map(|t| keys::channel(&self.prefix, t.as_str())).collect();
            let result = timeout(self.timeout, sink.subscribe(&channels)).await;
            match result {
                Ok(Ok(())) => {
                    self.wanted.extend(new_topics);
                    for reply in waiting {
                        let _ = reply.send(Ok(()));
                    }
                }
                Ok(Err(e)) => {
                    let connection_gone =
                        e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error();
                    for reply in waiting {
                        let _ = reply.send(Err(BrokerError::Refused(e.to_string())));
                    }
                    if connection_gone {
                        return Err(e.to_string());
                    }
                }
                Err(_) => {
                    for reply in waiting {
                        let _ = reply.send(Err(BrokerError::Timeout));
                    }
                    return Err("subscribe timed out".into());
                }
            }
        }
        match lost {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    /// Unsubscribes released topics whose grace delay ran out and that
    /// still have no local subscriber.
    async fn expire(&mut self, sink: &mut PubSubSink) -> Result<(), String> {
        let now = Instant::now();
        let due: Vec<Topic> =
            self.releasing.iter().filter(|(_, at)| **at <= now).map(|(t, _)| t.clone()).collect();
        let mut gone = Vec::new();
        for topic in due {
            self.releasing.remove(&topic);
            if !self.hub.has_subscribers(topic.as_str()) {
                self.wanted.remove(&topic);
                gone.push(keys::channel(&self.prefix, topic.as_str()));
            }
        }
        if gone.is_empty() {
            return Ok(());
        }
        match timeout(self.timeout, sink.unsubscribe(&gone)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("unsubscribe timed out".into()),
        }
    }

    /// Waits out a backoff delay while Redis is away, still answering
    /// requests: subscribes are recorded (and made on reconnect), releases
    /// forget topics nobody here wants. Returns false on shutdown.
    async fn wait_offline(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                _ = tokio::time::sleep_until(until) => return true,
                cmd = self.commands.recv() => match cmd {
                    None => return false,
                    Some(Command::Subscribe(topic, reply)) => {
                        self.releasing.remove(&topic);
                        self.wanted.insert(topic);
                        let _ = reply.send(Ok(()));
                    }
                    Some(Command::Release(topic)) => {
                        if !self.hub.has_subscribers(topic.as_str()) {
                            self.wanted.remove(&topic);
                            self.releasing.remove(&topic);
                        }
                    }
                    Some(Command::Lost(_)) => {}
                },
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Where a reader delivers what it receives.
struct Reader {
    hub: Arc<Hub>,
    requests: Arc<Requests>,
    prefix: String,
    reply_channel: String,
}

/// Feeds one connection's messages into the hub (topics) and the
/// request table (replies) until it ends.
async fn read_messages(
    mut stream: PubSubStream,
    reader: Reader,
    lost: mpsc::UnboundedSender<Command>,
    generation: u64,
) {
    while let Some(msg) = stream.next().await {
        let channel = msg.get_channel_name();
        if channel == reader.reply_channel {
            reader.requests.resolve(msg.get_payload_bytes());
        } else if let Some(topic) = keys::topic_of_channel(&reader.prefix, channel) {
            reader.hub.ingest(topic, msg.get_payload_bytes());
        }
    }
    let _ = lost.send(Command::Lost(generation));
}
